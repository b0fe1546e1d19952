//! Configuration: every flag, its environment variable, its default and the reason for it, in one place.
//!
//! Each setting can come from a flag (`--max-timeout-ms 5000` or `--max-timeout-ms=5000`) or from its
//! environment variable (`FANOUT_MAX_TIMEOUT_MS=5000`); a flag wins over the environment. Unknown flags
//! and bad values stop the program with a message naming the setting, before anything is bound.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::api::hedge::{self, Delay};
use crate::log::{Level, LogSettings};
pub use crate::server::{Limits, MAX_HEADERS_CEILING};
use crate::simulator::SimConfig;
use crate::upstream;

/// The real upstream the service was written for. Our machines cannot reach it; see `--upstream simulated`.
pub const DEFAULT_UPSTREAM: &str = "https://exponea-engineering-assignment.appspot.com/api/work";

/// Where upstream requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamChoice {
    /// An `http://` or `https://` URL.
    Url(String),
    /// Start the built-in simulated upstream in-process, over TLS, and trust its certificate.
    Simulated,
}

/// Everything the service needs to run. `Config::default()` is what an empty command line gives.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the admin endpoints (`/metrics`, `/healthz`, `/readyz`, `/upstream`) are served; `None`: nowhere.
    pub admin_listen: Option<SocketAddr>,
    pub log: LogSettings,
    /// Below this success ratio over the last minute, the upstream counts as unhealthy (a warning is logged).
    pub upstream_health_threshold: f64,
    pub upstream: UpstreamChoice,
    /// Extra trust anchors for the upstream's TLS certificate (from `--upstream-ca`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The largest `timeout` a caller may ask for.
    pub max_timeout_ms: u64,
    /// When `/api/smart` fires its two extra requests, and how often it may (see `api::hedge`).
    pub hedge: hedge::Settings,
    /// The most a call's timer is aimed before its deadline (see `api::lead`).
    pub max_deadline_lead: Duration,
    pub limits: Limits,
    pub pool: PoolSettings,
    /// How the in-process simulated upstream behaves (with `--upstream simulated`).
    pub simulated: SimConfig,
    /// Worker threads of the upstream runtime (`--upstream-threads`); `None` (`auto`): half the CPUs, at
    /// least 1; `Some(0)`: none. See `runtimes::worker_threads`.
    pub upstream_threads: Option<usize>,
    /// The runtime upstream requests run on, built by `main` from `upstream_threads`; `None`: the
    /// runtime that calls `serve` (as in the tests).
    pub upstream_runtime: Option<tokio::runtime::Handle>,
    /// The runtime that serves a connection while its calls are being shed, built by `main` beside the
    /// upstream's (DESIGN.md, "Shedding on a runtime of its own"); `None`: shed connections stay where
    /// they are (as in the tests).
    pub shed_runtime: Option<tokio::runtime::Handle>,
}

