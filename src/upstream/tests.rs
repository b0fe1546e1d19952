//! `Upstream::start`, through `fetch` (below: a request and a wait for its outcome), against scripted
//! servers: raw `TcpListener`s on 127.0.0.1 writing canned bytes, so every test states exactly what the
//! upstream does. Reuse and release are proven by counting the connections the server accepts and the
//! client's pool statistics, never by trusting the code. Tests wait for events (a request arrived, the server
//! saw the client close), not for time to pass, except where time is the subject.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::connection::READ_CHUNK;
use super::*;

// ---- the scripted upstream ----

/// A server on 127.0.0.1:0 that runs a script for each connection it accepts. Dropping it stops everything.
struct Scripted {
    addr: std::net::SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: AbortHandle,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort(); // the JoinSet inside goes with it, aborting the per-connection scripts
    }
}

impl Scripted {
    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Connections accepted so far.
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// Serves each accepted connection with `script(index, stream)`, `index` counting connections from 0.
async fn serve<F, Fut>(script: F) -> Scripted
where
    F: Fn(usize, TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    let task = tokio::spawn(async move {
        let mut scripts = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let index = counter.fetch_add(1, Ordering::SeqCst);
            scripts.spawn(script(index, stream));
        }
    });
    Scripted {
        addr,
        accepts,
        task: task.abort_handle(),
    }
}

/// Answers every request on every connection with `response`, keeping connections open.
async fn serve_always(response: &'static [u8]) -> Scripted {
    serve(move |_, stream| answer_each(stream, std::iter::repeat(response))).await
}

/// Answers the requests on one connection with `responses` in turn, then waits for the client to close.
async fn answer_each(mut stream: TcpStream, responses: impl IntoIterator<Item = &'static [u8]>) {
    for response in responses {
        if read_request(&mut stream).await.is_none() || stream.write_all(response).await.is_err() {
            return;
        }
    }
    wait_for_close(&mut stream).await;
}

/// Reads one request head; `None` if the client closed first.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(1) => request.push(byte[0]),
            _ => return None,
        }
    }
    Some(request)
}

/// Returns when the client closes its side (EOF or reset), discarding anything it sends.
async fn wait_for_close(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(1..) = stream.read(&mut sink).await {}
}

// ---- the client under test ----

fn client(url: &str) -> Arc<Upstream> {
    client_with(url, |_| {})
}

fn client_with(url: &str, tweak: impl FnOnce(&mut UpstreamConfig)) -> Arc<Upstream> {
    let mut config = UpstreamConfig::new(url);
    tweak(&mut config);
    Arc::new(Upstream::new(config).expect("valid config"))
}

/// What the API's callers do, for tests of one request at a time.
impl Upstream {
    /// One `GET` of the work URL, bounded by `deadline`: [`Upstream::start`] and a wait for its outcome.
    async fn fetch(self: &Arc<Self>, deadline: Instant) -> Result<Work, UpstreamError> {
        self.fetch_traced(deadline, None).await
    }

    /// [`Upstream::fetch`], sending `trace` as the request's `traceparent`.
    async fn fetch_traced(
        self: &Arc<Self>,
        deadline: Instant,
        trace: Option<TraceParent>,
    ) -> Result<Work, UpstreamError> {
        let (reply, mut outcome) = mpsc::unbounded_channel();
        let options = RequestOptions { tag: 0, trace };
        self.start(deadline, vec![options], reply, RunOn::UpstreamRuntime);
        match tokio::time::timeout_at(deadline, outcome.recv()).await {
            Err(_elapsed) => Err(UpstreamError::Timeout),
            Ok(Some(report)) => report.outcome,
            // The task always sends, a panic included (`Reporter`): this would be a bug in the task.
            Ok(None) => Err(UpstreamError::Io(io::Error::other(
                "the request task ended without an answer",
            ))),
        }
    }
}

/// A deadline no passing test gets near: it only stops a failing test from hanging.
fn generous() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

const OK_TIME_7: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"time\": 7}\n";

fn work(time: u64) -> Work {
    Work {
        json: format!("{{\"time\":{time}}}").into(),
        time,
    }
}

fn stats(connects: u64, reuses: u64, open: usize, idle: usize) -> PoolStats {
    PoolStats {
        connects,
        reuses,
        open,
        idle,
        ..PoolStats::default()
    }
}

// ---- framing ----

