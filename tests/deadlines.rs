//! The timeout contract: an answer is written no later than its deadline, whatever the upstream does.
//!
//! Bounds are generous enough for a busy 2-core machine; the benchmark measures the real overshoot.

mod common;

use std::time::{Duration, Instant};

use common::{ms, Service};

/// How late an answer may be in these tests (the benchmark's target is far tighter).
const SLACK: Duration = Duration::from_millis(60);

async fn assert_answers_at_the_deadline(endpoint: &str, expected_status: u16) {
    let svc = Service::start_with(common::hanging_upstream(), |_| {}).await;
    let mut client = svc.client().await;
    for timeout in [0, 50, 250] {
        let t = Instant::now();
        let r = client.get(&format!("{endpoint}?timeout={timeout}")).await;
        let took = t.elapsed();
        assert_eq!(
            r.status,
            expected_status,
            "{endpoint} timeout={timeout}: {}",
            r.text()
        );
        let deadline = ms(timeout);
        assert!(
            took + ms(1) >= deadline,
            "{endpoint} answered {took:?} before its {timeout} ms deadline"
        );
        assert!(
            took <= deadline + SLACK,
            "{endpoint} answered {:?} after its deadline",
            took - deadline
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_answers_504_at_the_deadline_when_the_upstream_hangs() {
    assert_answers_at_the_deadline("/api/all", 504).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_answers_504_at_the_deadline_when_the_upstream_hangs() {
    assert_answers_at_the_deadline("/api/first", 504).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_timeout_answers_an_empty_list_at_the_deadline_when_the_upstream_hangs() {
    assert_answers_at_the_deadline("/api/within-timeout", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_answers_504_at_the_deadline_when_the_upstream_hangs() {
    assert_answers_at_the_deadline("/api/smart", 504).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_all_keep_their_deadline() {
    let svc = Service::start_with(common::hanging_upstream(), |_| {}).await;
    let addr = svc.addr;
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let endpoint = [
                "/api/all",
                "/api/first",
                "/api/within-timeout",
                "/api/smart",
            ][i % 4];
            tokio::spawn(async move {
                let mut c = common::Client::connect(addr).await;
                let t = Instant::now();
                let r = c.get(&format!("{endpoint}?timeout=300")).await;
                (r.status, t.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (status, took) = call.await.unwrap();
        assert!(status == 504 || status == 200, "{status}");
        assert!(
            took >= ms(299) && took <= ms(300) + SLACK * 2,
            "took {took:?}"
        );
    }
}
