//! The shard's side of the change stream: its ring, what goes into it, and
//! answering other shards' reads of it.
//!
//! Registry changes arrive as drafts drained after every operation
//! ([`Shard::publish`]), task changes through the task table's sink, pin
//! changes from the proxy operation, and service coverage from the owner
//! shard of each service, which hears every shard's healthy count for it
//! only when that count crosses 0 or 1. A read of the ring is answered at
//! once, or (the hubs' long poll) parked until the next append.
//!
//! Must not: format events for a wire (that is `events::frame`, used by
//! HTTP), or hold a borrow across an await.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use futures::future::select;

use super::msg::{Delta, DeltaQuery, EventsQuery, ListKind, Reply, Request};
use super::{Shard, ShardError};
use crate::events::{Batch, Draft, Kind, Topic};
use crate::model::placement::owner_of;
use crate::runtime;
use crate::tasks::{EventKind, Target, TaskEvent};

/// A delta naming more changed workers than this on one shard answers
/// `reset` instead: re-listing is cheaper than such a delta.
const DELTA_MAX: usize = 10_000;

/// What a shard remembers of the whole pool's coverage of one service:
/// each shard's healthy count, clamped to 2.
pub(super) type Levels = HashMap<String, Vec<u8>, ahash::RandomState>;

impl Shard {
    /// Moves the registry's pending events into the ring and reports the
    /// services whose healthy count crossed 0 or 1 to their owners. Free
    /// when nothing changed (a plain heartbeat).
    pub(super) fn publish(&self) {
        if !self.registry.borrow().has_events() {
            return;
        }
        let (drafts, crossed) = self.registry.borrow_mut().drain_events();
        self.append(drafts);
        if crossed.is_empty() {
            return;
        }
        let mut reported = self.reported.borrow_mut();
        for (service, n) in crossed {
            let level = n.min(2) as u8;
            if reported.get(&service).copied().unwrap_or(0) == level {
                continue;
            }
            reported.insert(service.clone(), level);
            self.report_level(service, level);
        }
    }

    /// Appends events to this shard's ring.
    pub(super) fn append(&self, drafts: impl IntoIterator<Item = Draft>) {
        // `events_published` is the ring's head, read at scrape time.
        let mut ring = self.ring.borrow_mut();
        for d in drafts {
            ring.push(d);
        }
    }

    /// Tells the owner of `service` this shard's level for it (inline when
    /// that is us; otherwise queued for the task that sends them).
    fn report_level(&self, service: String, level: u8) {
        let owner = owner_of(&service, self.count);
        if owner == self.id {
            self.coverage_level(service, self.id, level);
        } else if let Some(tx) = self.levels_out.borrow().as_ref() {
            let _ = tx.unbounded_send((owner, service, level));
        }
    }

    /// After a restart every shard tells the owners what it holds, so the
    /// pool's coverage is known before the first change.
    pub(super) fn report_all_levels(&self) {
        let levels = self.registry.borrow().service_levels();
        let mut reported = self.reported.borrow_mut();
        for (service, n) in levels {
            let level = n.min(2) as u8;
            reported.insert(service.clone(), level);
            self.report_level(service, level);
        }
    }

    /// As the owner of `service`: shard `from` now has `level` healthy
    /// workers of it. Emits `service.coverage` when the pool's count
    /// (clamped to 2) changed.
    pub(super) fn coverage_level(&self, service: String, from: usize, level: u8) {
        let mut levels = self.levels.borrow_mut();
        let per = levels
            .entry(service.clone())
            .or_insert_with(|| vec![0; self.count]);
        let total = |p: &[u8]| p.iter().map(|&l| u32::from(l)).sum::<u32>().min(2);
        let before = total(per);
        if let Some(l) = per.get_mut(from) {
            *l = level;
        }
        let after = total(per);
        if after == 0 {
            levels.remove(&service);
        }
        drop(levels);
        if before != after {
            let data = serde_json::json!({
                "service": service,
                "healthy": after,
                "previous": before,
            });
            let services = Box::new([service.as_str().into()]);
            let d = Draft::new(Kind::ServiceCoverage, &service, None, services, &data);
            self.append([d]);
        }
    }

    /// This shard's ring read at once: the events after `q.after`, or
    /// just the head when `after` is None.
    pub(super) fn events_now(&self, q: &EventsQuery) -> Batch {
        let ring = self.ring.borrow();
        match q.after {
            Some(pos) => ring.after(pos, q.max),
            None => Batch {
                head: ring.head(),
                oldest: ring.oldest(),
                ..Batch::default()
            },
        }
    }

    /// Reads shard `to`'s ring, waiting up to `q.wait` for an event when
    /// there is none yet after `q.after`.
    pub(crate) async fn events_from(&self, to: usize, q: EventsQuery) -> Result<Batch, ShardError> {
        if to != self.id {
            return Ok(*self.call(to, Request::Events(q)).await?.events()?);
        }
        Ok(self.events_waiting(q).await)
    }

    /// This shard's ring read as `q` asks: at once, or (with `wait`, when
    /// nothing follows `q.after` yet) at the next append or when the wait
    /// is over, whichever comes first.
    async fn events_waiting(&self, q: EventsQuery) -> Batch {
        let b = self.events_now(&q);
        let Some(wait) = wait_for(&q, &b) else {
            return b;
        };
        let rx = self.ring.borrow_mut().wait();
        let sleep = std::pin::pin!(runtime::sleep(wait));
        let _ = select(rx, sleep).await;
        self.events_now(&q)
    }

