//! Trace context: following one call from its caller, through fanout, to each upstream request.
//!
//! fanout speaks W3C Trace Context (<https://www.w3.org/TR/trace-context/>), the `traceparent` header:
//!
//! ```text
//! traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
//!              |  |                                |                |
//!              |  trace-id: 32 lowercase hex,      parent-id: 16    trace-flags: 2 hex
//!              version     not all zero            hex, not zero    (bit 0: sampled)
//! ```
//!
//! - A call that arrives with a valid `traceparent` joins that trace: fanout's span for the call gets a new
//!   span id, and the caller's parent-id is recorded as its parent. A missing or invalid header (or more
//!   than one, §3.2: "the vendor MUST ... treat the header as invalid") starts a new trace; an invalid one is
//!   ignored, never an error for the caller.
//! - Each upstream request carries `traceparent` with the call's trace id and a span id of its own, so the
//!   upstream's logs tell the three attempts of one call apart.
//! - The response carries `traceresponse` (Trace Context Level 2) with the trace id and the call's span id,
//!   and the access log line carries the same ids: the caller can quote them to find the call.
//!
//! Ids are random (splitmix64 seeded from the clock, see `rng.rs`): §3.2.2.3 asks for uniqueness, not
//! secrecy. Nothing here allocates: a header is 55 bytes written into an array.

use std::fmt;
use std::sync::OnceLock;

use crate::rng::Rng;

/// The header name, in the lowercase HTTP/2 and HTTP/3 require and HTTP/1.1 accepts.
pub const TRACEPARENT: &str = "traceparent";
/// The response header (Trace Context Level 2) returning the trace id and fanout's span id.
pub const TRACERESPONSE: &str = "traceresponse";
/// Length of a version-00 header: 2 + 1 + 32 + 1 + 16 + 1 + 2.
pub const HEADER_LEN: usize = 55;

/// The only flag Trace Context Level 1 defines; other bits are not passed on (§3.2.2.5).
const SAMPLED: u8 = 0x01;

/// A 16-byte trace id, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// An 8-byte span id, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One `traceparent` value: whose trace, which span is the parent, and the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value by §3.2.2; `None` for anything invalid.
    ///
    /// Version `00` is exactly 55 characters. A higher version (not `ff`, which is forbidden) may be longer,
    /// and is read by its first four fields if the 56th character is a `-` (§3.2.4, "versioning").
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.as_bytes();
        if v.len() < HEADER_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex(&v[0..2])? as u8;
        match version {
            0xff => return None,
            0x00 if v.len() != HEADER_LEN => return None,
            _ if v.len() > HEADER_LEN && v[HEADER_LEN] != b'-' => return None,
            _ => {}
        }
        let trace_id = hex(&v[3..35])?;
        let parent_id = hex(&v[36..52])? as u64;
        let flags = hex(&v[53..55])? as u8;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags,
        })
    }

    /// The header value, version 00 (the one we implement, whatever version we received).
    pub fn to_header(&self) -> [u8; HEADER_LEN] {
        use std::io::Write;
        let mut out = [0u8; HEADER_LEN];
        // `io::Write` for a byte slice: formatted in place, no allocation; it fits exactly.
        let (trace_id, parent_id, flags) = (self.trace_id, self.parent_id, self.flags);
        let _ = write!(&mut out[..], "00-{trace_id}-{parent_id}-{flags:02x}");
        out
    }
}

/// fanout's span for one API call: the trace it belongs to, its own id, and its caller's span if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallTrace {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span (the parent-id of the `traceparent` it sent); `None` when we started the trace.
    pub parent_id: Option<SpanId>,
    pub flags: u8,
}

impl CallTrace {
    /// Joins the caller's trace, or starts a new one. A trace we start is marked sampled: the access log
    /// records every call, so the upstream may record its side too.
    pub fn continue_or_start(caller: Option<&TraceParent>) -> CallTrace {
        CallTrace {
            trace_id: caller.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            parent_id: caller.map(|p| p.parent_id),
            flags: caller.map_or(SAMPLED, |p| p.flags & SAMPLED),
        }
    }

    /// The `traceparent` for one upstream request of this call: a new span whose parent is the call's span.
    pub fn child(&self) -> TraceParent {
        self.with_parent(new_span_id())
    }

    /// The `traceresponse` value: the trace id and the call's span id (Trace Context Level 2 §3).
    pub fn response_header(&self) -> String {
        String::from_utf8_lossy(&self.with_parent(self.span_id).to_header()).into_owned()
    }

    /// A `traceparent` of this call's trace and flags, sent by the span `parent_id`.
    fn with_parent(&self, parent_id: SpanId) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id,
            flags: self.flags,
        }
    }
}

fn rng() -> &'static Rng {
    static RNG: OnceLock<Rng> = OnceLock::new();
    RNG.get_or_init(Rng::from_clock)
}

/// A random, non-zero span id.
fn new_span_id() -> SpanId {
    loop {
        let id = rng().next_u64();
        if id != 0 {
            return SpanId(id);
        }
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = (u128::from(rng().next_u64()) << 64) | u128::from(rng().next_u64());
        if id != 0 {
            return TraceId(id);
        }
    }
}

/// Lowercase hex digits only (§3.2.2: HEXDIGLC); uppercase is invalid.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(nibble))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_specs_example() {
        let p = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
        assert_eq!(&p.to_header()[..], EXAMPLE.as_bytes());
    }

    #[test]
    fn rejects_what_the_spec_calls_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", // short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", // 00 is exactly 55
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // separator
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", // not hex
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01xyz", // future, no dash
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_future_version_is_read_by_its_first_fields() {
        let p = TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
            .expect("valid");
        assert_eq!(p.trace_id, TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736));
        // We answer in the version we implement.
        assert!(p.to_header().starts_with(b"00-"));
    }

    #[test]
    fn a_call_keeps_the_callers_trace_and_each_attempt_gets_its_own_span() {
        let caller = TraceParent::parse(EXAMPLE).unwrap();
        let call = CallTrace::continue_or_start(Some(&caller));
        assert_eq!(call.trace_id, caller.trace_id);
        assert_eq!(call.parent_id, Some(caller.parent_id));
        assert_ne!(call.span_id, caller.parent_id);
        let (a, b) = (call.child(), call.child());
        assert_eq!((a.trace_id, b.trace_id), (call.trace_id, call.trace_id));
        assert_ne!(a.parent_id, b.parent_id);
        let fresh = CallTrace::continue_or_start(None);
        assert_ne!(fresh.trace_id, call.trace_id);
        assert_eq!(fresh.parent_id, None);
        assert!(TraceParent::parse(&fresh.response_header()).is_some());
    }
}
