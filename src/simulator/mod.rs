//! The simulated upstream: `GET /api/work` answered like the real one, and worse.
//!
//! The real upstream answers `{"time": N}` after 100-600 ms and often fails. Our machines cannot
//! reach it, so fanout carries this stand-in. It is used three ways: in-process by
//! `fanout --upstream simulated`, as its own process by `fanout simulator ...` (see [`run`]), and by
//! every integration test, which scripts it reply by reply ([`Simulator::script`]) so that a test
//! states exactly which upstream behaviour it is about. `GET /stats` reports its counters as
//! JSON, for the benchmark (`bench/run.py`) to see how many connections and requests a server made.
//!
//! # Layout (a reading order)
//!
//! 1. this file: the configuration, the fault kinds, the limits, and [`Simulator`], the handle a
//!    test holds: start, script, count, wait, drop.
//! 2. [`Reply`] (`reply.rs`): one scripted answer, built like a sentence:
//!    `Reply::ok().after(ms(5))`, `Reply::fault(Fault::Hang)`.
//! 3. `server.rs`: the accept loop that owns every connection task.
//! 4. `connection.rs`: one connection: read a request head, pick a reply, delay, answer (or
//!    misbehave), keep-alive or close. The HTTP/1.1 rules it follows are quoted there.
//! 5. `state.rs`: what the handle and the connection tasks share: counters, the script, the log of
//!    seen requests, and the bell that wakes waiters.
//! 6. `tls.rs` and `certs/`: the embedded test certificate chain. (Its random source is the crate's
//!    shared `rng.rs`.)
//! 7. `cli.rs`: `fanout simulator` flags.
//!
//! # Life and death
//!
//! [`Simulator::start`] spawns one accept task; it owns a `JoinSet` with one task per connection.
//! Dropping the [`Simulator`] aborts the accept task, which drops the listener and the `JoinSet`,
//! which aborts every connection task, which drops (closes) its socket. Nothing outlives the handle.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod cli;
mod connection;
mod reply;
mod server;
mod state;
mod tls;

#[cfg(test)]
mod tests;

pub use cli::{parse_args, run, usage};
pub use reply::Reply;
pub use tls::ca_certs;

use state::{lock, Shared};

// Limits. Each bounds something a peer (or a forgetful test) controls; `--help` prints them.

/// Largest request head (request line + headers) accepted; a larger one gets 431 and a close.
/// 16 KiB is far above any head our client sends and small enough to keep per connection.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request head (httparse needs a fixed slot array); more gets 431.
pub const MAX_HEADERS: usize = 64;
/// Largest request body read and discarded (`GET` normally has none); a larger one gets 413.
pub const MAX_REQUEST_BODY_BYTES: u64 = 64 * 1024;
/// How many request heads [`Simulator::seen`] keeps (the most recent ones).
pub const SEEN_CAPACITY: usize = 1024;
/// Connections served at once. At the limit the accept loop waits for one to end, so the
/// kernel's backlog (not our memory) absorbs a flood. The benchmark's `capacity` scenario holds
/// 3 upstream connections per caller for 2,000 callers and more, so this sits just under the
/// machine's 20,000 open files rather than at a "typical" server's figure.
pub const MAX_CONNECTIONS: usize = 16 * 1024;
/// Most a [`Fault::Hang`] holds its connection, so a client that never gives up cannot pin a task
/// forever. Far longer than any deadline fanout uses.
pub const HANG_CAP: Duration = Duration::from_secs(120);
/// Pause between the bytes of a [`Fault::SlowBody`] body: a 12-byte body takes about 1.1 s.
pub const SLOW_BODY_PAUSE: Duration = Duration::from_millis(100);
/// A keep-alive connection with no new request for this long is closed even without
/// [`SimConfig::idle_close`]: every wait has an end.
pub const IDLE_CAP: Duration = Duration::from_secs(120);
/// Once the first byte of a request arrived, the rest of its head (and body) must follow this fast.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After a graceful close (our FIN sent), how long we keep reading until the client closes too,
/// so that unread input does not turn our close into an RST (RFC 9112 §9.6).
pub const LINGER: Duration = Duration::from_secs(1);
/// The TLS handshake must finish this fast, or the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Each write (and the final TLS close_notify) must finish this fast; a client that stops reading
/// cannot stall a connection task forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (typically "too many open files") before trying again, so the
/// loop does not spin while the condition lasts.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest configurable latency, in ms: longer than any deadline worth simulating.
pub const MAX_LATENCY_MS: u64 = 120_000;

