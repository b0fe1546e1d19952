//! Every limit, and what happens past it: admission control, the connection cap, slow and idle clients.

mod common;

use std::time::Instant;

use common::{ms, Service, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_in_flight_cap_are_shed_at_once_without_touching_the_upstream() {
    let svc = Service::start_with(common::hanging_upstream(), |c| c.limits.max_in_flight = 2).await;
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = svc.client().await;
        c.send(b"GET /api/all?timeout=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        busy.push(c);
    }
    assert!(
        svc.sim.wait_requests(6, PATIENCE).await,
        "the two admitted calls reach the upstream"
    );

    for endpoint in ["/api/all", "/api/first", "/api/smart"] {
        let t = Instant::now();
        let r = svc.get(&format!("{endpoint}?timeout=3000")).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (503, "overloaded"),
            "{endpoint}"
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(t.elapsed() < ms(500), "shedding took {:?}", t.elapsed());
    }
    let r = svc.get("/api/within-timeout?timeout=3000").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "[]"),
        "within-timeout never fails, even when shed"
    );
    assert_eq!(
        svc.sim.requests(),
        6,
        "shed calls must not reach the upstream"
    );

    // Bad requests are still told what is wrong, not shed.
    assert_eq!(svc.get("/api/all?timeout=x").await.status, 400);

    // The admitted calls keep their deadline, and their places come back.
    for mut c in busy {
        assert_eq!(c.response().await.expect("answer").status, 504);
    }
    assert_eq!(svc.get("/api/within-timeout?timeout=0").await.status, 200);
    let r = svc.get("/api/all?timeout=50").await;
    assert_eq!(
        r.status, 504,
        "a place is free again: the call is admitted and times out"
    );
}

/// A caller that asks again at once on the connection that was just shed is answered at once by default;
/// with `--shed-pause-ms` it waits that long before its next request is even read, while another
/// connection is answered at once. The same with a shed runtime (here the test's own): the pause comes
/// before the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_connection_is_read_again_at_once_or_after_the_shed_pause() {
    for (pause, shed_runtime) in [
        (None, false),
        (Some(ms(1000)), false),
        (Some(ms(1000)), true),
    ] {
        let svc = Service::start_with(common::hanging_upstream(), |c| {
            c.limits.max_in_flight = 1;
            if let Some(pause) = pause {
                c.limits.shed_pause = pause;
            }
            if shed_runtime {
                c.shed_runtime = Some(tokio::runtime::Handle::current());
            }
        })
        .await;
        let mut busy = svc.client().await;
        busy.send(b"GET /api/all?timeout=5000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        assert!(
            svc.sim.wait_requests(3, PATIENCE).await,
            "the admitted call is running"
        );

        let mut shed = svc.client().await;
        assert_eq!(shed.get("/api/first?timeout=3000").await.status, 503);
        let t = Instant::now();
        shed.send(b"GET /api/first?timeout=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        // Meanwhile another caller is answered at once.
        let other = Instant::now();
        assert_eq!(svc.get("/api/first?timeout=3000").await.status, 503);
        assert!(other.elapsed() < ms(500), "took {:?}", other.elapsed());
        let again = shed.response().await.expect("answered");
        assert_eq!(again.status, 503);
        match pause {
            None => assert!(t.elapsed() < ms(500), "answered after {:?}", t.elapsed()),
            Some(pause) => assert!(
                t.elapsed() >= pause - ms(100),
                "the shed connection was read again after {:?}",
                t.elapsed()
            ),
        }
    }
}

