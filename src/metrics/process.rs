//! The process figures every Prometheus client library exports, read from `/proc` the way they read them
//! (client_golang through prometheus/procfs): `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds` and `process_start_time_seconds`.
//!
//! They keep their standard names, without the `fanout_` prefix: dashboards and alerts written for any
//! Prometheus-instrumented process find them there. Anything `/proc` does not give (another OS, a sandbox)
//! is left out of the page rather than reported as 0.

use std::fs;
use std::str::FromStr;

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
    render_memory(out);
    render_descriptors(out);
    let boot_time = proc_figure::<f64>("/proc/stat", "btime ");
    if let (Some(start_ticks), Some(boot)) = (field(22), boot_time) {
        gauge(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            boot + start_ticks / USER_HZ,
        );
    }
}

/// Resident and virtual memory, from `/proc/self/status`.
fn render_memory(out: &mut String) {
    if let Some(kib) = proc_figure::<u64>("/proc/self/status", "VmRSS:") {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            kib * 1024,
        );
    }
    if let Some(kib) = proc_figure::<u64>("/proc/self/status", "VmSize:") {
        gauge(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            kib * 1024,
        );
    }
}

/// Open file descriptors and their limit.
fn render_descriptors(out: &mut String) {
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
    if let Some(max) = proc_figure::<u64>("/proc/self/limits", "Max open files") {
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max,
        );
    }
}

/// The first figure after `prefix` on a line of a `/proc` file: "VmRSS:  1234 kB" gives 1234 (KiB), and
/// "Max open files  1024  4096  files" the soft limit, 1024; `btime` in /proc/stat is the boot time in
/// seconds since the epoch.
fn proc_figure<T: FromStr>(path: &str, prefix: &str) -> Option<T> {
    let text = fs::read_to_string(path).ok()?;
    let rest = text.lines().find_map(|l| l.strip_prefix(prefix))?;
    rest.split_whitespace().next()?.parse().ok()
}
