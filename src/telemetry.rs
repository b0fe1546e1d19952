//! What fanout tells its operators, in one place: the metrics, the upstream's health window, the logger,
//! and whether the service is ready for work. One `Telemetry`, shared (`Arc`) by the API, the connection
//! tasks and the admin listener.
//!
//! Where each figure is observed:
//!
//! | what                                   | where                                              |
//! | -------------------------------------- | -------------------------------------------------- |
//! | response duration, status, overshoot   | the connection task, once the response is written  |
//! | the access line                        | the same place, with the call's upstream attempts  |
//! | calls in flight, calls shed            | `Api::prepare` (admission control)                 |
//! | each upstream request's outcome        | `Requests`, as outcomes arrive or the call ends       |
//! | hedges fired, won and refused          | `Api::run`, from what `Requests` saw                  |
//! | the hedge delay now                    | read from `api::hedge` at scrape time              |
//! | pool connections, connects, reuses     | read from the pool's own counters at scrape time   |
//! | process memory, CPU, descriptors       | read from `/proc` at scrape time                   |

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::health::{self, Health};
use crate::http::response::CLIENT_CLOSED_REQUEST;
use crate::log::{LogSettings, Logger};
use crate::metrics::{self, counter, gauge, labelled, Metrics};
use crate::trace::{CallTrace, SpanId};
use crate::upstream::{OutcomeKind, PoolStats};

pub struct Telemetry {
    pub metrics: Metrics,
    pub health: Health,
    pub log: Logger,
    /// True while the upstream pool is being warmed (`--upstream-warm`): `/readyz` answers 503 until then.
    warming: AtomicBool,
    /// True from the moment a shutdown begins: `/readyz` answers 503 so load balancers stop sending.
    draining: AtomicBool,
}

/// One upstream request of a call, as the access line reports it.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Its span in the call's trace: the parent-id of the `traceparent` it sent.
    pub span_id: SpanId,
    pub outcome: OutcomeKind,
    /// From the call's start (its head parsed) to starting it: a hedge starts at about the hedge delay.
    pub start: Duration,
    /// From starting it to its outcome (or to the call's end, for one cancelled).
    pub duration: Duration,
}

/// Figures read from their owners at scrape time, for [`Telemetry::render`]: a snapshot, not counters.
pub struct ReadNow {
    /// API calls admitted and not yet answered.
    pub in_flight: usize,
    /// API calls allowed in flight now.
    pub in_flight_limit: usize,
    /// The runtimes' worst recent lag.
    pub runtime_lag: Duration,
    /// How long before its deadline a call stops waiting now.
    pub deadline_lead: Duration,
    /// `/api/smart`'s hedge delay now.
    pub hedge_delay: Duration,
    pub pool: PoolStats,
}

/// What one answered request was, for the metrics and the access line.
pub struct RequestDone<'a> {
    pub trace: &'a CallTrace,
    pub method: &'a str,
    pub endpoint: Option<Endpoint>,
    pub timeout: Option<Duration>,
    pub status: u16,
    /// When the head was parsed (the deadline counts from here) ...
    pub started: Instant,
    /// ... and when the last byte of the response was handed to the kernel, or, for a call whose client
    /// left ([`CLIENT_CLOSED_REQUEST`]), when it left.
    pub written: Instant,
    pub attempts: &'a [Attempt],
}