    /// A long poll from another shard's hub: answered as soon as there is
    /// an event after its position, or when its wait is over.
    pub(super) fn serve_events_remote(
        self: &Rc<Self>,
        q: EventsQuery,
        reply: futures::channel::oneshot::Sender<Reply>,
    ) {
        let b = self.events_now(&q);
        if wait_for(&q, &b).is_none() {
            let _ = reply.send(Reply::Events(Box::new(b)));
            return;
        }
        let shard = self.clone();
        // Not awaited here: the mesh loop must not wait for the long poll.
        runtime::spawn(async move {
            let b = shard.events_waiting(q).await;
            let _ = reply.send(Reply::Events(Box::new(b)));
        });
    }

    /// Every shard's ring head: the cursor of "now".
    pub(crate) async fn heads(&self) -> Result<Vec<u64>, ShardError> {
        let q = EventsQuery {
            after: None,
            max: 0,
            wait: None,
        };
        self.map_reduce(
            || Request::Events(q),
            Reply::events,
            Vec::with_capacity(self.count),
            |mut acc, b| {
                acc.push(b.head);
                acc
            },
        )
        .await
    }

    /// This shard's part of a list delta: the workers named by worker
    /// events after `q.after`, each either in the list now (its JSON) or
    /// not (its id).
    pub(super) fn delta(&self, q: &DeltaQuery) -> Delta {
        let ring = self.ring.borrow();
        let head = ring.head();
        let reset = Delta {
            head,
            reset: true,
            ..Delta::default()
        };
        let Some(events) = ring.of_topic_after(q.after, Topic::Worker) else {
            return reset;
        };
        let mut keys: HashSet<&str, ahash::RandomState> = HashSet::default();
        for e in events {
            keys.insert(&e.key);
            if keys.len() > DELTA_MAX {
                return reset;
            }
        }
        let now = Instant::now();
        let admin = q.kind == ListKind::Admin;
        let reg = self.registry.borrow();
        let mut d = Delta {
            head,
            ..Delta::default()
        };
        for k in keys {
            match reg.get(k) {
                Some(w)
                    if (admin || self.is_healthy(w, now))
                        && q.filter.matches(w, now, &self.live) =>
                {
                    if d.upserted > 0 {
                        d.upserts.push(b',');
                    }
                    w.write_json(
                        &mut d.upserts,
                        now,
                        &self.live,
                        admin,
                        &self.coordinator_url,
                    );
                    d.upserted += 1;
                }
                _ => d.removed.push(k.to_string()),
            }
        }
        d
    }
}

/// How long a read answered with `b` waits for the next append: only a
/// long poll (`wait`) from a position, with nothing after it yet.
fn wait_for(q: &EventsQuery, b: &Batch) -> Option<std::time::Duration> {
    q.wait
        .filter(|_| q.after.is_some() && b.events.is_empty() && !b.gone)
}

/// The event of a task change, if it is one subscribers see (lease
/// extensions and retention evictions are not).
pub(super) fn task_event(ev: &TaskEvent<'_>) -> Option<Draft> {
    let (kind, reason) = match ev.kind {
        EventKind::Submitted => (Kind::TaskSubmitted, None),
        EventKind::Leased => (Kind::TaskLeased, None),
        EventKind::Completed => (Kind::TaskCompleted, None),
        EventKind::Failed => (Kind::TaskFailed, None),
        EventKind::FailedRetry => (Kind::TaskRequeued, Some("failed")),
        EventKind::Expired => (Kind::TaskRequeued, Some("lease expired")),
        EventKind::Released => (Kind::TaskRequeued, Some("released")),
        EventKind::Dead => (Kind::TaskDead, None),
        EventKind::Revived => (Kind::TaskRequeued, Some("requeued by an operator")),
        EventKind::Extended | EventKind::Evicted => return None,
    };
    let t = ev.task;
    let holder = t.lease.as_ref().map(|l| l.worker_id.as_str());
    let worker = holder.or(t.last_worker.as_deref());
    let (service, target) = match &t.target {
        Target::Service(s) => (Some(s.as_str()), serde_json::json!({ "service": s })),
        Target::Worker(w) => (None, serde_json::json!({ "worker_id": w })),
        Target::Capability(c) => (None, serde_json::json!({ "capability": c })),
    };
    let worker = worker.or(match &t.target {
        Target::Worker(w) => Some(w.as_str()),
        _ => None,
    });
    let data = serde_json::json!({
        "task_type": t.task_type,
        "state": t.state.as_str(),
        "target": target,
        "worker_id": worker,
        "attempts": t.attempts,
        "max_attempts": t.max_attempts,
        "reason": reason,
    });
    let services = service.map(|s| s.into()).into_iter().collect();
    Some(Draft::new(kind, &t.id, worker, services, &data))
}

/// The event of a pin change (`workers` None: removed).
pub(super) fn pin_event(key: &str, workers: Option<&[String]>) -> Draft {
    let (kind, data) = match workers {
        Some(w) if !w.is_empty() => (Kind::PinSet, serde_json::json!({ "workers": w })),
        _ => (Kind::PinRemoved, serde_json::json!({})),
    };
    Draft::new(kind, key, None, Box::new([key.into()]), &data)
}
