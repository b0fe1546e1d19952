//! A sans-IO decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! "Sans-IO" means it never reads a socket: the caller hands it whatever bytes arrived, it says how many it
//! used and appends the decoded data to an output buffer. That makes it usable for any stream (the upstream
//! client's responses here, request bodies on the server side) and testable with plain byte strings, split at
//! every possible point.
//!
//! The grammar, from RFC 9112 §7.1 (BWS is "bad" optional whitespace, tolerated but never sent):
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size     = 1*HEXDIG
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! - §7.1: "The chunk-size field is a string of hex digits ... Recipients MUST anticipate potentially large hex
//!   numerals and prevent parsing errors due to integer conversion overflows": sizes use checked arithmetic.
//! - §7.1.1: "A recipient MUST ignore unrecognized chunk extensions", and we recognise none. Their length is
//!   still bounded (by [`MAX_LINE_BYTES`]), as the same section asks a server to limit them.
//! - §7.1.2: trailer fields may be discarded ("a recipient MAY ... discard"); we skip them, bounded too.
//! - Line endings must be CRLF: a bare LF is an error, which closes the door on request smuggling games that
//!   rely on two parsers disagreeing about line ends.

use std::fmt;

/// Longest chunk-size line (size plus extensions) or trailer line we accept, CRLF excluded. Sizes themselves
/// need at most 16 hex digits; the rest is room for extensions we ignore anyway.
pub(crate) const MAX_LINE_BYTES: usize = 4096;

/// Most trailer bytes we skip in total before calling the message malformed.
pub(crate) const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a chunked body is malformed. Every case means the framing is lost, so the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkedError {
    /// A chunk-size line did not start with a hex digit, or had junk after it.
    InvalidSize,
    /// The chunk size does not fit in a u64.
    SizeOverflow,
    /// A CR not followed by LF, a bare LF, or chunk data not followed by CRLF.
    MissingCrlf,
    /// A size line or trailer line longer than [`MAX_LINE_BYTES`].
    LineTooLong,
    /// More than [`MAX_TRAILER_BYTES`] of trailer fields.
    TrailersTooLarge,
}

impl ChunkedError {
    /// A fixed description, for errors that carry a `&'static str`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChunkedError::InvalidSize => "chunked body: invalid chunk size",
            ChunkedError::SizeOverflow => "chunked body: chunk size overflows",
            ChunkedError::MissingCrlf => "chunked body: expected CRLF",
            ChunkedError::LineTooLong => "chunked body: chunk-size or trailer line too long",
            ChunkedError::TrailersTooLarge => "chunked body: trailer section too large",
        }
    }
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ChunkedError {}

/// Where the decoder is in the grammar above. Each state consumes one byte at a time except `Data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a chunk size.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// After the digits: optional whitespace, then `;` or CR.
    SizeEnd,
    /// Inside chunk extensions: skipped up to CR.
    Extension,
    /// Saw the CR ending a size line; LF must follow.
    SizeLf,
    /// Copying chunk data; `remaining` bytes to go.
    Data,
    /// Chunk data done; CR must follow.
    DataCr,
    /// LF must follow.
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line: skipped up to CR.
    Trailer,
    /// Saw the CR ending a trailer line; LF must follow.
    TrailerLf,
    /// Saw the CR of the final empty line; LF must follow.
    EndLf,
    /// The whole chunked body has been read.
    Done,
}