impl Telemetry {
    /// `health_threshold`: below this success ratio over the last minute the upstream counts as unhealthy.
    pub fn new(log: LogSettings, health_threshold: f64) -> Telemetry {
        Telemetry {
            metrics: Metrics::default(),
            health: Health::new(health_threshold),
            log: Logger::new(log),
            warming: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Ready for work: not warming the pool, not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.warming.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Whether the service is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The upstream pool is being warmed (`on`), or is warm: no work, please, until it is.
    pub fn warming(&self, on: bool) {
        self.warming.store(on, Ordering::Relaxed);
    }

    /// The service is shutting down: no new work, please.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// One upstream request's outcome: into the metrics and the health window.
    pub fn upstream_done(&self, outcome: OutcomeKind, duration: Duration) {
        self.metrics.client_duration[outcome as usize].observe(duration);
        self.health.record(outcome, duration);
    }

    /// One request answered: its metrics and its access line.
    pub fn request_done(&self, done: &RequestDone<'_>) {
        let duration = done.written.saturating_duration_since(done.started);
        self.metrics
            .request_done(done.endpoint, done.status, duration);
        // Overshoot is signed in the log (negative: early) and clamped at 0 in the histogram. A call whose
        // client left wrote nothing, so it has none.
        let answered = done.status != CLIENT_CLOSED_REQUEST;
        let overshoot_ms = done.timeout.filter(|_| answered).map(|timeout| {
            let deadline = done.started + timeout;
            let late = done.written.saturating_duration_since(deadline);
            self.metrics.overshoot.observe(late);
            ms(late) - ms(deadline.saturating_duration_since(done.written))
        });
        self.log.access(|line| {
            let t = done.trace;
            let _ = write!(
                line,
                "\"trace_id\":\"{}\",\"span_id\":\"{}\",",
                t.trace_id, t.span_id
            );
            if let Some(parent) = t.parent_id {
                let _ = write!(line, "\"parent_id\":\"{parent}\",");
            }
            // httparse accepts only token characters in a method: nothing to escape.
            let endpoint = metrics::ROUTES[metrics::route_index(done.endpoint)];
            let _ = write!(
                line,
                "\"method\":\"{}\",\"endpoint\":\"{endpoint}\",",
                done.method
            );
            if let Some(timeout) = done.timeout {
                let _ = write!(line, "\"timeout_ms\":{},", timeout.as_millis());
            }
            let _ = write!(
                line,
                "\"status\":{},\"duration_ms\":{:.3},",
                done.status,
                ms(duration)
            );
            if let Some(overshoot) = overshoot_ms {
                let _ = write!(line, "\"overshoot_ms\":{overshoot:.3},");
            }
            if !done.attempts.is_empty() {
                line.push_str("\"attempts\":[");
                for a in done.attempts {
                    let _ = write!(
                        line,
                        "{{\"span_id\":\"{}\",\"outcome\":\"{}\",\"start_ms\":{:.3},\"duration_ms\":{:.3}}},",
                        a.span_id,
                        a.outcome.label(),
                        ms(a.start),
                        ms(a.duration)
                    );
                }
                line.pop(); // the last attempt's comma
                line.push_str("],");
            }
        });
    }

    /// The Prometheus text exposition (format 0.0.4) of everything: this registry's families, then the
    /// figures read now from their owners.
    pub fn render(&self, now: &ReadNow) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.metrics.render(&mut out);
        render_calls(&mut out, now);
        render_pool(&mut out, &now.pool);
        self.render_health(&mut out);
        self.render_log(&mut out);
        metrics::process::render(&mut out);
        out
    }

    /// The upstream's last minute as the health window sees it, its verdict, and whether we take work.
    fn render_health(&self, out: &mut String) {
        let window = self.health.snapshot();
        labelled(
            out,
            "fanout_upstream_recent_requests",
            "gauge",
            "Upstream requests in the last 60 s by outcome (a sliding window; for history, use rate() on fanout_http_client_request_duration_seconds_count)",
            "outcome",
            OutcomeKind::ALL.map(|outcome| (outcome.label(), window.outcomes[outcome as usize])),
        );
        if let Some(ratio) = window.success_ratio {
            gauge(out, "fanout_upstream_recent_success_ratio", "Share of upstream requests in the last 60 s that succeeded (cancelled ones left out)", ratio);
        }
        if let Some(latency) = window.latency() {
            labelled(
                out,
                "fanout_upstream_recent_latency_seconds",
                "gauge",
                "Latency quantiles (label q) of successful upstream requests in the last 60 s, estimated from buckets; not a summary, so not `quantile`",
                "q",
                health::QUANTILES.iter().zip(latency),
            );
        }
        gauge(out, "fanout_upstream_healthy", "1 while the upstream's recent success ratio is at or above --upstream-health-threshold", u8::from(self.health.is_healthy()));
        gauge(
            out,
            "fanout_ready",
            "1 while accepting work, 0 while the upstream pool warms and once draining for shutdown",
            u8::from(self.is_ready()),
        );
    }

    /// What the log held back or lost.
    fn render_log(&self, out: &mut String) {
        counter(
            out,
            "fanout_log_warnings_suppressed_total",
            "Warning and error log lines held back by the log's rate limit",
            self.log.suppressed_total(),
        );
        counter(
            out,
            "fanout_log_lines_dropped_total",
            "Log lines dropped because stdout's reader did not keep up (the log says how many where they are missing)",
            crate::log::writer::stdout_dropped_total(),
        );
    }
}

/// The calls now: how many are in flight and may be (admission), and when they stop waiting or hedge.
fn render_calls(out: &mut String, now: &ReadNow) {
    gauge(
        out,
        "fanout_http_server_active_requests",
        "API calls in flight now, admitted and not yet answered (OpenTelemetry http.server.active_requests)",
        now.in_flight,
    );
    gauge(
        out,
        "fanout_in_flight_limit",
        "API calls allowed in flight now: --max-in-flight, or less while the runtimes lag (api::limit)",
        now.in_flight_limit,
    );
    gauge(
        out,
        "fanout_runtime_lag_seconds",
        "How late the runtimes ran a task whose timer had fired, the worst of the last 0.5 s (api::limit)",
        now.runtime_lag.as_secs_f64(),
    );
    gauge(
        out,
        "fanout_deadline_lead_seconds",
        "How long before its deadline a call stops waiting now: the 99.9th percentile of how late answers were ready in the last busy second, at least the timer's 1 ms (api::lead)",
        now.deadline_lead.as_secs_f64(),
    );
    gauge(
        out,
        "fanout_smart_hedge_delay_seconds",
        "How long /api/smart waits for its first request before hedging: --hedge-delay-ms, or with `auto` the percentile of recent upstream latency (api::hedge)",
        now.hedge_delay.as_secs_f64(),
    );
}

/// The upstream connection pool: its connections now, and what it has done with them.
fn render_pool(out: &mut String, pool: &PoolStats) {
    labelled(
        out,
        "fanout_upstream_pool_connections",
        "gauge",
        "Open upstream connections by state: idle in the pool, or active (in an exchange, or being opened)",
        "state",
        [("idle", pool.idle), ("active", pool.open.saturating_sub(pool.idle))],
    );
    counter(
        out,
        "fanout_upstream_pool_connects_total",
        "New upstream connections established (TCP, and TLS for https)",
        pool.connects,
    );
    counter(
        out,
        "fanout_upstream_pool_reuses_total",
        "Upstream requests sent on an idle pooled connection",
        pool.reuses,
    );
    counter(
        out,
        "fanout_upstream_pool_stale_retries_total",
        "Upstream requests retried on a new connection because a reused one had been closed",
        pool.stale_retries,
    );
    counter(
        out,
        "fanout_upstream_pool_waits_total",
        "Upstream requests that waited for a connection because the connection cap was reached",
        pool.slot_waits,
    );
    gauge(
        out,
        "fanout_upstream_pool_lingering",
        "Upstream exchanges finishing in the background now, after their caller stopped waiting",
        pool.lingering,
    );
    labelled(
        out,
        "fanout_upstream_background_exchanges_total",
        "counter",
        "Upstream exchanges whose caller stopped waiting, by how they ended: finished (connection kept) or abandoned (closed)",
        "result",
        [("finished", pool.finished_in_background), ("abandoned", pool.abandoned)],
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
