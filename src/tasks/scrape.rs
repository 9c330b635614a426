//! The task families of a `/metrics` scrape, from each shard's
//! [`TaskCounters`] and queue depths.
//!
//! This file must not touch a shard or the mesh: it reads the snapshots it
//! is given.

use std::collections::BTreeMap;

use super::{TaskCounters, TaskState};
use crate::metrics::{by_shard, counter, gauge, label, MetricFamily, Series};

/// One shard's part: (shard id, its counters, its non-empty queues as
/// (queue key, queued tasks)).
pub(crate) type TaskShard<'a> = (usize, &'a TaskCounters, &'a [(String, u64)]);

/// `coordinator_tasks`, `coordinator_task_queue_depth`,
/// `coordinator_task_events_total` and `coordinator_task_waiters`.
pub(crate) fn families<'a>(
    shards: impl IntoIterator<Item = TaskShard<'a>> + Clone,
) -> [MetricFamily; 4] {
    let counters = || shards.clone().into_iter().map(|(_, c, _)| c);
    let by_state: Series = TaskState::ALL
        .iter()
        .map(|st| {
            let n = counters().map(|c| c.by_state[st.index()]).sum();
            (vec![label("state", st.as_str())], n)
        })
        .collect();
    // Worker queues are one per worker: summed into one series to keep
    // the label set bounded; service and capability queues are named.
    let mut depth: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, queues) in shards.clone() {
        for (k, n) in queues {
            let key = if k.starts_with("worker:") {
                "workers"
            } else {
                k.as_str()
            };
            *depth.entry(key).or_default() += n;
        }
    }
    let depth: Series = depth
        .into_iter()
        .map(|(k, n)| (vec![label("queue", k)], n))
        .collect();
    type Get = fn(&TaskCounters) -> u64;
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
    let events: Series = events
        .iter()
        .map(|(name, get)| (vec![label("event", *name)], counters().map(get).sum()))
        .collect();
    let waiters = by_shard(shards.into_iter().map(|(i, c, _)| (i, c.waiters)));
    [
        gauge("coordinator_tasks", "Tasks held now, by state.", by_state),
        gauge(
            "coordinator_task_queue_depth",
            "Queued tasks per service/capability queue (all worker queues summed as \"workers\").",
            depth,
        ),
        counter(
            "coordinator_task_events_total",
            "Task state changes by kind (lease_expired includes dead_lettered).",
            events,
        ),
        gauge(
            "coordinator_task_waiters",
            "Long-polls parked on each shard's queues.",
            waiters,
        ),
    ]
}
