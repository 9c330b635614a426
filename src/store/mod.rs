//! Durable state in an embedded SQLite database.
//!
//! Owns: the database file (opened once, locked exclusively so two
//! coordinators can never share it), schema migrations, startup recovery,
//! and ONE writer OS thread that does every write. Shards never touch SQLite
//! and never block on it: they hand a batch of [`Op`]s to the writer over an
//! unbounded crossbeam channel (`send` on an unbounded channel never waits)
//! and await a `futures::channel::oneshot` [`Ack`] that the writer thread
//! answers after the commit. This module must not know about HTTP, shards
//! or glommio; [`worker`] converts registry records to rows and back.
//!
//! # Group commit
//! The writer blocks on the channel, then drains whatever else is queued
//! (up to [`MAX_BATCH_OPS`]), writes all of it in one transaction, commits
//! (the fsync follows [`SyncMode`]) and answers every ack of the batch. While
//! one commit waits for the disk the next batch piles up, so the cost of an
//! fsync is shared by everything that arrived meanwhile.
//!
//! # API (for the shards and for the tasks module)
//! Everything is keyed by strings and stores opaque JSON, so other modules
//! can persist their state without a schema change here:
//! - [`Op::PutWorker`] / [`Op::DeleteWorker`]: a worker row ([`worker`]
//!   converts records).
//! - [`Op::Heartbeat`]: coalesced heartbeat state (see below).
//! - [`Op::PutTask`] / [`Op::DeleteTask`]: a task row ([`task`] converts
//!   tasks); an upsert keeps the task's original position (recovery returns
//!   tasks in first-insertion order). `owner_key` is the task's queue key,
//!   which decides the shard that gets the task back at recovery.
//! - [`Op::PutPin`] / [`Op::DeletePin`]: admin pins.
//! - [`Store::submit`]: any list of [`Op`]s, made durable together
//!   (one ack), e.g. every task change one request caused.
//!
//! Await the [`Ack`] before replying to the client: `Ok` means committed
//! with the configured sync policy. An `Err` means the write failed (disk
//! full, IO error): the caller answers 503; the writer keeps the failed
//! operations and retries them, in order and ahead of newer ones, every
//! [`RETRY_INTERVAL`], so the file catches up with memory once the disk
//! has room again.
//!
//! # Heartbeats
//! A heartbeat is not written on its own path: the shard marks the worker
//! dirty and, every `--heartbeat-flush-ms`, sends one message with the last
//! state of each dirty worker. A crash loses at most that window of heartbeat
//! timestamps and reported load, never a worker (registrations are durable
//! before their reply). See `docs/persistence.md`.

pub(crate) mod recovery;
mod schema;
mod stats;
pub(crate) mod task;
pub(crate) mod worker;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use futures::channel::oneshot;
use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use schema::SCHEMA_VERSION;
pub(crate) use stats::StoreSnapshot;
pub(crate) use stats::WriterStats;

/// Most operations written in one transaction; the rest wait for the next.
pub(crate) const MAX_BATCH_OPS: usize = 4096;
/// How often a writer with failed operations tries them again.
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// When a commit reaches the disk (`PRAGMA synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fsync the WAL on every commit: survives power loss.
    #[default]
    Full,
    /// fsync only at checkpoints: survives a process crash (kill -9), may
    /// lose the last commits on power loss.
    Normal,
    /// Never fsync: survives a process crash, not an OS crash or power loss.
    Off,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Full => "full",
            SyncMode::Normal => "normal",
            SyncMode::Off => "off",
        }
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(SyncMode::Full),
            "normal" => Ok(SyncMode::Normal),
            "off" => Ok(SyncMode::Off),
            _ => Err(format!("sync must be full, normal or off, got {s:?}")),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("database {path} is locked by another process (is another coordinator using it?)")]
    Locked { path: PathBuf },
    #[error(
        "database {path} is corrupt or not a coordinator database: {detail}; refusing to start \
         (move the file away to start empty, or restore a backup)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "database {path} has schema version {found}, newer than this binary supports \
         ({supported}); refusing to start"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// A write failed at run time (disk full, IO error).
    #[error("database write failed: {0}")]
    Write(String),
    /// The writer thread is gone (shutting down).
    #[error("database writer is not running")]
    Closed,
}

