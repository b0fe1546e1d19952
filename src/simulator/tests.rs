//! The simulator's behaviour, driven over real sockets: raw tokio TCP for plain HTTP, one
//! tokio-rustls client for TLS. Replies are scripted with fixed delays of a few milliseconds;
//! tests wait on the simulator's own events (`wait_requests`, `wait_connections_open`) or on the
//! socket, never on a sleep. Every wait is bounded by [`LIMIT`] so a regression fails, not hangs.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::*;

/// The bound on every wait in these tests: generous for a loaded 2-core machine, and only ever
/// reached when something is broken.
const LIMIT: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Plain HTTP, answers within a few ms, no failures unless scripted.
fn fast() -> SimConfig {
    SimConfig {
        latency_ms: (1, 3),
        tls: false,
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> Simulator {
    Simulator::start(config).await.expect("simulator starts")
}

async fn connect(sim: &Simulator) -> TcpStream {
    TcpStream::connect(sim.addr()).await.expect("connects")
}

/// A parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// A minimal HTTP/1.1 client reader: one response framed by Content-Length (or by EOF without
/// it), reading past the head only as far as needed. `buf` carries leftovers between calls.
async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Response> {
    timeout(LIMIT, async {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = parsed
                .parse(buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                let status = parsed.code.unwrap_or(0);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_string(), value)
                    })
                    .collect();
                buf.drain(..len);
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse::<usize>().expect("numeric Content-Length"));
                let body = match length {
                    Some(length) => {
                        while buf.len() < length {
                            if read_some(stream, buf).await? == 0 {
                                return Err(io::ErrorKind::UnexpectedEof.into());
                            }
                        }
                        buf.drain(..length).collect()
                    }
                    None => {
                        while read_some(stream, buf).await? > 0 {}
                        std::mem::take(buf)
                    }
                };
                return Ok(Response {
                    status,
                    headers,
                    body,
                });
            }
            if read_some(stream, buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Sends `GET path` with optional extra header lines.
async fn send_get<S: AsyncWrite + Unpin>(stream: &mut S, path: &str, extra: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
}

/// One request on an existing connection, one response back.
async fn get(stream: &mut TcpStream, path: &str) -> Response {
    send_get(stream, path, "").await;
    read_response(stream, &mut Vec::new())
        .await
        .expect("a response")
}

/// What the next read sees once the server is done: `Ok(bytes)` up to a clean EOF, or the error.
async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut all))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
    Ok(all)
}

// ---------------------------------------------------------------------------------------------
// Successes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn success_is_200_json_with_content_length_and_the_time() {
    let sim = start(fast()).await;
    sim.script([Reply::ok_time(42).after(ms(2))]);
    let mut client = connect(&sim).await;
    let response = get(&mut client, "/api/work").await;

    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str())
    );
    assert_eq!(response.header("connection"), None, "keep-alive by default");
    assert_eq!(response.json(), serde_json::json!({"time": 42}));
}

#[tokio::test]
async fn unscripted_success_reports_its_latency_as_time() {
    let sim = start(SimConfig {
        latency_ms: (7, 7),
        ..fast()
    })
    .await;
    let mut client = connect(&sim).await;
    let started = Instant::now();
    let response = get(&mut client, "/api/work?n=1").await;

    assert!(started.elapsed() >= ms(7));
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), serde_json::json!({"time": 7}));
}

#[tokio::test]
async fn scripted_delay_is_the_default_time() {
    let sim = start(fast()).await;
    sim.script([Reply::ok().after(ms(4))]);
    let mut client = connect(&sim).await;
    assert_eq!(
        get(&mut client, "/api/work").await.json(),
        serde_json::json!({"time": 4})
    );
}

#[tokio::test]
async fn scripted_replies_are_used_in_arrival_order_then_the_config() {
    let sim = start(SimConfig {
        latency_ms: (3, 3),
        ..fast()
    })
    .await;
    sim.script([
        Reply::ok_time(1).after(ms(1)),
        Reply::status(503).after(ms(1)),
        Reply::body(200, r#"{"time": 3, "extra": true}"#).after(ms(1)),
    ]);
    let mut client = connect(&sim).await;

    assert_eq!(get(&mut client, "/api/work").await.json()["time"], 1);
    let unavailable = get(&mut client, "/api/work").await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.json()["status"], 503);
    assert_eq!(
        get(&mut client, "/api/work").await.json(),
        serde_json::json!({"time": 3, "extra": true})
    );
    // The script is used up: the configuration answers.
    assert_eq!(get(&mut client, "/api/work").await.json()["time"], 3);
    assert_eq!(
        sim.connections_accepted(),
        1,
        "all on one keep-alive connection"
    );
}