/// The upstream client's bounds; the reasons for the defaults are in `upstream/mod.rs`.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Open upstream connections at most; beyond, requests wait (FIFO, within their deadline) for one.
    pub max_connections: usize,
    /// Idle connections kept for reuse at most.
    pub max_idle: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// A larger upstream response body is a failure.
    pub max_body_bytes: usize,
    /// An upstream exchange nobody waits for any more may finish in the background this long, to save its
    /// connection; zero closes it at once.
    pub linger: Duration,
    /// Connections opened at start, before `/readyz` says ready (`--upstream-warm`); zero: ready at once.
    pub warm: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: upstream::DEFAULT_POOL_MAX_CONNECTIONS,
            max_idle: upstream::DEFAULT_POOL_MAX_IDLE,
            idle_timeout: upstream::DEFAULT_POOL_IDLE_TIMEOUT,
            max_body_bytes: upstream::DEFAULT_MAX_BODY_BYTES,
            linger: upstream::DEFAULT_LINGER,
            warm: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            // All interfaces, like the API: the callers of the admin endpoints (Kubernetes probes, the
            // Prometheus server) come from outside the container or host. Its own port, so that a network
            // policy or firewall can keep it apart from the API; not 9090, which Prometheus itself uses.
            admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8081))),
            log: LogSettings::default(),
            // The real upstream "often fails" (about 1 in 10): below 1 in 2, something has changed.
            upstream_health_threshold: 0.5,
            upstream: UpstreamChoice::Url(DEFAULT_UPSTREAM.to_string()),
            extra_roots: Vec::new(),
            max_timeout_ms: 60_000,
            hedge: hedge::Settings::default(),
            max_deadline_lead: crate::api::lead::DEFAULT_MAX,
            limits: Limits::default(),
            pool: PoolSettings::default(),
            // Like the real upstream, which "often fails": 1 request in 10 fails, in any of the ways.
            simulated: SimConfig {
                failure_rate: 0.1,
                ..SimConfig::default()
            },
            upstream_threads: None,
            upstream_runtime: None,
            shed_runtime: None,
        }
    }
}

/// One setting: its flag, environment variable, value name, default (as shown by `--help`) and help text.
struct Setting {
    flag: &'static str,
    env: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
}

