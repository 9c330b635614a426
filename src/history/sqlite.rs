//! Samples in SQLite: one row per line, tier and bucket.
//!
//! Rows of a line sit together (`PRIMARY KEY (series, tier, ts)`, WITHOUT
//! ROWID), so reading a line's range is one index range scan and pruning
//! is one range delete per line and tier. A raw row stores only `last`
//! (min, max, sum and n are NULL, one header byte each): most rows are
//! raw. SQLite writes whole-number REALs as integers, so counts are small.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::rollup::{bucket, Agg, Plan, Retention, Row, Tier};
use super::series::SERIES;
use super::thread::Backend;
use super::{HistoryError, Point};

/// Marks the file as a coordinator history database ("RMAH").
const APPLICATION_ID: i64 = 0x524d_4148;
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id     INTEGER PRIMARY KEY,
    name   TEXT NOT NULL,
    worker TEXT NOT NULL,
    label  TEXT NOT NULL,
    UNIQUE (name, worker, label)
);
CREATE TABLE IF NOT EXISTS samples (
    series INTEGER NOT NULL,
    tier   INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    min    REAL,
    max    REAL,
    sum    REAL,
    n      INTEGER,
    last   REAL NOT NULL,
    PRIMARY KEY (series, tier, ts)
) WITHOUT ROWID;
";

/// Series ids remembered at most; past that the cache starts over (ids
/// are looked up again, nothing is lost).
const MAX_CACHED: usize = 1_000_000;

pub struct Sqlite {
    conn: Connection,
    ids: HashMap<(u8, String, String), i64, ahash::RandomState>,
}

fn open_err(path: &Path, e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl Sqlite {
    /// Opens (creating it and its directory) and locks the file.
    pub fn open(path: &Path) -> Result<Sqlite, HistoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(path, e))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(path, e))?;
        let setup = || -> rusqlite::Result<(i64, i64)> {
            conn.busy_timeout(Duration::from_millis(250))?;
            // As for the state database: a second coordinator on the same
            // file fails at startup.
            let _: String =
                conn.pragma_update_and_check(None, "locking_mode", "EXCLUSIVE", |r| r.get(0))?;
            let _: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            // Best effort: survives kill -9, not necessarily power loss.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // A small page cache (SQLite's default is 2 MiB): writes go to
            // the right edge of each line's rows and queries are rare, and
            // the OS page cache holds the file anyway; the coordinator's
            // memory stays flat instead of growing by this much.
            conn.pragma_update(None, "cache_size", -512)?;
            conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")?;
            let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let app = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
            Ok((version, app))
        };
        let (version, app) = setup().map_err(|e| open_err(path, e))?;
        if app != 0 && app != APPLICATION_ID {
            return Err(open_err(
                path,
                format!("application_id is {app:#x}, not a coordinator history database"),
            ));
        }
        if version > SCHEMA_VERSION {
            return Err(open_err(
                path,
                format!(
                "schema version {version} is newer than this binary supports ({SCHEMA_VERSION})"
            ),
            ));
        }
        conn.execute_batch(SCHEMA).map_err(|e| open_err(path, e))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .and_then(|_| conn.pragma_update(None, "application_id", APPLICATION_ID))
            .map_err(|e| open_err(path, e))?;
        Ok(Sqlite {
            conn,
            ids: HashMap::default(),
        })
    }

    fn series_id(
        conn: &Connection,
        ids: &mut HashMap<(u8, String, String), i64, ahash::RandomState>,
        p: &Point,
    ) -> rusqlite::Result<i64> {
        let key = (p.series, p.worker.clone(), p.label.clone());
        if let Some(id) = ids.get(&key) {
            return Ok(*id);
        }
        let name = SERIES[p.series as usize].name;
        conn.prepare_cached(
            "INSERT OR IGNORE INTO series (name, worker, label) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![name, p.worker, p.label])?;
        let id = conn
            .prepare_cached("SELECT id FROM series WHERE name = ?1 AND worker = ?2 AND label = ?3")?
            .query_row(params![name, p.worker, p.label], |r| r.get(0))?;
        if ids.len() >= MAX_CACHED {
            ids.clear();
        }
        ids.insert(key, id);
        Ok(id)
    }
}

