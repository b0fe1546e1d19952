//! The accept loop: one task per connection, all owned here in a `JoinSet`. Aborting the loop (as
//! dropping the [`Simulator`](super::Simulator) does) drops the set, which aborts every connection
//! task, which closes its socket: no task is detached, so none can outlive the simulator.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::sleep;
use tokio_rustls::TlsAcceptor;

use super::connection;
use super::state::Shared;
use super::{ACCEPT_BACKOFF, MAX_CONNECTIONS};

/// Accepts connections until the task is aborted.
///
/// Cancel safety: meant to be cancelled (aborted); see the module doc for what that closes.
pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let mut connections = JoinSet::new();
    loop {
        if connections.len() >= MAX_CONNECTIONS {
            // At the limit: wait for a connection to end. Pending connects wait in the kernel's
            // backlog meanwhile.
            reap(connections.join_next().await);
            continue;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    // Counted from here, so a test's `connections_open` includes connections
                    // still in their TLS handshake.
                    let open = shared.connection_opened();
                    connections.spawn(connection::serve(tcp, acceptor.clone(), shared.clone(), open));
                }
                Err(e) => {
                    // Usually a resource limit (EMFILE, ENFILE) or a connection aborted before we
                    // took it. None of them is a reason to stop serving; pause so a lasting one does
                    // not make this loop spin.
                    eprintln!("simulator: accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                    sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished tasks as they end, so the set holds only live connections.
            // (`join_next` is cancel safe: losing the race to `accept` loses nothing.)
            finished = connections.join_next(), if !connections.is_empty() => reap(finished),
        }
    }
}

/// A connection task that panicked is a bug in the simulator: say so, keep serving the others.
fn reap(finished: Option<Result<(), tokio::task::JoinError>>) {
    match finished {
        Some(Err(e)) if e.is_panic() => eprintln!("simulator: a connection task panicked: {e}"),
        _ => {}
    }
}
