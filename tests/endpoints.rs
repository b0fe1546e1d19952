//! The API contract, one endpoint at a time, against a scripted upstream.
//!
//! The simulator hands out scripted replies in the order requests arrive; each reply's delay counts from
//! its request's arrival, so completion order follows the delays.

mod common;

use std::time::Instant;

use common::{ms, Service};
use fanout::api::hedge::Delay;
use fanout::simulator::{Fault, Reply};

/// `/api/all`, `/api/first` and `/api/smart` all end in `502` when every request fails like this.
async fn assert_failure_kind(reply: Reply, timeout_ms: u64, expected_status: u16) {
    let svc = Service::start().await;
    // Delayed, so the three requests are in flight at once, each on its own new connection. (A reset at
    // once on a connection reused from the pool would be retried as stale: see `exchange_with_retry`.)
    let reply = reply.after(ms(50));
    svc.sim.script([reply.clone(), reply.clone(), reply]);
    let r = svc.get(&format!("/api/first?timeout={timeout_ms}")).await;
    assert_eq!(r.status, expected_status, "{}", r.text());
}

/// `endpoint` answers `502` as soon as all three replies failed, long before its 10 s deadline.
async fn assert_502_as_soon_as_all_failed(endpoint: &str, replies: [Reply; 3]) {
    let svc = Service::start().await;
    // Delayed, so the three requests overlap (see `assert_failure_kind`).
    svc.sim.script(replies.map(|r| r.after(ms(50))));
    let t = Instant::now();
    let r = svc.get(&format!("{endpoint}?timeout=10000")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_failed")
    );
    assert!(t.elapsed() < ms(2000), "took {:?}", t.elapsed());
}

