//! Memory and disk sizes as agents write them: `"7.5GB"`, `"24576MB"`,
//! `"24 GiB"`, `16` (a bare number means GB).
//!
//! The service original concatenated every digit (`"7.5GB"` -> 75) and
//! answered HTTP 500 on `"Unknown (AMD)"`. Here a size is parsed with its
//! unit and decimals, and anything unparseable is simply unknown (`None`).

use serde_json::Value;

const KB: f64 = 1e3;
const MB: f64 = 1e6;
const GB: f64 = 1e9;
const TB: f64 = 1e12;
const KIB: f64 = 1024.0;
const MIB: f64 = KIB * 1024.0;
const GIB: f64 = MIB * 1024.0;
const TIB: f64 = GIB * 1024.0;

/// One gigabyte (10^9 bytes): the unit of the tier thresholds.
pub(crate) const GIGABYTE: u64 = 1_000_000_000;

/// Parses a size into bytes. Units are case-insensitive: B, K/KB, M/MB,
/// G/GB, T/TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024);
/// spaces between number and unit are fine; no unit means GB.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let mult = match unit.as_str() {
        "" => GB,
        "b" | "byte" | "bytes" => 1.0,
        "k" | "kb" => KB,
        "m" | "mb" => MB,
        "g" | "gb" => GB,
        "t" | "tb" => TB,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "tib" => TIB,
        _ => return None,
    };
    let bytes = n * mult;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

/// A size from a JSON value: a string as [`parse_size`], a plain number as GB.
pub(crate) fn size_of(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => parse_size(s),
        Value::Number(n) => {
            let gb = n.as_f64()?;
            (gb.is_finite() && gb >= 0.0 && gb * GB < u64::MAX as f64)
                .then(|| (gb * GB).round() as u64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_and_decimals() {
        let cases: &[(&str, Option<u64>)] = &[
            ("7.5GB", Some(7_500_000_000)),
            ("24576MB", Some(24_576_000_000)),
            ("24 GiB", Some(24 * 1024 * 1024 * 1024)),
            ("512 MiB", Some(512 * 1024 * 1024)),
            ("1TB", Some(1_000_000_000_000)),
            ("1 tib", Some(1 << 40)),
            ("16gb", Some(16_000_000_000)),
            ("16G", Some(16_000_000_000)),
            ("2048 KB", Some(2_048_000)),
            ("100 B", Some(100)),
            ("  64GB  ", Some(64_000_000_000)),
            ("16", Some(16_000_000_000)),
            ("0.5", Some(500_000_000)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s), *want, "{s}");
        }
    }

    #[test]
    fn unparseable_is_unknown_not_an_error() {
        for s in [
            "Unknown (AMD)",
            "",
            "GB",
            "-8GB",
            "8 parsecs",
            "1.2.3GB",
            ".",
            "N/A",
        ] {
            assert_eq!(parse_size(s), None, "{s}");
        }
    }

    #[test]
    fn json_values() {
        assert_eq!(size_of(&json!("8GB")), Some(8 * GIGABYTE));
        assert_eq!(size_of(&json!(8)), Some(8 * GIGABYTE));
        assert_eq!(size_of(&json!(-1)), None);
        assert_eq!(size_of(&json!(null)), None);
        assert_eq!(size_of(&json!([8])), None);
    }
}
