//! One connection: read a request head, pick a reply, wait, answer (or misbehave), repeat.
//!
//! The HTTP/1.1 rules followed here (RFC 9112 unless noted):
//!
//! - §9.3 persistence: an HTTP/1.1 connection stays open unless the request says
//!   `Connection: close`; an HTTP/1.0 one only if it says `Connection: keep-alive`.
//!   Every response we send says `Connection: close` when we are about to close.
//! - §6.3 request body length: no `Transfer-Encoding` and no `Content-Length` means no body.
//!   We do not accept chunked request bodies (501, RFC 9110 §15.6.2: a server that does not
//!   implement a transfer coding answers 501); a `Content-Length` body is read and discarded.
//! - §6.3 response body length: every response we build carries `Content-Length`, except the
//!   chunked one, whose framing is `Transfer-Encoding: chunked` (§7.1).
//! - §9.3.2 pipelining: requests that arrive back to back are answered in order; bytes read past
//!   one head stay in the buffer for the next.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_rustls::TlsAcceptor;

use super::reply::{Kind, Reply};
use super::state::{InFlight, OpenConnection, Shared};
use super::{
    Fault, SeenRequest, HANG_CAP, IDLE_CAP, LINGER, MAX_HEADERS, MAX_HEAD_BYTES,
    MAX_REQUEST_BODY_BYTES, REQUEST_TIMEOUT, SLOW_BODY_PAUSE, TLS_HANDSHAKE_TIMEOUT, WRITE_TIMEOUT,
};

/// The body of [`Fault::InvalidJson`]: what a proxy in front of a dead service tends to send.
const NOT_JSON: &[u8] = b"<html><body><h1>502 Bad Gateway</h1></body></html>";
/// The body of [`Fault::MissingTime`]: valid JSON, wrong shape.
const MISSING_TIME: &[u8] = br#"{"result": 1}"#;
/// How many bytes one `read` asks for.
const READ_CHUNK: usize = 4096;

/// A byte stream we can also reach the TCP socket of (for the RST of [`Fault::Reset`]).
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Serves one accepted connection until it ends. Runs as its own task, owned by the accept
/// loop's `JoinSet`; `open` is the connection's place in `connections_open`.
///
/// Cancel safety: cancelled only when the simulator is dropped; dropping the future drops the
/// socket (closing it) and then the `open` guard. Nothing else is held.
pub(super) async fn serve(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    open: OpenConnection,
) {
    // Our writes are small and sometimes deliberately split (chunks, a slow body byte by byte);
    // Nagle's algorithm would hold them back waiting for ACKs and blur the timing we simulate.
    // Failing to set it only makes timing less sharp, so the error is ignored.
    let _ = tcp.set_nodelay(true);
    match acceptor {
        None => Connection::new(tcp, shared, open).run().await,
        Some(acceptor) => {
            let handshake = timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            // A failed or stalled handshake leaves nobody to answer: dropping it closes the socket.
            if let Ok(Ok(tls)) = handshake {
                if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                    shared.tls_resumed.fetch_add(1, Ordering::SeqCst);
                }
                Connection::new(tls, shared, open).run().await;
            }
        }
    }
}

/// How a connection ends.
#[derive(Debug)]
enum End {
    /// Shut down our side properly (TLS close_notify, then FIN): after `Connection: close`.
    Graceful,
    /// Just drop the socket: the peer closed, the idle timer fired, or a hang ended. For TLS
    /// this sends no close_notify, like a server that died.
    Drop,
    /// Abort the TCP connection with an RST.
    Reset,
}

/// The parts of a request head the connection acts on.
struct Head {
    seen: SeenRequest,
    keep_alive: bool,
    /// Bytes of request body to discard.
    body_len: u64,
}

/// The outcome of waiting for a request head.
enum HeadRead {
    Head(Head),
    /// The peer closed between requests: the normal end of a keep-alive connection.
    PeerClosed,
    /// No request within the idle time: close silently.
    Idle,
    /// Unacceptable: answer with this status and close.
    Reject(u16),
}

struct Connection<S> {
    stream: S,
    shared: Arc<Shared>,
    /// Bytes read but not yet consumed (at most one head plus one read chunk; see `read_head`).
    buf: Vec<u8>,
    /// Declared after `stream`, so it is dropped after it: a connection leaves
    /// `connections_open` only once its socket is closed.
    _open: OpenConnection,
}

impl<S: Transport> Connection<S> {
    fn new(stream: S, shared: Arc<Shared>, open: OpenConnection) -> Self {
        Connection {
            stream,
            shared,
            buf: Vec::with_capacity(READ_CHUNK),
            _open: open,
        }
    }

