//! # fanout
//!
//! An HTTP service that answers each API call by fanning out concurrent HTTPS requests to an unreliable
//! upstream and combining what comes back, always within the caller's deadline. It is written by hand
//! on tokio, without an HTTP framework, so that every part a framework would hide is here to read.
//!
//! ## Reading order
//!
//! 1. [`config`]: every setting, its default and its reason.
//! 2. [`server`]: the accept loop and shutdown, then `server/connection.rs`, the life of one client
//!    connection (read a head, answer it, keep the connection or close it).
//! 3. [`api`]: routing and the `timeout` parameter, then `api/calls.rs` (starting upstream requests and
//!    cancelling them) and `api/strategies.rs` (the four endpoints).
//! 4. [`upstream`]: the HTTP/1.1 client over TCP or TLS, response framing, and the connection pool.
//! 5. [`simulator`]: the simulated upstream the tests and the offline mode use.
//!
//! ## The life of one request
//!
//! The accept loop hands the socket to a connection task. It reads bytes until httparse finds a complete
//! request head; from that instant the `timeout` parameter's deadline runs. The API picks a strategy,
//! which starts upstream requests as tasks owned by a `Calls`; each borrows a connection from the pool
//! (or opens one), writes `GET /api/work`, reads the response and returns it to the pool. The strategy
//! waits for outcomes until it can decide or the deadline fires, whichever is first, then returns: the
//! upstream requests still running stop counting for the caller at once. Those already on the wire may
//! finish in the background for a bounded time (`--upstream-linger-ms`) so that their connections go back
//! to the pool instead of costing a new TLS handshake. The connection task writes the answer and waits for
//! the next request.

pub mod api;
pub mod config;
pub(crate) mod rng;
pub mod server;
pub mod shutdown;
pub mod simulator;
pub mod trace;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use api::Api;
use config::{Config, UpstreamChoice};
use simulator::Simulator;
use upstream::{Upstream, UpstreamConfig};

/// Runs the service on `listener` until `shutdown` completes and the drain is over.
///
/// With `UpstreamChoice::Simulated` it first starts the simulated upstream in-process, over TLS, and
/// trusts its certificate; the simulator stops when this returns.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let mut _simulator = None;
    let (url, mut extra_roots) = match &config.upstream {
        UpstreamChoice::Url(url) => (url.clone(), Vec::new()),
        UpstreamChoice::Simulated => {
            let sim = Simulator::start(config.simulated.clone())
                .await
                .map_err(|e| format!("cannot start the simulated upstream: {e}"))?;
            let url = sim.url();
            _simulator = Some(sim);
            (url, simulator::ca_certs())
        }
    };
    extra_roots.extend(config.extra_roots.iter().cloned());
    let upstream_config = UpstreamConfig {
        extra_roots,
        pool_max_connections: config.pool.max_connections,
        pool_max_idle: config.pool.max_idle,
        pool_idle_timeout: config.pool.idle_timeout,
        max_body_bytes: config.pool.max_body_bytes,
        linger: config.pool.linger,
        ..UpstreamConfig::new(url)
    };
    let upstream = Arc::new(Upstream::new(upstream_config)?);

    let addr = listener
        .local_addr()
        .map_err(|e| format!("the listener has no address: {e}"))?;
    let simulated = if _simulator.is_some() {
        " (simulated, in-process)"
    } else {
        ""
    };
    println!(
        "fanout listening on http://{addr}, upstream {}{simulated}",
        upstream.url()
    );

    let api = Arc::new(Api::new(upstream, &config));
    server::serve(listener, api, config.limits, shutdown).await;
    println!("fanout stopped");
    Ok(())
}