/// One durable mutation.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Insert or replace a worker row. `heartbeat_us` and `state` are the
    /// record's own values, so a newer registration supersedes older
    /// coalesced heartbeat columns.
    PutWorker {
        id: String,
        record: String,
        heartbeat_us: i64,
        state: String,
    },
    /// Coalesced heartbeat: updates an existing row only.
    Heartbeat {
        id: String,
        heartbeat_us: i64,
        state: String,
    },
    /// Deletes a worker row (not the tasks addressed to it: in memory they
    /// outlive the worker too).
    DeleteWorker {
        id: String,
    },
    /// Insert, or update in place, a task.
    PutTask {
        id: String,
        owner_key: String,
        body: String,
    },
    DeleteTask {
        id: String,
    },
    /// Insert or replace an admin pin; `workers` is a JSON list of ids.
    PutPin {
        key: String,
        workers: String,
    },
    DeletePin {
        key: String,
    },
}

/// A batch handed to the writer.
pub(crate) struct Msg {
    pub ops: Vec<Op>,
    pub ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// Last message: write what came before, close the file, exit. Sent by
    /// the server once every shard has stopped (a shard's detached tasks
    /// may keep a handle alive past that, so "all senders dropped" is not a
    /// reliable end).
    pub close: bool,
}

/// Resolves when the writer has committed (or failed to commit) a batch.
pub(crate) struct Ack(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Ack {
    /// An ack for nothing (no operations): resolves at once.
    pub(crate) fn done() -> Ack {
        Ack(None)
    }

    pub(crate) async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
        }
    }
}

