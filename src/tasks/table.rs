//! One shard's task table: its queues, leases, finished tasks and the
//! long-poll waiters of its queues.
//!
//! Plain data, no IO and no async: the shard wraps it in a `RefCell` and
//! calls it synchronously, so every operation is atomic with respect to the
//! other tasks of the shard. In particular "nothing to lease, so register a
//! waiter" is one step ([`TaskTable::lease`]), which is what makes long-poll
//! wake-ups impossible to miss.
//!
//! Every state change ends in [`TaskTable::record`], the one place that
//! counts it and hands a [`TaskEvent`] to the sink (with a database, the
//! shard's sink turns each event into a store operation).

use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use futures::channel::oneshot;
use serde_json::{json, Value};

use super::task::{Lease, Target, Task, TaskState};
use crate::model::time::iso8601;

type Hasher = ahash::RandomState;

/// Why a task changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Submitted,
    Leased,
    /// Lease deadline pushed out (heartbeat progress).
    Extended,
    Completed,
    /// Worker reported failure; requeued when attempts remain.
    FailedRetry,
    Failed,
    /// Lease expired; requeued.
    Expired,
    /// Lease expired on the last attempt.
    Dead,
    /// A lease handed back undelivered (a pull over several shards leased
    /// more than it asked for); requeued at the front, attempt not counted.
    Released,
    /// A finished task dropped from memory (retention limit).
    Evicted,
    /// An operator requeued a dead-lettered or failed task.
    Revived,
}

/// A state change, as the persistence hook sees it.
#[derive(Debug)]
pub(crate) struct TaskEvent<'a> {
    pub kind: EventKind,
    pub task: &'a Task,
}

/// Receives every event; must not block (the store's writer thread is fed
/// through a non-blocking channel).
pub(crate) type EventSink = Box<dyn FnMut(&TaskEvent<'_>)>;

/// What a worker reports.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(Value),
    Failed { error: Value, retry: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    #[error("Task not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
}

/// The answer to a completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub(crate) state: TaskState,
    /// The same worker had already reported this outcome.
    pub duplicate: bool,
}

/// Per-shard counters, merged on scrape.
#[derive(Debug, Clone, Default)]
pub struct TaskCounters {
    pub submitted: u64,
    pub leased: u64,
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub lease_expiries: u64,
    pub dead_lettered: u64,
    pub extended: u64,
    /// Tasks in each state now (index = `TaskState::index`).
    pub by_state: [u64; 5],
    pub waiters: u64,
}

/// Admin listing filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub state: Option<TaskState>,
    pub service: Option<String>,
    pub worker: Option<String>,
    /// The task's `type`.
    pub task_type: Option<String>,
    pub limit: usize,
}

impl Filter {
    fn matches(&self, t: &Task) -> bool {
        self.state.is_none_or(|s| t.state == s)
            && self.task_type.as_deref().is_none_or(|x| t.task_type == x)
            && self
                .service
                .as_deref()
                .is_none_or(|s| matches!(&t.target, Target::Service(x) if x == s))
            && self.worker.as_deref().is_none_or(|w| {
                matches!(&t.target, Target::Worker(x) if x == w)
                    || t.last_worker.as_deref() == Some(w)
            })
    }
}

/// One shard's page of an admin listing in task id order.
#[derive(Debug, Default)]
pub(crate) struct TaskPage {
    pub tasks: Vec<Value>,
    /// Id of the last task in `tasks`.
    pub last: Option<String>,
    /// Another match follows `last` on this shard.
    pub more: bool,
}

/// One shard's part of an admin listing.
#[derive(Debug, Default)]
pub(crate) struct TaskListing {
    pub tasks: Vec<Value>,
    /// Matching tasks, before the limit.
    pub matched: u64,
    pub counts: [u64; 5],
    /// Queue key -> queued tasks, non-empty queues only.
    pub queues: Vec<(String, u64)>,
}

impl TaskListing {
    /// Adds another shard's part (unsorted, unlimited: the caller sorts
    /// and cuts the merged whole).
    pub(crate) fn merge(mut self, o: TaskListing) -> Self {
        self.tasks.extend(o.tasks);
        self.matched += o.matched;
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.queues.extend(o.queues);
        self
    }
}

