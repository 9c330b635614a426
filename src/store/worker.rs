//! Worker records <-> database rows.
//!
//! A row holds everything needed to rebuild a `WorkerRecord` except
//! `last_seen`, an
//! `Instant` that means nothing in another process: it is rebuilt from the
//! wall-clock time of the last heartbeat, so a worker that was silent for 50
//! s before a restart is still 50 s old after it and liveness carries on.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Op, RecoveredWorker};
use crate::model::worker::{ContainerConfig, ReportedState, ServiceConfig, WorkerRecord};
use crate::model::WorkerType;

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
    capabilities: &'a Map<String, Value>,
    services: &'a [Value],
    containers: &'a [Value],
    assigned_services: &'a [String],
    service_configs: &'a [ServiceConfig],
    assigned_containers: &'a [ContainerConfig],
    registered_at_us: i64,
    last_heartbeat_us: i64,
    state: &'a ReportedState,
    tasks_completed: u64,
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
    capabilities: Map<String, Value>,
    #[serde(default)]
    services: Vec<Value>,
    #[serde(default)]
    containers: Vec<Value>,
    #[serde(default)]
    assigned_services: Vec<String>,
    #[serde(default)]
    service_configs: Vec<ServiceConfig>,
    #[serde(default)]
    assigned_containers: Vec<ContainerConfig>,
    registered_at_us: i64,
    last_heartbeat_us: i64,
    #[serde(default)]
    state: ReportedState,
    #[serde(default)]
    tasks_completed: u64,
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
        services: &rec.services,
        containers: &rec.containers,
        assigned_services: &rec.assigned_services,
        service_configs: &rec.service_configs,
        assigned_containers: &rec.assigned_containers,
        registered_at_us: to_us(rec.registered_at),
        last_heartbeat_us: to_us(rec.last_heartbeat_at),
        state: &rec.state,
        tasks_completed: rec.tasks_completed,
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

/// Wall-clock age of a heartbeat at `wall` (zero if the clock went back).
pub(crate) fn age_at(last_heartbeat: SystemTime, wall: SystemTime) -> Duration {
    wall.duration_since(last_heartbeat).unwrap_or_default()
}

/// Rebuilds a record. `last_seen` is placed `age` before `now`, where age
/// is the wall-clock time since the last heartbeat. Only if the machine
/// booted more recently than that (the monotonic clock cannot go back that
/// far) does the worker count from `now`; callers drop workers older than
/// the removal timeout before that can matter.
pub(crate) fn restore(
    w: &RecoveredWorker,
    now: Instant,
    wall: SystemTime,
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
    Ok(WorkerRecord {
        worker_id: row.worker_id,
        worker_type: row.worker_type,
        tier: row.tier,
        tunnel_url: row.tunnel_url,
        ip_address: row.ip_address,
        capabilities: row.capabilities,
        services: row.services,
        containers: row.containers,
        assigned_services: row.assigned_services,
        service_configs: row.service_configs,
        assigned_containers: row.assigned_containers,
        registered_at: from_us(row.registered_at_us),
        last_heartbeat_at,
        last_seen: now.checked_sub(age).unwrap_or(now),
        state,
        tasks_completed: row.tasks_completed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut caps = Map::new();
        caps.insert("has_gpu".into(), Value::Bool(true));
        let rec = WorkerRecord {
            worker_id: "w1".into(),
            worker_type: WorkerType::Gpu,
            tier: 1,
            tunnel_url: Some("http://w1".into()),
            ip_address: None,
            capabilities: caps,
            services: vec![serde_json::json!({"name": "x"})],
            containers: vec![],
            assigned_services: vec!["llm-inference".into()],
            service_configs: vec![ServiceConfig {
                name: "llm-inference".into(),
                port: 8105,
                priority: 1,
            }],
            assigned_containers: vec![],
            registered_at: wall - Duration::from_secs(100),
            last_heartbeat_at: wall - Duration::from_secs(40),
            last_seen: now,
            state: ReportedState {
                status: "busy".into(),
                current_load: 0.5,
                ..Default::default()
            },
            tasks_completed: 3,
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
        let back = restore(&row, now, wall).unwrap();
        assert_eq!(back.worker_id, "w1");
        assert_eq!(back.tier, 1);
        assert_eq!(back.last_heartbeat_at, rec.last_heartbeat_at);
        assert_eq!(back.registered_at, rec.registered_at);
        assert_eq!(back.state.status, "busy");
        assert_eq!(back.service_configs, rec.service_configs);
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
        let back = restore(&newer, now, wall).unwrap();
        assert_eq!(back.state.status, "idle");
        assert!(back.age(now) < Duration::from_secs(1));
    }

    #[test]
    fn a_row_written_with_container_env_loads_without_it() {
        // Rows of earlier builds kept each container's env (then always
        // `{}`); records now keep none, the catalog's templates give it.
        let record = r#"{"worker_id":"w2","worker_type":"cpu","tier":2,
            "assigned_containers":[{"name":"notes-coa","image":"rma/notes-coa:latest","port":8100,"env":{}}],
            "registered_at_us":0,"last_heartbeat_us":0}"#;
        let row = RecoveredWorker {
            id: "w2".into(),
            record: record.into(),
            heartbeat_us: None,
            state: None,
        };
        let back = restore(&row, Instant::now(), SystemTime::now()).unwrap();
        assert_eq!(
            back.assigned_containers,
            [ContainerConfig {
                name: "notes-coa".into(),
                image: "rma/notes-coa:latest".into(),
                port: 8100,
            }]
        );
    }

    #[test]
    fn undecodable_rows_are_errors() {
        let row = RecoveredWorker {
            id: "w".into(),
            record: "not json".into(),
            heartbeat_us: None,
            state: None,
        };
        let e = restore(&row, Instant::now(), SystemTime::now()).unwrap_err();
        assert!(e.contains("\"w\""), "{e}");
    }
}