/// As the binary runs by default (src/main.rs): a connection whose call was shed is served on the shed
/// runtime, answered there at once for as long as there is no place, and moves back to the API's runtime
/// with a place taken for it when one is free. At shutdown a parked connection closes like any other.
#[test]
fn a_shed_connection_waits_on_the_shed_runtime_and_comes_back_when_a_place_is_free() {
    let shed_runtime = common::runtime(1);
    let (handle, tasks) = (shed_runtime.handle().clone(), shed_runtime.metrics());
    let api_runtime = common::runtime(2);
    api_runtime.block_on(async move {
        let mut svc = Service::start_with(common::hanging_upstream(), |c| {
            c.limits.max_in_flight = 1;
            c.shed_runtime = Some(handle);
        })
        .await;
        let parked = |n: usize| common::wait_alive_tasks(&tasks, n);
        assert_eq!(tasks.num_alive_tasks(), 0, "nothing is shed yet");
        let mut busy = svc.client().await;
        busy.send(b"GET /api/all?timeout=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        assert!(svc.sim.wait_requests(3, PATIENCE).await, "admitted");

        let mut shed = svc.client().await;
        assert_eq!(shed.get("/api/all?timeout=3000").await.status, 503);
        assert!(
            parked(1).await,
            "the shed connection is on the shed runtime"
        );
        for _ in 0..3 {
            let t = Instant::now();
            let r = shed.get("/api/within-timeout?timeout=3000").await;
            assert_eq!((r.status, r.text().as_str()), (200, "[]"));
            assert!(t.elapsed() < ms(500), "answered after {:?}", t.elapsed());
        }
        assert_eq!(svc.sim.requests(), 3, "shed calls reach no upstream");

        // The admitted call ends at its deadline; the parked connection's next call takes the place.
        assert_eq!(busy.response().await.map(|r| r.status), Some(504));
        let r = shed.get("/api/all?timeout=100").await;
        assert_eq!(r.status, 504, "admitted this time, and timed out");
        assert!(
            svc.sim.wait_requests(6, PATIENCE).await,
            "its requests reached the upstream"
        );
        assert!(parked(0).await, "it is back on the API's runtime");

        // Parked again; then shutdown closes it, between requests, and its task ends.
        let mut busy = svc.client().await;
        busy.send(b"GET /api/all?timeout=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        assert!(svc.sim.wait_requests(9, PATIENCE).await, "admitted");
        assert_eq!(shed.get("/api/first?timeout=3000").await.status, 503);
        assert!(parked(1).await, "parked again");
        svc.begin_stop();
        assert!(shed.closed_by_server().await, "closed at shutdown");
        assert!(parked(0).await, "its task ended");
        assert_eq!(busy.response().await.map(|r| r.status), Some(504));
        svc.stop().await.expect("a clean stop");
    });
    // Outside any async context, where a runtime may be dropped.
    drop(api_runtime);
    drop(shed_runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_cap_gets_503_and_a_close_until_one_leaves() {
    let svc = Service::start_with(common::quiet_upstream(), |c| c.limits.max_connections = 2).await;
    let mut first = svc.client().await;
    let mut second = svc.client().await;
    assert_eq!(first.get("/api/within-timeout?timeout=0").await.status, 200);
    assert_eq!(
        second.get("/api/within-timeout?timeout=0").await.status,
        200
    );

    // A third is answered at once, not left waiting: 503, Retry-After, and the connection closed.
    let mut third = svc.client().await;
    let r = tokio::time::timeout(PATIENCE, third.get("/api/all?timeout=0"))
        .await
        .expect("a connection over the cap is answered, not left in the backlog");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.text().contains("overloaded"), "{}", r.text());
    assert!(third.closed_by_server().await);
    // /api/within-timeout never fails, over the cap too: what arrived in time is nothing.
    let mut fourth = svc.client().await;
    let r = fourth.get("/api/within-timeout?timeout=0").await;
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(fourth.closed_by_server().await);
    let shed = svc.admin_get("/metrics").await.text();
    assert!(
        shed.contains("fanout_calls_shed_total{reason=\"max_connections\"} 2"),
        "{shed}"
    );

    // The two inside are served as before, and once one leaves its slot is free for a newcomer.
    assert_eq!(first.get("/api/within-timeout?timeout=0").await.status, 200);
    drop(first);
    let served = async {
        loop {
            let mut c = svc.client().await;
            // Admitted, a call with no time is a 504; refused, a 503.
            if c.get("/api/all?timeout=0").await.status == 504 {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, served)
        .await
        .expect("a newcomer is served once a slot is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_arrives_too_slowly_gets_408_and_a_close() {
    let svc = Service::start_with(common::quiet_upstream(), |c| {
        c.limits.head_timeout = ms(300)
    })
    .await;
    let mut c = svc.client().await;
    let t = Instant::now();
    c.send(b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHo")
        .await; // and then nothing (slowloris)
    let r = c.response().await.expect("a 408");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(
        t.elapsed() >= ms(290),
        "answered before the head timeout: {:?}",
        t.elapsed()
    );
    assert!(c.closed_by_server().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let svc = Service::start_with(common::quiet_upstream(), |c| {
        c.limits.idle_timeout = ms(300)
    })
    .await;
    let mut c = svc.client().await;
    assert_eq!(c.get("/api/within-timeout?timeout=0").await.status, 200);
    let t = Instant::now();
    assert!(c.closed_by_server().await, "closed without a response");
    assert!(
        t.elapsed() >= ms(290) && t.elapsed() < PATIENCE,
        "closed after {:?}",
        t.elapsed()
    );

    // A connection that never sends anything is idle too.
    let mut silent = svc.client().await;
    assert!(silent.closed_by_server().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_is_decoded_and_discarded_within_the_cap() {
    let svc = Service::start_with(common::quiet_upstream(), |c| c.limits.max_body_bytes = 16).await;
    let mut c = svc.client().await;
    c.send(b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n")
        .await;
    assert_eq!(c.response().await.expect("response").status, 200);
    assert_eq!(
        c.get("/api/within-timeout?timeout=0").await.status,
        200,
        "framing kept"
    );

    let mut c = svc.client().await;
    c.send(b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n0123456789abcdef0123456789abcdef\r\n0\r\n\r\n")
        .await;
    let r = c.response().await.expect("response");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "content_too_large")
    );
    assert!(c.closed_by_server().await);

    let mut c = svc.client().await;
    c.send(b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    assert_eq!(c.response().await.expect("response").status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_hold_a_task_forever() {
    // Pipelines many requests and never reads: the responses fill the socket buffers, the write times out,
    // and the server drops the connection instead of waiting forever.
    let svc = Service::start_with(common::quiet_upstream(), |c| {
        c.limits.write_timeout = ms(300)
    })
    .await;
    let mut c = svc.client().await;
    let request = b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".repeat(2000);
    let sent = tokio::time::timeout(PATIENCE, async {
        for _ in 0..200 {
            if tokio::io::AsyncWriteExt::write_all(&mut c.stream, &request)
                .await
                .is_err()
            {
                return true; // the server gave up on us
            }
        }
        false
    })
    .await;
    assert_eq!(
        sent,
        Ok(true),
        "the server kept a connection that never reads"
    );
}

/// A parked connection's socket is on the shed runtime's own I/O driver (`rehome`): it is answered while
/// every worker of the API's runtime is stuck. (Left on the API runtime's driver, its request would wait
/// for that runtime to poll again.) The client is a plain blocking socket on this thread, so that it
/// needs neither runtime.
#[test]
fn a_parked_connection_is_answered_while_the_api_runtime_is_stuck() {
    use std::io::{Read, Write};
    let shed_runtime = common::runtime(1);
    let (handle, tasks) = (shed_runtime.handle().clone(), shed_runtime.metrics());
    let api_runtime = common::runtime(1);
    let (svc, mut busy) = api_runtime.block_on(async move {
        let svc = Service::start_with(common::hanging_upstream(), |c| {
            c.limits.max_in_flight = 1;
            c.shed_runtime = Some(handle);
        })
        .await;
        let mut busy = svc.client().await;
        busy.send(b"GET /api/all?timeout=4000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        assert!(svc.sim.wait_requests(3, PATIENCE).await, "admitted");
        (svc, busy)
    });

    let mut shed = std::net::TcpStream::connect(svc.addr).expect("connect");
    shed.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let call = b"GET /api/first?timeout=3000 HTTP/1.1\r\nHost: t\r\n\r\n";
    let answer = |shed: &mut std::net::TcpStream| {
        shed.write_all(call).expect("send");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // The 503's body is the last thing in it: read until the JSON object has closed.
        while !got.ends_with(b"}") {
            let n = shed.read(&mut chunk).expect("an answer in time");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    assert!(answer(&mut shed).starts_with("HTTP/1.1 503"));
    let until = Instant::now() + PATIENCE;
    while tasks.num_alive_tasks() != 1 {
        assert!(Instant::now() < until, "the shed connection is not parked");
        std::thread::sleep(ms(5));
    }

    // The API runtime's one worker blocks for 3 s (a task that never yields), once it has started to.
    let (stuck_tx, stuck_rx) = std::sync::mpsc::channel();
    api_runtime.spawn(async move {
        stuck_tx.send(()).expect("the test waits");
        std::thread::sleep(ms(3000));
    });
    stuck_rx
        .recv_timeout(PATIENCE)
        .expect("the worker is stuck");
    let t = Instant::now();
    assert!(answer(&mut shed).starts_with("HTTP/1.1 503"));
    assert!(
        t.elapsed() < ms(1500),
        "answered after {:?}: the parked socket waited for the API's runtime",
        t.elapsed()
    );

    api_runtime.block_on(async move {
        drop(shed);
        assert_eq!(busy.response().await.map(|r| r.status), Some(504));
        svc.stop().await.expect("a clean stop");
    });
    drop(api_runtime);
    drop(shed_runtime);
}
