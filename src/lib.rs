//! # fanout
//!
//! An HTTP service that answers each API call by fanning out concurrent HTTPS requests to an unreliable
//! upstream and combining what comes back, always within the caller's deadline. It is written by hand
//! on tokio, without an HTTP framework, so that every part a framework would hide is here to read.
//!
//! ## Layers
//!
//! Each line uses only the lines below it, never one above or beside it; `.ci/layers` fails the build
//! when an import disagrees with this drawing. Read bottom-up to meet each part before its users.
//!
//! ```text
//! main.rs                           the binary: flags, runtimes, signals, then `serve`
//! lib.rs                            `serve`: wires the parts below into one service
//! fuzzing                           what the fuzz targets check (`fuzz/`)
//! config, runtimes                  every flag, read into each module's settings; the tokio runtimes
//! admin                             the admin listener: /metrics, /healthz, /readyz, /upstream
//! server                            the accept loop, one task per client connection, shutdown
//! api                               routing, the `timeout`, admission, the four strategies
//! telemetry                         one handle for what is observed: metrics, health window, access lines
//! health, shutdown                  the upstream's last minute; SIGTERM and SIGINT
//! metrics                           counters and histograms, the Prometheus text
//! upstream, simulator               the HTTPS client and its pool; the simulated upstream
//! http, log                         HTTP/1.1 both sides share; JSON log lines
//! trace                             W3C trace context
//! date, endpoint, held, rng, task   leaves: clocks, endpoint names, counts held, random numbers, owned tasks
//! ```
//!
//! ## Reading path: one `/api/smart` call, from accept to the upstream socket and back
//!
//! 1. `server/mod.rs`: the accept loop spawns a task per connection.
//! 2. `server/connection.rs`: `Connection::serve` reads bytes until httparse finds a request head
//!    (`http/request.rs` says what it means); from that instant the `timeout` parameter's deadline runs.
//! 3. `server/connection.rs` (`run_call`): while the call runs, its socket is read too. A client that
//!    leaves (EOF, a reset) drops the call where it stands, and its upstream requests see their caller
//!    gone; bytes that arrive are the next request, kept for after this answer.
//! 4. `api/mod.rs`: `Api::prepare` routes, reads `timeout` (`api/query.rs`) and admits the call (or sheds
//!    it); `Api::run` picks the strategy.
//! 5. `api/strategies.rs`: `smart` asks for one upstream request, and two more after the hedge delay
//!    (`api/hedge.rs`) or a failure, and returns at the first success or the deadline.
//! 6. `api/requests.rs`: `Requests` starts each request as a task and takes outcomes as they complete; dropping
//!    it is the whole of cancellation.
//! 7. `upstream/mod.rs`: one request: take a connection from the pool (`upstream/pool.rs`) or open one
//!    (`upstream/tls.rs`), write `GET /api/work` and read the response (`upstream/connection.rs`,
//!    `upstream/response.rs`, `http/chunked.rs`), then return the connection to the pool.
//! 8. Back up: the outcome reaches `Requests`, the strategy decides, `Api::run` builds the `Response`
//!    (`http/response.rs`), and `Connection::answer` writes it and records it (`telemetry.rs`).
//!
//! The call's requests still running when it is decided, or when its caller leaves, stop counting at once; those
//! already on the wire may finish in the background for a bounded time (`--upstream-linger-ms`) so their connections go
//! back to the pool instead of costing a new TLS handshake. A call over the in-flight limit is answered at once without
//! any of this.

pub mod admin;
pub mod api;
pub mod config;
pub mod date;
pub mod endpoint;
/// The fuzz targets' properties (`fuzz/`), public for them and `tests/fuzz_corpus.rs` only.
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod held;
pub mod http;
pub mod log;
pub mod metrics;
pub(crate) mod rng;
pub mod runtimes;
pub mod server;
pub mod shutdown;
pub mod simulator;
pub mod task;
pub mod telemetry;
pub mod trace;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use api::Api;
use config::{Config, UpstreamChoice};
use simulator::Simulator;
use task::AbortOnDrop;
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
    // The upstream: the simulated one is started here if asked for, and lives as long as `serve`.
    let (upstream, simulator) = start_upstream(&config).await?;
    let telemetry = Arc::new(Telemetry::new(
        config.log.clone(),
        config.upstream_health_threshold,
    ));
    log_start(
        &telemetry,
        &listener,
        admin.as_ref(),
        &upstream,
        &config,
        simulator.is_some(),
    )?;
    // Not ready until the pool is warm (`--upstream-warm`); the task is aborted if `serve` ends first.
    let _warming = spawn_warm(&upstream, &telemetry, config.pool.warm);
    let api = Arc::new(Api::new(
        upstream,
        telemetry.clone(),
        &api_settings(&config),
    ));
    let shutdown = announce_drain(shutdown, &api, &config);
    let servers = run_listeners(listener, admin, &api, &config, shutdown);
    // The in-flight limit's probe on the upstream runtime, if there is one; aborted when `serve` ends.
    let _upstream_probe = spawn_upstream_probe(&api, &config);
    // Beside the listeners, what never ends on its own: the health watcher, and the in-flight limit's
    // control loop and probe. Their type says so (`Infallible`): `serve` returns when the listeners are
    // done, never before, and drops them.
    tokio::select! {
        () = servers => {}
        never = watch(&api, &config) => match never {},
    }
    telemetry.log.info("stopped", serde_json::json!({}));
    Ok(())
}