#[rustfmt::skip]
const SETTINGS: &[Setting] = &[
    Setting { flag: "--listen", env: "FANOUT_LISTEN", value: "ADDR", default: "0.0.0.0:8080", help: "address to serve the API on" },
    Setting { flag: "--admin-listen", env: "FANOUT_ADMIN_LISTEN", value: "ADDR", default: "0.0.0.0:8081", help: "address of the admin endpoints (/metrics, /healthz, /readyz, /upstream), never shed; `off` for none" },
    Setting { flag: "--log", env: "FANOUT_LOG", value: "LEVEL", default: "info", help: "log level of the JSON lines on stdout: error, warn, info or debug" },
    Setting { flag: "--access-log", env: "FANOUT_ACCESS_LOG", value: "on|off", default: "on", help: "one JSON line per request whose head parsed (trace id, endpoint, status, duration, upstream attempts)" },
    Setting { flag: "--upstream-health-threshold", env: "FANOUT_UPSTREAM_HEALTH_THRESHOLD", value: "RATIO", default: "0.5", help: "warn when the upstream's success ratio over the last 60 s falls below this (0 to 1), and when it recovers" },
    Setting { flag: "--upstream", env: "FANOUT_UPSTREAM", value: "URL", default: DEFAULT_UPSTREAM, help: "upstream work URL (http:// or https://; an empty path means /api/work), or `simulated` for the built-in simulated upstream" },
    Setting { flag: "--upstream-ca", env: "FANOUT_UPSTREAM_CA", value: "FILE", default: "", help: "PEM file of extra root certificates to trust for the upstream" },
    Setting { flag: "--max-timeout-ms", env: "FANOUT_MAX_TIMEOUT_MS", value: "MS", default: "60000", help: "largest `timeout` a caller may ask for" },
    Setting { flag: "--hedge-delay-ms", env: "FANOUT_HEDGE_DELAY_MS", value: "MS|auto", default: "300", help: "/api/smart fires 2 more requests after this long without a success; auto: the --hedge-percentile of recent upstream latency, within the two bounds below, under --hedge-budget (300 ms until 100 successes are known)" },
    Setting { flag: "--hedge-percentile", env: "FANOUT_HEDGE_PERCENTILE", value: "P", default: "95", help: "with --hedge-delay-ms auto: the percentile (50 to 99.9) of the upstream's successful requests in the last 10 s (or 60 s) that the delay is" },
    Setting { flag: "--hedge-min-delay-ms", env: "FANOUT_HEDGE_MIN_DELAY_MS", value: "MS", default: "20", help: "with --hedge-delay-ms auto: the shortest delay" },
    Setting { flag: "--hedge-max-delay-ms", env: "FANOUT_HEDGE_MAX_DELAY_MS", value: "MS", default: "1000", help: "with --hedge-delay-ms auto: the longest delay" },
    Setting { flag: "--hedge-budget", env: "FANOUT_HEDGE_BUDGET", value: "SHARE", default: "0.25", help: "with --hedge-delay-ms auto: requests fired because the delay passed, per /api/smart call, at most (0 to 2; a burst of 20 more); over it a call waits for its first request, and hedges only if that fails" },
    Setting { flag: "--max-deadline-lead-ms", env: "FANOUT_MAX_DEADLINE_LEAD_MS", value: "MS", default: "20", help: "under load a call stops waiting up to this long (at most a tenth of its timeout) before its deadline, as late as answers lately were ready, so that it is written in time; 1 to 100 (1: always 1 ms, the timer's resolution)" },
    Setting { flag: "--upstream-max-connections", env: "FANOUT_UPSTREAM_MAX_CONNECTIONS", value: "N", default: "8192", help: "open upstream connections at most; beyond, requests wait for one within their deadline" },
    Setting { flag: "--upstream-max-idle", env: "FANOUT_UPSTREAM_MAX_IDLE", value: "N", default: "8192", help: "idle upstream connections kept for reuse" },
    Setting { flag: "--upstream-idle-timeout-ms", env: "FANOUT_UPSTREAM_IDLE_TIMEOUT_MS", value: "MS", default: "4000", help: "idle upstream connections are not reused after this (below common server keep-alive times), and closed within half of it more (1 s at most)" },
    Setting { flag: "--upstream-max-body-bytes", env: "FANOUT_UPSTREAM_MAX_BODY_BYTES", value: "BYTES", default: "65536", help: "a larger upstream response body is a failure" },
    Setting { flag: "--upstream-linger-ms", env: "FANOUT_UPSTREAM_LINGER_MS", value: "MS", default: "1000", help: "an upstream request nobody waits for any more may finish this long in the background, so its connection is reused; one that does not is closed, and replaced if a slot is free (0: close at once)" },
    Setting { flag: "--upstream-warm", env: "FANOUT_UPSTREAM_WARM", value: "N", default: "0", help: "open this many upstream connections at start, before /readyz says ready, so that a load balancer sends nothing until the first handshakes are done (at most --upstream-max-connections; kept --upstream-idle-timeout-ms like any idle one; 0: ready at once)" },
    Setting { flag: "--upstream-threads", env: "FANOUT_UPSTREAM_THREADS", value: "N|auto", default: "auto", help: "worker threads of the runtime doing the upstream requests (TLS, the pool) when over 100 callers are connected; the API's runtime has one per CPU (auto: half the CPUs, at least 1; 0: no upstream runtime)" },
    Setting { flag: "--sim-latency-ms", env: "FANOUT_SIM_LATENCY_MS", value: "MIN-MAX", default: "100-600", help: "latency of the in-process simulated upstream (N or MIN-MAX)" },
    Setting { flag: "--sim-failure-rate", env: "FANOUT_SIM_FAILURE_RATE", value: "RATE", default: "0.1", help: "share of simulated upstream requests that misbehave (0 to 1), in any of its fault kinds (a slow body still arrives whole, in about 1.1 s)" },
    Setting { flag: "--max-head-bytes", env: "FANOUT_MAX_HEAD_BYTES", value: "BYTES", default: "16384", help: "largest request head (431 beyond; 414 for a longer request line)" },
    Setting { flag: "--max-uri-bytes", env: "FANOUT_MAX_URI_BYTES", value: "BYTES", default: "8192", help: "longest request target (414 beyond)" },
    Setting { flag: "--max-headers", env: "FANOUT_MAX_HEADERS", value: "N", default: "64", help: "most header fields in one request (431 beyond)" },
    Setting { flag: "--max-body-bytes", env: "FANOUT_MAX_BODY_BYTES", value: "BYTES", default: "65536", help: "request bodies are discarded up to this size (413 beyond)" },
    Setting { flag: "--head-timeout-ms", env: "FANOUT_HEAD_TIMEOUT_MS", value: "MS", default: "10000", help: "time to send a whole request head once started (408 after)" },
    Setting { flag: "--idle-timeout-ms", env: "FANOUT_IDLE_TIMEOUT_MS", value: "MS", default: "60000", help: "idle keep-alive connections are closed after this long" },
    Setting { flag: "--write-timeout-ms", env: "FANOUT_WRITE_TIMEOUT_MS", value: "MS", default: "10000", help: "time to write one response before the connection is dropped" },
    Setting { flag: "--max-connections", env: "FANOUT_MAX_CONNECTIONS", value: "N", default: "8192", help: "client connections open at once (beyond, a new one's first request is shed, 503 or 200 [] from /api/within-timeout, and it is closed)" },
    Setting { flag: "--max-in-flight", env: "FANOUT_MAX_IN_FLIGHT", value: "N", default: "2560", help: "API calls in flight at once; more are shed at once: 503 (overloaded), or 200 [] from /api/within-timeout" },
    Setting { flag: "--overload-lag-ms", env: "FANOUT_OVERLOAD_LAG_MS", value: "MS", default: "50", help: "when tasks run this much later than their timers (worst in 0.5 s) and the in-flight limit is reached, it falls by a tenth, down to an eighth of --max-in-flight; under half of this it grows back by 2% of it each 0.5 s (0: the limit is --max-in-flight, always, and nothing is probed)" },
    Setting { flag: "--shed-pause-ms", env: "FANOUT_SHED_PAUSE_MS", value: "MS", default: "0", help: "after a shed answer, that connection's next request is read only after this long (0: at once)" },
    Setting { flag: "--half-close", env: "FANOUT_HALF_CLOSE", value: "on|off", default: "off", help: "off: a client whose connection ends (EOF) while its call runs is gone, and the call is dropped (499 in the log); on: a client that only shut its sending side is answered, then the connection closed" },
    Setting { flag: "--drain-delay-ms", env: "FANOUT_DRAIN_DELAY_MS", value: "MS", default: "0", help: "on SIGTERM/SIGINT, /readyz answers 503 at once but the API listener stays open this long, answering each request with Connection: close and leaving idle connections open, so that a load balancer stops sending before it closes (0: it closes at once, with idle connections)" },
    Setting { flag: "--drain-timeout-ms", env: "FANOUT_DRAIN_TIMEOUT_MS", value: "MS", default: "65000", help: "once the listener has closed, busy connections are closed after this long (a second signal exits at once)" },
];

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
}

