//! Worker records <-> database rows.
//!
//! A row holds everything needed to rebuild a `WorkerRecord` except
//! `last_seen`, an
//! `Instant` that means nothing in another process: it is rebuilt from the
//! wall-clock time of the last heartbeat, so a worker that was silent for 50
//! s before a restart is still 50 s old after it and liveness carries on.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{Op, RecoveredWorker};
use crate::model::worker::{declared_of, empty_object, Assigned, ReportedState, WorkerRecord};
use crate::model::{Catalog, WorkerType};

/// Microseconds since the Unix epoch (negative before it).
pub(crate) fn to_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_micros().min(i64::MAX as u128) as i64),
    }
}

pub(crate) fn from_us(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

#[derive(Serialize)]
struct RowRef<'a> {
    worker_id: &'a str,
    worker_type: WorkerType,
    tier: u8,
    tunnel_url: Option<&'a str>,
    ip_address: Option<&'a str>,
    capabilities: &'a RawValue,
    services: Option<&'a RawValue>,
    containers: Option<&'a RawValue>,
    /// Names: the catalog entries are looked up again on restore.
    assigned_services: Assigned<'a, &'static str>,
    registered_at_us: i64,
    last_heartbeat_us: i64,
    state: &'a ReportedState,
    tasks_completed: u64,
    drained: bool,
}

#[derive(Deserialize)]
struct Row {
    worker_id: String,
    worker_type: WorkerType,
    tier: u8,
    #[serde(default)]
    tunnel_url: Option<String>,
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(default)]
    capabilities: Option<Box<RawValue>>,
    #[serde(default)]
    services: Option<Box<RawValue>>,
    #[serde(default)]
    containers: Option<Box<RawValue>>,
    #[serde(default)]
    assigned_services: Vec<String>,
    registered_at_us: i64,
    last_heartbeat_us: i64,
    #[serde(default)]
    state: ReportedState,
    #[serde(default)]
    tasks_completed: u64,
    #[serde(default)]
    drained: bool,
}

fn state_json(st: &ReportedState) -> String {
    serde_json::to_string(st).unwrap_or_else(|_| "{}".into())
}

/// The operation that stores `rec` (insert or replace).
pub(crate) fn put_op(rec: &WorkerRecord) -> Op {
    let row = RowRef {
        worker_id: &rec.worker_id,
        worker_type: rec.worker_type,
        tier: rec.tier,
        tunnel_url: rec.tunnel_url.as_deref(),
        ip_address: rec.ip_address.as_deref(),
        capabilities: &rec.capabilities,
        services: rec.services.as_deref(),
        containers: rec.containers.as_deref(),
        assigned_services: Assigned(&rec.assigned, |s| s.name.as_str()),
        registered_at_us: to_us(rec.registered_at),
        last_heartbeat_us: to_us(rec.last_heartbeat_at),
        state: &rec.state,
        tasks_completed: rec.tasks_completed,
        drained: rec.drained,
    };
    Op::PutWorker {
        id: rec.worker_id.clone(),
        // Plain data: serialising into a String cannot fail.
        record: serde_json::to_string(&row).unwrap_or_default(),
        heartbeat_us: to_us(rec.last_heartbeat_at),
        state: state_json(&rec.state),
    }
}

/// The coalesced heartbeat of `rec`: its last heartbeat time and state.
pub(crate) fn heartbeat_op(rec: &WorkerRecord) -> Op {
    Op::Heartbeat {
        id: rec.worker_id.clone(),
        heartbeat_us: to_us(rec.last_heartbeat_at),
        state: state_json(&rec.state),
    }
}

/// A stored list (`services`, `containers`): its items, and its JSON text
/// kept as it is (not encoded again) unless absent, null or empty, which a
/// record holds as `None`.
fn stored_list<T: DeserializeOwned>(
    raw: Option<Box<RawValue>>,
    field: &str,
    id: &str,
) -> Result<(Vec<T>, Option<Box<RawValue>>), String> {
    let Some(raw) = raw else {
        return Ok((Vec::new(), None));
    };
    let items = serde_json::from_str::<Option<Vec<T>>>(raw.get())
        .map_err(|e| format!("{field} of worker {id:?} cannot be decoded: {e}"))?
        .unwrap_or_default();
    let raw = (!items.is_empty()).then_some(raw);
    Ok((items, raw))
}

/// Wall-clock age of a heartbeat at `wall` (zero if the clock went back).
pub(crate) fn age_at(last_heartbeat: SystemTime, wall: SystemTime) -> Duration {
    wall.duration_since(last_heartbeat).unwrap_or_default()
}

