//! `fanout healthcheck [URL]`: asks a running fanout's admin endpoint whether it is alive, for a container
//! `HEALTHCHECK`.
//!
//! The image is `FROM scratch`: no shell, no curl. So the binary probes itself, with a blocking std::net client
//! that sends one `GET` and reads only the status line. No tokio runtime is started: a probe runs every few
//! seconds and should cost next to nothing.
//!
//! Exit status 0 when the answer is `200`, 1 otherwise (Docker reads 0 as healthy and 1 as unhealthy; it
//! reserves 2), with one line saying why: Docker keeps the output of the last probes in `docker inspect`.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The admin listener's liveness endpoint on this machine.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8081/healthz";

/// The whole probe (connect, write, read the status line) must finish within this. A live process answers
/// `/healthz` in well under a millisecond; 2 s leaves room for a busy machine and stays under the image's
/// `HEALTHCHECK --timeout`, so the probe reports its own reason instead of being killed.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A status line longer than this is not one we are waiting for.
const MAX_STATUS_LINE: usize = 1024;

const USAGE: &str = "usage: fanout healthcheck [URL]\n  \
    exits 0 if GET URL answers 200, 1 otherwise [default URL: http://127.0.0.1:8081/healthz]\n";

/// Runs the subcommand with its arguments (after `healthcheck`).
pub fn run(args: &[String]) -> ExitCode {
    let url = match args {
        [] => DEFAULT_URL,
        [arg] if arg == "--help" || arg == "-h" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [url] => url.as_str(),
        _ => {
            eprint!("fanout healthcheck: expected at most one URL\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match probe(url, TIMEOUT) {
        Ok(()) => {
            println!("healthy: {url} answered 200");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("unhealthy: {url}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `GET` to `url` (`http://HOST[:PORT][/PATH]`) and succeeds if the status is 200, all within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let (authority, path) = split_url(url)?;
    let mut stream = connect(&authority, deadline)?;
    // `Connection: close`: one request, then the server may close; we read only as far as the status line.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: fanout-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("cannot send the request: {}", describe(&e)))?;

    let line = read_status_line(&mut stream, deadline)?;
    // RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
    let mut parts = line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        let start: String = line.chars().take(80).collect();
        return Err(format!("not an HTTP/1 response: {start:?}"));
    }
    let status = line.trim_start_matches(version).trim();
    match code {
        "200" => Ok(()),
        _ => Err(format!("answered {status}")),
    }
}

/// `http://HOST[:PORT][/PATH]` into (`HOST:PORT`, `/PATH`). Only plain HTTP: the admin port speaks nothing else.
fn split_url(url: &str) -> Result<(String, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    // A port is present when the text after the last ':' is outside brackets (IPv6 literals have colons).
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => Ok((authority.to_string(), path)),
        _ => Ok((format!("{authority}:80"), path)),
    }
}

/// Resolves `HOST:PORT` and connects to the first address that accepts.
fn connect(authority: &str, deadline: Instant) -> Result<TcpStream, String> {
    // An IP literal (the default) needs no resolver, which matters in a scratch image without /etc/hosts.
    let addrs = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?;
    let mut last = format!("{authority} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("cannot connect to {addr}: {}", describe(&e)),
        }
    }
    Err(last)
}

/// Reads until the first CRLF, each read bounded by what is left of the deadline (so a server that trickles
/// one byte at a time cannot stretch the probe).
fn read_status_line(stream: &mut TcpStream, deadline: Instant) -> Result<String, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            buf.truncate(end);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            ));
        }
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| format!("cannot read: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "the connection closed before a status line ({} bytes came)",
                    buf.len()
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the response: {}", describe(&e))),
        }
    }
}

/// What is left until `deadline`, or the error that says it has passed. (A zero timeout would mean
/// "block forever" to std, so it is never returned.)
fn remaining(deadline: Instant) -> Result<Duration, String> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err("timed out".to_string()),
    }
}

/// A timed-out socket read says "WouldBlock" or "TimedOut" depending on the platform; say it plainly.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A one-shot server on 127.0.0.1:0: accepts one connection, reads the request head, writes `reply`.
    /// Returns the URL to probe and a handle that yields the request it received.
    fn serve_once(reply: &'static [u8]) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/healthz", listener.local_addr().expect("addr"));
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let head = read_head(&mut conn);
            conn.write_all(reply).expect("write");
            head
        });
        (url, handle)
    }

    /// Reads a request head byte by byte: the request read before the socket closes, so that closing it
    /// sends a FIN, not the reset a close with unread bytes would (which could beat the reply's last bytes).
    fn read_head(conn: &mut std::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).expect("read") == 1 {
            head.push(byte[0]);
        }
        String::from_utf8(head).expect("utf-8")
    }

    #[test]
    fn a_200_is_healthy_and_the_request_asks_for_the_path() {
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(probe(&url, TIMEOUT), Ok(()));
        let request = server.join().expect("server");
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nHost: 127.0.0.1:"), "{request}");
    }

    #[test]
    fn a_503_is_unhealthy_and_the_message_gives_the_status() {
        let (url, server) = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let why = probe(&url, TIMEOUT).unwrap_err();
        assert_eq!(why, "answered 503 Service Unavailable");
        server.join().expect("server");
    }

    #[test]
    fn a_status_line_split_across_writes_is_read_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            read_head(&mut conn);
            for part in [&b"HTTP/1.1 2"[..], b"00 OK\r", b"\n\r\n"] {
                conn.write_all(part).expect("write");
                conn.flush().expect("flush");
                thread::sleep(Duration::from_millis(10));
            }
        });
        assert_eq!(probe(&url, TIMEOUT), Ok(()));
        server.join().expect("server");
    }

    #[test]
    fn nothing_listening_is_unhealthy() {
        // Bind then drop: the port is (almost certainly) closed now.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let why = probe(&format!("http://127.0.0.1:{port}/healthz"), TIMEOUT).unwrap_err();
        assert!(why.starts_with("cannot connect to 127.0.0.1:"), "{why}");
    }

    #[test]
    fn a_server_that_never_answers_fails_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/healthz", listener.local_addr().expect("addr"));
        // The kernel completes the handshake from the backlog; nobody ever reads or writes.
        let started = Instant::now();
        let why = probe(&url, Duration::from_millis(200)).unwrap_err();
        let took = started.elapsed();
        assert!(why.contains("timed out"), "{why}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        drop(listener);
    }

    #[test]
    fn a_closed_connection_or_garbage_is_unhealthy() {
        let (url, server) = serve_once(b"");
        assert!(probe(&url, TIMEOUT)
            .unwrap_err()
            .contains("closed before a status line"));
        server.join().expect("server");

        let (url, server) = serve_once(b"SSH-2.0-OpenSSH_9.2\r\n");
        assert!(probe(&url, TIMEOUT)
            .unwrap_err()
            .starts_with("not an HTTP/1 response"));
        server.join().expect("server");
    }

    #[test]
    fn urls_are_split_into_authority_and_path() {
        assert_eq!(
            split_url(DEFAULT_URL),
            Ok(("127.0.0.1:8081".to_string(), "/healthz"))
        );
        assert_eq!(
            split_url("http://example.test"),
            Ok(("example.test:80".to_string(), "/"))
        );
        assert_eq!(
            split_url("http://[::1]:8081/readyz"),
            Ok(("[::1]:8081".to_string(), "/readyz"))
        );
        assert_eq!(
            split_url("http://[::1]/x"),
            Ok(("[::1]:80".to_string(), "/x"))
        );
        assert!(split_url("https://127.0.0.1/").is_err());
        assert!(split_url("http:///healthz").is_err());
    }
}
