//! Results: per-thread tallies, their merge, and the report (table on
//! stdout, JSON for `--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency we can record (60 s, in microseconds); beyond saturates.
pub const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

/// A duration as a recordable latency: microseconds, at least 1, at most
/// `MAX_US`.
pub fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

/// The value at quantile `q`, 0 for an empty histogram.
pub fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

/// What one load thread measured inside the measurement window.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of every completed response (any status), from its due time
    /// (open loop) or its send time (closed loop).
    pub latency: Histogram<u64>,
    /// How late requests went out relative to their due time (open loop):
    /// large values mean the connection was still busy, or the client
    /// itself could not keep up.
    pub send_lag: Histogram<u64>,
    /// Completed responses with a 2xx status.
    pub ok: u64,
    /// Errors by kind: `connect`, `timeout`, `io`, `parse`, `status_404`, ...
    pub errors: BTreeMap<String, u64>,
    /// Requests the schedule asked for in the window (open loop).
    pub planned: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            send_lag: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            planned: 0,
        }
    }
}

impl Tally {
    pub fn error(&mut self, kind: &str) {
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind.to_string(), 1);
            }
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another thread's tally into this one.
    pub fn merge(&mut self, o: &Tally) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.send_lag.add(&o.send_lag);
        self.ok += o.ok;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.planned += o.planned;
    }
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    #[serde(skip)]
    hist: Histogram<u64>,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        let q = |x| quantile(h, x);
        Self {
            count: h.len(),
            min_us: if h.is_empty() { 0 } else { h.min() },
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            hist: h.clone(),
        }
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        quantile(&self.hist, q)
    }

    /// How many measured requests took at most `le_us`.
    pub fn count_le(&self, le_us: u64) -> u64 {
        self.hist.count_between(0, le_us)
    }
}

/// The server's own histogram for the same window, from `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerHistogram {
    pub route: String,
    pub count: u64,
    /// (upper bound in seconds, cumulative count), as scraped minus the
    /// scrape at the start of the window.
    pub buckets: Vec<(f64, u64)>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    pub scenario: String,
    pub target: String,
    pub threads: usize,
    pub connections: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Requests/s asked for (None in closed-loop mode).
    pub target_rate: Option<f64>,
    /// Completed responses per second of the measurement window.
    pub achieved_rate: f64,
    /// Requests the schedule asked for in the window (open loop).
    pub planned: u64,
    /// Completed responses (any status) in the window.
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Latency,
    /// 99th percentile of how late requests were sent (open loop).
    pub send_lag_p99_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerHistogram>,
    /// What the `--subscribers` measured (absent without them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<crate::subscribers::Events>,
}

impl Report {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Ratio of achieved to target rate, if there was a target.
    pub fn rate_ratio(&self) -> Option<f64> {
        self.target_rate
            .filter(|t| *t > 0.0)
            .map(|t| self.achieved_rate / t)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mode = if self.target_rate.is_some() {
            "OPEN LOOP (latency from intended send time)".to_string()
        } else {
            "CLOSED LOOP --max (peak throughput; latency hides queueing, not comparable to open loop)"
                .to_string()
        };
        let _ = writeln!(s, "loadgen: {} -> {}", self.scenario, self.target);
        let _ = writeln!(s, "mode:        {mode}");
        let _ = writeln!(
            s,
            "threads:     {}   connections: {}   warm-up: {:.1} s   measured: {:.1} s",
            self.threads, self.connections, self.warmup_s, self.duration_s
        );
        match self.target_rate {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "rate:        target {t:.0} req/s, achieved {:.0} req/s ({:.2}%)",
                    self.achieved_rate,
                    100.0 * self.rate_ratio().unwrap_or(0.0)
                );
            }
            None => {
                let _ = writeln!(s, "rate:        achieved {:.0} req/s", self.achieved_rate);
            }
        }
        let _ = writeln!(
            s,
            "requests:    {} completed, {} ok (2xx){}",
            self.requests,
            self.ok,
            if self.target_rate.is_some() {
                format!(", {} planned", self.planned)
            } else {
                String::new()
            }
        );
        if self.errors.is_empty() {
            let _ = writeln!(s, "errors:      0");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                s,
                "errors:      {} ({})",
                self.errors_total(),
                list.join(", ")
            );
        }
        let l = &self.latency;
        let _ = writeln!(
            s,
            "latency us:  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"
        );
        let _ = writeln!(
            s,
            "             {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.1}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
        );
        if self.target_rate.is_some() {
            let _ = writeln!(
                s,
                "send lag:    p99 {} us (how late requests left vs schedule)",
                self.send_lag_p99_us
            );
        }
        if let Some(e) = &self.events {
            s.push_str(&e.lines());
        }
        if let Some(srv) = &self.server {
            let _ = writeln!(
                s,
                "server /metrics histogram, route {} ({} requests in window) vs loadgen:",
                srv.route, srv.count
            );
            let _ = writeln!(s, "  {:>10} {:>10} {:>10}", "le", "server", "loadgen");
            for (le, cum) in &srv.buckets {
                let mine = l.count_le((le * 1e6).round() as u64);
                let pct = |n: u64, d: u64| {
                    if d == 0 {
                        0.0
                    } else {
                        100.0 * n as f64 / d as f64
                    }
                };
                let _ = writeln!(
                    s,
                    "  {:>10} {:>9.2}% {:>9.2}%",
                    fmt_le(*le),
                    pct(*cum, srv.count),
                    pct(mine, l.count)
                );
            }
        }
        s
    }

    /// A report with the given latencies (us) and `errors` timeouts.
    #[cfg(test)]
    pub fn for_test(latencies_us: &[u64], errors: u64) -> Self {
        let mut t = Tally::default();
        for v in latencies_us {
            t.latency.saturating_record(*v);
        }
        for _ in 0..errors {
            t.error("timeout");
        }
        build(Meta::for_test(), &t, Duration::from_secs(1), None)
    }
}

