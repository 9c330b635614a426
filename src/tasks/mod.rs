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

pub mod endpoint;
pub mod guard;
pub mod proxy;
pub mod proxy_scrape;
pub mod resolve;
pub mod route;
pub mod scrape;
pub mod table;
pub mod task;
pub mod tls;

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use serde_json::Value;

use crate::model::truthy;
use crate::runtime;
use crate::shard::registry::WorkerRecord;
use crate::shard::Shard;
pub use table::{
    CompleteError, Completion, EventKind, Filter, Outcome, TaskCounters, TaskEvent, TaskListing,
    TaskTable,
};
pub use task::{Lease, Target, Task, TaskState};

/// A task operation, run on the shard that owns the queue or task.
#[derive(Debug)]
pub enum TaskOp {
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
    /// Extend the leases `worker_id` holds on these tasks.
    Extend {
        worker_id: String,
        task_ids: Vec<String>,
    },
    Get(String),
    List(Filter),
    /// Healthy workers of a service on this shard (for the proxy), and
    /// whether any worker here (healthy or not) declares the service.
    Candidates(String),
    /// Workers removed from the registry: drop the proxy's per-worker
    /// state for them on this shard (attempt series, cooldowns).
    Forget(Vec<String>),
    /// Set (Some) or clear (None) a pin on this shard's replica.
    SetPin {
        key: String,
        workers: Option<Vec<String>>,
    },
}

#[derive(Debug)]
pub enum TaskReply {
    /// Submit: false when the target worker is unknown.
    Submitted(bool),
    Keys(Option<Vec<String>>),
    Leased(Vec<Value>),
    Completed(Result<Completion, CompleteError>),
    Extended(usize),
    Task(Option<Value>),
    Listing(Box<TaskListing>),
    /// Healthy workers, and whether any registered worker declares the service.
    Upstreams(Vec<proxy::Upstream>, bool),
    Done,
}

/// The queues a worker takes work from, in priority order: its own, then
/// its services', then its truthy capabilities'.
pub fn pull_keys(w: &WorkerRecord) -> Vec<String> {
    let mut keys = vec![task::worker_key(&w.worker_id)];
    let mut services: Vec<&str> = w.index_keys().into_iter().collect();
    services.sort_unstable();
    keys.extend(services.into_iter().map(task::service_key));
    let mut caps: Vec<&String> = w
        .capabilities
        .iter()
        .filter(|(_, v)| truthy(v))
        .map(|(k, _)| k)
        .collect();
    caps.sort_unstable();
    keys.extend(caps.into_iter().map(|c| task::capability_key(c)));
    keys
}

/// Runs `op` against this shard's state (called from `Shard::handle`).
pub fn handle(shard: &Shard, op: TaskOp) -> TaskReply {
    let now = Instant::now();
    let lease_for = shard.cfg.task_lease;
    match op {
        TaskOp::Submit(t) => {
            if let Target::Worker(w) = &t.target {
                if shard.registry().get(w).is_none() {
                    return TaskReply::Submitted(false);
                }
            }
            shard.tasks.borrow_mut().submit(*t);
            TaskReply::Submitted(true)
        }
        TaskOp::Keys(id) => TaskReply::Keys(shard.registry().get(&id).map(pull_keys)),
        TaskOp::Lease {
            worker_id,
            keys,
            max,
            waiter,
        } => TaskReply::Leased(
            shard
                .tasks
                .borrow_mut()
                .lease(&worker_id, &keys, max, lease_for, now, waiter),
        ),
        TaskOp::Complete {
            task_id,
            worker_id,
            outcome,
        } => TaskReply::Completed(
            shard
                .tasks
                .borrow_mut()
                .complete(&task_id, &worker_id, outcome, now),
        ),
        TaskOp::Extend {
            worker_id,
            task_ids,
        } => {
            let mut tb = shard.tasks.borrow_mut();
            let n = task_ids
                .iter()
                .filter(|id| tb.extend(id, &worker_id, lease_for, now))
                .count();
            TaskReply::Extended(n)
        }
        TaskOp::Get(id) => {
            let mut tb = shard.tasks.borrow_mut();
            tb.expire(now);
            TaskReply::Task(tb.get(&id).map(table::task_view))
        }
        TaskOp::List(f) => {
            let mut tb = shard.tasks.borrow_mut();
            tb.expire(now);
            TaskReply::Listing(Box::new(tb.list(&f)))
        }
        TaskOp::Candidates(service) => {
            let reg = shard.registry();
            let declared = reg.service_workers(&service).next().is_some();
            let ups = reg
                .service_workers(&service)
                .filter(|w| shard.is_healthy(w, now))
                .map(|w| proxy::Upstream::of(w, &service))
                .collect();
            TaskReply::Upstreams(ups, declared)
        }
        TaskOp::Forget(workers) => {
            shard.proxy.forget(&workers);
            TaskReply::Done
        }
        TaskOp::SetPin { key, workers } => {
            shard.proxy.set_pin(key, workers);
            TaskReply::Done
        }
    }
}

/// How often a shard looks for expired leases: a small fraction of the
/// lease, so expiry lags the deadline by little, bounded both ways.
pub fn expiry_interval(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Expires leases and prunes abandoned waiters until shutdown.
pub fn spawn_housekeeping(shard: Rc<Shard>, shutdown: runtime::Shutdown) {
    let every = expiry_interval(shard.cfg.task_lease);
    runtime::spawn(async move {
        let mut ticks: u32 = 0;
        while !shutdown.is_requested() {
            runtime::sleep(every).await;
            {
                let mut tb = shard.tasks.borrow_mut();
                tb.expire(Instant::now());
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(16) {
                    tb.prune_waiters();
                }
            }
            shard.persist_task_changes();
        }
    });
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
