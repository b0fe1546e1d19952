//! A caller who leaves takes its call with it: while a call runs, its connection task watches the socket,
//! and an EOF or a reset drops the call, its in-flight place and its upstream requests at once, and is
//! logged as `499`. Bytes that arrive meanwhile (a pipelined request) are kept and served in order.
//!
//! Each test scripts a hanging or slow upstream and waits on events (the simulator's request counts, the
//! access log, the metrics page), each wait bounded.

mod common;

use std::time::Duration;

use common::{hanging_upstream, ms, samples, Client, Service, PATIENCE};
use fanout::simulator::Reply;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::{timeout, Instant};

/// How soon after its caller left a call must have let go of everything: the target is 100 ms;
/// the bound leaves room for a busy 2-core machine running the rest of the suite.
const LET_GO: Duration = Duration::from_millis(250);

/// The first access line with this status, waiting for it (bounded).
async fn access_line(svc: &Service, status: u16) -> Value {
    svc.access_line_where(|l| l["status"] == status).await
}

/// A sample of the admin listener's `/metrics`.
async fn metric(svc: &Service, key: &str) -> f64 {
    let page = svc.admin_get("/metrics").await.text();
    samples(&page).get(key).copied().unwrap_or(0.0)
}

/// Waits until the metric reads `want`; how long that took, or `None` after `limit`.
async fn metric_reaches(svc: &Service, key: &str, want: f64, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if metric(svc, key).await == want {
            return Some(t.elapsed());
        }
        tokio::time::sleep(ms(2)).await;
    }
    None
}

const ACTIVE: &str = "fanout_http_server_active_requests";
const CANCELLED: &str = "fanout_http_client_request_duration_seconds_count{outcome=\"cancelled\"}";
const LINGERING: &str = "fanout_upstream_pool_lingering";

/// A client whose call to `target` has its 3 upstream requests at the simulator.
async fn call_in_progress(svc: &Service, target: &str) -> Client {
    let mut client = svc.client().await;
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
    client.send(request.as_bytes()).await;
    assert!(svc.sim.wait_requests(3, PATIENCE).await);
    client
}

/// A caller of `/api/all` on a hanging upstream, its 3 requests in flight at the simulator.
async fn caller_waiting(svc: &Service) -> Client {
    let client = call_in_progress(svc, "/api/all?timeout=30000").await;
    assert!(svc.sim.wait_in_flight(3, PATIENCE).await);
    assert_eq!(metric(svc, ACTIVE).await, 1.0);
    client
}

/// A simulator whose next 3 answers take `after`.
fn slow(svc: &Service, after: Duration) {
    svc.sim
        .script((0..3).map(|_| Reply::ok_time(1).after(after)));
}

