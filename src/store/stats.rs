//! The writer thread's figures and their Prometheus encoding.
//!
//! The writer is a plain OS thread, not a shard, so it cannot answer a
//! scrape over the mesh. It updates [`WriterStats`] once per batch (after
//! the commit, so never while a client waits) under a mutex that only it
//! and a scrape ever take; the queue depth is read straight from the
//! channel. A scrape therefore never waits for a commit or for the disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics::{
    counter, encode_text, gauge, histogram_family, unlabelled, Histogram, MetricFamily,
    LATENCY_BUCKETS,
};

/// Upper bounds of the batch-size buckets (operations per transaction).
pub(crate) const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

#[derive(Debug, Clone)]
pub(crate) struct WriterStats {
    pub path: PathBuf,
    /// Transactions committed.
    pub commits: u64,
    /// Operations committed.
    pub ops: u64,
    /// Transactions that failed (each failed op is retried later).
    pub commit_errors: u64,
    /// Failed operations waiting to be retried.
    pub backlog_ops: u64,
    /// Size of the database file plus its WAL.
    pub bytes_on_disk: u64,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
}

impl WriterStats {
    pub(crate) fn new(path: &Path) -> Self {
        let mut s = Self {
            path: path.to_path_buf(),
            commits: 0,
            ops: 0,
            commit_errors: 0,
            backlog_ops: 0,
            bytes_on_disk: 0,
            batch_size: Histogram::new(&BATCH_BUCKETS),
            commit_seconds: Histogram::new(&LATENCY_BUCKETS),
        };
        s.bytes_on_disk = disk_bytes(path);
        s
    }

    pub(crate) fn commit_latency(&mut self, d: Duration) {
        self.commit_seconds.observe(d);
    }
}

/// Bytes the database occupies: the file and its write-ahead log.
pub(super) fn disk_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    size(path) + size(Path::new(&wal))
}

/// What a scrape reads.
#[derive(Debug, Clone)]
pub(crate) struct StoreSnapshot {
    /// Batches queued for the writer right now.
    pub queue_depth: u64,
    pub stats: WriterStats,
}

impl StoreSnapshot {
    /// The store's families of a scrape.
    pub(crate) fn families(&self) -> [MetricFamily; 8] {
        let s = &self.stats;
        [
            gauge(
                "coordinator_store_queue_depth",
                "Batches waiting for the database writer.",
                unlabelled(self.queue_depth),
            ),
            counter(
                "coordinator_store_commits_total",
                "Database transactions committed.",
                unlabelled(s.commits),
            ),
            counter(
                "coordinator_store_ops_total",
                "Operations committed to the database.",
                unlabelled(s.ops),
            ),
            counter(
                "coordinator_store_commit_errors_total",
                "Database transactions that failed (their operations are retried).",
                unlabelled(s.commit_errors),
            ),
            gauge(
                "coordinator_store_backlog_ops",
                "Failed operations waiting to be written again.",
                unlabelled(s.backlog_ops),
            ),
            gauge(
                "coordinator_store_bytes",
                "Size of the database file and its write-ahead log.",
                unlabelled(s.bytes_on_disk),
            ),
            histogram_family(
                "coordinator_store_batch_size",
                "Operations per database transaction (group commit).",
                vec![(Vec::new(), &s.batch_size)],
            ),
            histogram_family(
                "coordinator_store_commit_duration_seconds",
                "Time to write and commit one batch, fsync included.",
                vec![(Vec::new(), &s.commit_seconds)],
            ),
        ]
    }

    /// Appends the store's metrics in the Prometheus text format.
    pub(crate) fn encode(&self, out: &mut String) {
        out.push_str(&encode_text(&self.families()));
    }
}