/// What the simulator does with requests nobody scripted.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Latency before answering, drawn uniformly from `min..=max` milliseconds.
    pub latency_ms: (u64, u64),
    /// Share of unscripted requests (0.0..=1.0) that misbehave, with a kind drawn from `failure_kinds` (all
    /// but [`Fault::SlowBody`] fail; a slow body is a valid success that arrives late).
    pub failure_rate: f64,
    /// The kinds a failing request draws from, uniformly (list one twice to weight it).
    pub failure_kinds: Vec<Fault>,
    /// Close a keep-alive connection after this many responses on it: the n-th response carries
    /// `Connection: close`.
    pub close_after: Option<u64>,
    /// Close a keep-alive connection silently after it was idle this long (no header, no TLS
    /// close_notify: like a server that died or a middlebox that forgot the connection).
    pub idle_close: Option<Duration>,
    /// Serve TLS (with the embedded test certificate) instead of plain HTTP.
    pub tls: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: (100, 600),
            failure_rate: 0.0,
            failure_kinds: Fault::ALL.to_vec(),
            close_after: None,
            idle_close: None,
            tls: true,
        }
    }
}

impl SimConfig {
    /// Checks the fields a user can get wrong; the message names the field and the rule.
    pub fn validate(&self) -> Result<(), String> {
        let (min, max) = self.latency_ms;
        if min > max {
            return Err(format!(
                "latency: minimum {min} ms is above maximum {max} ms"
            ));
        }
        if max > MAX_LATENCY_MS {
            return Err(format!(
                "latency: {max} ms is above the limit of {MAX_LATENCY_MS} ms"
            ));
        }
        // `contains` is false for NaN too.
        let rate = self.failure_rate;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("failure rate: {rate} is not within 0..=1"));
        }
        if self.failure_rate > 0.0 && self.failure_kinds.is_empty() {
            return Err("failure kinds: a failure rate above 0 needs at least one kind".into());
        }
        if self.close_after == Some(0) {
            return Err("close after: must be at least 1 response".into());
        }
        if self.idle_close == Some(Duration::ZERO) {
            return Err("idle close: must be longer than 0".into());
        }
        Ok(())
    }
}

/// The ways one simulated answer can go wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Status 500 with a small JSON error body.
    Status500,
    /// Status 200 with a body that is not JSON at all (an HTML error page).
    InvalidJson,
    /// Status 200 with a JSON object that has no `time`: `{"result": 1}`.
    MissingTime,
    /// No answer: the TCP connection is reset (RST), as by a crashing server.
    Reset,
    /// No answer, ever: the connection is held until the client closes it (or [`HANG_CAP`]).
    Hang,
    /// A valid success whose body trickles in a byte every [`SLOW_BODY_PAUSE`].
    SlowBody,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Status500,
        Fault::InvalidJson,
        Fault::MissingTime,
        Fault::Reset,
        Fault::Hang,
        Fault::SlowBody,
    ];

    /// The name used by `--failures` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Status500 => "status500",
            Fault::InvalidJson => "invalid-json",
            Fault::MissingTime => "missing-time",
            Fault::Reset => "reset",
            Fault::Hang => "hang",
            Fault::SlowBody => "slow-body",
        }
    }
}

/// One request head as the simulator received it, for tests to inspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// The request target as sent, query string included.
    pub path: String,
    /// Header fields in arrival order; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running simulated upstream. Dropping it stops it and closes every socket it holds.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept task; it owns the listener and every connection task (see the module doc).
    accept_task: JoinHandle<()>,
}