pub struct TaskTable {
    tasks: HashMap<String, Task, Hasher>,
    queues: HashMap<String, VecDeque<String>, Hasher>,
    /// (deadline, task id) of every live lease.
    leases: BTreeSet<(Instant, String)>,
    /// Finished tasks, oldest first, for the retention limit.
    finished: VecDeque<String>,
    retention: usize,
    /// Parked long-polls by id; `by_key` lists the ids waiting on each
    /// queue. An id in `by_key` whose waiter is gone is skipped and pruned.
    waiters: HashMap<u64, oneshot::Sender<()>, Hasher>,
    by_key: HashMap<String, Vec<u64>, Hasher>,
    next_waiter: u64,
    counters: TaskCounters,
    sink: Option<EventSink>,
}

impl TaskTable {
    /// `retention`: finished tasks kept for `GET /api/tasks/{id}`.
    pub fn new(retention: usize) -> Self {
        Self {
            tasks: HashMap::default(),
            queues: HashMap::default(),
            leases: BTreeSet::new(),
            finished: VecDeque::new(),
            retention: retention.max(1),
            waiters: HashMap::default(),
            by_key: HashMap::default(),
            next_waiter: 0,
            counters: TaskCounters::default(),
            sink: None,
        }
    }

    /// Installs the hook that sees every state change.
    pub(crate) fn set_sink(&mut self, sink: EventSink) {
        self.sink = Some(sink);
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    pub(crate) fn counters(&self) -> TaskCounters {
        let mut c = self.counters.clone();
        c.waiters = self.waiters.values().filter(|w| !w.is_canceled()).count() as u64;
        c
    }

    /// The one place a state change is accounted for and published.
    fn record(&mut self, kind: EventKind, id: &str, from: Option<TaskState>) {
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let c = &mut self.counters;
        if let Some(f) = from {
            c.by_state[f.index()] = c.by_state[f.index()].saturating_sub(1);
        }
        if kind != EventKind::Evicted {
            c.by_state[task.state.index()] += 1;
        }
        match kind {
            EventKind::Submitted => c.submitted += 1,
            EventKind::Leased => c.leased += 1,
            EventKind::Extended => c.extended += 1,
            EventKind::Completed => c.completed += 1,
            EventKind::FailedRetry => c.retried += 1,
            EventKind::Failed => c.failed += 1,
            EventKind::Expired => c.lease_expiries += 1,
            EventKind::Dead => {
                c.lease_expiries += 1;
                c.dead_lettered += 1;
            }
            EventKind::Released | EventKind::Evicted | EventKind::Revived => {}
        }
        if let Some(sink) = self.sink.as_mut() {
            sink(&TaskEvent { kind, task });
        }
        if task.state.is_terminal() && kind != EventKind::Evicted {
            self.finished.push_back(id.to_string());
            self.evict();
        }
    }

    fn evict(&mut self) {
        while self.finished.len() > self.retention {
            let Some(old) = self.finished.pop_front() else {
                break;
            };
            // A revived task leaves this list ([`TaskTable::requeue`]), so
            // an id is here once.
            if self.tasks.get(&old).is_some_and(|t| t.state.is_terminal()) {
                let from = self.tasks.get(&old).map(|t| t.state);
                self.record(EventKind::Evicted, &old, from);
                self.tasks.remove(&old);
            }
        }
    }

    /// Queues a new task and wakes the waiters of its queue.
    pub fn submit(&mut self, task: Task) {
        let id = task.id.clone();
        let key = task.target.queue_key();
        self.tasks.insert(id.clone(), task);
        self.enqueue(key, &id, false, EventKind::Submitted, None);
    }

    /// Puts `id` (already in `tasks`, state set) at the back of queue
    /// `key`, or at the front when it has waited longest, publishes the
    /// change and wakes the queue's waiters.
    fn enqueue(
        &mut self,
        key: String,
        id: &str,
        front: bool,
        kind: EventKind,
        from: Option<TaskState>,
    ) {
        let q = self.queues.entry(key.clone()).or_default();
        if front {
            q.push_front(id.to_string());
        } else {
            q.push_back(id.to_string());
        }
        self.record(kind, id, from);
        self.wake(&key);
    }

    /// Puts back the tasks recovered from the database, in the order they
    /// were first stored (submission order, so each queue keeps its order).
    /// Leases that ran out while the process was down are then expired like
    /// any other (requeued, or dead-lettered on the last attempt), and the
    /// retention limit applies; both publish their events as usual. Returns
    /// how many leases were expired.
    pub(crate) fn restore(&mut self, tasks: Vec<Task>, now: Instant) -> usize {
        let mut finished = Vec::new();
        for task in tasks {
            let id = task.id.clone();
            match task.state {
                TaskState::Queued => self
                    .queues
                    .entry(task.target.queue_key())
                    .or_default()
                    .push_back(id.clone()),
                TaskState::Leased => {
                    if let Some(l) = &task.lease {
                        self.leases.insert((l.deadline, id.clone()));
                    }
                }
                _ => finished.push((task.updated_at, id.clone())),
            }
            self.counters.by_state[task.state.index()] += 1;
            self.tasks.insert(id, task);
        }
        // Oldest finished first, so the retention limit drops those.
        finished.sort();
        self.finished.extend(finished.into_iter().map(|(_, id)| id));
        let before = self.counters.lease_expiries;
        self.expire(now);
        self.evict();
        (self.counters.lease_expiries - before) as usize
    }

    /// Drops, without events, every task whose queue key `keep` refuses
    /// (cluster mode: its queue moved to another node, which reads it from
    /// etcd); returns how many. Waiters on dropped queues are woken, so a
    /// long-poll looks again where the queue is now.
    pub(crate) fn hand_over(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        let gone: Vec<String> = self
            .tasks
            .values()
            .filter(|t| !keep(&t.target.queue_key()))
            .map(|t| t.id.clone())
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let dropped: std::collections::HashSet<&str> = gone.iter().map(String::as_str).collect();
        let mut keys = Vec::new();
        for id in &gone {
            if let Some(t) = self.tasks.remove(id) {
                self.counters.by_state[t.state.index()] =
                    self.counters.by_state[t.state.index()].saturating_sub(1);
                keys.push(t.target.queue_key());
            }
        }
        self.queues.retain(|_, q| {
            q.retain(|id| !dropped.contains(id.as_str()));
            !q.is_empty()
        });
        self.leases.retain(|(_, id)| !dropped.contains(id.as_str()));
        self.finished.retain(|id| !dropped.contains(id.as_str()));
        keys.sort();
        keys.dedup();
        for k in keys {
            self.wake(&k);
        }
        gone.len()
    }

    /// Fires every waiter parked on `key` (all of them: a woken poller may
    /// find the task taken, or may already be answering with tasks from
    /// another shard, so waking just one could strand the task).
    fn wake(&mut self, key: &str) {
        if let Some(ids) = self.by_key.remove(key) {
            for id in ids {
                if let Some(w) = self.waiters.remove(&id) {
                    let _ = w.send(());
                }
            }
        }
    }

    /// Drops waiters whose long-poll went away (client disconnected or
    /// answered from another shard) and the index entries of gone waiters.
    pub(crate) fn prune_waiters(&mut self) {
        self.waiters.retain(|_, w| !w.is_canceled());
        let live = &self.waiters;
        self.by_key.retain(|_, ids| {
            ids.retain(|id| live.contains_key(id));
            !ids.is_empty()
        });
    }

    /// Leases up to `max` queued tasks from `keys` (in order) to `worker`.
    /// When none is available and `waiter` is given, it is registered on
    /// every key and fires at the next enqueue on any of them.
    pub fn lease(
        &mut self,
        worker: &str,
        keys: &[String],
        max: usize,
        lease_for: Duration,
        now: Instant,
        waiter: Option<oneshot::Sender<()>>,
    ) -> Vec<Value> {
        self.expire(now);
        let mut out = Vec::new();
        let wall = SystemTime::now();
        for key in keys {
            while out.len() < max {
                let Some(id) = self.queues.get_mut(key).and_then(VecDeque::pop_front) else {
                    break;
                };
                let Some(t) = self.tasks.get_mut(&id) else {
                    continue;
                };
                if t.state != TaskState::Queued {
                    continue;
                }
                let deadline = now + lease_for;
                t.state = TaskState::Leased;
                t.attempts += 1;
                t.lease = Some(Lease {
                    worker_id: worker.to_string(),
                    deadline,
                    deadline_wall: wall + lease_for,
                });
                t.last_worker = Some(worker.to_string());
                t.updated_at = wall;
                out.push(delivery_view(t, lease_for));
                self.leases.insert((deadline, id.clone()));
                self.record(EventKind::Leased, &id, Some(TaskState::Queued));
            }
            if self.queues.get(key).is_some_and(VecDeque::is_empty) {
                self.queues.remove(key);
            }
        }
        if out.is_empty() {
            if let Some(w) = waiter {
                let id = self.next_waiter;
                self.next_waiter += 1;
                self.waiters.insert(id, w);
                for k in keys {
                    self.by_key.entry(k.clone()).or_default().push(id);
                }
            }
        }
        out
    }

    /// Pushes out the lease of `id` held by `worker`; false when `worker`
    /// does not hold a live lease on it.
    pub(crate) fn extend(
        &mut self,
        id: &str,
        worker: &str,
        lease_for: Duration,
        now: Instant,
    ) -> bool {
        let Some(t) = self.tasks.get_mut(id) else {
            return false;
        };
        let Some(lease) = t.lease.as_mut() else {
            return false;
        };
        if t.state != TaskState::Leased || lease.worker_id != worker {
            return false;
        }
        let old = lease.deadline;
        lease.deadline = now + lease_for;
        lease.deadline_wall = SystemTime::now() + lease_for;
        let new = lease.deadline;
        t.updated_at = SystemTime::now();
        self.leases.remove(&(old, id.to_string()));
        self.leases.insert((new, id.to_string()));
        self.record(EventKind::Extended, id, Some(TaskState::Leased));
        true
    }

    /// Gives back a lease `worker` holds on `id` that was never delivered:
    /// the task goes back to the front of its queue as if the lease had not
    /// happened (its attempt is not counted). False when `worker` does not
    /// hold a lease on it.
    pub(crate) fn release(&mut self, id: &str, worker: &str) -> bool {
        let Some(t) = self.tasks.get_mut(id) else {
            return false;
        };
        if t.state != TaskState::Leased || t.lease.as_ref().is_none_or(|l| l.worker_id != worker) {
            return false;
        }
        let deadline = t.lease.take().map(|l| l.deadline);
        t.state = TaskState::Queued;
        t.attempts = t.attempts.saturating_sub(1);
        t.updated_at = SystemTime::now();
        let key = t.target.queue_key();
        if let Some(d) = deadline {
            self.leases.remove(&(d, id.to_string()));
        }
        self.enqueue(key, id, true, EventKind::Released, Some(TaskState::Leased));
        true
    }

    /// An operator's requeue of a dead-lettered or failed task: back at
    /// the end of its queue with no attempts used, no result or error, and
    /// no last worker (a late answer of the old lease is not taken).
    /// `None` for an unknown task, `Some(Err(state))` for a task in any
    /// other state (queued, leased and completed tasks are left alone),
    /// else the task as it is now.
    pub(crate) fn requeue(&mut self, id: &str) -> Option<Result<&Task, TaskState>> {
        let t = self.tasks.get_mut(id)?;
        if !matches!(t.state, TaskState::Dead | TaskState::Failed) {
            return Some(Err(t.state));
        }
        let from = t.state;
        t.state = TaskState::Queued;
        t.attempts = 0;
        t.lease = None;
        t.last_worker = None;
        t.result = None;
        t.error = None;
        t.finished_by = None;
        t.updated_at = SystemTime::now();
        let key = t.target.queue_key();
        // O(retention), for a rare operator action.
        self.finished.retain(|f| f != id);
        self.enqueue(key, id, false, EventKind::Revived, Some(from));
        self.tasks.get(id).map(Ok)
    }

    /// Requeues (or dead-letters) every task whose lease ended by `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((deadline, id)) = self.leases.first().cloned() {
            if deadline > now {
                break;
            }
            self.leases.pop_first();
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            if t.state != TaskState::Leased
                || t.lease.as_ref().map(|l| l.deadline) != Some(deadline)
            {
                continue;
            }
            t.lease = None;
            t.updated_at = SystemTime::now();
            if t.attempts >= t.max_attempts {
                t.state = TaskState::Dead;
                t.error = Some(Value::from(format!(
                    "lease expired on each of {} attempt(s)",
                    t.attempts
                )));
                self.record(EventKind::Dead, &id, Some(TaskState::Leased));
            } else {
                t.state = TaskState::Queued;
                let key = t.target.queue_key();
                // Front of the queue: it has waited longest.
                let from = Some(TaskState::Leased);
                self.enqueue(key, &id, true, EventKind::Expired, from);
            }
        }
    }

    /// A worker's report on a task. Rules (docs/tasks.md):
    /// - the current lease holder's report is applied;
    /// - after its lease expired, the last holder's report is still applied
    ///   as long as no other worker has leased the task since;
    /// - a repeat of the report that finished the task, from the same
    ///   worker, is answered again (idempotent) and changes nothing;
    /// - anything else (the task is leased to, or was finished by, another
    ///   worker) is a conflict.
    pub fn complete(
        &mut self,
        id: &str,
        worker: &str,
        outcome: Outcome,
        now: Instant,
    ) -> Result<Completion, CompleteError> {
        self.expire(now);
        let Some(t) = self.tasks.get_mut(id) else {
            return Err(CompleteError::NotFound);
        };
        let from = t.state;
        match from {
            TaskState::Completed | TaskState::Failed => {
                let same_outcome = matches!(
                    (&outcome, from),
                    (Outcome::Done(_), TaskState::Completed)
                        | (Outcome::Failed { .. }, TaskState::Failed)
                );
                if t.finished_by.as_deref() == Some(worker) && same_outcome {
                    return Ok(Completion {
                        state: from,
                        duplicate: true,
                    });
                }
                return Err(CompleteError::Conflict(format!(
                    "Task already {} by another report",
                    from.as_str()
                )));
            }
            TaskState::Leased => {
                let holder = t.lease.as_ref().map(|l| l.worker_id.as_str());
                if holder != Some(worker) {
                    return Err(CompleteError::Conflict(
                        "Task is leased to another worker (this worker's lease expired)".into(),
                    ));
                }
            }
            TaskState::Queued | TaskState::Dead => {
                if t.last_worker.as_deref() != Some(worker) {
                    return Err(CompleteError::Conflict(
                        "Task is not leased to this worker".into(),
                    ));
                }
            }
        }
        // Applying: take the task out of wherever it is waiting.
        if let Some(l) = t.lease.take() {
            self.leases.remove(&(l.deadline, id.to_string()));
        }
        if from == TaskState::Queued {
            let key = t.target.queue_key();
            if let Some(q) = self.queues.get_mut(&key) {
                q.retain(|x| x != id);
            }
        }
        let t = self.tasks.get_mut(id).expect("present above");
        t.updated_at = SystemTime::now();
        let (kind, state) = match outcome {
            Outcome::Done(result) => {
                t.result = Some(result);
                (EventKind::Completed, TaskState::Completed)
            }
            Outcome::Failed { error, retry } => {
                t.error = Some(error);
                if retry && t.attempts < t.max_attempts {
                    t.state = TaskState::Queued;
                    let key = t.target.queue_key();
                    self.enqueue(key, id, false, EventKind::FailedRetry, Some(from));
                    return Ok(Completion {
                        state: TaskState::Queued,
                        duplicate: false,
                    });
                }
                (EventKind::Failed, TaskState::Failed)
            }
        };
        t.state = state;
        t.finished_by = Some(worker.to_string());
        self.record(kind, id, Some(from));
        Ok(Completion {
            state,
            duplicate: false,
        })
    }

    /// Tasks matching `f` (newest first, up to `f.limit`) plus counts.
    pub(crate) fn list(&self, f: &Filter) -> TaskListing {
        let mut out = TaskListing {
            counts: self.counters.by_state,
            ..Default::default()
        };
        let mut hits: Vec<&Task> = self.tasks.values().filter(|t| f.matches(t)).collect();
        out.matched = hits.len() as u64;
        if f.limit == 0 {
            hits.clear();
        }
        hits.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        out.tasks = hits.into_iter().take(f.limit).map(task_view).collect();
        out.queues = self.queue_depths();
        out
    }

    /// Up to `max` tasks matching `f` with ids above `after`, in id order.
    ///
    /// The table is not kept in id order (its lookups are by hash), so
    /// this is one pass keeping the `max + 1` smallest ids in a bounded
    /// heap: O(tasks * log max), about what [`TaskTable::list`] costs, and
    /// the table is bounded by the retention limit plus what is queued.
    pub(crate) fn page(&self, f: &Filter, after: Option<&str>, max: usize) -> TaskPage {
        let mut heap: BinaryHeap<&str> = BinaryHeap::with_capacity(max + 2);
        for t in self.tasks.values() {
            let id = t.id.as_str();
            if after.is_some_and(|a| id <= a) || !f.matches(t) {
                continue;
            }
            if heap.len() > max && heap.peek().is_some_and(|top| id >= *top) {
                continue;
            }
            heap.push(id);
            if heap.len() > max + 1 {
                heap.pop();
            }
        }
        let more = heap.len() > max;
        let mut ids = heap.into_sorted_vec();
        ids.truncate(max);
        TaskPage {
            last: ids.last().map(|id| id.to_string()),
            tasks: ids
                .into_iter()
                .filter_map(|id| self.tasks.get(id))
                .map(task_view)
                .collect(),
            more,
        }
    }

    /// Queued tasks per queue key (for metrics).
    pub(crate) fn queue_depths(&self) -> Vec<(String, u64)> {
        self.queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| (k.clone(), q.len() as u64))
            .collect()
    }
}

