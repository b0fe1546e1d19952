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
//! 6. Observability: [`telemetry`] (what is observed where), [`metrics`], [`health`] (the upstream's last
//!    minute), [`log`] (JSON lines), [`trace`] (W3C trace context), and [`admin`] (the listener serving
//!    `/metrics`, `/healthz`, `/readyz` and `/upstream`).
//!
//! ## The life of one request
//!
//! The accept loop hands the socket to a connection task. It reads bytes until httparse finds a complete
//! request head; from that instant the `timeout` parameter's deadline runs. The API picks a strategy,
//! which starts upstream requests through a `Calls`: one task each, answering on a channel the `Calls`
//! owns. (With over 100 callers connected those tasks run on a second runtime of their own, so that a
//! burst of them cannot delay the answers: DESIGN.md, "Two runtimes".) Each takes a connection from the pool (or opens one), writes `GET /api/work`, reads the response
//! and returns the connection to the pool. The strategy
//! waits for outcomes until it can decide or the deadline fires, whichever is first, then returns: the
//! upstream requests still running stop counting for the caller at once. Those already on the wire may
//! finish in the background for a bounded time (`--upstream-linger-ms`) so that their connections go back
//! to the pool instead of costing a new TLS handshake. The connection task writes the answer and waits for
//! the next request. A call over `--max-in-flight` is answered at once without any of this, and its connection is
//! served on a third, low-priority runtime until a call on it is admitted again (DESIGN.md, "Shedding on a
//! runtime of its own").

pub mod admin;
pub mod api;
pub mod config;
pub mod health;
pub mod log;
pub mod metrics;
pub(crate) mod rng;
pub mod server;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
pub mod trace;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use api::Api;
use config::{Config, UpstreamChoice};
use simulator::Simulator;
use telemetry::Telemetry;
use upstream::{Upstream, UpstreamConfig};

/// Runs the service on `listener` (and the admin endpoints on `admin`, if given) until `shutdown`
/// completes and the drain is over.
///
/// With `UpstreamChoice::Simulated` it first starts the simulated upstream in-process, over TLS, and
/// trusts its certificate; the simulator stops when this returns.
///
/// When `shutdown` completes, `/readyz` turns 503 at once; the admin listener keeps answering through the
/// drain and stops with the API server.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
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
        runtime: config.upstream_runtime.clone(),
        ..UpstreamConfig::new(url)
    };
    let upstream = Arc::new(Upstream::new(upstream_config)?);

    let addr = listener
        .local_addr()
        .map_err(|e| format!("the listener has no address: {e}"))?;
    let admin_addr = match &admin {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| format!("the admin listener has no address: {e}"))?,
        ),
        None => None,
    };
    let telemetry = Arc::new(Telemetry::new(&config));
    telemetry.log.info(
        "start",
        serde_json::json!({
            "listen": format!("http://{addr}"),
            "admin": admin_addr.map(|a| format!("http://{a}")),
            "upstream": upstream.url(),
            "simulated": _simulator.is_some(),
            "max_in_flight": config.limits.max_in_flight,
            "access_log": config.log.access,
        }),
    );

    let api = Arc::new(Api::new(upstream, telemetry.clone(), &config));
    let shutdown = async {
        shutdown.await;
        telemetry.draining();
        telemetry.log.info(
            "shutdown",
            serde_json::json!({
                "phase": "draining",
                "in_flight": api.in_flight(),
                "drain_timeout_ms": config.limits.drain_timeout.as_millis() as u64,
            }),
        );
    };
    // The admin listener stops when the API server is done draining (not before: /readyz and /metrics
    // matter most during the drain).
    let (stop_admin, admin_stop) = oneshot::channel::<()>();
    let api_server = async {
        server::serve(
            listener,
            api.clone(),
            config.limits.clone(),
            config.shed_runtime.clone(),
            shutdown,
        )
        .await;
        let _ = stop_admin.send(());
    };
    let admin_server = async {
        if let Some(admin) = admin {
            admin::serve(admin, api.clone(), async {
                let _ = admin_stop.await;
            })
            .await;
        }
    };
    // The in-flight limit's probe on the upstream runtime, if there is one; aborted when `serve` ends. With
    // `--overload-lag-ms 0` the limit is fixed and nothing is probed.
    let follow_lag = !config.limits.overload_lag.is_zero();
    let upstream_runtime = config.upstream_runtime.as_ref().filter(|_| follow_lag);
    let _upstream_probe = upstream_runtime.map(|runtime| {
        let limit = api.limit().clone();
        AbortOnDrop(
            runtime
                .spawn(async move { limit.probe().await })
                .abort_handle(),
        )
    });
    // The health watcher, the limit's control loop and its probe on this runtime run beside them and end
    // with them (dropped by the select).
    tokio::select! {
        _ = async { tokio::join!(api_server, admin_server) } => {}
        () = telemetry.health.watch(&telemetry.log) => {}
        _ = async {
            match follow_lag {
                true => drop(tokio::join!(api.limit().probe(), api.limit().control())),
                false => std::future::pending().await,
            }
        } => {}
    }
    telemetry.log.info("stopped", serde_json::json!({}));
    Ok(())
}

/// Aborts a task when dropped: whoever holds it owns the task, and the task ends with the owner's scope.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
