//! HTTP/1.1 on the inbound side (RFC 9110 and 9112), over raw sockets: persistence, pipelining, framing,
//! and the malformed requests a server must refuse.

mod common;

use common::{Client, Service};

/// Sends `raw` on a fresh connection and returns the one response.
async fn exchange(svc: &Service, raw: &str) -> (common::Response, Client) {
    let mut c = svc.client().await;
    c.send(raw.as_bytes()).await;
    let r = c.response().await.expect("a response");
    (r, c)
}

/// Sends `parts`, one write each, and asserts the answer is `400 bad_request` and the connection closes.
async fn assert_rejected_and_closed(svc: &Service, parts: &[&[u8]]) {
    let shown = String::from_utf8_lossy(&parts.concat()).into_owned();
    let mut c = svc.client().await;
    for part in parts {
        c.send(part).await;
    }
    let r = c.response().await.expect("a response");
    assert_eq!(r.status, 400, "{shown:?}: {}", r.text());
    assert_eq!(r.error_code(), "bad_request", "{shown:?}");
    assert_eq!(r.header("connection"), Some("close"), "{shown:?}");
    assert!(
        c.closed_by_server().await,
        "{shown:?} left the connection open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_content_length_date_and_http11() {
    let svc = Service::start().await;
    let r = svc.get("/api/within-timeout?timeout=1000").await;
    assert_eq!(r.version_minor, 1);
    assert_eq!(
        r.header("content-length").map(str::to_string),
        Some(r.body.len().to_string())
    );
    assert!(
        r.header("date")
            .is_some_and(|d| d.ends_with(" GMT") && d.len() == 29),
        "{:?}",
        r.header("date")
    );
    let r = svc.get("/nope").await;
    assert!(r.header("date").is_some() && r.header("content-length").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_many_requests() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    for _ in 0..5 {
        let r = c.get("/api/first?timeout=1000").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    c.send(
        b"GET /api/within-timeout?timeout=1000 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /api/all?timeout=abc HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /api/first?timeout=1000 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(c.response().await.expect("response").status);
    }
    assert_eq!(got, vec![200, 404, 400, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let svc = Service::start().await;
    let (r, mut c) = exchange(
        &svc,
        "GET /api/all?timeout=1000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_closes_unless_keep_alive_is_asked() {
    let svc = Service::start().await;
    let (r, mut c) = exchange(&svc, "GET /api/first?timeout=1000 HTTP/1.0\r\n\r\n").await;
    assert_eq!((r.status, r.version_minor), (200, 1));
    assert!(c.closed_by_server().await);

    let (r, mut c) = exchange(
        &svc,
        "GET /api/first?timeout=1000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /api/first?timeout=1000 HTTP/1.0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.expect("second response").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_are_accepted() {
    let svc = Service::start().await;
    let (r, _) = exchange(
        &svc,
        "GET http://example.com/api/within-timeout?timeout=0 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    // The scheme is case-insensitive (RFC 3986 §3.1), and the authority ends at the first "/", "?" or "#".
    let (r, _) = exchange(
        &svc,
        "GET HTTP://example.com/api/within-timeout?timeout=0 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    let (r, _) = exchange(
        &svc,
        "GET http://example.com?x=/api/within-timeout&timeout=0 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404, "the path is empty, not /api/within-timeout");
    // RFC 9110 §4.2.1 and §4.2.4: no host, or userinfo, make the target invalid.
    for target in ["http:///api/all", "http://user:pw@example.com/api/all"] {
        let raw = format!("GET {target}?timeout=0 HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let (r, _) = exchange(&svc, &raw).await;
        assert_eq!(r.status, 400, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_connection_is_closed() {
    let svc = Service::start().await;
    for raw in [
        "GARBAGE\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\n\r\n",                          // no Host
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",     // two Hosts
        "GET /api/all?timeout=5 HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",     // in any version
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost : a\r\n\r\n",               // space before colon
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",     // obsolete line folding
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",          // bare CR
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nX\0: y\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", // NUL in a value
        "GET /api/all?timeout=5 HTTP/1.1\r\n X: y\r\nHost: a\r\n\r\n", // whitespace before the first field
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", // present, chunked not final
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a:8x\r\n\r\n",                 // port not digits
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: [::1\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a@b\r\n\r\n",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a%zz\r\n\r\n",                // not pct-encoded
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: [hello]\r\n\r\n",             // neither IPv6 nor IPvFuture
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\u{a0}\r\n\r\n",             // a no-break space is not OWS
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\u{a0}\r\n\r\nhello",
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\u{a0}\r\n\r\n0\r\n\r\n",
        "GET /api/all?timeout=5 http/1.1\r\nHost: a\r\n\r\n",                    // HTTP-name is case-sensitive
        "GET /api/all?timeout=5 HTTP/11.0\r\nHost: a\r\n\r\n",                  // one digit each
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost:\r\n\r\n",                        // an empty authority
        "GET /api/all\u{e9}?timeout=5 HTTP/1.1\r\nHost: a\r\n\r\n",               // a non-ASCII target
    ] {
        assert_rejected_and_closed(&svc, &[raw.as_bytes()]).await;
    }
    assert_eq!(svc.sim.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_asterisk_lists_the_methods_the_server_allows() {
    let svc = Service::start().await;
    let (r, mut c) = exchange(&svc, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!((r.status, r.header("allow")), (200, Some("GET, HEAD")));
    assert_eq!(
        c.get("/api/within-timeout?timeout=0").await.status,
        200,
        "the connection stays usable"
    );
    let (r, _) = exchange(&svc, "GET * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status, 400, "the asterisk form is for OPTIONS only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_http_version_gets_505() {
    let svc = Service::start().await;
    for version in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"] {
        let (r, mut c) = exchange(
            &svc,
            &format!("GET /api/all?timeout=5 {version}\r\nHost: a\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 505, "{version}");
        assert_eq!(r.error_code(), "http_version_not_supported");
        assert!(c.closed_by_server().await, "{version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_http1_minor_version_is_served_as_http11() {
    // RFC 9110 §6.2: a recipient SHOULD process a higher minor version of a major version it implements
    // as the highest minor version it implements; 505 is for a major version it does not support.
    let svc = Service::start().await;
    let (r, mut c) = exchange(
        &svc,
        "GET /api/within-timeout?timeout=0 HTTP/1.2\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.version_minor), (200, 1));
    assert_eq!(r.header("connection"), None, "persistent, as HTTP/1.1");
    assert_eq!(c.get("/api/within-timeout?timeout=0").await.status, 200);

    // A version that arrives in pieces is judged once it is whole.
    for (first, rest, status) in [
        ("HTTP/1.", "3\r\nHost: a\r\n\r\n", 200),
        ("HTTP/2", ".0\r\nHost: a\r\n\r\n", 505),
        ("HTTP/1.1", "1\r\nHost: a\r\n\r\n", 400),
    ] {
        let mut c = svc.client().await;
        c.send(format!("GET /api/within-timeout?timeout=0 {first}").as_bytes())
            .await;
        tokio::time::sleep(common::ms(100)).await;
        c.send(rest.as_bytes()).await;
        let r = c.response().await.expect("a response");
        assert_eq!(r.status, status, "{first}{rest:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_is_read_and_discarded() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    c.send(
        b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(c.response().await.expect("response").status, 200);
    let r = c.get("/api/within-timeout?timeout=0").await;
    assert_eq!(r.status, 200, "the body was taken for the next request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_an_interim_response() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    c.send(b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n").await;
    let interim = c.response().await.expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.send(b"hi").await;
    assert_eq!(c.response().await.expect("final response").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_expect_100_continue_gets_no_interim_response() {
    // RFC 9110 §10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0 request; §15.2: it
    // MUST NOT send a 1xx response to an HTTP/1.0 client.
    let svc = Service::start().await;
    let mut c = svc.client().await;
    c.send(b"GET /api/within-timeout?timeout=0 HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n").await;
    tokio::time::sleep(common::ms(200)).await; // the head is read alone, as when the server would send 100
    c.send(b"hi").await;
    let r = c.response().await.expect("final response");
    assert_eq!(
        r.status, 200,
        "an interim response went to an HTTP/1.0 client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_gets_no_content_even_when_refused() {
    // RFC 9110 §9.3.2: the server MUST NOT send content in the response to HEAD, error responses included.
    let svc = Service::start().await;
    let long_target = format!(
        "HEAD /api/all?pad={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "x".repeat(9000)
    );
    for raw in [
        "HEAD /api/all?timeout=5 HTTP/1.1\r\n\r\n", // no Host
        "HEAD /api/all?timeout=5 HTTP/1.1\r\nHost : a\r\n\r\n",
        "HEAD /api/all?timeout=5 HTTP/2.0\r\nHost: a\r\n\r\n",
        "HEAD /api/all HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n",
        &long_target,
    ] {
        let mut c = svc.client().await;
        c.send(raw.as_bytes()).await;
        let r = c.head_response().await.expect("a response");
        assert!(r.status >= 400, "{raw:.40?}: {}", r.status);
        assert!(
            r.header("content-length").is_some_and(|l| l != "0"),
            "{raw:.40?}: the error's Content-Length is kept"
        );
        assert!(
            c.closed_by_server().await,
            "{raw:.40?}: content followed the head of a HEAD response"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_after_connection_close_is_not_answered() {
    // RFC 9112 §9.6: after a "close" request the server MUST NOT process further requests on the connection.
    let svc = Service::start().await;
    let mut c = svc.client().await;
    c.send(
        b"GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n\
          GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    let r = c.response().await.expect("the first response");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(
        c.closed_by_server().await,
        "the second request was answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_414_and_431() {
    let svc = Service::start().await;
    let (r, _) = exchange(
        &svc,
        "GET /api/all HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413);
    let long_target = format!(
        "GET /api/all?timeout=5&pad={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "x".repeat(9000)
    );
    let (r, _) = exchange(&svc, &long_target).await;
    assert_eq!(r.status, 414);
    let big_header = format!(
        "GET /api/all?timeout=5 HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "x".repeat(17000)
    );
    let (r, _) = exchange(&svc, &big_header).await;
    assert_eq!(r.status, 431);
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let (r, _) = exchange(
        &svc,
        &format!("GET /api/all?timeout=5 HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
}

/// Found by the fuzz target `request_head`'s property, on an edge case of its corpus
/// (`fuzz/corpus/request_head/crash-version-arriving-over-the-head-limit`): a request line whose version was
/// still arriving ("HTTP/2", no line end yet) was waited for however large it was, past `--max-head-bytes`,
/// until the head timeout. Now its bounds are those of any head still arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_whose_version_is_still_arriving_is_held_within_the_head_limit() {
    let svc =
        Service::start_with(common::quiet_upstream(), |c| c.limits.max_head_bytes = 200).await;
    let mut c = svc.client().await;
    let t = std::time::Instant::now();
    c.send(format!("GET /{} HTTP/2", "x".repeat(300)).as_bytes())
        .await;
    let r = c.response().await.expect("a response");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (431, "header_fields_too_large")
    );
    assert!(
        t.elapsed() < common::ms(2000),
        "answered after {:?}",
        t.elapsed()
    );
    assert!(c.closed_by_server().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_long_target_gets_414_whatever_else_is_wrong() {
    let svc = Service::start().await;
    let pad = |n| "x".repeat(n);
    // An empty line first (which is skipped) must not count as the end of the request line.
    let after_empty_line = format!("\r\nGET /{} HTTP/1.1\r\nHost: t\r\n\r\n", pad(30000));
    let (r, _) = exchange(&svc, &after_empty_line).await;
    assert_eq!(r.status, 414);
    // A long target and a large head: the target is what cannot be parsed.
    let both = format!(
        "GET /{} HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        pad(9000),
        pad(8000)
    );
    let (r, _) = exchange(&svc, &both).await;
    assert_eq!(r.status, 414);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_longer_than_the_target_limit_is_a_malformed_request_line() {
    // Not an unknown method (501): a "method" of tens of KB is a request line past any bound (RFC 9110
    // §2.3), 400 and close, however it arrives: endless, whole with a short head, or in two writes.
    let svc = Service::start().await;
    let method = |n| "M".repeat(n);
    // Tens of KB with no end in sight: refused once the limit is passed, before the line is all in.
    let endless = format!("{} / HTTP/1.1\r\nHost: t\r\n\r\n", method(20000));
    // 10 KB in a head within its own limit: refused the same, whether parsed whole or in two writes.
    let whole = format!("{} / HTTP/1.1\r\nHost: t\r\n\r\n", method(10000));
    let (first, rest) = whole.as_bytes().split_at(5000);
    assert_rejected_and_closed(&svc, &[endless.as_bytes()]).await;
    assert_rejected_and_closed(&svc, &[whole.as_bytes()]).await;
    assert_rejected_and_closed(&svc, &[first, rest]).await;
    // A method of a plausible length that the server does not know is still not implemented.
    let (r, mut c) = exchange(&svc, "PROPFIND / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(r.status, 501);
    assert_eq!(c.get("/api/within-timeout?timeout=0").await.status, 200);
}

/// A request with a chunked body, for `/api/within-timeout?timeout=0` (answered at once with `200 []`).
fn chunked(body: &str) -> String {
    format!(
        "GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_extensions_outside_the_grammar_get_400_and_close() {
    // RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ). A line
    // that two parsers could skip differently is where they disagree on where the body ends.
    let svc = Service::start().await;
    for ext in [
        ";",            // no name
        "; ",           // no name, BWS
        ";a(b",         // not a token
        ";=b",          // a value with no name
        ";a=",          // "=" with no value
        ";a=b\x01c",    // a control character
        ";a=\"b\x7f\"", // ... in a quoted string
        ";a=\"b",       // an unterminated quoted string
        " ",            // whitespace after the size, no extension after it
        ";a=b ",        // whitespace before the CRLF, which the grammar does not put there
    ] {
        let first = chunked(&format!("1{ext}\r\nx\r\n0\r\n\r\n"));
        let later = chunked(&format!("1\r\nx\r\n1{ext}\r\ny\r\n0\r\n\r\n"));
        let last = chunked(&format!("1\r\nx\r\n0{ext}\r\n\r\n"));
        for raw in [first, later, last] {
            assert_rejected_and_closed(&svc, &[raw.as_bytes()]).await;
        }
    }
    // The bad byte in a second write, after a first that was valid so far. (The decoder reads a byte at a
    // time; its unit tests split every input at every byte.)
    let head = chunked("");
    assert_rejected_and_closed(&svc, &[head.as_bytes(), b"1;na", b"(me\r\nx\r\n0\r\n\r\n"]).await;
    assert_rejected_and_closed(&svc, &[head.as_bytes(), b"1 ", b"\r\nx\r\n0\r\n\r\n"]).await;
    assert_eq!(svc.sim.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_chunk_extensions_are_accepted_and_the_connection_goes_on() {
    let svc = Service::start().await;
    let body = "1;name=value\r\nx\r\n3 ; name = \"quoted value\" ;flag\r\nabc\r\n0;last\r\n\r\n";
    // Read in one write with the next request behind it, and in pieces split inside an extension.
    let pipelined = format!(
        "{}GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\n\r\n",
        chunked(body)
    );
    let mut c = svc.client().await;
    c.send(pipelined.as_bytes()).await;
    for _ in 0..2 {
        let r = c.response().await.expect("a response");
        assert_eq!((r.status, r.text().as_str()), (200, "[]"));
        assert_eq!(r.header("connection"), None);
    }
    let whole = chunked(body);
    let split = whole.len() - body.len() + 8; // inside "name=value"
    c.send(&whole.as_bytes()[..split]).await;
    c.send(&whole.as_bytes()[split..]).await;
    assert_eq!(c.response().await.expect("a response").status, 200);
    assert_eq!(c.get("/api/within-timeout?timeout=0").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_host_gets_400_unless_the_target_names_the_host() {
    // RFC 9112 §3.3: in origin-form Host is the target's authority; RFC 9110 §4.2.1: an http URI with an
    // empty host MUST be rejected as invalid.
    let svc = Service::start().await;
    for raw in [
        "GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost:\r\n\r\n",
        "GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: \r\n\r\n",
        "GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: :80\r\n\r\n",
        "GET /api/within-timeout?timeout=0 HTTP/1.0\r\nHost:\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n",
    ] {
        assert_rejected_and_closed(&svc, &[raw.as_bytes()]).await;
    }
    // RFC 9112 §3.2.2: with an absolute-form target the server MUST ignore Host; the target names the host.
    let (r, mut c) = exchange(
        &svc,
        "GET http://example.com/api/within-timeout?timeout=0 HTTP/1.1\r\nHost:\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.header("connection")), (200, None));
    assert_eq!(c.get("/api/within-timeout?timeout=0").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_byte_outside_the_uri_grammar_is_a_bad_request_line() {
    // RFC 9112 §3.2 and RFC 3986: the target is ASCII URI characters. A raw UTF-8 path is a 400, not a 404.
    let svc = Service::start().await;
    let request = |target: &[u8]| [b"GET ", target, b" HTTP/1.1\r\nHost: t\r\n\r\n"].concat();
    for target in [
        &b"/api/within-timeout\xc3\xa9?timeout=0"[..],
        b"/api/within-timeout?timeout=0&x=\xc3\xa9",
        b"/api/within\x01-timeout?timeout=0",
        b"/api/within\x7f-timeout?timeout=0",
        b"/api/within-timeout?timeout=0&x={}",
        b"/api/within-timeout?timeout=0&x=a|b",
        b"/api/within-timeout?timeout=0&x=\"a\"",
    ] {
        assert_rejected_and_closed(&svc, &[&request(target)]).await;
    }
    // A UTF-8 character split across two writes.
    let raw = request(b"/caf\xc3\xa9");
    assert_rejected_and_closed(&svc, &[&raw[..8], &raw[8..]]).await;
    assert_eq!(svc.sim.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_count_limit_is_exact() {
    // The default --max-headers is 64, Host included: 64 fields are parsed, the 65th is refused.
    let svc = Service::start().await;
    let request = |extra: usize| {
        let fields: String = (0..extra).map(|i| format!("X-{i}: y\r\n")).collect();
        format!("GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\n{fields}\r\n")
    };
    let (r, _) = exchange(&svc, &request(63)).await;
    assert_eq!(r.status, 200, "64 fields are within the limit");
    let (r, _) = exchange(&svc, &request(64)).await;
    assert_eq!(r.status, 431, "65 fields are one too many");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_empty_lines_are_ignored() {
    let svc = Service::start().await;
    let (r, _) = exchange(
        &svc,
        "\r\nGET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_call_in_flight_finish() {
    let svc = Service::start().await;
    svc.sim.script([
        fanout::simulator::Reply::ok_time(1).after(common::ms(300)),
        fanout::simulator::Reply::ok_time(2).after(common::ms(300)),
        fanout::simulator::Reply::ok_time(3).after(common::ms(300)),
    ]);
    let mut busy = svc.client().await;
    busy.send(b"GET /api/all?timeout=5000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut idle = svc.client().await;
    assert_eq!(idle.get("/api/within-timeout?timeout=0").await.status, 200);
    assert!(svc.sim.wait_requests(3, common::PATIENCE).await);
    let addr = svc.addr;
    let stopping = tokio::spawn(svc.stop());
    assert!(
        idle.closed_by_server().await,
        "an idle connection stays open during the drain"
    );
    let r = busy
        .response()
        .await
        .expect("the call in flight is answered");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    stopping.await.unwrap().expect("serve ends cleanly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_delay_connections_are_served_and_told_to_close() {
    // A delay far longer than the test: all of it happens while the listener is still open.
    let mut svc = Service::start_with(common::quiet_upstream(), |c| {
        c.limits.drain_delay = std::time::Duration::from_secs(600)
    })
    .await;
    let mut kept = svc.client().await;
    let r = kept.get("/api/within-timeout?timeout=0").await;
    assert_eq!((r.status, r.header("connection")), (200, None));
    svc.begin_stop();
    // The kept-alive connection is not closed under a request that may be on its way: each request
    // is answered, until the drain has begun and the answer says it is the last one.
    let last = tokio::time::timeout(common::PATIENCE, async {
        loop {
            let r = kept.get("/api/within-timeout?timeout=0").await;
            assert_eq!(r.status, 200);
            if r.header("connection").is_some() {
                return r;
            }
            tokio::time::sleep(common::ms(5)).await;
        }
    })
    .await
    .expect("the drain begins");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(
        kept.closed_by_server().await,
        "closed after its last answer"
    );
    assert_eq!(svc.admin_get("/readyz").await.status, 503);
    // New connections are still accepted and answered, once each.
    let (r, mut new) = exchange(
        &svc,
        "GET /api/within-timeout?timeout=0 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(new.closed_by_server().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_and_idle_connections_close_once_the_drain_delay_has_passed() {
    let delay = common::ms(500);
    let svc = Service::start_with(common::quiet_upstream(), |c| c.limits.drain_delay = delay).await;
    let mut idle = svc.client().await;
    assert_eq!(idle.get("/api/within-timeout?timeout=0").await.status, 200);
    let addr = svc.addr;
    let began = tokio::time::Instant::now();
    let stopping = tokio::spawn(svc.stop());
    assert!(idle.closed_by_server().await, "closed after the delay");
    assert!(
        began.elapsed() >= delay,
        "the idle connection was closed {:?} after the drain began, before the delay",
        began.elapsed()
    );
    stopping.await.unwrap().expect("serve ends cleanly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}
