//! Reading the meaning out of a parsed request head: method, target, keep-alive, and how long the body is.
//!
//! httparse has already checked the syntax (token characters, no whitespace before a colon, no obsolete line
//! folding, no bare CR). What is left are the rules of RFC 9112 that decide framing and persistence; a
//! request that breaks one is answered with an error and, where its framing is in doubt, the connection is
//! closed, because the next request on it could not be found reliably (the root of request smuggling).

use super::response::{bad_request, Response};
use crate::trace::{TraceParent, TRACEPARENT};

/// The methods every resource here supports, for `Allow`.
const ALLOW: &str = "GET, HEAD";

/// The parts of a request head the server acts on.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent: origin-form `/path?query` or absolute-form `http://host/path?query`.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the client lets the connection stay open after the response.
    pub keep_alive: bool,
    pub body: BodyLength,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// The caller's W3C trace context, if it sent exactly one valid `traceparent` (see `trace.rs`).
    pub traceparent: Option<TraceParent>,
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum BodyLength {
    None,
    Length(u64),
    Chunked,
}

/// The methods the server recognises (RFC 9110 §9.3, and PATCH): on a path that exists, those other than GET
/// and HEAD get 405. CONNECT is left out: a tunnel through a proxy (§9.3.6), not implemented here.
const KNOWN_METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH",
];

impl RequestHead {
    /// `HEAD` asks for the headers of the `GET` response without its content (RFC 9110 §9.3.2).
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The first steps of routing, the same on both listeners: the path and query to route, or the answer
    /// to give without routing. RFC 9110 §9.1: a method that is "unrecognized or not implemented SHOULD"
    /// get 501, whatever the target (405 is for a known method a resource does not support, §15.5.6;
    /// methods are case-sensitive: "get" is not GET). §9.3.7: `OPTIONS *` asks about the server as a whole,
    /// and gets what every resource here allows. A target that is neither a path nor an http(s) URL with a
    /// host (`*` for another method, authority-form) is a bad request (RFC 9112 §3.2).
    pub fn routable(&self) -> Result<(&str, &str), Response> {
        if !KNOWN_METHODS.contains(&self.method.as_str()) {
            let message = format!("the method {} is not implemented", self.method);
            return Err(Response::error(501, "not_implemented", &message));
        }
        if self.method == "OPTIONS" && self.target == "*" {
            return Err(Response::json(200, b"{}".to_vec()).with_header("Allow", ALLOW));
        }
        let Some(target) = self.path_and_query() else {
            let message = "the request target must be a path, or an http(s) URL with a host";
            return Err(bad_request(message));
        };
        Ok(target.split_once('?').unwrap_or((target, "")))
    }

    /// The answer to a method other than GET and HEAD on `path`, every resource here being read-only:
    /// RFC 9110 §9.1, general-purpose servers MUST support GET and HEAD; §15.5.6, a 405 MUST list the
    /// methods the resource supports in Allow.
    pub fn not_get_or_head(&self, path: &str) -> Option<Response> {
        let allowed = self.method == "GET" || self.is_head();
        let message = || format!("{path} supports GET (and HEAD) only");
        (!allowed).then(|| {
            Response::error(405, "method_not_allowed", &message()).with_header("Allow", ALLOW)
        })
    }

    /// The path and query of the target, whichever form it was sent in.
    pub fn path_and_query(&self) -> Option<&str> {
        if self.target.starts_with('/') {
            return Some(&self.target);
        }
        // absolute-form (RFC 9112 §3.2.2): "a server MUST accept the absolute-form in requests". The scheme
        // is case-insensitive (RFC 3986 §3.1), and the authority ends at the first "/", "?" or "#".
        let (scheme, rest) = self.target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        // RFC 9110 §4.2.1: no empty host (see `valid_http_authority`); §4.2.4: userinfo (`user@`) "SHOULD" be
        // treated as an error, and `valid_host` refuses the "@".
        if !valid_http_authority(authority) {
            return None;
        }
        // An empty path is "/" (RFC 9112 §3.2.1); its query is dropped with it, as "/" is no endpoint.
        Some(if path.starts_with('/') { path } else { "/" })
    }
}

