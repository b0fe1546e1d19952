//! `/api/smart`'s hedge: how long a call waits for its first request before firing two more, and how
//! many such extra requests the upstream is asked for.
//!
//! **The delay.** A fixed delay (`--hedge-delay-ms 300`, the default) is right for one latency
//! distribution only: against an upstream answering in 20-60 ms, a call whose first request hangs waits
//! the whole 300 ms; against one answering in 100-600 ms, 60% of calls hedge and the upstream gets 2.2
//! requests per call. With `--hedge-delay-ms auto` the delay is learned, as tower's `hedge` and Finagle's
//! backup requests do it, and as "The Tail at Scale" advises: the `--hedge-percentile` (95th) of the
//! latency of the upstream's recent successful requests. So a call hedges only when its first request is
//! slower than 19 in 20 recent ones. The latencies come from the health window (`health.rs`): its last
//! [`HORIZON_SECS`] seconds, or its whole minute when those hold fewer than [`MIN_SAMPLES`] successes.
//! With fewer than that in the minute too, the delay stays as it was: [`DEFAULT_DELAY`] at start. It is
//! kept between `--hedge-min-delay-ms` and `--hedge-max-delay-ms`, and computed again at most once per
//! [`REFRESH`], by the first call to find it due (one compare-exchange, no lock).
//!
//! A caveat: only requests that finished count. A first request beaten by a hedge is cancelled, so its
//! latency is never known, and the window sees the faster side of each race. At the 95th percentile that
//! bias is small (a first request past it has mostly finished before a hedge could win); were it to pull
//! the delay down, the budget below bounds what it can cost the upstream.
//!
//! **The budget.** A learned delay can be wrong for a while: after the upstream slows down, the window
//! still holds its fast latencies, and every call would hedge. So with `auto`, the requests fired because
//! the delay passed are at most `--hedge-budget` ([`DEFAULT_BUDGET`]) per call, as Finagle's extra-load cap
//! and gRPC's hedging throttle do it: a token bucket. Each `/api/smart` call earns `budget` requests of
//! credit (not one whose deadline had passed when it began, `timeout=0`: it is answered without running
//! `smart`, and could fire nothing); a hedge spends one per request it fires, 2; the credit starts empty and is capped at [`BURST`]
//! requests, so a quiet spell cannot save up a flood. (`--hedge-budget 0`: never on the delay.) Over
//! budget, a call waits for its first request alone, and hedges only if that fails: a failure still fires
//! the other two at once, as the contract says, and costs no credit. With a fixed delay there is no budget:
//! every call may hedge, as before.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

use super::clock::{micros, Period};
use crate::health::{Health, WINDOW_SECS};

/// The delay with a fixed `--hedge-delay-ms`, and with `auto` until enough latencies are known: the
/// delay `/api/smart` was written with, between the real upstream's 100 and 600 ms.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(300);

/// The default `--hedge-percentile`: "The Tail at Scale" hedges at the 95th percentile, where the extra
/// load is about 5% of calls times the requests each hedge fires.
pub const DEFAULT_PERCENTILE: f64 = 95.0;

/// The default `--hedge-min-delay-ms`: a first request this late may be late only because fanout's own
/// threads waited for a CPU (the deadline lead allows for up to 20 ms of that by default); hedging then
/// would add load to a loaded machine.
pub const DEFAULT_MIN_DELAY: Duration = Duration::from_millis(20);

/// The default `--hedge-max-delay-ms`: a hedge fired later than a second helps only callers with long
/// timeouts, and a window saying the 95th percentile is that slow is better not trusted blindly.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);

/// The default `--hedge-budget`, in requests per call. At the 95th percentile about 5% of calls hedge on
/// latency alone, 0.1 requests per call; 0.25 leaves room for 7.5% of first requests that never answer
/// (a hang is where a hedge helps most), and keeps the upstream's extra load at a quarter, where a fixed
/// 300 ms delay costs 1.1-1.2 extra requests per call against the real upstream's latencies.
pub const DEFAULT_BUDGET: f64 = 0.25;

/// The most requests' worth of credit the budget keeps: 10 hedges beyond the share, enough for a quiet
/// instance's occasional slow call, small against the upstream.
pub const BURST: u64 = 20;