/// The text `--help` prints: every setting with its environment variable and default.
pub fn help() -> String {
    let mut out = String::from(
        "fanout: answers each API call by fanning out concurrent requests to an upstream, within the caller's deadline\n\n\
         usage: fanout [FLAGS]            run the service\n       \
         fanout simulator [FLAGS]  run the simulated upstream alone (see `fanout simulator --help`)\n       \
         fanout healthcheck [URL]  exit 0 if URL (default http://127.0.0.1:8081/healthz) answers 200\n\nflags (each also read from its environment variable; a flag wins):\n",
    );
    for s in SETTINGS {
        let flag = format!("{} {}", s.flag, s.value);
        let _ = write!(out, "  {flag:<30} {}\n      {}", s.env, s.help);
        if !s.default.is_empty() {
            let _ = write!(out, " [default: {}]", s.default);
        }
        out.push('\n');
    }
    out.push_str("  --help                         this text\n");
    out
}

impl Config {
    /// Reads the settings from `args` (without the program name) and from the environment, which `env`
    /// looks up (`std::env::var` in `main`, a table in the tests).
    pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command, String> {
        // Collect raw values: environment first, then flags over them.
        let mut raw: Vec<Option<String>> = SETTINGS.iter().map(|s| env(s.env)).collect();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--help" || arg == "-h" {
                return Ok(Command::Help);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let Some(i) = SETTINGS.iter().position(|s| s.flag == name) else {
                return Err(format!("unknown argument `{arg}`"));
            };
            let value = inline
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value ({})", SETTINGS[i].value))?;
            raw[i] = Some(value);
        }

