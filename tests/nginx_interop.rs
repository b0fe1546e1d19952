//! fanout against a real HTTPS server that nobody here wrote: Debian's nginx, configured to close
//! connections often and on its own schedule (after 3 requests, and after 1 idle second, which fanout is
//! not told about). Every API call must still succeed: the pool must notice nginx's closes or retry around
//! them, and never fail a call for them.
//!
//! Needs `/usr/sbin/nginx` (`apt-get install -y nginx-light`; CI installs it) and `openssl`. Without them
//! the tests fail, saying so: they are not skipped.
//!
//! Each test makes a throwaway CA and a certificate for `localhost` and 127.0.0.1, writes an nginx.conf
//! from `tests/nginx/nginx.conf.template` into a temporary directory, and runs nginx in the foreground as
//! a child process that is killed when the test ends, however it ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ms, Client, Response, Service, PATIENCE};
use fanout::config::UpstreamChoice;
use fanout::simulator::{SimConfig, Simulator};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

const NGINX: &str = "/usr/sbin/nginx";
const CONFIG_TEMPLATE: &str = include_str!("nginx/nginx.conf.template");
/// nginx's `keepalive_timeout` in the template.
const NGINX_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_nginx_closes_connections_on_its_own_schedule() {
    let backend = Simulator::start(plain_backend()).await.expect("backend");
    let nginx = Nginx::start(backend.addr().port()).await;
    let svc = Service::start_in_front_of(backend, |config| {
        config.upstream = UpstreamChoice::Url(nginx.url("/api/work"));
        config.extra_roots = nginx.ca.clone();
    })
    .await;

    // 300 sequential calls, with pauses around nginx's idle timeout: just over it (nginx has closed the
    // idle connections fanout still holds), and close to it (nginx closes them as fanout reuses them).
    let pauses = [1300, 1000, 1100, 950, 1050];
    let mut client = svc.client().await;
    for call in 0..300 {
        if call > 0 && call % 50 == 0 {
            tokio::time::sleep(ms(pauses[call / 50 - 1])).await;
        }
        let r = client.get("/api/all?timeout=5000").await;
        assert_all_three(&r, 42, &nginx);
    }
    assert!(
        pauses
            .iter()
            .all(|&p| ms(p) >= NGINX_KEEPALIVE_TIMEOUT - ms(100)),
        "the pauses are meant to reach nginx's idle timeout"
    );

    // Then every endpoint at once, 10 callers at a time.
    concurrent_calls(&svc, 10, 20, 42, &nginx).await;

    let log = nginx.access_log();
    let requests = log.len();
    assert!(
        requests >= 3 * 300 + 3 * 100,
        "nginx logged only {requests} requests"
    );
    // 499 is nginx's mark for a request the client gave up on (/api/first's and /api/smart's losers);
    // anything else (a 400, say) would mean fanout sent something nginx did not accept.
    let unexpected: Vec<u16> = log
        .iter()
        .map(|line| line.status)
        .filter(|status| ![200, 499].contains(status))
        .collect();
    assert!(unexpected.is_empty(), "nginx answered {unexpected:?}");
    let connections = log
        .iter()
        .map(|line| line.connection)
        .collect::<std::collections::HashSet<_>>()
        .len();
    eprintln!("{requests} requests to nginx on {connections} connections");
    assert!(
        log.iter().any(|line| line.connection_requests == 3),
        "no connection reached nginx's keepalive_requests limit of 3: no reuse"
    );
    assert!(
        connections * 3 <= requests * 2,
        "{requests} requests on {connections} connections: fanout hardly reused any"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_through_nginx_proxying_a_slow_backend() {
    let backend = Simulator::start(SimConfig {
        latency_ms: (10, 50),
        ..plain_backend()
    })
    .await
    .expect("backend");
    let nginx = Nginx::start(backend.addr().port()).await;
    let svc = Service::start_in_front_of(backend, |config| {
        config.upstream = UpstreamChoice::Url(nginx.url("/api/proxied-work"));
        config.extra_roots = nginx.ca.clone();
    })
    .await;

    let mut client = svc.client().await;
    for call in 0..60 {
        if call == 30 {
            tokio::time::sleep(NGINX_KEEPALIVE_TIMEOUT + ms(200)).await;
        }
        let r = client.get("/api/all?timeout=5000").await;
        assert_eq!(r.status, 200, "{}\n{}", r.text(), nginx.explain());
        assert_eq!(r.times().len(), 3, "{}", r.text());
    }
    concurrent_calls(&svc, 10, 6, 0, &nginx).await;

    // nginx may still be finishing requests fanout gave up on (/api/first's losers), so the backend's
    // count is not compared with nginx's log line for line.
    assert!(
        svc.sim.requests() >= 3 * 60,
        "the backend saw only {} requests",
        svc.sim.requests()
    );
}

/// A plain-HTTP simulator that never fails: the backend nginx proxies to.
fn plain_backend() -> SimConfig {
    SimConfig {
        latency_ms: (0, 0),
        failure_rate: 0.0,
        tls: false,
        ..SimConfig::default()
    }
}

/// `/api/all` answered with three successes, each with `time` (0: any time).
fn assert_all_three(r: &Response, time: u64, nginx: &Nginx) {
    assert_eq!(r.status, 200, "{}\n{}", r.text(), nginx.explain());
    let times = r.times();
    assert_eq!(times.len(), 3, "{}\n{}", r.text(), nginx.explain());
    assert!(time == 0 || times.iter().all(|&t| t == time), "{times:?}");
}

/// `callers` clients at once, each making `calls` calls across the four endpoints; each must succeed.
async fn concurrent_calls(svc: &Service, callers: usize, calls: usize, time: u64, nginx: &Nginx) {
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let addr = svc.addr;
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut answers = Vec::new();
                for call in 0..calls {
                    let endpoint = [
                        "/api/all",
                        "/api/first",
                        "/api/smart",
                        "/api/within-timeout",
                    ][(caller + call) % 4];
                    let r = client.get(&format!("{endpoint}?timeout=5000")).await;
                    answers.push((endpoint, r));
                }
                answers
            })
        })
        .collect();
    for task in tasks {
        for (endpoint, r) in task.await.expect("caller") {
            assert_eq!(
                r.status,
                200,
                "{endpoint}: {}\n{}",
                r.text(),
                nginx.explain()
            );
            let answers = match endpoint {
                "/api/first" | "/api/smart" => vec![r.json()],
                _ => r.json().as_array().cloned().expect("an array"),
            };
            let expected = if endpoint == "/api/all" || endpoint == "/api/within-timeout" {
                3
            } else {
                1
            };
            assert_eq!(answers.len(), expected, "{endpoint}: {}", r.text());
            for answer in answers {
                let t = answer["time"].as_u64().expect("a time");
                assert!(
                    time == 0 || t == time,
                    "{endpoint}: not nginx's answer: {answer}"
                );
            }
        }
    }
}

