//! The in-flight limit: `--max-in-flight` is its ceiling, and below that it follows how late the runtimes
//! run their tasks.
//!
//! A fixed cap is right only for the machine it was measured on. 2,560 calls in flight were held with every
//! deadline kept on a quiet day; on a host about half as fast (the `cpu` scenario at 13,200 calls/s against
//! 22,900) the same 2,560 left the upstream runtime's thread behind by 100-900 ms, and in `overload` 10-20% of
//! admitted calls ended `504` and 1-5% were answered late, where 1,800 in flight gave no late answer and
//! about as many `200`s a second (DESIGN.md, "An in-flight limit that follows the lag").
//!
//! **The lag.** A probe task on each runtime sleeps [`PROBE_EVERY`] and notes how long after its wake-up
//! time it actually ran. With CPU to spare that is under a millisecond (tokio's timers fire on whole
//! milliseconds); when the runtime's threads are busy, or wait for a CPU the kernel gives to other
//! processes, every task that becomes ready waits about as long: deadline answers and upstream reads too.
//! A slow or hanging upstream costs no CPU and shows no lag, so the limit reacts to fanout's own load
//! only.
//!
//! **The rule**, once per [`WINDOW`], on the worst lag the window saw (additive increase, multiplicative
//! decrease, as TCP does with its window):
//! - over `--overload-lag-ms`, and the limit is what held calls back (the window's peak in flight
//!   reached 90% of it): a tenth off, down to [`floor`] (an eighth of the ceiling). A limit nobody
//!   reaches is left alone: lowering it would shed nothing now, and the lag then comes from something else
//!   (a connection storm, a neighbour), which fewer calls would not cure;
//! - under half of it: up by 2% of the ceiling, so from the floor back to the ceiling in about 22 s;
//! - in between: as it is.
//!
//! With `--overload-lag-ms 0` the limit is the ceiling, always, and `serve` runs no probe.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::time::{sleep, sleep_until, Duration, Instant};

use super::clock::micros;

/// How often each probe wakes while calls come near the limit (half of it, in this window) ...
pub const PROBE_EVERY: Duration = Duration::from_millis(5);
/// ... and otherwise. A wake-up every 5 ms on each runtime cost `cpu` (64 callers) about a tenth of its
/// calls per second in five alternated pairs, more than the wakes themselves explain; and far from the
/// limit, where it cannot be cut, the lag only feeds the metric.
pub const IDLE_PROBE_EVERY: Duration = Duration::from_millis(100);

/// How often the limit is adjusted, on the worst lag of the window.
pub const WINDOW: Duration = Duration::from_millis(500);

/// The default `--overload-lag-ms`: twice the deadline lead's default bound (20 ms), past which answers are
/// late whatever the lead; the capacity scenario's worst lag per second was 3-20 ms.
pub const DEFAULT_LAG: Duration = Duration::from_millis(50);

/// The least the limit falls to: an eighth of the ceiling (at least 1).
pub fn floor(ceiling: usize) -> usize {
    (ceiling / 8).max(1)
}

/// The limit and what it is decided on.
pub struct Limit {
    ceiling: usize,
    /// Zero: off.
    lag_threshold: Duration,
    current: AtomicUsize,
    /// The worst lag in this window, in µs.
    worst_us: AtomicU64,
    /// The most calls in flight at once in this window.
    peak: AtomicUsize,
    /// The worst lag of the last window, in µs, for the metrics.
    last_lag_us: AtomicU64,
}

impl Limit {
    pub fn new(ceiling: usize, lag_threshold: Duration) -> Limit {
        Limit {
            ceiling,
            lag_threshold,
            current: AtomicUsize::new(ceiling),
            worst_us: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            last_lag_us: AtomicU64::new(0),
        }
    }

    /// Calls allowed in flight now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The worst lag of the last window.
    pub fn last_lag(&self) -> Duration {
        Duration::from_micros(self.last_lag_us.load(Ordering::Relaxed))
    }

    /// Notes how many calls are in flight, one just admitted included.
    pub fn in_flight(&self, n: usize) {
        self.peak.fetch_max(n, Ordering::Relaxed);
    }

    /// Notes one probe's lag.
    pub fn record_lag(&self, lag: Duration) {
        self.worst_us.fetch_max(micros(lag), Ordering::Relaxed);
    }