/// Fewer successful requests than this in the window say too little about the 95th percentile (5 of them
/// would be past it).
pub const MIN_SAMPLES: u64 = 100;

/// The delay is read from this many of the health window's last seconds: fewer than its minute, so that
/// it follows a shift in the upstream's latency within seconds, downwards too.
pub const HORIZON_SECS: u64 = 10;

/// How often the delay is computed again (the health window moves in whole seconds).
pub const REFRESH: Duration = Duration::from_secs(1);

/// A fixed delay, or one learned from the upstream's latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Delay {
    Fixed(Duration),
    Auto,
}

/// The hedge's settings, read from flags by `config`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub delay: Delay,
    /// With `auto`: the latency percentile the delay is, 50 to 99.9.
    pub percentile: f64,
    /// With `auto`: the bounds of the delay.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// With `auto`: requests fired because the delay passed, per call, at most.
    pub budget: f64,
    /// With `auto`: how many of the health window's last seconds the percentile reads ([`HORIZON_SECS`];
    /// tests shorten it).
    pub horizon_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delay: Delay::Fixed(DEFAULT_DELAY),
            percentile: DEFAULT_PERCENTILE,
            min_delay: DEFAULT_MIN_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            budget: DEFAULT_BUDGET,
            horizon_secs: HORIZON_SECS,
        }
    }
}

/// The delay now, and the budget's credit. One per `Api`.
pub struct Hedging {
    settings: Settings,
    /// The delay is computed again when this period ends.
    refresh: Period,
    delay_us: AtomicU64,
    /// The budget's credit, in thousandths of a request.
    credit_milli: AtomicU64,
}

impl Hedging {
    pub fn new(settings: &Settings, now: Instant) -> Hedging {
        let start = match settings.delay {
            Delay::Fixed(delay) => delay,
            Delay::Auto => DEFAULT_DELAY.clamp(settings.min_delay, settings.max_delay),
        };
        Hedging {
            settings: settings.clone(),
            refresh: Period::new(now, Duration::ZERO, REFRESH),
            delay_us: AtomicU64::new(micros(start)),
            credit_milli: AtomicU64::new(0),
        }
    }

