//! The one helper every strategy shares: start upstream requests, then take their outcomes in the order
//! they complete.
//!
//! Each upstream request is one task (see `Upstream::start`), which sends its outcome into a channel that [`Requests`]
//! owns. Dropping `Requests` closes the receiving end, and that is the whole of cancellation from the API's side: each
//! request sees its caller gone and stops, or, if already on the wire, finishes in the background within a bound to
//! save its connection. It is dropped when the strategy has its answer or its deadline came, and also when the call's
//! future is dropped: its client left (`server/connection.rs`), or the drain limit cut it. Nothing the caller waits for
//! outlives the response, or the caller.
//!
//! `Requests` also keeps the record of each request (an *attempt*): its span id in the call's trace, its
//! outcome, when it started (counted from the call's start, as the deadline is) and how long it took. Each
//! outcome goes to the metrics and the health window as it arrives; requests still running when `Requests` is
//! dropped end as `cancelled` (or `timeout`, if the deadline came). The list is written to a `Vec` the
//! caller lends, which outlives the call's future: the access line of a call whose client left still names
//! its attempts.

use std::future::pending;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use crate::telemetry::{Attempt, Telemetry};
use crate::trace::{CallTrace, SpanId};
use crate::upstream::{
    OutcomeKind, Reply, Report, RequestOptions, RunOn, Upstream, UpstreamError, Work,
};

/// One upstream request's result.
pub type Outcome = Result<Work, UpstreamError>;

/// A request is not started with less than this left before the deadline: it could not finish in time,
/// and would only load the upstream.
pub const MIN_USEFUL_TIME: Duration = Duration::from_millis(1);

/// An attempt while it may still be running.
struct Started {
    span_id: SpanId,
    at: Instant,
    ended: Option<(OutcomeKind, Duration)>,
}

/// What the requests of a decided call did, beyond its attempts.
#[derive(Debug, Default)]
pub struct Finished {
    /// Whether [`Requests::hedge`] started requests.
    pub hedged: bool,
    /// The index (in the attempts) of the first request to succeed, if any did.
    pub first_success: Option<usize>,
}

/// The upstream requests of one API call.
pub struct Requests<'a> {
    upstream: Arc<Upstream>,
    telemetry: Arc<Telemetry>,
    trace: CallTrace,
    /// When the call started (its head parsed): each attempt's start is counted from here.
    started: Instant,
    deadline: Instant,
    /// Cloned into every request started; kept so that more can be started later (smart's hedges).
    reply: Reply,
    /// Each request's report carries its attempt's index as its tag.
    outcomes: mpsc::UnboundedReceiver<Box<Report>>,
    attempts: Vec<Started>,
    /// Where the attempts go when `Requests` is dropped (see the module doc).
    record: &'a mut Vec<Attempt>,
    /// What the requests did so far.
    finished: Finished,
    /// Requests started whose outcome has not been taken yet.
    running: usize,
    /// Requests not started because the deadline was too close. They count as never finishing.
    skipped: usize,
    /// What went wrong so far, for the `502` message.
    failures: Vec<String>,
    /// Which runtime the requests run on.
    run_on: RunOn,
}

