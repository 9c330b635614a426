//! The history thread: writes sample batches, prunes old buckets, answers
//! queries, in arrival order. The only user of its store.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::rollup::{self, Plan, Retention, Row};
use super::series::SERIES;
use super::{memory, sqlite, HistoryError, Msg, Point, Settings};

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
    ) -> Result<Thread, HistoryError> {
        let backend: Box<dyn Backend + Send> = match &settings.path {
            Some(path) => Box::new(sqlite::Sqlite::open(path)?),
            None => Box::new(memory::Memory::default()),
        };
        let path = settings.path.clone().unwrap_or_default();
        let handle = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || run(backend, &settings, rx))
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

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn run(mut backend: Box<dyn Backend + Send>, settings: &Settings, rx: Receiver<Msg>) {
    let mut pruned = Instant::now() - PRUNE_EVERY;
    let mut failures: u64 = 0;
    loop {
        if pruned.elapsed() >= PRUNE_EVERY {
            if let Err(e) = backend.prune(unix_now(), &settings.retention) {
                tracing::warn!(error = %e, "pruning history failed");
            }
            pruned = Instant::now();
        }
        let msg = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Msg::Write(mut points) => {
                // Whatever else is queued goes into the same transaction.
                while points.len() < 65_536 {
                    match rx.try_recv() {
                        Ok(Msg::Write(more)) => points.extend(more),
                        Ok(other) => {
                            write(&mut *backend, &points, &mut failures);
                            points.clear();
                            if !answer(&mut *backend, settings, other) {
                                return;
                            }
                            break;
                        }
                        Err(_) => break,
                    }
                }
                write(&mut *backend, &points, &mut failures);
            }
            other => {
                if !answer(&mut *backend, settings, other) {
                    return;
                }
            }
        }
    }
}

fn write(backend: &mut dyn Backend, points: &[Point], failures: &mut u64) {
    if points.is_empty() {
        return;
    }
    match backend.write(points) {
        Ok(()) => *failures = 0,
        Err(e) => {
            *failures += 1;
            if *failures == 1 || failures.is_multiple_of(60) {
                tracing::warn!(error = %e, points = points.len(), failures = *failures,
                    "writing history failed; these samples are lost");
            }
        }
    }
}

/// Handles a query or close; false when the thread should stop.
fn answer(backend: &mut dyn Backend, settings: &Settings, msg: Msg) -> bool {
    match msg {
        Msg::Query(q, reply) => {
            let def = &SERIES[q.series];
            let plan = rollup::plan(
                &q,
                def.per_worker,
                unix_now(),
                settings.interval_s,
                &settings.retention,
            );
            let result = backend
                .read(q.series, &q.worker, &plan)
                .map(|rows| rollup::assemble(&q, &plan, rows))
                .map_err(HistoryError::Query);
            let _ = reply.send(result);
            true
        }
        Msg::Write(points) => {
            let mut f = 0;
            write(backend, &points, &mut f);
            true
        }
        Msg::Close => false,
    }
}
