//! What the fuzz targets in `fuzz/` check: one function per target, each taking arbitrary bytes, feeding
//! them to the parsers the service runs, and panicking when a property breaks (libFuzzer reports the
//! panic as a crash). `tests/fuzz_corpus.rs` replays every committed input through these same functions on
//! stable Rust, so a crash found once stays fixed.
//!
//! Hidden from the docs rather than behind a cargo feature: the parsers stay `pub(crate)`, only these
//! three functions of bytes are public, and the replay runs in a plain `cargo test`, with no flag to forget.
//!
//! Every input is also read as it might arrive from a socket, cut into `pieces` whose lengths come from
//! its own bytes, so the fuzzer explores where reads end as well as what the bytes say.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::runtime::Runtime;

use crate::api;
use crate::config::Config;
use crate::http::chunked::{ChunkedDecoder, ChunkedError};
use crate::http::Response;
use crate::server::{self, Limits};
use crate::upstream;

/// Target `chunked`: the chunked decoder (RFC 9112 §7.1) reads `data` the same whether it comes in one
/// read or in pieces: the same data and the same end of the body, or the same error.
pub fn chunked(data: &[u8]) {
    let whole = decode([data]);
    let split = decode(pieces(data));
    assert_eq!(
        whole, split,
        "the whole input and its pieces decode differently"
    );
}

/// What the decoder made of some bytes: the data, and where in them the body ended (`None`: not yet).
type Decoded = Result<(Vec<u8>, Option<usize>), ChunkedError>;

/// Feeds the decoder one piece after another, as reads would, until the body ends or is malformed.
fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Decoded {
    let mut decoder = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        let before = out.len();
        let used = decoder.decode(piece, &mut out)?;
        assert!(
            out.len() - before <= piece.len(),
            "decoded more bytes than it was given"
        );
        if decoder.is_done() {
            return Ok((out, Some(offset + used)));
        }
        assert_eq!(
            used,
            piece.len(),
            "left bytes unused before the end of the body"
        );
        offset += used;
    }
    Ok((out, None))
}