/// What was in the database at startup.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub workers: Vec<RecoveredWorker>,
    pub tasks: Vec<RecoveredTask>,
    /// Admin pins: (key, JSON list of worker ids).
    pub pins: Vec<(String, String)>,
    pub took: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct RecoveredWorker {
    pub id: String,
    pub record: String,
    /// Coalesced heartbeat columns, newer than `record` when set.
    pub heartbeat_us: Option<i64>,
    pub state: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RecoveredTask {
    pub id: String,
    pub owner_key: String,
    pub body: String,
}

/// Handle on the writer: cheap to clone, one per shard.
#[derive(Clone)]
pub(crate) struct Store {
    tx: Sender<Msg>,
    stats: Arc<Mutex<WriterStats>>,
    path: Arc<PathBuf>,
}

/// The writer thread; join it after every [`Store`] handle is dropped.
pub(crate) struct Writer(Option<JoinHandle<()>>);

impl Writer {
    /// Waits until the writer has drained its queue and closed the file;
    /// call [`Store::close`] first.
    pub(crate) fn join(mut self) {
        if let Some(h) = self.0.take() {
            if h.join().is_err() {
                tracing::error!("database writer thread panicked");
            }
        }
    }
}

impl Store {
    /// Opens (creating it and its directory if needed) and locks the
    /// database, migrates it, reads everything back, and starts the writer.
    pub(crate) fn open(
        path: &Path,
        sync: SyncMode,
    ) -> Result<(Store, Writer, Recovered), StoreError> {
        let started = Instant::now();
        let conn = open_connection(path, sync)?;
        let mut recovered = schema::read_all(&conn).map_err(|e| classify(path, e))?;
        recovered.took = started.elapsed();
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(Mutex::new(WriterStats::new(path)));
        let handle = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer::run(conn, rx, stats))
                .map_err(|e| StoreError::Open {
                    path: path.to_path_buf(),
                    detail: format!("cannot start the writer thread: {e}"),
                })?
        };
        let store = Store {
            tx,
            stats,
            path: Arc::new(path.to_path_buf()),
        };
        Ok((store, Writer(Some(handle)), recovered))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A store whose batches another thread makes durable (cluster mode:
    /// etcd). `label` names it in metrics and errors. The caller runs the
    /// consumer of the returned receiver, which must answer every ack and
    /// stop at a `close` message, and updates the returned stats.
    pub(crate) fn remote(
        label: &Path,
    ) -> (
        Store,
        crossbeam_channel::Receiver<Msg>,
        Arc<Mutex<WriterStats>>,
    ) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(Mutex::new(WriterStats::new(label)));
        let store = Store {
            tx,
            stats: stats.clone(),
            path: Arc::new(label.to_path_buf()),
        };
        (store, rx, stats)
    }

    /// Makes `ops` durable together; await the ack before replying.
    pub(crate) fn submit(&self, ops: Vec<Op>) -> Ack {
        if ops.is_empty() {
            return Ack::done();
        }
        let (ack, rx) = oneshot::channel();
        // If the writer is gone the sender is dropped with the message, and
        // the ack resolves to `Closed`.
        let _ = self.tx.send(Msg {
            ops,
            ack: Some(ack),
            close: false,
        });
        Ack(Some(rx))
    }

    /// Queues `ops` without waiting for them (coalesced heartbeats, sweeps).
    pub(crate) fn submit_nowait(&self, ops: Vec<Op>) {
        if !ops.is_empty() {
            let _ = self.tx.send(Msg {
                ops,
                ack: None,
                close: false,
            });
        }
    }

    /// Asks the writer to finish what is queued and stop. Call it after
    /// the last mutation; later submissions fail with `Closed`.
    pub(crate) fn close(&self) {
        let _ = self.tx.send(Msg {
            ops: Vec::new(),
            ack: None,
            close: true,
        });
    }

    /// The writer's figures for a metrics scrape. The writer updates them
    /// once per batch under a mutex only it and scrapes touch, so no request
    /// path ever waits on it.
    pub(crate) fn snapshot(&self) -> StoreSnapshot {
        let stats = match self.stats.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        StoreSnapshot {
            queue_depth: self.tx.len() as u64,
            stats,
        }
    }
}

