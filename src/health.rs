//! The upstream's recent health: a sliding window of the last 60 seconds of upstream outcomes and latency.
//!
//! Prometheus keeps history and computes rates over any window, but a person looking at one instance
//! (`GET /upstream` on the admin listener), and the log warning when the upstream goes bad, need the answer
//! here and now: "of the upstream requests in the last minute, how many succeeded, and how fast?".
//!
//! The window is a ring of 60 one-second buckets. Each holds the second it counts for, a count per outcome,
//! and a latency histogram of the successes. Its buckets are finer than the metrics' (8 per doubling, from
//! 1 ms to 60 s, each about 9% wider than the last): `/api/smart`'s hedge delay is a percentile of this
//! window, and between the metrics' bounds of 50 and 75 ms, or 500 and 750 ms, interpolation put the 95th
//! percentile of a 20-60 ms upstream at 70 ms and of a 100-600 ms one at 687 ms. Recording finds the bucket of
//! the current second and adds to it; a bucket still holding an older second is cleared first, by whichever
//! recorder gets there first (a compare-and-swap on its second). All of it is atomics: no lock on the hot
//! path. The price is a tiny race: an observation that lands in a bucket in the instant it is being cleared
//! may be lost. This is a health view, not an account; the metrics' counters are exact.
//!
//! The success ratio is `ok / (all outcomes but cancelled)`: a request the caller stopped waiting for says
//! nothing about the upstream. A timeout does count as a failure: the upstream did not answer within what
//! the caller allowed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::log::Logger;
use crate::upstream::OutcomeKind;

/// The window's length, in one-second buckets.
pub const WINDOW_SECS: u64 = 60;
/// Fewer requests than this in the window are too few to call the upstream unhealthy (or recovered): a
/// quiet minute with 2 failures of 3 is not an incident.
pub const MIN_REQUESTS: u64 = 20;
/// Once below the threshold, the upstream counts as recovered only at this much above it, so that a ratio
/// hovering around the threshold does not warn every second.
pub const RECOVERY_MARGIN: f64 = 0.05;
/// How often the watcher looks at the window.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

const OUTCOMES: usize = OutcomeKind::ALL.len();

/// Latency buckets per doubling: bucket `i` holds latencies in (2^((i-1)/8), 2^(i/8)] ms, bucket 0 those
/// up to 1 ms.
const PER_DOUBLING: f64 = 8.0;
/// The finite buckets: the last bound, 2^(127/8) ms, is just over 60 s (the longest `timeout`).
const FINITE: usize = 128;
/// The finite buckets and one for anything slower.
pub const BUCKETS: usize = FINITE + 1;

/// The upper bound of finite bucket `i`, in seconds.
fn bound(i: usize) -> f64 {
    (i as f64 / PER_DOUBLING).exp2() / 1000.0
}

/// The bucket a latency falls in.
fn bucket(d: Duration) -> usize {
    let ms = d.as_secs_f64() * 1000.0;
    if ms <= 1.0 {
        return 0;
    }
    ((ms.log2() * PER_DOUBLING).ceil() as usize).min(FINITE)
}

struct Second {
    /// Seconds since `Health::origin`, plus one (0: never used).
    second: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES],
    latency: [AtomicU64; BUCKETS],
}