/// The answers a request head can be refused with from its bytes alone (README, "Errors"), and the
/// `error` each one's body names. Not `408` (a matter of time), `413` (a body's size, judged after the
/// head), `503` (load), `502` or `504` (the upstream), and never a `500`.
const REFUSALS: [(u16, &str); 7] = [
    (400, "bad_request"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (414, "uri_too_long"),
    (431, "header_fields_too_large"),
    (501, "not_implemented"),
    (505, "http_version_not_supported"),
];

/// The longest `timeout` a caller may ask for, by default.
static MAX_TIMEOUT_MS: LazyLock<u64> = LazyLock::new(|| Config::default().max_timeout_ms);

/// Target `request_head`: raw bytes through the server's `parse` (httparse, the limits, `http/request.rs`)
/// and the API's routing and `timeout` (`api::route`), under the default limits and under limits small
/// enough for short inputs to reach. An incomplete head is waited for only while it is within
/// `max_head_bytes`; an answer without the upstream is a documented refusal, or `OPTIONS *`'s `200`; a
/// call is a `GET` or `HEAD` of an endpoint with a `timeout` no longer than allowed.
pub fn request_head(data: &[u8]) {
    let small = Limits {
        max_head_bytes: 256,
        max_uri_bytes: 64,
        max_headers: 4,
        ..Limits::default()
    };
    for limits in [Limits::default(), small] {
        let head = match server::parse(data, &limits) {
            Ok(Some((head, len))) => {
                assert!(len <= data.len(), "a head longer than the bytes");
                head
            }
            Ok(None) => {
                let held = data.len();
                assert!(
                    held <= limits.max_head_bytes,
                    "{held} bytes held for a head"
                );
                continue;
            }
            Err(refusal) => {
                assert_refusal(&refusal);
                continue;
            }
        };
        match api::route(&head, *MAX_TIMEOUT_MS) {
            Ok((_endpoint, timeout)) => {
                assert!(
                    head.method == "GET" || head.method == "HEAD",
                    "{}",
                    head.method
                );
                assert!(timeout.as_millis() <= u128::from(*MAX_TIMEOUT_MS));
            }
            Err(answer) if head.method == "OPTIONS" && head.target == "*" => {
                assert_eq!(answer.response.status, 200);
            }
            Err(answer) => assert_refusal(&answer.response),
        }
    }
}

/// A refusal README documents, whose body names that status's `error`.
fn assert_refusal(response: &Response) {
    let status = response.status;
    let Some(&(_, error)) = REFUSALS.iter().find(|(s, _)| *s == status) else {
        panic!("{status} is no refusal of a request head: {response:?}");
    };
    let body: Value = serde_json::from_slice(&response.body).expect("an error's body is JSON");
    assert_eq!(body["error"], error, "the error of a {status}");
}

/// The client's bounds on one answer in target `upstream_answer`: small, so that short inputs reach them.
const MAX_HEAD_BYTES: usize = 512;
const MAX_BODY_BYTES: usize = 256;

thread_local! {
    /// Runs the client's reads, which are async; one per thread, as building one per input costs more than
    /// most inputs do.
    static RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Target `upstream_answer`: the bytes of an upstream's answer, in pieces and then its close, read by the
/// client as it reads an answer (`upstream::read_answer`). No panic, and a success exactly when README's
/// "Upstream answers" calls it one, as `success_by_the_book` reads that: with the same `time`, the
/// object passed on being the body's.
pub fn upstream_answer(data: &[u8]) {
    let upstream = Replay(pieces(data).map(<[u8]>::to_vec).collect());
    let stream = tokio::io::join(upstream, tokio::io::sink());
    let read = upstream::read_answer(stream, MAX_HEAD_BYTES, MAX_BODY_BYTES);
    let verdict = RUNTIME.with(|runtime| runtime.block_on(read));
    match (verdict, success_by_the_book(data)) {
        (Ok(work), Some((time, object))) => {
            assert_eq!(work.time, time, "another time than the body's");
            let passed_on: Value = serde_json::from_str(&work.json).expect("JSON passed on");
            assert_eq!(passed_on, object, "another object than the body's");
        }
        (Err(_), None) => {}
        (Ok(work), None) => panic!("a success README does not call one: {work:?}"),
        (Err(error), Some(_)) => panic!("a success by README refused: {error}"),
    }
}

/// README's success, read from the bytes without the client's code: after any 1xx (but the `101` the client
/// never asks for), a head with status `200`, whose body as RFC 9112 §6.3 frames it ([`framed_body`]) is a
/// JSON object with a `time` from 0 to 2^64 - 1 (serde_json reads a number with a sign, a fraction or an
/// exponent as no u64). Within the client's bounds: each head at most `MAX_HEAD_BYTES` and
/// `upstream::MAX_HEADERS` fields, the body at most `MAX_BODY_BYTES`, `MAX_INTERIM_RESPONSES` 1xx.
fn success_by_the_book(data: &[u8]) -> Option<(u64, Value)> {
    let mut rest = data;
    for _ in 0..=upstream::MAX_INTERIM_RESPONSES {
        let mut fields = [httparse::EMPTY_HEADER; upstream::MAX_HEADERS];
        let mut head = httparse::Response::new(&mut fields);
        let len = match head.parse(rest) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
            _ => return None,
        };
        rest = &rest[len..];
        match head.code? {
            101 => return None,
            100..=199 => continue,
            200 => {}
            _ => return None,
        }
        let body = framed_body(head.headers, rest).filter(|b| b.len() <= MAX_BODY_BYTES)?;
        let object: Value = serde_json::from_slice(&body).ok()?;
        let time = object.as_object()?.get("time")?.as_u64()?;
        return Some((time, object));
    }
    None
}

/// The body of a `200` that `rest` begins, by RFC 9112 §6.3: with a Transfer-Encoding, the chunked data if
/// `chunked` is the final coding, else all until the close (rules 3, 4); without one, as many bytes as a
/// valid Content-Length says, the same number however often repeated (rules 5, 6; RFC 9110 §8.6); without
/// either, all until the close (rule 8). `None`: no body can be framed.
fn framed_body(fields: &[httparse::Header<'_>], rest: &[u8]) -> Option<Vec<u8>> {
    let named = |name: &'static str| {
        let lines = fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name));
        lines.map(|f| f.value)
    };
    if named("transfer-encoding").next().is_some() {
        let codings: Vec<&[u8]> = named("transfer-encoding").flat_map(list).collect();
        let last = codings.last().and_then(|c| c.split(|&b| b == b';').next());
        if !last.is_some_and(|c| ows_trim(c).eq_ignore_ascii_case(b"chunked")) {
            return Some(rest.to_vec());
        }
        let (data, end) = decode([rest]).ok()?;
        return end.map(|_| data);
    }
    // Each Content-Length line is a list of numbers, and a line with none is invalid too.
    let lengths: Vec<Option<u64>> = named("content-length")
        .flat_map(|value| {
            let numbers: Vec<Option<u64>> = list(value).map(decimal).collect();
            if numbers.is_empty() {
                vec![None]
            } else {
                numbers
            }
        })
        .collect();
    let Some(&first) = lengths.first() else {
        return Some(rest.to_vec());
    };
    if lengths.iter().any(|&other| other != first) {
        return None;
    }
    rest.get(..usize::try_from(first?).ok()?)
        .map(<[u8]>::to_vec)
}

/// `1*DIGIT`, if it fits in a u64.
fn decimal(digits: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(digits).ok()?;
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())?
}

/// The elements of a comma-separated field value, without the empty ones (RFC 9110 §5.6.1).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(ows_trim)
        .filter(|item| !item.is_empty())
}

/// Without optional whitespace, which is SP and HTAB only (RFC 9110 §5.6.3).
fn ows_trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `data` cut into pieces of 1 to 16 bytes, each as long as its own first byte says (its low four bits,
/// plus one): where the input is cut is part of the input, and the fuzzer varies both.
fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let &first = rest.first()?;
        let (piece, after) = rest.split_at(rest.len().min(usize::from(first & 15) + 1));
        rest = after;
        Some(piece)
    })
}

/// An upstream in memory: each read takes the next piece (or as much of it as fits), and after the last
/// one the stream is at its end, as when the server closes the connection.
struct Replay(VecDeque<Vec<u8>>);

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(piece) = self.0.front_mut() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.0.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}