#[tokio::test]
async fn sends_one_get_with_host_accept_and_user_agent() {
    let (tx, mut requests) = mpsc::unbounded_channel();
    let server = serve(move |_, mut stream| {
        let tx = tx.clone();
        async move {
            if let Some(request) = read_request(&mut stream).await {
                let _ = tx.send(request);
                let _ = stream.write_all(OK_TIME_7).await;
            }
            wait_for_close(&mut stream).await;
        }
    })
    .await;
    let up = client(&format!("http://{}", server.addr));
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    let request = requests.recv().await.expect("a request");
    let expected = format!(
        "GET /api/work HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: fanout/0.1\r\n\r\n",
        server.addr
    );
    assert_eq!(String::from_utf8_lossy(&request), expected);
}

#[tokio::test]
async fn a_traced_fetch_sends_its_traceparent_line_before_the_blank_line() {
    let (tx, mut requests) = mpsc::unbounded_channel();
    let server = serve(move |_, mut stream| {
        let tx = tx.clone();
        async move {
            while let Some(request) = read_request(&mut stream).await {
                let _ = tx.send(request);
                let _ = stream.write_all(OK_TIME_7).await;
            }
        }
    })
    .await;
    let up = client(&server.url());
    let trace =
        crate::trace::TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_eq!(
        up.fetch_traced(generous(), trace).await.expect("answer"),
        work(7)
    );
    let request = String::from_utf8(requests.recv().await.expect("a request")).unwrap();
    assert!(
        request.ends_with(
            "User-Agent: fanout/0.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
        ),
        "{request:?}"
    );
}

#[tokio::test]
async fn a_content_length_answer_is_returned_and_its_connection_reused() {
    let server = serve_always(OK_TIME_7).await;
    let up = client(&server.url());
    for _ in 0..3 {
        assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    }
    assert_eq!(server.accepts(), 1, "three fetches, one connection");
    assert_eq!(up.stats(), stats(1, 2, 1, 1));
}

#[tokio::test]
async fn a_chunked_answer_with_extensions_and_trailers_is_decoded_and_reused() {
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        3;note=\"first\"\r\n{\"t\r\n8\r\nime\": 42\r\n1\r\n}\r\n0;end\r\nX-Checksum: abc\r\n\r\n";
    let server = serve_always(CHUNKED).await;
    let up = client(&server.url());
    for _ in 0..2 {
        assert_eq!(up.fetch(generous()).await.expect("answer"), work(42));
    }
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn a_close_delimited_answer_is_read_to_the_end_and_not_reused() {
    let server = serve(|_, mut stream| async move {
        if read_request(&mut stream).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n{\"time\": ")
                .await;
            let _ = stream.write_all(b"3}").await;
        } // dropping the stream closes it: that ends the body
    })
    .await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(3));
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(3));
    assert_eq!(server.accepts(), 2);
    assert_eq!(up.stats(), stats(2, 0, 0, 0));
}

#[tokio::test]
async fn interim_100_continue_responses_are_skipped() {
    const INTERIM: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"time\":1}";
    let server = serve_always(INTERIM).await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(1));
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(1));
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_but_the_connection_is_closed() {
    const BOTH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n{\"time\":5}\r\n0\r\n\r\n";
    let server = serve_always(BOTH).await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(5));
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(5));
    assert_eq!(server.accepts(), 2);
    assert_eq!(up.stats().idle, 0);
}

#[tokio::test]
async fn bytes_after_the_response_make_the_connection_unusable() {
    const EXTRA: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"time\":1}HTTP/1.1 200 OK\r\n";
    let server = serve_always(EXTRA).await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(1));
    assert_eq!(up.stats(), stats(1, 0, 0, 0));
}

// ---- limits and malformed responses ----

#[tokio::test]
async fn an_oversize_head_is_a_protocol_error_and_the_connection_is_dropped() {
    const BIG_HEAD: &[u8] = concat!(
        "HTTP/1.1 200 OK\r\nX-Padding: ",
        "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
        "\r\nContent-Length: 10\r\n\r\n{\"time\":1}"
    )
    .as_bytes();
    let server = serve_always(BIG_HEAD).await;
    let up = client_with(&server.url(), |c| c.max_head_bytes = 128);
    let error = up.fetch(generous()).await.expect_err("head too large");
    assert!(
        matches!(error, UpstreamError::Protocol(why) if why.contains("max_head_bytes")),
        "{error:?}"
    );
    assert_eq!(error.outcome().label(), "invalid_payload");
    assert_eq!(up.stats(), stats(1, 0, 0, 0));
}

