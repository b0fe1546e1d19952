//! Reading a response head and deciding, from it alone, how the body is framed and whether the connection
//! may carry another request afterwards. Sans-IO: it looks at bytes already read and never touches a socket
//! (the reading loop lives in `connection.rs`), so every rule below is unit-tested with plain byte strings.

use std::time::Duration;

use super::UpstreamError;

/// Most header fields in one response head. The work endpoint sends about ten; 64 leaves room for proxies and
/// load balancers adding theirs, while bounding the parser's stack array.
pub(crate) const MAX_HEADERS: usize = 64;

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all (1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding (see `chunked.rs`).
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// What we need from a response head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The head allows another request on this connection once the body has been read completely.
    pub keep_alive: bool,
    /// The server's `Keep-Alive: timeout=N` hint, if it sent one.
    pub keep_alive_timeout: Option<Duration>,
}

/// Parses the response head at the start of `buf`.
///
/// Returns `Ok(None)` when the head is incomplete and more bytes are needed, or the head and its length in
/// bytes (the body, if any, starts right after). A head longer than `max_head_bytes`, complete or not, is an
/// error: without a cap a server could make us buffer forever.
pub(crate) fn parse_head(
    buf: &[u8],
    max_head_bytes: usize,
) -> Result<Option<(Head, usize)>, UpstreamError> {
    let too_large = UpstreamError::Protocol("response head larger than max_head_bytes");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_head_bytes => return Err(too_large),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head_bytes => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(UpstreamError::Protocol(describe(e))),
    };
    // httparse fills both in a complete parse; the fallbacks only keep this free of unwrap().
    let status = response.code.unwrap_or(0);
    let http11 = response.version == Some(1);
    if status == 101 {
        return Err(UpstreamError::Protocol(
            "unexpected 101 Switching Protocols: we never ask to upgrade",
        ));
    }

    let fields = Fields::collect(response.headers);
    let framing = framing(status, &fields)?;

    // RFC 9112 §9.3 (Persistence), as applied by a client that only wants to reuse what is safe to reuse:
    //  - "If the close connection option is present, the connection will not persist after the current
    //    response"; otherwise an HTTP/1.1 response means it will. HTTP/1.0 "keep-alive" is an opt-in we don't
    //    take: a 1.0 server is old enough not to be trusted with it.
    //  - "In order to remain persistent, all messages on a connection need to have a self-defined message
    //    length (i.e., one not defined by closure of the connection)".
    //  - A response with both Transfer-Encoding and Content-Length "ought to be handled as an error"
    //    (§6.3 rule 3): we read it (Transfer-Encoding wins) but never trust the connection again.
    let keep_alive = http11
        && !fields.connection_close
        && !(fields.transfer_encoding.is_some() && fields.content_length.is_some())
        && framing != Framing::UntilClose;

    let head = Head {
        status,
        framing,
        keep_alive,
        keep_alive_timeout: fields.keep_alive_timeout,
    };
    Ok(Some((head, head_len)))
}

