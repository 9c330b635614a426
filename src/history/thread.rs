//! The history thread: writes sample batches, prunes old buckets, answers
//! queries, in arrival order. The only user of its store.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::rollup::{self, Answer, Plan, Query, Retention, Row};
use super::series::SERIES;
use super::{memory, sqlite, HistoryError, Msg, Point, Settings, Stats};

/// What the thread needs of a store of samples.
pub(crate) trait Backend {
    /// Writes each point to the raw tier (pool series only) and merges it
    /// into its minute and hour buckets.
    fn write(&mut self, points: &[Point]) -> Result<(), String>;
    /// Drops buckets older than each tier's retention.
    fn prune(&mut self, now: i64, keep: &Retention) -> Result<(), String>;
    /// The rows of `series` (of `worker`) in the plan's tier and range.
    fn read(&mut self, series: usize, worker: &str, plan: &Plan) -> Result<Vec<Row>, String>;
}

/// How often old buckets are dropped: a tier overshoots its retention by
/// at most this.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The history thread; join it after [`super::Handle::close`].
pub struct Thread(Option<JoinHandle<()>>);

impl Thread {
    pub(crate) fn start(
        settings: Arc<Settings>,
        rx: Receiver<Msg>,
        stats: Arc<Mutex<Stats>>,
    ) -> Result<Thread, HistoryError> {
        let backend: Box<dyn Backend + Send> = match &settings.path {
            Some(path) => Box::new(sqlite::Sqlite::open(path)?),
            None => Box::new(memory::Memory::default()),
        };
        let path = settings.path.clone().unwrap_or_default();
        let handle = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                lowest_priority();
                run(backend, &settings, rx, &stats)
            })
            .map_err(|e| HistoryError::Open {
                path,
                detail: format!("cannot start the history thread: {e}"),
            })?;
        Ok(Thread(Some(handle)))
    }

    pub fn join(mut self) {
        if let Some(h) = self.0.take() {
            if h.join().is_err() {
                tracing::error!("history thread panicked");
            }
        }
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only on CPU
/// time nothing else wants, so writing a large pool's samples never takes
/// a core from a shard (measured: at 200,000 workers the per-worker write
/// at normal priority put 400 ms stalls in a shard's heartbeat answers).
/// If it falls behind, its queue fills and sample batches are dropped
/// (counted), which is the trade history makes.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: changes only the calling thread's scheduling class, with
        // a valid parameter block that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "history thread keeps normal priority");
        }
    }
}

fn unix_now() -> i64 {
    super::unix_time().as_secs() as i64
}

/// Most samples written in one transaction; more wait for the next.
const MAX_BATCH: usize = 65_536;

fn run(
    mut backend: Box<dyn Backend + Send>,
    settings: &Settings,
    rx: Receiver<Msg>,
    stats: &Mutex<Stats>,
) {
    // `None`: never yet (an `Instant` in the past could underflow on a
    // machine booted less than PRUNE_EVERY ago).
    let mut pruned: Option<Instant> = None;
    let mut w = Writes {
        stats,
        failures: 0,
        path: settings.path.clone(),
        sized: None,
    };
    loop {
        if pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            if let Err(e) = backend.prune(unix_now(), &settings.retention) {
                tracing::warn!(error = %e, "pruning history failed");
            }
            pruned = Some(Instant::now());
        }
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Whatever else is queued goes into the same transaction; a query
        // first gets the samples that came before it written.
        let mut points = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(more) => {
                    points.extend(more);
                    if points.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                Msg::Query(q, reply) => {
                    w.write(&mut *backend, &std::mem::take(&mut points));
                    let _ = reply.send(query(&mut *backend, settings, &q));
                }
                Msg::Close => {
                    w.write(&mut *backend, &points);
                    return;
                }
            }
        }
        w.write(&mut *backend, &points);
    }
}

/// Minimum time between two `stat`s of the history file.
const SIZE_EVERY: Duration = Duration::from_secs(1);

/// Writes batches and keeps the figures `/metrics` reports.
struct Writes<'a> {
    stats: &'a Mutex<Stats>,
    failures: u64,
    path: Option<std::path::PathBuf>,
    /// When the file was last measured (`None`: not yet).
    sized: Option<Instant>,
}

impl Writes<'_> {
    fn write(&mut self, backend: &mut dyn Backend, points: &[Point]) {
        if points.is_empty() {
            return;
        }
        let result = backend.write(points);
        let mut s = match self.stats.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(()) => {
                self.failures = 0;
                s.samples += points.len() as u64;
            }
            Err(e) => {
                self.failures += 1;
                s.write_errors += 1;
                if self.failures == 1 || self.failures.is_multiple_of(60) {
                    tracing::warn!(error = %e, points = points.len(), failures = self.failures,
                        "writing history failed; these samples are lost");
                }
            }
        }
        if let Some(path) = self
            .path
            .as_deref()
            .filter(|_| self.sized.is_none_or(|t| t.elapsed() >= SIZE_EVERY))
        {
            s.bytes = sqlite::disk_bytes(path);
            self.sized = Some(Instant::now());
        }
    }
}

/// Answers a query from the tier and range its plan picks.
fn query(
    backend: &mut dyn Backend,
    settings: &Settings,
    q: &Query,
) -> Result<Answer, HistoryError> {
    let def = &SERIES[q.series];
    let plan = rollup::plan(
        q,
        def.per_worker,
        unix_now(),
        settings.interval_s,
        &settings.retention,
    );
    backend
        .read(q.series, &q.worker, &plan)
        .map(|rows| rollup::assemble(q, &plan, rows))
        .map_err(HistoryError::Query)
}