impl Backend for Sqlite {
    fn write(&mut self, points: &[Point]) -> Result<(), String> {
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        let result = (|| -> rusqlite::Result<()> {
            let mut raw = tx.prepare_cached(
                "INSERT OR REPLACE INTO samples (series, tier, ts, last) VALUES (?1, 0, ?2, ?3)",
            )?;
            let mut roll = tx.prepare_cached(
                "INSERT INTO samples (series, tier, ts, min, max, sum, n, last)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?4, 1, ?4)
                 ON CONFLICT (series, tier, ts) DO UPDATE SET
                     min = min(samples.min, excluded.min), max = max(samples.max, excluded.max),
                     sum = samples.sum + excluded.sum, n = samples.n + 1, last = excluded.last",
            )?;
            for p in points {
                let id = Self::series_id(&tx, &mut self.ids, p)?;
                if !SERIES[p.series as usize].per_worker {
                    raw.execute(params![id, p.ts, p.value])?;
                }
                roll.execute(params![id, Tier::Minute as i64, bucket(p.ts, 60), p.value])?;
                roll.execute(params![id, Tier::Hour as i64, bucket(p.ts, 3600), p.value])?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => tx.commit().map_err(|e| e.to_string()),
            Err(e) => {
                // The cache may name series rows the rollback removed.
                self.ids.clear();
                Err(e.to_string())
            }
        }
    }

    fn prune(&mut self, now: i64, keep: &Retention) -> Result<(), String> {
        let mut run = || -> rusqlite::Result<usize> {
            let tx = self.conn.transaction()?;
            let ids: Vec<(i64, bool)> = {
                let mut stmt = tx.prepare("SELECT id, worker != '' FROM series")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut deleted = 0;
            {
                let mut del = tx.prepare_cached(
                    "DELETE FROM samples WHERE series = ?1 AND tier = ?2 AND ts < ?3",
                )?;
                for (id, per_worker) in &ids {
                    for t in Tier::ALL {
                        let horizon = now - keep.of(t, *per_worker);
                        deleted += del.execute(params![id, t as i64, horizon])?;
                    }
                }
            }
            let gone = tx.execute(
                "DELETE FROM series WHERE NOT EXISTS
                     (SELECT 1 FROM samples WHERE samples.series = series.id)",
                [],
            )?;
            tx.commit()?;
            if deleted + gone > 0 {
                tracing::debug!(samples = deleted, series = gone, "history pruned");
            }
            Ok(gone)
        };
        let gone = run().map_err(|e| e.to_string())?;
        if gone > 0 {
            self.ids.clear();
        }
        Ok(())
    }

    fn read(&mut self, series: usize, worker: &str, plan: &Plan) -> Result<Vec<Row>, String> {
        let run = || -> rusqlite::Result<Vec<Row>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT s.label, x.ts, x.min, x.max, x.sum, x.n, x.last
                 FROM series s JOIN samples x ON x.series = s.id
                 WHERE s.name = ?1 AND s.worker = ?2 AND x.tier = ?3 AND x.ts BETWEEN ?4 AND ?5",
            )?;
            let rows = stmt.query_map(
                params![
                    SERIES[series].name,
                    worker,
                    plan.tier as i64,
                    plan.start,
                    plan.end
                ],
                |r| {
                    let last: f64 = r.get(6)?;
                    let min: Option<f64> = r.get(2)?;
                    let agg = match min {
                        None => Agg::one(last),
                        Some(min) => Agg {
                            min,
                            max: r.get::<_, Option<f64>>(3)?.unwrap_or(last),
                            sum: r.get::<_, Option<f64>>(4)?.unwrap_or(last),
                            n: r.get::<_, Option<u32>>(5)?.unwrap_or(1),
                            last,
                        },
                    };
                    Ok(Row {
                        label: r.get(0)?,
                        ts: r.get(1)?,
                        agg,
                    })
                },
            )?;
            rows.collect()
        };
        run().map_err(|e| e.to_string())
    }
}

/// Bytes of the history file and its WAL.
pub fn disk_bytes(path: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::series::id;
    use super::*;

    #[test]
    fn writes_roll_up_survive_reopen_and_prune() {
        let dir = std::env::temp_dir().join(format!("coord-history-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        let mut db = Sqlite::open(&path).unwrap();
        let p = |series, label: &str, worker: &str, ts, value| Point {
            series,
            label: label.into(),
            worker: worker.into(),
            ts,
            value,
        };
        let mut pts: Vec<Point> = (0..12)
            .map(|i| p(id::REQUESTS, "all", "", 600 + i * 10, i as f64))
            .collect();
        pts.push(p(id::WORKER_LOAD, "", "w1", 610, 0.25));
        pts.push(p(id::WORKER_LOAD, "", "w1", 640, 0.75));
        db.write(&pts).unwrap();
        drop(db);
        // A second open of a file in use is refused; after close it opens.
        let mut db = Sqlite::open(&path).unwrap();
        assert!(Sqlite::open(&path).is_err());
        let plan = |tier, start, end| Plan {
            tier,
            step: 60,
            start,
            end,
        };
        let raw = db
            .read(id::REQUESTS as usize, "", &plan(Tier::Raw, 0, 10_000))
            .unwrap();
        assert_eq!(raw.len(), 12);
        let min = db
            .read(id::REQUESTS as usize, "", &plan(Tier::Minute, 0, 10_000))
            .unwrap();
        assert_eq!(min.len(), 2);
        let a = min.iter().find(|r| r.ts == 600).unwrap().agg;
        assert_eq!((a.min, a.max, a.n, a.last), (0.0, 5.0, 6, 5.0));
        let w = db
            .read(
                id::WORKER_LOAD as usize,
                "w1",
                &plan(Tier::Minute, 0, 10_000),
            )
            .unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].agg.avg(), 0.5);
        assert!(db
            .read(id::WORKER_LOAD as usize, "w1", &plan(Tier::Raw, 0, 10_000))
            .unwrap()
            .is_empty());
        // Everything is older than a day of raw retention 10 days later;
        // minutes and hours stay.
        db.prune(10 * 86_400, &Retention::default()).unwrap();
        assert!(db
            .read(id::REQUESTS as usize, "", &plan(Tier::Raw, 0, 10_000))
            .unwrap()
            .is_empty());
        assert_eq!(
            db.read(id::REQUESTS as usize, "", &plan(Tier::Hour, 0, 10_000))
                .unwrap()
                .len(),
            1
        );
        // Past every retention the series rows go too.
        db.prune(1000 * 86_400, &Retention::default()).unwrap();
        let n: i64 = db
            .conn
            .query_row("SELECT count(*) FROM series", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // And new samples make new series.
        db.write(&[p(id::TASKS, "queued", "", 5, 1.0)]).unwrap();
        assert!(disk_bytes(&path) > 0);
    }

    /// Disk bytes of one day of history at 1,000 workers with the default
    /// intervals (pool every 10 s, each worker every 60 s), written through
    /// the real storage format. Run by hand:
    /// `cargo test --release --lib history_disk_per_day -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn history_disk_per_day() {
        let dir = std::env::temp_dir().join(format!("coord-history-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let day = 86_400i64;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let measure = |name: &str, points: &mut dyn FnMut(i64) -> Vec<Point>, every: i64| {
            let path = dir.join(format!("{name}.db"));
            let mut db = Sqlite::open(&path).unwrap();
            let started = std::time::Instant::now();
            let mut n = 0usize;
            for ts in (0..day).step_by(every as usize) {
                let pts = points(ts);
                n += pts.len();
                db.write(&pts).unwrap();
            }
            db.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            let bytes = disk_bytes(&path);
            println!(
                "{name}: {n} samples in {:.1} s, {:.1} MB on disk, {:.1} bytes per sample",
                started.elapsed().as_secs_f64(),
                bytes as f64 / 1e6,
                bytes as f64 / n as f64
            );
            bytes
        };
        // About 60 pool lines: statuses, tiers, ~30 services, 5 routes x 3
        // series, task states, upstream, completions.
        let mut pool = |ts: i64| {
            let mut v = Vec::new();
            for (series, labels) in [
                (id::WORKERS, 3),
                (id::HEALTHY_BY_TIER, 4),
                (id::SERVICE_HEALTHY, 30),
                (id::REQUESTS, 6),
                (id::LATENCY_P50, 6),
                (id::LATENCY_P99, 6),
                (id::TASKS, 5),
                (id::UPSTREAM_P50, 1),
                (id::UPSTREAM_P99, 1),
                (id::UPSTREAM_REQUESTS, 1),
                (id::TASK_COMPLETIONS, 1),
            ] {
                for l in 0..labels {
                    let value = match series {
                        id::WORKERS | id::HEALTHY_BY_TIER | id::SERVICE_HEALTHY | id::TASKS => {
                            250.0
                        }
                        _ => (rand() * 1000.0).round() / 10.0,
                    };
                    v.push(Point {
                        series,
                        label: format!("l{l}"),
                        worker: String::new(),
                        ts,
                        value,
                    });
                }
            }
            v
        };
        let pool_bytes = measure("pool", &mut pool, 10);
        let mut workers = |ts: i64| {
            let mut v = Vec::with_capacity(2000);
            for w in 0..1000 {
                let worker = format!("worker-{w:04}");
                v.push(Point {
                    series: id::WORKER_LOAD,
                    label: String::new(),
                    worker: worker.clone(),
                    ts,
                    value: (rand() * 100.0).round() / 100.0,
                });
                v.push(Point {
                    series: id::WORKER_ACTIVE,
                    label: String::new(),
                    worker,
                    ts,
                    value: (rand() * 4.0).floor(),
                });
            }
            v
        };
        let worker_bytes = measure("workers", &mut workers, 60);
        println!(
            "one day at 1,000 workers: {:.1} MB ({:.1} MB pool, {:.1} MB per-worker)",
            (pool_bytes + worker_bytes) as f64 / 1e6,
            pool_bytes as f64 / 1e6,
            worker_bytes as f64 / 1e6
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
