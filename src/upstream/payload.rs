//! What counts as a successful answer: a JSON object whose `time` member is a non-negative integer.
//!
//! The object is passed on as it came, only without insignificant whitespace. It is *not* re-serialised
//! through `serde_json::Value`: its `Map` sorts members by key (unless the `preserve_order` feature is on), and
//! the callers of our API should see the upstream's members in the upstream's order.

use super::{UpstreamError, Work};

/// Validates a 200 response body and returns it as [`Work`].
pub(crate) fn parse_work(body: &[u8]) -> Result<Work, UpstreamError> {
    let invalid = UpstreamError::InvalidPayload;
    // Parsing to a Value checks the whole text (and UTF-8) with serde_json's nesting limit; we only keep `time`.
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| invalid("the body is not valid JSON"))?;
    let object = value
        .as_object()
        .ok_or(invalid("the body is JSON but not an object"))?;
    let time = object
        .get("time")
        .ok_or(invalid("the object has no `time` member"))?;
    // as_u64 is None for negative numbers, fractions (1.5, and also 1.0 or 1e3) and anything past u64::MAX.
    let time = time
        .as_u64()
        .ok_or(invalid("`time` is not a non-negative integer"))?;

    let json = String::from_utf8(minify(body)).map_err(|_| invalid("the body is not UTF-8"))?;
    Ok(Work {
        json: json.into_boxed_str(),
        time,
    })
}

/// Removes the whitespace JSON allows between tokens (RFC 8259 §2: space, tab, LF, CR), keeping everything
/// inside strings byte for byte. `json` must already be valid JSON: this only tracks where strings start and
/// end, which is all that is needed to tell significant whitespace from insignificant.
fn minify(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false; // the previous byte in the string was an unescaped backslash
    for &byte in json {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = byte == b'"';
            out.push(byte);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> &'static str {
        match parse_work(body.as_bytes()) {
            Err(UpstreamError::InvalidPayload(why)) => why,
            other => panic!("{body:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn keeps_member_order_and_drops_whitespace_outside_strings() {
        let body = "\r\n{ \"zeta\" : 1,\n\t\"time\": 42 , \"alpha\": [ 1, { \"b\": null } ],\"s\": \" a \\\" b\\\\\" }\n";
        let work = parse_work(body.as_bytes()).expect("valid");
        assert_eq!(work.time, 42);
        assert_eq!(
            &*work.json,
            r#"{"zeta":1,"time":42,"alpha":[1,{"b":null}],"s":" a \" b\\"}"#
        );
    }

    #[test]
    fn keeps_non_ascii_and_escapes_inside_strings() {
        let work =
            parse_work("{\"time\": 0, \"note\": \"čas \\u00e9 \\n\"}".as_bytes()).expect("valid");
        assert_eq!(&*work.json, "{\"time\":0,\"note\":\"čas \\u00e9 \\n\"}");
        assert_eq!(work.time, 0);
    }

    #[test]
    fn accepts_the_largest_time() {
        let work = parse_work(format!("{{\"time\":{}}}", u64::MAX).as_bytes()).expect("valid");
        assert_eq!(work.time, u64::MAX);
    }

    #[test]
    fn rejects_bodies_that_are_not_a_json_object_with_an_integer_time() {
        assert_eq!(invalid(""), "the body is not valid JSON");
        assert_eq!(invalid("{\"time\": 1"), "the body is not valid JSON");
        assert_eq!(
            invalid("{\"time\": 1} trailing"),
            "the body is not valid JSON"
        );
        assert_eq!(invalid("[1, 2]"), "the body is JSON but not an object");
        assert_eq!(invalid("{\"Time\": 1}"), "the object has no `time` member");
        for time in [
            "-1",
            "1.5",
            "1.0",
            "1e3",
            "\"7\"",
            "null",
            "18446744073709551616",
        ] {
            assert_eq!(
                invalid(&format!("{{\"time\": {time}}}")),
                "`time` is not a non-negative integer",
                "{time}"
            );
        }
    }
}
