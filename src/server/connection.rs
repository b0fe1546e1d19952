//! One client connection: read a request, answer it, and again, until either side is done.
//!
//! The task owns the socket and a buffer of bytes received but not yet used (while the connection's calls
//! are shed, a task on the shed runtime holds them for it: see `Served::Shed`). Requests are handled one at a
//! time, so pipelined requests (sent before the previous answer arrived) wait in the buffer and are answered
//! in order, as RFC 9112 §9.3.2 requires. Every wait has a bound:
//!
//! | waiting for                    | bound                     | then                          |
//! | ------------------------------ | ------------------------- | ----------------------------- |
//! | the first byte of a request    | `idle_timeout`, closing   | close quietly                 |
//! | the rest of the head and body  | `head_timeout`            | `408`, close                  |
//! | the answer                     | the request's deadline    | the strategy answers in time  |
//! | ... while the client stays     | EOF or reset (see below)  | drop the call, record `499`   |
//! | the client to take the answer  | `write_timeout`           | drop the connection           |
//! | ... or a `100 Continue`        | `write_timeout`           | drop the connection           |
//!
//! While a call runs, the task watches its socket too ([`Connection::run_call`]): a client that leaves takes
//! its call with it, and the bytes of a client that stays (a pipelined request) wait in the buffer.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::time::{timeout, timeout_at, Duration, Instant};

use super::{Limits, Shutdown, MAX_HEADERS_CEILING};
use crate::api::{shed_answer, Api, Call, Endpoint, Handled, Prepared};
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{self, BodyLength, RequestHead};
use crate::http::response::{bad_request, Persistence, Response, CLIENT_CLOSED_REQUEST};
use crate::metrics::ShedReason;
use crate::task::AbortOnDrop;
use crate::telemetry::{Attempt, RequestDone};
use crate::trace::{CallTrace, TRACERESPONSE};

/// Lingering close (RFC 9112 §9.6): after our last response, keep reading (and discarding) for a moment so
/// that data the client already sent does not make our kernel answer with a reset that destroys the
/// response before the client read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 64 * 1024;

/// How much one read takes from a client's socket at most: the buffer stays within `max_head_bytes` plus
/// this.
const READ_CHUNK: usize = 4096;

/// A request body still to be read and discarded.
enum Body {
    /// This many bytes.
    Length(u64),
    /// A chunked body, and how many data bytes it has carried so far.
    Chunked(ChunkedDecoder, u64),
}

/// A request whose head is in: the head, when it was parsed (the deadline counts from there), and the
/// call's span in its trace.
struct Request {
    head: RequestHead,
    started: Instant,
    trace: CallTrace,
}

/// A request read, and what the API made of it.
struct Read {
    request: Request,
    prepared: Prepared,
    /// Its body could not be read to its end (the answer says why): the connection closes after it.
    body_failed: bool,
}

/// How a call met its socket (see [`Connection::run_call`]).
enum CallEnd {
    Answered(Handled),
    /// The client closed or reset the connection before the answer: nothing is written, the `499` is
    /// recorded.
    Left,
}

/// Which runtime [`Connection::serve`] is serving on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    /// The API's: calls are run here.
    Api,
    /// The shed runtime, while the connection's calls are shed: calls are answered here only when they
    /// need no upstream (see [`Served::Shed`]).
    Shed,
}

/// How serving a connection on one runtime ended.
enum Served {
    /// The connection is closed, or is to be dropped.
    Done,
    /// Its call was just shed: go on serving it on the shed runtime, for as long as calls would be shed.
    /// A client that asks again at once after its `503` (ignoring `Retry-After`) is answered at once,
    /// there, and its flood of requests cannot queue ahead of the deadlines and answers of the calls that
    /// were admitted, which stay on the API's runtime (DESIGN.md, "Shedding on a runtime of its own").
    Shed,
    /// On the shed runtime: a call was admitted, its place taken there (so that many parked connections
    /// cannot all move back for one free place; `Api::prepare` takes it only for a valid call, after its
    /// body). It is run and answered, and the connection served, back on the API's runtime.
    Admissible(Box<Admitted>),
}

/// A call admitted on the shed runtime and not yet run, its place held.
struct Admitted {
    request: Request,
    call: Call,
}