/// The upstream client, with its pool, in front of the configured URL or of a simulated upstream started
/// here (returned too: it stops when dropped).
async fn start_upstream(config: &Config) -> Result<(Arc<Upstream>, Option<Simulator>), String> {
    let (url, mut extra_roots, simulator) = match &config.upstream {
        UpstreamChoice::Url(url) => (url.clone(), Vec::new(), None),
        UpstreamChoice::Simulated => {
            let sim = Simulator::start(config.simulated.clone())
                .await
                .map_err(|e| format!("cannot start the simulated upstream: {e}"))?;
            (sim.url(), simulator::ca_certs(), Some(sim))
        }
    };
    extra_roots.extend(config.extra_roots.iter().cloned());
    let upstream = Upstream::new(UpstreamConfig {
        extra_roots,
        pool_max_connections: config.pool.max_connections,
        pool_max_idle: config.pool.max_idle,
        pool_idle_timeout: config.pool.idle_timeout,
        max_body_bytes: config.pool.max_body_bytes,
        linger: config.pool.linger,
        runtime: config.upstream_runtime.clone(),
        ..UpstreamConfig::new(url)
    })?;
    Ok((Arc::new(upstream), simulator))
}

/// With `--upstream-warm N`: `/readyz` answers 503 while `N` upstream connections are opened (for a
/// minute at most), then `ready` is logged with how many the pool kept and how long it took. None: ready
/// at once.
fn spawn_warm(
    upstream: &Arc<Upstream>,
    telemetry: &Arc<Telemetry>,
    n: usize,
) -> Option<AbortOnDrop<()>> {
    if n == 0 {
        return None;
    }
    telemetry.warming(true);
    let (upstream, telemetry) = (upstream.clone(), telemetry.clone());
    Some(AbortOnDrop(tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let kept = upstream.warm(n, started + WARM_LIMIT).await;
        telemetry.warming(false);
        let ms = started.elapsed().as_millis() as u64;
        let fields = serde_json::json!({"upstream_connections": kept, "asked": n, "warm_ms": ms});
        telemetry.log.info("ready", fields);
    })))
}

/// The longest `--upstream-warm` may hold `/readyz` back: an upstream that cannot take this many
/// connections in a minute will not take them faster with callers waiting.
const WARM_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The `start` line: the bound addresses, the upstream, and the settings an operator checks first.
fn log_start(
    telemetry: &Telemetry,
    listener: &TcpListener,
    admin: Option<&TcpListener>,
    upstream: &Upstream,
    config: &Config,
    simulated: bool,
) -> Result<(), String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the listener has no address: {e}"))?;
    let admin_addr = admin
        .map(TcpListener::local_addr)
        .transpose()
        .map_err(|e| format!("the admin listener has no address: {e}"))?;
    telemetry.log.info(
        "start",
        serde_json::json!({
            "listen": format!("http://{addr}"),
            "admin": admin_addr.map(|a| format!("http://{a}")),
            "upstream": upstream.url(),
            "simulated": simulated,
            "max_in_flight": config.limits.max_in_flight,
            "access_log": config.log.access,
        }),
    );
    Ok(())
}

/// The API's settings, from the configuration.
fn api_settings(config: &Config) -> api::Settings {
    api::Settings {
        max_timeout_ms: config.max_timeout_ms,
        hedge: config.hedge.clone(),
        max_in_flight: config.limits.max_in_flight,
        overload_lag: config.limits.overload_lag,
        max_deadline_lead: config.max_deadline_lead,
    }
}

/// `shutdown`, and then: `/readyz` answers 503, and the log says the drain began.
async fn announce_drain(shutdown: impl Future<Output = ()>, api: &Api, config: &Config) {
    shutdown.await;
    let telemetry = api.telemetry();
    telemetry.draining();
    telemetry.log.info(
        "shutdown",
        serde_json::json!({
            "phase": "draining",
            "in_flight": api.in_flight(),
            "drain_delay_ms": config.limits.drain_delay.as_millis() as u64,
            "drain_timeout_ms": config.limits.drain_timeout.as_millis() as u64,
        }),
    );
}

/// The API server until `shutdown` and its drain, and the admin listener beside it until then: it stops
/// after the API server (not before: `/readyz` and `/metrics` matter most during the drain).
async fn run_listeners(
    listener: TcpListener,
    admin: Option<TcpListener>,
    api: &Arc<Api>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_admin, admin_stop) = oneshot::channel::<()>();
    let api_server = async {
        let (limits, shed_runtime) = (config.limits.clone(), config.shed_runtime.clone());
        server::serve(listener, api.clone(), limits, shed_runtime, shutdown).await;
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
    tokio::join!(api_server, admin_server);
}

/// The in-flight limit's probe on the upstream runtime, owned by the caller (aborted when dropped); none
/// without an upstream runtime, or with `--overload-lag-ms 0`, where the limit is fixed.
fn spawn_upstream_probe(api: &Api, config: &Config) -> Option<AbortOnDrop<Infallible>> {
    let runtime = config.upstream_runtime.as_ref()?;
    if config.limits.overload_lag.is_zero() {
        return None;
    }
    let limit = api.limit().clone();
    Some(AbortOnDrop(
        runtime.spawn(async move { limit.probe().await }),
    ))
}

/// The upstream's health watcher, and (unless `--overload-lag-ms 0` fixed the limit) the in-flight
/// limit's control loop and its probe on this runtime. None of them ends.
async fn watch(api: &Api, config: &Config) -> Infallible {
    let health = api.telemetry().health.watch(&api.telemetry().log);
    if config.limits.overload_lag.is_zero() {
        return health.await;
    }
    let limit = api.limit();
    tokio::select! {
        never = health => never,
        never = limit.probe() => never,
        never = limit.control() => never,
    }
}