        let mut config = Config::default();
        for (setting, value) in SETTINGS.iter().zip(raw) {
            if let Some(value) = value {
                config
                    .set(setting.flag, value.trim())
                    .map_err(|why| format!("{} ({}): {why}", setting.flag, setting.env))?;
            }
        }
        if config.hedge.min_delay > config.hedge.max_delay {
            return Err("--hedge-min-delay-ms is above --hedge-max-delay-ms".into());
        }
        Ok(Command::Run(Box::new(config)))
    }

    fn set(&mut self, flag: &str, v: &str) -> Result<(), String> {
        let (pool, l) = (&mut self.pool, &mut self.limits);
        match flag {
            "--listen" => self.listen = address(v, "0.0.0.0:8080 or [::1]:8080")?,
            "--admin-listen" if v == "off" => self.admin_listen = None,
            "--admin-listen" => self.admin_listen = Some(address(v, "0.0.0.0:8081, nor `off`")?),
            "--log" => self.log.level = level(v)?,
            "--access-log" => self.log.access = on_off(v)?,
            "--upstream-health-threshold" => {
                self.upstream_health_threshold = fraction(v, 0.0, 1.0)?
            }
            "--upstream" => self.upstream = upstream(v)?,
            "--upstream-ca" => self.extra_roots = read_roots(v)?,
            "--max-timeout-ms" => self.max_timeout_ms = number(v, 0, u32::MAX as u64)?,
            "--hedge-delay-ms" => self.hedge.delay = hedge_delay(v)?,
            "--hedge-percentile" => self.hedge.percentile = fraction(v, 50.0, 99.9)?,
            "--hedge-min-delay-ms" => self.hedge.min_delay = millis(v)?,
            "--hedge-max-delay-ms" => self.hedge.max_delay = millis(v)?,
            "--hedge-budget" => self.hedge.budget = fraction(v, 0.0, 2.0)?,
            "--max-deadline-lead-ms" => {
                self.max_deadline_lead = Duration::from_millis(number(v, 1, 100)?)
            }
            "--upstream-max-connections" => pool.max_connections = number(v, 1, 1 << 20)? as usize,
            "--upstream-max-idle" => pool.max_idle = number(v, 0, 1 << 20)? as usize,
            "--upstream-idle-timeout-ms" => pool.idle_timeout = millis(v)?,
            "--upstream-max-body-bytes" => pool.max_body_bytes = number(v, 16, 1 << 30)? as usize,
            "--upstream-linger-ms" => pool.linger = millis(v)?,
            "--upstream-warm" => pool.warm = number(v, 0, 1 << 20)? as usize,
            "--upstream-threads" if v == "auto" => self.upstream_threads = None,
            "--upstream-threads" => self.upstream_threads = Some(number(v, 0, 1024)? as usize),
            "--sim-latency-ms" => self.simulated.latency_ms = range(v, 0, 3_600_000)?,
            "--sim-failure-rate" => self.simulated.failure_rate = fraction(v, 0.0, 1.0)?,
            "--max-head-bytes" => l.max_head_bytes = number(v, 1024, 1 << 20)? as usize,
            "--max-uri-bytes" => l.max_uri_bytes = number(v, 64, 1 << 20)? as usize,
            "--max-headers" => l.max_headers = number(v, 8, MAX_HEADERS_CEILING as u64)? as usize,
            "--max-body-bytes" => l.max_body_bytes = number(v, 0, 1 << 30)?,
            "--head-timeout-ms" => l.head_timeout = millis(v)?,
            "--idle-timeout-ms" => l.idle_timeout = millis(v)?,
            "--write-timeout-ms" => l.write_timeout = millis(v)?,
            "--drain-delay-ms" => l.drain_delay = millis(v)?,
            "--drain-timeout-ms" => l.drain_timeout = millis(v)?,
            "--max-connections" => l.max_connections = number(v, 1, 1 << 20)? as usize,
            "--max-in-flight" => l.max_in_flight = number(v, 1, 1 << 20)? as usize,
            "--overload-lag-ms" => l.overload_lag = millis(v)?,
            "--shed-pause-ms" => l.shed_pause = millis(v)?,
            "--half-close" => l.half_close = on_off(v)?,
            _ => unreachable!("every SETTINGS flag is handled"),
        }
        Ok(())
    }
}