pub(crate) struct Connection {
    stream: TcpStream,
    /// Bytes received and not yet consumed; bounded by `max_head_bytes` plus one read ([`READ_CHUNK`]).
    buf: Vec<u8>,
    /// The client has shut its side (EOF seen while a call ran, with `half_close`): nothing more will come.
    read_closed: bool,
    api: Arc<Api>,
    limits: Arc<Limits>,
    shutdown: Shutdown,
    /// Where the connection is served while its calls are shed (see [`Served::Shed`]); `None`: here.
    shed_runtime: Option<Handle>,
}

impl Connection {
    pub(crate) fn new(
        stream: TcpStream,
        api: Arc<Api>,
        limits: Arc<Limits>,
        shutdown: Shutdown,
        shed_runtime: Option<Handle>,
    ) -> Self {
        Connection {
            stream,
            buf: Vec::with_capacity(4096),
            read_closed: false,
            api,
            limits,
            shutdown,
            shed_runtime,
        }
    }

    /// Serves requests until the connection ends: [`Connection::serve`], and while its calls are shed,
    /// serving on the shed runtime until one is admitted ([`Connection::park_while_shed`]; on a first
    /// reading, skip it).
    ///
    /// Cancel safety: dropping this future (the server's drain limit ran out) drops the socket, which
    /// closes it, and the API call in progress, whose upstream requests then see their caller gone (see
    /// `api::requests`).
    pub(crate) async fn run(mut self) {
        let mut next = None;
        while let Served::Shed = self.serve(next.take(), Runtime::Api).await {
            match self.park_while_shed().await {
                Some((conn, admitted)) => (self, next) = (conn, Some(*admitted)),
                None => return,
            }
        }
    }

    /// Serves requests, beginning with `next` if given, until the connection ends or (see [`Served`]) it
    /// should move to or from the shed runtime.
    async fn serve(&mut self, mut next: Option<Admitted>, runtime: Runtime) -> Served {
        loop {
            let read = match next.take() {
                Some(Admitted { request, call }) => Read {
                    request,
                    prepared: Prepared::Call(call),
                    body_failed: false,
                },
                None => match self.read_request().await {
                    Some(read) => read,
                    None => return Served::Done,
                },
            };
            let Read {
                request,
                prepared,
                body_failed,
            } = read;
            let mut attempts = Vec::new();
            let handled = match prepared {
                Prepared::Answer(handled) => handled,
                // On the shed runtime an admitted call is not run: it goes back, its place held.
                Prepared::Call(call) if runtime == Runtime::Shed => {
                    return Served::Admissible(Box::new(Admitted { request, call }))
                }
                Prepared::Call(call) => match self.run_call(call, &request, &mut attempts).await {
                    CallEnd::Answered(handled) => handled,
                    CallEnd::Left => return Served::Done,
                },
            };
            let shed = handled.shed;
            if !self.answer(&request, handled, &attempts, body_failed).await {
                return Served::Done;
            }
            if shed && !self.pause_after_shed().await {
                return Served::Done;
            }
            if shed && runtime == Runtime::Api && self.shed_runtime.is_some() {
                return Served::Shed;
            }
        }
    }

    /// Reads the next request: its head (`next_request`), its body (discarded), and what the API makes of
    /// it. `None`: the connection is done (closed, idle too long, refused, or not reading).
    async fn read_request(&mut self) -> Option<Read> {
        let head = self.next_request(self.limits.idle_timeout).await?;
        // The deadline counts from here: the head is parsed (the API contract).
        let started = Instant::now();
        // The call's span: in the caller's trace if it sent a valid traceparent, else a new trace.
        let trace = CallTrace::continue_or_start(head.traceparent.as_ref());
        let (prepared, body_failed) = match self.discard_body(&head).await {
            Err(BodyFailed::Answer(response)) => {
                (Prepared::Answer(Handled::plain(response, None)), true)
            }
            Err(BodyFailed::NotReading) => return None,
            Ok(()) => (self.api.prepare(&head, started), false),
        };
        let request = Request {
            head,
            started,
            trace,
        };
        Some(Read {
            request,
            prepared,
            body_failed,
        })
    }