#[tokio::test]
async fn a_body_longer_than_one_read_arrives_whole_and_the_connection_is_reused() {
    // Three reads' worth (READ_CHUNK each) under the default 64 KiB limit, by length and chunked, each
    // written in one go so the client's reads split it wherever the socket does.
    let padding = "x".repeat(3 * READ_CHUNK);
    let body = format!("{{\"time\":7,\"padding\":\"{padding}\"}}");
    let by_length = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (first, rest) = body.split_at(READ_CHUNK + 5);
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        first.len(),
        rest.len()
    );
    for response in [by_length, chunked] {
        let server = serve_always(Box::leak(response.into_bytes().into_boxed_slice())).await;
        let up = client(&server.url());
        for _ in 0..2 {
            let work = up.fetch(generous()).await.expect("the whole body");
            assert_eq!((work.time, work.json.len()), (7, body.len()));
        }
        assert_eq!(up.stats(), stats(1, 1, 1, 1), "one connection, reused");
    }
}

#[tokio::test]
async fn an_oversize_body_is_refused_whatever_its_framing() {
    const LENGTH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n{\"time\":1,";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"time\":1,\"a\":\"x\r\n10\r\nxxxxxxxxxxxxxxxx\r\n0\r\n\r\n";
    const UNTIL_CLOSE: &[u8] =
        b"HTTP/1.1 200 OK\r\n\r\n{\"time\":1,\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}";
    for response in [LENGTH, CHUNKED, UNTIL_CLOSE] {
        let server = serve_always(response).await;
        let up = client_with(&server.url(), |c| c.max_body_bytes = 20);
        let error = up.fetch(generous()).await.expect_err("body too large");
        assert!(
            matches!(error, UpstreamError::Protocol(why) if why.contains("max_body_bytes")),
            "{error:?}"
        );
        assert_eq!(up.stats().open, 0, "the connection is dropped");
    }
}

#[tokio::test]
async fn an_invalid_or_conflicting_content_length_is_a_protocol_error() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n{\"time\":1}"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n{\"time\":1}"[..],
    ] {
        let server = serve_always(response).await;
        let up = client(&server.url());
        let error = up.fetch(generous()).await.expect_err("bad length");
        assert!(
            matches!(
                error,
                UpstreamError::Protocol("invalid or conflicting Content-Length")
            ),
            "{error:?}"
        );
        assert_eq!(up.stats().open, 0);
    }
}

#[tokio::test]
async fn a_chunk_extension_outside_the_grammar_is_a_protocol_error() {
    // The same decoder reads request bodies: an upstream that frames its answer so is as unreadable.
    const BAD_EXTENSION: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na;=x\r\n{\"time\":1}\r\n0\r\n\r\n";
    let server = serve_always(BAD_EXTENSION).await;
    let up = client(&server.url());
    let error = up.fetch(generous()).await.expect_err("bad chunk extension");
    assert!(
        matches!(error, UpstreamError::Protocol(why) if why.contains("chunk extension")),
        "{error:?}"
    );
    assert_eq!(error.outcome().label(), "invalid_payload");
    assert_eq!(up.stats().open, 0, "the connection is dropped");
}

#[tokio::test]
async fn a_status_other_than_200_is_reported_and_its_small_body_drained_for_reuse() {
    let server = serve(|_, stream| {
        answer_each(
            stream,
            [
                &b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\n\r\n{\"error\":\"try later\"}"[..],
                OK_TIME_7,
            ],
        )
    })
    .await;
    let up = client(&server.url());
    let error = up.fetch(generous()).await.expect_err("503");
    assert!(matches!(error, UpstreamError::Status(503)), "{error:?}");
    assert_eq!(error.outcome().label(), "http_status");
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    assert_eq!(server.accepts(), 1, "the 503's connection was reused");
}

#[tokio::test]
async fn a_status_other_than_200_without_a_length_is_reported_at_once() {
    // Close-delimited, and the server never closes: waiting for the body would turn a 500 into a timeout.
    let server = serve(|_, mut stream| async move {
        if read_request(&mut stream).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\n\r\noops")
                .await;
        }
        wait_for_close(&mut stream).await;
    })
    .await;
    let up = client(&server.url());
    let error = up.fetch(generous()).await.expect_err("500");
    assert!(matches!(error, UpstreamError::Status(500)), "{error:?}");
    assert_eq!(up.stats().open, 0);
}

#[tokio::test]
async fn a_status_other_than_200_is_not_held_back_by_a_slow_error_body() {
    let server = serve(|_, mut stream| async move {
        if read_request(&mut stream).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\n{\"error\":")
                .await;
        }
        wait_for_close(&mut stream).await; // the rest of the body never comes
    })
    .await;
    let up = client(&server.url());
    let start = Instant::now();
    let error = up.fetch(generous()).await.expect_err("500");
    assert!(matches!(error, UpstreamError::Status(500)), "{error:?}");
    assert!(
        start.elapsed() < ERROR_BODY_GRACE * 4,
        "held back for {:?}",
        start.elapsed()
    );
    assert_eq!(up.stats().open, 0, "the half-read connection is dropped");
}

#[tokio::test]
async fn a_body_that_is_not_an_object_with_an_integer_time_is_an_invalid_payload() {
    const BODIES: [&[u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"tim\":1}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"time\":-1}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"time\":1.5}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n[1,2,3]",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ];
    let server = serve(|_, stream| answer_each(stream, BODIES)).await;
    let up = client(&server.url());
    for body in BODIES {
        let error = up.fetch(generous()).await.expect_err("invalid payload");
        assert!(
            matches!(error, UpstreamError::InvalidPayload(_)),
            "{}: {error:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(error.outcome().label(), "invalid_payload");
    }
    assert_eq!(
        server.accepts(),
        1,
        "a bad payload in a well-framed response does not cost the connection"
    );
}

#[tokio::test]
async fn the_answer_keeps_the_upstream_member_order() {
    const ORDERED: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\n{ \"zulu\": 1,\n  \"time\": 9,\n  \"alpha\": \"a b\" }";
    let server = serve_always(ORDERED).await;
    let up = client(&server.url());
    let answer = up.fetch(generous()).await.expect("answer");
    assert_eq!(&*answer.json, r#"{"zulu":1,"time":9,"alpha":"a b"}"#);
    assert_eq!(answer.time, 9);
}

// ---- keep-alive ----

#[tokio::test]
async fn connection_close_or_http_1_0_means_no_reuse() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\n{\"time\":1}"[..],
        &b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 10\r\n\r\n{\"time\":1}"[..],
    ] {
        let server = serve_always(response).await;
        let up = client(&server.url());
        assert_eq!(up.fetch(generous()).await.expect("answer"), work(1));
        assert_eq!(up.fetch(generous()).await.expect("answer"), work(1));
        assert_eq!(server.accepts(), 2, "{}", String::from_utf8_lossy(response));
        assert_eq!(up.stats(), stats(2, 0, 0, 0));
    }
}

#[tokio::test]
async fn a_short_keep_alive_timeout_hint_is_honoured() {
    // timeout=1 minus the one-second margin leaves nothing: the connection is not kept.
    const SHORT: &[u8] =
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 10\r\n\r\n{\"time\":1}";
    let server = serve_always(SHORT).await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(1));
    assert_eq!(up.stats(), stats(1, 0, 0, 0));
}

#[tokio::test]
async fn a_dropped_fetch_whose_body_never_completes_is_abandoned_after_the_linger_time_and_replaced(
) {
    let (sent_tx, sent) = oneshot::channel();
    let (closed_tx, closed) = oneshot::channel();
    let sent_tx = std::sync::Mutex::new(Some(sent_tx));
    let closed_tx = std::sync::Mutex::new(Some(closed_tx));
    let server = serve(move |index, mut stream| {
        let sent_tx = sent_tx.lock().expect("lock").take();
        let closed_tx = closed_tx.lock().expect("lock").take();
        async move {
            if index > 0 {
                return answer_each(stream, [OK_TIME_7]).await;
            }
            if read_request(&mut stream).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"time\":")
                    .await;
                let _ = sent_tx.map(|tx| tx.send(()));
                wait_for_close(&mut stream).await;
                let _ = closed_tx.map(|tx| tx.send(()));
            }
        }
    })
    .await;
    let linger = Duration::from_millis(200);
    let up = client_with(&server.url(), |c| c.linger = linger);

    let dropped_at = tokio::select! {
        result = up.fetch(generous()) => panic!("the body never completes, yet fetch returned {result:?}"),
        _ = sent => Instant::now(), // the caller has its answer elsewhere and drops the fetch mid-body
    };
    closed
        .await
        .expect("the server saw the client close the connection");
    assert!(
        dropped_at.elapsed() >= linger,
        "closed before the linger time"
    );
    // Its place is taken by a new connection, opened in the background and kept idle.
    let until = Instant::now() + Duration::from_secs(5);
    while up.stats().idle == 0 && Instant::now() < until {
        tokio::task::yield_now().await;
    }
    let after = up.stats();
    assert_eq!(
        (after.open, after.idle, after.abandoned, after.connects),
        (1, 1, 1, 2),
        "{after:?}"
    );

    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    assert_eq!(
        server.accepts(),
        2,
        "the half-read connection was not reused; its replacement was"
    );
}

#[tokio::test]
async fn a_dropped_fetch_finishes_in_the_background_and_its_connection_is_reused() {
    let (sent_tx, sent) = oneshot::channel();
    let sent_tx = std::sync::Mutex::new(Some(sent_tx));
    let server = serve(move |_, mut stream| {
        let sent_tx = sent_tx.lock().expect("lock").take();
        async move {
            if read_request(&mut stream).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"time\"")
                    .await;
                let _ = sent_tx.map(|tx| tx.send(()));
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stream.write_all(b":7}").await;
            }
            answer_each(stream, [OK_TIME_7]).await
        }
    })
    .await;
    let up = client(&server.url());
    tokio::select! {
        result = up.fetch(generous()) => panic!("returned before the body was complete: {result:?}"),
        _ = sent => {} // dropped mid-body
    }
    // Synchronise on the pool, not a sleep: the connection comes back when the body is read.
    let until = Instant::now() + Duration::from_secs(5);
    while up.stats().idle == 0 && Instant::now() < until {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = up.stats();
    assert_eq!(
        (after.idle, after.finished_in_background, after.lingering),
        (1, 1, 0),
        "{after:?}"
    );
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    assert_eq!(server.accepts(), 1, "the finished connection was reused");
}

// ---- stale connections ----

#[tokio::test]
async fn a_reused_connection_closed_before_answering_is_retried_once_on_a_fresh_one() {
    let server = serve(|index, mut stream| async move {
        if index == 0 {
            // Answer once, then take the next request and close without a word, as a server whose
            // keep-alive timer fires just as the request arrives.
            if read_request(&mut stream).await.is_some()
                && stream.write_all(OK_TIME_7).await.is_ok()
            {
                let _ = read_request(&mut stream).await;
            }
        } else {
            answer_each(stream, std::iter::repeat(OK_TIME_7)).await;
        }
    })
    .await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    assert_eq!(
        up.fetch(generous()).await.expect("the retry answers"),
        work(7)
    );
    assert_eq!(server.accepts(), 2);
    let s = up.stats();
    assert_eq!((s.connects, s.reuses, s.stale_retries), (2, 1, 1));
}

#[tokio::test]
async fn a_reused_connection_closed_a_while_after_the_request_is_its_failure_not_retried() {
    // The server had the request for 50 ms, far more than two round trips on loopback: it did not close an
    // idle connection, it failed this request (a `reset` in the API contract), and it is not sent again.
    let server = serve(|_, mut stream| async move {
        if read_request(&mut stream).await.is_some()
            && stream.write_all(OK_TIME_7).await.is_ok()
            && read_request(&mut stream).await.is_some()
        {
            tokio::time::sleep(Duration::from_millis(50)).await; // and close
        }
    })
    .await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    let error = up.fetch(generous()).await.expect_err("closed");
    assert!(matches!(error, UpstreamError::Io(_)), "{error:?}");
    let s = up.stats();
    assert_eq!((server.accepts(), s.reuses, s.stale_retries), (1, 1, 0));
}

#[tokio::test]
async fn a_request_whose_caller_left_is_not_retried_when_its_reused_connection_closes() {
    let (seen_tx, seen) = oneshot::channel();
    let (close_tx, close) = oneshot::channel::<()>();
    let signals = std::sync::Mutex::new(Some((seen_tx, close)));
    let server = serve(move |index, mut stream| {
        let signals = signals.lock().expect("lock").take();
        async move {
            if index > 0 {
                return answer_each(stream, std::iter::repeat(OK_TIME_7)).await;
            }
            // Answer once, take the next request and, when told, close without a word: a stale connection.
            let answered_once = read_request(&mut stream).await.is_some()
                && stream.write_all(OK_TIME_7).await.is_ok();
            if let (true, Some((seen_tx, close))) = (answered_once, signals) {
                if read_request(&mut stream).await.is_some() {
                    let _ = seen_tx.send(());
                    let _ = close.await;
                }
            }
        }
    })
    .await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    tokio::select! {
        result = up.fetch(generous()) => panic!("the server never answers, yet fetch returned {result:?}"),
        _ = seen => {} // the request is on the reused connection: its caller leaves
    }
    let _ = close_tx.send(());
    // Synchronise on the pool: the request frees its slot when it gives up; a retry would keep the slot (it
    // opens its connection in the dead one's) and have the server answer it.
    let until = Instant::now() + Duration::from_secs(5);
    while up.stats().open > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = up.stats();
    assert_eq!(
        (server.accepts(), s.stale_retries, s.open),
        (1, 0, 0),
        "nobody waits for the answer: no new connection to retry it"
    );
}

#[tokio::test]
async fn a_fresh_connection_closed_before_answering_is_not_retried() {
    let server = serve(|_, mut stream| async move {
        let _ = read_request(&mut stream).await; // and close
    })
    .await;
    let up = client(&server.url());
    let error = up.fetch(generous()).await.expect_err("closed");
    assert!(
        matches!(&error, UpstreamError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
        "{error:?}"
    );
    assert_eq!(error.outcome().label(), "io_error");
    assert_eq!(server.accepts(), 1);
    assert_eq!(up.stats().stale_retries, 0);
}

#[tokio::test]
async fn a_reused_connection_that_broke_mid_response_is_not_retried() {
    let server = serve(|_, mut stream| async move {
        let answered_once =
            read_request(&mut stream).await.is_some() && stream.write_all(OK_TIME_7).await.is_ok();
        if answered_once && read_request(&mut stream).await.is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await; // and close
        }
    })
    .await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    let error = up.fetch(generous()).await.expect_err("broken response");
    assert!(matches!(error, UpstreamError::Io(_)), "{error:?}");
    assert_eq!(
        (server.accepts(), up.stats().stale_retries),
        (1, 0),
        "the server may have acted on it: no retry"
    );
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_skipped_at_checkout() {
    let (closed_tx, closed) = oneshot::channel();
    let closed_tx = std::sync::Mutex::new(Some(closed_tx));
    let server = serve(move |index, mut stream| {
        let closed_tx = closed_tx.lock().expect("lock").take();
        async move {
            if index > 0 {
                return answer_each(stream, [OK_TIME_7]).await;
            }
            if read_request(&mut stream).await.is_some() {
                let _ = stream.write_all(OK_TIME_7).await;
            }
            drop(stream);
            let _ = closed_tx.map(|tx| tx.send(()));
        }
    })
    .await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    closed
        .await
        .expect("the server closed the first connection");
    // yield_now lets the runtime poll its I/O driver, which is how a socket's end of stream becomes visible.
    tokio::task::yield_now().await;

    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    let s = up.stats();
    assert_eq!(
        (s.connects, s.reuses, s.stale_retries),
        (2, 0, 0),
        "found closed at checkout, not by failing"
    );
}

#[tokio::test]
async fn the_reaper_closes_connections_idle_past_the_timeout() {
    let (closed_tx, closed) = oneshot::channel();
    let closed_tx = std::sync::Mutex::new(Some(closed_tx));
    let server = serve(move |_, mut stream| {
        let closed_tx = closed_tx.lock().expect("lock").take();
        async move {
            if read_request(&mut stream).await.is_some()
                && stream.write_all(OK_TIME_7).await.is_ok()
            {
                wait_for_close(&mut stream).await;
                let _ = closed_tx.map(|tx| tx.send(Instant::now()));
            }
        }
    })
    .await;
    let idle_timeout = Duration::from_millis(50);
    let up = client_with(&server.url(), |c| c.pool_idle_timeout = idle_timeout);
    let start = Instant::now();
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    assert_eq!(up.stats().idle, 1);

    let closed_at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("reaped")
        .expect("sent");
    assert!(closed_at - start >= idle_timeout, "not before the timeout");
    assert_eq!(up.stats(), stats(1, 0, 0, 0));
}

// ---- deadlines and the connection cap ----

#[tokio::test]
async fn the_deadline_holds_when_the_server_never_answers() {
    let (closed_tx, closed) = oneshot::channel();
    let closed_tx = std::sync::Mutex::new(Some(closed_tx));
    let server = serve(move |_, mut stream| {
        let closed_tx = closed_tx.lock().expect("lock").take();
        async move {
            let _ = read_request(&mut stream).await;
            wait_for_close(&mut stream).await; // and never answer
            let _ = closed_tx.map(|tx| tx.send(()));
        }
    })
    .await;
    let up = client_with(&server.url(), |c| c.linger = Duration::from_millis(100));
    let start = Instant::now();
    let deadline = start + Duration::from_millis(100);
    let error = up.fetch(deadline).await.expect_err("hangs");
    let late = Instant::now() - deadline;
    assert!(matches!(error, UpstreamError::Timeout), "{error:?}");
    assert_eq!(error.outcome().label(), "timeout");
    assert!(
        late < Duration::from_millis(25),
        "returned {late:?} after the deadline"
    );
    // The exchange lingers for its connection's sake, then gives up and closes it. (Synchronised on the
    // server seeing the close: the pool's open count would not do, as the connection is then replaced.)
    closed
        .await
        .expect("the server saw the hung connection closed");
    assert_eq!(up.stats().abandoned, 1);
}

#[tokio::test]
async fn at_the_connection_cap_callers_wait_in_order_no_longer_than_their_deadline_and_get_the_connection_itself(
) {
    let gate = Arc::new(Semaphore::new(0)); // the server answers one request per permit
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let server_gate = gate.clone();
    let server = serve(move |_, mut stream| {
        let (gate, seen_tx) = (server_gate.clone(), seen_tx.clone());
        async move {
            while read_request(&mut stream).await.is_some() {
                let _ = seen_tx.send(());
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                if stream.write_all(OK_TIME_7).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let up = Arc::new(client_with(&server.url(), |c| c.pool_max_connections = 1));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let start = |name: &'static str| {
        let (up, done_tx) = (up.clone(), done_tx.clone());
        tokio::spawn(async move {
            let result = up.fetch(generous()).await;
            let _ = done_tx.send((name, result.map(|w| w.time)));
        })
    };

    // A takes the only slot and its request waits at the server.
    start("A");
    seen.recv().await.expect("A's request arrived");

    // B queues and gives up at its deadline.
    let deadline = Instant::now() + Duration::from_millis(50);
    let error = up.fetch(deadline).await.expect_err("no slot");
    assert!(matches!(error, UpstreamError::Timeout), "{error:?}");
    assert!(Instant::now() - deadline < Duration::from_millis(25));
    assert_eq!(up.stats().slot_waits, 1);

    // C then D queue; the order they queued in is the order they are served in.
    start("C");
    while up.stats().slot_waits < 2 {
        tokio::task::yield_now().await;
    }
    start("D");
    while up.stats().slot_waits < 3 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(3);
    let mut order = Vec::new();
    for _ in 0..3 {
        let (name, result) = done.recv().await.expect("a fetch finished");
        assert_eq!(result.expect("answer"), 7);
        order.push(name);
    }
    assert_eq!(order, ["A", "C", "D"]);
    let s = up.stats();
    assert_eq!(
        (s.open, s.idle, s.slot_waits, s.connects),
        (1, 1, 3, 1),
        "never more than one connection, handed from A to C to D without a new handshake; the last one kept"
    );
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn a_connection_handed_to_a_waiter_as_it_leaves_goes_back_to_the_pool() {
    let server = serve_always(OK_TIME_7).await;
    let pool = Pool::new(1, 1);
    let Ok(Checkout::Fresh(slot)) = pool.checkout(generous()).await else {
        panic!("the only slot is free");
    };
    let conn = connection::connect(&[server.addr], None, slot, generous())
        .await
        .expect("connected");
    // A second caller queues at the cap ...
    let mut waiter = Box::pin(pool.checkout(generous()));
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(waiter.as_mut().poll(cx))).await;
    assert!(first_poll.is_pending(), "queued");
    // ... the connection is handed to it, and it leaves before it takes it.
    pool.put(conn, generous());
    drop(waiter);
    let s = pool.stats();
    assert_eq!((s.open, s.idle), (1, 1), "kept, not closed");
    assert!(
        matches!(pool.checkout(generous()).await, Ok(Checkout::Reused(_))),
        "the next caller reuses it"
    );
}

// ---- the request's task ----

#[tokio::test]
async fn a_request_sends_one_report_and_no_more() {
    let server = serve_always(OK_TIME_7).await;
    let up = client(&server.url());
    let (reply, mut reports) = mpsc::unbounded_channel();
    up.start(
        generous(),
        vec![RequestOptions::default()],
        reply,
        RunOn::CallersRuntime,
    );
    let report = reports.recv().await.expect("a report");
    assert_eq!(report.outcome.expect("answer"), work(7));
    assert!(
        reports.recv().await.is_none(),
        "the task ended, one report sent"
    );
}

#[tokio::test]
async fn a_request_task_that_panics_reports_a_failure_at_once() {
    let (reply, mut reports) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let _report = Reporter::new(&reply, 3);
        tokio::task::yield_now().await; // held across an await, as in the request's task
        panic!("a deliberate bug in a request task");
    });
    assert!(task.await.expect_err("it panicked").is_panic());
    let report = reports.try_recv().expect("a report, with no wait");
    assert_eq!(report.tag, 3);
    let error = report.outcome.expect_err("a failure");
    assert!(matches!(error, UpstreamError::Panicked), "{error:?}");
    assert_eq!(error.outcome().label(), "io_error");
}

// ---- construction and errors ----

#[tokio::test]
async fn dropping_the_upstream_stops_its_reaper() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let up = client("http://127.0.0.1:9/");
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the reaper runs");
    drop(up);
    tokio::task::yield_now().await; // let the runtime process the abort
    assert_eq!(metrics.num_alive_tasks(), before, "and ends with its owner");
}

#[tokio::test]
async fn a_deadline_already_past_sends_nothing() {
    let server = serve_always(OK_TIME_7).await;
    let up = client(&server.url());
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    let error = up.fetch(Instant::now()).await.expect_err("too late");
    assert!(matches!(error, UpstreamError::Timeout), "{error:?}");
    assert_eq!(
        up.stats(),
        stats(1, 0, 1, 1),
        "the idle connection was not touched"
    );
}

#[tokio::test]
async fn a_dns_name_is_resolved_before_connecting() {
    let server = serve_always(OK_TIME_7).await;
    let up = client(&format!("http://localhost:{}/", server.addr.port()));
    assert_eq!(up.fetch(generous()).await.expect("answer"), work(7));
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn connecting_tries_each_address_in_turn() {
    // A resolver may list an address that refuses (say ::1 when the server listens on IPv4 only) first.
    let refusing = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let server = serve_always(OK_TIME_7).await;
    let slot = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a free slot");
    let conn = connection::connect(&[refusing, server.addr], None, slot, generous()).await;
    assert!(
        conn.is_ok(),
        "the first address refuses, the second one accepts"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    // Bind then drop a listener: its port is now (almost certainly) closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let up = client(&format!("http://{addr}/"));
    let error = up.fetch(generous()).await.expect_err("refused");
    assert!(matches!(error, UpstreamError::Connect(_)), "{error:?}");
    assert_eq!(error.outcome().label(), "connect_error");
    assert!(error.to_string().contains("cannot connect"), "{error}");
    assert_eq!(up.stats(), PoolStats::default());
}

#[test]
fn new_rejects_bad_urls_and_limits_with_a_message() {
    let err = |config: UpstreamConfig| Upstream::new(config).expect_err("invalid");
    assert!(err(UpstreamConfig::new("ftp://x/")).contains("only http and https"));
    let mut config = UpstreamConfig::new("http://x/");
    config.pool_max_connections = 0;
    assert!(err(config).contains("pool_max_connections"));
    let mut config = UpstreamConfig::new("http://x/");
    config.max_body_bytes = 0;
    assert!(err(config).contains("max_body_bytes"));
}

#[test]
fn new_works_outside_a_runtime_and_keeps_the_url() {
    let up = Upstream::new(UpstreamConfig::new(
        "https://exponea-engineering-assignment.appspot.com/api/work",
    ))
    .expect("valid");
    assert_eq!(
        up.url(),
        "https://exponea-engineering-assignment.appspot.com/api/work"
    );
}

#[test]
fn the_defaults_are_the_documented_limits() {
    let c = UpstreamConfig::new("http://x/");
    assert_eq!((c.max_head_bytes, c.max_body_bytes), (16 * 1024, 64 * 1024));
    assert_eq!((c.pool_max_idle, c.pool_max_connections), (8192, 8192));
    assert_eq!(c.linger, Duration::from_secs(1));
    assert_eq!(c.pool_idle_timeout, Duration::from_secs(4));
}

#[test]
fn every_error_has_a_label_and_an_actionable_message() {
    let io = || io::Error::other("boom");
    let cases = [
        (UpstreamError::Timeout, "timeout", "deadline"),
        (
            UpstreamError::Connect(io()),
            "connect_error",
            "host and port",
        ),
        (UpstreamError::Tls(io()), "tls_error", "certificate"),
        (UpstreamError::Io(io()), "io_error", "boom"),
        (UpstreamError::Protocol("x"), "invalid_payload", "HTTP/1.1"),
        (UpstreamError::Status(502), "http_status", "502"),
        (
            UpstreamError::InvalidPayload("y"),
            "invalid_payload",
            "JSON",
        ),
        (UpstreamError::Panicked, "io_error", "a bug"),
    ];
    for (error, label, needle) in cases {
        assert_eq!(error.outcome().label(), label);
        assert!(error.to_string().contains(needle), "{error}");
    }
}
