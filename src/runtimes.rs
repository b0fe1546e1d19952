//! The tokio runtimes fanout runs on, and why more than one.
//!
//! - **The API's** (one worker per CPU): the accept loop, the connection tasks, the strategies and their
//!   deadlines. Its tasks are small and urgent: an answer due now must not wait.
//! - **The upstream's** (`--upstream-threads`, by default half the CPUs, at least 1): the upstream requests
//!   (TLS, the pool) while more than `api::SPREAD_ABOVE` callers are connected. In one runtime a wave of
//!   callers queues three requests' TLS work per call ahead of the answers due in the same milliseconds. The
//!   threads outnumber the CPUs on purpose: when both sides are busy, the kernel shares the CPUs between
//!   them by thread, so the API side keeps two thirds of them.
//! - **The shed runtime** (one worker at nice 10): connections whose calls are being shed, so that a flood
//!   of requests answered `503` takes only the CPU the admitted calls leave (`server/connection.rs`).
//!
//! With `--upstream-threads 0` one runtime does everything. What each earns, measured with and without it:
//! DESIGN.md, "Mechanisms under load, and what each earns".

use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

/// The runtimes of one service process. Built by `main` outside any async context, and shut down there:
/// the one place a runtime may be dropped.
pub struct Runtimes {
    pub api: Runtime,
    pub upstream: Option<Runtime>,
    pub shed: Option<Runtime>,
}

impl Runtimes {
    /// Builds the runtimes for a machine with `cpus` CPUs; `upstream_threads` as [`worker_threads`] reads it.
    pub fn build(upstream_threads: Option<usize>, cpus: usize) -> Result<Runtimes, String> {
        let (api_threads, upstream_threads) = worker_threads(upstream_threads, cpus);
        let mut runtimes = Runtimes {
            api: build("fanout-api", api_threads, || {})?,
            upstream: None,
            shed: None,
        };
        if upstream_threads > 0 {
            runtimes.upstream = Some(build("fanout-upstream", upstream_threads, || {})?);
            runtimes.shed = Some(build("fanout-shed", 1, lower_this_threads_priority)?);
        }
        Ok(runtimes)
    }

    pub fn upstream_handle(&self) -> Option<Handle> {
        self.upstream.as_ref().map(|r| r.handle().clone())
    }

    pub fn shed_handle(&self) -> Option<Handle> {
        self.shed.as_ref().map(|r| r.handle().clone())
    }

    /// Stops every runtime. Tasks still running (upstream requests finishing in the background) are
    /// dropped with their runtime; a DNS lookup stuck on a blocking pool is given a second, not forever.
    pub fn shutdown(self) {
        let all = [Some(self.api), self.upstream, self.shed];
        for runtime in all.into_iter().flatten() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Worker threads of the API runtime and of the upstream runtime on a machine with `cpus` CPUs: one per
/// CPU for the API, and `upstream_threads` (`None`: half as many, at least 1; `Some(0)`: no upstream
/// runtime) for the upstream.
pub fn worker_threads(upstream_threads: Option<usize>, cpus: usize) -> (usize, usize) {
    let cpus = cpus.max(1);
    (cpus, upstream_threads.unwrap_or((cpus / 2).max(1)))
}

/// A multi-threaded runtime with `threads` workers named `name`; `on_start` runs on each worker as it starts.
pub fn build(
    name: &str,
    threads: usize,
    on_start: impl Fn() + Send + Sync + 'static,
) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .on_thread_start(on_start)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime {name}: {e}"))
}

/// Sets the calling thread's nice value to 10, for the shed runtime's worker: it gives way to the other
/// runtimes' threads whenever they have work. On Linux the nice value is per thread; raising it needs no
/// privilege, and if it fails the runtime works as well, only without the priority. Elsewhere, nothing
/// (`who` 0 would renice the whole process).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        const SHED_NICE: i32 = 10;
        const PRIO_PROCESS: i32 = 0;
        extern "C" {
            // From the C library std links anyway (glibc or musl), as `setpriority(2)` declares it.
            fn setpriority(which: i32, who: u32, prio: i32) -> i32;
        }
        // SAFETY: a plain system call on the calling thread (`who` 0), with no memory passed.
        unsafe {
            setpriority(PRIO_PROCESS, 0, SHED_NICE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpus_are_split_between_the_api_and_the_upstream_runtimes() {
        assert_eq!(worker_threads(None, 1), (1, 1), "at least one each");
        assert_eq!(worker_threads(None, 2), (2, 1));
        assert_eq!(worker_threads(None, 8), (8, 4));
        assert_eq!(worker_threads(None, 5), (5, 2));
        assert_eq!(worker_threads(Some(3), 2), (2, 3));
        assert_eq!(worker_threads(Some(0), 4), (4, 0), "no upstream runtime");
    }
}