    /// Writes the answer and records it (its metrics and access line); false if the connection is done
    /// (the client did not take it, or it was the last, closed with a lingering close).
    async fn answer(
        &mut self,
        request: &Request,
        handled: Handled,
        attempts: &[Attempt],
        body_failed: bool,
    ) -> bool {
        let head = &request.head;
        // With the client's side shut (`half_close`) and no request of its left to answer, this is the
        // last answer. So it is while the server stops, and says so, so that the client (a load balancer,
        // say) sends its next request elsewhere instead of racing our close.
        let last = body_failed || !head.keep_alive || (self.read_closed && self.buf.is_empty());
        let persistence = if last || self.shutdown.is_stopping() {
            Persistence::Close
        } else if head.minor_version == 0 {
            Persistence::KeepAlive10
        } else {
            Persistence::KeepAlive
        };
        let status = handled.response.status;
        let trace_header = request.trace.response_header();
        let response = handled.response.with_header(TRACERESPONSE, trace_header);
        let written = self
            .send(&response.encode(head.is_head(), persistence))
            .await;
        // Observed once the response is written: its duration and overshoot are what the caller saw.
        self.record(
            request,
            handled.endpoint,
            handled.timeout,
            status,
            Instant::now(),
            attempts,
        );
        if written && persistence == Persistence::Close {
            self.linger().await;
        }
        written && persistence != Persistence::Close
    }

    /// Into the metrics and the access line: a request answered with `status`, written at `written`, or
    /// left by its client then (`499`).
    fn record(
        &self,
        request: &Request,
        endpoint: Option<Endpoint>,
        timeout: Option<Duration>,
        status: u16,
        written: Instant,
        attempts: &[Attempt],
    ) {
        self.api.telemetry().request_done(&RequestDone {
            trace: &request.trace,
            method: &request.head.method,
            endpoint,
            timeout,
            status,
            started: request.started,
            written,
            attempts,
        });
    }

