//! The upstream connection pool, seen from outside: every claim is proved by counting connections at the
//! simulated upstream (or in the kernel's socket table), never by trusting the pool's own bookkeeping.
//!
//! The rules under test, by their numbers in src/upstream/pool.rs:
//! - an idle connection is reused rather than a new one opened (2);
//! - only a complete exchange puts a connection back: a body over the cap, a body cut off by the deadline,
//!   bytes after the response, or `Connection: close` all mean a fresh connection next time (1);
//! - a connection the upstream closed while it sat idle never costs a failed call (3, 6);
//! - a burst of new connections resumes TLS sessions (8);
//! - idle connections are closed after the idle timeout, and beyond `max_idle` (4, 5);
//! - open connections never exceed `max_connections`, and a caller waiting for one still answers by its
//!   deadline (5).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ms, quiet_upstream, Client, Service, PATIENCE};
use fanout::simulator::{Fault, Reply, SimConfig};

/// Every answer takes 50 ms, long enough for the three requests of one call to be in flight together, so
/// that each needs a connection of its own and the counts below are exact. (With instant answers, the three
/// request tasks may run one after another on a busy machine and share a single connection.)
fn overlapping_upstream() -> SimConfig {
    SimConfig {
        latency_ms: (50, 50),
        ..quiet_upstream()
    }
}

/// fanout in front of [`overlapping_upstream`], with its configuration tweaked.
async fn start(tweak: impl FnOnce(&mut fanout::config::Config)) -> Service {
    Service::start_with(overlapping_upstream(), tweak).await
}

/// fanout in front of [`overlapping_upstream`] that closes the connection after every answer.
async fn closing_after_every_answer() -> Service {
    let upstream = SimConfig {
        close_after: Some(1),
        ..overlapping_upstream()
    };
    Service::start_with(upstream, |_| {}).await
}

