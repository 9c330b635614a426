//! Timestamps on the wire: ISO 8601 in UTC with an explicit offset.
//!
//! The originals emit naive local time, which a reader cannot place; an
//! explicit `+00:00` parses everywhere the naive form did.

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};

pub(crate) fn iso8601(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, false)
}

pub fn now_iso8601() -> String {
    iso8601(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc_with_offset() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_930_600_123_456);
        assert_eq!(super::iso8601(t), "2025-12-05T10:30:00.123456+00:00");
    }
}
