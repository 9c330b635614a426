//! Historical metrics: sampled series, rolled up to one minute and one
//! hour, kept for a retention per tier, queried by `GET /api/history`.
//!
//! Owns: the series catalogue ([`series`]), rollup and query arithmetic
//! ([`rollup`], pure), the two stores of samples (SQLite, [`sqlite`], or a
//! bounded in-memory ring, [`memory`], with `--in-memory`) and the one OS
//! thread that owns whichever is in use ([`thread`]).
//!
//! Must not: know about shards, HTTP or glommio. Samplers (in `shard`)
//! hand it [`Point`]s through a [`Handle`]; the handle never blocks (a
//! full queue drops the batch and counts it), so a slow disk can delay
//! history but never a request.
//!
//! # Why a file and a thread of its own
//! The durable state (`store`) fsyncs every commit and its acks hold up
//! registrations and task submits. History is a best-effort record: it
//! lives in its own SQLite file next to the database (`<db>-history.db`),
//! written with `synchronous=NORMAL` (survives a process crash, may lose
//! the last seconds on power loss), by its own thread, so writing and
//! pruning millions of samples never sits in front of an acknowledgement.

pub mod memory;
pub mod rollup;
pub mod series;
pub mod sqlite;
pub mod thread;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};
use futures::channel::oneshot;

pub use rollup::{Answer, Query, Retention};
pub use thread::Thread;

/// One sample of one line of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Index into [`series::SERIES`].
    pub series: u8,
    /// The value of the series' label (empty when it has none).
    pub label: String,
    /// The worker of a per-worker series (empty otherwise).
    pub worker: String,
    /// Unix seconds.
    pub ts: i64,
    pub value: f64,
}

/// Where samples are kept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// SQLite file; `None` keeps a bounded ring in memory.
    pub path: Option<PathBuf>,
    /// Seconds between pool samples (the raw tier's width).
    pub interval_s: i64,
    pub retention: Retention,
}

/// Time since the Unix epoch, as samples and queries count it (0 if the
/// clock is before 1970).
pub fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The history file that goes with database `db`: `data/coordinator.db`
/// keeps its history in `data/coordinator-history.db`.
pub fn path_for(db: &Path) -> PathBuf {
    let stem = db
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "coordinator".into());
    let ext = db
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    db.with_file_name(format!("{stem}-history.{ext}"))
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open history database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("history query failed: {0}")]
    Query(String),
    /// The thread's queue is full or it has stopped.
    #[error("history is busy or stopped; try again")]
    Unavailable,
}

pub(crate) enum Msg {
    Write(Vec<Point>),
    Query(Query, oneshot::Sender<Result<Answer, HistoryError>>),
    Close,
}

/// Messages queued at most; beyond, sample batches are dropped (counted)
/// and queries answered 503.
pub(crate) const QUEUE: usize = 1024;

/// What the history thread reports: updated by it once per batch under a
/// mutex only it and `/metrics` scrapes touch (no request path waits).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub samples: u64,
    pub write_errors: u64,
    /// The SQLite file and its WAL (0 in memory).
    pub bytes: u64,
}

/// Cheap to clone, one per shard.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Msg>,
    settings: Arc<Settings>,
    dropped: Arc<AtomicU64>,
    stats: Arc<Mutex<Stats>>,
}

impl Handle {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Queues samples; never waits. A full queue drops them.
    pub fn write(&self, points: Vec<Point>) {
        if points.is_empty() {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Write(points)) {
            // Off the request path (samplers only), so a shared counter is
            // fine here; it is read by the metrics scrape.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sample batches dropped because the history thread fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub async fn query(&self, q: Query) -> Result<Answer, HistoryError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send(Msg::Query(q, tx))
            .map_err(|_| HistoryError::Unavailable)?;
        rx.await.unwrap_or(Err(HistoryError::Unavailable))
    }

    /// The history families of a `/metrics` scrape.
    pub(crate) fn families(&self) -> [crate::metrics::MetricFamily; 4] {
        use crate::metrics::{counter, gauge, unlabelled};
        let s = match self.stats.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        [
            counter(
                "coordinator_history_samples_total",
                "History samples written (docs/history.md).",
                unlabelled(s.samples),
            ),
            counter(
                "coordinator_history_write_errors_total",
                "History batches whose write failed (their samples are lost).",
                unlabelled(s.write_errors),
            ),
            counter(
                "coordinator_history_dropped_batches_total",
                "Sample batches dropped because the history thread fell behind.",
                unlabelled(self.dropped()),
            ),
            gauge(
                "coordinator_history_bytes",
                "Size of the history file and its write-ahead log (0 in memory).",
                unlabelled(s.bytes),
            ),
        ]
    }

    /// Asks the thread to write what is queued and stop.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }
}

/// Opens the store of samples and starts its thread.
pub fn start(settings: Settings) -> Result<(Handle, Thread), HistoryError> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let settings = Arc::new(settings);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let thread = Thread::start(settings.clone(), rx, stats.clone())?;
    Ok((
        Handle {
            tx,
            settings,
            dropped: Arc::default(),
            stats,
        },
        thread,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_file_sits_next_to_the_database() {
        assert_eq!(
            path_for(Path::new("data/coordinator.db")),
            Path::new("data/coordinator-history.db")
        );
        assert_eq!(
            path_for(Path::new("/x/state")),
            Path::new("/x/state-history.db")
        );
    }
}
