//! The task record, its target and state, and task ids.
//!
//! A task id names the shard its queue lives on without naming a shard
//! count: it embeds the 64-bit placement hash of the queue key
//! (`t-<hash:16 hex>-<random:16 hex>`), and the shard is `hash % shards`,
//! the same rule that places the queue itself. So any shard can route a
//! `GET /api/tasks/{id}` or a completion to the right place with no lookup,
//! and ids stay valid when the process restarts with another shard count
//! (provided queues are re-placed by the same rule).

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::placement::placement_hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TaskState {
    Queued,
    Leased,
    Completed,
    /// The worker reported failure and no attempt is left (or it asked for
    /// no retry).
    Failed,
    /// Dead-lettered: every attempt's lease expired without an answer.
    Dead,
}

impl TaskState {
    pub(crate) const ALL: [TaskState; 5] = [
        TaskState::Queued,
        TaskState::Leased,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Dead,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Dead => "dead",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Dead
        )
    }
}

/// Who may take a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Exactly this worker.
    Worker(String),
    /// Any worker indexed under this service.
    Service(String),
    /// Any worker whose capability of this name is truthy.
    Capability(String),
}

impl Target {
    /// The queue's name, also the key of its waiter list.
    pub(crate) fn queue_key(&self) -> String {
        match self {
            Target::Worker(w) => worker_key(w),
            Target::Service(s) => service_key(s),
            Target::Capability(c) => capability_key(c),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Target::Worker(_) => "worker",
            Target::Service(_) => "service",
            Target::Capability(_) => "capability",
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Target::Worker(s) | Target::Service(s) | Target::Capability(s) => s,
        }
    }
}

pub fn worker_key(id: &str) -> String {
    format!("worker:{id}")
}

pub fn service_key(s: &str) -> String {
    format!("service:{s}")
}

pub(crate) fn capability_key(c: &str) -> String {
    format!("capability:{c}")
}

/// The placement hash of a queue key. A worker's queue hashes like the
/// worker id itself, so it lands on the worker's owner shard.
pub(crate) fn key_hash(queue_key: &str) -> u64 {
    match queue_key.strip_prefix("worker:") {
        Some(id) => placement_hash(id),
        None => placement_hash(queue_key),
    }
}

/// The shard holding queue `queue_key`.
pub fn shard_of_key(queue_key: &str, shards: usize) -> usize {
    (key_hash(queue_key) % shards.max(1) as u64) as usize
}

/// A fresh task id for a task queued under `queue_key`.
pub(crate) fn new_task_id(queue_key: &str) -> String {
    format!("t-{:016x}-{:016x}", key_hash(queue_key), fastrand::u64(..))
}

/// The shard holding task `id`; None when `id` is not one of ours.
pub(crate) fn shard_of_task(id: &str, shards: usize) -> Option<usize> {
    task_hash(id).map(|h| (h % shards.max(1) as u64) as usize)
}

/// The placement hash of task `id`'s queue key (the id embeds it); None
/// when `id` is not one of ours.
pub(crate) fn task_hash(id: &str) -> Option<u64> {
    let rest = id.strip_prefix("t-")?;
    let (hash, tail) = rest.split_once('-')?;
    if hash.len() != 16 || tail.len() != 16 {
        return None;
    }
    let h = u64::from_str_radix(hash, 16).ok()?;
    u64::from_str_radix(tail, 16).ok()?;
    Some(h)
}

#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub worker_id: String,
    pub deadline: Instant,
    pub deadline_wall: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub task_type: String,
    pub payload: Value,
    pub target: Target,
    pub(crate) state: TaskState,
    /// Leases handed out so far (the current one included).
    pub attempts: u32,
    pub max_attempts: u32,
    pub(crate) lease: Option<Lease>,
    /// Holder of the most recent lease, kept after it expires: a late
    /// completion from it is accepted until someone else leases the task.
    pub last_worker: Option<String>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    /// Worker whose completion or failure report ended the task.
    pub finished_by: Option<String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Task {
    pub fn new(
        id: String,
        task_type: String,
        payload: Value,
        target: Target,
        max_attempts: u32,
    ) -> Task {
        let now = SystemTime::now();
        Task {
            id,
            task_type,
            payload,
            target,
            state: TaskState::Queued,
            attempts: 0,
            max_attempts: max_attempts.max(1),
            lease: None,
            last_worker: None,
            result: None,
            error: None,
            finished_by: None,
            created_at: now,
            updated_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_route_to_the_queue_shard() {
        for shards in 1..6 {
            for key in ["worker:w1", "service:llm-inference", "capability:has_gpu"] {
                let id = new_task_id(key);
                assert_eq!(shard_of_task(&id, shards), Some(shard_of_key(key, shards)));
            }
        }
        // A worker's queue sits on the worker's owner shard.
        for shards in 1..6 {
            assert_eq!(
                shard_of_key(&worker_key("abc"), shards),
                crate::model::placement::owner_of("abc", shards)
            );
        }
        assert_eq!(shard_of_task("t1", 2), None);
        assert_eq!(shard_of_task("t-zz-00", 2), None);
        assert_eq!(shard_of_task("t-0000000000000001-xyz", 2), None);
    }

    #[test]
    fn states_parse_and_print() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskState::parse("nope"), None);
        assert!(TaskState::Dead.is_terminal() && !TaskState::Leased.is_terminal());
    }
}
