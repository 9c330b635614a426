//! One `/metrics` scrape: what each shard reports, and the whole text.
//!
//! Every shard answers `Request::Metrics` with a [`MetricsSnapshot`] of its
//! own counters; the scraping shard adds the registry-wide [`Gauges`] and
//! [`encode`] asks each owner for its families (`metrics` for HTTP and
//! connections, `tasks::scrape`, `proxy::scrape`) and encodes them.
//! This module must not parse HTTP or know about routes beyond the names
//! it is given.

use crate::metrics::{
    self, by_shard, counter, gauge, label, unlabelled, MetricFamily, ShardMetrics,
};
use crate::proxy::{scrape as proxy_scrape, ProxyCounters};
use crate::tasks::{scrape as task_scrape, TaskCounters};

/// What one shard reports on a scrape.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub shard: usize,
    pub metrics: ShardMetrics,
    pub workers: u64,
    pub tasks: TaskCounters,
    /// Queue key -> queued tasks (non-empty queues).
    pub queues: Vec<(String, u64)>,
    pub proxy: ProxyCounters,
}

/// Registry-wide gauges, computed by the scraping shard from a fan-out.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub workers_total: u64,
    pub workers_active: u64,
    pub services_total: u64,
    pub tasks_completed: u64,
    /// Workers by reported status (bounded set of names; "stale" for
    /// workers without a fresh heartbeat), sorted.
    pub workers_by_status: Vec<(String, u64)>,
    /// Healthy workers of tiers 1..=4 (index 0 unused).
    pub healthy_by_tier: [u64; 5],
    /// Every catalog service: (name, tier, healthy workers).
    pub catalog_services: Vec<(String, u8, u64)>,
}

/// The families of one scrape, in the order they are exposed.
pub(crate) fn families(
    route_names: &[&str],
    shards: &[MetricsSnapshot],
    g: &Gauges,
) -> Vec<MetricFamily> {
    // `coordinator_workers_total` and `coordinator_services_total` are
    // gauges with a counter's suffix, kept for compatibility (docs/api.md);
    // `.ci/promtool` accepts exactly these two findings. `coordinator_workers`
    // and `coordinator_services` carry the same values under correct names.
    let mut out = vec![
        gauge(
            "coordinator_workers_total",
            "Registered workers (compatibility name of coordinator_workers).",
            unlabelled(g.workers_total),
        ),
        gauge(
            "coordinator_workers",
            "Registered workers.",
            unlabelled(g.workers_total),
        ),
        gauge(
            "coordinator_workers_active",
            "Healthy workers.",
            unlabelled(g.workers_active),
        ),
        gauge(
            "coordinator_services_total",
            "Services with at least one healthy worker (compatibility name of coordinator_services).",
            unlabelled(g.services_total),
        ),
        gauge(
            "coordinator_services",
            "Services with at least one healthy worker.",
            unlabelled(g.services_total),
        ),
        gauge(
            "coordinator_workers_by_status",
            "Registered workers by reported status (\"stale\": no fresh heartbeat; \"other\": a status outside the known set).",
            g.workers_by_status
                .iter()
                .map(|(status, n)| (vec![label("status", status.as_str())], *n))
                .collect(),
        ),
        gauge(
            "coordinator_healthy_workers_by_tier",
            "Healthy workers by tier (1 gpu, 2 cpu, 3 storage, 4 edge).",
            (1..g.healthy_by_tier.len())
                .map(|t| (vec![label("tier", t.to_string())], g.healthy_by_tier[t]))
                .collect(),
        ),
        gauge(
            "coordinator_service_healthy_workers",
            "Healthy workers running each catalog service (0: a coverage gap).",
            g.catalog_services
                .iter()
                .map(|(name, tier, n)| {
                    let labels = vec![label("service", name.as_str()), label("tier", tier.to_string())];
                    (labels, *n)
                })
                .collect(),
        ),
        counter(
            "coordinator_tasks_completed_total",
            "Task completions reported by workers.",
            unlabelled(g.tasks_completed),
        ),
    ];
    out.extend(ShardMetrics::http_families(
        route_names,
        shards.iter().map(|s| &s.metrics),
    ));
    out.push(gauge(
        "coordinator_shard_workers",
        "Workers owned by each shard.",
        by_shard(shards.iter().map(|s| (s.shard, s.workers))),
    ));
    out.extend(ShardMetrics::connection_families(
        shards.iter().map(|s| (s.shard, &s.metrics)),
    ));
    out.extend(task_scrape::families(
        shards
            .iter()
            .map(|s| (s.shard, &s.tasks, s.queues.as_slice())),
    ));
    out.extend(proxy_scrape::families(
        shards.iter().map(|s| (s.shard, &s.proxy)),
    ));
    out
}

/// Merged snapshots in the Prometheus text format (version 0.0.4).
pub fn encode(route_names: &[&str], shards: &[MetricsSnapshot], g: &Gauges) -> String {
    metrics::encode_text(&families(route_names, shards, g))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
