//! The `timeout` query parameter: the caller's budget in milliseconds.
//!
//! The query string is `application/x-www-form-urlencoded`-style: `name=value` pairs joined by `&`, with
//! `%XX` escapes and `+` for a space. Only `timeout` is read; other parameters are ignored.

/// The `timeout` value, or a message for a person saying what is wrong and what is accepted.
pub fn timeout_ms(query: &str, max: u64) -> Result<u64, String> {
    let accepted = format!("a whole number of milliseconds from 0 to {max}");
    let mut found: Option<Vec<u8>> = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(name) != b"timeout" {
            continue;
        }
        if found.is_some() {
            return Err(format!(
                "query parameter `timeout` is given more than once; give it once, as {accepted}"
            ));
        }
        found = Some(percent_decode(value));
    }
    let Some(value) = found else {
        return Err(format!("query parameter `timeout` is required: {accepted}"));
    };
    if value.is_empty() {
        return Err(format!(
            "query parameter `timeout` is empty; it must be {accepted}"
        ));
    }
    let shown = String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
    if !value.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "query parameter `timeout` must be {accepted}, not `{shown}`"
        ));
    }
    // All digits: parsing fails only on overflow, which is "too large" as well.
    match String::from_utf8_lossy(&value).parse::<u64>() {
        Ok(ms) if ms <= max => Ok(ms),
        _ => Err(format!(
            "query parameter `timeout` is too large: it must be {accepted}, not `{shown}`"
        )),
    }
}

/// Decodes `%XX` escapes and `+`. A `%` not followed by two hex digits is kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let (byte, len) = match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => ((hi * 16 + lo) as u8, 3),
            (b'+', _, _) => (b' ', 1),
            (b, _, _) => (b, 1),
        };
        out.push(byte);
        i += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_whole_milliseconds_in_range() {
        assert_eq!(timeout_ms("timeout=250", 60_000), Ok(250));
        assert_eq!(timeout_ms("timeout=0", 60_000), Ok(0));
        assert_eq!(timeout_ms("timeout=60000", 60_000), Ok(60_000));
        assert_eq!(timeout_ms("a=1&timeout=007&b", 60_000), Ok(7));
        assert_eq!(timeout_ms("%74imeout=%31%30", 60_000), Ok(10));
    }

    #[test]
    fn rejects_everything_else_naming_the_parameter_and_range() {
        for query in [
            "",
            "a=1",
            "timeout",
            "timeout=",
            "timeout=-1",
            "timeout=1.5",
            "timeout=abc",
            "timeout=+5",
            "timeout=%2B5",
            "timeout=1e3",
            "timeout=60001",
            "timeout=99999999999999999999999",
            "timeout=5&timeout=5",
            "TIMEOUT=5",
            "timeout=%zz",
        ] {
            let err = timeout_ms(query, 60_000).expect_err(query);
            assert!(
                err.contains("`timeout`") && err.contains("0 to 60000"),
                "{query}: {err}"
            );
        }
    }

    #[test]
    fn percent_decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("a%41+b%4"), b"aA b%4");
        assert_eq!(percent_decode("%"), b"%");
    }
}
