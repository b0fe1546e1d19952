//! Wall-clock dates as text, for the two places that print one: the `Date` header of every response and the
//! `ts` of every log line (RFC 3339).
//!
//! The `Date` header (RFC 9110 §6.6.1): "An origin server with a clock MUST generate a Date header field"
//! in IMF-fixdate form, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
//!
//! Formatting it costs little, but every response needs one, so each worker thread keeps the text for
//! the current second and formats anew only when the second changes.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    // (unix second, its IMF-fixdate text). Thread-local: no lock on the hot path.
    static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Calls `f` with the current time as IMF-fixdate.
pub fn with_now<R>(f: impl FnOnce(&str) -> R) -> R {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            *cache = (secs, imf_fixdate(secs));
        }
        f(&cache.1)
    })
}

/// Formats seconds since the Unix epoch as IMF-fixdate.
pub fn imf_fixdate(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]; // 1970-01-01 was a Thursday
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (weekday, month_name) = (DAYS[(days % 7) as usize], MONTHS[(month - 1) as usize]);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{weekday}, {day:02} {month_name} {year} {h:02}:{m:02}:{s:02} GMT")
}

/// Appends `now` as RFC 3339 UTC with milliseconds, e.g. `2026-11-28T08:49:37.123Z`: the log's timestamps.
pub fn write_rfc3339(out: &mut String, now: SystemTime) {
    use std::fmt::Write;
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (h, m, s, ms) = (rem / 3600, rem % 3600 / 60, rem % 60, since.subsec_millis());
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"
    );
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT"); // RFC 9110's example
        assert_eq!(imf_fixdate(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(imf_fixdate(1_795_824_000), "Sat, 28 Nov 2026 00:00:00 GMT");
    }

    #[test]
    fn formats_rfc3339_for_the_log() {
        let mut out = String::new();
        write_rfc3339(
            &mut out,
            UNIX_EPOCH + std::time::Duration::from_millis(784_111_777_042),
        );
        assert_eq!(out, "1994-11-06T08:49:37.042Z");
    }

    #[test]
    fn the_cache_gives_a_well_formed_date() {
        with_now(|d| assert!(d.len() == 29 && d.ends_with(" GMT"), "{d}"));
    }
}