/// One `/api/all` on `client` that must succeed with all three upstream answers.
async fn all_three_succeed(client: &mut Client) -> Vec<u64> {
    let r = client.get("/api/all?timeout=5000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let times = r.times();
    assert_eq!(
        times.len(),
        3,
        "not every upstream request succeeded: {}",
        r.text()
    );
    times
}

mod reuse {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_calls_share_the_same_three_connections() {
        let svc = start(|_| {}).await;
        let mut client = svc.client().await;
        for _ in 0..20 {
            all_three_succeed(&mut client).await;
        }
        assert_eq!(svc.sim.requests(), 60);
        assert_eq!(
            svc.sim.connections_accepted(),
            3,
            "each call should reuse the connections the previous one left idle"
        );
        assert_eq!(
            svc.sim.connections_open(),
            3,
            "the idle connections are kept"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_open_no_more_connections_than_requests_in_flight() {
        let svc = Service::start_with(
            SimConfig {
                latency_ms: (5, 20),
                ..quiet_upstream()
            },
            |_| {},
        )
        .await;
        // 5 callers x 3 requests: never more than 15 upstream requests at once, so never a reason for a 16th
        // connection, however the calls interleave.
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let addr = svc.addr;
                tokio::spawn(async move {
                    let mut client = Client::connect(addr).await;
                    for _ in 0..10 {
                        all_three_succeed(&mut client).await;
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("caller");
        }
        assert_eq!(svc.sim.requests(), 150);
        let accepted = svc.sim.connections_accepted();
        assert!(
            accepted <= 15,
            "{accepted} connections for at most 15 requests in flight"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_complete_error_answer_leaves_its_connection_reusable() {
        let svc = start(|_| {}).await;
        svc.sim
            .script([Reply::status(500), Reply::ok_time(1), Reply::ok_time(2)]);
        let mut client = svc.client().await;
        let r = client.get("/api/all?timeout=5000").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.times().len(), 2);

        all_three_succeed(&mut client).await;
        assert_eq!(
            svc.sim.connections_accepted(),
            3,
            "the 500's connection was read to its end and should carry the next request"
        );
    }
}

mod closed_by_the_upstream {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_the_upstream_dropped_while_idle_are_never_used() {
        // The upstream silently drops a connection idle for 100 ms (no close_notify), far sooner than
        // fanout's own idle timeout: fanout must notice, or retry, and never fail a call for it.
        let svc = Service::start_with(
            SimConfig {
                idle_close: Some(ms(100)),
                ..overlapping_upstream()
            },
            |config| config.pool.idle_timeout = Duration::from_secs(30),
        )
        .await;
        let mut client = svc.client().await;
        for _ in 0..5 {
            all_three_succeed(&mut client).await;
            assert!(
                svc.sim.wait_connections_open(0, PATIENCE).await,
                "the simulator closes idle connections after 100 ms"
            );
        }
        assert_eq!(
            svc.sim.connections_accepted(),
            15,
            "each call needs three fresh connections"
        );
        assert_eq!(
            svc.sim.requests(),
            15,
            "no request should reach the upstream twice"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_that_crosses_the_request_on_the_wire_is_retried_transparently() {
        // Pauses around the upstream's 40 ms idle close: some requests go out just before the close, some
        // just after, some while it is in flight. The pause is the scenario here, not a synchronisation.
        let svc = Service::start_with(
            SimConfig {
                idle_close: Some(ms(40)),
                ..quiet_upstream()
            },
            |config| config.pool.idle_timeout = Duration::from_secs(30),
        )
        .await;
        let mut client = svc.client().await;
        for round in 0..40u64 {
            all_three_succeed(&mut client).await;
            tokio::time::sleep(ms(30 + round % 21)).await;
        }
        assert_eq!(svc.sim.requests(), 120);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_close_on_every_answer_means_a_new_connection_per_request() {
        let svc = closing_after_every_answer().await;
        let mut client = svc.client().await;
        for _ in 0..10 {
            all_three_succeed(&mut client).await;
        }
        assert_eq!(svc.sim.requests(), 30);
        assert_eq!(svc.sim.connections_accepted(), 30);
    }

    /// Tickets are kept for a burst: 60 connections opened at once (`Connection: close` on every answer)
    /// bring 2 tickets each, and the next 60 all resume with them. rustls's own store keeps 8 tickets, so
    /// at most 8 of the second burst would resume; every other one would be a full handshake.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_new_connections_resumes_tls_sessions() {
        let svc = closing_after_every_answer().await;
        async fn burst(svc: &Service) {
            let calls: Vec<_> = (0..20)
                .map(|_| {
                    let addr = svc.addr;
                    tokio::spawn(async move {
                        all_three_succeed(&mut Client::connect(addr).await).await;
                    })
                })
                .collect();
            for call in calls {
                call.await.expect("call");
            }
        }
        burst(&svc).await;
        let (accepted, resumed) = (svc.sim.connections_accepted(), svc.sim.tls_resumed());
        burst(&svc).await;
        assert_eq!(svc.sim.connections_accepted() - accepted, 60);
        let resumed = svc.sim.tls_resumed() - resumed;
        assert!(
            resumed >= 54,
            "only {resumed} of 60 new connections resumed a TLS session"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scripted_connection_close_retires_only_that_connection() {
        let svc = start(|_| {}).await;
        svc.sim
            .script([Reply::ok().close(), Reply::ok(), Reply::ok()]);
        let mut client = svc.client().await;
        all_three_succeed(&mut client).await;
        all_three_succeed(&mut client).await;
        assert_eq!(
            svc.sim.connections_accepted(),
            4,
            "two connections reused, one replaced"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_close_after_every_second_answer_never_fails_a_call() {
        let svc = Service::start_with(
            SimConfig {
                close_after: Some(2),
                ..quiet_upstream()
            },
            |_| {},
        )
        .await;
        let mut client = svc.client().await;
        for _ in 0..30 {
            all_three_succeed(&mut client).await;
        }
        let (requests, accepted) = (svc.sim.requests(), svc.sim.connections_accepted());
        assert_eq!(requests, 90);
        assert!(
            accepted >= requests / 2,
            "{accepted} connections carried {requests} requests: some carried more than 2"
        );
        assert!(
            accepted < requests,
            "{accepted} connections for {requests} requests: none was reused"
        );
    }
}

mod never_reused_half_read {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_whose_body_was_over_the_cap_is_not_reused() {
        let svc = start(|config| config.pool.max_body_bytes = 100).await;
        let big = format!(r#"{{"time": 9, "padding": "{}"}}"#, "x".repeat(4000));
        svc.sim
            .script([Reply::body(200, big), Reply::ok_time(1), Reply::ok_time(2)]);
        let mut client = svc.client().await;
        let r = client.get("/api/all?timeout=5000").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let mut times = r.times();
        times.sort();
        assert_eq!(times, [1, 2], "the oversized answer is a failure");

        all_three_succeed(&mut client).await;
        assert_eq!(
            svc.sim.connections_accepted(),
            4,
            "the oversized answer's connection must be replaced, the other two reused"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_cut_off_mid_body_by_the_deadline_is_not_reused() {
        let svc = start(|_| {}).await;
        // The slow body trickles for about a second; the call's deadline falls in the middle of it.
        svc.sim.script([
            Reply::fault(Fault::SlowBody),
            Reply::ok_time(1),
            Reply::ok_time(2),
        ]);
        let mut client = svc.client().await;
        let r = client.get("/api/all?timeout=300").await;
        assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));

        all_three_succeed(&mut client).await;
        assert_eq!(
            svc.sim.connections_accepted(),
            4,
            "the half-read connection must not serve the next call"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_with_bytes_after_the_response_is_not_reused() {
        let svc = start(|_| {}).await;
        // A second, unasked-for response right behind the first: if fanout reused this connection, the next
        // request on it would be "answered" with time 666 before the upstream even saw it.
        let smuggled = concat!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n",
            r#"{"time": 1}"#,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n",
            r#"{"time": 666}"#,
        );
        svc.sim
            .script([Reply::raw(smuggled), Reply::ok_time(2), Reply::ok_time(3)]);
        let mut client = svc.client().await;
        let r = client.get("/api/all?timeout=5000").await;
        assert_eq!(r.status, 200, "{}", r.text());

        let times = all_three_succeed(&mut client).await;
        assert!(
            !times.contains(&666),
            "a smuggled response was used: {times:?}"
        );
        assert_eq!(svc.sim.connections_accepted(), 4);
    }
}

mod idle_connections {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn are_closed_by_fanout_after_the_idle_timeout() {
        let idle_timeout = ms(300);
        let svc = start(|config| config.pool.idle_timeout = idle_timeout).await;
        let mut client = svc.client().await;
        all_three_succeed(&mut client).await;
        let idle_since = Instant::now();
        assert_eq!(svc.sim.connections_open(), 3, "kept for reuse at first");

        // The simulator's own idle cap is 120 s: only fanout can close them this soon.
        assert!(
            svc.sim.wait_connections_open(0, PATIENCE).await,
            "fanout kept idle connections past its idle timeout"
        );
        let lived = idle_since.elapsed();
        assert!(
            lived >= idle_timeout - ms(100),
            "closed after {lived:?}, before the idle timeout of {idle_timeout:?}"
        );

        all_three_succeed(&mut client).await;
        assert_eq!(
            svc.sim.connections_accepted(),
            6,
            "after expiry the next call connects afresh"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_max_idle_are_closed_at_once() {
        let svc = start(|config| config.pool.max_idle = 1).await;
        let mut client = svc.client().await;
        for call in 1..=3 {
            all_three_succeed(&mut client).await;
            assert!(
                svc.sim.wait_connections_open(1, PATIENCE).await,
                "after call {call}, only one idle connection may stay open; {} are",
                svc.sim.connections_open()
            );
        }
        assert_eq!(
            svc.sim.connections_accepted(),
            7,
            "each call after the first reuses the one kept and opens two"
        );
    }
}

mod connection_cap {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_under_a_burst_and_every_call_still_answers_by_its_deadline() {
        const CAP: usize = 4;
        let timeout = ms(5000);
        let svc = Service::start_with(
            SimConfig {
                latency_ms: (20, 50),
                ..quiet_upstream()
            },
            |config| config.pool.max_connections = CAP,
        )
        .await;
        let probe = ConnectionProbe::start(svc.sim.addr().port());

        let calls: Vec<_> = (0..20)
            .map(|_| {
                let addr = svc.addr;
                tokio::spawn(async move {
                    let mut client = Client::connect(addr).await;
                    let started = Instant::now();
                    let r = client
                        .get(&format!("/api/all?timeout={}", timeout.as_millis()))
                        .await;
                    (r.status, started.elapsed(), r.text())
                })
            })
            .collect();
        // Sample the simulator's count while the burst runs (see ConnectionProbe for why it is only shown).
        let burst = async {
            let mut results = Vec::new();
            for call in calls {
                results.push(call.await.expect("call"));
            }
            results
        };
        tokio::pin!(burst);
        let mut sim_max = 0;
        let results = loop {
            tokio::select! {
                results = &mut burst => break results,
                _ = tokio::time::sleep(ms(1)) => sim_max = sim_max.max(svc.sim.connections_open()),
            }
        };
        let mut ok = 0;
        for (status, took, body) in results {
            assert!(status == 200 || status == 504, "{status}: {body}");
            assert!(
                took <= timeout + ms(1000),
                "a call waiting for a connection answered {took:?} after its start"
            );
            ok += usize::from(status == 200);
        }
        let kernel_max = probe.stop();

        eprintln!(
            "{ok}/20 calls succeeded; at most {kernel_max} fanout sockets open, {} at the simulator; {} accepted",
            sim_max,
            svc.sim.connections_accepted()
        );
        assert!(ok > 0, "no call succeeded");
        assert!(
            kernel_max <= CAP,
            "fanout had {kernel_max} upstream connections open at once, over its cap of {CAP}"
        );
        assert_eq!(kernel_max, CAP, "the burst should have reached the cap");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_waiting_for_a_slot_answers_by_its_deadline_and_timed_out_calls_free_theirs() {
        let svc = start(|config| config.pool.max_connections = 3).await;
        svc.sim.script(vec![Reply::fault(Fault::Hang); 3]);

        // The first call takes all three slots, on requests that never get an answer.
        let holder = {
            let addr = svc.addr;
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                client.get("/api/all?timeout=1000").await.status
            })
        };
        assert!(svc.sim.wait_requests(3, PATIENCE).await);

        // The second finds no slot, and its deadline comes long before the holder's.
        let started = Instant::now();
        let r = svc.get("/api/all?timeout=150").await;
        let took = started.elapsed();
        assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));
        assert!(
            took <= ms(150) + ms(500),
            "a queued caller answered after {took:?}"
        );
        assert_eq!(
            svc.sim.requests(),
            3,
            "a caller without a slot sent a request"
        );

        assert_eq!(holder.await.expect("holder"), 504);
        // Their deadline passed: the holder's three slots (and sockets) must be free again.
        all_three_succeed(&mut svc.client().await).await;
        assert_eq!(svc.sim.requests(), 6);
        assert_eq!(svc.sim.connections_accepted(), 6);
    }
}

/// Samples, every millisecond on its own thread, the most upstream connections fanout had open at once:
/// client sockets to the simulator's port that fanout has not closed yet (states
/// ESTABLISHED, SYN_SENT and CLOSE_WAIT in /proc/net/tcp). This is fanout's own count, exactly: a socket
/// leaves these states the moment fanout closes it. The simulator's `connections_open` lags fanout's
/// closes by a scheduling tick (it drops a connection when its task gets to read the EOF), so at the
/// moment fanout closes a connection to hand its slot to a waiter, the simulator can briefly count one
/// more than fanout holds.
///
/// This is a sampling probe of a maximum, not a synchronisation: nothing waits on it.
struct ConnectionProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl ConnectionProbe {
    fn start(upstream_port: u16) -> ConnectionProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut max = 0;
                while !stop.load(Ordering::Relaxed) {
                    max = max.max(open_client_sockets_to(upstream_port));
                    std::thread::sleep(ms(1));
                }
                max
            }
        });
        ConnectionProbe { stop, thread }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("probe thread")
    }
}

/// Client-side TCP sockets connected (or connecting) to `port` on this host and not yet closed by their
/// owner, from /proc/net/tcp and /proc/net/tcp6.
fn open_client_sockets_to(port: u16) -> usize {
    // st column: 01 ESTABLISHED, 02 SYN_SENT, 08 CLOSE_WAIT (the peer closed, we have not yet).
    const OWNER_HAS_NOT_CLOSED: [&str; 3] = ["01", "02", "08"];
    let mut seen = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) =
                (fields.get(1), fields.get(2), fields.get(3))
            else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if remote_port == Some(port) && OWNER_HAS_NOT_CLOSED.contains(state) {
                seen.insert(local.to_string());
            }
        }
    }
    seen.len()
}

/// `--upstream-warm`: a fresh process opens its first upstream connections before `/readyz` says ready,
/// so the first callers a load balancer sends find them in the pool instead of paying for the handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_pool_is_ready_with_its_connections_open_and_the_first_call_reuses_them() {
    let svc = start(|c| c.pool.warm = 5).await;
    let until = tokio::time::Instant::now() + PATIENCE;
    while svc.admin_get("/readyz").await.status != 200 {
        assert!(tokio::time::Instant::now() < until, "never ready");
        tokio::time::sleep(ms(5)).await;
    }
    assert_eq!(svc.sim.connections_accepted(), 5, "opened before ready");
    let mut client = svc.client().await;
    assert_eq!(client.get("/api/all?timeout=3000").await.status, 200);
    assert_eq!(
        svc.sim.connections_accepted(),
        5,
        "the call's 3 requests reused them"
    );
}

/// While the pool is warmed, `/readyz` says so: here the upstream accepts TCP but never answers the TLS
/// handshake, so the warming goes on (for up to a minute) and the service is not ready; a SIGTERM
/// then turns it to draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_warming_while_the_pool_is_warmed() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "https://127.0.0.1:{}/api/work",
        silent.local_addr().expect("addr").port()
    );
    let mut svc = start(|c| {
        c.upstream = fanout::config::UpstreamChoice::Url(url);
        c.pool.warm = 3;
    })
    .await;
    let r = svc.admin_get("/readyz").await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (503, Some("warming"))
    );
    assert_eq!(svc.admin_get("/healthz").await.status, 200);

    // A SIGTERM while warming: this process will never be ready, and says why.
    svc.begin_stop();
    let until = Instant::now() + PATIENCE;
    let r = loop {
        let r = svc.admin_get("/readyz").await;
        if r.json()["status"] != "warming" || Instant::now() > until {
            break r;
        }
        tokio::time::sleep(ms(5)).await;
    };
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (503, Some("draining"))
    );
    drop(silent);
}
