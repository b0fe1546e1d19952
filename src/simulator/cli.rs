//! `fanout simulator [FLAGS]`: the simulated upstream as its own process, until SIGINT/SIGTERM.
//!
//! Typical use: `fanout simulator --write-ca /tmp/sim-ca.pem` in one terminal, and fanout (or
//! curl `--cacert /tmp/sim-ca.pem`) pointed at the URL it prints in another.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use super::tls::CA_PEM;
use super::{
    Fault, SimConfig, Simulator, HANG_CAP, IDLE_CAP, LINGER, MAX_CONNECTIONS, MAX_HEADERS,
    MAX_HEAD_BYTES, MAX_LATENCY_MS, MAX_REQUEST_BODY_BYTES, SLOW_BODY_PAUSE,
};

/// Where `fanout simulator` listens unless told otherwise.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8443));

/// The `--help` text, limits included.
pub fn usage() -> String {
    let (min, max) = SimConfig::default().latency_ms;
    let kinds = Fault::ALL.map(Fault::name).join(",");
    format!(
        "\
Usage: fanout simulator [FLAGS]

Serves a simulated upstream (GET /api/work -> {{\"time\": N}}) until SIGINT or SIGTERM,
and prints its URL. Flags take `--flag VALUE` or `--flag=VALUE`.
GET /stats answers {{\"connections_accepted\": N, \"connections_open\": N, \"requests\": N,
\"in_flight\": N, \"tls_resumed\": N}}
(the counters since start; the stats request itself is not counted in `requests`).
SIGUSR1 resets every open connection (TCP RST), as an upstream's restart would.

  --listen ADDR          address to listen on (default {DEFAULT_LISTEN})
  --plain                plain HTTP instead of HTTPS with the built-in test certificate
  --latency-ms N|MIN-MAX answer latency in ms, fixed or uniform (default {min}-{max}, max {MAX_LATENCY_MS})
  --failure-rate F       share of requests that misbehave, 0..=1 (default 0; a slow body is late, not wrong)
  --failures LIST        comma list of failure kinds to draw from (default all):
                         {kinds}
  --close-after N        close each connection after N responses (Connection: close)
  --idle-close-ms N      silently close a connection idle for N ms between requests
  --write-ca FILE        write the test CA certificate (PEM) to FILE, for clients to trust
  --help                 this text

The test CA and its certificate are public: trust them for testing only.

Limits: request head {MAX_HEAD_BYTES} bytes, {MAX_HEADERS} header fields, request body {MAX_REQUEST_BODY_BYTES} bytes,
{MAX_CONNECTIONS} connections at once; idle connections close after {IDLE_CAP:?} without --idle-close-ms;
a hang lasts at most {HANG_CAP:?}; a slow body sends one byte per {SLOW_BODY_PAUSE:?};
after closing, input is drained for at most {LINGER:?}.
"
    )
}

/// Parses the arguments after `simulator`: (listen address, configuration, `--write-ca` file).
/// `--help` comes back as `Err(usage())`; [`run`] prints it and succeeds instead.
pub fn parse_args(args: &[String]) -> Result<(SocketAddr, SimConfig, Option<PathBuf>), String> {
    let mut listen = DEFAULT_LISTEN;
    let mut config = SimConfig::default();
    let mut write_ca = None;

    let mut args = args.iter();
    while let Some(arg) = args.next() {
        // `--flag=value` or `--flag value`; flags without a value reject an `=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            let v = inline.clone().or_else(|| args.next().cloned());
            v.ok_or_else(|| format!("{flag}: needs a value"))
        };
        match flag {
            "--help" | "-h" => return Err(usage()),
            "--plain" if inline.is_none() => config.tls = false,
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|_| {
                    format!("--listen: {v:?} is not an address like 127.0.0.1:8443")
                })?;
            }
            "--latency-ms" => config.latency_ms = parse_latency(&value()?)?,
            "--failure-rate" => {
                let v = value()?;
                let rate = v.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r));
                let bad = || format!("--failure-rate: {v:?} is not a number within 0..=1");
                config.failure_rate = rate.ok_or_else(bad)?;
            }
            "--failures" => config.failure_kinds = parse_failures(&value()?)?,
            "--close-after" => config.close_after = Some(at_least_one(flag, &value()?)?),
            "--idle-close-ms" => {
                let ms = at_least_one(flag, &value()?)?;
                config.idle_close = Some(Duration::from_millis(ms));
            }
            "--write-ca" => write_ca = Some(PathBuf::from(value()?)),
            "--plain" => return Err("--plain: takes no value".into()),
            _ => return Err(format!("unknown argument {arg:?} (try --help)")),
        }
    }
    // Catches what single flags cannot: e.g. failures listed but none allowed with a rate.
    config.validate()?;
    Ok((listen, config, write_ca))
}

