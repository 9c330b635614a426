//! Tasks: queues, leases, long-poll, and (in `route`/`proxy`) the choice of
//! a worker for an inference request and the forwarding of it.
//!
//! Placement: a task waits in one queue, and each queue lives on one shard:
//! a worker's own queue on the worker's owner shard, a service's or a
//! capability's queue on `hash(key) % shards`. The task id embeds that hash
//! ([`task::shard_of_task`]), so every operation on a task goes straight to
//! its shard. There is no global lock or index.
//!
//! Operations arrive as [`TaskOp`] through `Shard::call` (inline on the
//! owner, or over the mesh) and run synchronously against the shard's
//! [`TaskTable`]; every state change goes through the table's one recording
//! method (see `table.rs`). The task part must not parse HTTP; `proxy`
//! is the one place that speaks HTTP to workers (with `endpoint` parsing
//! their addresses, `resolve` caching DNS, `tls` holding the TLS client
//! settings and `guard` the rules on addresses, paths and headers).
//!
//! Semantics (at-least-once delivery, leases, retries) are in docs/tasks.md.

pub(crate) mod scrape;
pub(crate) mod table;
pub mod task;

use std::time::Duration;

use futures::channel::oneshot;
use serde_json::Value;

use crate::model::truthy;
use crate::model::worker::WorkerRecord;
pub(crate) use table::{
    CompleteError, Completion, EventKind, Filter, TaskCounters, TaskEvent, TaskListing, TaskPage,
};
pub use table::{Outcome, TaskTable};
pub(crate) use task::{Lease, TaskState};
pub use task::{Target, Task};

/// A task operation, run on the shard that owns the queue or task.
#[derive(Debug)]
pub(crate) enum TaskOp {
    /// Queue a task. A worker-targeted task is refused when the worker is
    /// unknown (it runs on the worker's owner shard, so this is exact).
    Submit(Box<Task>),
    /// The queue keys a worker pulls from (runs on its owner shard).
    Keys(String),
    /// Lease up to `max` tasks from `keys`; park `waiter` if none.
    Lease {
        worker_id: String,
        keys: Vec<String>,
        max: usize,
        waiter: Option<oneshot::Sender<()>>,
    },
    Complete {
        task_id: String,
        worker_id: String,
        outcome: Outcome,
    },
    /// Give back undelivered leases `worker_id` holds on these tasks.
    Release {
        worker_id: String,
        task_ids: Vec<String>,
    },
    /// Extend the leases `worker_id` holds on these tasks.
    Extend {
        worker_id: String,
        task_ids: Vec<String>,
    },
    Get(String),
    /// An operator puts a dead-lettered or failed task back in its queue.
    Requeue(String),
    List(Filter),
    /// Up to `max` tasks matching the filter with ids above `after`.
    Page {
        filter: Filter,
        after: Option<String>,
        max: usize,
    },
}

#[derive(Debug)]
pub(crate) enum TaskReply {
    /// Submit: false when the target worker is unknown.
    Submitted(bool),
    Keys(Option<Vec<String>>),
    Leased(Vec<Value>),
    Completed(Result<Completion, CompleteError>),
    /// Extend / Release: how many of the leases were changed.
    Extended(usize),
    Task(Option<Value>),
    /// Requeue: None for an unknown task; else the task after it, or the
    /// state that cannot be requeued.
    Requeued(Option<Result<Value, &'static str>>),
    Listing(Box<TaskListing>),
    Page(Box<TaskPage>),
}

/// The queues a worker takes work from, in priority order: its own, then
/// its services', then its truthy capabilities'.
pub(crate) fn pull_keys(w: &WorkerRecord) -> Vec<String> {
    let mut keys = vec![task::worker_key(&w.worker_id)];
    keys.extend(w.index_keys().into_iter().map(task::service_key));
    // Parsed per pull: the record keeps capabilities as text (memory per
    // worker), and a pull is rare next to heartbeats.
    let caps = w.capability_map();
    keys.extend(
        caps.iter()
            .filter(|(_, v)| truthy(v))
            .map(|(k, _)| task::capability_key(k)),
    );
    keys
}

/// How often a shard looks for expired leases: a small fraction of the
/// lease, so expiry lags the deadline by little, bounded both ways.
pub(crate) fn expiry_interval(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_interval_is_bounded() {
        assert_eq!(
            expiry_interval(Duration::from_millis(1)),
            Duration::from_millis(10)
        );
        assert_eq!(
            expiry_interval(Duration::from_secs(3600)),
            Duration::from_secs(1)
        );
        assert_eq!(
            expiry_interval(Duration::from_millis(800)),
            Duration::from_millis(100)
        );
    }
}