impl<'a> Requests<'a> {
    /// `started`: when the call's head was parsed. `record`: where each request's attempt is written when
    /// `Requests` is dropped, however the call ends.
    pub fn new(
        upstream: Arc<Upstream>,
        telemetry: Arc<Telemetry>,
        trace: CallTrace,
        started: Instant,
        deadline: Instant,
        run_on: RunOn,
        record: &'a mut Vec<Attempt>,
    ) -> Requests<'a> {
        let (reply, outcomes) = mpsc::unbounded_channel();
        Requests {
            upstream,
            telemetry,
            trace,
            started,
            deadline,
            attempts: Vec::with_capacity(3),
            record,
            finished: Finished::default(),
            reply,
            outcomes,
            running: 0,
            skipped: 0,
            failures: Vec::new(),
            run_on,
        }
    }

    /// Starts `n` more requests at once, each bounded by the call's deadline and carrying its own span of
    /// the call's trace. False if there was too little time left to start them.
    pub fn start(&mut self, n: usize) -> bool {
        // The requests are handed to the upstream together, so they share one start.
        let at = Instant::now();
        if self.deadline.saturating_duration_since(at) < MIN_USEFUL_TIME {
            self.skipped += n;
            return false;
        }
        let mut requests = Vec::with_capacity(n);
        for _ in 0..n {
            let traceparent = self.trace.child();
            requests.push(RequestOptions {
                tag: self.attempts.len(),
                trace: Some(traceparent),
            });
            self.attempts.push(Started {
                span_id: traceparent.parent_id,
                at,
                ended: None,
            });
        }
        self.upstream
            .start(self.deadline, requests, self.reply.clone(), self.run_on);
        self.running += n;
        true
    }

    /// Starts `n` hedge requests: as [`Requests::start`], remembered and counted as a hedge.
    pub fn hedge(&mut self, n: usize) {
        if self.start(n) {
            self.finished.hedged = true;
            self.telemetry.metrics.hedges.inc();
        }
    }

    /// Counts a hedge refused: the hedge delay passed but the budget had no room for one.
    pub fn hedge_refused(&mut self) {
        self.telemetry.metrics.hedges_refused.inc();
    }

    /// Notes a request's report: in its attempt's record, the metrics and the health window.
    fn ended(&mut self, report: &Report) {
        let outcome = OutcomeKind::of(&report.outcome);
        if let Some(attempt) = self.attempts.get_mut(report.tag) {
            attempt.ended = Some((outcome, report.duration));
        }
        if outcome == OutcomeKind::Ok {
            self.finished.first_success.get_or_insert(report.tag);
        }
        self.telemetry.upstream_done(outcome, report.duration);
        if let Err(error @ UpstreamError::Panicked) = &report.outcome {
            // A bug of ours that the `io_error` count alone would pass off as the network's: say so.
            let span_id = self.attempts.get(report.tag).map(|a| a.span_id.to_string());
            self.telemetry.log.error(
                "upstream_request_panicked",
                serde_json::json!({
                    "trace_id": self.trace.trace_id.to_string(),
                    "span_id": span_id,
                    "error": error.to_string(),
                }),
            );
        }
    }

    /// Ends the call once it is decided, and says what its requests did (see `Drop` for the rest).
    pub fn finish(mut self) -> Finished {
        self.settle();
        std::mem::take(&mut self.finished)
    }

    /// Closes the channel and settles every attempt: outcomes that arrived but were not taken are noted;
    /// requests still running end as `cancelled`, or as `timeout` if the deadline has come, and go to the
    /// metrics; the list goes to `record`. Closing the channel is what tells the requests still running that
    /// their caller is gone. A second call finds nothing left to do.
    fn settle(&mut self) {
        self.outcomes.close();
        while let Ok(report) = self.outcomes.try_recv() {
            self.ended(&report);
        }
        let now = Instant::now();
        let unfinished = if now >= self.deadline {
            OutcomeKind::Timeout
        } else {
            OutcomeKind::Cancelled
        };
        for a in self.attempts.drain(..) {
            let (outcome, duration) = a.ended.unwrap_or_else(|| {
                let duration = now.saturating_duration_since(a.at);
                self.telemetry.upstream_done(unfinished, duration);
                (unfinished, duration)
            });
            self.record.push(Attempt {
                span_id: a.span_id,
                outcome,
                start: a.at.saturating_duration_since(self.started),
                duration,
            });
        }
    }

    /// The next outcome to complete; `None` once every started request has completed.
    ///
    /// A request that timed out, or was skipped for lack of time, never completes here: like a request
    /// that hangs, it leaves the decision to the caller's deadline, which has come (or is under 1 ms away).
    /// Cancel safety: dropping this future loses no outcome (the channel keeps it until it is taken).
    pub async fn next(&mut self) -> Option<Outcome> {
        if self.running == 0 {
            if self.skipped > 0 {
                pending::<()>().await;
            }
            return None;
        }
        // `self.reply` keeps the channel open, so this waits for an outcome; a request whose task panicked
        // sends one all the same, `Panicked`, from its drop guard (`upstream::Reporter`).
        let report = *self.outcomes.recv().await?;
        self.running -= 1;
        self.ended(&report);
        if let Err(e) = &report.outcome {
            self.failures.push(e.to_string());
        }
        match report.outcome {
            // A request that ran out of time did not finish: the deadline has come, and the strategy's own
            // timer must decide (an `/api/all` whose third request timed out is a 504, not a 200 with two).
            Err(UpstreamError::Timeout) => pending().await,
            outcome => Some(outcome),
        }
    }

    /// The next success, skipping failures; `None` once every request has failed.
    pub async fn next_success(&mut self) -> Option<Work> {
        while let Some(outcome) = self.next().await {
            if let Ok(work) = outcome {
                return Some(work);
            }
        }
        None
    }

    /// What went wrong so far, for a person: `"status 500; connection reset"`.
    pub fn failures(&self) -> String {
        self.failures.join("; ")
    }
}

impl Drop for Requests<'_> {
    /// However the call ends, its requests are settled: decided ([`Requests::finish`] did it already), or its
    /// future dropped because its client left or the drain limit cut it (settled here).
    fn drop(&mut self) {
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogSettings, Logger};
    use crate::trace::CallTrace;
    use crate::upstream::UpstreamConfig;

    /// What a request task that panicked sends (its drop guard's `Panicked`) is a failure the strategy sees
    /// at once, counted as `io_error` and logged.
    #[tokio::test]
    async fn a_request_whose_task_panicked_is_a_failure_counted_and_logged_at_once() {
        let upstream = Upstream::new(UpstreamConfig::new("http://127.0.0.1:9/")).expect("valid");
        let mut telemetry = Telemetry::new(LogSettings::default(), 0.5);
        let (log, lines) = Logger::in_memory(LogSettings::default());
        telemetry.log = log;
        let telemetry = Arc::new(telemetry);
        let trace = CallTrace::continue_or_start(None);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let mut record = Vec::new();
        let mut requests = Requests::new(
            Arc::new(upstream),
            telemetry.clone(),
            trace,
            started,
            deadline,
            RunOn::CallersRuntime,
            &mut record,
        );
        // One request running, as `start` leaves it, whose task panicked: no network needed.
        requests.running = 1;
        let report = Report {
            tag: 0,
            outcome: Err(UpstreamError::Panicked),
            duration: Duration::ZERO,
        };
        requests
            .reply
            .send(Box::new(report))
            .expect("the channel is open");
        let outcome = requests.next().await;
        assert!(
            matches!(outcome, Some(Err(UpstreamError::Panicked))),
            "{outcome:?}"
        );
        drop(requests);
        let io_errors = &telemetry.metrics.client_duration[OutcomeKind::IoError as usize];
        assert_eq!(io_errors.count(), 1);
        let logged = lines.lines();
        assert!(
            logged
                .iter()
                .any(|l| l.contains("\"event\":\"upstream_request_panicked\"")),
            "{logged:?}"
        );
    }
}
