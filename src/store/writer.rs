//! The writer thread: batch, commit, acknowledge, retry.
//!
//! Runs on its own OS thread and is the only user of the connection. It
//! must never be called from a shard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::Connection;

use super::stats::{disk_bytes, WriterStats};
use super::{Msg, Op, StoreError, MAX_BATCH_OPS, RETRY_INTERVAL};

/// Minimum time between two `stat`s of the database files.
const SIZE_EVERY: Duration = Duration::from_secs(1);

pub(super) fn run(mut conn: Connection, rx: Receiver<Msg>, stats: Arc<Mutex<WriterStats>>) {
    let path = lock(&stats).path.clone();
    // Operations whose commit failed, oldest first. They are already in
    // memory (and their callers got an error), so they are written again
    // before anything newer to keep each key's last write the winner.
    let mut backlog: Vec<Op> = Vec::new();
    let mut failures: u64 = 0;
    let mut sized = Instant::now();
    let mut closing = false;
    loop {
        let first = if backlog.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        } else if closing {
            None
        } else {
            match rx.recv_timeout(RETRY_INTERVAL) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    closing = true;
                    None
                }
            }
        };
        let mut msgs: Vec<Msg> = first.into_iter().collect();
        closing |= msgs.iter().any(|m| m.close);
        let mut n_ops: usize = backlog.len() + msgs.iter().map(|m| m.ops.len()).sum::<usize>();
        while n_ops < MAX_BATCH_OPS && !closing {
            match rx.try_recv() {
                Ok(m) => {
                    n_ops += m.ops.len();
                    closing |= m.close;
                    msgs.push(m);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let ops = backlog.iter().chain(msgs.iter().flat_map(|m| m.ops.iter()));
        let result = write(&mut conn, ops).map_err(|e| StoreError::Write(e.to_string()));
        let took = started.elapsed();
        for m in &mut msgs {
            if let Some(ack) = m.ack.take() {
                // The caller may have timed out and gone.
                let _ = ack.send(result.clone());
            }
        }
        match &result {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(db = %path.display(), after_failures = failures, written = backlog.len(),
                        "database writes work again; operations that failed earlier are now written");
                    failures = 0;
                }
                backlog.clear();
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::error!(db = %path.display(), error = %e, failures, pending_ops = n_ops,
                        "database write failed: changes are answered 503 and kept in memory; retrying");
                }
                backlog.extend(msgs.into_iter().flat_map(|m| m.ops));
                if closing {
                    tracing::error!(db = %path.display(), lost_ops = backlog.len(),
                        "shutting down with database writes that never succeeded");
                    break;
                }
            }
        }
        let mut s = lock(&stats);
        if n_ops == 0 {
            // Nothing was written (a bare close).
        } else if result.is_ok() {
            s.commits += 1;
            s.ops += n_ops as u64;
            s.batch_size.observe(n_ops as f64);
            s.commit_latency(took);
        } else {
            s.commit_errors += 1;
        }
        s.backlog_ops = backlog.len() as u64;
        if sized.elapsed() >= SIZE_EVERY || s.commits <= 1 {
            s.bytes_on_disk = disk_bytes(&path);
            sized = Instant::now();
        }
        drop(s);
        if closing && (backlog.is_empty() || result.is_err()) {
            break;
        }
    }
    // Closing the connection checkpoints the WAL into the main file.
    if let Err((_, e)) = conn.close() {
        tracing::warn!(db = %path.display(), error = %e, "closing the database failed");
    }
}

fn lock(stats: &Mutex<WriterStats>) -> std::sync::MutexGuard<'_, WriterStats> {
    match stats.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// For each operation, which operation's content to write in its place:
/// `Some(i)` itself or a later one, `None` to skip it.
///
/// Under load one batch often holds several states of the same task (its
/// submission, its lease, its completion). The transaction is atomic, so
/// only the last state can ever be seen: write that one, once, at the
/// position of the first (a row's first insertion fixes its place in the
/// recovery order). A deletion ends the run, so a later put of the same id
/// is written as it comes.
fn coalesce(ops: &[&Op]) -> Vec<Option<usize>> {
    let mut plan: Vec<Option<usize>> = (0..ops.len()).map(Some).collect();
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::PutTask { id, .. } => match first.get(id.as_str()) {
                Some(&f) => {
                    plan[f] = Some(i);
                    plan[i] = None;
                }
                None => {
                    first.insert(id, i);
                }
            },
            Op::DeleteTask { id } => {
                first.remove(id.as_str());
            }
            _ => {}
        }
    }
    plan
}

/// Writes `ops` in one transaction.
fn write<'a>(conn: &mut Connection, ops: impl Iterator<Item = &'a Op>) -> rusqlite::Result<()> {
    let ops: Vec<&Op> = ops.collect();
    let plan = coalesce(&ops);
    let tx = conn.transaction()?;
    {
        let mut put_worker = tx.prepare_cached(
            "INSERT INTO workers (worker_id, record, last_heartbeat_us, state)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (worker_id) DO UPDATE SET record = excluded.record,
                 last_heartbeat_us = excluded.last_heartbeat_us, state = excluded.state",
        )?;
        let mut heartbeat = tx.prepare_cached(
            "UPDATE workers SET last_heartbeat_us = ?2, state = ?3 WHERE worker_id = ?1",
        )?;
        let mut del_worker = tx.prepare_cached("DELETE FROM workers WHERE worker_id = ?1")?;
        let mut put_task = tx.prepare_cached(
            "INSERT INTO tasks (task_id, owner_key, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (task_id) DO UPDATE SET owner_key = excluded.owner_key,
                 body = excluded.body",
        )?;
        let mut del_task = tx.prepare_cached("DELETE FROM tasks WHERE task_id = ?1")?;
        let mut put_pin = tx.prepare_cached(
            "INSERT INTO pins (pin_key, workers) VALUES (?1, ?2)
             ON CONFLICT (pin_key) DO UPDATE SET workers = excluded.workers",
        )?;
        let mut del_pin = tx.prepare_cached("DELETE FROM pins WHERE pin_key = ?1")?;
        for source in plan.iter().flatten() {
            match ops[*source] {
                Op::PutWorker {
                    id,
                    record,
                    heartbeat_us,
                    state,
                } => {
                    put_worker.execute((id, record, heartbeat_us, state))?;
                }
                Op::Heartbeat {
                    id,
                    heartbeat_us,
                    state,
                } => {
                    heartbeat.execute((id, heartbeat_us, state))?;
                }
                Op::DeleteWorker { id } => {
                    del_worker.execute([id])?;
                }
                Op::PutTask {
                    id,
                    owner_key,
                    body,
                } => {
                    put_task.execute((id, owner_key, body))?;
                }
                Op::DeleteTask { id } => {
                    del_task.execute([id])?;
                }
                Op::PutPin { key, workers } => {
                    put_pin.execute((key, workers))?;
                }
                Op::DeletePin { key } => {
                    del_pin.execute([key])?;
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: &str) -> Op {
        Op::PutTask {
            id: id.into(),
            owner_key: "service:s".into(),
            body: String::new(),
        }
    }

    #[test]
    fn later_states_of_a_task_are_written_once_in_its_first_place() {
        let ops = [
            put("a"),
            put("b"),
            Op::DeleteWorker { id: "w".into() },
            put("a"),
            put("a"),
            Op::DeleteTask { id: "b".into() },
            put("b"),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        assert_eq!(
            coalesce(&refs),
            [Some(4), Some(1), Some(2), None, None, Some(5), Some(6)]
        );
    }
}
