//! The bounds on what a client may make the server hold: bytes, header fields, times, connections and calls.
//! Each has its reason beside its default; `config` reads them from flags, `--help` lists them.

use std::time::Duration;

/// The largest `--max-headers` accepted: the parser's header slots are an array of this size on the stack
/// (32 KiB, left uninitialised), instead of a heap allocation for every request.
pub const MAX_HEADERS_CEILING: usize = 1024;

/// Bounds on what a client may make the server hold. Each one has a reason next to its default.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line plus headers, in bytes; more gets `431` (or `414` when the request line alone is longer).
    pub max_head_bytes: usize,
    /// Request target, in bytes; longer gets `414`.
    pub max_uri_bytes: usize,
    /// Header fields in one request; more gets `431`. At most [`MAX_HEADERS_CEILING`].
    pub max_headers: usize,
    /// A request body (which no endpoint uses) is read and discarded up to this size; a larger one gets `413`.
    pub max_body_bytes: u64,
    /// Time to receive a whole request head once its first byte arrived (slowloris guard); then `408`.
    pub head_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// Time allowed to write one response to a client that does not read; then the connection is dropped.
    pub write_timeout: Duration,
    /// On shutdown, the listener stays open this long (answers say `Connection: close`, idle connections
    /// stay open) so that load balancers stop sending before it closes; zero: it closes at once.
    pub drain_delay: Duration,
    /// Once the listener has closed, connections still busy after this long are closed.
    pub drain_timeout: Duration,
    /// Client connections open at once; beyond, a new one's first request gets `503` and a close.
    pub max_connections: usize,
    /// API calls in flight at once; beyond, calls are shed at once (`503`, or `200 []` from
    /// `/api/within-timeout`) without touching the upstream.
    pub max_in_flight: usize,
    /// Runtime lag over which the in-flight limit falls below `max_in_flight` (zero: never; `api::limit`).
    pub overload_lag: Duration,
    /// After a shed answer, that connection's next request is not read for this long (zero: no pause).
    pub shed_pause: Duration,
    /// Whether a client that shuts its sending side (EOF) while its call runs still gets the answer. Off
    /// (hyper's and nginx's default), such a client is taken for gone and its call dropped; on, it is
    /// answered and the connection closed. Either way the call holds its place no longer than its deadline.
    pub half_close: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Browsers send 1-2 KiB of headers; 16 KiB leaves room for large cookies and trace headers.
            max_head_bytes: 16 * 1024,
            // RFC 9112 §3 recommends supporting request lines of at least 8000 octets.
            max_uri_bytes: 8 * 1024,
            // Bounds the header array httparse fills for each request.
            max_headers: 64,
            // GET bodies have no meaning here; reading a small one keeps the connection usable.
            max_body_bytes: 64 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            // Without a load balancer there is nothing to wait for, and Kubernetes' preStop pause
            // (deploy/) holds SIGTERM back until the endpoints are updated. Behind one that checks
            // /readyz, longer than it takes to mark a server down (README.md, "Operations").
            drain_delay: Duration::ZERO,
            // The longest call (max_timeout_ms, 60 s) plus 5 s to write its answer. A client slower than
            // that (the write timeout is 10 s, and the lingering close 2 s more) is cut at the limit.
            drain_timeout: Duration::from_secs(65),
            // File descriptors are the bound (20,000 here): 8,192 client connections plus at most 8,192
            // upstream ones (`--upstream-max-connections`) leaves room for everything else.
            max_connections: 8192,
            // Each call holds up to 3 upstream connections: 2,560 calls fit the upstream cap of 8,192 with
            // room for requests that finish in the background. 2,000 callers are not overload.
            max_in_flight: 2560,
            overload_lag: crate::api::limit::DEFAULT_LAG,
            // No pause: it would be part of the caller's next answer time (DESIGN.md, "Shedding on a
            // runtime of its own").
            shed_pause: Duration::ZERO,
            half_close: false,
        }
    }
}
