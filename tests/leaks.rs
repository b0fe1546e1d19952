//! Nothing outlives its bound: thousands of API calls whose answer is decided early (by the deadline, by a
//! first success, by a hedge) leave no upstream connection and no file descriptor behind.
//!
//! Each scenario counts this process's open file descriptors before and after. The simulator runs in this
//! process too, so its sockets are in the count: getting back to the baseline means both ends of every
//! upstream connection were closed, and every inbound one as well. Between the two counts fanout's idle
//! timeout (short here) must have passed, since idle connections are kept for reuse until then.
//!
//! The scenarios run one at a time, each on its own runtime (see [`one_at_a_time`]), because a file
//! descriptor count is process-wide.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{hanging_upstream, ms, Client, Service, PATIENCE};
use fanout::api::hedge::Delay;
use fanout::simulator::{Fault, SimConfig};

/// API calls per scenario; three scenarios make about 2,000.
const CALLS: usize = 700;
/// Callers at once, each on its own keep-alive connection to fanout.
const CONCURRENCY: usize = 50;
/// fanout's idle timeout in these tests: idle connections must be gone soon after it.
const IDLE_TIMEOUT: Duration = Duration::from_millis(200);
/// File descriptors the runtime or the resolver may open lazily and keep (a blocking-pool thread's, say).
const FD_SLACK: usize = 4;

/// Runs `scenario` on a runtime of its own, holding a process-wide lock, and drops the runtime before
/// releasing the lock: no other scenario's sockets or runtime can be in this one's count.
fn one_at_a_time(scenario: impl Future<Output = ()>) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(scenario);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's file descriptors")
        .count()
}

/// What the open file descriptors are, for a failure message.
fn describe_fds() -> String {
    let mut kinds = BTreeMap::<String, usize>::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into());
        // "socket:[12345]" -> "socket"
        let kind = target.split(":[").next().unwrap_or("?").to_string();
        *kinds.entry(kind).or_default() += 1;
    }
    format!("{kinds:?}")
}

/// fanout with a short idle timeout in front of a simulator configured as given.
async fn start(sim: SimConfig, tweak: impl FnOnce(&mut fanout::config::Config)) -> Service {
    Service::start_with(sim, |config| {
        config.pool.idle_timeout = IDLE_TIMEOUT;
        tweak(config);
    })
    .await
}

/// Makes `CALLS` API calls, `CONCURRENCY` at a time, the i-th to `target(i)`, and counts the statuses.
/// Every call must answer with one of `allowed` (the client's own wait is bounded by PATIENCE).
async fn make_calls(
    svc: &Service,
    target: fn(usize) -> String,
    allowed: &[u16],
) -> BTreeMap<u16, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (addr, next) = (svc.addr, next.clone());
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut statuses = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= CALLS {
                        return statuses;
                    }
                    let target = target(i);
                    let r = client.get(&target).await;
                    statuses.push((r.status, target, r.text()));
                }
                // `client` is dropped here: its connection to fanout closes.
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for caller in callers {
        for (status, target, body) in caller.await.expect("caller") {
            assert!(
                allowed.contains(&status),
                "{target} answered {status}: {body}"
            );
            *counts.entry(status).or_default() += 1;
        }
    }
    counts
}

/// After the calls and fanout's idle timeout: no connection open at the simulator, and no more file
/// descriptors than before the calls.
async fn assert_nothing_left(svc: &Service, fds_before: usize, calls_ended: Instant) {
    assert!(
        svc.sim.wait_connections_open(0, PATIENCE).await,
        "{} upstream connections still open {:?} after the last call (idle timeout {IDLE_TIMEOUT:?})",
        svc.sim.connections_open(),
        calls_ended.elapsed()
    );
    // Closes are asynchronous (each side's task must run to see its peer's EOF): poll until the count
    // settles. This is a bounded wait on a condition nothing signals, not a synchronising sleep.
    let settled = async {
        while open_fds() > fds_before + FD_SLACK {
            tokio::time::sleep(ms(20)).await;
        }
    };
    if tokio::time::timeout(PATIENCE, settled).await.is_err() {
        panic!(
            "{} file descriptors open, {fds_before} before the calls (+{FD_SLACK} allowed): {}",
            open_fds(),
            describe_fds()
        );
    }
}

/// Starts fanout, counts, makes the calls, and checks that nothing is left.
async fn scenario(
    sim: SimConfig,
    tweak: impl FnOnce(&mut fanout::config::Config),
    target: fn(usize) -> String,
    allowed: &[u16],
) {
    let svc = start(sim, tweak).await;
    let fds_before = open_fds();
    assert_eq!(svc.sim.connections_open(), 0);

    let started = Instant::now();
    let statuses = make_calls(&svc, target, allowed).await;
    let calls_ended = Instant::now();
    eprintln!(
        "{CALLS} calls in {:?}: {statuses:?}; {} upstream connections, {} requests",
        calls_ended - started,
        svc.sim.connections_accepted(),
        svc.sim.requests()
    );
    // Each call should at least have started to reach the upstream. On a busy machine many short
    // deadlines pass before a TLS handshake completes (connections, but few requests); with longer ones
    // connections are reused (requests, but fewer connections). Either count shows the calls got there.
    let reached = svc.sim.connections_accepted().max(svc.sim.requests()) as usize;
    assert!(
        reached >= CALLS / 2,
        "the calls hardly reached the upstream: {} connections, {} requests",
        svc.sim.connections_accepted(),
        svc.sim.requests()
    );

    assert_nothing_left(&svc, fds_before, calls_ended).await;
}

