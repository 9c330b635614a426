//! Schema, migrations and the startup read.
//!
//! The schema version lives in `PRAGMA user_version`; `MIGRATIONS[i]` takes
//! a database from version `i` to `i + 1`, each in its own transaction, so
//! an interrupted upgrade leaves a consistent older version behind. Only
//! append to the list: a released migration must never change.

use std::path::Path;

use rusqlite::Connection;

use super::{Recovered, RecoveredTask, RecoveredWorker, StoreError};

/// Marks the file as ours ("RMAC"), so an unrelated SQLite database is
/// refused instead of being written into.
const APPLICATION_ID: i64 = 0x524d_4143;

const MIGRATIONS: &[&str] = &[
    // 1: worker records as JSON. A rowid table: records are 1-2 KB, and
    //    SQLite stores rows that large poorly in WITHOUT ROWID b-trees
    //    (measured: about 3x the bytes on disk).
    "CREATE TABLE workers (
         worker_id TEXT PRIMARY KEY NOT NULL,
         record    TEXT NOT NULL
     );",
    // 2: coalesced heartbeat columns (so a heartbeat flush rewrites two
    //    small columns, not the whole record) and tasks.
    "ALTER TABLE workers ADD COLUMN last_heartbeat_us INTEGER;
     ALTER TABLE workers ADD COLUMN state TEXT;
     CREATE TABLE tasks (
         task_id   TEXT PRIMARY KEY NOT NULL,
         owner_key TEXT NOT NULL,
         body      TEXT NOT NULL
     );
     CREATE INDEX tasks_by_owner ON tasks (owner_key);",
    // 3: admin pins. Task rows now key their owner by queue key
    //    (`worker:<id>`, `service:<name>`, ...); rows of version 2 were an
    //    unreleased per-worker job list keyed by bare worker id, which no
    //    build reads, so they go. A worker's deletion no longer cascades to
    //    its tasks, so the owner index has no use either.
    "CREATE TABLE pins (
         pin_key TEXT PRIMARY KEY NOT NULL,
         workers TEXT NOT NULL
     );
     DELETE FROM tasks WHERE instr(owner_key, ':') = 0;
     DROP INDEX tasks_by_owner;",
];

/// The version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn err(path: &Path, e: rusqlite::Error) -> StoreError {
    super::classify(path, e)
}

/// Brings the database to [`SCHEMA_VERSION`].
pub(super) fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

/// Migrates up to `target` (tests build older versions with it).
pub(crate) fn migrate_to(conn: &Connection, path: &Path, target: i64) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| err(path, e))?;
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| err(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| err(path, e))?;
        if tables > 0 {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: "it holds tables but no coordinator schema version".into(),
            });
        }
    } else if app != APPLICATION_ID && app != 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("application_id is {app:#x}, not a coordinator database"),
        });
    }
    for v in version..target {
        let step = || -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(MIGRATIONS[v as usize])?;
            tx.pragma_update(None, "user_version", v + 1)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.commit()
        };
        step().map_err(|e| err(path, e))?;
        tracing::info!(db = %path.display(), from = v, to = v + 1, "database schema migrated");
    }
    Ok(())
}

/// Reads every worker and task (tasks in first-insertion order).
pub(super) fn read_all(conn: &Connection) -> rusqlite::Result<Recovered> {
    let mut out = Recovered::default();
    let mut stmt =
        conn.prepare("SELECT worker_id, record, last_heartbeat_us, state FROM workers")?;
    let rows = stmt.query_map([], |r| {
        Ok(RecoveredWorker {
            id: r.get(0)?,
            record: r.get(1)?,
            heartbeat_us: r.get(2)?,
            state: r.get(3)?,
        })
    })?;
    for w in rows {
        out.workers.push(w?);
    }
    let mut stmt = conn.prepare("SELECT task_id, owner_key, body FROM tasks ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| {
        Ok(RecoveredTask {
            id: r.get(0)?,
            owner_key: r.get(1)?,
            body: r.get(2)?,
        })
    })?;
    for t in rows {
        out.tasks.push(t?);
    }
    let mut stmt = conn.prepare("SELECT pin_key, workers FROM pins ORDER BY pin_key")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    for p in rows {
        out.pins.push(p?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_version_1_database_keeping_its_rows() {
        let conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        migrate_to(&conn, path, 1).unwrap();
        conn.execute(
            "INSERT INTO workers (worker_id, record) VALUES ('w1', '{}')",
            [],
        )
        .unwrap();
        migrate(&conn, path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let rec = read_all(&conn).unwrap();
        assert_eq!(rec.workers.len(), 1);
        assert_eq!(rec.workers[0].heartbeat_us, None);
        // Migrating again is a no-op.
        migrate(&conn, path).unwrap();
    }

    #[test]
    fn version_2_job_rows_are_dropped_and_task_rows_kept() {
        let conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        migrate_to(&conn, path, 2).unwrap();
        conn.execute_batch(
            "INSERT INTO tasks (task_id, owner_key, body) VALUES
                 ('job-1', 'w1', '{}'), ('t-1', 'worker:w1', '{}'), ('t-2', 'service:s', '{}')",
        )
        .unwrap();
        migrate(&conn, path).unwrap();
        let rec = read_all(&conn).unwrap();
        let ids: Vec<_> = rec.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t-1", "t-2"]);
        assert!(rec.pins.is_empty());
    }

    #[test]
    fn refuses_newer_and_foreign_databases() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let e = migrate(&conn, Path::new("x.db")).unwrap_err();
        assert!(
            matches!(e, StoreError::NewerSchema { found: 99, .. }),
            "{e}"
        );

        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE other (x)").unwrap();
        let e = migrate(&conn, Path::new("x.db")).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    }
}