    /// Backpressure, if configured: after a shed answer (`503` with `Retry-After: 1`, or `200 []` from
    /// `/api/within-timeout`) a caller that asks again at once waits here instead of costing another parse
    /// and answer. Off by default: the wait is part of its next answer's time. False when the listener
    /// closed meanwhile: between requests at shutdown, the connection closes quietly, as `next_request`
    /// would.
    async fn pause_after_shed(&mut self) -> bool {
        if !self.limits.shed_pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.limits.shed_pause) => {}
                () = self.shutdown.closing() => {}
            }
        }
        !self.shutdown.is_closing()
    }

    /// Serves the connection on the shed runtime, while its calls are shed, until a call is admitted:
    /// then it comes back with that call, to be run here. `None`: it closed there (or the shed runtime is
    /// gone: the process is ending).
    ///
    /// Machinery (DESIGN.md, "Shedding on a runtime of its own"); on a first reading, skip it. This task
    /// stays the connection's owner while it is parked: a connection on the shed runtime is aborted with
    /// it ([`AbortOnDrop`]), dropped, socket and all, the next time the shed worker would have polled it.
    async fn park_while_shed(self) -> Option<(Connection, Box<Admitted>)> {
        // `serve` says `Shed` only when there is a shed runtime.
        let runtime = self.shed_runtime.clone()?;
        let parked = AbortOnDrop(runtime.spawn(async move {
            let mut conn = self.rehome().ok()?;
            let served = conn.serve(None, Runtime::Shed).await;
            Some((conn, served))
        }));
        match parked.await {
            Ok(Some((conn, Served::Admissible(admitted)))) => Some((conn.rehome().ok()?, admitted)),
            // A panic there is this task's: the accept loop logs it (`connection_panicked`).
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => None,
        }
    }

    /// Registers the socket with the I/O driver of the runtime this runs on, instead of the one it was
    /// registered with. Without it, each request of a connection parked on the shed runtime would be seen by
    /// the API runtime's driver, polled by the API's workers, and handed over to the shed worker with a
    /// cross-thread wake: the flood would still cost the API's side. Two `epoll_ctl` calls; an error (the
    /// kernel out of memory for the registration) closes the connection.
    fn rehome(self) -> std::io::Result<Connection> {
        let stream = TcpStream::from_std(self.stream.into_std()?)?;
        Ok(Connection { stream, ..self })
    }

    /// Runs an admitted call to its answer while watching its socket, and drops the call if the client
    /// leaves first.
    ///
    /// This is where cancellation starts. HTTP/1.1 gives a server no message for "I no longer want this":
    /// a client that gives up (a timeout of its own, a closed tab, a load balancer retrying elsewhere)
    /// just closes its connection, and the server sees EOF, or a reset, when it reads. So while the call
    /// runs, the socket is read too, in one `select!`. If the read ends first, the call's future is
    /// dropped where it stands, and with it everything it holds: its in-flight place, and its `Requests`,
    /// whose requests see their caller gone (`api/requests.rs`). Nothing is written; `attempts` keeps what
    /// the requests did, those still running as `cancelled` (`timeout` past the aimed deadline), for the
    /// `499` access line recorded here.
    ///
    /// A read that brings bytes is not a departure: a client may pipeline its next request (RFC 9112
    /// §9.3.2). They go into the buffer, in order, for after this answer, and the watch reads no further
    /// than `max_head_bytes`: with the buffer that full it stops reading (the client's sends then wait in
    /// the kernel's buffers) and only the call is awaited. With `half_close` an EOF is a client that shut
    /// only its sending side and still reads: the call is answered, and the connection closed after.
    async fn run_call(
        &mut self,
        call: Call,
        request: &Request,
        attempts: &mut Vec<Attempt>,
    ) -> CallEnd {
        let (endpoint, timeout) = (call.endpoint(), call.timeout());
        match self.run_watching(call, request, attempts).await {
            Ok(handled) => CallEnd::Answered(handled),
            Err(left) => {
                // The call's future is dropped by now, and `attempts` has what its requests did.
                let status = CLIENT_CLOSED_REQUEST;
                self.record(
                    request,
                    Some(endpoint),
                    Some(timeout),
                    status,
                    left,
                    attempts,
                );
                CallEnd::Left
            }
        }
    }

    /// The `select!` of [`Connection::run_call`]: the call's answer, or the instant its client left.
    async fn run_watching(
        &mut self,
        call: Call,
        request: &Request,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Handled, Instant> {
        let run = self.api.run(call, &request.trace, attempts);
        tokio::pin!(run);
        loop {
            let room = self.limits.max_head_bytes.saturating_sub(self.buf.len());
            let watch = room > 0 && !self.read_closed;
            tokio::select! {
                // Biased: an answer ready at the moment the client leaves is written (into a closed
                // socket, harmlessly) rather than counted as a departure.
                biased;
                handled = &mut run => return Ok(handled),
                // Waits for the socket to be readable, without reading (cancel safe): the bytes are taken
                // below, in one non-blocking read, at most `room` of them.
                ready = self.stream.readable(), if watch => {
                    let mut chunk = [0u8; 1024];
                    let want = room.min(chunk.len());
                    match ready.and_then(|()| self.stream.try_read(&mut chunk[..want])) {
                        // A pipelined request: kept for later.
                        Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {} // readiness was stale
                        Ok(_) if self.limits.half_close => self.read_closed = true,
                        // EOF, a reset, a read error: the client is gone. Dropping `run` (by returning)
                        // drops the call, its place and its upstream requests.
                        _ => return Err(Instant::now()),
                    }
                }
            }
        }
    }

    /// Answers a connection accepted over `--max-connections`: its first request, if its head is in within
    /// the head timeout, is shed as a call over the in-flight limit is (`503 overloaded` with `Retry-After`,
    /// `200 []` from `/api/within-timeout`), and the connection is closed, after the head timeout at the
    /// latest. Nothing reaches the upstream, and the client hears at once instead of waiting in the
    /// kernel's backlog.
    pub(crate) async fn refuse(mut self) {
        let within = self.limits.head_timeout;
        // Out of time, the head read so far is dropped with the connection.
        let Ok(Some(head)) = timeout(within, self.next_request(within)).await else {
            return;
        };
        self.api
            .shed(ShedReason::MaxConnections, self.limits.max_connections);
        let endpoint = head.path_and_query().and_then(|target| {
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            Endpoint::from_path(path)
        });
        let response = shed_answer(endpoint, "too many open connections");
        self.finish(&response, head.is_head()).await
    }

    /// Writes `bytes` within `write_timeout`; false if the client did not take them. Every write to the
    /// client goes through here, so a client that stops reading cannot hold the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            timeout(self.limits.write_timeout, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Reads until a whole request head is in the buffer, then parses and interprets it, waiting for its
    /// first byte `first_byte_within` at most. `None`: the client closed or went idle too long, the server is
    /// shutting down between requests, or the head could not be accepted (its error has been sent, and the
    /// connection is to close).
    async fn next_request(&mut self, first_byte_within: Duration) -> Option<RequestHead> {
        let mut head_started = (!self.buf.is_empty()).then(Instant::now);
        let refusal = loop {
            if !self.buf.is_empty() {
                match parse(&self.buf, &self.limits) {
                    Ok(Some((head, len))) => {
                        self.buf.drain(..len);
                        return Some(head);
                    }
                    Ok(None) => {}
                    Err(response) => break response,
                }
            }
            let read_until = match head_started {
                // Between requests: wait for the client as long as the idle timeout, or until the
                // listener closes (not while draining: see `Phase::Draining`).
                None => Instant::now() + first_byte_within,
                Some(t) => t + self.limits.head_timeout,
            };
            let between_requests = head_started.is_none();
            tokio::select! {
                read = timeout_at(read_until, read_more(&mut self.stream, &mut self.buf)) => match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return None,
                    Ok(Ok(_)) => head_started = head_started.or_else(|| Some(Instant::now())),
                    Err(_) if between_requests => return None,
                    Err(_) => break request_timeout("the request head"),
                },
                // Only between requests: a request that has begun to arrive is read and answered.
                () = self.shutdown.closing(), if between_requests => return None,
            }
        };
        self.finish(&refusal, refused_head_only(&self.buf)).await;
        None
    }

    /// Reads and throws away a request body; no endpoint uses one, but it must be consumed to find the next
    /// request.
    async fn discard_body(&mut self, head: &RequestHead) -> Result<(), BodyFailed> {
        let max = self.limits.max_body_bytes;
        let too_large = || {
            Response::error(
                413,
                "content_too_large",
                &format!("request bodies are not used; this one is over {max} bytes"),
            )
        };
        let mut body = match head.body {
            BodyLength::None => return Ok(()),
            BodyLength::Length(n) if n > max => return Err(too_large().into()),
            BodyLength::Length(n) => Body::Length(n),
            BodyLength::Chunked => Body::Chunked(ChunkedDecoder::new(), 0),
        };
        if head.expect_continue && head.minor_version == 1 && self.buf.is_empty() {
            // RFC 9110 §10.1.1: the client waits for this before sending the body. An HTTP/1.0 request's
            // expectation "MUST" be ignored, and §15.2: no 1xx response may go to an HTTP/1.0 client.
            if !self.send(b"HTTP/1.1 100 Continue\r\n\r\n").await {
                return Err(BodyFailed::NotReading);
            }
        }
        let until = Instant::now() + self.limits.head_timeout;
        let mut decoded = Vec::new();
        loop {
            match &mut body {
                Body::Length(remaining) => {
                    let take = (*remaining).min(self.buf.len() as u64);
                    self.buf.drain(..take as usize);
                    *remaining -= take;
                    if *remaining == 0 {
                        return Ok(());
                    }
                }
                Body::Chunked(decoder, total) => {
                    decoded.clear();
                    let used = decoder
                        .decode(&self.buf, &mut decoded)
                        .map_err(|e| bad_request(e.as_str()))?;
                    self.buf.drain(..used);
                    *total += decoded.len() as u64;
                    if *total > max {
                        return Err(too_large().into());
                    }
                    if decoder.is_done() {
                        return Ok(());
                    }
                }
            }
            match timeout_at(until, read_more(&mut self.stream, &mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(bad_request("the request body ended early").into()),
                Err(_) => return Err(request_timeout("the request body").into()),
            }
        }
    }

    /// Writes the last response with `Connection: close`, then closes without losing it.
    async fn finish(&mut self, response: &Response, head_only: bool) {
        let bytes = response.encode(head_only, Persistence::Close);
        if self.send(&bytes).await {
            self.linger().await;
        }
    }

    /// Closes after the last response without losing it.
    async fn linger(&mut self) {
        // Half-close, then read and drop what comes until the client closes too (or LINGER, or LINGER_BYTES),
        // so the response is not destroyed by a reset.
        let _ = self.stream.shutdown().await;
        let mut unread = (&mut self.stream).take(LINGER_BYTES);
        let _ = timeout(LINGER, tokio::io::copy(&mut unread, &mut tokio::io::sink())).await;
    }
}

