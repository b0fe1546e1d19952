//! fanout: answers each API call by fanning out concurrent HTTPS requests to an unreliable upstream.
//! (Crate doc with the reading order comes with the server.)

pub mod simulator;
pub mod upstream;
