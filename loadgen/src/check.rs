//! `--check` bounds (`p99<1ms,p999<2ms,errors=0,rate>=0.99`) and duration
//! parsing. A run that breaks a bound exits non-zero naming the bound.

use std::fmt;
use std::time::Duration;

use crate::report::Report;

/// What a bound is about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A latency quantile in (0, 1], e.g. 0.99 for `p99`.
    Quantile(f64),
    Max,
    Mean,
    /// Errors of every kind.
    Errors,
    /// Achieved / target rate (open loop only).
    Rate,
    /// Achieved requests per second.
    Rps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
        }
    }
}

/// One bound, e.g. `p99<1ms`. Latency values are kept in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    pub text: String,
    pub metric: Metric,
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError(pub String);

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `p50|p90|p99|p999|p9999|max|mean` (latency with unit us/ms/s),
/// `errors` (count), `rate` (achieved/target), `rps` (req/s), each with
/// `<`, `<=`, `>`, `>=` or `=`, separated by commas.
pub fn parse_checks(expr: &str) -> Result<Vec<Bound>, CheckError> {
    let mut out = Vec::new();
    for term in expr.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let at = term
            .find(['<', '>', '='])
            .ok_or_else(|| CheckError(format!("{term:?}: no comparison (<, <=, >, >=, =)")))?;
        let (name, rest) = term.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix("==") {
            (Op::Eq, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Gt, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Op::Eq, v)
        } else {
            return Err(CheckError(format!("{term:?}: bad comparison")));
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        let metric = match name.as_str() {
            "max" => Metric::Max,
            "mean" => Metric::Mean,
            "errors" => Metric::Errors,
            "rate" => Metric::Rate,
            "rps" => Metric::Rps,
            q if q.starts_with('p') => {
                Metric::Quantile(parse_quantile(&q[1..]).ok_or_else(|| {
                    CheckError(format!(
                        "{term:?}: unknown percentile {q} (p50, p99, p999, ...)"
                    ))
                })?)
            }
            other => {
                return Err(CheckError(format!(
                    "{term:?}: unknown metric {other:?} (p50..p9999, max, mean, errors, rate, rps)"
                )))
            }
        };
        let value = match metric {
            Metric::Quantile(_) | Metric::Max | Metric::Mean => value
                .ends_with(|c: char| c.is_alphabetic())
                .then(|| parse_duration(value))
                .flatten()
                .map(|d| d.as_nanos() as f64 / 1000.0)
                .ok_or_else(|| {
                    CheckError(format!("{term:?}: latency needs a unit, e.g. 1ms or 800us"))
                })?,
            _ => value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| CheckError(format!("{term:?}: {value:?} is not a number")))?,
        };
        out.push(Bound {
            text: term.to_string(),
            metric,
            op,
            value,
        });
    }
    if out.is_empty() {
        return Err(CheckError("empty --check".into()));
    }
    Ok(out)
}

/// `99` -> 0.99, `999` -> 0.999, `50` -> 0.5, `99.9` -> 0.999, `100` -> 1.
fn parse_quantile(digits: &str) -> Option<f64> {
    if let Some((int, frac)) = digits.split_once('.') {
        // Shift the decimal point textually: 99.9 -> 0.999 exactly as typed.
        let ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || int.len() > 2 || !ok(int) || !ok(frac) {
            return None;
        }
        let q: f64 = format!("0.{int:0>2}{frac}").parse().ok()?;
        return (q > 0.0).then_some(q);
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits == "100" {
        return Some(1.0);
    }
    // "9", "99", "999": read as 0.9, 0.99, 0.999; "50" as 0.50.
    let q: f64 = format!("0.{digits}").parse().ok()?;
    (q > 0.0).then_some(q)
}

/// Parses `500us`, `1.5ms`, `2s`, `1m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        "m" | "min" => n * 60.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The bounds a report breaks, each with the measured value.
pub fn failures(bounds: &[Bound], r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for b in bounds {
        let (actual, shown) = match b.metric {
            Metric::Quantile(q) => {
                let v = r.latency.quantile_us(q) as f64;
                (v, format!("{v} us"))
            }
            Metric::Max => (r.latency.max_us as f64, format!("{} us", r.latency.max_us)),
            Metric::Mean => (r.latency.mean_us, format!("{:.1} us", r.latency.mean_us)),
            Metric::Errors => (r.errors_total() as f64, r.errors_total().to_string()),
            Metric::Rate => match r.target_rate {
                Some(t) if t > 0.0 => {
                    let v = r.achieved_rate / t;
                    (
                        v,
                        format!("{v:.4} ({:.0} of {t:.0} req/s)", r.achieved_rate),
                    )
                }
                _ => {
                    out.push(format!(
                        "{}: no target rate in closed-loop (--max) mode",
                        b.text
                    ));
                    continue;
                }
            },
            Metric::Rps => (r.achieved_rate, format!("{:.0} req/s", r.achieved_rate)),
        };
        if r.latency.count == 0
            && matches!(b.metric, Metric::Quantile(_) | Metric::Max | Metric::Mean)
        {
            out.push(format!("{}: no successful requests measured", b.text));
            continue;
        }
        if !b.op.holds(actual, b.value) {
            out.push(format!("{} failed: measured {shown}", b.text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let b = parse_checks("p99<1ms, p999<2ms,errors=0,rate>=0.99").unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].metric, Metric::Quantile(0.99));
        assert_eq!((b[0].op, b[0].value), (Op::Lt, 1000.0));
        assert_eq!(b[1].metric, Metric::Quantile(0.999));
        assert_eq!(b[1].value, 2000.0);
        assert_eq!(
            (b[2].metric, b[2].op, b[2].value),
            (Metric::Errors, Op::Eq, 0.0)
        );
        assert_eq!(
            (b[3].metric, b[3].op, b[3].value),
            (Metric::Rate, Op::Ge, 0.99)
        );
    }

    #[test]
    fn quantile_names() {
        assert_eq!(parse_quantile("50"), Some(0.5));
        assert_eq!(parse_quantile("9999"), Some(0.9999));
        assert_eq!(parse_quantile("99.9"), Some(0.999));
        assert_eq!(parse_quantile("5.5"), Some(0.055));
        assert_eq!(parse_quantile("100.0"), None);
        assert_eq!(parse_quantile("100"), Some(1.0));
        assert_eq!(parse_quantile("x"), None);
        assert_eq!(parse_quantile(""), None);
    }

    #[test]
    fn rejects_nonsense_clearly() {
        for bad in [
            "p99", "p99<1", "foo<1ms", "errors<x", "", "p99~1ms", "px<1ms",
        ] {
            assert!(parse_checks(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = parse_checks("p99<1").unwrap_err();
        assert!(e.0.contains("unit"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500us"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_duration("20"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2 s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("3h"), None);
    }

    #[test]
    fn failures_name_the_bound_and_the_measurement() {
        let mut r = Report::for_test(&[100, 200, 300, 5000], 10);
        r.target_rate = Some(1000.0);
        r.achieved_rate = 980.0;
        let b = parse_checks("p50<1ms,max<1ms,errors=0,rate>=0.99,rps>900").unwrap();
        let f = failures(&b, &r);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].starts_with("max<1ms failed: measured 500"), "{f:?}");
        assert!(f[1].starts_with("errors=0 failed: measured 10"), "{f:?}");
        assert!(
            f[2].starts_with("rate>=0.99 failed: measured 0.98"),
            "{f:?}"
        );
        r.target_rate = None;
        let f = failures(&parse_checks("rate>=0.5").unwrap(), &r);
        assert!(f[0].contains("closed-loop"), "{f:?}");
    }
}
