//! The inbound side: the accept loop, one task per connection, and shutdown.
//!
//! Reading order: this file (accept, drain), then `connection.rs` (one connection's request loop),
//! `http/request.rs` (what a head means), `http/response.rs` (what we write back).

mod connection;
mod limits;

pub(crate) use connection::{parse, refused_head_only};
pub use limits::{Limits, MAX_HEADERS_CEILING};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{sleep, timeout, Duration};

use crate::api::Api;
use connection::Connection;

/// How long the accept loop pauses after an error that is about the server, not one client (out of file
/// descriptors: EMFILE, ENFILE). Retrying at once would spin; the pause lets connections close.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections over `--max-connections` being answered `503` at once. Each holds a descriptor until its
/// request head is in (the head timeout at most) and the answer is out; beyond this many, a connection over
/// the cap is closed as soon as it is accepted, so a flood cannot turn refusals into a resource of its own.
pub const MAX_REFUSING: usize = 1024;

/// How far the server is in stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// `shutdown` has completed and the listener stays open for `limits.drain_delay`: each answer
    /// carries `Connection: close`, but an idle connection is left open, since a load balancer that has
    /// not yet seen `/readyz` turn 503 may be sending a request on it this very moment (closed under
    /// it, that request is lost: the balancer cannot know whether we had read it).
    Draining,
    /// The listener is closed: idle connections close at once, busy ones after their answer.
    Closing,
}

/// A connection's view of the server stopping (as mini-redis's `Shutdown`): each connection task holds
/// one, and the accept loop moves them all on at once through the `watch` channel behind them.
#[derive(Clone)]
pub(crate) struct Shutdown(watch::Receiver<Phase>);

impl Shutdown {
    /// Whether the server is stopping: from now on each answer says `Connection: close`.
    pub(crate) fn is_stopping(&self) -> bool {
        *self.0.borrow() != Phase::Serving
    }

    /// Whether the listener has closed: a connection between requests closes now.
    pub(crate) fn is_closing(&self) -> bool {
        *self.0.borrow() == Phase::Closing
    }

    /// Completes when the listener closes (at once if it has).
    ///
    /// Cancel safety: only waits; dropping it loses nothing (the phase stays in the channel).
    pub(crate) async fn closing(&mut self) {
        // An error means the accept loop is gone, which ends every connection anyway.
        let _ = self.0.wait_for(|phase| *phase == Phase::Closing).await;
    }
}

/// Accepts connections on `listener` and serves each on its own task until `shutdown` completes; then
/// goes on accepting for `limits.drain_delay` (see `Phase::Draining`), stops accepting, closes idle
/// connections, lets busy ones finish their request (each bounded by its deadline) and returns when all
/// are done or `limits.drain_timeout` has passed.
///
/// `shed_runtime`, if given, serves connections while their calls are shed (see `connection.rs`).
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    limits: Limits,
    shed_runtime: Option<Handle>,
    shutdown: impl Future<Output = ()>,
) {
    // One sender, a receiver in each connection's `Shutdown`.
    let (phase, watching) = watch::channel(Phase::Serving);
    let mut server = Server::new(api, limits, shed_runtime, Shutdown(watching));
    // Accepting ends `drain_delay` after the drain begins: time for load balancers to see `/readyz` fail
    // and stop sending, while new connections are still answered rather than refused.
    let drain_delay = server.limits.drain_delay;
    let stop_accepting = async {
        shutdown.await;
        let _ = phase.send(Phase::Draining);
        sleep(drain_delay).await;
    };
    tokio::pin!(stop_accepting);
    loop {
        tokio::select! {
            () = &mut stop_accepting => break,
            // `accept` is cancel safe: if another branch wins, a new client waits in the kernel's backlog.
            accepted = listener.accept() => server.accepted(accepted).await,
            // Reaped as they end, so the set holds only live connections (`join_next` is cancel safe).
            Some(done) = server.connections.join_next(), if !server.connections.is_empty() => {
                server.ended(done)
            }
        }
    }
    drop(listener); // new connections are now refused by the kernel
    let _ = phase.send(Phase::Closing);
    server.drain().await;
}

/// The accept loop's state: what each connection is given, the caps, and the connection tasks it owns.
struct Server {
    api: Arc<Api>,
    limits: Arc<Limits>,
    shed_runtime: Option<Handle>,
    shutdown: Shutdown,
    /// Owns every connection task: finished ones are reaped in the loop, the rest are awaited or aborted
    /// at shutdown, so none outlives `serve` (a connection parked on the shed runtime is aborted with its
    /// owner, and dropped there at the shed worker's next turn).
    connections: JoinSet<()>,
    /// One permit per open client connection. Over the cap a connection is still accepted, but only to
    /// answer its first request `503` and close (see `Connection::refuse`): left in the kernel's backlog
    /// it would wait, unanswered and with no deadline, until another client leaves.
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
}

impl Server {
    fn new(
        api: Arc<Api>,
        limits: Limits,
        shed_runtime: Option<Handle>,
        shutdown: Shutdown,
    ) -> Server {
        Server {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            api,
            limits: Arc::new(limits),
            shed_runtime,
            shutdown,
            connections: JoinSet::new(),
        }
    }

    /// A connection accepted: served on a task of its own, or refused; an accept error about the server
    /// (out of descriptors) pauses the loop.
    async fn accepted(&mut self, accepted: io::Result<(TcpStream, SocketAddr)>) {
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_per_connection(&e) => return,
            Err(e) => {
                let pause_ms = ACCEPT_BACKOFF.as_millis() as u64;
                let fields = serde_json::json!({"error": e.to_string(), "pause_ms": pause_ms});
                self.api.telemetry().log.error("accept_failed", fields);
                return sleep(ACCEPT_BACKOFF).await;
            }
        };
        // Answers are small and written whole: Nagle's delay would only add latency.
        let _ = stream.set_nodelay(true);
        let conn = Connection::new(
            stream,
            self.api.clone(),
            self.limits.clone(),
            self.shutdown.clone(),
            self.shed_runtime.clone(),
        );
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            self.connections.spawn(async move {
                conn.run().await;
                drop(slot); // the connection is closed: its slot is free
            });
        } else if let Ok(refusal) = self.refusing.clone().try_acquire_owned() {
            self.connections.spawn(async move {
                conn.refuse().await;
                drop(refusal);
            });
        } // else dropped: closed at once
        self.api.connections_open(self.connections.len());
    }

    /// A connection task ended; one that panicked is logged (the others go on).
    fn ended(&mut self, done: Result<(), JoinError>) {
        self.api.connections_open(self.connections.len());
        if let Some(e) = done.err().filter(|e| e.is_panic()) {
            let fields = serde_json::json!({"error": e.to_string()});
            self.api
                .telemetry()
                .log
                .error("connection_panicked", fields);
        }
    }

    /// Waits for the connections still open to finish, for `drain_timeout` at most; then aborts the rest.
    async fn drain(mut self) {
        let drained = timeout(self.limits.drain_timeout, async {
            while self.connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let fields = serde_json::json!({
                "closing_connections": self.connections.len(),
                "drain_timeout_ms": self.limits.drain_timeout.as_millis() as u64,
            });
            self.api.telemetry().log.warn("drain_limit_reached", fields);
            self.connections.shutdown().await;
        }
    }
}

/// Errors that concern only the connection being accepted (it was reset before we took it, say).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
