//! The writer thread's figures and their Prometheus encoding.
//!
//! The writer is a plain OS thread, not a shard, so it cannot answer a
//! scrape over the mesh. It updates [`WriterStats`] once per batch (after
//! the commit, so never while a client waits) under a mutex that only it
//! and a scrape ever take; the queue depth is read straight from the
//! channel. A scrape therefore never waits for a commit or for the disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics::{encode_histogram, header, scalar, LATENCY_BUCKETS};

/// Upper bounds of the batch-size buckets (operations per transaction).
pub const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

#[derive(Debug, Clone)]
pub struct Hist {
    bounds: &'static [f64],
    /// Non-cumulative; the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn encode(&self, out: &mut String, name: &str) {
        let (counts, sum, count) = (&self.counts, self.sum, self.count);
        encode_histogram(out, name, "", self.bounds, counts, sum, count);
    }
}

#[derive(Debug, Clone)]
pub struct WriterStats {
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
    pub batch_size: Hist,
    pub commit_seconds: Hist,
}

impl WriterStats {
    pub fn new(path: &Path) -> Self {
        let mut s = Self {
            path: path.to_path_buf(),
            commits: 0,
            ops: 0,
            commit_errors: 0,
            backlog_ops: 0,
            bytes_on_disk: 0,
            batch_size: Hist::new(&BATCH_BUCKETS),
            commit_seconds: Hist::new(&LATENCY_BUCKETS),
        };
        s.bytes_on_disk = disk_bytes(path);
        s
    }

    pub fn commit_latency(&mut self, d: Duration) {
        self.commit_seconds.observe(d.as_secs_f64());
    }
}

/// Bytes the database occupies: the file and its write-ahead log.
pub fn disk_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    size(path) + size(Path::new(&wal))
}

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct StoreSnapshot {
    /// Batches queued for the writer right now.
    pub queue_depth: u64,
    pub stats: WriterStats,
}

impl StoreSnapshot {
    /// Appends the store's metrics in the Prometheus text format.
    pub fn encode(&self, out: &mut String) {
        let s = &self.stats;
        scalar(
            out,
            "coordinator_store_queue_depth",
            "Batches waiting for the database writer.",
            "gauge",
            self.queue_depth,
        );
        scalar(
            out,
            "coordinator_store_commits_total",
            "Database transactions committed.",
            "counter",
            s.commits,
        );
        scalar(
            out,
            "coordinator_store_ops_total",
            "Operations committed to the database.",
            "counter",
            s.ops,
        );
        scalar(
            out,
            "coordinator_store_commit_errors_total",
            "Database transactions that failed (their operations are retried).",
            "counter",
            s.commit_errors,
        );
        scalar(
            out,
            "coordinator_store_backlog_ops",
            "Failed operations waiting to be written again.",
            "gauge",
            s.backlog_ops,
        );
        scalar(
            out,
            "coordinator_store_bytes",
            "Size of the database file and its write-ahead log.",
            "gauge",
            s.bytes_on_disk,
        );
        for (name, help, h) in [
            (
                "coordinator_store_batch_size",
                "Operations per database transaction (group commit).",
                &s.batch_size,
            ),
            (
                "coordinator_store_commit_duration_seconds",
                "Time to write and commit one batch, fsync included.",
                &s.commit_seconds,
            ),
        ] {
            header(out, name, help, "histogram");
            h.encode(out, name);
        }
    }
}