/// Decodes one chunked body. Feed it bytes with [`ChunkedDecoder::decode`] until [`ChunkedDecoder::is_done`].
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// The chunk size being parsed, then the data bytes still to copy.
    remaining: u64,
    /// Bytes seen on the current size or trailer line, for [`MAX_LINE_BYTES`].
    line_bytes: usize,
    /// Trailer bytes seen so far, for [`MAX_TRAILER_BYTES`].
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            remaining: 0,
            line_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// True once the last chunk, the trailers and the final CRLF have been consumed.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as it can, appending chunk data to `out`.
    ///
    /// Returns how many bytes of `input` were consumed. That is all of them unless the body ended inside
    /// `input`: bytes after the end belong to whatever follows (on a keep-alive connection, the next message)
    /// and are left for the caller. `out` grows by at most `input.len()` per call, so a caller enforcing a
    /// body limit only needs to check `out.len()` between calls.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Data {
                // The one state that moves many bytes at once.
                let available = input.len() - i;
                let take = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(input[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// Advances the state machine by one byte of framing (never called in `Data`).
    fn step(&mut self, byte: u8) -> Result<(), ChunkedError> {
        match self.state {
            State::SizeStart | State::Size | State::SizeEnd | State::Extension => {
                self.line_bytes += 1;
                if self.line_bytes > MAX_LINE_BYTES {
                    return Err(ChunkedError::LineTooLong);
                }
            }
            State::TrailerStart | State::Trailer => {
                self.line_bytes += 1;
                self.trailer_bytes += 1;
                if self.line_bytes > MAX_LINE_BYTES {
                    return Err(ChunkedError::LineTooLong);
                }
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return Err(ChunkedError::TrailersTooLarge);
                }
            }
            _ => {}
        }

        self.state = match (self.state, byte) {
            (State::SizeStart, _) => {
                // chunk-size = 1*HEXDIG: at least one digit.
                let digit = hex_value(byte).ok_or(ChunkedError::InvalidSize)?;
                self.remaining = u64::from(digit);
                State::Size
            }
            (State::Size, b';') => State::Extension,
            (State::Size, b' ' | b'\t') => State::SizeEnd,
            (State::Size, b'\r') => State::SizeLf,
            (State::Size, _) => {
                let digit = hex_value(byte).ok_or(ChunkedError::InvalidSize)?;
                self.remaining = self
                    .remaining
                    .checked_mul(16)
                    .and_then(|r| r.checked_add(u64::from(digit)))
                    .ok_or(ChunkedError::SizeOverflow)?;
                State::Size
            }
            (State::SizeEnd, b' ' | b'\t') => State::SizeEnd,
            (State::SizeEnd, b';') => State::Extension,
            (State::SizeEnd, b'\r') => State::SizeLf,
            (State::SizeEnd, _) => return Err(ChunkedError::InvalidSize),
            (State::Extension, b'\r') => State::SizeLf,
            (State::Extension, b'\n') => return Err(ChunkedError::MissingCrlf),
            (State::Extension, _) => State::Extension,
            (State::SizeLf, b'\n') => {
                self.line_bytes = 0;
                if self.remaining == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::SizeStart,
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::Trailer, b'\n') => return Err(ChunkedError::MissingCrlf),
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, _) => State::Trailer,
            (State::TrailerLf, b'\n') => {
                self.line_bytes = 0;
                State::TrailerStart
            }
            (State::EndLf, b'\n') => State::Done,
            (
                State::SizeLf | State::DataCr | State::DataLf | State::TrailerLf | State::EndLf,
                _,
            ) => return Err(ChunkedError::MissingCrlf),
            (State::Data | State::Done, _) => unreachable!("decode() never steps in Data or Done"),
        };
        Ok(())
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one call; returns (data, consumed, done).
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut out = Vec::new();
        let used = decoder.decode(input, &mut out)?;
        Ok((out, used, decoder.is_done()))
    }

    #[test]
    fn decodes_chunks_and_stops_at_the_end_of_the_body() {
        let input = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\nNEXT";
        let (out, used, done) = decode_all(input).expect("valid");
        assert_eq!(out, b"Wikipedia");
        assert!(done);
        assert_eq!(
            &input[used..],
            b"NEXT",
            "bytes after the body are left for the next message"
        );
    }

    #[test]
    fn gives_the_same_result_when_fed_one_byte_at_a_time() {
        let input =
            b"A;name=value\r\n0123456789\r\n1 ; x\r\n!\r\n0\r\nExpires: never\r\nX: y\r\n\r\n";
        let mut decoder = ChunkedDecoder::new();
        let mut out = Vec::new();
        for byte in input.iter() {
            assert_eq!(decoder.decode(std::slice::from_ref(byte), &mut out), Ok(1));
        }
        assert!(decoder.is_done());
        assert_eq!(out, b"0123456789!");
    }

    #[test]
    fn ignores_extensions_and_skips_trailers() {
        let input =
            b"3;ext=\"quoted;value\"\r\nabc\r\n0;last\r\nTrailer-One: 1\r\nTrailer-Two: 2\r\n\r\n";
        let (out, used, done) = decode_all(input).expect("valid");
        assert_eq!(
            (out.as_slice(), used, done),
            (&b"abc"[..], input.len(), true)
        );
    }

    #[test]
    fn accepts_uppercase_hex_and_leading_zeros() {
        let (out, _, done) = decode_all(b"00B\r\nhello world\r\n000\r\n\r\n").expect("valid");
        assert_eq!((out.as_slice(), done), (&b"hello world"[..], true));
    }

    #[test]
    fn waits_for_more_input_when_the_body_is_incomplete() {
        let (out, used, done) = decode_all(b"5\r\nhel").expect("valid so far");
        assert_eq!((out.as_slice(), used, done), (&b"hel"[..], 6, false));
    }

    #[test]
    fn rejects_a_size_that_overflows_u64() {
        assert_eq!(
            decode_all(b"10000000000000000\r\n"),
            Err(ChunkedError::SizeOverflow)
        );
        // The largest u64 is fine as far as parsing goes (the caller's body limit stops it).
        assert!(decode_all(b"ffffffffffffffff\r\n").is_ok());
    }

    #[test]
    fn rejects_missing_or_invalid_sizes() {
        assert_eq!(decode_all(b"\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(decode_all(b";ext\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(decode_all(b"-1\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(decode_all(b"0x10\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(decode_all(b"1 2\r\n"), Err(ChunkedError::InvalidSize));
    }

    #[test]
    fn requires_crlf_everywhere() {
        assert_eq!(
            decode_all(b"3\nabc\r\n"),
            Err(ChunkedError::InvalidSize),
            "bare LF after the size"
        );
        assert_eq!(
            decode_all(b"3\r\nabcX"),
            Err(ChunkedError::MissingCrlf),
            "data longer than its size"
        );
        assert_eq!(decode_all(b"3\r\nabc\rX"), Err(ChunkedError::MissingCrlf));
        assert_eq!(
            decode_all(b"3;ext\nabc"),
            Err(ChunkedError::MissingCrlf),
            "bare LF after an extension"
        );
        assert_eq!(
            decode_all(b"0\r\n\n"),
            Err(ChunkedError::MissingCrlf),
            "bare LF as the final line"
        );
        assert_eq!(
            decode_all(b"0\r\nX: y\n"),
            Err(ChunkedError::MissingCrlf),
            "bare LF after a trailer"
        );
        assert_eq!(decode_all(b"0\r\n\rX"), Err(ChunkedError::MissingCrlf));
    }

    #[test]
    fn bounds_line_and_trailer_lengths() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES));
        assert_eq!(decode_all(&long_ext), Err(ChunkedError::LineTooLong));

        let mut long_trailer = b"0\r\n".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 1));
        assert_eq!(decode_all(&long_trailer), Err(ChunkedError::LineTooLong));

        let mut many_trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILER_BYTES / 8) {
            many_trailers.extend_from_slice(b"X-Pad: 1\r\n");
        }
        assert_eq!(
            decode_all(&many_trailers),
            Err(ChunkedError::TrailersTooLarge)
        );
    }
}
