//! A tiny random source: splitmix64 over one atomic word, seeded from the clock.
//!
//! Its users need only "roughly uniform, different each run": the simulator for latencies and
//! failure draws, tracing for trace and span ids (W3C Trace Context asks for randomness, not for
//! secrecy). Nothing here is for security. Tests never depend on its values: they script their replies.
//! splitmix64's state is a counter, so advancing it is a single `fetch_add` and the generator is
//! shared by all connection tasks without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The splitmix64 increment (2^64 / golden ratio).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn from_clock() -> Rng {
        // Two simulators started in the same nanosecond still differ: mix in a process counter.
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let nth = STARTED.fetch_add(1, Ordering::Relaxed);
        Rng(AtomicU64::new(nanos ^ nth.wrapping_mul(GAMMA)))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let state = self.0.fetch_add(GAMMA, Ordering::Relaxed);
        let mut z = state.wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `min..=max` (`min <= max`). The modulo bias is below 2^-40 for the spans we
    /// use, far under anything a latency histogram could show.
    pub(crate) fn in_range(&self, min: u64, max: u64) -> u64 {
        match max.saturating_sub(min).checked_add(1) {
            Some(span) => min + self.next_u64() % span,
            None => self.next_u64(), // the full u64 range
        }
    }

    /// True with probability `p` (0.0..=1.0).
    pub(crate) fn chance(&self, p: f64) -> bool {
        // 53 random bits make a uniform f64 in [0, 1); p = 1.0 is therefore always true.
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}
