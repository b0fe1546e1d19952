//! The inbound side: the accept loop, one task per connection, and shutdown.
//!
//! Reading order: this file (accept, drain), then `connection.rs` (one connection's request loop),
//! `http/request.rs` (what a head means), `http/response.rs` (what we write back).

mod connection;
mod limits;

pub(crate) use connection::parse;
pub use limits::{Limits, MAX_HEADERS_CEILING};

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
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

/// How far the server is in stopping. Every connection task watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// `shutdown` has completed and the listener stays open for `limits.drain_delay`: each answer
    /// carries `Connection: close`, but an idle connection is left open, since a load balancer that has
    /// not yet seen `/readyz` turn 503 may be sending a request on it this very moment (closed under
    /// it, that request is lost: the balancer cannot know whether we had read it).
    Draining,
    /// The listener is closed: idle connections close at once, busy ones after their answer.
    Closing,
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
    let limits = Arc::new(limits);
    // One sender, a receiver per connection.
    let (stop_tx, stop_rx) = watch::channel(Phase::Serving);
    // Owns every connection task: finished ones are reaped in the loop, the rest are awaited or aborted
    // at shutdown, so none outlives `serve` (a connection parked on the shed runtime is aborted with its
    // owner, and dropped there at the shed worker's next turn).
    let mut connections = JoinSet::new();
    // Accepting ends `drain_delay` after the drain begins: time for load balancers to see `/readyz` fail
    // and stop sending, while new connections are still answered rather than refused.
    let drain_delay = limits.drain_delay;
    let stop_accepting = async {
        shutdown.await;
        let _ = stop_tx.send(Phase::Draining);
        sleep(drain_delay).await;
    };
    tokio::pin!(stop_accepting);

    // One permit per open client connection. Over the cap a connection is still accepted, but only to
    // answer its first request `503` and close (see `Connection::refuse`): left in the kernel's backlog it
    // would wait, unanswered and with no deadline, until another client leaves.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));

    loop {
        tokio::select! {
            () = &mut stop_accepting => break,
            // `accept` is cancel safe: if another branch wins, a new client waits in the kernel's backlog.
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Answers are small and written whole: Nagle's delay would only add latency.
                    let _ = stream.set_nodelay(true);
                    let conn = Connection::new(
                        stream,
                        api.clone(),
                        limits.clone(),
                        stop_rx.clone(),
                        shed_runtime.clone(),
                    );
                    if let Ok(slot) = slots.clone().try_acquire_owned() {
                        connections.spawn(async move {
                            conn.run().await;
                            drop(slot); // the connection is closed: its slot is free
                        });
                    } else if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                        connections.spawn(async move {
                            conn.refuse().await;
                            drop(refusal);
                        });
                    } // else dropped: closed at once
                    api.connections_open(connections.len());
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    api.telemetry().log.error("accept_failed", serde_json::json!({
                        "error": e.to_string(),
                        "pause_ms": ACCEPT_BACKOFF.as_millis() as u64,
                    }));
                    sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                api.connections_open(connections.len());
                if let Some(e) = done.err().filter(|e| e.is_panic()) {
                    api.telemetry().log.error("connection_panicked", serde_json::json!({
                        "error": e.to_string(),
                    }));
                }
            }
        }
    }

    drop(listener); // new connections are now refused by the kernel
    let _ = stop_tx.send(Phase::Closing);
    let drained = timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        api.telemetry().log.warn(
            "drain_limit_reached",
            serde_json::json!({
                "closing_connections": connections.len(),
                "drain_timeout_ms": limits.drain_timeout.as_millis() as u64,
            }),
        );
        connections.shutdown().await;
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