/// Reads what the client sent, [`READ_CHUNK`] bytes at most, onto `buf`; 0 at EOF. (Reading into the
/// buffer's spare capacity, which grows by doubling, would let one read bring far more.)
///
/// Cancel safety: `read_buf` is cancel safe; dropped, no byte has been taken from the socket.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    stream.take(READ_CHUNK as u64).read_buf(buf).await
}

/// Why a request body was not read to its end.
enum BodyFailed {
    /// Send this, then close.
    Answer(Response),
    /// The client did not take `100 Continue` within `write_timeout`: it would not take an answer either.
    NotReading,
}

impl From<Response> for BodyFailed {
    fn from(response: Response) -> Self {
        BodyFailed::Answer(response)
    }
}

/// Parses the head at the front of `buf`: `Ok(None)` while it is incomplete, `Ok(Some((head, length)))`
/// once it is whole, `Err(response)` if it is malformed or breaks a limit.
///
/// The header slots live on the stack, uninitialised, and httparse fills only those it uses: a `vec!` of
/// them cost a 2 KiB allocation per request at the default 64, too big for the allocator's per-thread cache.
///
/// Sans-IO, so the fuzz target `request_head` (`fuzzing.rs`) feeds it raw bytes as the connection does.
pub(crate) fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, Response> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS_CEILING];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS_CEILING)];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => {
            // The method first, as the line reads: one past the target limit is none (see `method_too_long`).
            if req.method.is_some_and(|m| m.len() > limits.max_uri_bytes) {
                return Err(method_too_long(limits));
            }
            // Then the target: RFC 9112 §3 says a target too long to parse "MUST" get 414, also when the
            // head is too large as well.
            if req.path.is_some_and(|p| p.len() > limits.max_uri_bytes) {
                return Err(uri_too_long(limits));
            }
            if len > limits.max_head_bytes {
                return Err(head_too_large());
            }
            request::interpret(&req).map(|head| Some((head, len)))
        }
        Ok(httparse::Status::Partial) => still_arriving(buf, limits),
        Err(httparse::Error::TooManyHeaders) => Err(Response::error(
            431,
            "header_fields_too_large",
            &format!("more than {} header fields", limits.max_headers),
        )),
        // httparse knows only HTTP/1.0 and HTTP/1.1; see `OtherVersion` for the rest.
        Err(httparse::Error::Version) => match other_version(buf) {
            OtherVersion::Http1 { minor_at } => {
                let mut as_http11 = buf.to_vec();
                as_http11[minor_at] = b'1';
                parse(&as_http11, limits)
            }
            // Not a version yet, but one so far: bounded like any head still arriving.
            OtherVersion::Incomplete => still_arriving(buf, limits),
            OtherVersion::Unsupported => Err(Response::error(
                505,
                "http_version_not_supported",
                "only HTTP/1.0 and HTTP/1.1 are supported",
            )),
            OtherVersion::Malformed => Err(bad_request("malformed request: invalid HTTP version")),
        },
        Err(e) => Err(bad_request(&format!("malformed request: {e}"))),
    }
}

