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
//! chunk-ext-name = token
//! chunk-ext-val  = token / quoted-string
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! with, from RFC 9110 §5.6: `token = 1*tchar`; `BWS = OWS = *( SP / HTAB )`; `quoted-string = DQUOTE
//! *( qdtext / quoted-pair ) DQUOTE`, `qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text`,
//! `quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )`, `obs-text = %x80-FF`.
//!
//! - §7.1: "The chunk-size field is a string of hex digits ... Recipients MUST anticipate potentially large hex
//!   numerals and prevent parsing errors due to integer conversion overflows": sizes use checked arithmetic.
//! - §7.1.1: "A recipient MUST ignore unrecognized chunk extensions", and we recognise none. Ignored is not
//!   unread: each one is parsed to the grammar above, byte by byte, and anything else (a `;` with no name, a
//!   name that is not a token, a control character, whitespace the grammar does not place) is an error. Two
//!   parsers on a message's path that skip such a line differently disagree on where the body ends, which
//!   is how a request is smuggled past one of them. Their length is bounded too (by [`MAX_LINE_BYTES`]), as
//!   the same section asks a server to limit them.
//! - Whitespace: the strict reading. It is allowed exactly where the grammar puts BWS, and nowhere else:
//!   before each `;`, after it, and on either side of `=`. So `1 ;a = b` is valid, but `1 ` (whitespace
//!   after the size with no extension after it) and `1;a=b ` (whitespace before the CRLF) are not: no BWS
//!   precedes the CRLF. Some parsers let trailing whitespace pass; a line they read one way and we another
//!   is the disagreement this decoder refuses to take part in.
//! - §7.1.2: trailer fields may be discarded ("a recipient MAY ... discard"); we skip them, bounded too.
//! - Line endings must be CRLF: a bare LF is an error, which closes the door on request smuggling games that
//!   rely on two parsers disagreeing about line ends.

/// Longest chunk-size line (size plus extensions) or trailer line we accept, counting the CR that ends it but
/// not the LF. Sizes themselves need at most 16 hex digits; the rest is room for extensions we ignore anyway.
pub(crate) const MAX_LINE_BYTES: usize = 4096;

/// Most trailer bytes we skip in total before calling the message malformed.
pub(crate) const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a chunked body is malformed. Every case means the framing is lost, so the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkedError {
    /// A chunk-size line did not start with a hex digit, or had junk after it (whitespace included, unless a
    /// chunk extension follows it).
    InvalidSize,
    /// A chunk extension that does not follow the `chunk-ext` grammar.
    InvalidExtension,
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
    /// A fixed description, for errors that carry a `&'static str` (the only way callers report one).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChunkedError::InvalidSize => "chunked body: invalid chunk size",
            ChunkedError::InvalidExtension => "chunked body: invalid chunk extension",
            ChunkedError::SizeOverflow => "chunked body: chunk size overflows",
            ChunkedError::MissingCrlf => "chunked body: expected CRLF",
            ChunkedError::LineTooLong => "chunked body: chunk-size or trailer line too long",
            ChunkedError::TrailersTooLarge => "chunked body: trailer section too large",
        }
    }
}

/// Where the decoder is in the grammar above. Each state consumes one byte at a time except `Data`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a chunk size.
    #[default]
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// Whitespace after the digits: the BWS before a `;`, which must follow.
    SizeEnd,
    /// Inside the chunk extensions, where [`Ext`] says.
    Extension(Ext),
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

/// Where the decoder is in `chunk-ext`, one byte at a time so that a line split anywhere across reads is
/// judged the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// After a `;`: BWS, then the first character of a name.
    NameStart,
    /// Inside a name; then BWS, `=`, `;` or CR.
    Name,
    /// BWS after a name: `=` or `;` must follow.
    NameEnd,
    /// After `=`: BWS, then a token or a quoted string.
    ValueStart,
    /// Inside a token value; then BWS, `;` or CR.
    Token,
    /// Inside a quoted-string value.
    Quoted,
    /// After a `\` in a quoted string: the character it escapes.
    QuotedPair,
    /// After the closing quote: BWS, `;` or CR.
    ValueEnd,
    /// BWS after a value: `;` must follow.
    ValueBws,
}

