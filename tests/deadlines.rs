//! The timeout contract: an answer is written no later than its deadline, whatever the upstream does.
//!
//! Bounds are generous enough for a busy 2-core machine; the benchmark measures the real overshoot.

mod common;

use std::time::{Duration, Instant};

use common::{get, ms, samples, Service};

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

/// One sample of the service's `/metrics` page.
async fn metric(svc: &Service, key: &str) -> f64 {
    get(&samples(&svc.admin_get("/metrics").await.text()), key)
}

/// The deadline lead (`api::lead`): after a second in which answers were ready late, calls stop waiting
/// earlier, so that their answers are written by their deadlines. The lateness is made here by blocking
/// the runtime's one thread while 110 deadlines pass.
#[tokio::test(flavor = "current_thread")]
async fn after_a_second_of_late_answers_calls_stop_waiting_earlier() {
    let svc = Service::start_with(common::hanging_upstream(), |_| {}).await;
    let addr = svc.addr;
    let calls: Vec<_> = (0..110)
        .map(|_| {
            tokio::spawn(async move {
                common::Client::connect(addr)
                    .await
                    .get("/api/all?timeout=1000")
                    .await
                    .status
            })
        })
        .collect();
    // Every call's head is parsed, so every deadline is at most a second away...
    let until = Instant::now() + Duration::from_secs(10);
    while metric(&svc, "fanout_http_server_active_requests").await < 110.0 {
        assert!(Instant::now() < until, "the 110 calls did not all arrive");
        tokio::task::yield_now().await;
    }
    // ...and all of them pass while nothing runs: each answer is ready at least 50 ms late.
    std::thread::sleep(Duration::from_millis(1050));
    for call in calls {
        assert_eq!(call.await.unwrap(), 504);
    }
    assert_eq!(
        metric(&svc, "fanout_deadline_lead_seconds").await,
        0.001,
        "the lead changes only once the second is over"
    );

    // Once the second is over, the next call that ends sets the lead: the most it may be, 20 ms.
    let until = Instant::now() + Duration::from_secs(5);
    let lead = loop {
        assert_eq!(svc.get("/api/all?timeout=0").await.status, 504);
        let lead = metric(&svc, "fanout_deadline_lead_seconds").await;
        if lead > 0.001 || Instant::now() > until {
            break lead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lead, 0.02);

    // A call now stops waiting 20 ms (a tenth of its timeout) before its deadline.
    let t = Instant::now();
    assert_eq!(svc.get("/api/all?timeout=200").await.status, 504);
    let took = t.elapsed();
    assert!(
        took >= ms(179) && took < ms(195),
        "took {took:?}, not about 180 ms"
    );
}
