//! One HTTP/1.1 connection to the upstream, over plain TCP or TLS: opening it, writing a request, reading
//! a response head and body within limits and a deadline, and telling whether an idle one is still open.
//!
//! Every wait on the network in this file is one of four awaits (connect, TLS handshake, write, read), and
//! each is wrapped in `tokio::time::timeout_at(deadline, ..)`: no step outlives the deadline it is given.
//! Connecting is given the caller's deadline (a replacement for an abandoned connection, which has no
//! caller, one linger time); an exchange, the caller's deadline plus the linger time, so that a response
//! whose caller left can still be read to its end (`Upstream::request_task`).
//!
//! A [`Connection`] carries its slot (a semaphore permit counting it against `pool_max_connections`), so the
//! slot is released exactly when the socket is closed: by dropping the `Connection`, wherever that happens.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout_at, Duration, Instant};
use tokio_rustls::TlsConnector;

use super::response::{self, Framing, Head};
use super::UpstreamError;
use crate::http::chunked::ChunkedDecoder;

/// How much we ask the socket for per read. The whole answer (head and a `{"time": N}` body) is usually a few
/// hundred bytes; 8 KiB takes it in one read, and matches the TLS layer's buffering (see `Connection::fill`).
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// Most 1xx interim responses skipped before the final one. We never send `Expect: 100-continue`, so a
/// well-behaved server sends none or one; the cap stops a server that loops.
pub(crate) const MAX_INTERIM_RESPONSES: usize = 8;

/// Added to two round trips for how soon after its request a connection must fail to count as closed
/// before the server read the request ([`Connection::closed_before_read`]): time for our task to be
/// scheduled and see the close. Far below any real answer's time (the upstream takes 100 ms and more).
const STALE_SLACK: Duration = Duration::from_millis(10);

/// The byte stream under HTTP: a TCP socket, or TLS over one. Boxed once per connection, not per request,
/// so that nothing past `connect` needs to know which.
type Stream = Box<dyn Io>;

/// What a [`Stream`] is: any byte stream we can move between tasks.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection and what we know about it.
pub(crate) struct Connection {
    stream: Stream,
    /// Bytes read from the stream but not yet consumed. Empty between exchanges on a connection that is
    /// reused: anything left over would be the server talking out of turn.
    buf: Vec<u8>,
    /// Whether the current exchange has received any byte yet. Cleared when a request is sent; the stale
    /// retry in `mod.rs` only retries a request that got nothing back.
    received: bool,
    /// When the current request was sent.
    sent_at: Instant,
    /// How long the TCP handshake took: one round trip, as measured when the connection was opened.
    round_trip: Duration,
    /// This connection's place under `pool_max_connections`, released when the connection is dropped.
    slot: OwnedSemaphorePermit,
}

/// Opens a connection: TCP to the first address that accepts, then the TLS handshake if `tls` is given.
///
/// The addresses are tried one after another, each attempt bounded by the same deadline (no Happy Eyeballs
/// racing of IPv6 and IPv4: with one upstream and a resolver that orders addresses sensibly, the first one
/// nearly always answers).
///
/// Cancel safety: owns the socket and `slot` until it returns; dropped mid-connect or mid-handshake, the
/// socket is closed and the slot released.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    tls: Option<&(TlsConnector, ServerName<'static>)>,
    slot: OwnedSemaphorePermit,
    deadline: Instant,
) -> Result<Connection, UpstreamError> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    let mut tcp = None;
    for addr in addrs {
        let started = Instant::now();
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_elapsed) => return Err(UpstreamError::Timeout),
            Ok(Ok(stream)) => {
                tcp = Some((stream, started.elapsed()));
                break;
            }
            Ok(Err(e)) => last_error = io::Error::new(e.kind(), format!("{addr}: {e}")),
        }
    }
    let (tcp, round_trip) = tcp.ok_or(UpstreamError::Connect(last_error))?;
    // A request goes out in one write and we wait for its answer: Nagle's algorithm would only add delay.
    tcp.set_nodelay(true).map_err(UpstreamError::Connect)?;

    let conn = match tls {
        None => Connection::over(tcp, slot),
        Some((connector, server_name)) => {
            let handshake = connector.connect(server_name.clone(), tcp);
            match timeout_at(deadline, handshake).await {
                Err(_elapsed) => return Err(UpstreamError::Timeout),
                Ok(Err(e)) => return Err(UpstreamError::Tls(e)),
                Ok(Ok(tls_stream)) => Connection::over(tls_stream, slot),
            }
        }
    };
    Ok(Connection { round_trip, ..conn })
}

