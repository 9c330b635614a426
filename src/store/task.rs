//! Tasks <-> database rows, and pins.
//!
//! A task row is keyed by task id; its `owner_key` is the task's queue key
//! (`worker:<id>`, `service:<name>`, `capability:<name>`), which places the
//! task back on the shard owning that queue under the current shard count
//! (`tasks::task::shard_of_key`). Deleting a worker does not delete the
//! tasks addressed to it, exactly as in memory: they wait for a worker of
//! that id to come back, or for their retention to run out.
//!
//! A lease deadline is an `Instant` in memory, which means nothing in
//! another process; the row keeps its wall-clock twin, and recovery puts
//! the deadline the same distance from `now`. A lease that ran out while
//! the process was down is therefore already expired at recovery, and the
//! task table requeues (or dead-letters) it at once.

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::worker::{from_us, to_us};
use super::{Op, RecoveredTask};
use crate::tasks::{EventKind, Lease, Target, Task, TaskEvent, TaskState};

/// A task row. Borrowed when written (a task's payload and result can be
/// large, and every state change writes the row), owned when read back.
#[derive(Serialize, Deserialize)]
struct Row<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    task_type: Cow<'a, str>,
    payload: Cow<'a, Value>,
    target_kind: Cow<'a, str>,
    target: Cow<'a, str>,
    state: TaskState,
    attempts: u32,
    max_attempts: u32,
    #[serde(default)]
    lease_worker: Option<Cow<'a, str>>,
    #[serde(default)]
    lease_deadline_us: Option<i64>,
    #[serde(default)]
    last_worker: Option<Cow<'a, str>>,
    #[serde(default)]
    result: Option<Cow<'a, Value>>,
    #[serde(default)]
    error: Option<Cow<'a, Value>>,
    #[serde(default)]
    finished_by: Option<Cow<'a, str>>,
    created_at_us: i64,
    updated_at_us: i64,
}

/// The operation that stores `t` (insert, or update in place).
pub(crate) fn put_op(t: &Task) -> Op {
    let row = Row {
        id: Cow::Borrowed(&t.id),
        task_type: Cow::Borrowed(&t.task_type),
        payload: Cow::Borrowed(&t.payload),
        target_kind: Cow::Borrowed(t.target.kind()),
        target: Cow::Borrowed(t.target.name()),
        state: t.state,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        lease_worker: t
            .lease
            .as_ref()
            .map(|l| Cow::Borrowed(l.worker_id.as_str())),
        lease_deadline_us: t.lease.as_ref().map(|l| to_us(l.deadline_wall)),
        last_worker: t.last_worker.as_deref().map(Cow::Borrowed),
        result: t.result.as_ref().map(Cow::Borrowed),
        error: t.error.as_ref().map(Cow::Borrowed),
        finished_by: t.finished_by.as_deref().map(Cow::Borrowed),
        created_at_us: to_us(t.created_at),
        updated_at_us: to_us(t.updated_at),
    };
    Op::PutTask {
        id: t.id.clone(),
        owner_key: t.target.queue_key(),
        // Plain data: serialising into a String cannot fail.
        body: serde_json::to_string(&row).unwrap_or_default(),
    }
}

/// The operation that makes a task change durable: the task's new row, or
/// its deletion when it left memory (retention).
pub(crate) fn event_op(ev: &TaskEvent<'_>) -> Op {
    match ev.kind {
        EventKind::Evicted => Op::DeleteTask {
            id: ev.task.id.clone(),
        },
        _ => put_op(ev.task),
    }
}

