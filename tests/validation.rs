//! Requests the API refuses: a bad `timeout`, an unknown path, a method other than GET or HEAD.
//! None of them may reach the upstream.

mod common;

use common::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_timeout_gets_400_naming_the_parameter_and_range() {
    let svc = Service::start().await;
    for query in [
        "",
        "?",
        "?other=1",
        "?timeout",
        "?timeout=",
        "?timeout=-1",
        "?timeout=1.5",
        "?timeout=abc",
        "?timeout=%2D5",
        "?timeout=1e3",
        "?timeout=60001",
        "?timeout=18446744073709551616",
        "?timeout=5&timeout=5",
        "?timeout=5%20",
    ] {
        for endpoint in [
            "/api/all",
            "/api/first",
            "/api/within-timeout",
            "/api/smart",
        ] {
            let r = svc.get(&format!("{endpoint}{query}")).await;
            assert_eq!(r.status, 400, "{endpoint}{query}: {}", r.text());
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.error_code(), "bad_request");
            let message = r.json()["message"].as_str().unwrap_or_default().to_string();
            assert!(
                message.contains("timeout") && message.contains("0 to 60000"),
                "{query}: {message}"
            );
        }
    }
    assert_eq!(svc.sim.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_follows_configuration() {
    let svc = Service::start_with(common::quiet_upstream(), |c| c.max_timeout_ms = 1000).await;
    let r = svc.get("/api/within-timeout?timeout=1001").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("0 to 1000"));
    assert_eq!(
        svc.get("/api/within-timeout?timeout=1000").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_parameters_are_ignored_and_the_query_is_percent_decoded() {
    let svc = Service::start().await;
    let r = svc
        .get("/api/within-timeout?x=%zz&%74imeout=%32%30%30&y")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.times().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_gets_404() {
    let svc = Service::start().await;
    for path in [
        "/",
        "/api",
        "/api/all/",
        "/api/ALL?timeout=5",
        "/api/work",
        "/favicon.ico",
    ] {
        let r = svc.get(path).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{path}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_method_gets_405_with_allow() {
    let svc = Service::start().await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let mut c = svc.client().await;
        c.send(
            format!(
                "{method} /api/all?timeout=100 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let r = c.response().await.expect("response");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (405, "method_not_allowed"),
            "{method}"
        );
        assert!(
            r.header("allow").is_some_and(|a| a.contains("GET")),
            "{method}: Allow {:?}",
            r.header("allow")
        );
    }
    assert_eq!(svc.sim.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecognised_method_gets_501_on_any_target() {
    // RFC 9110 §9.1: a method the server does not recognise or implement SHOULD get 501; 405 is for a
    // method it knows but the resource does not support (§15.5.6). Methods are case-sensitive.
    let svc = Service::start().await;
    for request in [
        "BREW /api/all?timeout=100",
        "get /api/all?timeout=100",
        "FOO /nope",
        "FOO *",
        "CONNECT example.com:443",
    ] {
        let mut c = svc.client().await;
        c.send(format!("{request} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await;
        let r = c.response().await.expect("response");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (501, "not_implemented"),
            "{request}"
        );
        assert_eq!(
            c.get("/api/within-timeout?timeout=0").await.status,
            200,
            "{request}: the connection stays usable"
        );
    }
    assert_eq!(svc.sim.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_get_headers_without_content() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    c.send(b"HEAD /api/within-timeout?timeout=2000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let r = c.head_response().await.expect("response");
    assert_eq!(r.status, 200);
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(
        length > 2,
        "Content-Length of the GET answer expected, got {length}"
    );
    // The connection is still usable and no content was sent: the next response parses.
    let r = c.get("/api/within-timeout?timeout=0").await;
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));
}