/// A whole number, at least 1: a count of responses, or milliseconds.
fn at_least_one(flag: &str, v: &str) -> Result<u64, String> {
    let n = v.parse::<u64>().ok().filter(|&n| n >= 1);
    n.ok_or_else(|| format!("{flag}: {v:?} is not a whole number >= 1"))
}

/// `N` or `MIN-MAX`, in milliseconds, at most [`MAX_LATENCY_MS`].
fn parse_latency(v: &str) -> Result<(u64, u64), String> {
    let bad = || {
        format!("--latency-ms: {v:?} is not N or MIN-MAX (milliseconds, MIN <= MAX <= {MAX_LATENCY_MS})")
    };
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    let (min, max) = match v.split_once('-') {
        Some((min, max)) => (number(min)?, number(max)?),
        None => (number(v)?, number(v)?),
    };
    if min > max || max > MAX_LATENCY_MS {
        return Err(bad());
    }
    Ok((min, max))
}

/// A comma list of [`Fault::name`]s; an empty list allows no failures.
fn parse_failures(v: &str) -> Result<Vec<Fault>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let fault = Fault::ALL.into_iter().find(|fault| fault.name() == name);
            fault.ok_or_else(|| {
                let known = Fault::ALL.map(Fault::name).join(",");
                format!("--failures: unknown kind {name:?} (known: {known})")
            })
        })
        .collect()
}

/// Serves until SIGINT or SIGTERM. Prints one line, `fanout simulator: serving URL`, once the
/// listener is bound (and the CA file, if asked for, is written), so a script may wait for it.
pub async fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return Ok(());
    }
    let (listen, config, write_ca) = parse_args(args)?;
    let listener = crate::http::bind(listen)
        .map_err(|e| format!("--listen: cannot listen on {listen}: {e}"))?;
    let simulator = Simulator::start_on(listener, config)
        .await
        .map_err(|e| format!("simulator: {e}"))?;
    if let Some(path) = &write_ca {
        // std::fs in async code: one small file, once, before serving; not worth a blocking task.
        std::fs::write(path, CA_PEM)
            .map_err(|e| format!("--write-ca: cannot write {}: {e}", path.display()))?;
    }
    println!("fanout simulator: serving {}", simulator.url());
    // Returning drops the simulator, which closes the listener and every connection.
    shutdown_signal(&simulator).await
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (what `kill` and service managers send); until
/// then, each SIGUSR1 resets the simulator's connections (the benchmark's `upstream-reset`).
///
/// Cancel safety: only listens; dropping it unregisters nothing that matters (tokio keeps the
/// signal handlers installed for the life of the process).
///
/// Unix only, like the crate (`shutdown.rs` listens for SIGTERM the same way).
async fn shutdown_signal(simulator: &Simulator) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| format!("cannot listen for {name}: {e}"))
    };
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut reset = listen(SignalKind::user_defined1(), "SIGUSR1")?;
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                return result.map_err(|e| format!("cannot listen for SIGINT: {e}"))
            }
            _ = terminate.recv() => return Ok(()),
            _ = reset.recv() => simulator.reset_connections(),
        }
    }
}