impl Connection {
    /// A connection over any byte stream, open in `slot`: `connect` makes one over TCP or TLS; a stream in
    /// memory serves to read answers without a socket (`super::read_answer`).
    pub(crate) fn over(stream: impl Io + 'static, slot: OwnedSemaphorePermit) -> Connection {
        Connection {
            stream: Box::new(stream),
            buf: Vec::new(),
            received: false,
            sent_at: Instant::now(),
            round_trip: Duration::ZERO,
            slot,
        }
    }

    /// Writes a whole request (prepared once by the caller) and flushes it through TLS.
    ///
    /// Cancel safety: borrows the connection. Dropped mid-write, part of a request may be on the wire, so the
    /// connection is unusable; the caller that owns it drops it too (see `Upstream::exchange`).
    pub(crate) async fn send(
        &mut self,
        request: &[u8],
        deadline: Instant,
    ) -> Result<(), UpstreamError> {
        self.received = false;
        self.sent_at = Instant::now();
        let write = async {
            self.stream.write_all(request).await?;
            self.stream.flush().await
        };
        // A timeout here can leave part of the request sent: on `Timeout` the caller drops the connection.
        match timeout_at(deadline, write).await {
            Err(_elapsed) => Err(UpstreamError::Timeout),
            Ok(result) => result.map_err(UpstreamError::Io),
        }
    }

    /// Reads the final response head, skipping 1xx interim responses (RFC 9110 §15.2: a client "MUST be able
    /// to parse one or more 1xx responses received prior to a final response").
    ///
    /// Cancel safety: borrows the connection; dropped mid-read, the connection holds a partial response and
    /// its owner must drop it (it does: see `Upstream::exchange`).
    pub(crate) async fn read_head(
        &mut self,
        max_head_bytes: usize,
        deadline: Instant,
    ) -> Result<Head, UpstreamError> {
        let mut interim = 0;
        loop {
            if let Some((head, len)) = response::parse_head(&self.buf, max_head_bytes)? {
                self.buf.drain(..len);
                if (100..200).contains(&head.status) {
                    interim += 1;
                    if interim > MAX_INTERIM_RESPONSES {
                        return Err(UpstreamError::Protocol("too many 1xx interim responses"));
                    }
                    continue;
                }
                return Ok(head);
            }
            if self.fill(deadline).await? == 0 {
                return Err(closed(if self.received {
                    "the upstream closed the connection in the middle of the response head"
                } else {
                    "the upstream closed the connection without answering"
                }));
            }
        }
    }

    /// Reads the body that follows `head`, as framed by it, refusing more than `max_body_bytes`.
    ///
    /// Cancel safety: as for [`Connection::read_head`]; a partly read body leaves the connection unusable.
    pub(crate) async fn read_body(
        &mut self,
        framing: Framing,
        max_body_bytes: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        let too_large = UpstreamError::Protocol("response body larger than max_body_bytes");
        let closed_early =
            || closed("the upstream closed the connection in the middle of the response body");
        match framing {
            Framing::Empty => Ok(Vec::new()),
            Framing::Length(length) => {
                // Refuse before reading a byte of it.
                let length = usize::try_from(length)
                    .ok()
                    .filter(|&n| n <= max_body_bytes)
                    .ok_or(too_large)?;
                while self.buf.len() < length {
                    if self.fill(deadline).await? == 0 {
                        return Err(closed_early());
                    }
                }
                let rest = self.buf.split_off(length);
                Ok(std::mem::replace(&mut self.buf, rest))
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut body = Vec::new();
                loop {
                    let used = decoder
                        .decode(&self.buf, &mut body)
                        .map_err(|e| UpstreamError::Protocol(e.as_str()))?;
                    self.buf.drain(..used);
                    if body.len() > max_body_bytes {
                        return Err(too_large);
                    }
                    if decoder.is_done() {
                        return Ok(body);
                    }
                    if self.fill(deadline).await? == 0 {
                        return Err(closed_early());
                    }
                }
            }
            Framing::UntilClose => loop {
                if self.buf.len() > max_body_bytes {
                    return Err(too_large);
                }
                // Over TLS, a close without close_notify is an error here (rustls reports UnexpectedEof): for
                // a close-delimited body it is the only sign of a truncated answer.
                if self.fill(deadline).await? == 0 {
                    return Ok(std::mem::take(&mut self.buf));
                }
            },
        }
    }

