//! The outbound side: a small HTTP/1.1 client (plain TCP or TLS) with its own keep-alive pool.
//!
//! [`Upstream::start`] is the whole interface: one `GET` of the work URL, run as its own task and bounded by
//! the caller's deadline, whose outcome (a [`Work`], or an [`UpstreamError`] that names what went wrong)
//! comes back on a channel the caller owns. Many tasks call it at once, through an `Arc<Upstream>`.
//!
//! # Reading order
//!
//! 1. `target.rs`: the URL taken apart into host, port, path, `Host` header and TLS server name.
//! 2. `resolve.rs` and `tls.rs`: finding the upstream's addresses (cached), and the TLS configuration.
//! 3. `connection.rs`: one connection, and every wait on the network bounded by the deadline.
//! 4. `response.rs` and `http/chunked.rs`: how a response head decides the body's framing and the connection's
//!    reuse (RFC 9112 §6.3 and §9.3), and the chunked decoder.
//! 5. `payload.rs`: what counts as a successful answer.
//! 6. `pool.rs`: idle connections, their checks and expiry, and the cap on open connections; its module doc
//!    numbers the rules the whole client keeps for its connections.
//! 7. This file: `start`, then `request_task`, which strings them together for one request (its
//!    cancellation and its linger), and the steps it calls, the stale-connection retry among them. The
//!    types above them can wait; the machinery at the end (how tasks are spawned, why some futures and
//!    reports are boxed) is measured optimisation, to skip on first reading.
//!
//! # The life of one request
//!
//! checkout (an idle connection, or a slot to open one, waiting for a slot if at the cap) → connect if needed
//! (resolve, TCP, TLS) → write the request → read the head → read the body → give the connection back to the
//! pool if the response allows it → validate the JSON.
//!
//! # Cancel safety
//!
//! The request's task owns the connection for the whole exchange; the caller only holds the receiving end of
//! the outcome's channel. When the caller drops it (its API call already has an answer, or its deadline
//! came), a request not yet sent stops and releases its slot; one already on the wire goes on for at most
//! the linger time to read its response, then returns the connection to the pool, or closes it if time runs
//! out. A connection never reaches the pool half-read: it goes back only with no request outstanding on it,
//! either after `exchange` read its response to the end, or before it carried any (a replacement that
//! `replace_abandoned` just opened, or one handed over to a `Pool::checkout` that no longer needed it).

mod connection;
mod payload;
mod pool;
mod resolve;
mod response;
mod target;
mod tls;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

use crate::task::AbortOnDrop;
use crate::trace::{TraceParent, TRACEPARENT};
use connection::Connection;
// For the fuzz target `upstream_answer` (`fuzzing.rs`), whose model of an answer keeps the same bounds.
use crate::held::Held;
pub(crate) use connection::MAX_INTERIM_RESPONSES;
use pool::{Checkout, Counters, Pool};
use resolve::Resolver;
use response::Head;
pub(crate) use response::MAX_HEADERS;
use target::Target;

/// Largest response head accepted by default. The work endpoint's head is a few hundred bytes; 16 KiB leaves
/// room for proxies' and load balancers' extra fields while bounding what a broken server can make us buffer.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest response body accepted by default. An answer is `{"time": N}`; 64 KiB also lets us read a
/// verbose error page to its end, so that its connection can be reused.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Idle connections kept by default: as many as may be open. A lower bound would close connections at the
/// peak of a burst (2,000 callers keep 6,000 upstream requests in flight) only to open them again a moment
/// later at the price of a TLS handshake each; the idle timeout is what trims the pool after a burst, and the
/// open-connection cap is what bounds the sockets.
pub const DEFAULT_POOL_MAX_IDLE: usize = DEFAULT_POOL_MAX_CONNECTIONS;
/// How long an idle connection is kept by default. Servers close idle keep-alive connections on their own
/// timer, the shortest common one being Apache's 5 s; reusing a connection just as the server closes it costs
/// a failed request (or a retry), so we give up on it first.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Open connections allowed by default. Each is a file descriptor: 8192 stays well under the limit a server
/// process is usually given (`ulimit -n`, often 65536; raise it from the common default of 1024) and under
/// the ~28000 ephemeral ports Linux has per destination, leaving room for inbound connections.
pub const DEFAULT_POOL_MAX_CONNECTIONS: usize = 8192;