/// Interprets a complete head that httparse accepted. An `Err` is the response to send; it closes the connection.
pub fn interpret(req: &httparse::Request<'_, '_>) -> Result<RequestHead, Response> {
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let minor_version = req.version.unwrap_or(1);

    // RFC 9112 §3.2: every form of request-target is made of URI characters (RFC 3986 §2), all of them
    // ASCII. httparse lets a raw UTF-8 target through; RFC 9112 §3 makes any other byte an invalid
    // request line, for which a 400 is the answer, not a route lookup.
    if !target.bytes().all(uri_char) {
        return Err(bad_request(
            "malformed request line: the target has a byte outside the URI grammar",
        ));
    }

    let fields = Fields::collect(req.headers)?;
    fields.check_host(&target, minor_version)?;
    let body = fields.body_length(minor_version)?;

    // RFC 9112 §9.3: HTTP/1.1 persists unless "close" is sent; HTTP/1.0 only with "keep-alive".
    let keep_alive = !fields.close && (minor_version == 1 || fields.keep_alive_token);
    Ok(RequestHead {
        method,
        target,
        minor_version,
        keep_alive,
        body,
        expect_continue: fields.expect_continue,
        traceparent: if fields.traceparents == 1 {
            fields.traceparent
        } else {
            None
        },
    })
}

/// The header fields that decide framing, persistence and tracing, gathered across repeated lines; what
/// one line alone gets wrong is refused as it is read, what needs them all is judged afterwards.
#[derive(Default)]
struct Fields<'buf> {
    hosts: usize,
    host: &'buf str,
    close: bool,
    keep_alive_token: bool,
    content_length: Option<u64>,
    /// `Some` once a Transfer-Encoding is seen: presence decides, and an empty one has no final chunked either.
    transfer_codings: Option<Vec<String>>,
    expect_continue: bool,
    traceparents: usize,
    traceparent: Option<TraceParent>,
}