/// Rebuilds a task; the lease deadline keeps its wall-clock distance from
/// `wall`, placed relative to `now` (a deadline in the past is `now`).
pub(crate) fn restore(row: &RecoveredTask, now: Instant, wall: SystemTime) -> Result<Task, String> {
    let r: Row = serde_json::from_str(&row.body)
        .map_err(|e| format!("task row {:?} cannot be decoded: {e}", row.id))?;
    if r.id != row.id {
        return Err(format!(
            "task row {:?} holds the record of {:?}",
            row.id, r.id
        ));
    }
    let name = r.target.into_owned();
    let target = match &*r.target_kind {
        "worker" => Target::Worker(name),
        "service" => Target::Service(name),
        "capability" => Target::Capability(name),
        other => return Err(format!("task row {:?} has target kind {other:?}", row.id)),
    };
    let lease = match (r.state, r.lease_worker, r.lease_deadline_us) {
        (TaskState::Leased, Some(worker_id), Some(us)) => {
            let deadline_wall = from_us(us);
            let left = deadline_wall.duration_since(wall).unwrap_or_default();
            Some(Lease {
                worker_id: worker_id.into_owned(),
                deadline: now + left,
                deadline_wall,
            })
        }
        (TaskState::Leased, _, _) => {
            return Err(format!("task row {:?} is leased without a lease", row.id))
        }
        _ => None,
    };
    Ok(Task {
        id: r.id.into_owned(),
        task_type: r.task_type.into_owned(),
        payload: r.payload.into_owned(),
        target,
        state: r.state,
        attempts: r.attempts,
        max_attempts: r.max_attempts.max(1),
        lease,
        last_worker: r.last_worker.map(Cow::into_owned),
        result: r.result.map(Cow::into_owned),
        error: r.error.map(Cow::into_owned),
        finished_by: r.finished_by.map(Cow::into_owned),
        created_at: from_us(r.created_at_us),
        updated_at: from_us(r.updated_at_us),
    })
}

/// Stores a pin (`workers` non-empty) or removes it.
pub(crate) fn pin_op(key: &str, workers: Option<&[String]>) -> Op {
    match workers {
        Some(w) if !w.is_empty() => Op::PutPin {
            key: key.to_string(),
            workers: serde_json::to_string(w).unwrap_or_default(),
        },
        _ => Op::DeletePin {
            key: key.to_string(),
        },
    }
}

/// Decodes a pin row's worker list.
pub(crate) fn pin_workers(key: &str, workers: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(workers).map_err(|e| format!("pin {key:?} cannot be decoded: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn row_of(op: Op) -> RecoveredTask {
        match op {
            Op::PutTask {
                id,
                owner_key,
                body,
            } => RecoveredTask {
                id,
                owner_key,
                body,
            },
            other => panic!("not a task row: {other:?}"),
        }
    }

    #[test]
    fn task_round_trips_with_its_lease_distance() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut t = Task::new(
            "t-1".into(),
            "embed".into(),
            json!({"text": "hi"}),
            Target::Service("rag".into()),
            3,
        );
        t.state = TaskState::Leased;
        t.attempts = 2;
        t.last_worker = Some("w1".into());
        t.lease = Some(Lease {
            worker_id: "w1".into(),
            deadline: now + Duration::from_secs(30),
            deadline_wall: wall + Duration::from_secs(30),
        });
        let row = row_of(put_op(&t));
        assert_eq!(row.owner_key, "service:rag");
        // Recovered 10 s later (by the wall clock), in another process.
        let later = Instant::now();
        let back = restore(&row, later, wall + Duration::from_secs(10)).unwrap();
        assert_eq!(back.id, "t-1");
        assert_eq!(back.target, Target::Service("rag".into()));
        assert_eq!(
            (back.state, back.attempts, back.max_attempts),
            (t.state, 2, 3)
        );
        assert_eq!(back.payload, json!({"text": "hi"}));
        let lease = back.lease.unwrap();
        assert_eq!(lease.worker_id, "w1");
        let left = lease.deadline - later;
        assert!(
            left <= Duration::from_secs(20) && left >= Duration::from_secs(19),
            "{left:?}"
        );
        // A lease that ran out while down is due at once.
        let back = restore(&row, later, wall + Duration::from_secs(60)).unwrap();
        assert_eq!(back.lease.unwrap().deadline, later);
    }

    #[test]
    fn bad_rows_are_errors() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let t = Task::new(
            "t-2".into(),
            "x".into(),
            Value::Null,
            Target::Worker("w".into()),
            1,
        );
        let mut row = row_of(put_op(&t));
        assert_eq!(row.owner_key, "worker:w");
        row.id = "t-3".into();
        assert!(restore(&row, now, wall).unwrap_err().contains("t-2"));
        row.body = "{".into();
        assert!(restore(&row, now, wall).is_err());
        assert!(pin_workers("service:x", "[1]").is_err());
        assert_eq!(
            pin_workers("service:x", r#"["a","b"]"#).unwrap(),
            vec!["a", "b"]
        );
    }
}