#[tokio::test]
async fn unknown_paths_get_404_and_do_not_consume_the_script() {
    let sim = start(fast()).await;
    sim.script([Reply::ok_time(9).after(ms(1))]);
    let mut client = connect(&sim).await;

    let missing = get(&mut client, "/api/other").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["status"], 404);
    assert_eq!(get(&mut client, "/api/work").await.json()["time"], 9);
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let sim = start(fast()).await;
    let mut client = connect(&sim).await;
    client
        .write_all(b"POST /api/work HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("sent");
    let response = read_response(&mut client, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));
    // The body was read past: the connection still serves the next request.
    assert_eq!(get(&mut client, "/api/work").await.status, 200);
}

#[tokio::test]
async fn chunked_reply_has_chunks_an_extension_and_a_trailer() {
    let sim = start(fast()).await;
    sim.script([Reply::chunked().time(12345).after(ms(1))]);
    let mut client = connect(&sim).await;
    send_get(&mut client, "/api/work", "Connection: close\r\n").await;
    let raw = read_until_closed(&mut client).await.expect("clean close");
    let text = String::from_utf8(raw).expect("ASCII");

    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(head.contains("\r\nTransfer-Encoding: chunked"));
    assert!(!head.contains("Content-Length"));
    // {"time": 12345} is 15 bytes: three chunks of 5, the first with an extension.
    assert_eq!(
        body,
        "5;sim-ext=\"first chunk\"\r\n{\"tim\r\n5\r\ne\": 1\r\n5\r\n2345}\r\n\
         0\r\nX-Sim-Trailer: done\r\n\r\n"
    );
}

#[tokio::test]
async fn raw_reply_is_written_verbatim() {
    let sim = start(fast()).await;
    let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}\n".to_vec();
    sim.script([Reply::raw(bytes.clone()).after(ms(1)).close()]);
    let mut client = connect(&sim).await;
    send_get(&mut client, "/api/work", "").await;
    assert_eq!(
        read_until_closed(&mut client).await.expect("clean close"),
        bytes
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let sim = start(fast()).await;
    sim.script([
        Reply::ok_time(1).after(ms(1)),
        Reply::ok_time(2).after(ms(1)),
    ]);
    let mut client = connect(&sim).await;
    client
        .write_all(
            b"GET /api/work HTTP/1.1\r\nHost: x\r\n\r\nGET /api/work HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .expect("sent");
    let mut buf = Vec::new();
    let first = read_response(&mut client, &mut buf).await.expect("first");
    let second = read_response(&mut client, &mut buf).await.expect("second");
    assert_eq!(first.json()["time"], 1);
    assert_eq!(second.json()["time"], 2);
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn status500_fault_answers_500_with_a_json_error() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::Status500).after(ms(1))]);
    let mut client = connect(&sim).await;
    let response = get(&mut client, "/api/work").await;
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["status"], 500);
}

#[tokio::test]
async fn invalid_json_fault_answers_200_with_a_body_that_is_not_json() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::InvalidJson).after(ms(1))]);
    let mut client = connect(&sim).await;
    let response = get(&mut client, "/api/work").await;
    assert_eq!(response.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&response.body).is_err());
}

#[tokio::test]
async fn missing_time_fault_answers_an_object_without_time() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::MissingTime).after(ms(1))]);
    let mut client = connect(&sim).await;
    let response = get(&mut client, "/api/work").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), serde_json::json!({"result": 1}));
}

#[tokio::test]
async fn reset_fault_resets_the_connection_without_answering() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::Reset).after(ms(1))]);
    let mut client = connect(&sim).await;
    send_get(&mut client, "/api/work", "").await;
    let outcome = read_until_closed(&mut client).await;
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    assert!(sim.wait_connections_open(0, LIMIT).await);
}