/// A log level, by its name.
fn level(v: &str) -> Result<Level, String> {
    Level::parse(v).ok_or_else(|| format!("`{v}` is not one of error, warn, info, debug"))
}

/// An `http://` or `https://` URL, or `simulated`.
fn upstream(v: &str) -> Result<UpstreamChoice, String> {
    if v == "simulated" {
        return Ok(UpstreamChoice::Simulated);
    }
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        return Err(format!(
            "`{v}` is neither an http:// or https:// URL nor `simulated`"
        ));
    }
    Ok(UpstreamChoice::Url(v.to_string()))
}

/// A hedge delay: milliseconds, or `auto` to learn it from the upstream.
fn hedge_delay(v: &str) -> Result<Delay, String> {
    if v == "auto" {
        return Ok(Delay::Auto);
    }
    let delay = millis(v).map_err(|why| format!("{why}, nor `auto`"))?;
    Ok(Delay::Fixed(delay))
}

/// `N` or `MIN-MAX`, each a whole number from `min` to `max`; `N` is `N-N`.
fn range(v: &str, min: u64, max: u64) -> Result<(u64, u64), String> {
    let (low, high) = v.split_once('-').unwrap_or((v, v));
    let (low, high) = (number(low, min, max)?, number(high, min, max)?);
    if low > high {
        return Err(format!("`{v}`: the minimum is above the maximum"));
    }
    Ok((low, high))
}

/// A switch: `on` (or `true`, `1`) or `off` (or `false`, `0`).
fn on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("`{v}` is neither on nor off")),
    }
}

/// A socket address; `like` gives examples of one, for the message.
fn address(v: &str, like: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("`{v}` is not an address like {like}"))
}

fn number(v: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("`{v}` is not a whole number from {min} to {max}")),
    }
}

/// A number from `min` to `max`, fractions allowed.
fn fraction(v: &str, min: f64, max: f64) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if (min..=max).contains(&x) => Ok(x),
        _ => Err(format!("`{v}` is not a number from {min} to {max}")),
    }
}

fn millis(v: &str) -> Result<Duration, String> {
    number(v, 0, 24 * 3600 * 1000).map(Duration::from_millis)
}

