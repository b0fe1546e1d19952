//! The one helper every strategy shares: start upstream requests, then take their outcomes in the order
//! they complete.
//!
//! Each upstream request is one task (see `Upstream::start`), which sends its outcome into a channel that
//! [`Calls`] owns. Dropping `Calls` (the strategy has its answer, or its deadline came) drops the receiving
//! end, and that is the whole of cancellation from the API's side: each request sees its caller gone and
//! stops, or, if already on the wire, finishes in the background within a bound to save its connection.
//! Nothing the caller waits for outlives the response.

use std::future::pending;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use crate::upstream::{Reply, Upstream, UpstreamError, Work};

/// One upstream request's result.
pub type Outcome = Result<Work, UpstreamError>;

/// A request is not started with less than this left before the deadline: it could not finish in time,
/// and would only load the upstream.
pub const MIN_USEFUL_TIME: Duration = Duration::from_millis(1);

/// The upstream requests of one API call.
pub struct Calls {
    upstream: Arc<Upstream>,
    deadline: Instant,
    /// Cloned into every request started; kept so that more can be started later (smart's hedges).
    reply: Reply,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    /// Requests started whose outcome has not been taken yet.
    running: usize,
    /// Requests not started because the deadline was too close. They count as never finishing.
    skipped: usize,
    /// What went wrong so far, for the `502` message.
    failures: Vec<String>,
}

impl Calls {
    pub fn new(upstream: Arc<Upstream>, deadline: Instant) -> Calls {
        let (reply, outcomes) = mpsc::unbounded_channel();
        Calls {
            upstream,
            deadline,
            reply,
            outcomes,
            running: 0,
            skipped: 0,
            failures: Vec::new(),
        }
    }

    /// Starts `n` more requests at once, each bounded by the call's deadline.
    pub fn start(&mut self, n: usize) {
        if self.deadline.saturating_duration_since(Instant::now()) < MIN_USEFUL_TIME {
            self.skipped += n;
            return;
        }
        for _ in 0..n {
            self.upstream.start(self.deadline, self.reply.clone());
        }
        self.running += n;
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
        // `self.reply` keeps the channel open, so this waits for an outcome; a request that panicked
        // never sends one and so counts as never finishing.
        let outcome = self.outcomes.recv().await?;
        self.running -= 1;
        match outcome {
            // A request that ran out of time did not finish: the deadline has come, and the strategy's own
            // timer must decide (an `/api/all` whose third request timed out is a 504, not a 200 with two).
            Err(UpstreamError::Timeout) => {
                self.failures.push(UpstreamError::Timeout.to_string());
                pending().await
            }
            Err(e) => {
                self.failures.push(e.to_string());
                Some(Err(e))
            }
            Ok(work) => Some(Ok(work)),
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
