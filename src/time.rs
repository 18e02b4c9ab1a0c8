//! Points in time as operators read them: unix milliseconds (how the spool keeps
//! them) as RFC 3339 in UTC, to the second (`2026-11-22T21:40:00Z`), in logs, errors,
//! pages and the command line alike.

use std::time::{Duration, UNIX_EPOCH};

/// `unix_ms` (a time before 1970 reads as 1970) as `2026-11-22T21:40:00Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn unix_ms_read_as_utc_seconds() {
        assert_eq!(rfc3339(1_764_538_800_999), "2025-11-30T21:40:00Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }
}