fn read_roots(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{path}` is not a valid PEM file: {e:?}"))?;
    if certs.is_empty() {
        return Err(format!("`{path}` holds no PEM certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Config::parse(&args, |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })? {
            Command::Run(c) => Ok(*c),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn upstream_threads_are_a_number_or_auto() {
        assert_eq!(Config::default().upstream_threads, None, "auto");
        let three = parse(&["--upstream-threads", "3"], &[]).unwrap();
        assert_eq!(three.upstream_threads, Some(3));
        let shared = parse(&[], &[("FANOUT_UPSTREAM_THREADS", "0")]).unwrap();
        assert_eq!(shared.upstream_threads, Some(0), "no upstream runtime");
        assert!(parse(&["--upstream-threads", "many"], &[]).is_err());
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.upstream, UpstreamChoice::Url(DEFAULT_UPSTREAM.into()));
        assert_eq!(c.max_timeout_ms, 60_000);
        assert_eq!(c.hedge.delay, Delay::Fixed(Duration::from_millis(300)));
        assert_eq!(c.max_deadline_lead, Duration::from_millis(20));
    }

    #[test]
    fn flags_win_over_environment_and_both_forms_work() {
        let c = parse(
            &["--max-timeout-ms=5000", "--upstream", "simulated"],
            &[
                ("FANOUT_MAX_TIMEOUT_MS", "7"),
                ("FANOUT_HEDGE_DELAY_MS", "50"),
            ],
        )
        .unwrap();
        assert_eq!(c.max_timeout_ms, 5000);
        assert_eq!(c.hedge.delay, Delay::Fixed(Duration::from_millis(50)));
        assert_eq!(c.upstream, UpstreamChoice::Simulated);
    }

    #[test]
    fn the_hedge_delay_is_a_number_or_auto_within_its_bounds() {
        let c = parse(&["--hedge-delay-ms", "auto", "--hedge-percentile=99"], &[]).unwrap();
        assert_eq!(c.hedge.delay, Delay::Auto);
        assert_eq!(c.hedge.percentile, 99.0);
        let c = parse(&[], &[("FANOUT_HEDGE_DELAY_MS", "auto")]).unwrap();
        assert_eq!(c.hedge.delay, Delay::Auto);
        assert!(parse(&["--hedge-delay-ms", "soon"], &[])
            .unwrap_err()
            .contains("nor `auto`"));
        assert!(parse(&["--hedge-percentile", "100"], &[]).is_err());
        assert!(parse(&["--hedge-budget", "-0.1"], &[]).is_err());
        assert!(parse(
            &["--hedge-min-delay-ms", "500", "--hedge-max-delay-ms", "400"],
            &[]
        )
        .unwrap_err()
        .contains("--hedge-min-delay-ms"));
    }

    #[test]
    fn bad_input_names_the_setting() {
        assert!(parse(&["--nope"], &[]).unwrap_err().contains("--nope"));
        assert!(parse(&["--listen"], &[])
            .unwrap_err()
            .contains("--listen needs a value"));
        assert!(parse(&["--max-timeout-ms", "-1"], &[])
            .unwrap_err()
            .contains("--max-timeout-ms"));
        assert!(parse(&[], &[("FANOUT_LISTEN", "nowhere")])
            .unwrap_err()
            .contains("FANOUT_LISTEN"));
        assert!(parse(&["--upstream", "ftp://x"], &[])
            .unwrap_err()
            .contains("--upstream"));
        assert!(parse(&["--upstream-ca", "/no/such/file"], &[])
            .unwrap_err()
            .contains("cannot read"));
        // The header slots are a stack array of MAX_HEADERS_CEILING: no setting may ask for more.
        let most = MAX_HEADERS_CEILING.to_string();
        let c = parse(&["--max-headers", &most], &[]).unwrap();
        assert_eq!(c.limits.max_headers, MAX_HEADERS_CEILING);
        let more = (MAX_HEADERS_CEILING + 1).to_string();
        assert!(parse(&["--max-headers", &more], &[])
            .unwrap_err()
            .contains("from 8 to 1024"));
    }

    #[test]
    fn the_defaults_help_shows_are_the_real_ones() {
        let default = format!("{:?}", Config::default());
        for s in SETTINGS.iter().filter(|s| !s.default.is_empty()) {
            let given = parse(&[s.flag, s.default], &[]).unwrap();
            assert_eq!(
                format!("{given:?}"),
                default,
                "{} shows {} in --help",
                s.flag,
                s.default
            );
        }
    }

    #[test]
    fn help_lists_every_setting() {
        let text = help();
        for s in SETTINGS {
            assert!(
                text.contains(s.flag) && text.contains(s.env),
                "{} missing from --help",
                s.flag
            );
        }
    }
}
