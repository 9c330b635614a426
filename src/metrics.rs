//! Per-shard metrics, merged on scrape.
//!
//! Each shard owns plain counters and fixed-bucket histograms (no atomics,
//! no locks: only its own thread touches them). A scrape asks every shard
//! for a snapshot over the mesh, adds them up and encodes the Prometheus
//! text format here. The `prometheus` crate's collectors are atomic and
//! registry-based, which is exactly the sharing this design avoids, so the
//! (small) text encoder lives here and is checked by a real parser in tests.
//!
//! This module must not know about HTTP routing or the registry: callers
//! pass route names and registry gauges in.

use std::fmt::Write as _;
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: 10 us to 1 s, so
/// sub-millisecond latency is visible.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative-on-encode histogram with fixed buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last slot is +Inf.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|b| *b < s);
        self.counts[i] += 1;
        self.sum += s;
        self.count += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        let (counts, sum, count) = (&self.counts, self.sum, self.count);
        encode_histogram(out, name, labels, &LATENCY_BUCKETS, counts, sum, count);
    }
}

/// Counters for one route.
#[derive(Debug, Clone, Default)]
pub struct RouteMetrics {
    /// (status code, count); a handful of codes per route, so a Vec.
    pub by_status: Vec<(u16, u64)>,
    pub latency: Histogram,
}

/// One shard's metrics. Everything is owned by the shard's thread.
#[derive(Debug, Clone, Default)]
pub struct ShardMetrics {
    pub routes: Vec<RouteMetrics>,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub connections_rejected: u64,
    pub connections_timed_out: u64,
    pub mesh_sent: u64,
    pub mesh_received: u64,
    pub workers_removed: u64,
}

impl ShardMetrics {
    pub fn new(n_routes: usize) -> Self {
        Self {
            routes: vec![RouteMetrics::default(); n_routes],
            ..Default::default()
        }
    }

    pub fn record(&mut self, route: usize, status: u16, elapsed: Duration) {
        let Some(r) = self.routes.get_mut(route) else {
            return;
        };
        match r.by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => r.by_status.push((status, 1)),
        }
        r.latency.observe(elapsed);
    }
}

/// What one shard reports on a scrape.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub shard: usize,
    pub metrics: ShardMetrics,
    pub workers: u64,
    pub tasks: crate::tasks::TaskCounters,
    /// Queue key -> queued tasks (non-empty queues).
    pub queues: Vec<(String, u64)>,
    pub proxy: crate::proxy::ProxyCounters,
}

/// Registry-wide gauges, computed by the scraping shard from a fan-out.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub workers_total: u64,
    pub workers_active: u64,
    pub services_total: u64,
    pub tasks_completed: u64,
}

