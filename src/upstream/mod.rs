//! The outbound side: a small HTTP/1.1 client (plain TCP or TLS) with its own keep-alive pool.
//!
//! SKELETON: the interface below is fixed; the implementation is being written.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::time::Instant;

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
}

/// One successful upstream answer: the JSON object as it came, re-serialised compactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// The compact JSON text of the object, e.g. `{"time":123}`.
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
    Connect(std::io::Error),
    /// The TLS handshake failed.
    Tls(std::io::Error),
    /// Reading or writing failed mid-exchange (reset, early EOF).
    Io(std::io::Error),
    /// The response was not valid HTTP/1.1 or broke a limit (head or body too large).
    Protocol(&'static str),
    /// A status other than 200.
    Status(u16),
    /// Status 200, but the body is not a JSON object with a non-negative integer `time`.
    InvalidPayload(&'static str),
}

/// The upstream client: shared by all API calls (`Arc<Upstream>`).
pub struct Upstream {}

impl Upstream {
    pub fn new(_config: UpstreamConfig) -> Result<Upstream, String> {
        todo!()
    }

    /// One `GET` of the work URL, bounded by `deadline`.
    pub async fn fetch(&self, _deadline: Instant) -> Result<Work, UpstreamError> {
        todo!()
    }

    /// The URL in use, for the start-up log line.
    pub fn url(&self) -> &str {
        todo!()
    }
}
