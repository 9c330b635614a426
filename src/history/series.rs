//! The series the coordinator keeps history of: names, units, labels.
//!
//! A fixed catalogue, so a query names a known series and every label value
//! comes from a bounded set (routes, statuses, tiers, catalog services, task
//! states) or, for the per-worker series, from a registered worker's id.

use serde::Serialize;

/// One kind of series.
#[derive(Debug, Serialize)]
pub struct SeriesDef {
    pub name: &'static str,
    pub unit: &'static str,
    /// The label that tells this series' lines apart (none: one line).
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Kept per worker (`worker_id` is required), sampled by the worker's
    /// owner shard and stored from the 1-minute tier up (no raw tier).
    pub per_worker: bool,
}

macro_rules! def {
    ($name:literal, $unit:literal, [$($l:literal),*], $per:literal, $help:literal) => {
        SeriesDef { name: $name, unit: $unit, labels: &[$($l),*], help: $help, per_worker: $per }
    };
}

/// Every series, in the order `GET /api/history/series` lists them. The
/// index of a series here is its id inside a [`Point`](super::Point).
pub const SERIES: [SeriesDef; 13] = [
    def!("workers", "workers", ["status"], false,
        "Registered workers by reported status; `stale` has no fresh heartbeat, `drained` is drained."),
    def!("workers_healthy_by_tier", "workers", ["tier"], false,
        "Healthy workers by tier (1 GPU inference, 2 GPU light, 3 CPU, 4 storage)."),
    def!("service_healthy", "workers", ["service"], false,
        "Healthy workers per catalog service (0 is a coverage gap)."),
    def!("requests", "req/s", ["route"], false,
        "HTTP requests per second by route; route `all` is every route."),
    def!("latency_p50_ms", "ms", ["route"], false,
        "Median time to answer, by route, over the sample interval; `all`: every route but the long-poll and streams (tasks, events, events_ws)."),
    def!("latency_p99_ms", "ms", ["route"], false,
        "99th percentile time to answer, by route, over the sample interval; `all`: every route but the long-poll and streams (tasks, events, events_ws)."),
    def!("upstream_p50_ms", "ms", [], false,
        "Median time of proxied requests to the worker's answer head."),
    def!("upstream_p99_ms", "ms", [], false,
        "99th percentile time of proxied requests to the worker's answer head."),
    def!("upstream_requests", "req/s", [], false,
        "Requests per second forwarded to workers (every attempt)."),
    def!("tasks", "tasks", ["state"], false,
        "Tasks by state: queued, leased, completed, failed, dead."),
    def!("task_completions", "tasks/s", [], false,
        "Tasks finished per second (completed or failed)."),
    def!("worker_load", "load", [], true,
        "A worker's reported current_load."),
    def!("worker_active", "requests", [], true,
        "A worker's reported active_requests."),
];

/// The catalogue index of series `name`.
pub fn find(name: &str) -> Option<usize> {
    SERIES.iter().position(|s| s.name == name)
}

/// Index of the series the samplers write; checked against the names by a
/// unit test so the two cannot drift.
pub(crate) mod id {
    pub const WORKERS: u8 = 0;
    pub const HEALTHY_BY_TIER: u8 = 1;
    pub const SERVICE_HEALTHY: u8 = 2;
    pub const REQUESTS: u8 = 3;
    pub const LATENCY_P50: u8 = 4;
    pub const LATENCY_P99: u8 = 5;
    pub const UPSTREAM_P50: u8 = 6;
    pub const UPSTREAM_P99: u8 = 7;
    pub const UPSTREAM_REQUESTS: u8 = 8;
    pub const TASKS: u8 = 9;
    pub const TASK_COMPLETIONS: u8 = 10;
    pub const WORKER_LOAD: u8 = 11;
    pub const WORKER_ACTIVE: u8 = 12;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_series() {
        let pairs = [
            (id::WORKERS, "workers"),
            (id::HEALTHY_BY_TIER, "workers_healthy_by_tier"),
            (id::SERVICE_HEALTHY, "service_healthy"),
            (id::REQUESTS, "requests"),
            (id::LATENCY_P50, "latency_p50_ms"),
            (id::LATENCY_P99, "latency_p99_ms"),
            (id::UPSTREAM_P50, "upstream_p50_ms"),
            (id::UPSTREAM_P99, "upstream_p99_ms"),
            (id::UPSTREAM_REQUESTS, "upstream_requests"),
            (id::TASKS, "tasks"),
            (id::TASK_COMPLETIONS, "task_completions"),
            (id::WORKER_LOAD, "worker_load"),
            (id::WORKER_ACTIVE, "worker_active"),
        ];
        assert_eq!(pairs.len(), SERIES.len());
        for (i, name) in pairs {
            assert_eq!(SERIES[i as usize].name, name);
            assert_eq!(find(name), Some(i as usize));
        }
        assert!(SERIES.iter().all(|s| s.labels.len() <= 1));
    }
}