fn wall(t: SystemTime) -> String {
    iso8601(t)
}

/// What a worker receives from `GET /api/worker/tasks`. Carries the
/// broadcast-era names (`job_type`, `job_data`) next to the new ones so
/// agents written against either find their fields.
pub(crate) fn delivery_view(t: &Task, lease_for: Duration) -> Value {
    json!({
        "task_id": t.id,
        "type": t.task_type,
        "task_type": t.task_type,
        "job_type": t.task_type,
        "payload": t.payload,
        "job_data": t.payload,
        "attempt": t.attempts,
        "max_attempts": t.max_attempts,
        "lease_seconds": lease_for.as_secs_f64(),
        "lease_expires_at": t.lease.as_ref().map(|l| wall(l.deadline_wall)),
        "created_at": wall(t.created_at),
    })
}

/// The full record (`GET /api/tasks/{id}`, admin).
pub(crate) fn task_view(t: &Task) -> Value {
    json!({
        "task_id": t.id,
        "type": t.task_type,
        "payload": t.payload,
        "target": {"kind": t.target.kind(), "name": t.target.name()},
        "state": t.state.as_str(),
        "attempts": t.attempts,
        "max_attempts": t.max_attempts,
        "worker_id": t.lease.as_ref().map(|l| l.worker_id.as_str()).or(t.last_worker.as_deref()),
        "lease_expires_at": t.lease.as_ref().map(|l| wall(l.deadline_wall)),
        "result": t.result,
        "error": t.error,
        "finished_by": t.finished_by,
        "created_at": wall(t.created_at),
        "updated_at": wall(t.updated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TaskTable {
        TaskTable::new(100)
    }

    fn submit(tb: &mut TaskTable, id: &str, target: Target, max: u32) {
        tb.submit(Task::new(id.into(), "t".into(), Value::Null, target, max));
    }

    fn keys(w: &str) -> Vec<String> {
        vec![format!("worker:{w}"), "service:s".to_string()]
    }

    const L: Duration = Duration::from_secs(10);

    #[test]
    fn pages_walk_ids_in_order_with_the_filter() {
        let mut tb = table();
        for (i, id) in ["e", "a", "d", "b", "c", "f"].iter().enumerate() {
            let target = if i % 2 == 0 {
                Target::Service("s".into())
            } else {
                Target::Worker("w".into())
            };
            submit(&mut tb, id, target, 1);
        }
        let f = Filter::default();
        let ids = |p: &TaskPage| -> Vec<String> {
            p.tasks
                .iter()
                .map(|t| t["task_id"].as_str().unwrap().to_string())
                .collect()
        };
        let p = tb.page(&f, None, 4);
        assert_eq!(
            (ids(&p), p.more),
            (
                vec!["a", "b", "c", "d"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                true
            )
        );
        assert_eq!(p.last.as_deref(), Some("d"));
        let p = tb.page(&f, Some("d"), 4);
        assert_eq!(
            (ids(&p), p.more),
            (vec!["e".to_string(), "f".to_string()], false)
        );
        // Exactly `max` left: no more after them.
        let p = tb.page(&f, Some("b"), 4);
        assert_eq!((ids(&p).len(), p.more), (4, false));
        let p = tb.page(&f, Some("f"), 4);
        assert!(p.tasks.is_empty() && p.last.is_none() && !p.more);
        // A probe for whether anything follows.
        assert!(tb.page(&f, Some("c"), 0).more);
        let svc = Filter {
            service: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(
            ids(&tb.page(&svc, None, 10)),
            ["c", "d", "e"].map(String::from)
        );
        let typed = Filter {
            task_type: Some("other".into()),
            ..Default::default()
        };
        assert!(tb.page(&typed, None, 10).tasks.is_empty());
        let worker = Filter {
            worker: Some("w".into()),
            ..Default::default()
        };
        assert_eq!(
            ids(&tb.page(&worker, Some("a"), 10)),
            ["b", "f"].map(String::from)
        );
    }

    #[test]
    fn lease_complete_and_idempotent_repeat() {
        let mut tb = table();
        let now = Instant::now();
        submit(&mut tb, "a", Target::Service("s".into()), 3);
        submit(&mut tb, "b", Target::Worker("w1".into()), 3);
        let got = tb.lease("w1", &keys("w1"), 10, L, now, None);
        // Own queue first, then the service queue.
        let ids: Vec<&str> = got.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(tb.counters().by_state[TaskState::Leased.index()], 2);
        let ok = tb
            .complete("a", "w1", Outcome::Done(json!(1)), now)
            .unwrap();
        assert_eq!(
            ok,
            Completion {
                state: TaskState::Completed,
                duplicate: false
            }
        );
        let again = tb
            .complete("a", "w1", Outcome::Done(json!(1)), now)
            .unwrap();
        assert!(again.duplicate);
        assert!(matches!(
            tb.complete("a", "w2", Outcome::Done(json!(1)), now),
            Err(CompleteError::Conflict(_))
        ));
        assert_eq!(
            tb.complete("zz", "w1", Outcome::Done(json!(1)), now),
            Err(CompleteError::NotFound)
        );
        assert_eq!(tb.get("a").unwrap().result, Some(json!(1)));
        let c = tb.counters();
        assert_eq!(c.by_state[TaskState::Completed.index()], 1);
        assert_eq!(c.by_state[TaskState::Leased.index()], 1);
        assert_eq!(c.completed, 1);
    }

    #[test]
    fn a_released_lease_goes_back_to_the_front_uncounted() {
        let mut tb = table();
        let now = Instant::now();
        submit(&mut tb, "a", Target::Service("s".into()), 1);
        submit(&mut tb, "b", Target::Service("s".into()), 1);
        assert_eq!(tb.lease("w1", &keys("w1"), 1, L, now, None).len(), 1);
        // Only the holder may give it back, once.
        assert!(!tb.release("a", "w2"));
        assert!(tb.release("a", "w1"));
        assert!(!tb.release("a", "w1"));
        let t = tb.get("a").unwrap();
        assert_eq!(
            (t.state, t.attempts, t.lease.is_none()),
            (TaskState::Queued, 0, true)
        );
        assert_eq!(tb.counters().by_state[TaskState::Leased.index()], 0);
        // Ahead of `b` again, and its one attempt is still available: the
        // lease deadline it had no longer expires it.
        let got = tb.lease("w2", &keys("w2"), 1, L, now, None);
        assert_eq!(got[0]["task_id"], "a");
        assert_eq!(got[0]["attempt"], 1);
        tb.expire(now + L / 2);
        assert_eq!(tb.get("a").unwrap().state, TaskState::Leased);
    }

    #[test]
    fn expiry_requeues_then_dead_letters() {
        let mut tb = table();
        let t0 = Instant::now();
        submit(&mut tb, "a", Target::Service("s".into()), 2);
        assert_eq!(tb.lease("w1", &keys("w1"), 1, L, t0, None).len(), 1);
        tb.expire(t0 + L);
        assert_eq!(tb.get("a").unwrap().state, TaskState::Queued);
        // The old holder may still finish it while nobody else has it ...
        // ... but once re-leased elsewhere, it may not.
        assert_eq!(tb.lease("w2", &keys("w2"), 1, L, t0 + L, None).len(), 1);
        assert!(matches!(
            tb.complete("a", "w1", Outcome::Done(Value::Null), t0 + L),
            Err(CompleteError::Conflict(_))
        ));
        tb.expire(t0 + L * 2);
        let t = tb.get("a").unwrap();
        assert_eq!((t.state, t.attempts), (TaskState::Dead, 2));
        let c = tb.counters();
        assert_eq!((c.lease_expiries, c.dead_lettered), (2, 1));
        assert!(tb
            .lease("w3", &keys("w3"), 1, L, t0 + L * 3, None)
            .is_empty());
    }

    #[test]
    fn late_completion_from_last_holder_is_accepted_until_releases() {
        let mut tb = table();
        let t0 = Instant::now();
        submit(&mut tb, "a", Target::Service("s".into()), 3);
        tb.lease("w1", &keys("w1"), 1, L, t0, None);
        tb.expire(t0 + L);
        let c = tb
            .complete("a", "w1", Outcome::Done(Value::Null), t0 + L)
            .unwrap();
        assert_eq!(c.state, TaskState::Completed);
        // It left the queue.
        assert!(tb.lease("w2", &keys("w2"), 1, L, t0 + L, None).is_empty());
    }

    #[test]
    fn failure_retries_then_fails() {
        let mut tb = table();
        let now = Instant::now();
        submit(&mut tb, "a", Target::Service("s".into()), 2);
        let fail = || Outcome::Failed {
            error: json!("boom"),
            retry: true,
        };
        tb.lease("w1", &keys("w1"), 1, L, now, None);
        assert_eq!(
            tb.complete("a", "w1", fail(), now).unwrap().state,
            TaskState::Queued
        );
        tb.lease("w1", &keys("w1"), 1, L, now, None);
        assert_eq!(
            tb.complete("a", "w1", fail(), now).unwrap().state,
            TaskState::Failed
        );
        assert!(tb.complete("a", "w1", fail(), now).unwrap().duplicate);
        assert_eq!(tb.get("a").unwrap().error, Some(json!("boom")));
    }

    #[test]
    fn extension_moves_the_deadline() {
        let mut tb = table();
        let t0 = Instant::now();
        submit(&mut tb, "a", Target::Worker("w1".into()), 1);
        tb.lease("w1", &keys("w1"), 1, L, t0, None);
        assert!(!tb.extend("a", "w2", L, t0));
        assert!(tb.extend("a", "w1", L, t0 + L / 2));
        tb.expire(t0 + L);
        assert_eq!(tb.get("a").unwrap().state, TaskState::Leased);
        tb.expire(t0 + L * 2);
        assert_eq!(tb.get("a").unwrap().state, TaskState::Dead);
    }

    #[test]
    fn waiter_fires_on_enqueue_and_dropped_waiters_are_pruned() {
        let mut tb = table();
        let now = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        assert!(tb.lease("w1", &keys("w1"), 1, L, now, Some(tx)).is_empty());
        assert_eq!(tb.counters().waiters, 1);
        assert_eq!(rx.try_recv(), Ok(None));
        submit(&mut tb, "a", Target::Service("s".into()), 1);
        assert_eq!(rx.try_recv(), Ok(Some(())));
        let (tx, rx) = oneshot::channel();
        tb.lease("w1", &keys("w1"), 0, L, now, Some(tx));
        drop(rx);
        assert_eq!(tb.counters().waiters, 0);
        tb.prune_waiters();
        assert!(tb.waiters.is_empty() && tb.by_key.is_empty());
    }

    #[test]
    fn retention_evicts_oldest_finished_and_sink_sees_every_change() {
        let mut tb = TaskTable::new(1);
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let s2 = seen.clone();
        tb.set_sink(Box::new(move |e| {
            s2.borrow_mut().push((e.kind, e.task.id.clone()))
        }));
        let now = Instant::now();
        for id in ["a", "b"] {
            submit(&mut tb, id, Target::Worker("w".into()), 1);
            tb.lease("w", &keys("w"), 1, L, now, None);
            tb.complete(id, "w", Outcome::Done(Value::Null), now)
                .unwrap();
        }
        assert!(tb.get("a").is_none() && tb.get("b").is_some());
        let kinds: Vec<EventKind> = seen.borrow().iter().map(|(k, _)| *k).collect();
        use EventKind::*;
        assert_eq!(
            kinds,
            [Submitted, Leased, Completed, Submitted, Leased, Completed, Evicted]
        );
        assert_eq!(tb.counters().by_state[TaskState::Completed.index()], 1);
    }

    #[test]
    fn restore_rebuilds_queues_leases_and_expires_what_ran_out() {
        let now = Instant::now();
        let mut src = table();
        for id in ["q1", "q2", "live", "gone", "last", "done"] {
            submit(&mut src, id, Target::Service("s".into()), 2);
        }
        src.lease("w1", &keys("w1"), 4, L, now, None); // q1 q2 live gone
        for id in ["q1", "q2"] {
            let retry = Outcome::Failed {
                error: Value::Null,
                retry: true,
            };
            src.complete(id, "w1", retry, now).unwrap();
        }
        src.lease("w1", &keys("w1"), 2, L, now, None); // last done
        src.complete("done", "w1", Outcome::Done(json!(7)), now)
            .unwrap();
        // What recovery would hand back: "gone" and "last" ran out while
        // the process was down; "last" was on its final attempt.
        let mut rows: Vec<Task> = ["q1", "q2", "live", "gone", "last", "done"]
            .iter()
            .map(|id| src.get(id).unwrap().clone())
            .collect();
        for t in rows.iter_mut().filter(|t| t.id == "gone" || t.id == "last") {
            t.lease.as_mut().unwrap().deadline = now;
        }
        rows.iter_mut().find(|t| t.id == "last").unwrap().attempts = 2;
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let s2 = seen.clone();
        let mut tb = table();
        tb.set_sink(Box::new(move |e| {
            s2.borrow_mut().push((e.kind, e.task.id.clone()))
        }));
        assert_eq!(tb.restore(rows, now), 2);
        assert_eq!(
            *seen.borrow(),
            [
                (EventKind::Expired, "gone".to_string()),
                (EventKind::Dead, "last".to_string())
            ]
        );
        let c = tb.counters().by_state;
        assert_eq!(
            (c[0], c[1], c[2], c[4]),
            (3, 1, 1, 1),
            "queued, leased, completed, dead"
        );
        assert_eq!(tb.get("done").unwrap().result, Some(json!(7)));
        // Queue order: the requeued "gone" first (waited longest), then
        // submission order. The live lease is still held by w1.
        let got = tb.lease("w2", &keys("w2"), 10, L, now, None);
        let ids: Vec<&str> = got.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["gone", "q1", "q2"]);
        assert!(tb
            .complete("live", "w1", Outcome::Done(Value::Null), now)
            .is_ok());
    }
}