mod all {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_every_success_in_completion_order() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::ok_time(1).after(ms(200)),
            Reply::ok_time(2).after(ms(10)),
            Reply::ok_time(3).after(ms(100)),
        ]);
        let r = svc.get("/api/all?timeout=3000").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.times(), vec![2, 3, 1]);
        assert_eq!(svc.sim.requests(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_on_a_reused_connection_is_a_failure_not_a_fourth_request() {
        let svc = Service::start().await;
        // A first call leaves its three connections in the pool.
        svc.sim
            .script([1, 2, 3].map(|t| Reply::ok_time(t).after(ms(50))));
        assert_eq!(svc.get("/api/all?timeout=5000").await.status, 200);
        let connections = svc.sim.connections_accepted();
        // Reset 30 ms after it came: the upstream had the request (a stale connection fails at once).
        svc.sim.script([
            Reply::fault(Fault::Reset).after(ms(30)),
            Reply::status(500).after(ms(40)),
            Reply::status(404).after(ms(50)),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/all?timeout=5000").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(t.elapsed() < ms(2000), "took {:?}", t.elapsed());
        assert_eq!(svc.sim.requests(), 6, "no request was sent again");
        assert_eq!(
            svc.sim.connections_accepted(),
            connections,
            "the second call reused the pool"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaves_out_failures() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::ok_time(1),
            Reply::status(500),
            Reply::fault(Fault::InvalidJson),
        ]);
        let r = svc.get("/api/all?timeout=3000").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.times(), vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_502_as_soon_as_all_three_failed() {
        assert_502_as_soon_as_all_failed(
            "/api/all",
            [
                Reply::status(500),
                Reply::fault(Fault::MissingTime),
                Reply::fault(Fault::Reset),
            ],
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_504_when_one_request_hangs() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::ok_time(1),
            Reply::ok_time(2),
            Reply::fault(Fault::Hang),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/all?timeout=300").await;
        assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));
        assert!(
            t.elapsed() >= ms(299),
            "answered before the deadline: {:?}",
            t.elapsed()
        );
    }
}

mod first {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_the_first_success_as_an_object_without_waiting_for_the_rest() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::ok_time(1).after(ms(2000)),
            Reply::ok_time(2).after(ms(20)),
            Reply::status(500),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/first?timeout=5000").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), serde_json::json!({"time": 2}));
        assert!(
            t.elapsed() < ms(1500),
            "waited for the slow request: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn skips_failures_that_come_first() {
        let svc = Service::start().await;
        svc.sim.script([
            // Delayed, so the three requests overlap (see `assert_failure_kind`).
            Reply::status(500).after(ms(30)),
            Reply::fault(Fault::Reset).after(ms(30)),
            Reply::ok_time(7).after(ms(100)),
        ]);
        let r = svc.get("/api/first?timeout=5000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 7}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_502_as_soon_as_all_three_failed() {
        assert_502_as_soon_as_all_failed(
            "/api/first",
            [
                Reply::status(503),
                Reply::fault(Fault::InvalidJson),
                Reply::fault(Fault::Reset),
            ],
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_504_at_the_deadline() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::fault(Fault::Hang),
            Reply::fault(Fault::Hang),
            Reply::status(500),
        ]);
        let r = svc.get("/api/first?timeout=200").await;
        assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_object_on_as_it_came_but_compact() {
        let svc = Service::start().await;
        let body = r#"{ "time" : 5, "zeta": {"a": [1, 2.5e3]}, "alpha": "x y" }"#;
        let reply = Reply::body(200, body).after(ms(1));
        svc.sim.script([reply.clone(), reply.clone(), reply]);
        let r = svc.get("/api/first?timeout=3000").await;
        assert_eq!(
            r.text(),
            r#"{"time":5,"zeta":{"a":[1,2.5e3]},"alpha":"x y"}"#
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepts_a_chunked_success() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::chunked().time(9),
            Reply::fault(Fault::Hang),
            Reply::fault(Fault::Hang),
        ]);
        let r = svc.get("/api/first?timeout=3000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 9}));
    }
}

mod within_timeout {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_all_three_as_soon_as_they_finished() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::ok_time(1).after(ms(50)),
            Reply::ok_time(2).after(ms(5)),
            Reply::ok_time(3).after(ms(20)),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/within-timeout?timeout=5000").await;
        assert_eq!(r.times(), vec![2, 3, 1]);
        assert!(
            t.elapsed() < ms(2500),
            "waited for the deadline: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_what_arrived_before_the_deadline() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::ok_time(1).after(ms(10)),
            Reply::fault(Fault::Hang),
            Reply::ok_time(3).after(ms(5000)),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/within-timeout?timeout=300").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.times(), vec![1]);
        assert!(
            t.elapsed() >= ms(299),
            "answered before the deadline: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_an_empty_list_when_everything_fails() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::status(500).after(ms(50)),
            Reply::fault(Fault::Reset).after(ms(50)),
            Reply::fault(Fault::MissingTime).after(ms(50)),
        ]);
        let r = svc.get("/api/within-timeout?timeout=5000").await;
        assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeout_zero_answers_an_empty_list_without_asking_the_upstream() {
        let svc = Service::start().await;
        let r = svc.get("/api/within-timeout?timeout=0").await;
        assert_eq!((r.status, r.text().as_str()), (200, "[]"));
        assert_eq!(svc.sim.requests(), 0);
    }
}

mod smart {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fast_first_request_is_the_only_one() {
        let svc = Service::start().await;
        svc.sim.script([Reply::ok_time(1).after(ms(20))]);
        let r = svc.get("/api/smart?timeout=3000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 1}));
        assert_eq!(
            svc.sim.requests(),
            1,
            "hedged although the first request succeeded in time"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hedges_with_two_more_after_the_delay() {
        let svc = Service::start_with(common::quiet_upstream(), |c| {
            c.hedge.delay = Delay::Fixed(ms(300))
        })
        .await;
        svc.sim.script([
            Reply::ok_time(1).after(ms(3000)),
            Reply::ok_time(2).after(ms(50)),
            Reply::ok_time(3).after(ms(3000)),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/smart?timeout=5000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 2}));
        let took = t.elapsed();
        assert!(
            took >= ms(340) && took < ms(2000),
            "took {took:?}: hedge not fired at 300 ms"
        );
        assert_eq!(svc.sim.requests(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hedges_at_once_when_the_first_request_fails() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::status(500),
            Reply::ok_time(2).after(ms(20)),
            Reply::ok_time(3).after(ms(2000)),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/smart?timeout=5000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 2}));
        assert!(
            t.elapsed() < ms(280),
            "waited for the hedge delay: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_request_still_counts_after_hedging() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::ok_time(1).after(ms(450)),
            Reply::fault(Fault::Hang),
            Reply::fault(Fault::Hang),
        ]);
        let r = svc.get("/api/smart?timeout=5000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 1}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_502_as_soon_as_all_three_failed() {
        // Not a reset here: on the connection the first request left in the pool, a reset at once, before
        // any byte, looks exactly like a stale connection and is retried (`exchange_with_retry` in `upstream`).
        assert_502_as_soon_as_all_failed(
            "/api/smart",
            [
                Reply::status(500),
                Reply::status(502),
                Reply::fault(Fault::MissingTime),
            ],
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_504_at_the_deadline() {
        let svc = Service::start().await;
        svc.sim.script([
            Reply::fault(Fault::Hang),
            Reply::fault(Fault::Hang),
            Reply::fault(Fault::Hang),
        ]);
        let r = svc.get("/api/smart?timeout=500").await;
        assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));
        assert_eq!(svc.sim.requests(), 3);
    }
}

/// `/api/smart` with `--hedge-delay-ms auto`: the delay learned from the upstream's latency, under a budget.
mod smart_auto {
    use super::*;
    use common::{get, samples, PATIENCE};
    use fanout::api::hedge;
    use fanout::config::Config;
    use fanout::simulator::SimConfig;

    /// An upstream answering every unscripted request in 10 ms.
    fn ten_ms_upstream() -> SimConfig {
        SimConfig {
            latency_ms: (10, 10),
            ..common::quiet_upstream()
        }
    }

    /// Auto, with `budget`, bounds wide enough for a 10 ms upstream, and the delay read from the window's
    /// last two seconds so that a test sees a shift within seconds.
    fn auto(budget: f64) -> impl FnOnce(&mut Config) {
        move |c| {
            c.hedge = hedge::Settings {
                delay: Delay::Auto,
                min_delay: ms(1),
                budget,
                horizon_secs: 2,
                ..hedge::Settings::default()
            }
        }
    }

    /// The hedge delay `/upstream` shows now, in ms.
    async fn delay_ms(svc: &Service) -> f64 {
        let view = svc.admin_get("/upstream").await.json();
        view["hedge"]["delay_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no hedge delay in {view}"))
    }

    /// `fanout_smart_hedges_*_total{which}`.
    async fn hedges(svc: &Service, which: &str) -> f64 {
        let m = samples(&svc.admin_get("/metrics").await.text());
        get(&m, &format!("fanout_smart_hedges{which}_total"))
    }

    /// `n` `/api/smart` calls at once, each on its own connection; every one must succeed.
    async fn round(svc: &Service, n: usize) {
        let addr = svc.addr;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            calls.spawn(async move {
                let mut client = common::Client::connect(addr).await;
                client.get("/api/smart?timeout=5000").await
            });
        }
        while let Some(r) = calls.join_next().await {
            let r = r.expect("the call's task");
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }

    /// Rounds of 8 calls at once until the hedge delay is `done`; fails after `PATIENCE`.
    async fn calls_until(svc: &Service, done: impl Fn(f64) -> bool) {
        let start = Instant::now();
        loop {
            let delay = delay_ms(svc).await;
            if done(delay) {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "the delay stayed at {delay} ms");
            round(svc, 8).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_delay_follows_a_latency_shift_up_and_down() {
        // No budget: no call hedges on the delay, so each takes exactly one scripted reply.
        let svc = Service::start_with(ten_ms_upstream(), auto(0.0)).await;
        assert_eq!(
            delay_ms(&svc).await,
            300.0,
            "the start, before any latency is known"
        );
        // A 10 ms upstream: the 95th percentile is about 10 ms.
        calls_until(&svc, |d| d < 50.0).await;
        // Slower: the next 160 requests take 150 ms; once they are over 5% of the window, the delay rises.
        svc.sim.script(vec![Reply::ok().after(ms(150)); 160]);
        calls_until(&svc, |d| d > 100.0).await;
        // Fast again: back down once the last second holds only fast answers.
        calls_until(&svc, |d| d < 50.0).await;
        assert!(svc.sim.requests() > 160);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_budget_holds_when_the_upstream_slows_down() {
        let svc = Service::start_with(ten_ms_upstream(), auto(0.25)).await;
        calls_until(&svc, |d| d < 50.0).await;
        let (requests, hedged, refused) = (
            svc.sim.requests(),
            hedges(&svc, "").await,
            hedges(&svc, "_refused").await,
        );
        // The upstream slows to 100 ms while the window still says 10: every call's delay passes.
        svc.sim.script(vec![Reply::ok().after(ms(100)); 240]);
        for _ in 0..10 {
            round(&svc, 8).await;
        }
        let hedged = hedges(&svc, "").await - hedged;
        let refused = hedges(&svc, "_refused").await - refused;
        let requests = svc.sim.requests() - requests;
        // 80 calls earn 20 requests' worth, and at most the burst was saved before: 20 hedges of 2.
        assert!(hedged <= 20.0, "{hedged} hedges");
        assert!(refused >= 20.0, "{refused} refused");
        assert!(requests <= 80 + 2 * 20, "{requests} upstream requests");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_budget_a_call_waits_for_its_first_request() {
        // No budget: the delay (300 ms at start) passes, and no hedge is fired.
        let svc = Service::start_with(common::quiet_upstream(), auto(0.0)).await;
        svc.sim.script([Reply::ok_time(1).after(ms(500))]);
        let r = svc.get("/api/smart?timeout=5000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 1}));
        assert_eq!(svc.sim.requests(), 1);
        assert_eq!(hedges(&svc, "_refused").await, 1.0);
        assert_eq!(hedges(&svc, "").await, 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_budget_a_failure_still_fires_the_other_two_at_once() {
        let svc = Service::start_with(common::quiet_upstream(), auto(0.0)).await;
        svc.sim.script([
            Reply::status(500).after(ms(400)),
            Reply::ok_time(2).after(ms(20)),
            Reply::ok_time(3).after(ms(3000)),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/smart?timeout=5000").await;
        assert_eq!(r.json(), serde_json::json!({"time": 2}));
        assert!(t.elapsed() < ms(2000), "took {:?}", t.elapsed());
        assert_eq!(svc.sim.requests(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_contract_holds_502_when_all_fail_and_504_at_the_deadline() {
        let svc = Service::start_with(common::quiet_upstream(), auto(0.0)).await;
        // A failure hedges at once, budget or not; the last failure ends the call.
        svc.sim.script([
            Reply::status(500).after(ms(50)),
            Reply::status(502).after(ms(50)),
            Reply::fault(Fault::MissingTime).after(ms(50)),
        ]);
        let t = Instant::now();
        let r = svc.get("/api/smart?timeout=10000").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (502, "upstream_failed")
        );
        assert!(t.elapsed() < ms(2000), "took {:?}", t.elapsed());
        // Over budget and hanging: the first request alone, until the deadline.
        svc.sim.script([Reply::fault(Fault::Hang)]);
        let before = svc.sim.requests();
        let r = svc.get("/api/smart?timeout=500").await;
        assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));
        assert_eq!(svc.sim.requests() - before, 1);
    }
}

mod failure_kinds {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_status_is_a_failure() {
        assert_failure_kind(Reply::status(500), 5000, 502).await;
        assert_failure_kind(Reply::status(404), 5000, 502).await;
        assert_failure_kind(Reply::body(201, r#"{"time": 1}"#), 5000, 502).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_is_not_a_valid_work_object_is_a_failure() {
        assert_failure_kind(Reply::fault(Fault::InvalidJson), 5000, 502).await;
        assert_failure_kind(Reply::fault(Fault::MissingTime), 5000, 502).await;
        for body in [
            r#"{"time": -1}"#,
            r#"{"time": 1.5}"#,
            r#"{"time": "5"}"#,
            r#"[{"time": 5}]"#,
            "",
            r#"{"time": 5"#,
        ] {
            assert_failure_kind(Reply::body(200, body), 5000, 502).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_over_the_cap_is_a_failure() {
        let big = format!(r#"{{"time": 1, "pad": "{}"}}"#, "x".repeat(200 * 1024));
        assert_failure_kind(Reply::body(200, big), 5000, 502).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_is_a_failure() {
        assert_failure_kind(Reply::fault(Fault::Reset), 5000, 502).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hang_or_a_body_too_slow_for_the_deadline_is_a_timeout() {
        assert_failure_kind(Reply::fault(Fault::Hang), 300, 504).await;
        assert_failure_kind(Reply::fault(Fault::SlowBody), 300, 504).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_upstream_is_a_failure() {
        // A port nobody listens on: bind one, note it, free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let svc = Service::start_with(common::quiet_upstream(), |c| {
            c.upstream =
                fanout::config::UpstreamChoice::Url(format!("https://127.0.0.1:{port}/api/work"));
        })
        .await;
        let r = svc.get("/api/all?timeout=3000").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (502, "upstream_failed")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_untrusted_certificate_is_a_failure() {
        let svc = Service::start_with(common::quiet_upstream(), |c| c.extra_roots.clear()).await;
        let r = svc.get("/api/all?timeout=3000").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (502, "upstream_failed")
        );
    }
}