impl<'buf> Fields<'buf> {
    fn collect(headers: &[httparse::Header<'buf>]) -> Result<Fields<'buf>, Response> {
        let mut fields = Fields::default();
        for h in headers {
            let value = ows_trim(std::str::from_utf8(h.value).unwrap_or("\u{fffd}"));
            if h.name.eq_ignore_ascii_case("host") {
                fields.hosts += 1;
                fields.host = value;
                if !valid_host(value) {
                    return Err(bad_request("the Host header is not a valid host[:port]"));
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(ows_trim) {
                    fields.close |= token.eq_ignore_ascii_case("close");
                    fields.keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                // RFC 9112 §6.3 rule 5: an invalid Content-Length is an unrecoverable framing error. A repeated
                // one is rejected too, even with equal values: two framings of one message are a smuggling smell.
                if fields.content_length.is_some() {
                    return Err(bad_request("more than one Content-Length"));
                }
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad_request("Content-Length is not a decimal number"));
                }
                let too_large = |_| bad_request("Content-Length is too large");
                fields.content_length = Some(value.parse().map_err(too_large)?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                fields.transfer_codings.get_or_insert_default().extend(
                    value
                        .split(',')
                        .map(|c| ows_trim(c).to_ascii_lowercase())
                        .filter(|c| !c.is_empty()),
                );
            } else if h.name.eq_ignore_ascii_case("expect") {
                // RFC 9110 §10.1.1; other expectations are ignored (a MAY-417 we do not use).
                fields.expect_continue |= value.eq_ignore_ascii_case("100-continue");
            } else if h.name.eq_ignore_ascii_case(TRACEPARENT) {
                // Never an error: an invalid (or repeated) trace context is ignored and a new trace begins.
                fields.traceparents += 1;
                fields.traceparent = TraceParent::parse(value);
            }
        }
        Ok(fields)
    }

    /// Whether the Host fields are what the target and the version need.
    fn check_host(&self, target: &str, minor_version: u8) -> Result<(), Response> {
        // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request
        // message that lacks a Host header field and to any request message that contains more than one Host
        // header field line or a Host header field with an invalid field value."
        if self.hosts > 1 || (self.hosts == 0 && minor_version == 1) {
            return Err(bad_request(
                "an HTTP/1.1 request needs exactly one Host header",
            ));
        }
        // RFC 9112 §3.3: for a target in origin-form (or `*`), Host is the authority of the target URI, and with
        // an empty one the server "can reject the request or determine whether a configured default applies". We
        // reject what names an empty authority, since RFC 9110 §4.2.1 says a recipient "MUST reject" an http URI
        // with an empty host as invalid: a Host that is empty (or only a port); RFC 9112 §3.2 has a client send
        // an empty Host only when the target URI has no authority. An HTTP/1.0 request without Host, which
        // predates the field, keeps the default: this server, as before.
        // In absolute-form the target carries the authority and §3.2.2 says the server "MUST ignore" Host,
        // whose grammar allows an empty value (reg-name may be empty): `path_and_query` judges the target's.
        let origin_or_asterisk = target.starts_with('/') || target == "*";
        if self.hosts == 1 && origin_or_asterisk && !valid_http_authority(self.host) {
            return Err(bad_request(
                "the Host header names no host, which a request in origin form needs",
            ));
        }
        Ok(())
    }

    /// How the body is delimited, from Transfer-Encoding or Content-Length (RFC 9112 §6.3).
    fn body_length(&self, minor_version: u8) -> Result<BodyLength, Response> {
        let Some(transfer_codings) = &self.transfer_codings else {
            return Ok(match self.content_length {
                None | Some(0) => BodyLength::None,
                Some(n) => BodyLength::Length(n),
            });
        };
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing; §6.3 rule 3: with
        // Content-Length too, it "ought to be handled as an error"; rule 4: if chunked is not the final
        // coding the length cannot be determined, and the server "MUST respond with 400 and then close".
        if minor_version == 0 {
            return Err(bad_request(
                "Transfer-Encoding is not allowed in an HTTP/1.0 request",
            ));
        }
        if self.content_length.is_some() {
            return Err(bad_request(
                "a request must not carry both Content-Length and Transfer-Encoding",
            ));
        }
        if transfer_codings.last().map(String::as_str) != Some("chunked") {
            return Err(bad_request("the final transfer coding must be chunked"));
        }
        if transfer_codings.iter().filter(|c| *c == "chunked").count() > 1 {
            // RFC 9112 §6.1: "A sender MUST NOT apply the chunked transfer coding more than once": the
            // framing is in doubt, not a coding we do not know.
            return Err(bad_request(
                "the chunked transfer coding is applied more than once",
            ));
        }
        if transfer_codings.len() > 1 {
            // RFC 9112 §6.1: "A server that receives a request message with a transfer coding it does not
            // understand SHOULD respond with 501 (Not Implemented)."
            return Err(Response::error(
                501,
                "not_implemented",
                "only the chunked transfer coding is supported",
            ));
        }
        Ok(BodyLength::Chunked)
    }
}

/// Strips optional whitespace, which in HTTP is only SP and HTAB (RFC 9110 §5.6.3). Not `str::trim`: that
/// strips Unicode spaces too, and would read `Content-Length: 5` followed by a no-break space as a valid 5.
fn ows_trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Host = uri-host [ ":" port ] (RFC 9110 §7.2): an IP-literal in brackets or a reg-name, which has no ":"
/// (RFC 3986 §3.2.2), then an optional port of digits. The grammar allows an empty value (RFC 9112 §3.2);
/// whether an empty host is acceptable is for [`valid_http_authority`].
fn valid_host(v: &str) -> bool {
    let (host_ok, port) = match v.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((literal, port)) => (valid_ip_literal(literal), port),
            None => return false,
        },
        None => {
            let end = v.find(':').unwrap_or(v.len());
            (valid_reg_name(&v[..end]), &v[end..])
        }
    };
    host_ok
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())))
}

/// The authority of an http(s) URI: RFC 9110 §4.2.1, a sender "MUST NOT generate an "http" URI with an empty
/// host identifier" and a recipient "MUST reject it as invalid". So a valid `host[:port]` whose host is not
/// empty (a reg-name is the only empty one, and it ends at the first ":").
fn valid_http_authority(v: &str) -> bool {
    !v.is_empty() && !v.starts_with(':') && valid_host(v)
}