impl Ext {
    /// The state after one more byte of `chunk-ext` (see the module doc for the grammar and where BWS goes).
    fn step(self, byte: u8) -> Result<State, ChunkedError> {
        use Ext::*;
        let next = match (self, byte) {
            // BWS ";" BWS chunk-ext-name
            (NameStart, b' ' | b'\t') => NameStart,
            (NameStart | Name, b) if is_tchar(b) => Name,
            // [ BWS "=" BWS chunk-ext-val ]
            (Name | NameEnd, b' ' | b'\t') => NameEnd,
            (Name | NameEnd, b'=') => ValueStart,
            (ValueStart, b' ' | b'\t') => ValueStart,
            (ValueStart | Token, b) if is_tchar(b) => Token,
            (ValueStart, b'"') => Quoted,
            (Quoted, b'"') => ValueEnd,
            (Quoted, b'\\') => QuotedPair,
            // qdtext is every quotable byte but DQUOTE and the backslash, which the two arms above take.
            (Quoted | QuotedPair, b) if quotable(b) => Quoted,
            // The BWS before the next ";", after a name or a value.
            (Token | ValueEnd | ValueBws, b' ' | b'\t') => ValueBws,
            (Name | NameEnd | Token | ValueEnd | ValueBws, b';') => NameStart,
            // The line ends after a name or a value, never after BWS: the grammar puts none before CRLF.
            (Name | Token | ValueEnd, b'\r') => return Ok(State::SizeLf),
            (_, b'\n') => return Err(ChunkedError::MissingCrlf),
            _ => return Err(ChunkedError::InvalidExtension),
        };
        Ok(State::Extension(next))
    }
}

/// Decodes one chunked body. Feed it bytes with [`ChunkedDecoder::decode`] until [`ChunkedDecoder::is_done`].
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// The chunk size being parsed, then the data bytes still to copy.
    remaining: u64,
    /// Bytes seen on the current size or trailer line, for [`MAX_LINE_BYTES`].
    line_bytes: usize,
    /// Trailer bytes seen so far, for [`MAX_TRAILER_BYTES`].
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
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
        self.count_against_bounds()?;
        self.state = match (self.state, byte) {
            (State::Size, b';') => State::Extension(Ext::NameStart),
            (State::Size, b' ' | b'\t') => State::SizeEnd,
            (State::Size, b'\r') => State::SizeLf,
            // chunk-size = 1*HEXDIG: at least one digit. `remaining` is 0 at the start of a size: the
            // previous chunk's data has all been copied.
            (State::SizeStart | State::Size, _) => self.size_digit(byte)?,
            (State::SizeEnd, b' ' | b'\t') => State::SizeEnd,
            (State::SizeEnd, b';') => State::Extension(Ext::NameStart),
            // Whitespace after the size is the BWS of an extension: without one it is junk.
            (State::SizeEnd, _) => return Err(ChunkedError::InvalidSize),
            (State::Extension(ext), _) => ext.step(byte)?,
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

    /// Counts the byte about to be stepped against [`MAX_LINE_BYTES`] if it is on a size or trailer line,
    /// and against [`MAX_TRAILER_BYTES`] if on a trailer line.
    fn count_against_bounds(&mut self) -> Result<(), ChunkedError> {
        let on_size_line = matches!(
            self.state,
            State::SizeStart | State::Size | State::SizeEnd | State::Extension(_)
        );
        let on_trailer = matches!(self.state, State::TrailerStart | State::Trailer);
        if on_size_line || on_trailer {
            self.line_bytes += 1;
            if self.line_bytes > MAX_LINE_BYTES {
                return Err(ChunkedError::LineTooLong);
            }
        }
        if on_trailer {
            self.trailer_bytes += 1;
            if self.trailer_bytes > MAX_TRAILER_BYTES {
                return Err(ChunkedError::TrailersTooLarge);
            }
        }
        Ok(())
    }

    /// One more hex digit of the chunk size, into `remaining` with checked arithmetic (§7.1: "prevent
    /// parsing errors due to integer conversion overflows").
    fn size_digit(&mut self, byte: u8) -> Result<State, ChunkedError> {
        let digit = char::from(byte)
            .to_digit(16)
            .ok_or(ChunkedError::InvalidSize)?;
        self.remaining = self
            .remaining
            .checked_mul(16)
            .and_then(|r| r.checked_add(u64::from(digit)))
            .ok_or(ChunkedError::SizeOverflow)?;
        Ok(State::Size)
    }
}

