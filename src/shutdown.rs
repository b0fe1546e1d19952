//! Stopping on SIGTERM or SIGINT: the first signal starts a graceful drain, a second one exits at once.
//!
//! `docker stop` and Kubernetes send SIGTERM to PID 1 and wait a grace period before SIGKILL; a person at
//! a terminal presses Ctrl-C, and presses it again when they do not want to wait.

use tokio::signal::unix::{signal, SignalKind};

/// Completes on the first SIGTERM or SIGINT. From then on, another one ends the process with status 130.
pub async fn signalled() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers (not expected on Linux) the default action still stops the process.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => eprintln!("fanout: SIGTERM: draining; send another signal to exit at once"),
        _ = int.recv() => eprintln!("fanout: SIGINT: draining; send another signal to exit at once"),
    }
    // Detached on purpose: it lives until the process exits, which is exactly its job.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("fanout: second signal: exiting without waiting for the drain");
        // `exit` runs no destructors: give the log's writer thread a moment for the lines already queued
        // (the drain's own, say), but no more: this signal means "now".
        crate::log::writer::flush(std::time::Duration::from_millis(200));
        std::process::exit(130);
    });
}