impl Second {
    fn new() -> Second {
        Second {
            second: AtomicU64::new(0),
            outcomes: Default::default(),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn clear(&self) {
        for c in self.outcomes.iter().chain(self.latency.iter()) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The window, and whether the upstream currently counts as healthy.
pub struct Health {
    origin: Instant,
    ring: Vec<Second>,
    /// Success ratio below which the upstream is unhealthy (`--upstream-health-threshold`).
    threshold: f64,
    healthy: AtomicBool,
}

/// What the window says now.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Requests per outcome, in `OutcomeKind::ALL` order.
    pub outcomes: [u64; OUTCOMES],
    /// Requests that count for the ratio (all but cancelled).
    pub requests: u64,
    /// `ok / requests`; `None` without requests.
    pub success_ratio: Option<f64>,
    /// The successes' latency histogram, which the quantiles are read from.
    latency_buckets: [u64; BUCKETS],
}

impl Snapshot {
    /// Successful requests in the window.
    pub fn successes(&self) -> u64 {
        self.outcomes[OutcomeKind::Ok as usize]
    }

    /// The `q` quantile (0 to 1) of the successes' latency, in seconds; `None` without successes.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        (self.successes() > 0).then(|| quantile(&self.latency_buckets, q))
    }

    /// The [`QUANTILES`] of the successes' latency, in seconds; `None` without successes.
    pub fn latency(&self) -> Option<[f64; 3]> {
        (self.successes() > 0).then(|| QUANTILES.map(|q| quantile(&self.latency_buckets, q)))
    }
}

pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

impl Health {
    pub fn new(threshold: f64) -> Health {
        Health {
            origin: Instant::now(),
            ring: (0..WINDOW_SECS).map(|_| Second::new()).collect(),
            threshold,
            healthy: AtomicBool::new(true),
        }
    }

    fn now_second(&self) -> u64 {
        self.origin.elapsed().as_secs() + 1
    }

    /// Records one upstream request's outcome (and its latency, if it succeeded).
    pub fn record(&self, outcome: OutcomeKind, duration: Duration) {
        let now = self.now_second();
        let slot = &self.ring[(now % WINDOW_SECS) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != now
            && slot
                .second
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.clear();
        }
        slot.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if outcome == OutcomeKind::Ok {
            slot.latency[bucket(duration)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sums the buckets of the last `WINDOW_SECS` seconds (the current one included, partly filled).
    pub fn snapshot(&self) -> Snapshot {
        self.last(WINDOW_SECS)
    }

    /// Sums the buckets of the last `secs` seconds (at most `WINDOW_SECS`; the current one included).
    pub fn last(&self, secs: u64) -> Snapshot {
        let secs = secs.min(WINDOW_SECS);
        let now = self.now_second();
        let mut outcomes = [0u64; OUTCOMES];
        let mut latency = [0u64; BUCKETS];
        for slot in &self.ring {
            let second = slot.second.load(Ordering::Acquire);
            if second == 0 || second + secs <= now {
                continue;
            }
            let counts = slot.outcomes.iter().chain(&slot.latency);
            for (sum, c) in outcomes.iter_mut().chain(&mut latency).zip(counts) {
                *sum += c.load(Ordering::Relaxed);
            }
        }
        let requests = outcomes.iter().sum::<u64>() - outcomes[OutcomeKind::Cancelled as usize];
        let ok = outcomes[OutcomeKind::Ok as usize];
        Snapshot {
            outcomes,
            requests,
            success_ratio: (requests > 0).then(|| ok as f64 / requests as f64),
            latency_buckets: latency,
        }
    }

    /// Whether the upstream counts as healthy (as of the watcher's last look).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Looks at the window once: warns when the success ratio falls below the threshold, and again when it
    /// recovers. Each change is one line; the logger's warning limit bounds even a flapping upstream.
    pub fn check(&self, log: &Logger) {
        let snap = self.snapshot();
        let Some(ratio) = snap.success_ratio.filter(|_| snap.requests >= MIN_REQUESTS) else {
            return;
        };
        let healthy = self.is_healthy();
        let now_healthy = if healthy {
            ratio >= self.threshold
        } else {
            ratio >= (self.threshold + RECOVERY_MARGIN).min(1.0)
        };
        if now_healthy == healthy {
            return;
        }
        self.healthy.store(now_healthy, Ordering::Relaxed);
        let fields = serde_json::json!({
            "success_ratio": round3(ratio),
            "threshold": self.threshold,
            "window_s": WINDOW_SECS,
            "requests": snap.requests,
            "outcomes": outcomes_json(&snap.outcomes),
        });
        if now_healthy {
            log.warn("upstream_recovered", fields);
        } else {
            log.warn("upstream_unhealthy", fields);
        }
    }

    /// Checks every `CHECK_EVERY`, forever; the owner stops it by dropping the future.
    ///
    /// Cancel safety: holds nothing but a timer.
    pub async fn watch(&self, log: &Logger) -> std::convert::Infallible {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.check(log);
        }
    }

    /// The JSON view for the admin listener's `GET /upstream`.
    pub fn to_json(&self) -> serde_json::Value {
        let snap = self.snapshot();
        let latency_ms = snap.latency().map(|q| {
            serde_json::json!({
                "p50": round3(q[0] * 1000.0),
                "p90": round3(q[1] * 1000.0),
                "p99": round3(q[2] * 1000.0),
            })
        });
        serde_json::json!({
            "window_s": WINDOW_SECS,
            "healthy": self.is_healthy(),
            "threshold": self.threshold,
            "requests": snap.requests,
            "success_ratio": snap.success_ratio.map(round3),
            "outcomes": outcomes_json(&snap.outcomes),
            "latency_ms": latency_ms,
        })
    }
}

pub fn outcomes_json(outcomes: &[u64; OUTCOMES]) -> serde_json::Value {
    OutcomeKind::ALL
        .iter()
        .map(|o| (o.label().to_string(), outcomes[*o as usize].into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `q` quantile of a bucketed distribution, as Prometheus' `histogram_quantile` estimates it: find the
/// bucket holding the rank, interpolate linearly inside it. In the `+Inf` bucket the answer is the highest
/// finite bound.
fn quantile(buckets: &[u64; BUCKETS], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            if i == FINITE {
                return bound(FINITE - 1);
            }
            let lower = if i == 0 { 0.0 } else { bound(i - 1) };
            return lower + (bound(i) - lower) * ((rank - below as f64) / n as f64);
        }
        below += n;
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogSettings, Logger};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ratio_leaves_out_cancelled_requests_and_counts_timeouts() {
        let h = Health::new(0.5);
        for _ in 0..6 {
            h.record(OutcomeKind::Ok, ms(3));
        }
        h.record(OutcomeKind::Timeout, ms(100));
        h.record(OutcomeKind::HttpStatus, ms(1));
        h.record(OutcomeKind::Cancelled, ms(1));
        let s = h.snapshot();
        assert_eq!(s.requests, 8);
        assert_eq!(s.success_ratio, Some(0.75));
        let [p50, _, p99] = s.latency().expect("successes have latency");
        // All six successes took 3 ms: in the bucket (2.83 ms, 3.08 ms], so every quantile is near 3 ms.
        assert!(
            (0.0025..=0.005).contains(&p50) && p99 <= 0.005,
            "{p50} {p99}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_seconds_leave_the_window() {
        let h = Health::new(0.5);
        h.record(OutcomeKind::Ok, ms(1));
        tokio::time::advance(Duration::from_secs(30)).await;
        h.record(OutcomeKind::IoError, ms(1));
        assert_eq!(h.snapshot().requests, 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(h.snapshot().outcomes[OutcomeKind::IoError as usize], 1);
        assert_eq!(
            h.snapshot().requests,
            1,
            "the first second is over a minute old"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(h.snapshot().success_ratio, None);
    }

    #[tokio::test(start_paused = true)]
    async fn warns_once_when_the_ratio_falls_and_once_when_it_recovers() {
        let (log, lines) = Logger::in_memory(LogSettings::default());
        let h = Health::new(0.5);
        for _ in 0..MIN_REQUESTS {
            h.record(OutcomeKind::ConnectError, ms(1));
        }
        h.check(&log);
        h.check(&log);
        assert!(!h.is_healthy());
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..MIN_REQUESTS {
            h.record(OutcomeKind::Ok, ms(1));
        }
        h.check(&log);
        h.check(&log);
        let events: Vec<String> = lines
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
            .collect();
        assert_eq!(events, ["\"upstream_unhealthy\"", "\"upstream_recovered\""]);
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        let mut b = [0u64; BUCKETS];
        b[0] = 10; // ten in (0, 1 ms]
        assert!((quantile(&b, 0.5) - 0.0005).abs() < 1e-12);
        b[BUCKETS - 1] = 100; // most beyond the last bound
        assert_eq!(quantile(&b, 0.99), bound(FINITE - 1));
        assert!((60.0..60.2).contains(&bound(FINITE - 1)));
    }

    #[test]
    fn buckets_are_fine_enough_for_a_hedge_delay() {
        // Uniform latencies, as the benchmark's simulator draws them: the 95th percentile within 2%.
        for (low, high) in [(20, 60), (100, 600)] {
            let h = Health::new(0.5);
            for i in 0..1000 {
                h.record(OutcomeKind::Ok, ms(low) + (ms(high - low) * i) / 1000);
            }
            let truth = (low as f64 + 0.95 * (high - low) as f64) / 1000.0;
            let p95 = h.snapshot().latency_quantile(0.95).expect("successes");
            assert!((p95 / truth - 1.0).abs() < 0.02, "{p95} against {truth}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_seconds_leave_out_older_ones() {
        let h = Health::new(0.5);
        h.record(OutcomeKind::Ok, ms(500));
        tokio::time::advance(Duration::from_secs(20)).await;
        h.record(OutcomeKind::Ok, ms(50));
        assert_eq!(h.last(10).successes(), 1);
        assert_eq!(h.snapshot().successes(), 2);
        let p99 = h.last(10).latency_quantile(0.99).expect("one success");
        assert!(p99 < 0.06, "{p99}: the 500 ms one is out");
    }
}
