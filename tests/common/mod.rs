//! Shared test fixtures: the real service on 127.0.0.1:0 in front of a scripted simulated upstream over
//! TLS, and a raw HTTP/1.1 client that shows exactly what went over the wire.
#![allow(dead_code)] // each test file uses its own part of this

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use fanout::config::{Config, UpstreamChoice};
use fanout::log::{MemoryLog, Sink};
use fanout::simulator::{self, SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A multi-threaded runtime with `threads` workers, as `src/main.rs` builds them, for tests that run the
/// service on more than one runtime (each to be dropped outside any async context).
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Waits until `n` tasks are alive on the runtime `tasks` describes (the shed runtime's parked
/// connections, say); false after [`PATIENCE`].
pub async fn wait_alive_tasks(tasks: &tokio::runtime::RuntimeMetrics, n: usize) -> bool {
    let until = tokio::time::Instant::now() + PATIENCE;
    while tasks.num_alive_tasks() != n {
        if tokio::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(ms(2)).await;
    }
    true
}

/// Longest any single test step may wait before the test fails (not a sleep: an upper bound).
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The samples of a Prometheus text page: `name{labels}` (as written) to value.
pub fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// One sample of [`samples`]; the test fails if it is missing.
pub fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

/// A simulator whose every request hangs: only the deadline can end a call.
pub fn hanging_upstream() -> SimConfig {
    SimConfig {
        latency_ms: (0, 0),
        failure_rate: 1.0,
        failure_kinds: vec![fanout::simulator::Fault::Hang],
        ..SimConfig::default()
    }
}

/// A simulator answering at once, never failing, over TLS: tests script what they need on top.
pub fn quiet_upstream() -> SimConfig {
    SimConfig {
        latency_ms: (0, 0),
        failure_rate: 0.0,
        ..SimConfig::default()
    }
}

/// fanout running in-process against its own simulator.
pub struct Service {
    pub sim: Simulator,
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    /// The service's log lines (kept in memory, not printed).
    pub log: MemoryLog,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

impl Service {
    pub async fn start() -> Service {
        Service::start_with(quiet_upstream(), |_| {}).await
    }

    pub async fn start_with(sim_config: SimConfig, tweak: impl FnOnce(&mut Config)) -> Service {
        let sim = Simulator::start(sim_config)
            .await
            .expect("simulator starts");
        Service::start_in_front_of(sim, tweak).await
    }

    /// fanout in front of a simulator the test started itself, e.g. a plain-HTTP one behind a real proxy.
    /// `tweak` usually points `config.upstream` somewhere else (the simulator is then only a backend).
    pub async fn start_in_front_of(sim: Simulator, tweak: impl FnOnce(&mut Config)) -> Service {
        let log = MemoryLog::default();
        let mut config = Config {
            upstream: UpstreamChoice::Url(sim.url()),
            extra_roots: simulator::ca_certs(),
            ..Config::default()
        };
        config.log.sink = Sink::Memory(log.clone());
        // A fixed in-flight limit: on a busy test machine the runtimes may lag, and a limit that follows
        // the lag would shed calls that a test counts on. `api::limit` has its own tests.
        config.limits.overload_lag = std::time::Duration::ZERO;
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(fanout::serve(
            listener,
            Some(admin_listener),
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Service {
            sim,
            addr,
            admin,
            log,
            stop: Some(stop),
            task,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// One `GET` on a fresh connection.
    pub async fn get(&self, target: &str) -> Response {
        self.client().await.get(target).await
    }

    /// One `GET` of an admin endpoint.
    pub async fn admin_get(&self, target: &str) -> Response {
        Client::connect(self.admin).await.get(target).await
    }

    /// The access lines logged so far, parsed.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.log
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|v: &serde_json::Value| v["event"] == "access")
            .collect()
    }

    /// The first access line that `pred` accepts, waiting for it (at most [`PATIENCE`]).
    pub async fn access_line_where(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.access_lines().into_iter().find(&pred) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "no such access line in {:?}",
                self.log.lines()
            );
            tokio::time::sleep(ms(5)).await;
        }
    }

    /// Starts the graceful shutdown, without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Starts the graceful shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), String> {
        self.begin_stop();
        timeout(PATIENCE * 2, &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version_minor: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `time` members of an array answer, in order.
    pub fn times(&self) -> Vec<u64> {
        let v = self.json();
        let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
        list.iter()
            .map(|o| o["time"].as_u64().expect("time"))
            .collect()
    }

    /// The error code of an error answer, checking its shape on the way.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {v}"
        );
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error: {v}"))
            .to_string()
    }
}

/// A raw HTTP/1.1 client on one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.expect("send");
    }

    pub async fn get(&mut self, target: &str) -> Response {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        self.response().await.expect("a response")
    }

    /// Reads one response; `None` if the server closed the connection first.
    pub async fn response(&mut self) -> Option<Response> {
        self.read_response(false).await
    }

    /// Reads one response to a `HEAD` request (no content follows its head).
    pub async fn head_response(&mut self) -> Option<Response> {
        self.read_response(true).await
    }

    async fn read_response(&mut self, head_only: bool) -> Option<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) =
                parsed.parse(&self.buf).expect("a valid response head")
            {
                let status = parsed.code.expect("status");
                let version_minor = parsed.version.expect("version");
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().expect("numeric Content-Length"))
                    .unwrap_or(0);
                let length = if head_only || status < 200 { 0 } else { length };
                while self.buf.len() < len + length {
                    self.fill().await.then_some(()).expect("the body arrives");
                }
                let body = self.buf[len..len + length].to_vec();
                self.buf.drain(..len + length);
                return Some(Response {
                    status,
                    version_minor,
                    headers,
                    body,
                });
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "connection closed mid-response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        }
    }

    /// Reads more bytes; false on EOF (or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("the server answers in time")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// True when the server has closed the connection (EOF or reset) with nothing more to read.
    pub async fn closed_by_server(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}