impl Simulator {
    /// Binds 127.0.0.1:0 and starts serving in the background.
    pub async fn start(config: SimConfig) -> io::Result<Simulator> {
        // The server's backlog: fanout may open thousands of connections to it at once.
        let listener = crate::http::bind((IpAddr::from([127, 0, 0, 1]), 0).into())?;
        Simulator::start_on(listener, config).await
    }

    /// Starts serving on a listener the caller bound (for a fixed port, or `fanout simulator`).
    /// Fails with `InvalidInput` if the configuration does not validate.
    pub async fn start_on(listener: TcpListener, config: SimConfig) -> io::Result<Simulator> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let acceptor = config.tls.then(tls::acceptor).transpose()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let accept_task = tokio::spawn(server::accept_loop(listener, acceptor, shared.clone()));
        Ok(Simulator {
            addr,
            shared,
            accept_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT/api/work` (or `http://` without TLS).
    ///
    /// An IP, not `localhost`, although the certificate names both (and ::1): resolving `localhost`
    /// needs /etc/hosts, which a `FROM scratch` image or an empty chroot does not have. A listener on
    /// another address gets that address in the URL.
    pub fn url(&self) -> String {
        let port = self.addr.port();
        let scheme = if self.shared.config.tls {
            "https"
        } else {
            "http"
        };
        let host = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() || ip.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(ip) if ip.is_loopback() || ip.is_unspecified() => "[::1]".to_string(),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        format!("{scheme}://{host}:{port}/api/work")
    }

    /// Queues replies for the next `GET /api/work` requests, one per request in arrival order
    /// (across all connections). Other paths do not consume them. When the queue is empty,
    /// requests follow the [`SimConfig`].
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script).extend(replies);
    }

    /// Connections accepted since start (including ones whose TLS handshake then failed).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed. One the simulator closes gracefully (after
    /// `Connection: close`) stays counted until the client closes its end too, or [`LINGER`].
    pub fn connections_open(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// TLS handshakes since start that resumed a session (with a ticket) rather than a full handshake.
    pub fn tls_resumed(&self) -> u64 {
        self.shared.tls_resumed.load(Ordering::SeqCst)
    }

    /// Request heads received since start, on any path except `GET /stats`.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Ends every open connection with a TCP reset (RST), whatever it is doing, as an upstream's deploy
    /// or a load balancer's restart does: the client's pooled connections all die at once.
    pub fn reset_connections(&self) {
        self.shared.resets.send_replace(());
    }

    /// Requests received and not yet answered: waiting out their latency, hanging, or being sent. One
    /// ends when its answer is written or its connection closes (the client gave up, say).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The last [`SEEN_CAPACITY`] request heads, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).iter().cloned().collect()
    }

    /// Waits until [`requests`](Self::requests) is at least `n`; false if `timeout` came first.
    ///
    /// Cancel safety: only observes; dropping it changes nothing.
    pub async fn wait_requests(&self, n: u64, timeout: Duration) -> bool {
        self.shared
            .wait_until(timeout, || self.requests() >= n)
            .await
    }

    /// Waits until [`in_flight`](Self::in_flight) is exactly `n`; false if `timeout` came first.
    ///
    /// Cancel safety: only observes; dropping it changes nothing.
    pub async fn wait_in_flight(&self, n: u64, timeout: Duration) -> bool {
        self.shared
            .wait_until(timeout, || self.in_flight() == n)
            .await
    }

    /// Waits until [`connections_open`](Self::connections_open) is exactly `n`; false if
    /// `timeout` came first.
    ///
    /// Cancel safety: only observes; dropping it changes nothing.
    pub async fn wait_connections_open(&self, n: u64, timeout: Duration) -> bool {
        self.shared
            .wait_until(timeout, || self.connections_open() == n)
            .await
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // Aborting is not instant: the runtime drops the task (and so the listener and every
        // connection task) the next time it gets to it, which is promptly. It never panics.
        self.accept_task.abort();
    }
}
