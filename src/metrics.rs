//! Metrics: a tiny registry of counters and histograms, and their Prometheus text exposition.
//!
//! Every figure the hot path touches is an atomic: recording an observation is a handful of `fetch_add`s,
//! with no lock and no allocation. Labels are small fixed enums, so a labelled family is an array indexed
//! by the enum, never a map looked up by string. Figures that something else already counts (the pool's
//! connections, the calls in flight, the process's memory) are not duplicated here: they are read when
//! Prometheus scrapes (see `telemetry.rs`).
//!
//! Names follow Prometheus' conventions (<https://prometheus.io/docs/practices/naming/>): one `fanout_`
//! prefix, base units (seconds), `_total` on counters, labels with few values. Where an OpenTelemetry HTTP
//! semantic convention exists, its name and attribute names are used, dots turned into underscores:
//! `http.server.request.duration` with `http.route` and `http.response.status_code` becomes
//! `fanout_http_server_request_duration_seconds{http_route, http_response_status_code}`.
//!
//! Counts are `Relaxed`: each figure is read on its own, as a statistic, and never orders other memory.
//! A scrape that races with an observation may see a histogram's `_count` one ahead of its buckets; the
//! next scrape agrees again, and Prometheus' `rate()` does not mind.

pub mod process;

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::upstream::OutcomeKind;

/// Request and upstream durations, in seconds: OpenTelemetry's advice for HTTP durations
/// (0.005 ... 10 s), with 1 and 2.5 ms below it (an instant upstream answers in about a millisecond) and
/// 30 and 60 s above it (the longest `timeout` a caller may ask for is 60 s).
pub const DURATION_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0,
];

/// How late a response was written after its deadline, in seconds. Early responses count as 0, so the
/// `le="0"` bucket holds the punctual ones and `le="0.005"` those at most 5 ms late.
pub const OVERSHOOT_BOUNDS: &[f64] = &[
    0.0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The status codes fanout answers with, and `499` for a call whose client left before its answer
/// (nothing is sent; see `http::response::CLIENT_CLOSED_REQUEST`); a label value each. (Any other code
/// would be a bug; it is counted as 500 rather than growing the family.)
pub const STATUSES: [u16; 15] = [
    200, 400, 404, 405, 408, 413, 414, 431, 499, 500, 501, 502, 503, 504, 505,
];

/// `http_route` label values: the four endpoints, and `other` for every other target (404s, bad
/// requests), so a scanner trying paths cannot create series.
pub const ROUTES: [&str; 5] = [
    "/api/all",
    "/api/first",
    "/api/within-timeout",
    "/api/smart",
    "other",
];

/// Why a call was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// `--max-in-flight` calls were running.
    MaxInFlight,
    /// `--max-connections` client connections were open: the request came on one over the cap.
    MaxConnections,
}

impl ShedReason {
    pub const ALL: [ShedReason; 2] = [ShedReason::MaxInFlight, ShedReason::MaxConnections];

    pub fn label(self) -> &'static str {
        match self {
            ShedReason::MaxInFlight => "max_in_flight",
            ShedReason::MaxConnections => "max_connections",
        }
    }
}

