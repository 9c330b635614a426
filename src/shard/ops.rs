//! The shard's glue for task and proxy operations: each runs synchronously
//! against this shard's state (task table, registry, proxy replica of the
//! pins), so `Shard::handle` can answer it inline or from the mesh loop.
//!
//! The task table and the proxy know nothing of the shard; the joins
//! between them and the registry (a worker's pull keys, a service's
//! healthy candidates) are made here.

use std::rc::Rc;
use std::time::Instant;

use super::msg::{ProxyOp, ProxyReply};
use super::Shard;
use crate::proxy::Upstream;
use crate::runtime;
use crate::tasks::{expiry_interval, pull_keys, Target, TaskOp, TaskReply, TaskState, TaskTable};

/// Runs a task operation against this shard's table and registry.
pub(super) fn task(shard: &Shard, op: TaskOp) -> TaskReply {
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
        // A drained worker leases nothing new: no queue is its to pull.
        TaskOp::Keys(id) => TaskReply::Keys(shard.registry().get(&id).map(|w| match w.drained {
            true => Vec::new(),
            false => pull_keys(w),
        })),
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
        TaskOp::Release {
            worker_id,
            task_ids,
        } => each(shard, &task_ids, |tb, id| tb.release(id, &worker_id)),
        TaskOp::Extend {
            worker_id,
            task_ids,
        } => each(shard, &task_ids, |tb, id| {
            tb.extend(id, &worker_id, lease_for, now)
        }),
        TaskOp::Get(id) => {
            let mut tb = shard.tasks.borrow_mut();
            tb.expire(now);
            TaskReply::Task(tb.get(&id).map(crate::tasks::table::task_view))
        }
        TaskOp::Requeue(id) => {
            let mut tb = shard.tasks.borrow_mut();
            tb.expire(now);
            TaskReply::Requeued(tb.requeue(&id).map(|r| {
                r.map(crate::tasks::table::task_view)
                    .map_err(TaskState::as_str)
            }))
        }
        TaskOp::List(f) => {
            let mut tb = shard.tasks.borrow_mut();
            tb.expire(now);
            TaskReply::Listing(Box::new(tb.list(&f)))
        }
        TaskOp::Page { filter, after, max } => {
            let mut tb = shard.tasks.borrow_mut();
            tb.expire(now);
            TaskReply::Page(Box::new(tb.page(&filter, after.as_deref(), max)))
        }
    }
}

/// Applies `f` to each task id; the reply counts those it changed.
fn each(
    shard: &Shard,
    ids: &[String],
    mut f: impl FnMut(&mut TaskTable, &str) -> bool,
) -> TaskReply {
    let mut tb = shard.tasks.borrow_mut();
    TaskReply::Extended(ids.iter().filter(|id| f(&mut tb, id)).count())
}

/// Runs a proxy operation against this shard's registry and proxy state.
pub(super) fn proxy(shard: &Shard, op: ProxyOp) -> ProxyReply {
    match op {
        ProxyOp::Candidates(service) => {
            let now = Instant::now();
            let reg = shard.registry();
            let declared = reg.service_workers(&service).next().is_some();
            let ups = reg
                .service_workers(&service)
                .filter(|w| shard.is_healthy(w, now))
                .map(|w| Upstream::of(w, &service))
                .collect();
            ProxyReply::Upstreams(ups, declared)
        }
        ProxyOp::Forget(workers) => {
            shard.proxy.forget(&workers);
            ProxyReply::Done
        }
        ProxyOp::Refresh => {
            shard.proxy.refresh();
            ProxyReply::Done
        }
        ProxyOp::SetPin { key, workers } => {
            // Every shard holds a replica; shard 0 tells subscribers.
            let event = (shard.id == 0).then(|| super::events::pin_event(&key, workers.as_deref()));
            shard.proxy.set_pin(key, workers);
            shard.append(event);
            ProxyReply::Done
        }
    }
}

/// Expires leases and prunes abandoned waiters until shutdown.
pub(crate) fn spawn_housekeeping(shard: Rc<Shard>, shutdown: runtime::Shutdown) {
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