    /// Ends a window: the limit follows its worst lag (see the module's rule).
    pub fn adjust(&self) {
        let lag = self.worst_us.swap(0, Ordering::Relaxed);
        let peak = self.peak.swap(0, Ordering::Relaxed);
        self.last_lag_us.store(lag, Ordering::Relaxed);
        if self.lag_threshold.is_zero() {
            return;
        }
        let lag = Duration::from_micros(lag);
        let current = self.current();
        let next = if lag > self.lag_threshold && peak * 10 >= current * 9 {
            (current - current / 10).max(floor(self.ceiling))
        } else if lag < self.lag_threshold / 2 {
            (current + (self.ceiling / 50).max(1)).min(self.ceiling)
        } else {
            current
        };
        self.current.store(next, Ordering::Relaxed);
    }

    /// The probe, on the runtime it is polled on; it runs until dropped.
    pub async fn probe(&self) -> std::convert::Infallible {
        let mut due = Instant::now() + PROBE_EVERY;
        loop {
            sleep_until(due).await;
            let now = Instant::now();
            self.record_lag(now.saturating_duration_since(due));
            let near = self.peak.load(Ordering::Relaxed) * 2 >= self.current();
            due = now + if near { PROBE_EVERY } else { IDLE_PROBE_EVERY };
        }
    }

    /// Adjusts the limit every [`WINDOW`]; runs until dropped.
    pub async fn control(&self) -> std::convert::Infallible {
        loop {
            sleep(WINDOW).await;
            self.adjust();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One window with this lag and the limit reached.
    fn busy_window(limit: &Limit, lag: Duration) {
        limit.in_flight(limit.current());
        limit.record_lag(lag);
        limit.adjust();
    }

    #[test]
    fn a_lag_over_the_threshold_with_the_limit_reached_cuts_a_tenth_down_to_the_floor() {
        let limit = Limit::new(2560, 50 * MS);
        busy_window(&limit, 51 * MS);
        assert_eq!(limit.current(), 2304);
        assert_eq!(limit.last_lag(), 51 * MS);
        busy_window(&limit, 80 * MS);
        assert_eq!(limit.current(), 2074);
        for _ in 0..100 {
            busy_window(&limit, 500 * MS);
        }
        assert_eq!(limit.current(), floor(2560));
        assert_eq!(floor(2560), 320);
        assert_eq!(floor(3), 1);
    }

    #[test]
    fn a_limit_nobody_reaches_is_not_cut_whatever_the_lag() {
        let limit = Limit::new(2560, 50 * MS);
        limit.in_flight(2000); // under 90% of 2,560
        limit.record_lag(300 * MS);
        limit.adjust();
        assert_eq!(limit.current(), 2560);
    }

    #[test]
    fn under_half_the_threshold_it_grows_back_to_the_ceiling_and_no_further() {
        let limit = Limit::new(2560, 50 * MS);
        for _ in 0..100 {
            busy_window(&limit, 500 * MS);
        }
        busy_window(&limit, 24 * MS);
        assert_eq!(limit.current(), 320 + 51);
        let mut windows = 1;
        while limit.current() < 2560 {
            limit.adjust(); // no lag at all
            windows += 1;
        }
        assert_eq!(windows, 44, "about 22 s at two windows a second");
        limit.adjust();
        assert_eq!(limit.current(), 2560);
    }

    #[test]
    fn between_half_the_threshold_and_the_threshold_it_holds() {
        let limit = Limit::new(2560, 50 * MS);
        busy_window(&limit, 60 * MS);
        busy_window(&limit, 25 * MS);
        busy_window(&limit, 50 * MS);
        assert_eq!(limit.current(), 2304);
    }

    #[test]
    fn with_no_threshold_the_limit_is_the_ceiling_always() {
        let limit = Limit::new(2560, Duration::ZERO);
        busy_window(&limit, 900 * MS);
        assert_eq!(limit.current(), 2560);
        assert_eq!(limit.last_lag(), 900 * MS, "the lag is still measured");
    }

    #[test]
    fn the_probe_sees_a_runtime_whose_thread_is_blocked() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let limit = std::sync::Arc::new(Limit::new(10, 50 * MS));
        limit.in_flight(10); // near the limit: the probe wakes every PROBE_EVERY
        runtime.block_on(async {
            let probe = tokio::spawn({
                let limit = limit.clone();
                async move { limit.probe().await }
            });
            tokio::time::sleep(2 * PROBE_EVERY).await; // the probe has run, with next to no lag
            limit.adjust();
            assert!(limit.last_lag() < 40 * MS, "{:?}", limit.last_lag());
            // `adjust` started a new window: near the limit again. Then the only thread is busy for 60 ms,
            // and the probe's timer, due within 5 ms, waits for it.
            limit.in_flight(10);
            std::thread::sleep(60 * MS);
            tokio::time::sleep(2 * PROBE_EVERY).await;
            limit.adjust();
            assert!(limit.last_lag() >= 50 * MS, "{:?}", limit.last_lag());
            probe.abort();
        });
    }
}