/// reg-name = *( unreserved / pct-encoded / sub-delims ), where pct-encoded is "%" and two hex digits: so
/// every piece after a "%" starts with two hex digits.
fn valid_reg_name(name: &str) -> bool {
    let mut pieces = name.split('%');
    let first = pieces.next().unwrap_or_default();
    first.bytes().all(unreserved_or_sub_delim)
        && pieces.all(|piece| {
            piece
                .get(..2)
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                && piece.bytes().skip(2).all(unreserved_or_sub_delim)
        })
}

/// IP-literal = "[" ( IPv6address / IPvFuture ) "]" (RFC 3986 §3.2.2), without the brackets. IPvFuture is
/// "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ).
fn valid_ip_literal(literal: &str) -> bool {
    if literal.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    let Some(future) = literal.strip_prefix(['v', 'V']) else {
        return false;
    };
    future.split_once('.').is_some_and(|(version, rest)| {
        !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_hexdigit())
            && !rest.is_empty()
            && rest
                .bytes()
                .all(|b| unreserved_or_sub_delim(b) || b == b':')
    })
}

/// A character that may appear in a URI (RFC 3986 §2): unreserved, reserved (gen-delims and sub-delims),
/// or the "%" of a pct-encoded octet. Not a control character, a space, any of `" < > \ ^ { | }` or the
/// backtick, nor a byte above 0x7F.
fn uri_char(b: u8) -> bool {
    unreserved_or_sub_delim(b) || b":/?#[]@%".contains(&b)
}

