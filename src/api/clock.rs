//! Time kept in atomics, so that every call can read and update it without a lock: [`micros`], and the
//! [`Period`] that `hedge` (the delay, computed again each second) and `lead` (its one-second window)
//! roll over by whichever call sees it end first.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

/// A duration in whole µs, the unit `hedge`, `lead` and `limit` keep durations in (saturating).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Periods of one length, one after the other, each begun by the first caller to see the last one over.
pub(crate) struct Period {
    /// Instants are kept as µs since this one, so that they fit an atomic.
    epoch: Instant,
    /// When the current period ends, in µs since `epoch`.
    end_us: AtomicU64,
    length: Duration,
}

impl Period {
    /// Periods of `length`, the first ending `first` after `now` (zero: over at once).
    pub(crate) fn new(now: Instant, first: Duration, length: Duration) -> Period {
        Period {
            epoch: now,
            end_us: AtomicU64::new(micros(first)),
            length,
        }
    }

    /// If the current period is over at `now` and this caller is the first to see it, begins the next one
    /// (`length` from now) and says how long ago the one that was over ended; `None` before it is over,
    /// or when another caller claimed it first (one compare-exchange, no lock).
    pub(crate) fn claim(&self, now: Instant) -> Option<Duration> {
        let now_us = micros(now.saturating_duration_since(self.epoch));
        let end_us = self.end_us.load(Ordering::Relaxed);
        let next_us = now_us.saturating_add(micros(self.length));
        let claimed = now_us >= end_us
            && self
                .end_us
                .compare_exchange(end_us, next_us, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        claimed.then(|| Duration::from_micros(now_us - end_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_period_is_claimed_once_when_it_ends_and_the_next_starts_from_the_claim() {
        let start = Instant::now();
        let period = Period::new(start, 1000 * MS, 1000 * MS);
        assert_eq!(period.claim(start + 999 * MS), None, "not over yet");
        assert_eq!(
            period.claim(start + 1500 * MS),
            Some(500 * MS),
            "over for 500 ms"
        );
        assert_eq!(period.claim(start + 1500 * MS), None, "claimed already");
        assert_eq!(
            period.claim(start + 2499 * MS),
            None,
            "the next ends 1 s after the claim"
        );
        assert_eq!(period.claim(start + 2500 * MS), Some(Duration::ZERO));
    }

    #[test]
    fn a_first_period_of_zero_is_over_at_once() {
        let start = Instant::now();
        let period = Period::new(start, Duration::ZERO, 1000 * MS);
        assert_eq!(period.claim(start), Some(Duration::ZERO));
    }
}