/// Rebuilds a record. `last_seen` is placed `age` before `now`, where age
/// is the wall-clock time since the last heartbeat. Only if the machine
/// booted more recently than that (the monotonic clock cannot go back that
/// far) does the worker count from `now`; callers drop workers older than
/// the removal timeout before that can matter.
/// Assigned services are looked up in `catalog` by name; one the catalog
/// no longer has is dropped from the record.
pub(crate) fn restore(
    w: &RecoveredWorker,
    now: Instant,
    wall: SystemTime,
    catalog: &'static Catalog,
) -> Result<WorkerRecord, String> {
    let row: Row = serde_json::from_str(&w.record)
        .map_err(|e| format!("worker row {:?} cannot be decoded: {e}", w.id))?;
    if row.worker_id != w.id {
        return Err(format!(
            "worker row {:?} holds the record of {:?}",
            w.id, row.worker_id
        ));
    }
    let state = match &w.state {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| format!("state of worker {:?} cannot be decoded: {e}", w.id))?,
        None => row.state,
    };
    let last_heartbeat_at = from_us(w.heartbeat_us.unwrap_or(row.last_heartbeat_us));
    let age = age_at(last_heartbeat_at, wall);
    let (services, services_raw) = stored_list::<Value>(row.services, "services", &w.id)?;
    let (_, containers) = stored_list::<IgnoredAny>(row.containers, "containers", &w.id)?;
    let capabilities = match row.capabilities {
        Some(c) if c.get().starts_with('{') => c,
        _ => empty_object(),
    };
    Ok(WorkerRecord {
        worker_id: row.worker_id,
        worker_type: row.worker_type,
        tier: row.tier,
        tunnel_url: row.tunnel_url,
        ip_address: row.ip_address,
        capabilities,
        declared: declared_of(&services),
        services: services_raw,
        containers,
        assigned: row
            .assigned_services
            .iter()
            .filter_map(|n| catalog.resolve(n))
            .collect(),
        registered_at: from_us(row.registered_at_us),
        last_heartbeat_at,
        last_seen: now.checked_sub(age).unwrap_or(now),
        state,
        tasks_completed: row.tasks_completed,
        drained: row.drained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::worker::raw_list;

    #[test]
    fn microseconds_round_trip() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_930_600_123_456);
        assert_eq!(from_us(to_us(t)), t);
        let before = UNIX_EPOCH - Duration::from_micros(5);
        assert_eq!(from_us(to_us(before)), before);
    }

    #[test]
    fn record_round_trips_and_keeps_its_age() {
        // Rows keep microseconds, as the wire timestamps do.
        let wall = from_us(to_us(SystemTime::now()));
        let now = Instant::now();
        let catalog = Catalog::builtin();
        let rec = WorkerRecord {
            worker_id: "w1".into(),
            worker_type: WorkerType::Gpu,
            tier: 1,
            tunnel_url: Some("http://w1".into()),
            ip_address: None,
            capabilities: RawValue::from_string(r#"{"has_gpu":true}"#.into()).unwrap(),
            declared: declared_of(&[serde_json::json!({"name": "x", "port": 9})]),
            services: raw_list(&[serde_json::json!({"name": "x", "port": 9})]),
            containers: None,
            assigned: catalog.services()[..1].iter().collect(),
            registered_at: wall - Duration::from_secs(100),
            last_heartbeat_at: wall - Duration::from_secs(40),
            last_seen: now,
            state: ReportedState {
                status: "busy".into(),
                current_load: 0.5,
                ..Default::default()
            },
            tasks_completed: 3,
            drained: false,
        };
        let Op::PutWorker {
            id,
            record,
            heartbeat_us,
            state,
        } = put_op(&rec)
        else {
            panic!("put_op must give PutWorker")
        };
        let row = RecoveredWorker {
            id,
            record,
            heartbeat_us: Some(heartbeat_us),
            state: Some(state),
        };
        let back = restore(&row, now, wall, catalog).unwrap();
        assert_eq!(back.worker_id, "w1");
        assert_eq!(back.tier, 1);
        assert_eq!(back.last_heartbeat_at, rec.last_heartbeat_at);
        assert_eq!(back.registered_at, rec.registered_at);
        assert_eq!(back.state.status, "busy");
        assert_eq!(back.assigned, rec.assigned);
        assert_eq!(back.declared, rec.declared);
        assert_eq!(back.port_of("x"), Some(9));
        assert_eq!(back.capabilities.get(), rec.capabilities.get());
        assert_eq!(back.tasks_completed, 3);
        let age = back.age(now);
        assert!(
            age >= Duration::from_secs(40) && age < Duration::from_secs(41),
            "{age:?}"
        );
        // A newer coalesced heartbeat column wins over the record's copy.
        let newer = RecoveredWorker {
            heartbeat_us: Some(to_us(wall)),
            state: Some("{\"status\":\"idle\"}".into()),
            ..row
        };
        let back = restore(&newer, now, wall, catalog).unwrap();
        assert_eq!(back.state.status, "idle");
        assert!(back.age(now) < Duration::from_secs(1));
    }

    #[test]
    fn a_row_of_an_earlier_build_loads_its_services_from_the_catalog() {
        // Rows of earlier builds kept copies of each assigned service's
        // config and container (env then always `{}`); records now refer to
        // the catalog entries by name, and a name the catalog no longer has
        // is dropped.
        let record = r#"{"worker_id":"w2","worker_type":"cpu","tier":2,
            "assigned_services":["notes-coa","gone-service"],
            "service_configs":[{"name":"notes-coa","port":8100,"priority":1}],
            "assigned_containers":[{"name":"notes-coa","image":"rma/notes-coa:latest","port":8100,"env":{}}],
            "capabilities":{"cpu_cores":4},"services":[],
            "registered_at_us":0,"last_heartbeat_us":0}"#;
        let row = RecoveredWorker {
            id: "w2".into(),
            record: record.into(),
            heartbeat_us: None,
            state: None,
        };
        let catalog = Catalog::builtin();
        let back = restore(&row, Instant::now(), SystemTime::now(), catalog).unwrap();
        let names: Vec<&str> = back.assigned_services().collect();
        assert_eq!(names, ["notes-coa"]);
        assert_eq!(
            back.port_of("notes-coa"),
            catalog.resolve("notes-coa").map(|s| s.port)
        );
        assert_eq!(back.capabilities.get(), r#"{"cpu_cores":4}"#);
        assert!(back.services.is_none() && back.declared.is_empty());
    }

    #[test]
    fn undecodable_rows_are_errors() {
        let row = RecoveredWorker {
            id: "w".into(),
            record: "not json".into(),
            heartbeat_us: None,
            state: None,
        };
        let e = restore(&row, Instant::now(), SystemTime::now(), Catalog::builtin()).unwrap_err();
        assert!(e.contains("\"w\""), "{e}");
    }
}