/// The message body length rules of RFC 9112 §6.3, in their order of precedence (rules 2 and 7 are about
/// CONNECT and requests, which a GET-only client never meets):
///
///  1. Any response with a 1xx, 204 or 304 status "is always terminated by the first empty line after the
///     header fields, regardless of the header fields present in the message, and thus cannot contain a
///     message body".
///  3. "If a message is received with both a Transfer-Encoding and a Content-Length header field, the
///     Transfer-Encoding overrides the Content-Length."
///  4. "If a Transfer-Encoding header field is present and the chunked transfer coding is the final
///     encoding", the body is the chunked data. If it is present in a response and chunked is not final,
///     "the message body length is determined by reading the connection until it is closed by the server".
///  5. Without Transfer-Encoding, an invalid Content-Length (not a number, or several differing values) is
///     "an unrecoverable error": a user agent "MUST close the connection to the server and discard the
///     received response".
///  6. "If a valid Content-Length header field is present without Transfer-Encoding, its decimal value
///     defines the expected message body length in octets."
///  8. "Otherwise, this is a response message without a declared message body length, so the message body
///     length is determined by the number of octets received prior to the server closing the connection."
fn framing(status: u16, fields: &Fields) -> Result<Framing, UpstreamError> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty); // rule 1
    }
    let invalid_length = UpstreamError::Protocol("invalid or conflicting Content-Length");
    match (fields.transfer_encoding, fields.content_length) {
        (Some(TransferEncoding::ChunkedLast), _) => Ok(Framing::Chunked), // rules 3 and 4
        (Some(TransferEncoding::Other), _) => Ok(Framing::UntilClose),    // rules 3 and 4
        (None, Some(ContentLength::Invalid)) => Err(invalid_length),      // rule 5
        (None, Some(ContentLength::Valid(n))) => Ok(Framing::Length(n)),  // rule 6
        (None, None) => Ok(Framing::UntilClose),                          // rule 8
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransferEncoding {
    /// `chunked` is the final coding.
    ChunkedLast,
    /// Some other final coding (or an empty list).
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContentLength {
    Valid(u64),
    /// Not `1*DIGIT`, too large for u64, or values that disagree.
    Invalid,
}

/// The header fields that decide framing and persistence, gathered across repeated lines.
#[derive(Default)]
struct Fields {
    transfer_encoding: Option<TransferEncoding>,
    content_length: Option<ContentLength>,
    connection_close: bool,
    keep_alive_timeout: Option<Duration>,
}

impl Fields {
    fn collect(headers: &[httparse::Header<'_>]) -> Fields {
        let mut fields = Fields::default();
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("transfer-encoding") {
                // Several lines form one list (RFC 9110 §5.3); only the last coding decides the framing.
                if let Some(last) = list_items(header.value).last() {
                    let coding = last
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    fields.transfer_encoding = Some(if coding.eq_ignore_ascii_case(b"chunked") {
                        TransferEncoding::ChunkedLast
                    } else {
                        TransferEncoding::Other
                    });
                } else if fields.transfer_encoding.is_none() {
                    fields.transfer_encoding = Some(TransferEncoding::Other);
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                // RFC 9110 §8.6: a list of identical values ("42, 42", or the same line repeated) may be taken
                // as that one value; anything else is invalid.
                let mut values = list_items(header.value).peekable();
                if values.peek().is_none() {
                    fields.content_length = Some(ContentLength::Invalid); // an empty value
                }
                for item in values {
                    let value =
                        parse_decimal(item).map_or(ContentLength::Invalid, ContentLength::Valid);
                    fields.content_length = match fields.content_length {
                        None => Some(value),
                        Some(seen) if seen == value => Some(seen),
                        Some(_) => Some(ContentLength::Invalid),
                    };
                }
            } else if name.eq_ignore_ascii_case("connection") {
                if list_items(header.value).any(|option| option.eq_ignore_ascii_case(b"close")) {
                    fields.connection_close = true;
                }
            } else if name.eq_ignore_ascii_case("keep-alive") {
                // Not in RFC 9112: the de-facto `Keep-Alive: timeout=5, max=100` of Apache and nginx (described
                // in RFC 2068 §19.7.1.1). Unparseable hints are ignored, not errors.
                for param in list_items(header.value) {
                    let mut key_value = param.splitn(2, |&b| b == b'=');
                    let (Some(key), Some(value)) = (key_value.next(), key_value.next()) else {
                        continue;
                    };
                    if key.trim_ascii().eq_ignore_ascii_case(b"timeout") {
                        if let Some(secs) = parse_decimal(value.trim_ascii()) {
                            fields.keep_alive_timeout = Some(Duration::from_secs(secs));
                        }
                    }
                }
            }
        }
        fields
    }
}

/// The non-empty elements of a comma-separated field value, trimmed of optional whitespace (RFC 9110 §5.6.1).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// `1*DIGIT` as a u64; `None` for anything else, including a sign or an overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "malformed response head: invalid header name",
        httparse::Error::HeaderValue => "malformed response head: invalid header value",
        httparse::Error::NewLine => "malformed response head: invalid line ending",
        httparse::Error::Status => "malformed response head: invalid status code",
        httparse::Error::Token => "malformed response head: invalid token",
        httparse::Error::TooManyHeaders => "response head has too many header fields",
        httparse::Error::Version => "malformed response head: not HTTP/1.x",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    fn head(text: &str) -> Head {
        match parse_head(text.as_bytes(), MAX) {
            Ok(Some((head, len))) => {
                assert_eq!(len, text.len(), "the whole text is the head");
                head
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn protocol_error(text: &str) -> &'static str {
        match parse_head(text.as_bytes(), MAX) {
            Err(UpstreamError::Protocol(why)) => why,
            other => panic!("{text:?} should be a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn content_length_frames_the_body_and_keeps_the_connection() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, Framing::Length(12), true)
        );
    }

    #[test]
    fn chunked_as_the_final_coding_frames_the_body() {
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: CHUNKED\r\n\r\n",
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
    }

    #[test]
    fn transfer_encoding_without_final_chunked_reads_until_close() {
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
    }

    #[test]
    fn transfer_encoding_wins_over_content_length_but_the_connection_is_not_reused() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        // Even an invalid Content-Length is overridden.
        let h =
            head("HTTP/1.1 200 OK\r\nContent-Length: nope\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    }

    #[test]
    fn no_length_means_close_delimited_and_not_reusable() {
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
    }

    #[test]
    fn statuses_without_a_body_ignore_length_fields() {
        for status in [
            "100 Continue",
            "103 Early Hints",
            "204 No Content",
            "304 Not Modified",
        ] {
            let h = head(&format!(
                "HTTP/1.1 {status}\r\nContent-Length: oops\r\n\r\n"
            ));
            assert_eq!(
                (h.framing, h.keep_alive),
                (Framing::Empty, true),
                "{status}"
            );
        }
    }

    #[test]
    fn identical_duplicate_content_lengths_are_one_value() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").framing,
            Framing::Length(7)
        );
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(7));
    }

    #[test]
    fn invalid_or_conflicting_content_length_is_a_protocol_error() {
        for value in [
            "-1",
            "+5",
            "5 5",
            "0x10",
            "1.0",
            "",
            "99999999999999999999",
            "7, 8",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                protocol_error(&text),
                "invalid or conflicting Content-Length",
                "{value:?}"
            );
        }
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n";
        assert_eq!(
            protocol_error(text),
            "invalid or conflicting Content-Length"
        );
    }

    #[test]
    fn connection_close_and_http_1_0_forbid_reuse() {
        let h = head("HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
    }

    #[test]
    fn reads_the_keep_alive_timeout_hint() {
        let h = head(
            "HTTP/1.1 200 OK\r\nKeep-Alive: max=100, Timeout = 5\r\nContent-Length: 1\r\n\r\n",
        );
        assert_eq!(h.keep_alive_timeout, Some(Duration::from_secs(5)));
        let h = head("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=soon\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(h.keep_alive_timeout, None);
    }

    #[test]
    fn an_incomplete_head_asks_for_more_until_the_limit() {
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", MAX),
            Ok(None)
        ));
        let padded = format!("HTTP/1.1 200 OK\r\nX-Pad: {}", "x".repeat(100));
        assert!(matches!(
            parse_head(padded.as_bytes(), 64),
            Err(UpstreamError::Protocol(_))
        ));
        let complete = format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\n", "x".repeat(100));
        assert!(matches!(
            parse_head(complete.as_bytes(), 64),
            Err(UpstreamError::Protocol(_))
        ));
    }

    #[test]
    fn rejects_garbage_and_upgrades() {
        assert!(protocol_error("HTTP/2 200 OK\r\n\r\n").contains("HTTP/1.x"));
        assert!(protocol_error("{\"time\": 1}\r\n\r\n").contains("malformed"));
        assert!(protocol_error("HTTP/1.1 101 Switching Protocols\r\n\r\n").contains("101"));
    }
}