#[tokio::test]
async fn reset_connections_resets_every_open_connection_whatever_it_is_doing() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::Hang), Reply::ok().after(ms(60_000))]);
    let (mut hanging, mut waiting, mut idle) = (
        connect(&sim).await,
        connect(&sim).await,
        connect(&sim).await,
    );
    send_get(&mut hanging, "/api/work", "").await;
    send_get(&mut waiting, "/api/work", "").await;
    assert!(sim.wait_in_flight(2, LIMIT).await);
    assert!(sim.wait_connections_open(3, LIMIT).await);

    sim.reset_connections();
    for client in [&mut hanging, &mut waiting, &mut idle] {
        let outcome = read_until_closed(client).await;
        assert_eq!(
            outcome.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }
    assert!(sim.wait_connections_open(0, LIMIT).await);
    assert_eq!(sim.in_flight(), 0);
    // New connections are served as before.
    let mut client = connect(&sim).await;
    assert_eq!(get(&mut client, "/api/work").await.status, 200);
}

#[tokio::test]
async fn hang_fault_never_answers_and_lets_go_when_the_client_closes() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::Hang)]);
    let mut client = connect(&sim).await;
    send_get(&mut client, "/api/work", "").await;
    assert!(sim.wait_requests(1, LIMIT).await);

    // "Never" can only be sampled: nothing arrives within a window far above the latency.
    let mut byte = [0u8; 1];
    assert!(
        timeout(ms(150), client.read(&mut byte)).await.is_err(),
        "a hanging request gets no bytes and no close"
    );
    assert_eq!(sim.connections_open(), 1);
    assert_eq!(sim.in_flight(), 1, "a hanging request is in flight");

    drop(client);
    assert!(sim.wait_connections_open(0, LIMIT).await);
    assert_eq!(sim.in_flight(), 0, "and is no longer once its client left");
}

#[tokio::test]
async fn slow_body_sends_the_head_at_once_and_the_body_a_byte_per_pause() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::SlowBody).time(7).after(ms(1))]);
    let mut client = connect(&sim).await;
    send_get(&mut client, "/api/work", "").await;

    // The head comes at once, announcing the full length; the body trickles in after it.
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(read_some(&mut client, &mut buf).await.expect("head") > 0);
    }
    let head_at = Instant::now();
    let head = String::from_utf8_lossy(&buf).into_owned();
    assert!(head.contains("Content-Length: 11\r\n"), "{head}");
    let response = read_response(&mut client, &mut buf).await.expect("body");

    assert_eq!(response.json(), serde_json::json!({"time": 7}));
    // 11 bytes with a pause between each: at least 10 pauses after the head.
    assert!(
        head_at.elapsed() >= SLOW_BODY_PAUSE * 9,
        "{:?}",
        head_at.elapsed()
    );
}