/// unreserved / sub-delims (RFC 3986 §2.2-2.3).
fn unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<RequestHead, u16> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(
            req.parse(raw.as_bytes()).unwrap().is_complete(),
            "incomplete test input"
        );
        interpret(&req).map_err(|r| r.status)
    }

    #[test]
    fn http11_persists_unless_close() {
        assert!(
            head("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn http10_persists_only_with_keep_alive() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn host_is_required_once_in_http11() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(400)
        );
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), Err(400));
        // RFC 9112 §3.3: in origin-form Host is the target's authority, and an http URI with an empty host
        // is invalid (RFC 9110 §4.2.1): the recipient "MUST reject" it, in any version.
        for empty in ["", ":", ":80", " "] {
            for request in [
                format!("GET / HTTP/1.1\r\nHost:{empty}\r\n\r\n"),
                format!("GET / HTTP/1.0\r\nHost:{empty}\r\n\r\n"),
                format!("OPTIONS * HTTP/1.1\r\nHost:{empty}\r\n\r\n"),
            ] {
                assert_eq!(head(&request), Err(400), "{request:?}");
            }
        }
        // In absolute-form the server "MUST ignore" Host (RFC 9112 §3.2.2), and an empty one is valid Host
        // grammar: the target's own authority is what counts.
        assert!(head("GET http://a/ HTTP/1.1\r\nHost:\r\n\r\n").is_ok());
        assert!(
            head("GET / HTTP/1.0\r\n\r\n").is_ok(),
            "HTTP/1.0 needs no Host"
        );
        assert!(
            head("GET / HTTP/1.1\r\nHost: a:\r\n\r\n").is_ok(),
            "port = *DIGIT"
        );
        assert!(head("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").is_ok());
        assert!(head("GET / HTTP/1.1\r\nHost: example.com:80\r\n\r\n").is_ok());
        assert!(head("GET / HTTP/1.1\r\nHost: a%2Db\r\n\r\n").is_ok());
        assert!(head("GET / HTTP/1.1\r\nHost: [v1.fe:x]\r\n\r\n").is_ok());
        assert!(head("GET / HTTP/1.1\r\nHost: [::ffff:10.0.0.1]\r\n\r\n").is_ok());
        let not_ows = ["a\u{a0}", "\u{a0}", "\u{3000}a"];
        let bad_grammar = ["a%zz", "a%2", "[hello]", "[v.x]", "[v1.]", "[::1%eth0]"];
        let bad_syntax = ["a:8x", "a:1:2", "[::1", "[]", "[::1]x", "a]", "a@b", "a/b"];
        for bad_host in not_ows.iter().chain(&bad_grammar).chain(&bad_syntax) {
            assert_eq!(
                head(&format!("GET / HTTP/1.1\r\nHost: {bad_host}\r\n\r\n")),
                Err(400),
                "{bad_host}"
            );
        }
    }

    #[test]
    fn the_target_is_made_of_uri_characters() {
        for target in ["/a-b._~!$&'()*+,;=:@%20/?q=/?#", "*", "http://[::1]:80/p?q"] {
            assert!(
                head(&format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n")).is_ok(),
                "{target}"
            );
        }
        // Raw UTF-8 and the ASCII characters RFC 3986 leaves out; httparse passes all of these.
        for target in [
            "/caf\u{e9}",
            "/\u{a0}",
            "/a\"b",
            "/a<b>",
            "/a\\b",
            "/a^b",
            "/a`b",
            "/a{b}",
            "/a|b",
        ] {
            assert_eq!(
                head(&format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n")),
                Err(400),
                "{target}"
            );
        }
    }

    #[test]
    fn body_framing_and_smuggling_vectors() {
        let body = |raw: &str| head(raw).map(|h| h.body);
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            Ok(BodyLength::Length(5))
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            Ok(BodyLength::None)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(BodyLength::Chunked)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(400)
        );
        assert_eq!(body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(400));
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(501)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            body("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nContent-Length: 5\r\n\r\n"),
            Err(400)
        );
    }

    #[test]
    fn only_sp_and_htab_are_optional_whitespace() {
        // A no-break space (U+00A0) or an ideographic one (U+3000) around a framing value makes it invalid,
        // not a 5 or a chunked: a proxy that reads it so would frame the message differently.
        for value in ["5\u{a0}", "\u{3000}5", "\u{2003}5"] {
            assert_eq!(
                head(&format!(
                    "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\n"
                )),
                Err(400),
                "{value:?}"
            );
        }
        for value in ["chunked\u{a0}", "\u{2003}chunked"] {
            assert_eq!(
                head(&format!(
                    "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {value}\r\n\r\n"
                )),
                Err(400),
                "{value:?}"
            );
        }
        let tabbed = head("GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\t5\t\r\n\r\n").unwrap();
        assert_eq!(tabbed.body, BodyLength::Length(5));
    }

    #[test]
    fn absolute_form_targets_give_their_path() {
        let h = head("GET http://example.com:8080/api/all?timeout=5 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(h.path_and_query(), Some("/api/all?timeout=5"));
        let h = head("GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.path_and_query(), Some("/"));
        let h = head("GET HTTPS://example.com/api/all HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.path_and_query(), Some("/api/all"));
        let h = head("GET http://example.com?a=/api/all HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.path_and_query(), Some("/"));
        let h = head("GET ftp://example.com/api/all HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.path_and_query(), None);
        let h = head("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.path_and_query(), None);
        for invalid in [
            "http:///api/all",
            "http://:80/api/all",
            "http://u:p@a/api/all",
            "http://[x]/api/all",
        ] {
            let h = head(&format!("GET {invalid} HTTP/1.1\r\nHost: x\r\n\r\n")).unwrap();
            assert_eq!(h.path_and_query(), None, "{invalid}");
        }
    }

    #[test]
    fn expect_100_continue_is_noticed() {
        assert!(
            head("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n")
                .unwrap()
                .expect_continue
        );
    }

    #[test]
    fn one_valid_traceparent_is_kept_anything_else_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let one = head(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\nTraceparent: {tp}\r\n\r\n"
        ))
        .unwrap();
        assert_eq!(one.traceparent, crate::trace::TraceParent::parse(tp));
        assert!(one.traceparent.is_some());
        let two = head(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\ntraceparent: {tp}\r\ntraceparent: {tp}\r\n\r\n"
        ))
        .unwrap();
        assert_eq!(two.traceparent, None);
        let bad = head("GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-zz\r\n\r\n").unwrap();
        assert_eq!(
            bad.traceparent, None,
            "an invalid trace context is not an error"
        );
    }
}
