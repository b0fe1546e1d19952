//! Responses: a status, a few headers and a body, written in one buffer.
//!
//! Every response carries `Content-Length` (so the client knows where it ends on a persistent connection)
//! and `Date` (RFC 9110 §6.6.1). Bodies are always small JSON documents, so they are built whole in memory.

use crate::date;

/// The status recorded (never sent) for a call whose client closed its connection before the answer was
/// ready: nginx's `499 Client Closed Request`, a convention log readers and dashboards know.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A response the server writes. API answers and errors are both `application/json`; the admin listener
/// also writes text (the Prometheus exposition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers, besides the Content-Type, Content-Length, Date and Connection the server adds.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A `200`-or-other response with a JSON body.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::with_type(status, "application/json", body)
    }

    /// A response with another content type.
    pub fn with_type(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// The error form every endpoint shares: `{"error": "<code>", "message": "<text for a person>"}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        let body = serde_json::json!({ "error": code, "message": message });
        Response::json(status, body.to_string().into_bytes())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes to write. `head_only` leaves out the content (for `HEAD`), but keeps its Content-Length
    /// (RFC 9110 §9.3.2); `connection` adds `Connection: close`, or the `keep-alive` an HTTP/1.0 client
    /// needs to keep the connection.
    pub fn encode(&self, head_only: bool, connection: Persistence) -> Vec<u8> {
        use std::fmt::Write;
        let mut head = String::with_capacity(160);
        // We always answer as HTTP/1.1, our highest version (RFC 9110 §6.2).
        let (status, content_type, length) = (self.status, self.content_type, self.body.len());
        let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
        let _ = write!(
            head,
            "Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        );
        date::with_now(|now| {
            let _ = write!(head, "Date: {now}\r\n");
        });
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        match connection {
            Persistence::Close => head.push_str("Connection: close\r\n"),
            Persistence::KeepAlive10 => head.push_str("Connection: keep-alive\r\n"),
            Persistence::KeepAlive => {}
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// `400 bad_request`: a request that breaks the protocol, or a limit whose answer is not a status of its own.
pub(crate) fn bad_request(message: &str) -> Response {
    Response::error(400, "bad_request", message)
}

/// What the response tells the client about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: stays open, nothing to say.
    KeepAlive,
    /// An HTTP/1.0 client asked for keep-alive; confirm it.
    KeepAlive10,
    /// The server closes the connection after this response (RFC 9112 §9.6).
    Close,
}

/// The reason phrase for a status code (RFC 9110 §15), empty for codes we never send.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_with_code_and_message() {
        let r = Response::error(400, "bad_request", "say \"why\"");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "bad_request");
        assert_eq!(v["message"], "say \"why\"");
    }

    #[test]
    fn head_keeps_content_length_but_not_content() {
        let r = Response::json(200, b"[1]".to_vec());
        let text = String::from_utf8(r.encode(true, Persistence::Close)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n") && text.contains("Connection: close\r\n"));
        assert!(text.contains("\r\nDate: ") && text.ends_with("\r\n\r\n"));
        let full = r.encode(false, Persistence::KeepAlive);
        assert!(full.ends_with(b"\r\n\r\n[1]"));
    }
}