    /// Reads once from the stream onto the end of `buf`; `Ok(0)` means the peer closed its side.
    ///
    /// The read goes into a chunk on the stack, made afresh in each poll (so it is never part of the
    /// future), and only what arrived is appended to `buf`: a few hundred bytes, a size the allocator serves
    /// from its per-thread cache. Reading straight into `buf` reserved 8 KiB on the heap for every request,
    /// because a body leaves with the buffer it was read into: three allocations per call too big for that
    /// cache, each taking a lock shared with the other workers (DESIGN.md, "Capacity, limits, and what happens
    /// past each", "Fewer large allocations").
    ///
    /// Cancel safety: `poll_read` takes no bytes from the stream unless it is ready, and then they are
    /// appended in the same poll; so a deadline firing here loses nothing, and it is the exchange as a whole
    /// that is abandoned.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, UpstreamError> {
        let read = poll_fn(|cx| {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut chunk))?;
            self.buf.extend_from_slice(chunk.filled());
            Poll::Ready(Ok::<_, io::Error>(chunk.filled().len()))
        });
        let n = match timeout_at(deadline, read).await {
            Err(_elapsed) => return Err(UpstreamError::Timeout),
            Ok(result) => result.map_err(UpstreamError::Io)?,
        };
        self.received |= n > 0;
        Ok(n)
    }

    /// Whether a failure now means the server closed the connection before it read the request, for the
    /// stale-connection retry in `mod.rs`: no byte of a response came, and no more than two round trips
    /// (and [`STALE_SLACK`]) have passed since the request went out. A server that closed an idle
    /// connection just as the request was sent shows its close (or the reset its kernel answers the request
    /// with) within one round trip; a close that comes later came from a server that had the request, and
    /// is that request's failure (`reset` in the API contract), not a reason to send it again.
    pub(crate) fn closed_before_read(&self) -> bool {
        !self.received && self.sent_at.elapsed() <= 2 * self.round_trip + STALE_SLACK
    }

    /// Bytes arrived after the end of the response. The server is talking out of turn (or we misframed):
    /// the connection must not carry another request.
    pub(crate) fn has_unread_bytes(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether an idle connection still looks usable, decided without waiting.
    ///
    /// We poll one read with a waker that does nothing (`Waker::noop`). On an idle HTTP/1.1 connection the
    /// server has nothing to say, so the only healthy answer is `Pending`. Anything else means the connection
    /// is done: end of stream (the server closed it, e.g. its keep-alive timer fired; over TLS this includes
    /// its close_notify), an error (reset), or data nobody asked for. A TLS session ticket arriving late is
    /// consumed inside rustls and still reads as `Pending`.
    ///
    /// This sees only what the runtime's I/O driver has already noticed: a close that is still in flight can
    /// pass as open. That race is what the stale retry in `mod.rs` is for.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Closes the connection but keeps its slot, to open a replacement without queueing again.
    pub(crate) fn into_slot(self) -> OwnedSemaphorePermit {
        self.slot
    }
}

/// The upstream closed the connection before the response was complete.
fn closed(why: &'static str) -> UpstreamError {
    UpstreamError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, why))
}