/// Encodes merged snapshots in the Prometheus text format (version 0.0.4).
pub fn encode(route_names: &[&str], shards: &[MetricsSnapshot], g: &Gauges) -> String {
    let mut out = String::with_capacity(8 << 10);
    gauge(
        &mut out,
        "coordinator_workers_total",
        "Registered workers.",
        g.workers_total,
    );
    gauge(
        &mut out,
        "coordinator_workers_active",
        "Healthy workers.",
        g.workers_active,
    );
    gauge(
        &mut out,
        "coordinator_services_total",
        "Services with at least one healthy worker.",
        g.services_total,
    );
    header(
        &mut out,
        "coordinator_tasks_completed_total",
        "Task completions reported by workers.",
        "counter",
    );
    let _ = writeln!(
        out,
        "coordinator_tasks_completed_total {}",
        g.tasks_completed
    );

    // Routes: summed over shards.
    let mut routes = vec![RouteMetrics::default(); route_names.len()];
    for s in shards {
        for (acc, r) in routes.iter_mut().zip(&s.metrics.routes) {
            for &(code, n) in &r.by_status {
                match acc.by_status.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, m)) => *m += n,
                    None => acc.by_status.push((code, n)),
                }
            }
            acc.latency.merge(&r.latency);
        }
    }
    header(
        &mut out,
        "coordinator_http_requests_total",
        "HTTP requests by route and status.",
        "counter",
    );
    for (name, r) in route_names.iter().zip(&routes) {
        let mut codes = r.by_status.clone();
        codes.sort_unstable();
        for (code, n) in codes {
            let _ = writeln!(
                out,
                "coordinator_http_requests_total{{route=\"{name}\",status=\"{code}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "coordinator_http_request_duration_seconds",
        "Time from request head to response, by route.",
        "histogram",
    );
    for (name, r) in route_names.iter().zip(&routes) {
        if r.latency.count == 0 {
            continue;
        }
        r.latency.encode(
            &mut out,
            "coordinator_http_request_duration_seconds",
            &format!("route=\"{name}\""),
        );
    }

    let per_shard: [PerShard; 8] = [
        (
            "coordinator_shard_workers",
            "Workers owned by each shard.",
            "gauge",
            |s| s.workers,
        ),
        (
            "coordinator_connections_accepted_total",
            "Connections accepted.",
            "counter",
            |s| s.metrics.connections_accepted,
        ),
        (
            "coordinator_connections_open",
            "Connections open now.",
            "gauge",
            |s| s.metrics.connections_open,
        ),
        (
            "coordinator_connections_rejected_total",
            "Connections refused at the per-shard cap.",
            "counter",
            |s| s.metrics.connections_rejected,
        ),
        (
            "coordinator_connections_timed_out_total",
            "Connections closed for idleness or slow headers.",
            "counter",
            |s| s.metrics.connections_timed_out,
        ),
        (
            "coordinator_mesh_sent_total",
            "Messages sent to other shards.",
            "counter",
            |s| s.metrics.mesh_sent,
        ),
        (
            "coordinator_mesh_received_total",
            "Messages received from other shards.",
            "counter",
            |s| s.metrics.mesh_received,
        ),
        (
            "coordinator_workers_removed_total",
            "Workers removed after WORKER_TIMEOUT_SECONDS of silence.",
            "counter",
            |s| s.metrics.workers_removed,
        ),
    ];
    encode_per_shard(&mut out, shards, &per_shard);
    encode_tasks(&mut out, shards);
    encode_proxy(&mut out, shards);
    out
}

fn encode_tasks(out: &mut String, shards: &[MetricsSnapshot]) {
    use crate::tasks::TaskState;
    header(
        out,
        "coordinator_tasks",
        "Tasks held now, by state.",
        "gauge",
    );
    for st in TaskState::ALL {
        let n: u64 = shards.iter().map(|s| s.tasks.by_state[st.index()]).sum();
        let _ = writeln!(out, "coordinator_tasks{{state=\"{}\"}} {n}", st.as_str());
    }
    // Worker queues are one per worker: summed into one series to keep
    // the label set bounded; service and capability queues are named.
    let mut depth: std::collections::BTreeMap<&str, u64> = Default::default();
    for s in shards {
        for (k, n) in &s.queues {
            let key = if k.starts_with("worker:") {
                "workers"
            } else {
                k.as_str()
            };
            *depth.entry(key).or_default() += n;
        }
    }
    header(
        out,
        "coordinator_task_queue_depth",
        "Queued tasks per service/capability queue (all worker queues summed as \"workers\").",
        "gauge",
    );
    for (k, n) in depth {
        let _ = writeln!(
            out,
            "coordinator_task_queue_depth{{queue=\"{}\"}} {n}",
            escape(k)
        );
    }
    header(
        out,
        "coordinator_task_events_total",
        "Task state changes by kind (lease_expired includes dead_lettered).",
        "counter",
    );
    type Get = fn(&crate::tasks::TaskCounters) -> u64;
    let events: [(&str, Get); 8] = [
        ("submitted", |c| c.submitted),
        ("leased", |c| c.leased),
        ("completed", |c| c.completed),
        ("failed", |c| c.failed),
        ("retried", |c| c.retried),
        ("lease_expired", |c| c.lease_expiries),
        ("dead_lettered", |c| c.dead_lettered),
        ("lease_extended", |c| c.extended),
    ];
    for (name, get) in events {
        let n: u64 = shards.iter().map(|s| get(&s.tasks)).sum();
        let _ = writeln!(out, "coordinator_task_events_total{{event=\"{name}\"}} {n}");
    }
    header(
        out,
        "coordinator_task_waiters",
        "Long-polls parked on each shard's queues.",
        "gauge",
    );
    for s in shards {
        let _ = writeln!(
            out,
            "coordinator_task_waiters{{shard=\"{}\"}} {}",
            s.shard, s.tasks.waiters
        );
    }
}

fn encode_proxy(out: &mut String, shards: &[MetricsSnapshot]) {
    encode_by_outcome(
        out,
        shards,
        ("coordinator_routed_requests_total", "service"),
        "Proxied requests by service and outcome.",
        |p| &p.routed,
    );
    encode_by_outcome(
        out,
        shards,
        ("coordinator_upstream_attempts_total", "worker"),
        "Attempts to reach a worker, by worker and outcome.",
        |p| &p.attempts,
    );
    let mut lat = Histogram::default();
    for s in shards {
        lat.merge(&s.proxy.upstream_latency);
    }
    header(
        out,
        "coordinator_upstream_latency_seconds",
        "Time from sending a proxied request to the worker's response head.",
        "histogram",
    );
    lat.encode(out, "coordinator_upstream_latency_seconds", "");
    let per_shard: [PerShard; 4] = [
        (
            "coordinator_route_cooldowns",
            "Workers in cooldown on each shard now.",
            "gauge",
            |s| s.proxy.cooldowns,
        ),
        (
            "coordinator_proxy_retries_total",
            "Proxied requests retried on another worker.",
            "counter",
            |s| s.proxy.retries,
        ),
        (
            "coordinator_proxy_connections_opened_total",
            "Upstream connections opened (the rest reused keep-alive).",
            "counter",
            |s| s.proxy.connections_opened,
        ),
        (
            "coordinator_proxy_dns_lookups_total",
            "DNS lookups of worker hostnames started (the rest answered from the shard's cache).",
            "counter",
            |s| s.proxy.dns_lookups,
        ),
    ];
    encode_per_shard(out, shards, &per_shard);
}

/// A `name{label="..",outcome=".."}` counter summed over shards.
fn encode_by_outcome(
    out: &mut String,
    shards: &[MetricsSnapshot],
    (name, label): (&str, &str),
    help: &str,
    get: fn(&crate::proxy::ProxyCounters) -> &crate::proxy::ByOutcome,
) {
    let mut sum: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for s in shards {
        for (key, per) in get(&s.proxy) {
            for (o, n) in per {
                *sum.entry((key.as_str(), o)).or_default() += n;
            }
        }
    }
    header(out, name, help, "counter");
    for ((key, o), n) in sum {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{}\",outcome=\"{o}\"}} {n}",
            escape(key)
        );
    }
}

