//! What the [`Simulator`](super::Simulator) handle and its connection tasks share.
//!
//! Counters are atomics, read without locks. The script and the log of seen requests are behind
//! std mutexes, not tokio's: they are held for a push or a pop, never across an `.await`. Every
//! change that a waiter might care about rings the bell, a `watch` channel whose value carries no
//! data: `watch` remembers that something changed since a receiver last looked, so a waiter that
//! subscribes, then checks its condition, then sleeps cannot miss a change in between.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::reply::Reply;
use super::{SeenRequest, SimConfig, SEEN_CAPACITY};
use crate::rng::Rng;

pub(super) struct Shared {
    pub(super) config: SimConfig,
    pub(super) script: Mutex<VecDeque<Reply>>,
    pub(super) seen: Mutex<VecDeque<SeenRequest>>,
    // The counters behind the `Simulator` methods of the same names (read with `Ordering::SeqCst`).
    pub(super) accepted: AtomicU64,
    pub(super) tls_resumed: AtomicU64,
    pub(super) open: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) in_flight: AtomicU64,
    bell: watch::Sender<()>,
    /// Rung by [`Simulator::reset_connections`](super::Simulator::reset_connections): every
    /// connection open then ends with a reset.
    pub(super) resets: watch::Sender<()>,
    rng: Rng,
}

/// A poisoned lock only means another task panicked mid-push; the data is still a valid queue.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn new(config: SimConfig) -> Shared {
        Shared {
            config,
            script: Mutex::new(VecDeque::new()),
            seen: Mutex::new(VecDeque::new()),
            accepted: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            open: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            bell: watch::Sender::new(()),
            resets: watch::Sender::new(()),
            rng: Rng::from_clock(),
        }
    }

    fn ring(&self) {
        // `send_replace` marks the value changed even when nobody is subscribed yet.
        self.bell.send_replace(());
    }

    /// The reply for the `GET /api/work` that just arrived: the next scripted one, or one drawn
    /// from the configuration. Called once per request, in arrival order.
    pub(super) fn next_reply(&self) -> Reply {
        if let Some(reply) = lock(&self.script).pop_front() {
            return reply;
        }
        let kinds = &self.config.failure_kinds;
        if !kinds.is_empty() && self.rng.chance(self.config.failure_rate) {
            let pick = self.rng.in_range(0, kinds.len() as u64 - 1) as usize;
            Reply::fault(kinds[pick])
        } else {
            Reply::ok()
        }
    }

    /// A latency drawn from the configured range.
    pub(super) fn random_latency(&self) -> Duration {
        let (min, max) = self.config.latency_ms;
        Duration::from_millis(self.rng.in_range(min, max))
    }

    /// Counts one request head and remembers it (keeping the last [`SEEN_CAPACITY`]); the request is in
    /// flight until the returned guard is dropped.
    pub(super) fn record(self: &Arc<Self>, request: SeenRequest) -> InFlight {
        {
            let mut seen = lock(&self.seen);
            if seen.len() == SEEN_CAPACITY {
                seen.pop_front();
            }
            seen.push_back(request);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.ring();
        InFlight(self.clone())
    }

    /// Counts a new connection as accepted and open until the returned guard is dropped.
    pub(super) fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        self.ring();
        OpenConnection(self.clone())
    }

    /// The body of `GET /stats`: `{"connections_accepted": N, "connections_open": N,
    /// "requests": N, "in_flight": N, "tls_resumed": N}`. `connections_open` includes the connection
    /// asking.
    pub(super) fn stats_json(&self) -> Vec<u8> {
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        format!(
            "{{\"connections_accepted\": {}, \"connections_open\": {}, \"requests\": {}, \"in_flight\": {}, \"tls_resumed\": {}}}",
            load(&self.accepted),
            load(&self.open),
            load(&self.requests),
            load(&self.in_flight),
            load(&self.tls_resumed)
        )
        .into_bytes()
    }

    /// Waits until `condition` holds, or `limit` passes (false).
    ///
    /// Cancel safety: only observes; dropping it changes nothing.
    pub(super) async fn wait_until(&self, limit: Duration, condition: impl Fn() -> bool) -> bool {
        // Subscribe before the first check: a change after this point is never missed.
        let mut bell = self.bell.subscribe();
        let waited = tokio::time::timeout(limit, bell.wait_for(|_| condition())).await;
        // The inner error (sender dropped) cannot happen while `self` is alive; treat it as "no".
        matches!(waited, Ok(Ok(_)))
    }
}

/// Held by a connection task for as long as its socket lives: the drop (normal end, error, or
/// the task being aborted with the simulator) is what takes the connection off `connections_open`.
pub(super) struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.ring();
    }
}

/// Held by a connection task from a request's head until its answer is sent, or the connection ends (a
/// client that gives up, a reset, a hang that ends): what `in_flight` counts.
pub(super) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.ring();
    }
}
