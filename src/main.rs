//! The `fanout` binary: read the configuration, bind, and hand over to the library.

use std::process::ExitCode;

use fanout::config::{self, Command, Config};

mod healthcheck;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Before the runtime: a container probe runs every few seconds and needs no threads.
    if args.first().map(String::as_str) == Some("healthcheck") {
        return healthcheck::run(&args[1..]);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };

    if args.first().map(String::as_str) == Some("simulator") {
        return match runtime.block_on(fanout::simulator::run(&args[1..])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("simulator: {e}")),
        };
    }

    let config = match Config::from_args_and_env(&args) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&format!("{e}\nrun `fanout --help` to see every setting")),
    };

    let result = runtime.block_on(async {
        let listener = fanout::server::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let admin = match config.admin_listen {
            Some(addr) => Some(fanout::server::bind(addr).map_err(|e| {
                format!("cannot listen on {addr} (--admin-listen, FANOUT_ADMIN_LISTEN): {e}")
            })?),
            None => None,
        };
        fanout::serve(listener, admin, config, fanout::shutdown::signalled()).await
    });
    // Log lines are written by a thread of their own (`fanout::log::writer`): let it finish, within reason.
    fanout::log::writer::flush(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("fanout: {message}");
    ExitCode::from(2)
}
