//! The simulated upstream: `GET /api/work` answered like the real one, and worse.
//!
//! SKELETON: the interface below is fixed; the implementation is being written.

use std::net::SocketAddr;
use std::time::Duration;

/// What the simulator does with requests nobody scripted.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Latency before answering, drawn uniformly from `min..=max` milliseconds.
    pub latency_ms: (u64, u64),
    /// Share of unscripted requests (0.0..=1.0) that fail, with a kind drawn from `failure_kinds`.
    pub failure_rate: f64,
    pub failure_kinds: Vec<Fault>,
    /// Close a keep-alive connection after this many responses on it.
    pub close_after: Option<u64>,
    /// Close a keep-alive connection silently after it was idle this long.
    pub idle_close: Option<Duration>,
    /// Serve TLS (with the embedded test certificate) instead of plain HTTP.
    pub tls: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: (100, 600),
            failure_rate: 0.0,
            failure_kinds: Fault::ALL.to_vec(),
            close_after: None,
            idle_close: None,
            tls: true,
        }
    }
}

/// The ways one simulated answer can go wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Status500,
    InvalidJson,
    MissingTime,
    Reset,
    Hang,
    SlowBody,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Status500,
        Fault::InvalidJson,
        Fault::MissingTime,
        Fault::Reset,
        Fault::Hang,
        Fault::SlowBody,
    ];
}

/// A running simulated upstream. Dropping it stops it.
pub struct Simulator {}

impl Simulator {
    /// Binds 127.0.0.1:0 and starts serving in the background.
    pub async fn start(_config: SimConfig) -> std::io::Result<Simulator> {
        todo!()
    }

    pub fn addr(&self) -> SocketAddr {
        todo!()
    }

    /// `https://localhost:PORT/api/work` (or `http://127.0.0.1:PORT/api/work` without TLS).
    pub fn url(&self) -> String {
        todo!()
    }
}