/// One line of the access log (`log_format counts` in the template).
struct LogLine {
    connection: u64,
    connection_requests: u64,
    status: u16,
}

/// nginx running in the foreground as our child, in its own temporary directory.
struct Nginx {
    // Only held, to be killed on drop; declared first, so it is killed before the directory is removed.
    _child: KillOnDrop,
    port: u16,
    dir: TempDir,
    /// The throwaway CA that signed nginx's certificate.
    ca: Vec<CertificateDer<'static>>,
}

impl Nginx {
    /// Generates the certificates, writes the configuration, starts nginx and waits until it accepts.
    /// `backend_port` is the plain-HTTP simulator behind `/api/proxied-work`.
    async fn start(backend_port: u16) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} not found: the nginx interop tests need a real nginx. Install it with \
             `apt-get install -y nginx-light` (CI's .ci/run does)."
        );
        let dir = TempDir::new("fanout-nginx");
        make_certificates(dir.path());
        let ca_pem = std::fs::read(dir.path().join("ca.pem")).expect("ca.pem");
        let ca = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("the generated CA parses");

        // A port that was free a moment ago; if another process takes it first, nginx says so and we try
        // another one.
        for _attempt in 0..5 {
            let port = free_port();
            let config = CONFIG_TEMPLATE
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@BACKEND_PORT@", &backend_port.to_string())
                .replace("@PORT@", &port.to_string());
            let config_path = dir.path().join("nginx.conf");
            std::fs::write(&config_path, config).expect("write nginx.conf");
            let _ = std::fs::remove_file(dir.path().join("error.log"));

            let child = Command::new(NGINX)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&config_path)
                // Where nginx logs before it has read the configuration (it would try /var/log/nginx).
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {NGINX}: {e}"));
            let mut child = KillOnDrop(child);
            match wait_until_accepting(&mut child, port, &dir.path().join("error.log")).await {
                Ok(()) => {
                    return Nginx {
                        _child: child,
                        port,
                        dir,
                        ca,
                    }
                }
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("nginx did not start:\n{log}"),
            }
        }
        panic!("nginx found no free port in 5 attempts");
    }

    /// `https://localhost:PORT` + `path`; the certificate names `localhost`.
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn access_log(&self) -> Vec<LogLine> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let number = |i: usize| -> u64 {
                    fields
                        .get(i)
                        .and_then(|f| f.parse().ok())
                        .unwrap_or_else(|| panic!("unexpected access log line: {line:?}"))
                };
                LogLine {
                    connection: number(0),
                    connection_requests: number(1),
                    status: number(2) as u16,
                }
            })
            .collect()
    }

    /// nginx's error log, for a failure message.
    fn explain(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        format!("nginx error.log:\n{log}")
    }
}

/// Waits until nginx accepts connections on `port`, or fails with its error log if it exits first.
/// Polls: nginx signals readiness only by accepting.
async fn wait_until_accepting(
    child: &mut KillOnDrop,
    port: u16,
    error_log: &Path,
) -> Result<(), String> {
    let error_log =
        || std::fs::read_to_string(error_log).unwrap_or_else(|e| format!("(no error.log: {e})"));
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!("nginx exited ({status}):\n{}", error_log()));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > give_up {
            return Err(format!(
                "nginx did not accept within {PATIENCE:?}:\n{}",
                error_log()
            ));
        }
        tokio::time::sleep(ms(20)).await;
    }
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory under the system's temporary directory, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway CA (`ca.pem`) and a certificate it signed for `localhost` and 127.0.0.1 (`server.pem`,
/// `server.key`), made with the openssl command line. Valid for two days: only this test ever sees them.
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n",
    )
    .expect("write server.ext");
    const P256: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(
        dir,
        &format!(
            "req -x509 {P256} -keyout ca.key -out ca.pem -days 2 -subj /CN=fanout-nginx-interop-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    );
    openssl(
        dir,
        &format!("req {P256} -keyout server.key -out server.csr -subj /CN=localhost"),
    );
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile server.ext -out server.pem",
    );
}

/// Runs `openssl` in `dir` with `args` (separated by whitespace; none contains any).
fn openssl(dir: &Path, args: &str) {
    let output = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): install it with `apt-get install -y openssl`")
        });
    assert!(
        output.status.success(),
        "openssl {args} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