/// A head that has not all arrived: `Ok(None)` to read on, or the refusal of one already past a bound, so
/// that a client cannot make the connection hold more than `max_head_bytes` (plus one read) for a head.
fn still_arriving(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, Response> {
    // The request line, after the empty lines httparse skips, as far as it has arrived.
    let line = &buf[request_line_start(buf)..];
    let line_end = line.iter().position(|&b| b == b'\n');
    // The method so far: httparse has seen no byte in it that a token does not allow.
    let method = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    if method > limits.max_uri_bytes {
        Err(method_too_long(limits))
    } else if line_end.is_none() && line.len() > limits.max_uri_bytes + 32 {
        Err(uri_too_long(limits))
    } else if buf.len() > limits.max_head_bytes {
        let target = line_end.map_or(&[][..], |end| request_target(&line[..end]));
        if target.len() > limits.max_uri_bytes {
            Err(uri_too_long(limits))
        } else {
            Err(head_too_large())
        }
    } else {
        Ok(None)
    }
}

/// A request-line version other than HTTP/1.0 and HTTP/1.1 (RFC 9112 §2.3: `HTTP-name "/" DIGIT "." DIGIT`).
enum OtherVersion {
    /// HTTP/1.2 to HTTP/1.9: RFC 9110 §6.2, a recipient SHOULD process a higher minor version "as if it were
    /// in the highest minor version within that major version", HTTP/1.1. The index of the minor digit.
    Http1 { minor_at: usize },
    /// Another major version: 505 (RFC 9110 §15.6.6).
    Unsupported,
    /// The request line has not all arrived and may still be a valid version.
    Incomplete,
    /// Not an HTTP-version at all ("http/1.1", "HTTP/11.0"): an invalid request line, 400 (RFC 9112 §3).
    Malformed,
}

fn other_version(buf: &[u8]) -> OtherVersion {
    let line = &buf[request_line_start(buf)..];
    // httparse accepted the method and target, each followed by one SP: the version follows the second.
    let Some(rest) = line.splitn(3, |&b| b == b' ').nth(2) else {
        return OtherVersion::Malformed;
    };
    let at = buf.len() - rest.len(); // where `rest` starts in `buf`: it runs to the end
    let end = rest.iter().position(|&b| b == b'\r' || b == b'\n');
    let version = &rest[..end.unwrap_or(rest.len())];
    let fits = version.len() <= 8
        && version
            .iter()
            .zip(b"HTTP/0.0")
            .all(|(&b, &p)| b == p || (p == b'0' && b.is_ascii_digit()));
    match end {
        _ if !fits => OtherVersion::Malformed,
        None => OtherVersion::Incomplete,
        Some(_) if version.len() < 8 => OtherVersion::Malformed,
        Some(_) if version[5] == b'1' => OtherVersion::Http1 { minor_at: at + 7 },
        Some(_) => OtherVersion::Unsupported,
    }
}

/// Whether the answer to a head [`parse`] refused goes without its content: a `HEAD`'s response "MUST NOT"
/// carry content (RFC 9110 §9.3.2), an error for a head we refused included. It is told from the buffered
/// request line, since the head was not parsed.
pub(crate) fn refused_head_only(buf: &[u8]) -> bool {
    buf[request_line_start(buf)..].starts_with(b"HEAD ")
}

/// Where the request line starts in `buf`: after the empty lines before it, which httparse skips
/// (RFC 9112 §2.2: a server SHOULD ignore at least one).
fn request_line_start(buf: &[u8]) -> usize {
    buf.iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len())
}