/// tchar (RFC 9110 §5.6.2): the characters of a token.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// What a quoted-pair may escape (RFC 9110 §5.6.4): HTAB, SP, VCHAR or obs-text; no other control character.
fn quotable(byte: u8) -> bool {
    matches!(byte, b'\t' | b' '..=b'~' | 0x80..=0xff)
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

    /// Decodes `input` one byte per call, as if each byte arrived in a read of its own.
    fn decode_bytewise(input: &[u8]) -> Result<Vec<u8>, ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut out = Vec::new();
        for byte in input {
            decoder.decode(std::slice::from_ref(byte), &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn accepts_every_extension_the_grammar_allows() {
        for line in [
            "1;a",
            "1;a=b",
            "1;a;b=c;d=\"e\"",
            "1 ; a = b",         // BWS around ";" and "="
            "1\t;\ta\t=\t\"x\"", // BWS is HTAB too
            "1;a ;b",            // BWS before the next ";"
            "1;a=b ;c=\"d\" ;e",
            "1;a=\"\"",              // an empty quoted string
            "1;a=\"q \\\" \\\\ v\"", // quoted-pairs: an escaped DQUOTE and backslash
            "1;a=\"tab\tin\"",       // HTAB is qdtext
            "1;!#$%&'*+-.^_`|~09Az=!#$%&'*+-.^_`|~09Az",
        ] {
            let input = format!("{line}\r\nx\r\n0\r\n\r\n");
            assert_eq!(
                decode_all(input.as_bytes()),
                Ok((b"x".to_vec(), input.len(), true)),
                "{line:?}"
            );
            assert_eq!(
                decode_bytewise(input.as_bytes()),
                Ok(b"x".to_vec()),
                "{line:?}"
            );
        }
        // obs-text (%x80-FF) is allowed inside a quoted string, though not in a token.
        let obs = b"1;a=\"caf\xc3\xa9\"\r\nx\r\n0\r\n\r\n";
        assert_eq!(decode_bytewise(obs), Ok(b"x".to_vec()));
    }

    #[test]
    fn rejects_extensions_the_grammar_does_not_allow() {
        for line in [
            &b"1;"[..], // ";" with no name
            b"1; ",     // ... and BWS
            b"1;;a",
            b"1;=b", // a value with no name
            b"1;a=", // "=" with no value
            b"1;a= ",
            b"1;a=b=c",
            b"1;a(b", // "(" is no tchar
            b"1;a\"b\"",
            b"1;a=b c",        // whitespace inside a token value
            b"1;a=\"b\"c",     // junk after a quoted string
            b"1;a=\"b",        // an unterminated quoted string: the CR is not qdtext
            b"1;a=\"b\x01\"",  // control characters, in a quoted string...
            b"1;a=\"\\\x01\"", // ... escaped or not
            b"1;a=\"b\x7f\"",
            b"1;a\x00",   // ... in a name
            b"1;a=b\x01", // ... in a token value
            b"1;a=b\x7f",
            b"1;\xc3\xa9", // obs-text is no tchar
            b"1;a=\xc3\xa9",
            b"1;a ", // no BWS before the CRLF...
            b"1;a=b ",
            b"1;a=b\t",
            b"1;a=\"b\" ",
        ] {
            let mut input = line.to_vec();
            input.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            let shown = String::from_utf8_lossy(line);
            assert_eq!(
                decode_all(&input),
                Err(ChunkedError::InvalidExtension),
                "{shown:?}"
            );
            assert_eq!(
                decode_bytewise(&input),
                Err(ChunkedError::InvalidExtension),
                "{shown:?}"
            );

            // The same in a later chunk, after one the decoder has accepted, and in the last chunk.
            let mut later = b"2\r\nok\r\n".to_vec();
            later.extend_from_slice(&input);
            assert_eq!(
                decode_all(&later),
                Err(ChunkedError::InvalidExtension),
                "later {shown:?}"
            );
            let mut last = line.to_vec();
            last[0] = b'0';
            last.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                decode_all(&last),
                Err(ChunkedError::InvalidExtension),
                "last {shown:?}"
            );
        }
    }

    #[test]
    fn rejects_whitespace_after_the_size_without_an_extension() {
        for input in [
            &b"1 \r\nx\r\n"[..],
            b"1\t\r\nx\r\n",
            b"0 \r\n\r\n",
            b"1  \r\n",
        ] {
            assert_eq!(
                decode_all(input),
                Err(ChunkedError::InvalidSize),
                "{input:?}"
            );
            assert_eq!(
                decode_bytewise(input),
                Err(ChunkedError::InvalidSize),
                "{input:?}"
            );
        }
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

        // The CR that ends a line counts toward the bound, the LF does not: a line of MAX_LINE_BYTES - 1
        // bytes before its CRLF is the longest accepted.
        let line = |len: usize| {
            let mut body = b"1;".to_vec();
            body.extend(std::iter::repeat_n(b'x', len - 2));
            body.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            body
        };
        assert!(decode_all(&line(MAX_LINE_BYTES - 1)).is_ok());
        assert_eq!(
            decode_all(&line(MAX_LINE_BYTES)),
            Err(ChunkedError::LineTooLong)
        );

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
