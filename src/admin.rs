//! The admin listener: what operators and their machines ask of fanout, on its own address.
//!
//! | path (GET, HEAD) | answers                                                                     |
//! | ---------------- | --------------------------------------------------------------------------- |
//! | `/metrics`       | every metric in the Prometheus text exposition format (version 0.0.4)        |
//! | `/healthz`       | `200` while the process runs (a liveness probe: restart it if this fails)    |
//! | `/readyz`        | `200` while accepting work; `503` while the pool is warmed at start          |
//! |                  | (`--upstream-warm`), and from the moment a shutdown begins (a readiness     |
//! |                  | probe: send it no calls)                                                     |
//! | `/upstream`      | the upstream's last 60 seconds as JSON: outcomes, success ratio, latency;   |
//! |                  | the pool; `/api/smart`'s hedge delay now                                    |
//!
//! It is apart from the API on purpose. It is never shed: when the API is overloaded is exactly when its
//! metrics matter, and a liveness probe that fails under load gets a busy process restarted. It has its own
//! small bounds instead ([`MAX_CONNECTIONS`], [`READ_TIMEOUT`], [`MAX_HEAD_BYTES`]): its callers are a few
//! probes and scrapers, not the public.
//!
//! Each connection gets one answer and is closed (`Connection: close`): probes and a scrape every few
//! seconds do not need keep-alive, and the loop stays short. The request head is parsed by the same code as
//! the API's (`server::parse`, under the admin's own limits), routed by the same first steps
//! (`RequestHead::routable`: 501 for a method it does not know, `OPTIONS *`, 400 for a target that is no
//! path) and the same 405 for a method other than GET and HEAD, and the answer is written by the same
//! `Response`, without its content for a HEAD.
//!
//! It runs until its `stop` future completes, which `fanout::serve` does once the API server has drained:
//! `/readyz` says 503 and `/metrics` keeps answering for the whole drain.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout, Duration};

use crate::api::Api;
use crate::http::request::RequestHead;
use crate::http::response::{Persistence, Response};
use crate::server::{self, Limits};

/// Admin connections served at once; more are closed at once (a scraper retries at its next interval).
pub const MAX_CONNECTIONS: usize = 32;
/// Time for a client to send its request head and take the answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A scraper's request head is a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// The admin's bounds on a request head: [`MAX_HEAD_BYTES`] and 32 header fields, the API's on the target.
fn limits() -> Limits {
    Limits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: MAX_HEADERS,
        ..Limits::default()
    }
}

/// The Prometheus text format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoints on `listener` until `stop` completes; then aborts what is still running.
///
/// Cancel safety: owns every connection task (a `JoinSet`); dropped, it closes them all.
pub async fn serve(listener: TcpListener, api: Arc<Api>, stop: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    // Out of file descriptors, say: retrying at once would spin.
                    tokio::time::sleep(crate::server::ACCEPT_BACKOFF).await;
                    continue;
                };
                // Over the cap the connection is dropped (closed), never queued.
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let api = api.clone();
                connections.spawn(async move {
                    let _ = timeout(READ_TIMEOUT, answer(stream, &api)).await;
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Reads one request head and writes its answer.
async fn answer(mut stream: TcpStream, api: &Api) {
    let limits = limits();
    let mut buf = Vec::with_capacity(1024);
    // `parse` refuses a head still arriving past the limits, so the buffer stays bounded.
    let (response, head_only) = loop {
        buf.reserve(1024);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match server::parse(&buf, &limits) {
            Ok(None) => continue,
            Ok(Some((head, _))) => break (route(api, &head), head.is_head()),
            Err(refusal) => break (refusal, server::refused_head_only(&buf)),
        }
    };
    let _ = stream
        .write_all(&response.encode(head_only, Persistence::Close))
        .await;
    let _ = stream.shutdown().await;
}

fn route(api: &Api, head: &RequestHead) -> Response {
    let (path, _query) = match head.routable() {
        Ok(routed) => routed,
        Err(response) => return response,
    };
    let known = ["/metrics", "/healthz", "/readyz", "/upstream"];
    if !known.contains(&path) {
        return Response::error(
            404,
            "not_found",
            "admin endpoints: /metrics, /healthz, /readyz, /upstream",
        );
    }
    if let Some(response) = head.not_get_or_head(path) {
        return response;
    }
    let telemetry = api.telemetry();
    match path {
        "/metrics" => {
            Response::with_type(200, METRICS_CONTENT_TYPE, api.render_metrics().into_bytes())
        }
        "/healthz" => Response::json(200, br#"{"status":"alive"}"#.to_vec()),
        "/readyz" if telemetry.is_ready() => Response::json(200, br#"{"status":"ready"}"#.to_vec()),
        // Draining outranks warming: a SIGTERM while the pool warms means this process will never be ready.
        "/readyz" if telemetry.is_draining() => {
            Response::json(503, br#"{"status":"draining"}"#.to_vec())
        }
        "/readyz" => Response::json(503, br#"{"status":"warming"}"#.to_vec()),
        _ => {
            let mut view = telemetry.health.to_json();
            let pool = api.upstream_stats();
            view["pool"] = serde_json::json!({
                "open": pool.open,
                "idle": pool.idle,
                "connects": pool.connects,
                "reuses": pool.reuses,
                "stale_retries": pool.stale_retries,
                "waits": pool.slot_waits,
            });
            view["hedge"] = api.hedging().to_json();
            Response::json(200, view.to_string().into_bytes())
        }
    }
}