/// The target of a whole request line: between its first and its last space (httparse has not judged
/// the line yet, so it may be anything).
fn request_target(line: &[u8]) -> &[u8] {
    match (
        line.iter().position(|&b| b == b' '),
        line.iter().rposition(|&b| b == b' '),
    ) {
        (Some(first), Some(last)) if first < last => &line[first + 1..last],
        _ => &[],
    }
}

/// RFC 9112 §3 asks for 501 for "a method longer than any that it implements", and an unknown method of a
/// plausible length gets it (from the router). One longer than the target limit (`--max-uri-bytes`, 8 KiB
/// by default: RFC 9110 §2.3 recommends supporting request lines of at least 8000 octets) is not read as a
/// method: it puts the request line past the bound this server sets on it, an invalid request line, 400.
/// The check is the same whether the method arrived whole or the limit was passed while it was still
/// arriving, so the answer does not depend on how it was split.
fn method_too_long(limits: &Limits) -> Response {
    let max = limits.max_uri_bytes;
    bad_request(&format!(
        "malformed request line: the method is longer than {max} bytes"
    ))
}

fn head_too_large() -> Response {
    Response::error(
        431,
        "header_fields_too_large",
        "the request head is too large",
    )
}

fn uri_too_long(limits: &Limits) -> Response {
    let max = limits.max_uri_bytes;
    Response::error(
        414,
        "uri_too_long",
        &format!("the request target is longer than {max} bytes"),
    )
}

/// `408`: what should have followed the first byte of a request did not come within `head_timeout`.
fn request_timeout(what: &str) -> Response {
    Response::error(
        408,
        "request_timeout",
        &format!("{what} was not received in time"),
    )
}
