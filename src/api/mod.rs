//! The API: routing, the `timeout` parameter, and the four strategies.
//!
//! Reading order: [`Api::prepare`] and [`Api::run`] (here), then [`query`] (the `timeout` parameter),
//! [`requests`] (starting upstream requests and collecting their outcomes), [`strategies`] (one function per
//! endpoint), [`hedge`] (when `/api/smart` hedges, and how often it may) and [`lead`] (how long before its
//! deadline a call stops waiting). [`limit`] (the in-flight limit) and `clock` (time kept in atomics) are
//! machinery a first reading may skip.

mod clock;
pub mod hedge;
pub mod lead;
pub mod limit;
pub mod query;
pub mod requests;
pub mod strategies;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::{Duration, Instant};

pub use crate::endpoint::Endpoint;
use crate::held::Held;
use crate::http::request::RequestHead;
use crate::http::response::Response;
use crate::metrics::ShedReason;
use crate::telemetry::{Attempt, ReadNow, Telemetry};
use crate::trace::CallTrace;
use crate::upstream::{PoolStats, RunOn, Upstream};
use hedge::Hedging;
use lead::Lead;
use limit::Limit;
use requests::Requests;
use strategies::{Answer, Failure};

/// An answer, and what the call was, for its metrics and access line.
pub struct Handled {
    pub response: Response,
    /// The endpoint, if the path named one.
    pub endpoint: Option<Endpoint>,
    /// The `timeout` asked for, if it was valid: the deadline is the head's parse time plus this.
    pub timeout: Option<Duration>,
    /// Whether the call was shed (admission control): its connection then moves to the shed runtime, or
    /// pauses (`--shed-pause-ms`).
    pub shed: bool,
}

impl Handled {
    /// An answer given without calling the upstream.
    pub fn plain(response: Response, endpoint: Option<Endpoint>) -> Handled {
        Handled {
            response,
            endpoint,
            timeout: None,
            shed: false,
        }
    }
}

/// The API's settings, read from flags by `config` (the defaults and their reasons are there, or in
/// [`hedge`], [`lead`] and [`limit`]).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The largest `timeout` a caller may ask for.
    pub max_timeout_ms: u64,
    /// When `/api/smart` fires its two extra requests, and how often it may.
    pub hedge: hedge::Settings,
    /// API calls in flight at once at most; more are shed.
    pub max_in_flight: usize,
    /// Runtime lag over which the in-flight limit falls below `max_in_flight` (zero: never).
    pub overload_lag: Duration,
    /// The most a call's timer is aimed before its deadline.
    pub max_deadline_lead: Duration,
}

/// What the API needs to answer calls; shared by all connections.
pub struct Api {
    upstream: Arc<Upstream>,
    telemetry: Arc<Telemetry>,
    max_timeout_ms: u64,
    /// `/api/smart`'s hedge delay and budget (see [`hedge`]).
    hedging: Hedging,
    /// Admission control: calls in flight now, and the most allowed (see [`limit`]).
    in_flight: Arc<AtomicUsize>,
    limit: Arc<Limit>,
    /// Client connections open now, as the accept loop last counted them (see [`SPREAD_ABOVE`]).
    connections: AtomicUsize,
    /// How long before its deadline a call stops waiting (see [`lead`]).
    lead: Lead,
}

/// With more client connections open than this, a call's upstream requests run on the upstream runtime
/// (`--upstream-threads`); with this many or fewer, on the API's own runtime.
///
/// Why: the upstream runtime keeps upstream work from queuing ahead of deadline answers. The most work that
/// can arrive at once is one new call per open connection (HTTP/1.1 serves a connection's requests one at
/// a time), each starting 3 upstream requests at about 15 µs of CPU each. 100 calls' worth is 4.5 ms, inside
/// the 5 ms an answer may be late; below that the upstream runtime buys nothing and its cost, two thread
/// wake-ups per call (the start crossing over, the outcome crossing back), is 15% more CPU per call at
/// light load (DESIGN.md, "Two runtimes").
pub const SPREAD_ABOVE: usize = 100;

