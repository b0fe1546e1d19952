//! The `fanout` binary: read the configuration, build the runtimes, bind, and hand over to the library.

use std::process::ExitCode;
use std::time::Duration;

use fanout::config::{self, Command, Config};
use fanout::runtimes::{self, Runtimes};

mod healthcheck;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Before any runtime: a container probe runs every few seconds and needs no threads.
    if args.first().map(String::as_str) == Some("healthcheck") {
        return healthcheck::run(&args[1..]);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    if args.first().map(String::as_str) == Some("simulator") {
        let runtime = match runtimes::build("fanout-simulator", cpus, || {}) {
            Ok(runtime) => runtime,
            Err(e) => return fail(&e),
        };
        return match runtime.block_on(fanout::simulator::run(&args[1..])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("simulator: {e}")),
        };
    }

    let mut config = match Config::parse(&args, |name| std::env::var(name).ok()) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&format!("{e}\nrun `fanout --help` to see every setting")),
    };

    // The runtimes (`fanout::runtimes`): the API's, the upstream's and the shed one, or one for everything.
    let runtimes = match Runtimes::build(config.upstream_threads, cpus) {
        Ok(runtimes) => runtimes,
        Err(e) => return fail(&e),
    };
    config.upstream_runtime = runtimes.upstream_handle();
    config.shed_runtime = runtimes.shed_handle();

    let result = runtimes.api.block_on(async {
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
    runtimes.shutdown();
    // Log lines are written by a thread of their own (`fanout::log::writer`): let it finish, within reason.
    fanout::log::writer::flush(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("fanout: {message}");
    ExitCode::from(2)
}
