//! One scripted answer. Tests build them like sentences and queue them with
//! [`Simulator::script`](super::Simulator::script):
//!
//! ```
//! # use std::time::Duration;
//! # use fanout::simulator::{Fault, Reply, Simulator};
//! # fn demo(sim: &Simulator) {
//! let ms = Duration::from_millis;
//! sim.script([
//!     Reply::ok_time(7).after(ms(5)),  // 200 {"time": 7}, 5 ms after the request
//!     Reply::fault(Fault::Hang),       // never answers
//!     Reply::status(503).after(ms(1)), // 503 with a small JSON error body
//!     Reply::ok().close(),             // 200 with `Connection: close`, then close
//! ]);
//! # }
//! ```
//!
//! A reply without [`after`](Reply::after) waits the configured random latency first, like the
//! real upstream. Unless given with [`time`](Reply::time), the `time` of a success is that delay
//! in milliseconds, as the real service reports its own latency.

use std::time::Duration;

use super::Fault;

/// One answer to one `GET /api/work`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a Reply does nothing until it is given to Simulator::script"]
pub struct Reply {
    pub(super) kind: Kind,
    /// `None`: draw from the configured latency range when the request arrives.
    pub(super) delay: Option<Duration>,
    /// `None`: the delay in milliseconds.
    pub(super) time: Option<u64>,
    /// Send `Connection: close` (where there is a head to carry it), then close gracefully.
    pub(super) close: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// 200 `{"time": N}` with `Content-Length`.
    Ok,
    /// 200 `{"time": N}` with `Transfer-Encoding: chunked`, a chunk extension and a trailer.
    Chunked,
    /// What the fault says; see [`Fault`].
    Fault(Fault),
    /// This status with a small JSON error body.
    Status(u16),
    /// This status with exactly this body (as `application/json`, with `Content-Length`).
    Body(u16, Vec<u8>),
    /// Exactly these bytes, nothing added.
    Raw(Vec<u8>),
}

impl Reply {
    fn new(kind: Kind) -> Reply {
        Reply {
            kind,
            delay: None,
            time: None,
            close: false,
        }
    }

    /// A success: 200, `{"time": N}`.
    pub fn ok() -> Reply {
        Reply::new(Kind::Ok)
    }

    /// A success with a fixed `time` value: `Reply::ok().time(n)`.
    pub fn ok_time(time: u64) -> Reply {
        Reply::ok().time(time)
    }

    /// A success sent with `Transfer-Encoding: chunked`: several chunks, the first with a chunk
    /// extension, and a trailer field, all of which a client must parse past.
    pub fn chunked() -> Reply {
        Reply::new(Kind::Chunked)
    }

    /// One of the failure kinds the simulator also draws at random.
    pub fn fault(fault: Fault) -> Reply {
        Reply::new(Kind::Fault(fault))
    }

    /// This status with a small JSON error body, e.g. `Reply::status(503)`.
    /// The status is not checked: a 1xx/204/304 with a body is the caller's deliberate choice.
    pub fn status(status: u16) -> Reply {
        Reply::new(Kind::Status(status))
    }

    /// This status and body, framed with `Content-Length` and labelled `application/json`.
    pub fn body(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(Kind::Body(status, body.into()))
    }

    /// Exactly these bytes as the response, for protocol edge cases. The simulator adds nothing
    /// and then carries on reading requests, unless [`close`](Reply::close) is also given.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::new(Kind::Raw(bytes.into()))
    }

    /// Answer after exactly this delay instead of the configured random latency.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    /// Report this `time` in a success body (default: the delay in milliseconds).
    pub fn time(mut self, time: u64) -> Reply {
        self.time = Some(time);
        self
    }

    /// Send `Connection: close` with this answer and close the connection after it.
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }
}
