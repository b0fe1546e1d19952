//! [`Held`]: one more in a count for as long as it lives, however its scope ends (a drop guard).

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Holds a count one higher from [`Held::up`] until it is dropped: an API call's place among the calls in
/// flight (`api`, the count shared through an `Arc`), an exchange lingering or a caller waiting at the
/// pool's cap (`upstream::pool`, the count borrowed). Every way a scope ends gives the one back, a dropped
/// future and a panic included.
#[derive(Debug)]
pub struct Held<C: Deref<Target = AtomicUsize>>(C);

impl<C: Deref<Target = AtomicUsize>> Held<C> {
    /// Adds one to `count`.
    pub fn up(count: C) -> Held<C> {
        Held::counted(count).0
    }

    /// Adds one to `count`, and says what it is now, this one included: one atomic step, so two callers
    /// never see the same figure.
    pub fn counted(count: C) -> (Held<C>, usize) {
        let now = count.fetch_add(1, Ordering::Relaxed) + 1;
        (Held(count), now)
    }
}

impl<C: Deref<Target = AtomicUsize>> Drop for Held<C> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_count_is_one_higher_while_held_borrowed_or_shared() {
        let count = AtomicUsize::new(0);
        let (first, now) = Held::counted(&count);
        assert_eq!(now, 1);
        let second = Held::up(&count);
        assert_eq!(count.load(Ordering::Relaxed), 2);
        drop((first, second));
        assert_eq!(count.load(Ordering::Relaxed), 0);

        let shared = Arc::new(AtomicUsize::new(0));
        let held = Held::up(shared.clone());
        assert_eq!(shared.load(Ordering::Relaxed), 1);
        drop(held);
        assert_eq!(shared.load(Ordering::Relaxed), 0);
    }
}