/// A server's `Keep-Alive: timeout=N` is honoured by expiring the idle connection this much earlier: the
/// server's timer started when it sent the response, ours when we finished reading it, and our next request
/// must arrive before the server's timer fires. The header counts whole seconds, so one second it is.
pub const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// How long a non-200 answer's body is waited for, at most. The status is the outcome as soon as the head
/// is here; the body is read only so that the connection can be reused, and an error page normally arrives
/// in the same packets as its head. A failure is never held back longer than this for the sake of a socket.
pub const ERROR_BODY_GRACE: Duration = Duration::from_millis(50);

/// How long an abandoned exchange may finish in the background, by default. The upstream answers within
/// 100-600 ms, so a loser of `/api/first` (or a request cut off by a short deadline) almost always completes
/// within a second more; its connection then goes back to the pool instead of costing a new TLS handshake.
/// The figures behind this choice are in DESIGN.md ("The connection pool").
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// Sent in every request, so the upstream's operators can tell who is calling.
const USER_AGENT: &str = "fanout/0.1";

/// How to reach the upstream and the bounds on every exchange with it.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `http://` or `https://` URL. An empty path or `/` means `/api/work`.
    pub url: String,
    /// Extra trust anchors besides webpki-roots (for the simulator's or a test's own CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Largest response head (status line + headers) accepted, in bytes.
    pub max_head_bytes: usize,
    /// Largest response body accepted, in bytes; a larger one is a failure.
    pub max_body_bytes: usize,
    /// Idle connections kept for reuse, at most.
    pub pool_max_idle: usize,
    /// An idle connection older than this is closed, not reused.
    pub pool_idle_timeout: Duration,
    /// Open connections (active or idle) at most. A request that finds none free waits for one, in arrival
    /// order, until its deadline.
    pub pool_max_connections: usize,
    /// How long an exchange whose caller stopped waiting may go on in the background to save its
    /// connection (see `Upstream::request_task`). Zero closes such connections at once.
    pub linger: Duration,
    /// The runtime request tasks run on when started with [`RunOn::UpstreamRuntime`]; `None`: the runtime
    /// of whoever calls [`Upstream::start`], always.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl UpstreamConfig {
    /// The given URL with the default limits (the `DEFAULT_*` constants).
    pub fn new(url: impl Into<String>) -> UpstreamConfig {
        UpstreamConfig {
            url: url.into(),
            extra_roots: Vec::new(),
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_connections: DEFAULT_POOL_MAX_CONNECTIONS,
            linger: DEFAULT_LINGER,
            runtime: None,
        }
    }
}

/// Which runtime [`Upstream::start`] runs a call's request tasks on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOn {
    /// The caller's, one after the other on the caller's worker (see `Upstream::spawn_chain`): no thread to
    /// wake.
    CallersRuntime,
    /// The upstream runtime (`UpstreamConfig::runtime`), if there is one; the caller's if not.
    UpstreamRuntime,
}

/// Where a request started with [`Upstream::start`] sends its outcome. Dropping the receiving end tells the
/// request its caller no longer waits.
///
/// Boxed, a measured saving (first reading: skip): a channel allocates its slots in blocks of 32, and a
/// block of 32 `Report`s (2 KiB) is past what the allocator keeps in its fast per-thread caches; a block of
/// 32 pointers is not. One channel per API call made that block one of the costlier allocations on the hot
/// path.
pub type Reply = mpsc::UnboundedSender<Box<Report>>;

/// What a request started with [`Upstream::start`] sends back: its outcome, and the facts a caller logs.
#[derive(Debug)]
pub struct Report {
    /// The caller's label for the request, given to `start` (the API's attempt number).
    pub tag: usize,
    pub outcome: Result<Work, UpstreamError>,
    /// From `start` to the outcome: pool wait, connect and exchange.
    pub duration: Duration,
}

/// How to send one request: the caller's tag for it, and the trace context it carries upstream.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestOptions {
    pub tag: usize,
    /// Sent as the request's `traceparent` header (W3C Trace Context).
    pub trace: Option<TraceParent>,
}

/// One successful upstream answer: the JSON object as it came, re-serialised compactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// The compact JSON text of the object, e.g. `{"time":123}`, members in the upstream's order.
    pub json: Box<str>,
    /// Its `time` member.
    pub time: u64,
}