    async fn run(mut self) {
        // Subscribed before anything else: a reset asked for from here on ends this connection.
        let mut reset = self.shared.resets.subscribe();
        let end = tokio::select! {
            // An I/O error mid-exchange (the peer reset, a write timed out) ends the connection the
            // same way a silent close does: there is nobody left to tell.
            end = self.exchanges() => end.unwrap_or(End::Drop),
            // Whatever it was doing (waiting for a request, a delay, a hang) is dropped.
            _ = reset.changed() => End::Reset,
        };
        match end {
            End::Graceful => {
                // RFC 9112 §9.6: close in stages: half-close (TLS close_notify, then FIN), then
                // drain until the client closes too, so that unread input does not make the kernel
                // send an RST that destroys our response (likely after a 431 or 413). Both stages
                // are bounded: a peer that stopped reading cannot hold us in close_notify forever.
                let _ = timeout(WRITE_TIMEOUT, self.stream.shutdown()).await;
                self.drain(LINGER).await;
            }
            End::Drop => {}
            End::Reset => {
                // SO_LINGER = 0 makes the kernel answer close() with an RST instead of a FIN.
                // (tokio deprecated `set_linger` because a non-zero linger blocks the thread in
                // close(); zero never blocks, and `set_zero_linger` is the supported spelling.)
                let _ = self.stream.tcp().set_zero_linger();
            }
        }
        // Dropping `self` closes the socket, then releases its `connections_open` place.
    }

    /// Request after request until the connection should end.
    async fn exchanges(&mut self) -> io::Result<End> {
        let mut responses: u64 = 0;
        loop {
            let head = match self.read_head().await? {
                HeadRead::Head(head) => head,
                HeadRead::PeerClosed | HeadRead::Idle => return Ok(End::Drop),
                HeadRead::Reject(status) => {
                    self.send_error(status, true).await?;
                    return Ok(End::Graceful);
                }
            };
            // Held until the answer is out, or the connection ends (the `?`s and `return`s below).
            let (reply, _in_flight) = self.route(head.seen);
            self.discard_body(head.body_len).await?;

            responses += 1;
            let close_after = self.shared.config.close_after;
            let last = !head.keep_alive || close_after.is_some_and(|n| responses >= n);
            if let Some(end) = self.answer(reply, last).await? {
                return Ok(end);
            }
        }
    }

    /// Counts the request and decides its reply; the request counts as in flight while the guard lives.
    /// Only `GET /api/work` consumes the script.
    ///
    /// `GET /stats` answers the counters at once and is neither counted in `requests` nor kept
    /// in `seen`: a benchmark polls it before and after a run and subtracts, so it must not
    /// disturb what it measures.
    fn route(&self, request: SeenRequest) -> (Reply, Option<InFlight>) {
        let path = request.path.split('?').next().unwrap_or("");
        if path == "/stats" && request.method == "GET" {
            return (
                Reply::body(200, self.shared.stats_json()).after(Duration::ZERO),
                None,
            );
        }
        let reply = match (path, request.method == "GET") {
            ("/api/work", true) => self.shared.next_reply(),
            ("/api/work" | "/stats", _) => Reply::status(405).after(Duration::ZERO),
            _ => Reply::status(404).after(Duration::ZERO),
        };
        (reply, Some(self.shared.record(request)))
    }

    /// Waits for the next request head: up to the idle time for its first byte, then up to
    /// [`REQUEST_TIMEOUT`] for the rest.
    ///
    /// Cancel safety: not needed (only the whole connection is ever cancelled), but it holds
    /// anyway: bytes land in `self.buf` only when a `read` completes.
    async fn read_head(&mut self) -> io::Result<HeadRead> {
        let idle = self.shared.config.idle_close.unwrap_or(IDLE_CAP);
        let idle_deadline = deadline_in(idle);
        let mut request_deadline = None;
        loop {
            if !self.buf.is_empty() {
                request_deadline.get_or_insert_with(|| Instant::now() + REQUEST_TIMEOUT);
                match parse_head(&self.buf) {
                    Some((head, len)) => {
                        self.buf.drain(..len);
                        return Ok(head);
                    }
                    None if self.buf.len() >= MAX_HEAD_BYTES => return Ok(HeadRead::Reject(431)),
                    None => {}
                }
            }
            // The buffer grows by at most one chunk past a partial head under the limit, so it
            // stays below MAX_HEAD_BYTES + READ_CHUNK.
            let deadline = request_deadline.unwrap_or(idle_deadline);
            match timeout_at(deadline, self.read_more()).await {
                Some(0) if self.buf.is_empty() => return Ok(HeadRead::PeerClosed),
                Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Some(_) => {}
                None if request_deadline.is_none() => return Ok(HeadRead::Idle),
                // Started a request and stalled: answer 408 (RFC 9110 §15.5.9) and close.
                None => return Ok(HeadRead::Reject(408)),
            }
        }
    }