/// Opens, locks, checks and migrates the file.
fn open_connection(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    if path.is_dir() {
        return Err(open_err("it is a directory".into()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
    let setup = || -> rusqlite::Result<String> {
        conn.busy_timeout(Duration::from_millis(250))?;
        // Exclusive locking: the lock taken by the first write below is held
        // until the connection closes, so a second coordinator on the same
        // file fails at startup instead of interleaving writes. In WAL mode it
        // also keeps the WAL index in heap memory (no -shm file).
        let _: String =
            conn.pragma_update_and_check(None, "locking_mode", "EXCLUSIVE", |r| r.get(0))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", sync.as_str())?;
        conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")?;
        Ok(mode)
    };
    let mode = setup().map_err(|e| classify(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(format!(
            "cannot switch to WAL mode (journal_mode is {mode})"
        )));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    if check != "ok" {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("integrity check failed: {check}"),
        });
    }
    schema::migrate(&conn, path)?;
    Ok(conn)
}

/// Turns an SQLite error at open time into one that says what to do.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked { path },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path,
            detail: e.to_string(),
        },
        _ => StoreError::Open {
            path,
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("coord-store-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
        p
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn writes_survive_reopen_and_tasks_keep_order() {
        let path = temp("reopen.db");
        let (store, writer, rec) = Store::open(&path, SyncMode::Full).unwrap();
        assert!(rec.workers.is_empty());
        let put = |id: &str| Op::PutWorker {
            id: id.into(),
            record: format!("{{\"worker_id\":\"{id}\"}}"),
            heartbeat_us: 1,
            state: "{}".into(),
        };
        let task = |id: &str, owner: &str, body: &str| Op::PutTask {
            id: id.into(),
            owner_key: owner.into(),
            body: body.into(),
        };
        let pin = |key: &str, workers: &str| Op::PutPin {
            key: key.into(),
            workers: workers.into(),
        };
        block(store.submit(vec![put("a"), put("b")]).wait()).unwrap();
        block(store.submit(vec![task("t2", "worker:a", "2")]).wait()).unwrap();
        block(store.submit(vec![task("t1", "worker:a", "1")]).wait()).unwrap();
        block(
            store
                .submit(vec![
                    task("t3", "worker:b", "3"),
                    task("t4", "service:s", "4"),
                ])
                .wait(),
        )
        .unwrap();
        // Updating a task keeps its place in the order.
        block(store.submit(vec![task("t2", "worker:a", "22")]).wait()).unwrap();
        // So do several states of one task in one batch; the last one wins.
        block(
            store
                .submit(vec![
                    task("t5", "service:s", "5"),
                    task("t1", "worker:a", "11"),
                    task("t5", "service:s", "55"),
                    Op::DeleteTask { id: "t5".into() },
                    task("t1", "worker:a", "111"),
                ])
                .wait(),
        )
        .unwrap();
        block(
            store
                .submit(vec![Op::DeleteTask { id: "t4".into() }])
                .wait(),
        )
        .unwrap();
        block(
            store
                .submit(vec![pin("service:x", "[\"a\"]"), pin("model:m", "[\"b\"]")])
                .wait(),
        )
        .unwrap();
        block(store.submit(vec![pin("service:x", "[\"b\"]")]).wait()).unwrap();
        block(
            store
                .submit(vec![Op::DeletePin {
                    key: "model:m".into(),
                }])
                .wait(),
        )
        .unwrap();
        store.submit_nowait(vec![Op::Heartbeat {
            id: "a".into(),
            heartbeat_us: 7,
            state: "{\"status\":\"busy\"}".into(),
        }]);
        // Deleting a worker keeps the tasks addressed to it.
        block(
            store
                .submit(vec![Op::DeleteWorker { id: "b".into() }])
                .wait(),
        )
        .unwrap();
        let snap = store.snapshot();
        assert!(snap.stats.commits >= 5);
        store.close();
        writer.join();

        let (store, writer, rec) = Store::open(&path, SyncMode::Full).unwrap();
        let ids: Vec<_> = rec.workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, vec!["a"]);
        assert_eq!(rec.workers[0].heartbeat_us, Some(7));
        assert_eq!(
            rec.workers[0].state.as_deref(),
            Some("{\"status\":\"busy\"}")
        );
        let tasks: Vec<_> = rec
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.body.as_str()))
            .collect();
        assert_eq!(tasks, vec![("t2", "22"), ("t1", "111"), ("t3", "3")]);
        assert_eq!(
            rec.pins,
            vec![("service:x".to_string(), "[\"b\"]".to_string())]
        );
        store.close();
        writer.join();
    }

    #[test]
    fn second_open_of_the_same_file_is_refused_as_locked() {
        let path = temp("locked.db");
        let (store, writer, _) = Store::open(&path, SyncMode::Normal).unwrap();
        let err = Store::open(&path, SyncMode::Normal).err().expect("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("locked.db"));
        store.close();
        writer.join();
        // Released on close.
        let (store, writer, _) = Store::open(&path, SyncMode::Normal).unwrap();
        store.close();
        writer.join();
    }

    #[test]
    fn garbage_file_is_reported_as_corrupt() {
        let path = temp("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&path, SyncMode::Full).err().expect("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("garbage.db"));
    }

    #[test]
    fn sync_mode_parses() {
        assert_eq!("FULL".parse::<SyncMode>(), Ok(SyncMode::Full));
        assert_eq!("off".parse::<SyncMode>(), Ok(SyncMode::Off));
        assert!("sometimes".parse::<SyncMode>().is_err());
    }
}