/// Why one upstream request failed. Each variant is one outcome label for logs and metrics.
#[derive(Debug)]
pub enum UpstreamError {
    /// The caller's deadline came first.
    Timeout,
    /// Resolving or connecting to the upstream failed.
    Connect(io::Error),
    /// The TLS handshake failed.
    Tls(io::Error),
    /// Reading or writing failed mid-exchange (reset, early EOF).
    Io(io::Error),
    /// The response was not valid HTTP/1.1 or broke a limit (head or body too large).
    Protocol(&'static str),
    /// A status other than 200.
    Status(u16),
    /// Status 200, but the body is not a JSON object with a non-negative integer `time`.
    InvalidPayload(&'static str),
    /// The request's own task panicked before it had an outcome: a bug in fanout, not the upstream's doing
    /// (see `Reporter`).
    Panicked,
}

impl UpstreamError {
    /// The kind of outcome, for logs and metrics.
    ///
    /// `Protocol` counts as `invalid_payload`: in both cases the upstream did answer, and what it sent was not
    /// a usable answer (malformed HTTP, or well-formed HTTP around a bad body). `io_error` is kept for
    /// exchanges that broke off, on the network or, for `Panicked`, in our own task: too rare for a label
    /// of its own, and the API logs each one (`upstream_request_panicked`).
    pub fn outcome(&self) -> OutcomeKind {
        match self {
            UpstreamError::Timeout => OutcomeKind::Timeout,
            UpstreamError::Connect(_) => OutcomeKind::ConnectError,
            UpstreamError::Tls(_) => OutcomeKind::TlsError,
            UpstreamError::Io(_) | UpstreamError::Panicked => OutcomeKind::IoError,
            UpstreamError::Protocol(_) | UpstreamError::InvalidPayload(_) => {
                OutcomeKind::InvalidPayload
            }
            UpstreamError::Status(_) => OutcomeKind::HttpStatus,
        }
    }
}

/// How one upstream request ended: a small fixed set, so that it can label metrics (an array index) and
/// log lines. `Cancelled` is not an error of the upstream: the caller stopped waiting before the outcome
/// (its API call was already decided).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    Ok,
    HttpStatus,
    InvalidPayload,
    Timeout,
    ConnectError,
    TlsError,
    IoError,
    Cancelled,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 8] = [
        OutcomeKind::Ok,
        OutcomeKind::HttpStatus,
        OutcomeKind::InvalidPayload,
        OutcomeKind::Timeout,
        OutcomeKind::ConnectError,
        OutcomeKind::TlsError,
        OutcomeKind::IoError,
        OutcomeKind::Cancelled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::HttpStatus => "http_status",
            OutcomeKind::InvalidPayload => "invalid_payload",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::ConnectError => "connect_error",
            OutcomeKind::TlsError => "tls_error",
            OutcomeKind::IoError => "io_error",
            OutcomeKind::Cancelled => "cancelled",
        }
    }

    /// The outcome of a finished request.
    pub fn of<T>(result: &Result<T, UpstreamError>) -> OutcomeKind {
        match result {
            Ok(_) => OutcomeKind::Ok,
            Err(e) => e.outcome(),
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Timeout => write!(f, "the upstream did not answer before the deadline"),
            UpstreamError::Connect(e) => {
                write!(f, "cannot connect to the upstream ({e}); check the URL's host and port and the network")
            }
            UpstreamError::Tls(e) => write!(
                f,
                "TLS handshake with the upstream failed ({e}); check that its certificate matches the host and \
                 is signed by a trusted root"
            ),
            UpstreamError::Io(e) => write!(f, "the connection to the upstream broke mid-exchange: {e}"),
            UpstreamError::Protocol(why) => write!(f, "the upstream's response is not usable HTTP/1.1: {why}"),
            UpstreamError::Status(code) => write!(f, "the upstream answered with status {code} instead of 200"),
            UpstreamError::InvalidPayload(why) => write!(f, "the upstream's answer is not the expected JSON: {why}"),
            UpstreamError::Panicked => write!(f, "fanout's own task for this request panicked (a bug; see the log)"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) | UpstreamError::Tls(e) | UpstreamError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A snapshot of the pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// New connections established (TCP, and TLS if https), since start.
    pub connects: u64,
    /// Fetches served on an idle connection from the pool, since start.
    pub reuses: u64,
    /// Fetches retried on a fresh connection because a reused one turned out closed, since start.
    pub stale_retries: u64,
    /// Fetches that had to queue for a slot because `pool_max_connections` were open, since start.
    pub slot_waits: u64,
    /// Connections open now, active or idle (including ones being opened).
    pub open: usize,
    /// Idle connections in the pool now.
    pub idle: usize,
    /// Exchanges going on in the background now, after their caller stopped waiting.
    pub lingering: usize,
    /// Exchanges that ended on their own in the background (a response, or an error) within the linger
    /// time, since start.
    pub finished_in_background: u64,
    /// Exchanges given up for lack of time in the background (their connections closed), since start.
    pub abandoned: u64,
}

/// The upstream client: shared by all API calls (`Arc<Upstream>`).
pub struct Upstream {
    url: String,
    /// The TLS connector and the name the certificate must match; `None` for `http://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    resolver: Resolver,
    /// The request head up to its last header field (no blank line yet): the same for every request, so
    /// built once. Each request adds its own `traceparent` line and the blank line.
    request_prefix: Box<[u8]>,
    max_head_bytes: usize,
    max_body_bytes: usize,
    idle_timeout: Duration,
    linger: Duration,
    /// Draws the pause before each replacement of an abandoned connection (see `replace_abandoned`).
    rng: crate::rng::Rng,
    pool: Arc<Pool>,
    /// The idle-connection reaper, started on the first runtime we see; stopped when this is dropped.
    reaper: OnceLock<AbortOnDrop<()>>,
    /// Where request tasks are spawned (`UpstreamConfig::runtime`).
    runtime: Option<tokio::runtime::Handle>,
}

impl Upstream {
    /// Checks the configuration and prepares everything that does not need the network. Connections are
    /// opened on demand, so this succeeds even while the upstream is down.
    ///
    /// Called inside a tokio runtime, it starts the idle reaper; otherwise the first `start` does.
    pub fn new(config: UpstreamConfig) -> Result<Upstream, String> {
        if config.max_head_bytes == 0 || config.max_body_bytes == 0 {
            return Err("max_head_bytes and max_body_bytes must be above 0".into());
        }
        let most = Semaphore::MAX_PERMITS;
        if !(1..=most).contains(&config.pool_max_connections) {
            return Err(format!("pool_max_connections must be from 1 to {most}"));
        }
        let target = Target::parse(&config.url)?;
        let tls = if target.tls {
            Some((tls::connector(&config.extra_roots)?, target.server_name()?))
        } else {
            None
        };
        let request_prefix = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: {USER_AGENT}\r\n",
            target.path_and_query, target.host_header
        );
        let upstream = Upstream {
            resolver: Resolver::new(target.host, target.port),
            url: config.url,
            tls,
            request_prefix: request_prefix.into_bytes().into_boxed_slice(),
            max_head_bytes: config.max_head_bytes,
            max_body_bytes: config.max_body_bytes,
            idle_timeout: config.pool_idle_timeout,
            linger: config.linger,
            rng: crate::rng::Rng::from_clock(),
            pool: Arc::new(Pool::new(config.pool_max_connections, config.pool_max_idle)),
            reaper: OnceLock::new(),
            runtime: config.runtime,
        };
        upstream.start_reaper();
        Ok(upstream)
    }

    /// The URL in use, for the start-up log line.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens up to `n` connections, all at once, each by `deadline`, and puts them in the pool; says how
    /// many the pool kept (past `--upstream-max-idle` it closes them). For `--upstream-warm`: a fresh
    /// process makes its first handshakes before a load balancer sends it work, not in its first callers'
    /// time. Opens no more once the cap on open connections is reached or a caller is queued for a slot.
    ///
    /// Cancel safety: the connects are tasks of a `JoinSet` this owns; dropped, they are aborted, and each
    /// half-open connection is closed and its slot freed.
    pub async fn warm(self: &Arc<Self>, n: usize, deadline: Instant) -> usize {
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..n {
            let Some(slot) = self.pool.try_slot() else {
                break;
            };
            let upstream = self.clone();
            // Says whether the pool kept the connection.
            let connect = async move {
                match upstream.connect(slot, deadline).await {
                    Ok(conn) => upstream
                        .pool
                        .put(conn, Instant::now() + upstream.idle_timeout),
                    Err(_) => false,
                }
            };
            match &self.runtime {
                Some(runtime) => connects.spawn_on(connect, runtime),
                None => connects.spawn(connect),
            };
        }
        let mut kept = 0;
        while let Some(done) = connects.join_next().await {
            kept += usize::from(matches!(done, Ok(true)));
        }
        kept
    }

    /// The pool's counters, for metrics and tests.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Starts one `GET` of the work URL per entry of `requests`, each as its own task (`request_task`), which
    /// sends its outcome to `reply` once.
    ///
    /// Dropping the receiving end of `reply` is how the caller says it no longer waits: a request not yet
    /// sent stops, one on the wire may finish in the background to save its connection. Either way every
    /// request ends by `deadline + linger`. A caller must stop waiting at its own deadline: no `Timeout` is
    /// sent at that instant. `run_on` says which runtime the tasks run on (see [`RunOn`]).
    pub fn start(
        self: &Arc<Self>,
        deadline: Instant,
        requests: Vec<RequestOptions>,
        reply: Reply,
        run_on: RunOn,
    ) {
        self.start_reaper();
        let runtime = match run_on {
            RunOn::UpstreamRuntime => self.runtime.as_ref(),
            RunOn::CallersRuntime => None,
        };
        self.spawn_chain(deadline, requests.into_iter(), reply, runtime);
    }

    /// One request, from start to end: the task [`Upstream::start`] spawns, and the lesson of this file.
    ///
    /// It gets a connection (from the pool, or a new one), sends the request, reads the response and gives
    /// the connection back. Beside each phase it watches its caller, who leaves by dropping the receiving end
    /// of `reply`:
    ///
    /// - before the request is sent (waiting for a slot, connecting), the task stops: the wait is abandoned,
    ///   a half-open connection closed, and nothing reaches the upstream;
    /// - once the request is on the wire, the task goes on for at most `linger` to read the response to its
    ///   end, so the connection can go back to the pool instead of being closed. A response slower than that
    ///   is abandoned, its connection closed and replaced in the background (`replace_abandoned`). Finishing
    ///   costs the upstream nothing more: it already has the request.
    ///
    /// The task is detached on purpose: its owner is this bound. Every wait for the request ends by
    /// `deadline + linger` at the latest, and a replacement (its pause and its connect) within one and a half
    /// `linger` more. It sends at most one outcome, and one even if it panics ([`Reporter`]).
    ///
    /// Cancel safety: nobody cancels it (it is detached); dropped all the same (its runtime shutting down),
    /// it closes the connection it holds and frees its slot, as each step's own note says.
    async fn request_task(
        self: Arc<Self>,
        deadline: Instant,
        options: RequestOptions,
        reply: Reply,
    ) {
        let report = Reporter::new(&reply, options.tag);
        // A deadline already past is a timeout, not a request: a write can complete without waiting, so the
        // per-step timeouts alone would send a request nobody waits for, and waste the connection it used.
        if Instant::now() >= deadline {
            return report.send(Err(UpstreamError::Timeout));
        }
        // A caller already gone (its client left before this task first ran) is sent nothing, even when an
        // idle connection is ready at once. (One atomic load; a `closed()` polled first, as a biased select
        // would, costs a waiter's registration in every request.)
        if reply.is_closed() {
            return; // nothing sent: just stop (`report` finds the channel closed)
        }
        // The caller leaving drops `self.connection(..)` where it stands: a place in the queue at the cap, or
        // a half-open connection, which is closed and its slot freed.
        let connection = tokio::select! {
            connection = self.connection(deadline) => connection,
            () = reply.closed() => return, // nothing sent: just stop
        };
        let (conn, reused) = match connection {
            Ok(found) => found,
            Err(error) => return report.send(Err(error)),
        };
        // The select picks either branch when both are ready: a caller gone by now is still sent nothing.
        // A fresh connection goes to the pool unused. A reused one is closed: its idle expiry was not kept, and a
        // fresh one could outlast the server's keep-alive (rule 4).
        if reply.is_closed() {
            if !reused {
                self.pool.put(conn, Instant::now() + self.idle_timeout);
            }
            return;
        }

        let request = self.request(options.trace);
        let abandoned = {
            let exchange = self.exchange_with_retry(conn, &request, reused, deadline, &reply);
            tokio::pin!(exchange);
            // Polled by reference: if the caller leaves first, the exchange is not dropped but goes on below.
            tokio::select! {
                // Biased: an answer that is ready is delivered even if the caller is leaving at this moment.
                biased;
                result = &mut exchange => return report.send(result),
                () = reply.closed() => {}
            }
            // Nobody waits for the answer any more; finish reading it, briefly, for the connection's sake.
            let _lingering = Held::up(&self.pool.counters.lingering);
            match timeout(self.linger, exchange).await {
                // Out of time, by the linger bound or by the exchange's own hard deadline: closed, not reused.
                Err(_) | Ok(Err(UpstreamError::Timeout)) => {
                    Counters::count(&self.pool.counters.abandoned);
                    true
                }
                Ok(_) => {
                    Counters::count(&self.pool.counters.finished_in_background);
                    false
                }
            }
        };
        // The exchange was dropped with its block: an abandoned connection is closed and its slot free. With no
        // linger (abort mode) every request left behind is abandoned, hung or not: nothing is replaced then.
        if abandoned && !self.linger.is_zero() {
            self.replace_abandoned().await;
        }
    }

    /// A connection: an idle one from the pool, or a new one in a free slot (waiting for a slot if all are
    /// taken). The flag says whether it was reused.
    ///
    /// Cancel safety: dropped while waiting for a slot, the wait is abandoned; while connecting, the
    /// half-open connection is closed and its slot released.
    async fn connection(&self, deadline: Instant) -> Result<(Connection, bool), UpstreamError> {
        match self.pool.checkout(deadline).await? {
            Checkout::Reused(conn) => Ok((conn, true)),
            // Boxed, like the retry below, a measured saving (first reading: skip): connecting (DNS, TCP, a TLS
            // handshake) is a large state machine, and inline it would make every request's task that much
            // larger to allocate, although a warm pool rarely connects.
            Checkout::Fresh(slot) => Ok((Box::pin(self.connect(slot, deadline)).await?, false)),
        }
    }

    /// Resolves the upstream (cached) and opens a new connection in `slot`.
    ///
    /// Cancel safety: owns the slot and the socket being opened; dropped, both are released.
    async fn connect(
        &self,
        slot: tokio::sync::OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<Connection, UpstreamError> {
        let addrs = self.resolver.resolve(deadline).await?;
        let conn = connection::connect(&addrs, self.tls.as_ref(), slot, deadline).await?;
        Counters::count(&self.pool.counters.connects);
        Ok(conn)
    }

    /// One exchange, and the stale-connection retry (the pool's rule 6, numbered in `pool.rs`).
    ///
    /// The retry follows hyper-util's rule. A server may close an idle connection at any moment, and the close
    /// can cross our request on the wire. If a *reused* connection failed before a single byte of response came
    /// back, and within two round trips of the request going out (`Connection::closed_before_read`), that is the
    /// likely story: try once more on a fresh connection, reusing the dead one's slot, if the caller still waits
    /// (`caller` is open: a request lingering for its connection's sake opens no new one) and its `deadline`
    /// allows. So soon, we cannot tell it apart from a server that read the request and reset the connection at
    /// once, which is why RFC 9112 §9.3.1 allows this only for idempotent requests such as this GET. A later
    /// reset, a fresh connection's failure and a response that broke off are the upstream's failures, never
    /// retried. Every wait is bounded by the caller's deadline plus the linger time. The retry sends the same
    /// bytes, trace context included: for the caller it is the same attempt.
    ///
    /// Cancel safety: owns the connection; dropped mid-exchange, it is closed and its slot released.
    async fn exchange_with_retry(
        &self,
        conn: Connection,
        request: &[u8],
        reused: bool,
        deadline: Instant,
        caller: &Reply,
    ) -> Result<Work, UpstreamError> {
        let hard_deadline = deadline + self.linger;
        match self.exchange(conn, request, hard_deadline).await {
            Err(Failed::BeforeResponse(error, dead))
                if reused && Instant::now() < deadline && !caller.is_closed() =>
            {
                Counters::count(&self.pool.counters.stale_retries);
                // The dead connection's slot passes to the new one: dropped anywhere in the retry, that
                // connection (half-open or mid-exchange) is closed and the slot freed.
                let retry = async {
                    let conn = self.connect(dead.into_slot(), deadline).await?;
                    if caller.is_closed() {
                        // The caller left while it was made: it goes to the pool unused, nothing is sent.
                        self.pool.put(conn, Instant::now() + self.idle_timeout);
                        return Err(error);
                    }
                    self.exchange(conn, request, hard_deadline)
                        .await
                        .map_err(Failed::into_error)
                };
                Box::pin(retry).await
            }
            result => result.map_err(Failed::into_error),
        }
    }

    /// One request and its response on `conn`, which goes back to the pool if the response allows reuse.
    ///
    /// Cancel safety: owns `conn`; dropped mid-exchange, the connection is closed and its slot released.
    async fn exchange(
        &self,
        mut conn: Connection,
        request: &[u8],
        deadline: Instant,
    ) -> Result<Work, Failed> {
        if let Err(error) = conn.send(request, deadline).await {
            return Err(Failed::classify(error, conn));
        }
        let head = match conn.read_head(self.max_head_bytes, deadline).await {
            Ok(head) => head,
            Err(error) => return Err(Failed::classify(error, conn)),
        };

        if head.status != 200 {
            // The status is the outcome. Read the error body too when it is framed, within limits and here
            // within ERROR_BODY_GRACE, so the connection can be reused; otherwise just drop the connection.
            if head.keep_alive {
                let drain_deadline = deadline.min(Instant::now() + ERROR_BODY_GRACE);
                let drained = conn
                    .read_body(head.framing, self.max_body_bytes, drain_deadline)
                    .await;
                if drained.is_ok() {
                    self.release(conn, &head);
                }
            }
            return Err(Failed::Other(UpstreamError::Status(head.status)));
        }

        let body = conn
            .read_body(head.framing, self.max_body_bytes, deadline)
            .await
            .map_err(Failed::Other)?;
        // The exchange is complete: the connection's fate no longer depends on what the body says.
        self.release(conn, &head);
        payload::parse_work(&body).map_err(Failed::Other)
    }

    /// Returns a connection to the pool if its last response allows it (RFC 9112 §9.3, see `response.rs`)
    /// and nothing arrived after that response; otherwise drops (closes) it.
    fn release(&self, conn: Connection, head: &Head) {
        if !head.keep_alive || conn.has_unread_bytes() {
            return; // dropping `conn` closes it
        }
        let mut keep_for = self.idle_timeout;
        if let Some(server_timeout) = head.keep_alive_timeout {
            keep_for = keep_for.min(server_timeout.saturating_sub(KEEP_ALIVE_MARGIN));
        }
        self.pool.put(conn, Instant::now() + keep_for);
    }

    /// Opens a connection to take the place of one just abandoned, and puts it in the pool, if a slot is free
    /// and nobody is queued for one (the pool's rule 9, numbered in `pool.rs`). An upstream request that
    /// hangs costs its connection; without this, the next request to need one pays for the handshake on its
    /// caller's time, and when hangs come together (an upstream stall, or callers in step with each other)
    /// so do those handshakes. So the replacement starts after a pause drawn up to half of `linger`, which
    /// spreads the handshakes of connections abandoned together. Bounded by that pause and one connect
    /// timeout of `linger`; a replacement never used is closed by the idle reaper like any other.
    ///
    /// Cancel safety: holds nothing during the pause, and a slot only while connecting; dropped then, the
    /// half-open connection is closed and the slot freed.
    async fn replace_abandoned(&self) {
        let pause = self.rng.in_range(0, self.linger.as_micros() as u64 / 2);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        let Some(slot) = self.pool.try_slot() else {
            return;
        };
        let deadline = Instant::now() + self.linger;
        if let Ok(conn) = Box::pin(self.connect(slot, deadline)).await {
            self.pool.put(conn, Instant::now() + self.idle_timeout);
        }
    }
}

/// Sends a request's [`Report`] to its caller, once; a drop guard for the panic that would send none.
///
/// A request task that panicked would leave its call waiting for its deadline, and counting a request that
/// never finished; so a `Reporter` dropped before it sent (the task's future is dropped as it panics) sends
/// `Panicked`, a failure the call counts, and logs, at once. On the ways out that send nothing on purpose
/// (the caller is gone) that failure finds the channel closed and goes nowhere. (The runtimes, whose
/// shutdown also drops tasks, are shut down only after every call has ended.)
struct Reporter<'a> {
    reply: &'a Reply,
    tag: usize,
    started: Instant,
    sent: bool,
}

