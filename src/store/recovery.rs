//! Startup recovery: rows -> records, split by owner shard.
//!
//! Placement is recomputed with the current shard count, so a database
//! written by a run with a different `--shards` still puts every worker on
//! the shard that `owner_of` will route its requests to. Tasks go to the
//! shard owning their queue (`owner_key`), pins to every shard (each keeps
//! a replica).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::worker::{age_at, restore};
use super::{task, Op, Recovered, Store, StoreError};
use crate::model::placement::owner_of;
use crate::model::worker::WorkerRecord;
use crate::model::Catalog;
use crate::tasks::task::shard_of_key;
use crate::tasks::Task;

/// What one shard starts with.
#[derive(Debug, Default)]
pub(crate) struct ShardSlice {
    pub workers: Vec<WorkerRecord>,
    /// In first-stored order.
    pub tasks: Vec<Task>,
    pub pins: Vec<(String, Vec<String>)>,
}

/// Handed to every shard at start: the store handle and its slice.
pub(crate) struct Boot {
    pub store: Option<Store>,
    /// When this run started (µs since the Unix epoch): the epoch of its
    /// event cursors, so a cursor of an earlier run is told apart.
    pub epoch: u64,
    slices: Mutex<Vec<Option<ShardSlice>>>,
}

impl Boot {
    /// No database: every shard starts empty.
    pub(crate) fn in_memory() -> Arc<Boot> {
        Arc::new(Boot {
            store: None,
            epoch: run_epoch(),
            slices: Mutex::new(Vec::new()),
        })
    }

    /// A store but nothing to recover from it (cluster mode: shards adopt
    /// their share from etcd once the node has joined).
    pub(crate) fn with_store(store: Store) -> Arc<Boot> {
        Arc::new(Boot {
            store: Some(store),
            epoch: run_epoch(),
            slices: Mutex::new(Vec::new()),
        })
    }

    /// Rebuilds records and splits them over `shards` shards. Workers whose
    /// last heartbeat is older than `worker_timeout` are not restored (the
    /// sweeper would remove them at once); their rows are deleted.
    pub(crate) fn recover(
        store: Store,
        rec: Recovered,
        shards: usize,
        worker_timeout: Duration,
        catalog: &'static Catalog,
    ) -> Result<Arc<Boot>, StoreError> {
        let started = Instant::now();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut slices: Vec<ShardSlice> = (0..shards).map(|_| ShardSlice::default()).collect();
        let mut expired = Vec::new();
        let corrupt = |detail| StoreError::Corrupt {
            path: store.path().to_path_buf(),
            detail,
        };
        let n_rows = rec.workers.len();
        for row in &rec.workers {
            let w = restore(row, now, wall, catalog).map_err(corrupt)?;
            if age_at(w.last_heartbeat_at, wall) > worker_timeout {
                expired.push(Op::DeleteWorker { id: w.worker_id });
                continue;
            }
            slices[owner_of(&w.worker_id, shards)].workers.push(w);
        }
        let n_tasks = rec.tasks.len();
        for row in &rec.tasks {
            let t = task::restore(row, now, wall).map_err(corrupt)?;
            slices[shard_of_key(&row.owner_key, shards)].tasks.push(t);
        }
        let n_pins = rec.pins.len();
        for (key, workers) in &rec.pins {
            let workers = task::pin_workers(key, workers).map_err(corrupt)?;
            for s in &mut slices {
                s.pins.push((key.clone(), workers.clone()));
            }
        }
        let n_expired = expired.len();
        store.submit_nowait(expired);
        tracing::info!(
            db = %store.path().display(),
            workers = n_rows - n_expired,
            expired_workers = n_expired,
            tasks = n_tasks,
            pins = n_pins,
            shards,
            read_ms = rec.took.as_secs_f64() * 1e3,
            rebuild_ms = started.elapsed().as_secs_f64() * 1e3,
            "recovered state from the database"
        );
        Ok(Arc::new(Boot {
            store: Some(store),
            epoch: run_epoch(),
            slices: Mutex::new(slices.into_iter().map(Some).collect()),
        }))
    }

    /// Shard `id`'s slice (once; empty afterwards or without a database).
    pub(crate) fn take(&self, id: usize) -> ShardSlice {
        let mut g = match self.slices.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.get_mut(id).and_then(Option::take).unwrap_or_default()
    }
}

/// Microseconds since the Unix epoch now: unique per run in practice.
fn run_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}
