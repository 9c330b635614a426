//! The proxy's families of a `/metrics` scrape, from each shard's
//! [`ProxyCounters`].
//!
//! It reads the snapshots it is given and must not touch a shard, the mesh
//! or a worker.

use std::collections::BTreeMap;

use super::{ByOutcome, ProxyCounters};
use crate::metrics::{
    by_shard, counter, gauge, histogram_family, label, Histogram, MetricFamily, Series,
};

/// `coordinator_routed_requests_total`, `coordinator_upstream_attempts_total`,
/// `coordinator_upstream_latency_seconds` and the per-shard proxy figures.
/// `shards` yields (shard id, its counters).
pub(crate) fn families<'a>(
    shards: impl IntoIterator<Item = (usize, &'a ProxyCounters)> + Clone,
) -> Vec<MetricFamily> {
    let counters = || shards.clone().into_iter().map(|(_, p)| p);
    let mut latency = Histogram::default();
    for p in counters() {
        latency.merge(&p.upstream_latency);
    }
    type Get = fn(&ProxyCounters) -> u64;
    let of = |get: Get| by_shard(shards.clone().into_iter().map(|(i, p)| (i, get(p))));
    vec![
        counter(
            "coordinator_routed_requests_total",
            "Proxied requests by service and outcome.",
            by_outcome("service", counters().map(|p| &p.routed)),
        ),
        counter(
            "coordinator_upstream_attempts_total",
            "Attempts to reach a worker, by worker and outcome.",
            by_outcome("worker", counters().map(|p| &p.attempts)),
        ),
        histogram_family(
            "coordinator_upstream_latency_seconds",
            "Time from sending a proxied request to the worker's response head.",
            vec![(Vec::new(), &latency)],
        ),
        gauge(
            "coordinator_route_cooldowns",
            "Workers in cooldown on each shard now.",
            of(|p| p.cooldowns),
        ),
        counter(
            "coordinator_proxy_retries_total",
            "Proxied requests retried on another worker.",
            of(|p| p.retries),
        ),
        counter(
            "coordinator_proxy_connections_opened_total",
            "Upstream connections opened (the rest reused keep-alive).",
            of(|p| p.connections_opened),
        ),
        counter(
            "coordinator_proxy_dns_lookups_total",
            "DNS lookups of worker hostnames started (the rest answered from the shard's cache).",
            of(|p| p.dns_lookups),
        ),
    ]
}

/// `{<key_label>="..",outcome=".."}` series summed over shards.
fn by_outcome<'a>(key_label: &str, maps: impl Iterator<Item = &'a ByOutcome>) -> Series {
    let mut sum: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for map in maps {
        for (key, per) in map {
            for (o, n) in per {
                *sum.entry((key.as_str(), o)).or_default() += n;
            }
        }
    }
    sum.into_iter()
        .map(|((key, o), n)| (vec![label(key_label, key), label("outcome", o)], n))
        .collect()
}