#[test]
fn calls_cut_off_by_their_deadline_while_the_upstream_hangs_leave_nothing_open() {
    one_at_a_time(scenario(
        hanging_upstream(),
        // Hedge early enough that /api/smart's extra requests start (and are cut off) too.
        |config| config.hedge.delay = Delay::Fixed(ms(5)),
        |i| {
            let endpoint = [
                "/api/all",
                "/api/first",
                "/api/smart",
                "/api/within-timeout",
            ][i % 4];
            // Deadlines from 5 to 40 ms cut requests off while connecting, in the TLS handshake, and while
            // waiting for an answer.
            format!("{endpoint}?timeout={}", 5 + (i * 7) % 36)
        },
        &[200, 504],
    ));
}

#[test]
fn first_success_cancels_the_slower_and_failing_requests_and_leaves_nothing_open() {
    one_at_a_time(scenario(
        SimConfig {
            latency_ms: (1, 300),
            // Losers of every kind: slow, hanging, trickling, resetting, answering 500.
            failure_rate: 0.3,
            failure_kinds: vec![Fault::Hang, Fault::SlowBody, Fault::Reset, Fault::Status500],
            ..SimConfig::default()
        },
        |_| {},
        |_| "/api/first?timeout=250".to_string(),
        &[200, 502, 504],
    ));
}

#[test]
fn hedged_and_partial_answers_cancel_the_rest_and_leave_nothing_open() {
    one_at_a_time(scenario(
        SimConfig {
            latency_ms: (1, 120),
            failure_rate: 0.1,
            failure_kinds: vec![Fault::Hang, Fault::SlowBody],
            ..SimConfig::default()
        },
        |config| config.hedge.delay = Delay::Fixed(ms(20)),
        |i| match i % 2 {
            0 => "/api/smart?timeout=400".to_string(),
            _ => "/api/within-timeout?timeout=60".to_string(),
        },
        &[200, 502, 504],
    ));
}

#[test]
fn with_over_100_callers_connected_upstream_requests_run_on_the_upstream_runtime_and_every_one_ends(
) {
    // As the binary runs by default (src/main.rs): an upstream runtime beside the API's.
    let upstream = common::runtime(1);
    let (handle, tasks) = (upstream.handle().clone(), upstream.metrics());
    one_at_a_time(async move {
        let svc = start(hanging_upstream(), |config| {
            config.upstream_runtime = Some(handle)
        })
        .await;
        let fds_before = open_fds();
        let call = b"GET /api/all?timeout=300 HTTP/1.1\r\nHost: x\r\n\r\n";

        // One caller: the requests run on the API's runtime. They linger there for a second after the
        // answer, waiting for the upstream; none is on the upstream runtime.
        let mut client = Client::connect(svc.addr).await;
        client.send(call).await;
        assert_eq!(client.response().await.map(|r| r.status), Some(504));
        assert_eq!(
            tasks.num_alive_tasks(),
            0,
            "a request ran on the upstream runtime"
        );

        // Over SPREAD_ABOVE callers connected (each answered once, so the accept loop has counted it):
        // the next call's requests are tasks of the upstream runtime while they wait.
        let mut idle = Vec::new();
        for _ in 0..=fanout::api::SPREAD_ABOVE {
            let mut c = Client::connect(svc.addr).await;
            assert_eq!(c.get("/nothing-here").await.status, 404);
            idle.push(c);
        }
        client.send(call).await;
        let until = Instant::now() + PATIENCE;
        while tasks.num_alive_tasks() < 3 {
            assert!(
                Instant::now() < until,
                "no request task on the upstream runtime"
            );
            tokio::time::sleep(ms(5)).await;
        }
        assert_eq!(client.response().await.map(|r| r.status), Some(504));
        drop(client);

        let statuses =
            make_calls(&svc, |i| format!("/api/all?timeout={}", 5 + i % 36), &[504]).await;
        assert_eq!(statuses.values().sum::<usize>(), CALLS);
        drop(idle);
        assert_nothing_left(&svc, fds_before, Instant::now()).await;
        // Every request task ends: by its deadline, or after lingering and replacing its connection.
        let until = Instant::now() + PATIENCE;
        while tasks.num_alive_tasks() > 0 {
            assert!(
                Instant::now() < until,
                "{} request tasks still alive",
                tasks.num_alive_tasks()
            );
            tokio::time::sleep(ms(20)).await;
        }
    });
    // Outside any async context, where a runtime may be dropped.
    drop(upstream);
}