fn fmt_le(le: f64) -> String {
    if le < 1e-3 {
        format!("{:.0}us", le * 1e6)
    } else if le < 1.0 {
        format!("{}ms", le * 1e3)
    } else {
        format!("{le}s")
    }
}

/// Run parameters echoed into the report.
#[derive(Debug, Clone)]
pub struct Meta {
    pub scenario: String,
    pub target: String,
    pub threads: usize,
    pub connections: usize,
    pub warmup_s: f64,
    pub target_rate: Option<f64>,
}

impl Meta {
    #[cfg(test)]
    fn for_test() -> Self {
        Self {
            scenario: "test".into(),
            target: "127.0.0.1:1".into(),
            threads: 1,
            connections: 1,
            warmup_s: 0.0,
            target_rate: None,
        }
    }
}

/// Builds the report from the merged tally of a window of `window` length.
pub fn build(meta: Meta, t: &Tally, window: Duration, server: Option<ServerHistogram>) -> Report {
    let secs = window.as_secs_f64().max(1e-9);
    let requests = t.latency.len();
    Report {
        mode: if meta.target_rate.is_some() {
            "open-loop".into()
        } else {
            "closed-loop".into()
        },
        scenario: meta.scenario,
        target: meta.target,
        threads: meta.threads,
        connections: meta.connections,
        warmup_s: meta.warmup_s,
        duration_s: window.as_secs_f64(),
        target_rate: meta.target_rate,
        achieved_rate: requests as f64 / secs,
        planned: t.planned,
        requests,
        ok: t.ok,
        errors: t.errors.clone(),
        latency: Latency::from_hist(&t.latency),
        send_lag_p99_us: quantile(&t.send_lag, 0.99),
        server,
        events: None,
    }
}

/// Parses the cumulative buckets and count of
/// `coordinator_http_request_duration_seconds` for `route` from a
/// Prometheus text exposition.
pub fn parse_server_histogram(text: &str, route: &str) -> Option<ServerHistogram> {
    const NAME: &str = "coordinator_http_request_duration_seconds";
    let route_label = format!("route=\"{route}\"");
    let mut buckets = Vec::new();
    let mut count = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(NAME) else {
            continue;
        };
        if !rest.contains(&route_label) {
            continue;
        }
        let value: u64 = match line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            Some(v) => v as u64,
            None => continue,
        };
        if rest.starts_with("_bucket{") {
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            if le == "+Inf" {
                continue;
            }
            buckets.push((le.parse::<f64>().ok()?, value));
        } else if rest.starts_with("_count{") {
            count = Some(value);
        }
    }
    Some(ServerHistogram {
        route: route.to_string(),
        count: count?,
        buckets,
    })
}

