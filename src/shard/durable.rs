//! Making a shard's mutations durable: which store operations a request
//! causes, handing them to the writer thread in the same synchronous step
//! that changed memory (so the store sees each shard's changes in memory's
//! order), and waiting for the commit before a reply is released.
//!
//! Heartbeats only mark the worker dirty; a timer flushes the last state of
//! every dirty worker in one batch (`flush_heartbeats`). This file must not
//! block: the writer is another thread, reached over a channel.

use std::time::Duration;

use super::msg::{ProxyOp, Reply, Request};
use super::{Shard, ShardError};
use crate::runtime;
use crate::store::{self, Ack, Op};
use crate::tasks::TaskOp;

impl Shard {
    /// Hands the pending task changes to the store without waiting: for
    /// changes no client is waiting on (lease expiry in housekeeping,
    /// recovery). A crash before they commit replays the expiry at the
    /// next start, so nothing is lost by not waiting.
    pub(crate) fn persist_task_changes(&self) {
        if let Some(store) = &self.store {
            store.submit_nowait(std::mem::take(&mut *self.task_ops.borrow_mut()));
        }
    }

    /// Waits until the store has committed a mutation of this shard.
    pub(super) async fn durable(&self, ack: Option<Ack>) -> Result<(), ShardError> {
        let Some(ack) = ack else { return Ok(()) };
        committed(ack, self.cfg.gather_timeout)
            .await
            .map_err(ShardError::Store)
    }

    /// Runs `req` and, with a store, queues the resulting durable changes:
    /// the reply may only be released once the returned ack resolves. The
    /// mutation is applied in memory first and queued in the same
    /// synchronous step, so the store sees each shard's mutations in the
    /// order memory did. Heartbeats only mark the worker dirty; every task
    /// change the request caused (the task table's sink collected them) is
    /// part of the same durable batch, except lease extensions, which are
    /// not waited for (losing one in a crash only ends that lease sooner).
    pub(crate) fn apply(&self, req: Request) -> (Reply, Option<Ack>) {
        let Some(store) = &self.store else {
            return (self.handle(req), None);
        };
        let wait_for_tasks = !matches!(req, Request::Task(TaskOp::Extend { .. }));
        // Decided before `handle` consumes the request.
        let effect = match &req {
            Request::Register(r) | Request::RegisterNew(r) => Durable::Worker(r.worker_id.clone()),
            Request::CompleteTask(id) => Durable::Worker(id.clone()),
            Request::Drain { id, .. } => Durable::Worker(id.clone()),
            Request::Unregister(id) => Durable::Removed(id.clone()),
            Request::Heartbeat(hb) => Durable::Heartbeat(
                (!self.dirty.borrow().contains(hb.worker_id.as_str()))
                    .then(|| hb.worker_id.clone()),
            ),
            // Every shard holds a replica of the pins; shard 0 writes them.
            Request::Proxy(ProxyOp::SetPin { key, workers }) if self.id == 0 => {
                Durable::Pin(store::task::pin_op(key, workers.as_deref()))
            }
            _ => Durable::Nothing,
        };
        let reply = self.handle(req);
        let mut ops = match (effect, &reply) {
            // A generated id that was taken: nothing of ours changed.
            (Durable::Worker(_), Reply::IdTaken(_)) => Vec::new(),
            (Durable::Worker(id), _) => {
                let reg = self.registry.borrow();
                reg.get(&id)
                    .map(store::worker::put_op)
                    .into_iter()
                    .collect()
            }
            (Durable::Removed(id), Reply::Found(true)) => {
                self.dirty.borrow_mut().remove(&id);
                vec![Op::DeleteWorker { id }]
            }
            (Durable::Heartbeat(Some(id)), Reply::Beat(_)) => {
                self.dirty.borrow_mut().insert(id);
                Vec::new()
            }
            (Durable::Pin(op), _) => vec![op],
            _ => Vec::new(),
        };
        if !wait_for_tasks {
            self.persist_task_changes();
        }
        ops.append(&mut self.task_ops.borrow_mut());
        if ops.is_empty() {
            (reply, None)
        } else {
            (reply, Some(store.submit(ops)))
        }
    }

    /// Sends the last heartbeat state of every worker heartbeated since the
    /// previous flush, as one message.
    pub(super) fn flush_heartbeats(&self) -> Option<Ack> {
        let store = self.store.as_ref()?;
        let ids = std::mem::take(&mut *self.dirty.borrow_mut());
        if ids.is_empty() {
            return None;
        }
        let reg = self.registry.borrow();
        let ops = ids
            .iter()
            .filter_map(|id| reg.get(id))
            .map(store::worker::heartbeat_op)
            .collect();
        Some(store.submit(ops))
    }
}

/// What a request changes in the store, besides the task changes the task
/// table reports itself (see [`Shard::apply`]).
enum Durable {
    Nothing,
    /// Write this worker's record as it is after the request.
    Worker(String),
    /// Delete this worker's row if the request removed it.
    Removed(String),
    /// Mark this worker dirty for the next heartbeat flush (`None`: it
    /// already is).
    Heartbeat(Option<String>),
    Pin(Op),
}

/// Waits for `ack` for at most `timeout`; the error says why the change
/// is not durable.
pub(super) async fn committed(ack: Ack, timeout: Duration) -> Result<(), String> {
    match runtime::timeout(timeout, ack.wait()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("database write did not complete in time".into()),
    }
}