/// A monotonic count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A fixed-bucket histogram of durations: a count per bucket (not cumulative; the rendering sums them),
/// the total count and the sum in nanoseconds (a u64 of nanoseconds lasts 584 years).
pub struct Histogram {
    /// Upper bounds in seconds, ascending; the last bucket (`+Inf`) is implicit.
    bounds_s: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds_s: &'static [f64]) -> Histogram {
        Histogram {
            bounds_s,
            buckets: (0..=bounds_s.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one duration: three atomic additions, after a scan of at most ~20 bounds.
    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let i = self
            .bounds_s
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds_s.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` series, with `labels` (`a="x",b="y"`, maybe empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (sep, braces) = if labels.is_empty() {
            ("", String::new())
        } else {
            (",", format!("{{{labels}}}"))
        };
        let mut cumulative = 0;
        let bounds = self.bounds_s.iter().map(f64::to_string);
        for (le, n) in bounds.chain(["+Inf".into()]).zip(&*self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Everything fanout counts as it goes. One instance, shared by all connections.
pub struct Metrics {
    /// API responses by route and status, from the parsed head to the last byte written.
    pub server_duration: Vec<[Histogram; STATUSES.len()]>,
    /// Upstream requests by outcome, from starting the request to its outcome (pool wait and connect
    /// included): what the caller experienced.
    pub client_duration: [Histogram; OutcomeKind::ALL.len()],
    pub shed: [Counter; ShedReason::ALL.len()],
    /// `/api/smart` fired its hedge requests; and the answer came from one of them.
    pub hedges: Counter,
    pub hedges_won: Counter,
    /// `/api/smart`'s hedge delay passed, but its budget had no room for a hedge.
    pub hedges_refused: Counter,
    /// For each API call with a deadline: how late its response was written (0 when in time).
    pub overshoot: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            server_duration: ROUTES
                .iter()
                .map(|_| std::array::from_fn(|_| Histogram::new(DURATION_BOUNDS)))
                .collect(),
            client_duration: std::array::from_fn(|_| Histogram::new(DURATION_BOUNDS)),
            shed: Default::default(),
            hedges: Counter::default(),
            hedges_won: Counter::default(),
            hedges_refused: Counter::default(),
            overshoot: Histogram::new(OVERSHOOT_BOUNDS),
        }
    }
}

/// The route index of an endpoint (`None`: any other target).
pub fn route_index(endpoint: Option<Endpoint>) -> usize {
    match endpoint {
        Some(Endpoint::All) => 0,
        Some(Endpoint::First) => 1,
        Some(Endpoint::WithinTimeout) => 2,
        Some(Endpoint::Smart) => 3,
        None => 4,
    }
}

fn status_index(status: u16) -> usize {
    let index = |code| STATUSES.iter().position(|&s| s == code);
    index(status).or_else(|| index(500)).unwrap_or(0)
}

impl Metrics {
    /// One answered request.
    pub fn request_done(&self, endpoint: Option<Endpoint>, status: u16, duration: Duration) {
        self.server_duration[route_index(endpoint)][status_index(status)].observe(duration);
    }

    /// Writes the families this registry owns.
    pub fn render(&self, out: &mut String) {
        self.render_server_durations(out);
        self.render_client_durations(out);
        labelled(
            out,
            "fanout_calls_shed_total",
            "counter",
            "API calls answered at once without upstream requests, by the limit that shed them",
            "reason",
            ShedReason::ALL.map(|reason| (reason.label(), self.shed[reason as usize].get())),
        );
        self.render_hedges(out);
        family(
            out,
            "fanout_deadline_overshoot_seconds",
            "histogram",
            "How late each API response with a deadline was written after it (0 when in time)",
        );
        self.overshoot
            .render(out, "fanout_deadline_overshoot_seconds", "");
    }

    /// API responses by route and status. A series is written only once it has counts (so 15 statuses
    /// times 5 routes do not fill the page with zeros), except each route's 200, so every route's request
    /// rate exists from the first scrape.
    fn render_server_durations(&self, out: &mut String) {
        family(
            out,
            "fanout_http_server_request_duration_seconds",
            "histogram",
            "API responses by route and status: from the parsed request head to the response written, or to the client leaving (499) (OpenTelemetry http.server.request.duration)",
        );
        for (r, by_status) in self.server_duration.iter().enumerate() {
            for (s, h) in by_status.iter().enumerate() {
                if h.count() > 0 || (STATUSES[s] == 200 && r < 4) {
                    let labels = format!(
                        "http_route=\"{}\",http_response_status_code=\"{}\"",
                        ROUTES[r], STATUSES[s]
                    );
                    h.render(out, "fanout_http_server_request_duration_seconds", &labels);
                }
            }
        }
    }

    /// Upstream requests by outcome, every outcome written: there are few, and an alert on
    /// `outcome="timeout"` should see 0, not nothing.
    fn render_client_durations(&self, out: &mut String) {
        family(
            out,
            "fanout_http_client_request_duration_seconds",
            "histogram",
            "Upstream requests by outcome: from starting the request (pool wait and connect included) to its outcome (OpenTelemetry http.client.request.duration)",
        );
        for outcome in OutcomeKind::ALL {
            self.client_duration[outcome as usize].render(
                out,
                "fanout_http_client_request_duration_seconds",
                &format!("outcome=\"{}\"", outcome.label()),
            );
        }
    }

    /// What `/api/smart` did about its hedge requests.
    fn render_hedges(&self, out: &mut String) {
        counter(
            out,
            "fanout_smart_hedges_total",
            "/api/smart calls that fired their hedge requests",
            self.hedges.get(),
        );
        counter(
            out,
            "fanout_smart_hedges_won_total",
            "/api/smart calls answered by a hedge request rather than the first one",
            self.hedges_won.get(),
        );
        counter(
            out,
            "fanout_smart_hedges_refused_total",
            "/api/smart calls whose hedge delay passed when the hedge budget (--hedge-budget) had no room: they waited for their first request",
            self.hedges_refused.get(),
        );
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A whole counter family without labels.
pub fn counter(out: &mut String, name: &str, help: &str, value: impl Display) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A whole gauge family without labels.
pub fn gauge(out: &mut String, name: &str, help: &str, value: impl Display) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A whole family with one label: a `label="value"` series for each (value, figure) pair.
pub fn labelled<V: Display, F: Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (V, F)>,
) {
    family(out, name, kind, help);
    for (value, figure) in series {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {figure}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(10)); // on the bound: le is "less or equal"
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "a=\"b\"");
        assert_eq!(
            out,
            "x_seconds_bucket{a=\"b\",le=\"0.01\"} 2\nx_seconds_bucket{a=\"b\",le=\"0.1\"} 3\n\
             x_seconds_bucket{a=\"b\",le=\"+Inf\"} 4\nx_seconds_sum{a=\"b\"} 2.065\nx_seconds_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn unknown_statuses_count_as_500() {
        let m = Metrics::default();
        m.request_done(None, 299, Duration::ZERO);
        assert_eq!(m.server_duration[4][status_index(500)].count(), 1);
    }
}