    /// The delay now, as last computed.
    pub fn current(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// The delay for a call starting now: with `auto`, computed again from `health` if it is due.
    pub fn delay(&self, health: &Health, now: Instant) -> Duration {
        if self.settings.delay == Delay::Auto {
            self.refresh(health, now);
        }
        self.current()
    }

    fn refresh(&self, health: &Health, now: Instant) {
        if self.refresh.claim(now).is_none() {
            return; // not due, or another call is computing it
        }
        let mut window = health.last(self.settings.horizon_secs);
        if window.successes() < MIN_SAMPLES {
            window = health.last(WINDOW_SECS);
        }
        if window.successes() < MIN_SAMPLES {
            return;
        }
        let Some(seconds) = window.latency_quantile(self.settings.percentile / 100.0) else {
            return;
        };
        let delay = Duration::from_secs_f64(seconds)
            .clamp(self.settings.min_delay, self.settings.max_delay);
        self.delay_us.store(micros(delay), Ordering::Relaxed);
    }

    /// One `/api/smart` call: its share of the budget.
    pub fn earn(&self) {
        let share = (self.settings.budget * 1000.0) as u64;
        let _ = self
            .credit_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some((c + share).min(BURST * 1000))
            });
    }

    /// Whether `requests` more may be fired because the delay passed; if so, they are paid for. Always
    /// with a fixed delay.
    pub fn spend(&self, requests: usize) -> bool {
        if let Delay::Fixed(_) = self.settings.delay {
            return true;
        }
        let cost = requests as u64 * 1000;
        self.credit_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_sub(cost)
            })
            .is_ok()
    }

    /// The JSON view for the admin listener's `GET /upstream`.
    pub fn to_json(&self) -> serde_json::Value {
        let delay_ms = self.current().as_secs_f64() * 1000.0;
        match self.settings.delay {
            Delay::Fixed(_) => serde_json::json!({"mode": "fixed", "delay_ms": delay_ms}),
            Delay::Auto => serde_json::json!({
                "mode": "auto",
                "delay_ms": delay_ms,
                "percentile": self.settings.percentile,
                "min_delay_ms": self.settings.min_delay.as_millis() as u64,
                "max_delay_ms": self.settings.max_delay.as_millis() as u64,
                "budget": self.settings.budget,
                "budget_credit": self.credit_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::OutcomeKind;

    const MS: Duration = Duration::from_millis(1);

    fn auto() -> Settings {
        Settings {
            delay: Delay::Auto,
            ..Settings::default()
        }
    }

    /// `n` successes taking `low..high` ms, evenly spread.
    fn successes(health: &Health, n: u64, low: u64, high: u64) {
        for i in 0..n {
            let micros = low * 1000 + (high - low) * 1000 * i / n;
            health.record(OutcomeKind::Ok, Duration::from_micros(micros));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_300_ms_and_keeps_it_until_enough_latencies_are_known() {
        let health = Health::new(0.5);
        let hedging = Hedging::new(&auto(), Instant::now());
        successes(&health, MIN_SAMPLES - 1, 20, 60);
        assert_eq!(hedging.delay(&health, Instant::now()), DEFAULT_DELAY);
        tokio::time::advance(REFRESH).await;
        health.record(OutcomeKind::Ok, 40 * MS);
        let delay = hedging.delay(&health, Instant::now());
        assert!((55 * MS..=61 * MS).contains(&delay), "{delay:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_shift_in_latency_up_and_down() {
        let health = Health::new(0.5);
        let hedging = Hedging::new(&auto(), Instant::now());
        successes(&health, 1000, 20, 60);
        assert!(hedging.delay(&health, Instant::now()) < 61 * MS);
        // Slower: a tenth of the requests now take 200-300 ms, and the 95th percentile is among them.
        tokio::time::advance(REFRESH).await;
        successes(&health, 120, 200, 300);
        let up = hedging.delay(&health, Instant::now());
        assert!((200 * MS..=300 * MS).contains(&up), "{up:?}");
        // Fast again: once the slow second is past the horizon, the delay comes back down.
        tokio::time::advance(Duration::from_secs(HORIZON_SECS)).await;
        successes(&health, 200, 20, 60);
        let down = hedging.delay(&health, Instant::now());
        assert!(down < 61 * MS, "{down:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn is_computed_at_most_once_a_second() {
        let health = Health::new(0.5);
        let hedging = Hedging::new(&auto(), Instant::now());
        successes(&health, 200, 20, 60);
        let first = hedging.delay(&health, Instant::now());
        successes(&health, 200, 400, 500);
        assert_eq!(hedging.delay(&health, Instant::now()), first);
        tokio::time::advance(REFRESH).await;
        assert!(hedging.delay(&health, Instant::now()) > first);
    }

    #[tokio::test(start_paused = true)]
    async fn stays_within_its_bounds() {
        let health = Health::new(0.5);
        let hedging = Hedging::new(&auto(), Instant::now());
        successes(&health, 200, 1, 2);
        assert_eq!(hedging.delay(&health, Instant::now()), DEFAULT_MIN_DELAY);
        tokio::time::advance(Duration::from_secs(WINDOW_SECS)).await;
        successes(&health, 200, 5000, 6000);
        assert_eq!(hedging.delay(&health, Instant::now()), DEFAULT_MAX_DELAY);
    }

    #[test]
    fn a_fixed_delay_is_fixed_and_never_over_budget() {
        let health = Health::new(0.5);
        successes(&health, 200, 20, 60);
        let hedging = Hedging::new(&Settings::default(), Instant::now());
        assert_eq!(hedging.delay(&health, Instant::now()), DEFAULT_DELAY);
        assert!((0..1000).all(|_| hedging.spend(2)));
    }

    #[test]
    fn the_budget_allows_its_share_of_requests_per_call_and_a_burst() {
        let hedging = Hedging::new(&auto(), Instant::now());
        assert!(!hedging.spend(2), "the credit starts empty");
        // A quarter of a request per call: a hedge every 8 calls.
        let mut hedged = 0;
        for _ in 0..800 {
            hedging.earn();
            hedged += usize::from(hedging.spend(2));
        }
        assert_eq!(hedged, 100);
        // Credit saved while no call hedges is capped at the burst.
        for _ in 0..10_000 {
            hedging.earn();
        }
        assert_eq!((0..100).filter(|_| hedging.spend(2)).count(), 10);
    }
}