/// Label values come from workers and clients: escape per the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// (name, help, type, value of one shard).
type PerShard = (
    &'static str,
    &'static str,
    &'static str,
    fn(&MetricsSnapshot) -> u64,
);

fn encode_per_shard(out: &mut String, shards: &[MetricsSnapshot], series: &[PerShard]) {
    for (name, help, kind, get) in series {
        header(out, name, help, kind);
        for s in shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, get(s));
        }
    }
}

pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One unlabelled value with its header.
pub(crate) fn scalar(out: &mut String, name: &str, help: &str, kind: &str, v: u64) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    scalar(out, name, help, "gauge", v);
}

/// The sample lines of one histogram series: cumulative buckets over
/// `bounds` (`counts` is non-cumulative, its last slot +Inf), then sum and
/// count. `labels` (already formatted, e.g. `route="x"`) go before `le`.
pub(crate) fn encode_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
    count: u64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cum = 0;
    for (le, n) in bounds.iter().zip(counts) {
        cum += n;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = |l: &str| {
        if l.is_empty() {
            String::new()
        } else {
            format!("{{{l}}}")
        }
    };
    let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
    let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[LATENCY_BUCKETS.len()], 1);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn encode_sums_routes_over_shards() {
        let mut a = ShardMetrics::new(2);
        a.record(0, 200, Duration::from_micros(30));
        let mut b = ShardMetrics::new(2);
        b.record(0, 200, Duration::from_micros(300));
        b.record(0, 404, Duration::from_micros(300));
        let snaps = vec![
            MetricsSnapshot {
                shard: 0,
                metrics: a,
                workers: 1,
                ..Default::default()
            },
            MetricsSnapshot {
                shard: 1,
                metrics: b,
                workers: 2,
                ..Default::default()
            },
        ];
        let text = encode(&["hb", "list"], &snaps, &Gauges::default());
        assert!(text.contains("coordinator_http_requests_total{route=\"hb\",status=\"200\"} 2\n"));
        assert!(text.contains("coordinator_http_requests_total{route=\"hb\",status=\"404\"} 1\n"));
        assert!(text.contains(
            "coordinator_http_request_duration_seconds_bucket{route=\"hb\",le=\"0.00005\"} 1\n"
        ));
        assert!(text.contains("coordinator_http_request_duration_seconds_count{route=\"hb\"} 3\n"));
        assert!(text.contains("coordinator_shard_workers{shard=\"1\"} 2\n"));
        assert!(!text.contains("route=\"list\",le"));
    }
}