/// The value of one series (`name{labels}` exactly as exposed) in a
/// Prometheus text exposition.
pub fn parse_counter(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `after - before`, bucket by bucket (a missing `before` is all zeros).
pub fn histogram_delta(
    after: ServerHistogram,
    before: Option<&ServerHistogram>,
) -> ServerHistogram {
    let Some(b) = before else {
        return after;
    };
    let buckets = after
        .buckets
        .iter()
        .map(|(le, n)| {
            let prev = b
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0, |(_, m)| *m);
            (*le, n.saturating_sub(prev))
        })
        .collect();
    ServerHistogram {
        route: after.route,
        count: after.count.saturating_sub(b.count),
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_histograms_and_errors() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        for v in 1..=90 {
            a.latency.saturating_record(v);
        }
        for v in 91..=100 {
            b.latency.saturating_record(v * 100);
        }
        a.ok = 90;
        b.ok = 10;
        a.error("timeout");
        b.error("timeout");
        b.error("status_404");
        a.planned = 95;
        b.planned = 12;
        a.merge(&b);
        assert_eq!(a.latency.len(), 100);
        assert_eq!(a.ok, 100);
        assert_eq!(a.planned, 107);
        assert_eq!(a.errors["timeout"], 2);
        assert_eq!(a.errors["status_404"], 1);
        let r = build(Meta::for_test(), &a, Duration::from_secs(2), None);
        assert_eq!(r.requests, 100);
        assert_eq!(r.achieved_rate, 50.0);
        assert_eq!(r.latency.p50_us, 50);
        // p99 falls in the second thread's values: 9900 +- 0.1%.
        assert!(
            (9890..=9910).contains(&r.latency.p99_us),
            "{}",
            r.latency.p99_us
        );
        assert_eq!(r.errors_total(), 3);
        assert_eq!(r.mode, "closed-loop");
        assert!(r.table().contains("CLOSED LOOP"));
    }

    #[test]
    fn empty_run_reports_zeros() {
        let r = Report::for_test(&[], 0);
        assert_eq!(r.latency.count, 0);
        assert_eq!(r.latency.max_us, 0);
        assert!(r.table().contains("errors:      0"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["latency"]["p99_us"], 0);
    }

    #[test]
    fn counters_by_exact_series() {
        let text = "# TYPE x counter\n\
x_total{event=\"submitted\"} 12\n\
x_total{event=\"submitted_late\"} 99\n\
x_total{event=\"completed\"} 1e3\n";
        assert_eq!(
            parse_counter(text, "x_total{event=\"submitted\"}"),
            Some(12.0)
        );
        assert_eq!(
            parse_counter(text, "x_total{event=\"completed\"}"),
            Some(1000.0)
        );
        assert_eq!(parse_counter(text, "x_total{event=\"dead\"}"), None);
    }

    #[test]
    fn server_histogram_parse_and_delta() {
        let text = "# TYPE coordinator_http_request_duration_seconds histogram\n\
coordinator_http_request_duration_seconds_bucket{route=\"register\",le=\"0.0001\"} 7\n\
coordinator_http_request_duration_seconds_bucket{route=\"heartbeat\",le=\"0.00005\"} 10\n\
coordinator_http_request_duration_seconds_bucket{route=\"heartbeat\",le=\"0.0001\"} 30\n\
coordinator_http_request_duration_seconds_bucket{route=\"heartbeat\",le=\"+Inf\"} 40\n\
coordinator_http_request_duration_seconds_sum{route=\"heartbeat\"} 0.01\n\
coordinator_http_request_duration_seconds_count{route=\"heartbeat\"} 40\n";
        let after = parse_server_histogram(text, "heartbeat").unwrap();
        assert_eq!(after.count, 40);
        assert_eq!(after.buckets, vec![(0.00005, 10), (0.0001, 30)]);
        let before = ServerHistogram {
            route: "heartbeat".into(),
            count: 5,
            buckets: vec![(0.00005, 2), (0.0001, 4)],
        };
        let d = histogram_delta(after, Some(&before));
        assert_eq!(d.count, 35);
        assert_eq!(d.buckets, vec![(0.00005, 8), (0.0001, 26)]);
        assert!(parse_server_histogram(text, "tasks").is_none());
    }

    #[test]
    fn bucket_labels() {
        assert_eq!(fmt_le(0.00005), "50us");
        assert_eq!(fmt_le(0.0025), "2.5ms");
        assert_eq!(fmt_le(2.5), "2.5s");
    }
}
