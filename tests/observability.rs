//! What operators see: `/metrics` after scripted calls, the admin probes, the access log, and one trace
//! followed from the caller to the upstream and into the log.
//!
//! A response reaches the client a moment before its metrics and access line are recorded (they are taken
//! once the write completed), so checks wait for the figure to appear, bounded by `PATIENCE`.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{get, ms, samples, Service, PATIENCE};
use fanout::api::hedge::Delay;
use fanout::simulator::{Fault, Reply, SimConfig};
use serde_json::Value;

/// Scrapes until `ready` holds for the samples (or `PATIENCE` is up), and returns the last scrape.
async fn scrape_until(
    svc: &Service,
    ready: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let until = Instant::now() + PATIENCE;
    loop {
        let r = svc.admin_get("/metrics").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let m = samples(&r.text());
        if ready(&m) || Instant::now() > until {
            return m;
        }
        tokio::time::sleep(ms(10)).await;
    }
}

fn server_count(route: &str, status: u16) -> String {
    format!(
        "fanout_http_server_request_duration_seconds_count{{http_route=\"{route}\",http_response_status_code=\"{status}\"}}"
    )
}

fn client_count(outcome: &str) -> String {
    format!("fanout_http_client_request_duration_seconds_count{{outcome=\"{outcome}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_route_and_status_and_upstream_requests_by_outcome() {
    let svc = Service::start().await;
    svc.sim.script([
        Reply::ok_time(1),
        Reply::status(500),
        Reply::fault(Fault::InvalidJson),
    ]);
    assert_eq!(svc.get("/api/all?timeout=3000").await.status, 200);
    svc.sim.script([
        Reply::status(503),
        Reply::status(500),
        Reply::fault(Fault::MissingTime),
    ]);
    assert_eq!(svc.get("/api/first?timeout=3000").await.status, 502);
    assert_eq!(svc.get("/api/all?timeout=soon").await.status, 400);
    assert_eq!(svc.get("/nowhere").await.status, 404);

    // Each response is observed just after it is written, maybe after the next call began: wait for all.
    let expected = [
        server_count("/api/all", 200),
        server_count("/api/first", 502),
        server_count("/api/all", 400),
        server_count("other", 404),
    ];
    let m = scrape_until(&svc, |m| {
        expected.iter().all(|k| m.get(k).copied() == Some(1.0))
    })
    .await;
    assert_eq!(get(&m, &server_count("/api/all", 200)), 1.0);
    assert_eq!(get(&m, &server_count("/api/first", 502)), 1.0);
    assert_eq!(get(&m, &server_count("/api/all", 400)), 1.0);
    assert_eq!(get(&m, &server_count("other", 404)), 1.0);
    assert_eq!(
        get(&m, &server_count("/api/smart", 200)),
        0.0,
        "each route's 200 exists from the start"
    );
    assert_eq!(get(&m, &client_count("ok")), 1.0);
    assert_eq!(get(&m, &client_count("http_status")), 3.0);
    assert_eq!(get(&m, &client_count("invalid_payload")), 2.0);
    assert_eq!(get(&m, &client_count("io_error")), 0.0);
    assert_eq!(get(&m, &client_count("timeout")), 0.0);
    // Two calls with a valid timeout: both answered before their deadline.
    assert_eq!(get(&m, "fanout_deadline_overshoot_seconds_count"), 2.0);
    assert_eq!(
        get(&m, "fanout_deadline_overshoot_seconds_bucket{le=\"0\"}"),
        2.0
    );
    assert_eq!(get(&m, "fanout_http_server_active_requests"), 0.0);
    // A few calls are no load: a call stops waiting one timer tick before its deadline (api::lead).
    assert_eq!(get(&m, "fanout_deadline_lead_seconds"), 0.001);
    // The pool's own counters, read at scrape time: six requests, at least one connection.
    let connects = get(&m, "fanout_upstream_pool_connects_total");
    let reuses = get(&m, "fanout_upstream_pool_reuses_total");
    assert!(
        connects >= 1.0 && connects + reuses >= 6.0,
        "{connects} + {reuses}"
    );
    // The last minute: 1 success of 6.
    assert_eq!(
        get(&m, "fanout_upstream_recent_requests{outcome=\"ok\"}"),
        1.0
    );
    assert!((get(&m, "fanout_upstream_recent_success_ratio") - 1.0 / 6.0).abs() < 1e-9);
    assert!(get(&m, "process_resident_memory_bytes") > 0.0);
    assert!(get(&m, "process_open_fds") > 0.0);
    assert_eq!(get(&m, "fanout_ready"), 1.0);

    let health: Value = svc.admin_get("/upstream").await.json();
    assert_eq!(health["requests"], 6);
    assert_eq!(health["outcomes"]["http_status"], 3);
    assert_eq!(health["window_s"], 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_counts_a_hedge_and_whether_it_won() {
    let svc = Service::start_with(common::quiet_upstream(), |c| {
        c.hedge.delay = Delay::Fixed(ms(50))
    })
    .await;
    svc.sim.script([
        Reply::ok_time(1).after(ms(2000)),
        Reply::ok_time(2),
        Reply::ok_time(3).after(ms(2000)),
    ]);
    let r = svc.get("/api/smart?timeout=5000").await;
    assert_eq!(r.json()["time"], 2);
    let m = scrape_until(&svc, |m| {
        m.get(&server_count("/api/smart", 200)).copied() == Some(1.0)
    })
    .await;
    assert_eq!(get(&m, "fanout_smart_hedges_total"), 1.0);
    assert_eq!(get(&m, "fanout_smart_hedges_won_total"), 1.0);
    assert_eq!(
        get(&m, "fanout_smart_hedges_refused_total"),
        0.0,
        "a fixed delay has no budget"
    );
    assert_eq!(get(&m, "fanout_smart_hedge_delay_seconds"), 0.05);
    let view: Value = svc.admin_get("/upstream").await.json();
    assert_eq!(
        view["hedge"],
        serde_json::json!({"mode": "fixed", "delay_ms": 50.0})
    );
    // The two slow requests were still running when the hedge answered.
    assert_eq!(get(&m, &client_count("cancelled")), 2.0);
    let line = svc
        .access_line_where(|l| l["endpoint"] == "/api/smart")
        .await;
    let mut outcomes: Vec<&str> = line["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    // The first request was cut off; of the two hedges (which reach the upstream in either order), one won.
    assert_eq!(outcomes[0], "cancelled");
    outcomes[1..].sort();
    assert_eq!(outcomes[1..], ["cancelled", "ok"]);
    // Each attempt's start, from the call's: the first at once, the hedges together once the delay passed,
    // and the answer after them.
    let start = |i: usize| line["attempts"][i]["start_ms"].as_f64().unwrap();
    assert!((0.0..50.0).contains(&start(0)), "{line}");
    assert!(
        start(1) >= start(0) + 50.0,
        "not before the hedge delay: {line}"
    );
    assert_eq!(start(1), start(2), "the hedges start together: {line}");
    assert!(line["duration_ms"].as_f64().unwrap() > start(1), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_calls_are_counted_by_reason_and_the_admin_listener_is_not_shed() {
    let hanging = SimConfig {
        latency_ms: (0, 0),
        failure_rate: 1.0,
        failure_kinds: vec![Fault::Hang],
        ..SimConfig::default()
    };
    let svc = Service::start_with(hanging, |c| c.limits.max_in_flight = 1).await;
    let mut busy = svc.client().await;
    busy.send(b"GET /api/all?timeout=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert!(svc.sim.wait_requests(3, PATIENCE).await);
    assert_eq!(svc.get("/api/first?timeout=3000").await.status, 503);
    let m = scrape_until(&svc, |m| {
        m.get("fanout_calls_shed_total{reason=\"max_in_flight\"}")
            .copied()
            == Some(1.0)
    })
    .await;
    assert_eq!(
        get(&m, "fanout_calls_shed_total{reason=\"max_in_flight\"}"),
        1.0
    );
    assert_eq!(get(&m, "fanout_http_server_active_requests"), 1.0);
    assert_eq!(svc.admin_get("/healthz").await.status, 200);
    let shed = svc
        .log
        .lines()
        .iter()
        .filter(|l| l.contains("\"event\":\"call_shed\""))
        .count();
    assert_eq!(shed, 1, "the limit event is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_traceparent_is_followed_from_the_caller_to_each_upstream_request_and_into_the_log() {
    let svc = Service::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut client = svc.client().await;
    client
        .send(
            format!(
                "GET /api/all?timeout=3000 HTTP/1.1\r\nHost: t\r\ntraceparent: 00-{trace_id}-{caller_span}-01\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let r = client.response().await.expect("a response");
    assert_eq!(r.status, 200);

    // The caller gets the trace id back, with fanout's span for the call.
    let back = r.header("traceresponse").expect("traceresponse");
    let parts: Vec<&str> = back.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id, "01"));
    let call_span = parts[2];
    assert_ne!(call_span, caller_span);

    // Each upstream request carried the trace, each with a span of its own.
    let seen = svc.sim.seen();
    assert_eq!(seen.len(), 3);
    let mut upstream_spans: Vec<String> = seen
        .iter()
        .map(|s| {
            let tp = s.header("traceparent").expect("traceparent sent upstream");
            let p: Vec<&str> = tp.split('-').collect();
            assert_eq!((p[0], p[1], p[3]), ("00", trace_id, "01"), "{tp}");
            p[2].to_string()
        })
        .collect();
    upstream_spans.sort();
    upstream_spans.dedup();
    assert_eq!(upstream_spans.len(), 3, "one span per attempt");

    // The access line ties them together.
    let line = svc.access_line_where(|l| l["trace_id"] == trace_id).await;
    assert_eq!(line["span_id"], call_span);
    assert_eq!(line["parent_id"], caller_span);
    assert_eq!(line["endpoint"], "/api/all");
    assert_eq!(line["timeout_ms"], 3000);
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        line["overshoot_ms"].as_f64().unwrap() < 0.0,
        "answered before the deadline"
    );
    let first_start = &line["attempts"][0]["start_ms"];
    assert!(first_start.as_f64().unwrap() >= 0.0);
    let mut logged_spans: Vec<String> = line["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["outcome"], "ok");
            assert_eq!(&a["start_ms"], first_start, "all three start together");
            a["span_id"].as_str().unwrap().to_string()
        })
        .collect();
    logged_spans.sort();
    assert_eq!(logged_spans, upstream_spans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_is_ignored_and_a_new_trace_begins() {
    let svc = Service::start().await;
    let mut client = svc.client().await;
    client
        .send(b"GET /api/first?timeout=3000 HTTP/1.1\r\nHost: t\r\ntraceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n\r\n")
        .await;
    let r = client.response().await.expect("a response");
    assert_eq!(r.status, 200);
    let back = r.header("traceresponse").expect("traceresponse");
    let trace_id = back.split('-').nth(1).unwrap().to_string();
    assert_ne!(trace_id, "0".repeat(32));
    let line = svc
        .access_line_where(|l| l["trace_id"] == trace_id.as_str())
        .await;
    assert!(
        line.get("parent_id").is_none(),
        "a trace we started has no parent: {line}"
    );
    let tp = svc.sim.seen()[0].header("traceparent").unwrap().to_string();
    assert!(tp.contains(&trace_id), "{tp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_as_soon_as_the_drain_begins_while_healthz_stays_200() {
    let hanging = SimConfig {
        latency_ms: (0, 0),
        failure_rate: 1.0,
        failure_kinds: vec![Fault::Hang],
        ..SimConfig::default()
    };
    let mut svc = Service::start_with(hanging, |_| {}).await;
    assert_eq!(svc.admin_get("/readyz").await.status, 200);
    assert_eq!(svc.admin_get("/healthz").await.status, 200);
    // A call in flight keeps the drain going for a while.
    let mut busy = svc.client().await;
    busy.send(b"GET /api/all?timeout=1500 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert!(svc.sim.wait_requests(3, PATIENCE).await);

    svc.begin_stop();
    let until = Instant::now() + PATIENCE;
    let r = loop {
        let r = svc.admin_get("/readyz").await;
        if r.status != 200 || Instant::now() > until {
            break r;
        }
        tokio::time::sleep(ms(5)).await;
    };
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (503, Some("draining"))
    );
    assert_eq!(svc.admin_get("/healthz").await.status, 200);
    let m = samples(&svc.admin_get("/metrics").await.text());
    assert_eq!(get(&m, "fanout_ready"), 0.0);

    // The call in flight still gets its answer (a 504 at its deadline), then everything stops.
    assert_eq!(busy.response().await.expect("answered").status, 504);
    let admin = svc.admin;
    svc.stop().await.expect("clean stop");
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener stops with the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_get_and_head_and_knows_its_paths() {
    let svc = Service::start().await;
    assert_eq!(svc.admin_get("/nothing").await.status, 404);
    let asked = |raw: &'static str| async move {
        let mut c = common::Client::connect(svc.admin).await;
        c.send(raw.as_bytes()).await;
        let head_only = raw.starts_with("HEAD ");
        let r = if head_only {
            c.head_response().await
        } else {
            c.response().await
        };
        // One answer a connection; after a HEAD's head, no content (RFC 9110 §9.3.2).
        assert!(
            c.closed_by_server().await,
            "nothing after the answer to {raw:?}"
        );
        r.expect("a response")
    };
    // The API's rules: methods (501 unknown, 405 with Allow), `OPTIONS *`, the target, Host, versions
    // (a higher minor one is read as HTTP/1.1, RFC 9110 §6.2); a HEAD's answers carry no content.
    let statuses = [
        (
            "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        ("FOO /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 501),
        ("OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 200),
        ("GET http:///healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("HEAD /nothing HTTP/1.1\r\nHost: t\r\n\r\n", 404),
        ("HEAD /healthz HTTP/1.1\r\n\r\n", 400),
        ("GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n", 200),
    ];
    for (raw, status) in statuses {
        let r = asked(raw).await;
        assert_eq!(r.status, status, "{raw:?}");
        if [200, 405].contains(&status) && !raw.starts_with("GET") {
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{raw:?}");
        }
    }
    // HEAD: GET's status and Content-Length, no content.
    let get = svc.admin_get("/healthz").await;
    let head = asked("HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, get.header("content-length"))
    );
    let view: Value = svc.admin_get("/upstream").await.json();
    assert_eq!(view["healthy"], true);
    assert_eq!(view["success_ratio"], Value::Null, "no requests yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_can_be_turned_off() {
    let svc = Service::start_with(common::quiet_upstream(), |c| c.log.access = false).await;
    assert_eq!(svc.get("/api/first?timeout=3000").await.status, 200);
    scrape_until(&svc, |m| {
        m.get(&server_count("/api/first", 200)).copied() == Some(1.0)
    })
    .await;
    assert!(svc.access_lines().is_empty());
    assert!(svc
        .log
        .lines()
        .iter()
        .any(|l| l.contains("\"event\":\"start\"")));
}
