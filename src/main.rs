//! The `fanout` binary: read the configuration, build the runtimes, bind, and hand over to the library.

use std::process::ExitCode;
use std::time::Duration;

use fanout::config::{self, Command, Config};
use tokio::runtime::Runtime;

mod healthcheck;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Before any runtime: a container probe runs every few seconds and needs no threads.
    if args.first().map(String::as_str) == Some("healthcheck") {
        return healthcheck::run(&args[1..]);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    if args.first().map(String::as_str) == Some("simulator") {
        let runtime = match build_runtime("fanout-simulator", cpus) {
            Ok(runtime) => runtime,
            Err(e) => return fail(&e),
        };
        return match runtime.block_on(fanout::simulator::run(&args[1..])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("simulator: {e}")),
        };
    }

    let mut config = match Config::from_args_and_env(&args) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&format!("{e}\nrun `fanout --help` to see every setting")),
    };

    // Two runtimes (DESIGN.md, "Two runtimes"): the API's (the accept loop, the connection tasks, the
    // deadlines) and the upstream's (the request tasks: TLS, the pool), used when many callers are
    // connected; and a third for shed connections (below). All are shut down at the end of `main`, outside
    // any async context, which is the one place a runtime may be.
    let (api_threads, upstream_threads) = config.worker_threads(cpus);
    let runtime = match build_runtime("fanout-api", api_threads) {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    let upstream_runtime = match upstream_threads {
        0 => None,
        n => match build_runtime("fanout-upstream", n) {
            Ok(runtime) => Some(runtime),
            Err(e) => return fail(&e),
        },
    };
    config.upstream_runtime = upstream_runtime.as_ref().map(|r| r.handle().clone());
    // A third, of one worker, for connections whose calls are being shed (DESIGN.md, "Shedding on a
    // runtime of its own"); with `--upstream-threads 0`, one runtime does everything, as before.
    let shed_runtime = match upstream_threads {
        0 => None,
        _ => match build_shed_runtime() {
            Ok(runtime) => Some(runtime),
            Err(e) => return fail(&e),
        },
    };
    config.shed_runtime = shed_runtime.as_ref().map(|r| r.handle().clone());

    let result = runtime.block_on(async {
        let listener = fanout::http::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let admin = match config.admin_listen {
            Some(addr) => Some(fanout::http::bind(addr).map_err(|e| {
                format!("cannot listen on {addr} (--admin-listen, FANOUT_ADMIN_LISTEN): {e}")
            })?),
            None => None,
        };
        fanout::serve(listener, admin, config, fanout::shutdown::signalled()).await
    });
    // Tasks still running (upstream requests finishing in the background) are dropped with their runtime;
    // a DNS lookup stuck on the blocking pool is given a second, not forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    for other in [upstream_runtime, shed_runtime].into_iter().flatten() {
        other.shutdown_timeout(Duration::from_secs(1));
    }
    // Log lines are written by a thread of their own (`fanout::log::writer`): let it finish, within reason.
    fanout::log::writer::flush(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A multi-threaded runtime with `threads` workers named `name`.
fn build_runtime(name: &str, threads: usize) -> Result<Runtime, String> {
    build_runtime_with(name, threads, || {})
}

/// The same, with `on_start` run on each worker thread as it starts.
fn build_runtime_with(
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

/// The shed runtime: one worker, at nice 10. Its thread gives way to the other runtimes' whenever they have
/// work, so a flood of requests that are shed uses only the CPU the admitted calls leave: in `overload`
/// (5,000 callers), admitted calls in time went from 95.1-98.6% at nice 0 to 99.999-100% at nice 10, in
/// three alternated pairs (DESIGN.md, "Shedding on a runtime of its own"). On Linux the nice value is per
/// thread; raising it needs no privilege, and if it fails the runtime works as well, only without the
/// priority.
fn build_shed_runtime() -> Result<Runtime, String> {
    build_runtime_with("fanout-shed", 1, lower_this_threads_priority)
}

/// Sets the calling thread's nice value to 10 (Linux only: elsewhere `who` 0 would renice the whole
/// process).
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

fn fail(message: &str) -> ExitCode {
    eprintln!("fanout: {message}");
    ExitCode::from(2)
}
