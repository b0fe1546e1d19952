//! The `fanout` binary itself, as a container runs it: its stdout is a pipe to a log collector that may
//! fall behind, and SIGTERM ends it.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, PATIENCE};

/// Kills the child if the test fails before it stops it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_service_answers_in_time_while_nobody_reads_its_stdout_and_writes_every_line_at_exit() {
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .args(["--upstream", "simulated", "--sim-latency-ms", "0"])
            .args(["--sim-failure-rate", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the binary"),
    );
    // Read the first line, which says where the service listens, and then nothing more.
    let mut stdout = BufReader::new(child.0.stdout.take().expect("piped"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("the start line");
    let start: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(start["event"], "start", "{first}");
    let listen = start["listen"]
        .as_str()
        .expect("listen")
        .trim_start_matches("http://");
    let addr: SocketAddr = listen.parse().expect("an address");

    // 600 access lines of about 400 bytes are more than 3 times what a pipe holds (64 KiB): a service
    // writing its log from its workers would stop answering a fifth of the way through.
    const CALLS: usize = 600;
    let mut client = Client::connect(addr).await;
    let until = Instant::now() + PATIENCE * 3;
    for i in 0..CALLS {
        let sent = Instant::now();
        let r = client.get("/api/all?timeout=1000").await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert!(
            sent.elapsed() < Duration::from_millis(1100),
            "call {i} came late"
        );
        assert!(Instant::now() < until, "600 calls took too long");
    }
    drop(client);

    // SIGTERM: the service drains and exits, and every line reaches the pipe first.
    // The shell's own `kill`: no external tool needed.
    let signal = format!("kill -TERM {}", child.0.id());
    let killed = Command::new("sh").args(["-c", &signal]).status();
    assert!(killed.expect("run kill").success());
    let mut rest = String::new();
    stdout
        .read_to_string(&mut rest)
        .expect("the rest of the log");
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let accesses = lines.iter().filter(|l| l["event"] == "access").count();
    assert_eq!(accesses, CALLS, "one access line per call, none lost");
    assert_eq!(
        lines.last().map(|l| l["event"].clone()),
        Some("stopped".into())
    );
    assert!(child.0.wait().expect("exit status").success());
}