#[tokio::test]
async fn failure_rate_one_draws_only_from_the_configured_kinds() {
    let sim = start(SimConfig {
        failure_rate: 1.0,
        failure_kinds: vec![Fault::MissingTime],
        ..fast()
    })
    .await;
    let mut client = connect(&sim).await;
    for _ in 0..3 {
        assert_eq!(
            get(&mut client, "/api/work").await.json(),
            serde_json::json!({"result": 1})
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Connection lifetime
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_gives_up_during_the_delay_is_released_at_once() {
    let sim = start(fast()).await;
    // Far longer than LIMIT: only an early release can pass the wait below.
    sim.script([Reply::ok().after(Duration::from_secs(60))]);
    let mut client = connect(&sim).await;
    send_get(&mut client, "/api/work", "").await;
    assert!(sim.wait_requests(1, LIMIT).await);

    drop(client);
    assert!(sim.wait_connections_open(0, LIMIT).await);
}

#[tokio::test]
async fn connections_are_served_concurrently() {
    const N: u64 = 10;
    let sim = start(fast()).await;
    sim.script((0..N).map(|_| Reply::fault(Fault::Hang)));
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut client = connect(&sim).await;
        send_get(&mut client, "/api/work", "").await;
        clients.push(client);
    }
    // Every request was read while all the earlier ones were still hanging.
    assert!(sim.wait_requests(N, LIMIT).await);
    assert_eq!(sim.connections_open(), N);
    drop(clients);
    assert!(sim.wait_connections_open(0, LIMIT).await);
}

#[tokio::test]
async fn close_after_marks_the_nth_response_and_then_closes() {
    let sim = start(SimConfig {
        close_after: Some(2),
        ..fast()
    })
    .await;
    let mut client = connect(&sim).await;
    let first = get(&mut client, "/api/work").await;
    let second = get(&mut client, "/api/work").await;

    assert_eq!(first.header("connection"), None);
    assert_eq!(second.header("connection"), Some("close"));
    assert_eq!(
        read_until_closed(&mut client).await.expect("clean EOF"),
        b""
    );
    // We closed first; the client closing its end lets the simulator's lingering close finish.
    drop(client);
    assert!(sim.wait_connections_open(0, LIMIT).await);
    assert_eq!(sim.connections_accepted(), 1);
}

#[tokio::test]
async fn scripted_close_sends_connection_close_and_closes() {
    let sim = start(fast()).await;
    sim.script([Reply::ok().after(ms(1)).close()]);
    let mut client = connect(&sim).await;
    let response = get(&mut client, "/api/work").await;
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(
        read_until_closed(&mut client).await.expect("clean EOF"),
        b""
    );
}

#[tokio::test]
async fn client_connection_close_is_honoured() {
    let sim = start(fast()).await;
    let mut client = connect(&sim).await;
    send_get(&mut client, "/api/work", "Connection: close\r\n").await;
    let mut buf = Vec::new();
    let response = read_response(&mut client, &mut buf)
        .await
        .expect("response");
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(
        read_until_closed(&mut client).await.expect("clean EOF"),
        b""
    );
}

#[tokio::test]
async fn idle_close_closes_silently_after_the_idle_time() {
    let sim = start(SimConfig {
        idle_close: Some(ms(30)),
        ..fast()
    })
    .await;
    let mut client = connect(&sim).await;
    let response = get(&mut client, "/api/work").await;
    assert_eq!(
        response.header("connection"),
        None,
        "no warning in the response"
    );

    let idle_from = Instant::now();
    assert_eq!(read_until_closed(&mut client).await.expect("EOF"), b"");
    assert!(idle_from.elapsed() >= ms(25));
    assert!(sim.wait_connections_open(0, LIMIT).await);
}

#[tokio::test]
async fn oversized_head_gets_431_and_a_close() {
    let sim = start(fast()).await;
    let mut client = connect(&sim).await;
    let filler = "x".repeat(MAX_HEAD_BYTES);
    send_get(&mut client, "/api/work", &format!("X-Filler: {filler}\r\n")).await;
    let response = read_response(&mut client, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(response.status, 431);
    assert_eq!(response.header("connection"), Some("close"));
}

#[tokio::test]
async fn counters_and_seen_follow_connections_and_requests() {
    let sim = start(fast()).await;
    let mut a = connect(&sim).await;
    let mut b = connect(&sim).await;
    assert!(sim.wait_connections_open(2, LIMIT).await);
    send_get(&mut a, "/api/work?x=1", "X-Test: a\r\n").await;
    read_response(&mut a, &mut Vec::new()).await.expect("a");
    get(&mut b, "/nothing").await;

    assert_eq!(sim.connections_accepted(), 2);
    assert_eq!(sim.requests(), 2);
    let seen = sim.seen();
    let work = seen
        .iter()
        .find(|r| r.path == "/api/work?x=1")
        .expect("seen");
    assert_eq!(work.method, "GET");
    assert_eq!(work.header("x-test"), Some("a"));
    assert_eq!(work.header("host"), Some("localhost"));

    drop(a);
    drop(b);
    assert!(sim.wait_connections_open(0, LIMIT).await);
    assert_eq!(sim.connections_accepted(), 2, "accepted never goes down");
}

#[tokio::test]
async fn stats_reports_the_counters_without_counting_itself_or_using_the_script() {
    let sim = start(fast()).await;
    sim.script([
        Reply::ok_time(5).after(ms(1)),
        Reply::ok_time(6).after(ms(1)),
    ]);
    let mut worker = connect(&sim).await;
    assert_eq!(get(&mut worker, "/api/work").await.json()["time"], 5);
    get(&mut worker, "/elsewhere").await;
    drop(worker);
    assert!(sim.wait_connections_open(0, LIMIT).await);

    let mut watcher = connect(&sim).await;
    for _ in 0..2 {
        let stats = get(&mut watcher, "/stats").await;
        assert_eq!(stats.status, 200);
        assert_eq!(stats.header("content-type"), Some("application/json"));
        assert_eq!(
            stats.json(),
            serde_json::json!({
                "connections_accepted": 2,
                "connections_open": 1, // the one asking
                "requests": 2,         // /api/work and /elsewhere, not /stats
                "in_flight": 0,        // both answered
                "tls_resumed": 0,
            })
        );
    }
    assert_eq!(sim.requests(), 2);
    assert!(
        sim.seen().iter().all(|r| r.path != "/stats"),
        "not logged either"
    );
    // The script was not consumed by the stats requests.
    assert_eq!(get(&mut watcher, "/api/work").await.json()["time"], 6);

    let mut other = connect(&sim).await;
    other
        .write_all(b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("sent");
    let refused = read_response(&mut other, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(refused.status, 405);
}

#[tokio::test]
async fn dropping_the_simulator_closes_every_connection_and_the_listener() {
    let sim = start(fast()).await;
    sim.script([Reply::fault(Fault::Hang)]);
    let mut hanging = connect(&sim).await;
    let mut idle = connect(&sim).await;
    send_get(&mut hanging, "/api/work", "").await;
    assert!(sim.wait_requests(1, LIMIT).await);
    assert!(sim.wait_connections_open(2, LIMIT).await);
    let addr = sim.addr();

    drop(sim);
    // Either end is a close: EOF or (if our request was still unread) a reset.
    let _ = read_until_closed(&mut hanging).await;
    let _ = read_until_closed(&mut idle).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed too"
    );
}

#[tokio::test]
async fn drop_closes_connections_within_the_limit() {
    let sim = start(fast()).await;
    let mut idle = connect(&sim).await;
    assert!(sim.wait_connections_open(1, LIMIT).await);
    drop(sim);
    let closed = read_until_closed(&mut idle).await;
    assert!(
        !matches!(&closed, Err(e) if e.kind() == io::ErrorKind::TimedOut),
        "closed promptly, not left open: {closed:?}"
    );
}

#[tokio::test]
async fn invalid_configuration_is_refused_at_start() {
    for config in [
        SimConfig {
            latency_ms: (10, 5),
            ..fast()
        },
        SimConfig {
            failure_rate: 1.5,
            ..fast()
        },
        SimConfig {
            failure_rate: f64::NAN,
            ..fast()
        },
        SimConfig {
            failure_rate: 0.5,
            failure_kinds: vec![],
            ..fast()
        },
        SimConfig {
            close_after: Some(0),
            ..fast()
        },
    ] {
        let refused = Simulator::start(config.clone()).await.err();
        assert_eq!(
            refused.map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput),
            "{config:?}"
        );
    }
}

#[tokio::test]
async fn url_names_the_scheme_host_and_port() {
    let tls = start(SimConfig::default()).await;
    let plain = start(fast()).await;
    assert_eq!(
        tls.url(),
        format!("https://127.0.0.1:{}/api/work", tls.addr().port())
    );
    assert_eq!(
        plain.url(),
        format!("http://127.0.0.1:{}/api/work", plain.addr().port())
    );
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca_certs() {
        roots.add(cert).expect("CA accepted as a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[test]
fn the_ca_pem_holds_exactly_one_certificate() {
    assert_eq!(ca_certs().len(), 1);
    assert!(tls::CA_PEM.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[tokio::test]
async fn rustls_accepts_the_chain_for_localhost_and_127_0_0_1() {
    let sim = start(SimConfig {
        tls: true,
        ..fast()
    })
    .await;
    sim.script([
        Reply::ok_time(1).after(ms(1)),
        Reply::ok_time(2).after(ms(1)),
    ]);
    let names = [
        ServerName::try_from("localhost").expect("name"),
        ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into()),
    ];
    for (i, name) in names.into_iter().enumerate() {
        let tcp = connect(&sim).await;
        let mut tls = timeout(LIMIT, tls_connector().connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("the chain verifies");
        assert_eq!(tls.get_ref().1.alpn_protocol(), None, "we offered no ALPN");
        send_get(&mut tls, "/api/work", "").await;
        let response = read_response(&mut tls, &mut Vec::new())
            .await
            .expect("a response");
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["time"], i as u64 + 1);
    }
}

#[tokio::test]
async fn tls_idle_close_drops_the_connection_without_close_notify() {
    let sim = start(SimConfig {
        tls: true,
        idle_close: Some(ms(30)),
        ..fast()
    })
    .await;
    let tcp = connect(&sim).await;
    let mut tls = tls_connector()
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    send_get(&mut tls, "/api/work", "").await;
    let response = read_response(&mut tls, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(response.status, 200);

    // rustls reports a TCP close that was not preceded by close_notify as UnexpectedEof.
    let outcome = read_until_closed(&mut tls).await;
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(io::ErrorKind::UnexpectedEof)
    );
}

#[tokio::test]
async fn tls_connection_close_sends_close_notify() {
    let sim = start(SimConfig {
        tls: true,
        ..fast()
    })
    .await;
    sim.script([Reply::ok().after(ms(1)).close()]);
    let tcp = connect(&sim).await;
    let mut tls = tls_connector()
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    send_get(&mut tls, "/api/work", "").await;
    let mut buf = Vec::new();
    let response = read_response(&mut tls, &mut buf).await.expect("response");
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(read_until_closed(&mut tls).await.expect("clean close"), b"");
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cli_defaults_are_tls_on_8443_with_the_default_config() {
    let (listen, config, write_ca) = parse_args(&[]).expect("no flags is fine");
    assert_eq!(listen.to_string(), "127.0.0.1:8443");
    assert!(config.tls);
    assert_eq!(config.latency_ms, (100, 600));
    assert_eq!(config.failure_rate, 0.0);
    assert_eq!(config.failure_kinds, Fault::ALL.to_vec());
    assert_eq!(write_ca, None);
}

#[test]
fn cli_reads_every_flag_in_both_spellings() {
    let (listen, config, write_ca) = parse_args(&args(&[
        "--listen=0.0.0.0:9000",
        "--plain",
        "--latency-ms",
        "5-50",
        "--failure-rate=0.25",
        "--failures",
        "reset,hang,slow-body",
        "--close-after=3",
        "--idle-close-ms",
        "250",
        "--write-ca=/tmp/ca.pem",
    ]))
    .expect("valid flags");
    assert_eq!(listen.to_string(), "0.0.0.0:9000");
    assert!(!config.tls);
    assert_eq!(config.latency_ms, (5, 50));
    assert_eq!(config.failure_rate, 0.25);
    assert_eq!(
        config.failure_kinds,
        vec![Fault::Reset, Fault::Hang, Fault::SlowBody]
    );
    assert_eq!(config.close_after, Some(3));
    assert_eq!(config.idle_close, Some(ms(250)));
    assert_eq!(
        write_ca.as_deref(),
        Some(std::path::Path::new("/tmp/ca.pem"))
    );

    let (_, fixed, _) = parse_args(&args(&["--latency-ms=20"])).expect("fixed latency");
    assert_eq!(fixed.latency_ms, (20, 20));
}

#[test]
fn cli_errors_name_the_flag() {
    for (bad, flag) in [
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--latency-ms", "50-5"], "--latency-ms"),
        (&["--latency-ms=fast"], "--latency-ms"),
        (&["--latency-ms=999999999"], "--latency-ms"),
        (&["--failure-rate", "2"], "--failure-rate"),
        (&["--failure-rate=NaN"], "--failure-rate"),
        (&["--failures=reset,teapot"], "--failures"),
        (&["--close-after=0"], "--close-after"),
        (&["--idle-close-ms=-1"], "--idle-close-ms"),
        (&["--plain=yes"], "--plain"),
        (&["--write-ca"], "--write-ca"),
        (&["--bogus"], "--bogus"),
    ] {
        let error = parse_args(&args(bad)).expect_err("refused");
        assert!(error.contains(flag), "{bad:?} gave {error:?}");
    }
}

#[tokio::test]
async fn run_refuses_bad_flags_and_answers_help_without_serving() {
    let error = run(&args(&["--failure-rate=2"]))
        .await
        .expect_err("refused");
    assert!(error.contains("--failure-rate"), "{error}");
    assert_eq!(run(&args(&["--help"])).await, Ok(()));
}

#[test]
fn cli_help_lists_flags_and_limits() {
    let help = parse_args(&args(&["--help"])).expect_err("help is not a configuration");
    for needle in [
        "--latency-ms",
        "--write-ca",
        "slow-body",
        &MAX_HEAD_BYTES.to_string(),
    ] {
        assert!(help.contains(needle), "help mentions {needle}");
    }
}
