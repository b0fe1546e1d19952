//! The process figures every Prometheus client library exports, read from `/proc` the way they read them
//! (client_golang through prometheus/procfs): `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds` and `process_start_time_seconds`.
//!
//! They keep their standard names, without the `fanout_` prefix: dashboards and alerts written for any
//! Prometheus-instrumented process find them there. Anything `/proc` does not give (another OS, a sandbox)
//! is left out of the page rather than reported as 0.

use std::fs;

use super::{counter, gauge};

/// Clock ticks per second in `/proc/*/stat` (USER_HZ). It is 100 on every Linux architecture, and
/// prometheus/procfs assumes the same; reading it properly needs `sysconf`, that is, libc.
const USER_HZ: f64 = 100.0;

/// Appends the process families.
pub fn render(out: &mut String) {
    let stat = fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which is in parentheses and may itself contain spaces; the first of
    // them is field 3 (state) of proc(5).
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].split_whitespace().collect())
        })
        .unwrap_or_default();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };

    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        counter(
            out,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) / USER_HZ,
        );
    }
    if let Some(kib) = status_kib("VmRSS") {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            kib * 1024,
        );
    }
    if let Some(kib) = status_kib("VmSize") {
        gauge(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            kib * 1024,
        );
    }
    if let Ok(fds) = fs::read_dir("/proc/self/fd") {
        // The directory being read holds a descriptor of its own, which the count leaves out.
        let open = fds.count().saturating_sub(1);
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            open,
        );
    }
    if let Some(max) = max_open_files() {
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    if let (Some(start_ticks), Some(boot)) = (field(22), boot_time()) {
        gauge(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            boot + start_ticks / USER_HZ,
        );
    }
}

/// A `kB` line of /proc/self/status, in KiB.
fn status_kib(key: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files, from /proc/self/limits ("Max open files  1024  4096  files").
fn max_open_files() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let values = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    values.split_whitespace().next()?.parse().ok()
}

/// The system's boot time in seconds since the epoch (`btime` in /proc/stat).
fn boot_time() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let seconds = stat.lines().find_map(|l| l.strip_prefix("btime "))?;
    seconds.trim().parse().ok()
}