/// With no linger (`--upstream-linger-ms 0`) the caller's leaving closes its requests at the simulator.
async fn leaving_ends_everything(reset: bool) {
    let svc = Service::start_with(hanging_upstream(), |c| c.pool.linger = Duration::ZERO).await;
    let client = caller_waiting(&svc).await;
    let left = Instant::now();
    if reset {
        client.stream.set_zero_linger().expect("SO_LINGER 0");
    }
    drop(client);

    assert!(
        svc.sim.wait_in_flight(0, LET_GO).await,
        "the upstream requests are closed ({} still in flight after {:?})",
        svc.sim.in_flight(),
        left.elapsed()
    );
    let in_flight = metric_reaches(&svc, ACTIVE, 0.0, LET_GO).await;
    assert!(in_flight.is_some(), "the call's place is free");
    let line = access_line(&svc, 499).await;
    assert_eq!(line["endpoint"], "/api/all");
    assert!(
        line.get("overshoot_ms").is_none(),
        "nothing was written: {line}"
    );
    let outcomes: Vec<&Value> = line["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| &a["outcome"])
        .collect();
    assert_eq!(outcomes, ["cancelled"; 3], "{line}");
    assert_eq!(metric(&svc, CANCELLED).await, 3.0);
    let status = "http_route=\"/api/all\",http_response_status_code=\"499\"";
    let key = format!("fanout_http_server_request_duration_seconds_count{{{status}}}");
    assert_eq!(metric(&svc, &key).await, 1.0);
    svc.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_closes_mid_call_takes_the_call_and_its_upstream_requests_with_it() {
    leaving_ends_everything(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_resets_mid_call_takes_the_call_and_its_upstream_requests_with_it() {
    leaving_ends_everything(true).await;
}

/// With the default linger, requests already on the wire may finish in the background for a while to save
/// their connections: the call is gone at once, its requests linger and are then closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_the_wire_linger_after_their_caller_left_then_close() {
    let linger = ms(300);
    let svc = Service::start_with(hanging_upstream(), |c| c.pool.linger = linger).await;
    let client = caller_waiting(&svc).await;
    let left = Instant::now();
    drop(client);

    assert!(
        metric_reaches(&svc, ACTIVE, 0.0, LET_GO).await.is_some(),
        "the call is gone at once"
    );
    assert_eq!(metric(&svc, LINGERING).await, 3.0, "its requests linger");
    assert!(svc.sim.wait_in_flight(0, linger + PATIENCE).await);
    assert!(
        left.elapsed() >= linger,
        "closed at the end of the linger, not before: {:?}",
        left.elapsed()
    );
    assert_eq!(
        access_line(&svc, 499).await["attempts"][0]["outcome"],
        "cancelled"
    );
    svc.stop().await.expect("a clean stop");
}

/// A byte that arrives during a call is the next request, not a departure: both answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_behind_a_slow_call_are_answered_in_order() {
    let svc = Service::start().await;
    slow(&svc, ms(300));
    let mut client = call_in_progress(&svc, "/api/first?timeout=5000").await;
    // Sent while the first call runs, in two pieces.
    client
        .send(b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\n")
        .await;
    client
        .send(b"Host: t\r\n\r\nGET /api/all?timeout=0 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;

    let first = client.response().await.expect("the first answer");
    assert_eq!(
        (first.status, first.json()["time"].as_u64()),
        (200, Some(1))
    );
    let second = client.response().await.expect("the second answer");
    assert_eq!((second.status, second.text().as_str()), (200, "[]"));
    let third = client.response().await.expect("the third answer");
    assert_eq!(third.status, 504);
    assert!(svc.access_lines().iter().all(|l| l["status"] != 499));
}

/// With the buffer full the watch stops reading and waits for the call: the client's bytes wait in the
/// kernel, and none is lost or taken for a departure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_during_a_call_is_backpressure_not_a_departure() {
    let svc =
        Service::start_with(common::quiet_upstream(), |c| c.limits.max_head_bytes = 2048).await;
    slow(&svc, ms(300));
    let mut client = call_in_progress(&svc, "/api/first?timeout=5000").await;
    // Three pipelined requests of about 1,800 bytes each: more than the 2,048 the watch reads.
    let padding = "x".repeat(1_750);
    let next = format!(
        "GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nX-Pad: {padding}\r\n\r\n"
    );
    client.send(next.repeat(3).as_bytes()).await;

    assert_eq!(client.response().await.expect("first").json()["time"], 1);
    for i in 0..3 {
        let r = client
            .response()
            .await
            .unwrap_or_else(|| panic!("pipelined answer {i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    }
}

/// A client that shuts its sending side after a complete request: gone by default (hyper's and nginx's
/// rule); answered, then closed, with `--half-close on`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_request_is_abandoned_by_default_and_answered_with_half_close_on() {
    for half_close in [false, true] {
        let svc = Service::start_with(common::quiet_upstream(), |c| {
            c.limits.half_close = half_close
        })
        .await;
        slow(&svc, ms(200));
        let mut client = call_in_progress(&svc, "/api/first?timeout=5000").await;
        client
            .stream
            .shutdown()
            .await
            .expect("shut the sending side");
        let answer = client.response().await;
        if half_close {
            let r = answer.expect("answered");
            assert_eq!((r.status, r.header("connection")), (200, Some("close")));
            assert!(client.closed_by_server().await, "then closed");
            assert_eq!(access_line(&svc, 200).await["endpoint"], "/api/first");
        } else {
            assert!(answer.is_none(), "taken for gone: {answer:?}");
            assert_eq!(access_line(&svc, 499).await["endpoint"], "/api/first");
        }
        svc.stop().await.expect("a clean stop");
    }
}

/// SIGTERM with one caller gone and one waiting: the drain waits for the live call only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_call_whose_caller_left_does_not_hold_the_drain() {
    let mut svc = Service::start_with(hanging_upstream(), |c| c.pool.linger = Duration::ZERO).await;
    let gone = caller_waiting(&svc).await;
    let mut live = svc.client().await;
    live.send(b"GET /api/within-timeout?timeout=500 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert!(svc.sim.wait_requests(6, PATIENCE).await);
    drop(gone);
    access_line(&svc, 499).await;
    let stopping = Instant::now();
    svc.begin_stop();
    let r = live.response().await.expect("the live call is answered");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    let stopped = timeout(PATIENCE, svc.stop()).await;
    assert!(stopped.is_ok(), "serve returned");
    assert!(
        stopping.elapsed() < ms(500) + ms(2_500),
        "the drain ended with the live call (500 ms) and its lingering close, not the abandoned one's 30 s: {:?}",
        stopping.elapsed()
    );
}

/// A connection parked on the shed runtime whose client leaves: its task there ends.
#[test]
fn a_shed_connection_that_leaves_ends_its_task_on_the_shed_runtime() {
    let shed_runtime = common::runtime(1);
    let (handle, tasks) = (shed_runtime.handle().clone(), shed_runtime.metrics());
    let api_runtime = common::runtime(2);
    api_runtime.block_on(async move {
        let svc = Service::start_with(hanging_upstream(), |c| {
            c.limits.max_in_flight = 1;
            c.shed_runtime = Some(handle);
        })
        .await;
        let busy = caller_waiting(&svc).await;
        let mut shed = svc.client().await;
        assert_eq!(shed.get("/api/all?timeout=3000").await.status, 503);
        let alive = |n: usize| common::wait_alive_tasks(&tasks, n);
        assert!(alive(1).await, "parked on the shed runtime");
        drop(shed);
        assert!(alive(0).await, "its task there ended with its client");
        assert_eq!(
            metric(&svc, ACTIVE).await,
            1.0,
            "the admitted call is untouched"
        );
        drop(busy); // its caller leaves too, so the drain has nothing to wait for
        svc.stop().await.expect("a clean stop");
    });
    drop(api_runtime);
    drop(shed_runtime);
}
