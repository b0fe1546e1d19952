//! The one helper every strategy shares: start upstream requests, then take their outcomes in the order
//! they complete.
//!
//! Each request runs as its own task in a [`JoinSet`] owned by [`Calls`]. The set is the owner that makes
//! cancellation simple: when a strategy has its answer and returns, `Calls` is dropped, the set aborts
//! the tasks still running, and each aborted task drops its upstream connection mid-exchange. Nothing
//! the caller waited for outlives the response.

use std::future::pending;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

use crate::upstream::{Upstream, UpstreamError, Work};

/// One upstream request's result.
pub type Outcome = Result<Work, UpstreamError>;

/// A request is not started with less than this left before the deadline: it could not finish in time,
/// and would only load the upstream.
pub const MIN_USEFUL_TIME: Duration = Duration::from_millis(1);

/// The upstream requests of one API call.
pub struct Calls {
    upstream: Arc<Upstream>,
    deadline: Instant,
    running: JoinSet<Outcome>,
    /// Requests not started because the deadline was too close. They count as never finishing.
    skipped: usize,
    /// Labels of the failures seen so far, for the `502` message.
    failures: Vec<String>,
}

impl Calls {
    pub fn new(upstream: Arc<Upstream>, deadline: Instant) -> Calls {
        Calls { upstream, deadline, running: JoinSet::new(), skipped: 0, failures: Vec::new() }
    }

    /// Starts `n` more requests at once, each bounded by the call's deadline.
    pub fn start(&mut self, n: usize) {
        if self.deadline.saturating_duration_since(Instant::now()) < MIN_USEFUL_TIME {
            self.skipped += n;
            return;
        }
        for _ in 0..n {
            let upstream = self.upstream.clone();
            let deadline = self.deadline;
            self.running.spawn(async move { upstream.fetch(deadline).await });
        }
    }

    /// The next outcome to complete; `None` once every started request has completed.
    ///
    /// A request that timed out, or was skipped for lack of time, never completes here: like a request
    /// that hangs, it leaves the decision to the caller's deadline, which has come (or is under 1 ms away). Cancel safety: dropping this future loses no outcome (a
    /// `JoinSet` keeps results until they are taken).
    pub async fn next(&mut self) -> Option<Outcome> {
        let outcome = match self.running.join_next().await {
            // A request that ran out of time did not finish: the deadline has come, and the strategy's own
            // timer must decide (an `/api/all` whose third request timed out is a 504, not a 200 with two).
            Some(Ok(Err(UpstreamError::Timeout))) => {
                self.failures.push(UpstreamError::Timeout.to_string());
                return pending().await;
            }
            Some(Ok(outcome)) => outcome,
            // Only a panic can get here (tasks are aborted only when `Calls` is dropped).
            Some(Err(e)) => Err(UpstreamError::Io(std::io::Error::other(format!("upstream task failed: {e}")))),
            None if self.skipped > 0 => pending().await,
            None => return None,
        };
        if let Err(e) = &outcome {
            self.failures.push(e.to_string());
        }
        Some(outcome)
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
