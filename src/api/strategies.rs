//! The four ways of combining upstream answers, one function each. They speak in outcomes only:
//! sockets, pools and retries are the upstream client's business.
//!
//! Every strategy holds its deadline the same way: the waiting is wrapped in `timeout_at(deadline, ..)`,
//! and when the timer fires the strategy returns at once; the API then ends its [`Requests`], which tells the
//! requests still running that their caller has gone. (Strategies borrow the `Requests` so that the API can
//! report its attempts.)

use tokio::time::{timeout_at, Instant};

use super::hedge::Hedging;
use super::requests::Requests;
use crate::endpoint::Endpoint;
use crate::health::Health;
use crate::upstream::Work;

/// Upstream requests per API call.
pub const FAN_OUT: usize = 3;

/// A successful API answer.
#[derive(Debug)]
pub enum Answer {
    /// One upstream object (`/api/first`, `/api/smart`).
    One(Work),
    /// A list of them, in completion order (`/api/all`, `/api/within-timeout`).
    List(Vec<Work>),
}

/// Why an API call has no successful answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The deadline came first: `504`.
    Timeout,
    /// Every upstream request failed, with these reasons: `502`.
    AllFailed(String),
}

/// What each strategy answers when its deadline comes with nothing arrived: `[]` from
/// `/api/within-timeout`, a timeout from the others.
pub fn at_deadline(endpoint: Endpoint) -> Result<Answer, Failure> {
    match endpoint {
        Endpoint::WithinTimeout => Ok(Answer::List(Vec::new())),
        _ => Err(Failure::Timeout),
    }
}

/// `/api/all`: all 3 must finish before the deadline; the successes among them, if any.
pub async fn all(requests: &mut Requests<'_>, deadline: Instant) -> Result<Answer, Failure> {
    requests.start(FAN_OUT);
    let mut successes = Vec::new();
    while let Some(outcome) = timeout_at(deadline, requests.next())
        .await
        .map_err(|_| Failure::Timeout)?
    {
        successes.extend(outcome.ok());
    }
    if successes.is_empty() {
        return Err(Failure::AllFailed(requests.failures()));
    }
    Ok(Answer::List(successes))
}

/// `/api/first`: the first success of 3, as soon as it arrives.
pub async fn first(requests: &mut Requests<'_>, deadline: Instant) -> Result<Answer, Failure> {
    requests.start(FAN_OUT);
    first_success(requests, deadline).await
}

/// `/api/within-timeout`: the successes that arrived before the deadline, possibly none. Never fails.
pub async fn within_timeout(requests: &mut Requests<'_>, deadline: Instant) -> Answer {
    requests.start(FAN_OUT);
    let mut successes = Vec::new();
    // Ends when all 3 finished or at the deadline, whichever is first; either way the list is the answer.
    let _ = timeout_at(deadline, async {
        while let Some(outcome) = requests.next().await {
            successes.extend(outcome.ok());
        }
    })
    .await;
    Answer::List(successes)
}

/// `/api/smart`: a hedged request. One request; if it has not succeeded within `hedging`'s delay (learned
/// from `health` with `auto`) or failed sooner, 2 more at once; the first success of all 3, the first one
/// included. When the delay passes and `hedging`'s budget has no room for 2 more requests, the call waits
/// for its first request alone instead, and fires the other 2 only if that fails (see `api::hedge`).
pub async fn smart(
    requests: &mut Requests<'_>,
    deadline: Instant,
    hedging: &Hedging,
    health: &Health,
) -> Result<Answer, Failure> {
    let delay = hedging.delay(health, Instant::now());
    hedging.earn();
    requests.start(1);
    let hedge_at = (Instant::now() + delay).min(deadline);
    // The hedge timer drops only this wait: the first request runs on, its outcome kept for later.
    match timeout_at(hedge_at, requests.next()).await {
        Ok(Some(Ok(work))) => return Ok(Answer::One(work)),
        // The first request failed early: hedge at once, whatever the budget.
        Ok(_) => {}
        // The deadline came first: too late to start more.
        Err(_) if hedge_at == deadline => return Err(Failure::Timeout),
        // The delay passed with the first request still running.
        Err(_) if hedging.spend(FAN_OUT - 1) => {}
        Err(_) => {
            requests.hedge_refused();
            match timeout_at(deadline, requests.next()).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Some(Ok(work))) => return Ok(Answer::One(work)),
                Ok(_) => {} // it failed: hedge after all
            }
        }
    }
    requests.hedge(FAN_OUT - 1);
    first_success(requests, deadline).await
}

async fn first_success(requests: &mut Requests<'_>, deadline: Instant) -> Result<Answer, Failure> {
    match timeout_at(deadline, requests.next_success()).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Some(work)) => Ok(Answer::One(work)),
        Ok(None) => Err(Failure::AllFailed(requests.failures())),
    }
}