/// What [`Api::prepare`] decided.
pub enum Prepared {
    /// The answer, given without the upstream: an error, or the call shed.
    Answer(Handled),
    /// A call admitted: [`Api::run`] answers it.
    Call(Call),
}

/// An admitted call, ready to run: its place is held until it is answered or dropped.
#[derive(Debug)]
pub struct Call {
    endpoint: Endpoint,
    timeout: Duration,
    /// When its head was parsed: the deadline, and the access line's times, count from here.
    started: Instant,
    /// The strategy's deadline: `started + timeout` less the lead.
    deadline: Instant,
    /// Its place among the calls in flight (see [`Api::admit`]).
    _place: Held<Arc<AtomicUsize>>,
}

impl Call {
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The `timeout` the caller asked for (the strategy's deadline is a little earlier: see `lead`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Api {
    pub fn new(upstream: Arc<Upstream>, telemetry: Arc<Telemetry>, settings: &Settings) -> Api {
        Api {
            upstream,
            telemetry,
            max_timeout_ms: settings.max_timeout_ms,
            hedging: Hedging::new(&settings.hedge, Instant::now()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit: Arc::new(Limit::new(settings.max_in_flight, settings.overload_lag)),
            connections: AtomicUsize::new(0),
            lead: Lead::new(Instant::now(), settings.max_deadline_lead),
        }
    }

    /// The accept loop's count of open client connections.
    pub fn connections_open(&self, n: usize) {
        self.connections.store(n, Ordering::Relaxed);
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// API calls admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn upstream_stats(&self) -> PoolStats {
        self.upstream.stats()
    }

    /// `/api/smart`'s hedge delay and budget.
    pub fn hedging(&self) -> &Hedging {
        &self.hedging
    }

    /// The in-flight limit, whose probes and control loop `serve` runs.
    pub fn limit(&self) -> &Arc<Limit> {
        &self.limit
    }

    /// The Prometheus exposition of everything (see `Telemetry::render`).
    pub fn render_metrics(&self) -> String {
        self.telemetry.render(&ReadNow {
            in_flight: self.in_flight(),
            in_flight_limit: self.limit.current(),
            runtime_lag: self.limit.last_lag(),
            deadline_lead: self.lead.current(Instant::now()),
            hedge_delay: self.hedging.current(),
            pool: self.upstream.stats(),
        })
    }

    /// Takes a place for one more call, if there is one: a drop guard that counts the call in flight for as
    /// long as it lives, so every way a call ends gives it back, a dropped future included. Beyond the limit
    /// the call is shed at once: waiting would only make it miss its deadline, and the upstream is spared
    /// work nobody could use in time.
    fn admit(&self) -> Option<Held<Arc<AtomicUsize>>> {
        let (place, n) = Held::counted(self.in_flight.clone());
        if n > self.limit.current() {
            return None; // `place` is dropped: given back
        }
        self.limit.in_flight(n);
        Some(place)
    }

    /// The first half of answering one request, which needs no waiting: routing and the `timeout` parameter
    /// (`route`), then admission. Either the answer (an error, or the call shed), or a call admitted, its place taken,
    /// for [`Api::run`]. `started` is when its head was parsed: the deadline counts from there. The two
    /// halves are apart because the shed runtime (`server/connection.rs`) runs only this one: it answers
    /// there what needs no upstream, and hands an admitted call back to the API's runtime.
    pub fn prepare(&self, head: &RequestHead, started: Instant) -> Prepared {
        let (endpoint, timeout) = match route(head, self.max_timeout_ms) {
            Ok(call) => call,
            Err(answer) => return Prepared::Answer(answer),
        };
        // The strategy's deadline is the call's less the lead: at least one timer tick (tokio's timer
        // rounds up to whole milliseconds), more when answers have lately been written late (`lead`).
        let deadline = started + timeout.saturating_sub(self.lead.for_timeout(timeout, started));
        let Some(place) = self.admit() else {
            self.shed(ShedReason::MaxInFlight, self.limit.current());
            let response = shed_answer(Some(endpoint), "too many calls in flight");
            return Prepared::Answer(Handled {
                timeout: Some(timeout),
                shed: true,
                ..Handled::plain(response, Some(endpoint))
            });
        };
        Prepared::Call(Call {
            endpoint,
            timeout,
            started,
            deadline,
            _place: place,
        })
    }

    /// Runs an admitted call to its answer. `trace` is the call's span: each upstream request becomes a
    /// child of it. Each request the call makes is written to `attempts` when the call ends.
    ///
    /// Cancel safety: dropping this future (its client left) drops the call, whose place is given back, and
    /// its [`Requests`], so its upstream requests see their caller gone (see `api::requests`) and `attempts` gets
    /// them all, those still running as `cancelled`.
    pub async fn run(&self, call: Call, trace: &CallTrace, attempts: &mut Vec<Attempt>) -> Handled {
        // `call` itself lives to the end, and with it the call's place.
        let (endpoint, timeout, deadline) = (call.endpoint, call.timeout, call.deadline);
        let mut requests = Requests::new(
            self.upstream.clone(),
            self.telemetry.clone(),
            *trace,
            call.started,
            deadline,
            self.run_on(),
            attempts,
        );

        let outcome = match endpoint {
            // A deadline already passed (`timeout=0`, or one within the lead): no request would start, and
            // the strategy would wait for its timer's next tick, up to a millisecond, to say so.
            _ if Instant::now() >= deadline => strategies::at_deadline(endpoint),
            Endpoint::All => strategies::all(&mut requests, deadline).await,
            Endpoint::First => strategies::first(&mut requests, deadline).await,
            Endpoint::WithinTimeout => {
                Ok(strategies::within_timeout(&mut requests, deadline).await)
            }
            Endpoint::Smart => {
                strategies::smart(
                    &mut requests,
                    deadline,
                    &self.hedging,
                    &self.telemetry.health,
                )
                .await
            }
        };
        // The answer is decided: what is still running is cancelled now, before the response is written.
        let finished = requests.finish();
        // The answer of /api/smart is its first success; a hedge won if that was not request 0.
        if finished.hedged && outcome.is_ok() && finished.first_success.is_some_and(|i| i > 0) {
            self.telemetry.metrics.hedges_won.inc();
        }
        let response = respond(outcome, timeout);
        // A call that waited until its strategy's deadline: how late it is ready to be written sets the
        // lead for the calls to come.
        let now = Instant::now();
        if now >= deadline {
            self.lead.record(now - deadline, now);
        }
        Handled {
            timeout: Some(timeout),
            ..Handled::plain(response, Some(endpoint))
        }
    }

    /// Which runtime a call's upstream requests run on: the upstream runtime while more than
    /// [`SPREAD_ABOVE`] clients are connected, the caller's otherwise.
    fn run_on(&self) -> RunOn {
        if self.connections.load(Ordering::Relaxed) > SPREAD_ABOVE {
            RunOn::UpstreamRuntime
        } else {
            RunOn::CallersRuntime
        }
    }

    /// Counts a shed call, and says so in the log (rate-limited: shedding comes in floods) with the limit
    /// that was reached, under the reason's own name: `{"reason": "max_in_flight", "max_in_flight": 2560}`.
    pub(crate) fn shed(&self, reason: ShedReason, limit: usize) {
        self.telemetry.metrics.shed[reason as usize].inc();
        let fields = serde_json::json!({"reason": reason.label(), reason.label(): limit});
        self.telemetry.log.warn("call_shed", fields);
    }
}

/// What a request asks for, judged from its head alone: its endpoint and `timeout`, or the answer without
/// the upstream (an error, or `OPTIONS *`'s). The part of [`Api::prepare`] that needs no state, so the fuzz
/// target `request_head` (`fuzzing.rs`) can feed it any head.
pub(crate) fn route(
    head: &RequestHead,
    max_timeout_ms: u64,
) -> Result<(Endpoint, Duration), Handled> {
    let (path, query) = head
        .routable()
        .map_err(|response| Handled::plain(response, None))?;
    let Some(endpoint) = Endpoint::from_path(path) else {
        let response = Response::error(
            404,
            "not_found",
            "no such endpoint; use /api/all, /api/first, /api/within-timeout or /api/smart",
        );
        return Err(Handled::plain(response, None));
    };
    if let Some(response) = head.not_get_or_head(path) {
        return Err(Handled::plain(response, Some(endpoint)));
    }
    let timeout = match query::timeout_ms(query, max_timeout_ms) {
        Ok(ms) => Duration::from_millis(ms),
        Err(message) => {
            let response = Response::error(400, "bad_request", &message);
            return Err(Handled::plain(response, Some(endpoint)));
        }
    };
    Ok((endpoint, timeout))
}

/// The answer to a call shed because `why` (a limit was reached), whichever limit it was: `200 []` from
/// `/api/within-timeout`, whose contract is never to fail (what arrived in time is nothing), and
/// `503 overloaded` with `Retry-After: 1` from everything else.
pub fn shed_answer(endpoint: Option<Endpoint>, why: &str) -> Response {
    match endpoint {
        Some(Endpoint::WithinTimeout) => Response::json(200, b"[]".to_vec()),
        _ => Response::error(503, "overloaded", &format!("{why}; retry in a moment"))
            .with_header("Retry-After", "1"),
    }
}

/// The response to a decided call: `200` with its answer, `504` at the deadline, `502` when every request
/// failed.
fn respond(outcome: Result<Answer, Failure>, timeout: Duration) -> Response {
    match outcome {
        Ok(answer) => Response::json(200, encode(&answer)),
        Err(Failure::Timeout) => Response::error(
            504,
            "timeout",
            &format!(
                "the upstream did not answer within the timeout of {} ms",
                timeout.as_millis()
            ),
        ),
        Err(Failure::AllFailed(why)) => Response::error(
            502,
            "upstream_failed",
            &format!("every upstream request failed: {why}"),
        ),
    }
}

/// The response body: the object itself, or a JSON array of objects. Each object's text is passed on as
/// the upstream sent it (compacted), so no re-serialisation is needed.
fn encode(answer: &Answer) -> Vec<u8> {
    match answer {
        Answer::One(work) => work.json.as_bytes().to_vec(),
        Answer::List(list) => {
            let objects: Vec<&str> = list.iter().map(|work| &*work.json).collect();
            format!("[{}]", objects.join(",")).into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogSettings;
    use crate::upstream::UpstreamConfig;

    #[test]
    fn admission_takes_places_up_to_the_limit_as_it_is_now() {
        let settings = Settings {
            max_timeout_ms: 1000,
            hedge: hedge::Settings::default(),
            max_in_flight: 80,
            overload_lag: limit::DEFAULT_LAG,
            max_deadline_lead: lead::DEFAULT_MAX,
        };
        let upstream =
            Arc::new(Upstream::new(UpstreamConfig::new("http://127.0.0.1:9")).expect("url"));
        let api = Api::new(
            upstream,
            Arc::new(Telemetry::new(LogSettings::default(), 0.5)),
            &settings,
        );
        let fill = |api: &Api| {
            std::iter::from_fn(|| api.admit())
                .take(1000)
                .collect::<Vec<_>>()
        };

        let places = fill(&api);
        assert_eq!(places.len(), 80, "the ceiling");
        drop(places);
        // A window over the lag threshold with the limit reached: a tenth off.
        let held = fill(&api);
        api.limit().record_lag(Duration::from_millis(500));
        api.limit().adjust();
        drop(held);
        assert_eq!(fill(&api).len(), 72);
        assert_eq!(api.in_flight(), 0, "every place given back");
    }
}