    /// Reads whatever is available (at most [`READ_CHUNK`]) onto the buffer; 0 at EOF.
    /// Errors count as EOF here: the caller's answer to both is to stop.
    ///
    /// Cancel safety: bytes land in `self.buf` only when a read completes (tokio's and
    /// tokio-rustls's `read` keep unread data in the stream), so dropping it loses nothing.
    async fn read_more(&mut self) -> usize {
        let mut chunk = [0u8; READ_CHUNK];
        match self.stream.read(&mut chunk).await {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    /// Reads and drops `len` bytes of request body, within [`REQUEST_TIMEOUT`].
    async fn discard_body(&mut self, mut len: u64) -> io::Result<()> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let buffered = len.min(self.buf.len() as u64);
            self.buf.drain(..buffered as usize);
            len -= buffered;
            if len == 0 {
                return Ok(());
            }
            match timeout_at(deadline, self.read_more()).await {
                Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Some(_) => {}
                None => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
    }

    /// Waits the reply's delay, then answers (or misbehaves), and says how the connection ends, if it
    /// does (`None`: it stays open for the next request). `last` says the connection must close
    /// after this response (the client asked, or `close_after` was reached).
    async fn answer(&mut self, reply: Reply, last: bool) -> io::Result<Option<End>> {
        let close = last || reply.close;
        let delay = reply.delay.unwrap_or_else(|| self.shared.random_latency());
        if reply.kind != Kind::Fault(Fault::Hang) && !self.work(delay).await {
            return Ok(Some(End::Drop));
        }
        let time = reply
            .time
            .unwrap_or_else(|| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));

        match reply.kind {
            Kind::Ok => self.send_response(200, &success_body(time), close).await?,
            Kind::Chunked => self.send_chunked(&success_body(time), close).await?,
            Kind::Status(status) => self.send_error(status, close).await?,
            Kind::Body(status, body) => self.send_response(status, &body, close).await?,
            Kind::Raw(bytes) => self.send(&bytes).await?,
            Kind::Fault(Fault::Status500) => self.send_error(500, close).await?,
            Kind::Fault(Fault::InvalidJson) => self.send_response(200, NOT_JSON, close).await?,
            Kind::Fault(Fault::MissingTime) => self.send_response(200, MISSING_TIME, close).await?,
            Kind::Fault(Fault::Reset) => return Ok(Some(End::Reset)),
            Kind::Fault(Fault::Hang) => {
                self.drain(HANG_CAP).await;
                return Ok(Some(End::Drop));
            }
            Kind::Fault(Fault::SlowBody) => self.send_slowly(&success_body(time), close).await?,
        }
        Ok(close.then_some(End::Graceful))
    }

    /// Spends `delay` "working" before the answer, while watching the socket: a client that gives
    /// up and closes ends the connection now, not after the delay, so `connections_open` follows
    /// the client promptly even behind a long scripted delay. False when the client is gone.
    /// (A client that half-closes while waiting counts as gone; HTTP/1.1 clients do not.)
    ///
    /// Bytes that arrive meanwhile (a pipelined request) stay buffered for later, up to
    /// [`MAX_HEAD_BYTES`]; past that we stop reading and only wait.
    async fn work(&mut self, delay: Duration) -> bool {
        let done = deadline_in(delay);
        while self.buf.len() < MAX_HEAD_BYTES {
            match timeout_at(done, self.read_more()).await {
                None => return true,
                Some(0) => return false,
                Some(_) => {}
            }
        }
        sleep_until(done).await;
        true
    }

    /// Writes the whole buffer and flushes it (through TLS, to the socket) within
    /// [`WRITE_TIMEOUT`].
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        timeout(WRITE_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    /// A complete response framed by `Content-Length`, head and body in one write.
    async fn send_response(&mut self, status: u16, body: &[u8], close: bool) -> io::Result<()> {
        let length = format!("Content-Length: {}\r\n", body.len());
        let mut response = head(status, &length, close);
        response.extend_from_slice(body);
        self.send(&response).await
    }

    /// This status with a small JSON error body, e.g. `{"error": "not found", "status": 404}`.
    async fn send_error(&mut self, status: u16, close: bool) -> io::Result<()> {
        let error = reason(status).to_ascii_lowercase();
        let body = format!("{{\"error\": \"{error}\", \"status\": {status}}}");
        self.send_response(status, body.as_bytes(), close).await
    }

    /// The head at once, then the body one byte per [`SLOW_BODY_PAUSE`].
    async fn send_slowly(&mut self, body: &[u8], close: bool) -> io::Result<()> {
        let head = head(200, &format!("Content-Length: {}\r\n", body.len()), close);
        self.send(&head).await?;
        for (i, byte) in body.iter().enumerate() {
            if i > 0 {
                sleep(SLOW_BODY_PAUSE).await;
            }
            self.send(std::slice::from_ref(byte)).await?;
        }
        Ok(())
    }

    /// RFC 9112 §7.1: `chunked-body = *chunk last-chunk trailer-section CRLF`, where
    /// `chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF` (size in hex) and the last chunk
    /// is size 0. We send three chunks in separate writes, an extension on the first, and one
    /// trailer field (announced in `Trailer`, RFC 9110 §6.6.2).
    async fn send_chunked(&mut self, body: &[u8], close: bool) -> io::Result<()> {
        let framing = "Transfer-Encoding: chunked\r\nTrailer: X-Sim-Trailer\r\n";
        self.send(&head(200, framing, close)).await?;
        for (i, piece) in body.chunks(body.len().div_ceil(3).max(1)).enumerate() {
            let ext = if i == 0 {
                ";sim-ext=\"first chunk\""
            } else {
                ""
            };
            let mut chunk = format!("{:x}{ext}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            self.send(&chunk).await?;
        }
        self.send(b"0\r\nX-Sim-Trailer: done\r\n\r\n").await
    }

    /// Reads and drops whatever the client sends until it closes, or for at most `limit`: how a
    /// hang waits for its client to give up, and how a graceful close lingers.
    async fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.buf.clear();
        while let Some(1..) = timeout_at(deadline, self.read_more()).await {
            self.buf.clear();
        }
    }
}

/// `now + duration`, saturating 30 years ahead (as tokio does) instead of panicking when a
/// caller configured an absurd duration such as `Duration::MAX`.
fn deadline_in(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// `tokio::time::timeout_at`, as an `Option`: `None` when the deadline came first.
async fn timeout_at<T>(deadline: Instant, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline, future).await.ok()
}

/// Parses one request head from the start of `buf` with httparse: what it asks for and its length
/// in bytes, or `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Option<(HeadRead, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some((HeadRead::Reject(431), 0)),
        Err(_) => return Some((HeadRead::Reject(400), 0)),
    };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        // httparse fills all three in a complete head; be defensive rather than panic.
        return Some((HeadRead::Reject(400), 0));
    };

    let mut close = false;
    let mut keep_alive_token = false;
    let mut body_len: Option<u64> = None;
    let mut headers = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value).into_owned();
        if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Some((HeadRead::Reject(501), len));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 §6.3: an invalid or conflicting Content-Length is unrecoverable.
            match value.trim().parse::<u64>() {
                Ok(n) if body_len.is_none_or(|previous| previous == n) => body_len = Some(n),
                _ => return Some((HeadRead::Reject(400), len)),
            }
        }
        headers.push((header.name.to_string(), value));
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_REQUEST_BODY_BYTES {
        return Some((HeadRead::Reject(413), len));
    }
    // RFC 9112 §9.3: HTTP/1.1 persists by default, HTTP/1.0 only when asked to.
    let keep_alive = !close && (version >= 1 || keep_alive_token);
    let head = Head {
        seen: SeenRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers,
        },
        keep_alive,
        body_len,
    };
    Some((HeadRead::Head(head), len))
}

/// A response head with `extra` header lines (each ending in CRLF) and, when `close`,
/// `Connection: close`. Every body we send is JSON, or pretends to be.
fn head(status: u16, extra: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    // RFC 9110 §15.5.6: a 405 must list the methods the resource does support.
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n{allow}{extra}{connection}\r\n",
        reason(status)
    )
    .into_bytes()
}

fn success_body(time: u64) -> Vec<u8> {
    format!("{{\"time\": {time}}}").into_bytes()
}

/// fanout's reason phrases, and a made-up one for codes fanout never sends (tests script any status).
fn reason(status: u16) -> &'static str {
    match crate::http::response::reason(status) {
        "" => "Simulated",
        phrase => phrase,
    }
}