impl<'a> Reporter<'a> {
    fn new(reply: &'a Reply, tag: usize) -> Reporter<'a> {
        Reporter {
            reply,
            tag,
            started: Instant::now(),
            sent: false,
        }
    }

    /// Sends the request's outcome; nothing happens if its caller is gone.
    fn send(mut self, outcome: Result<Work, UpstreamError>) {
        self.sent = true;
        self.deliver(outcome);
    }

    fn deliver(&self, outcome: Result<Work, UpstreamError>) {
        let _ = self.reply.send(Box::new(Report {
            tag: self.tag,
            outcome,
            duration: self.started.elapsed(),
        }));
    }
}

impl Drop for Reporter<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.deliver(Err(UpstreamError::Panicked));
        }
    }
}

/// The machinery under `start`: measured optimisations and bookkeeping, not the lesson. First reading: skip.
impl Upstream {
    /// Spawns the task of the first of `requests`, which spawns the task of the next. The first goes to
    /// `runtime` if given: it crosses over (that runtime's injection queue, and a wake of one of its workers),
    /// and the next ones are spawned from there, on that runtime.
    ///
    /// First reading: skip. Why a chain, and why `start` takes all of a caller's requests at once: tokio puts
    /// a newly spawned task in its worker's LIFO slot, to run next; a second spawn from the same task pushes
    /// the first out to the queue other workers steal from, and wakes an idle worker to steal it. At light
    /// load the wake (a futex, an `epoll_wait` interrupted, caches warmed on another core) costs more than the
    /// request itself. So each request's task spawns the next before it starts its own work: every spawn
    /// finds the LIFO slot empty, and the requests start one after the other on this worker, microseconds
    /// apart. Under load nothing changes: busy workers steal from each other as usual. Measured in DESIGN.md
    /// ("The API", "One wake less per call"): for `/api/first` at 64 callers, a fifth fewer context switches
    /// and about 8% less CPU per call.
    fn spawn_chain(
        self: &Arc<Self>,
        deadline: Instant,
        mut requests: std::vec::IntoIter<RequestOptions>,
        reply: Reply,
        runtime: Option<&tokio::runtime::Handle>,
    ) {
        let Some(options) = requests.next() else {
            return;
        };
        let upstream = self.clone();
        let task = async move {
            upstream.spawn_chain(deadline, requests, reply.clone(), None);
            upstream.request_task(deadline, options, reply).await
        };
        match runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// The request bytes: the fixed prefix, this request's `traceparent`, the blank line. One allocation
    /// of the right size.
    fn request(&self, trace: Option<TraceParent>) -> Vec<u8> {
        let line = TRACEPARENT.len() + 2 + crate::trace::HEADER_LEN + 2;
        let mut request = Vec::with_capacity(self.request_prefix.len() + line + 2);
        request.extend_from_slice(&self.request_prefix);
        if let Some(trace) = trace {
            request.extend_from_slice(TRACEPARENT.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(&trace.to_header());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        request
    }

    /// Starts the idle reaper if it is not running and we are inside a tokio runtime.
    fn start_reaper(&self) {
        if self.reaper.get().is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        // Two first requests may race here; the loser's reaper is aborted as its handle is dropped.
        let _ = self
            .reaper
            .set(pool::spawn_reaper(&self.pool, self.idle_timeout));
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Reads one answer from `stream` as [`Upstream::exchange`] reads it from a connection: the head (after
/// any 1xx), its status, the body as the head frames it, then the payload. No socket, pool or deadline:
/// this is how the fuzz target `upstream_answer` (`fuzzing.rs`) hands the client raw bytes.
pub(crate) async fn read_answer(
    stream: impl connection::Io + 'static,
    max_head_bytes: usize,
    max_body_bytes: usize,
) -> Result<Work, UpstreamError> {
    let slot = Arc::new(Semaphore::new(1)).try_acquire_owned();
    let mut conn = Connection::over(stream, slot.expect("a new semaphore has a permit"));
    // A deadline no read reaches: a stream in memory has its bytes at once, then its end.
    let deadline = Instant::now() + Duration::from_secs(60);
    let head = conn.read_head(max_head_bytes, deadline).await?;
    if head.status != 200 {
        return Err(UpstreamError::Status(head.status));
    }
    let body = conn
        .read_body(head.framing, max_body_bytes, deadline)
        .await?;
    payload::parse_work(&body)
}

/// How an exchange failed, as far as the stale retry cares.
enum Failed {
    /// An I/O error before any response byte arrived, so soon after the request that it is taken for a
    /// close that crossed it (`Connection::closed_before_read`); the connection comes back so its slot can
    /// be reused.
    BeforeResponse(UpstreamError, Connection),
    /// Anything else: the connection (if any) is already dropped.
    Other(UpstreamError),
}

impl Failed {
    fn classify(error: UpstreamError, conn: Connection) -> Failed {
        match error {
            UpstreamError::Io(_) if conn.closed_before_read() => {
                Failed::BeforeResponse(error, conn)
            }
            _ => Failed::Other(error),
        }
    }

    fn into_error(self) -> UpstreamError {
        match self {
            Failed::BeforeResponse(error, _) | Failed::Other(error) => error,
        }
    }
}
