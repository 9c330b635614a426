//! One shard's slice of the worker registry.
//!
//! Owns the records of the workers whose id hashes to this shard, the
//! service -> workers index for them, and their pending jobs. It is a plain
//! data structure: no IO, no async, no knowledge of other shards; the shard
//! wraps it in a `RefCell` and never holds a borrow across an await.
//!
//! Invariant: `by_service[s]` contains `w` exactly when worker `w` is in
//! `workers` and `s` is one of `w.index_keys()`. Every mutation goes through
//! `insert` / `remove`, which maintain it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::time::iso8601;
use crate::model::wire::HeartbeatRequest;
use crate::model::WorkerType;

type Hasher = ahash::RandomState;

/// How liveness is judged.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Healthy only while the last heartbeat is younger than this.
    pub heartbeat_timeout: Duration,
    /// Removed once the last heartbeat is older than this.
    pub worker_timeout: Duration,
}

/// Reported statuses that mean "do not send work here" even when fresh.
const DOWN_STATUSES: [&str; 5] = ["unhealthy", "offline", "error", "stopping", "failed"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub port: u16,
    pub priority: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub port: u16,
    pub env: std::collections::BTreeMap<String, String>,
}

/// What the latest heartbeat said.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ReportedState {
    pub status: String,
    pub current_load: f64,
    pub available_memory: Option<String>,
    pub loaded_models: Vec<String>,
    pub active_requests: u64,
    pub gpu_utilization: Option<f64>,
    pub services_status: Map<String, Value>,
    pub specialization: Option<String>,
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub worker_type: WorkerType,
    pub tier: u8,
    pub tunnel_url: Option<String>,
    pub ip_address: Option<String>,
    pub capabilities: Map<String, Value>,
    pub services: Vec<Value>,
    pub containers: Vec<Value>,
    pub assigned_services: Vec<String>,
    pub service_configs: Vec<ServiceConfig>,
    pub assigned_containers: Vec<ContainerConfig>,
    pub registered_at: SystemTime,
    pub last_heartbeat_at: SystemTime,
    pub last_seen: Instant,
    pub state: ReportedState,
    pub pending: VecDeque<Value>,
    pub tasks_completed: u64,
}

impl WorkerRecord {
    /// Where to reach the worker: its tunnel if it has one, else its address.
    pub fn endpoint(&self) -> Option<&str> {
        self.tunnel_url
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(self.ip_address.as_deref())
    }

    /// Services this worker is indexed under: what it was assigned plus
    /// what it declared running (`services: [{name, ..}]` or `["name"]`).
    pub fn index_keys(&self) -> HashSet<&str> {
        let declared = self.services.iter().filter_map(|s| match s {
            Value::String(n) => Some(n.as_str()),
            Value::Object(o) => o.get("name").and_then(Value::as_str),
            _ => None,
        });
        self.assigned_services
            .iter()
            .map(String::as_str)
            .chain(declared)
            .collect()
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    /// Fresh heartbeat and not reporting itself down. Any other status
    /// string ("busy", "loading", ...) counts as healthy.
    pub fn is_healthy(&self, now: Instant, live: &Liveness) -> bool {
        self.age(now) <= live.heartbeat_timeout
            && !DOWN_STATUSES
                .iter()
                .any(|s| self.state.status.eq_ignore_ascii_case(s))
    }

    /// Serialises the full record (plus `age_seconds`/`is_healthy` for admin
    /// views) onto `out`.
    pub fn write_json(&self, out: &mut Vec<u8>, now: Instant, live: &Liveness, admin: bool) {
        let age = self.age(now);
        let view = WorkerView {
            worker_id: &self.worker_id,
            worker_type: self.worker_type,
            tier: self.tier,
            status: &self.state.status,
            tunnel_url: self.tunnel_url.as_deref(),
            ip_address: self.ip_address.as_deref(),
            endpoint: self.endpoint(),
            capabilities: &self.capabilities,
            services: &self.services,
            containers: &self.containers,
            assigned_services: &self.assigned_services,
            service_configs: &self.service_configs,
            assigned_containers: &self.assigned_containers,
            current_load: self.state.current_load,
            available_memory: self.state.available_memory.as_deref(),
            loaded_models: &self.state.loaded_models,
            active_requests: self.state.active_requests,
            gpu_utilization: self.state.gpu_utilization,
            services_status: &self.state.services_status,
            specialization: self.state.specialization.as_deref(),
            tasks_completed: self.tasks_completed,
            pending_tasks: self.pending.len(),
            registered_at: iso8601(self.registered_at),
            last_heartbeat: iso8601(self.last_heartbeat_at),
            age_seconds: admin.then_some(age.as_secs_f64()),
            is_healthy: admin.then(|| self.is_healthy(now, live)),
        };
        // Serialising a borrowed struct of plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &view);
    }
}

#[derive(Serialize)]
struct WorkerView<'a> {
    worker_id: &'a str,
    worker_type: WorkerType,
    tier: u8,
    status: &'a str,
    tunnel_url: Option<&'a str>,
    ip_address: Option<&'a str>,
    endpoint: Option<&'a str>,
    capabilities: &'a Map<String, Value>,
    services: &'a [Value],
    containers: &'a [Value],
    assigned_services: &'a [String],
    service_configs: &'a [ServiceConfig],
    assigned_containers: &'a [ContainerConfig],
    current_load: f64,
    available_memory: Option<&'a str>,
    loaded_models: &'a [String],
    active_requests: u64,
    gpu_utilization: Option<f64>,
    services_status: &'a Map<String, Value>,
    specialization: Option<&'a str>,
    tasks_completed: u64,
    pending_tasks: usize,
    registered_at: String,
    last_heartbeat: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_healthy: Option<bool>,
}

/// The shard-local registry.
#[derive(Debug, Default)]
pub struct Registry {
    workers: HashMap<String, WorkerRecord, Hasher>,
    by_service: HashMap<String, HashSet<String, Hasher>, Hasher>,
    tasks_completed: u64,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    pub fn tasks_completed(&self) -> u64 {
        self.tasks_completed
    }

    /// Service name -> ids of the workers indexed under it.
    pub fn service_index(&self) -> impl Iterator<Item = (&str, &HashSet<String, Hasher>)> {
        self.by_service.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Inserts or replaces a record; returns true when it replaced one.
    /// Pending jobs of a replaced record are kept: a re-registering agent
    /// has not received them yet.
    pub fn insert(&mut self, mut rec: WorkerRecord) -> bool {
        let old = self.remove(&rec.worker_id);
        let replaced = old.is_some();
        if let Some(old) = old {
            let mut pending = old.pending;
            pending.extend(rec.pending.drain(..));
            rec.pending = pending;
            rec.tasks_completed += old.tasks_completed;
        }
        for key in rec.index_keys() {
            self.by_service
                .entry(key.to_string())
                .or_default()
                .insert(rec.worker_id.clone());
        }
        self.workers.insert(rec.worker_id.clone(), rec);
        replaced
    }

    /// Puts back a record read from the database at startup, counting its
    /// completed tasks into the shard's total.
    pub fn restore(&mut self, rec: WorkerRecord) {
        self.tasks_completed += rec.tasks_completed;
        self.insert(rec);
    }

    /// Removes a worker and every index entry naming it.
    pub fn remove(&mut self, id: &str) -> Option<WorkerRecord> {
        let rec = self.workers.remove(id)?;
        for key in rec.index_keys() {
            if let Some(set) = self.by_service.get_mut(key) {
                set.remove(id);
                if set.is_empty() {
                    self.by_service.remove(key);
                }
            }
        }
        Some(rec)
    }

    /// Applies a heartbeat; false when the worker is unknown.
    pub fn heartbeat(&mut self, hb: HeartbeatRequest, now: Instant, wall: SystemTime) -> bool {
        let Some(rec) = self.workers.get_mut(&hb.worker_id) else {
            return false;
        };
        rec.last_seen = now;
        rec.last_heartbeat_at = wall;
        let st = &mut rec.state;
        st.status = hb.status.unwrap_or_else(|| "healthy".to_string());
        if let Some(v) = hb.current_load {
            st.current_load = v;
        }
        if let Some(v) = hb.available_memory {
            st.available_memory = Some(v);
        }
        if let Some(v) = hb.loaded_models {
            st.loaded_models = v;
        }
        if let Some(v) = hb.active_requests {
            st.active_requests = v;
        }
        if let Some(v) = hb.gpu_utilization {
            st.gpu_utilization = Some(v);
        }
        if let Some(v) = hb.services_status {
            st.services_status = v;
        }
        if let Some(v) = hb.specialization {
            st.specialization = Some(v);
        }
        true
    }

    /// Removes workers silent for longer than `worker_timeout`; returns their ids.
    pub fn sweep(&mut self, now: Instant, live: &Liveness) -> Vec<String> {
        let dead: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.age(now) > live.worker_timeout)
            .map(|w| w.worker_id.clone())
            .collect();
        for id in &dead {
            self.remove(id);
        }
        dead
    }

    /// Queues a job for a worker; false when unknown.
    pub fn push_job(&mut self, id: &str, job: Value) -> bool {
        match self.workers.get_mut(id) {
            Some(w) => {
                w.pending.push_back(job);
                true
            }
            None => false,
        }
    }

    /// Takes every pending job of a worker; None when unknown.
    pub fn take_jobs(&mut self, id: &str) -> Option<Vec<Value>> {
        self.workers
            .get_mut(id)
            .map(|w| w.pending.drain(..).collect())
    }

    /// Counts a completed task; false when the worker is unknown.
    pub fn complete_task(&mut self, id: &str) -> bool {
        match self.workers.get_mut(id) {
            Some(w) => {
                w.tasks_completed += 1;
                self.tasks_completed += 1;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str, assigned: &[&str]) -> WorkerRecord {
        let now = SystemTime::now();
        WorkerRecord {
            worker_id: id.to_string(),
            worker_type: WorkerType::Cpu,
            tier: 2,
            tunnel_url: None,
            ip_address: Some("127.0.0.1".into()),
            capabilities: Map::new(),
            services: vec![],
            containers: vec![],
            assigned_services: assigned.iter().map(|s| s.to_string()).collect(),
            service_configs: vec![],
            assigned_containers: vec![],
            registered_at: now,
            last_heartbeat_at: now,
            last_seen: Instant::now(),
            state: ReportedState {
                status: "healthy".into(),
                ..Default::default()
            },
            pending: VecDeque::new(),
            tasks_completed: 0,
        }
    }

    fn index(reg: &Registry) -> Vec<(String, Vec<String>)> {
        let mut v: Vec<(String, Vec<String>)> = reg
            .service_index()
            .map(|(k, set)| {
                let mut ids: Vec<String> = set.iter().cloned().collect();
                ids.sort();
                (k.to_string(), ids)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn reregister_replaces_index_entries() {
        let mut reg = Registry::default();
        assert!(!reg.insert(record("w1", &["a", "b"])));
        assert!(reg.insert(record("w1", &["c"])));
        assert_eq!(index(&reg), vec![("c".to_string(), vec!["w1".to_string()])]);
        reg.remove("w1");
        assert!(index(&reg).is_empty());
    }

    #[test]
    fn declared_services_are_indexed_too() {
        let mut reg = Registry::default();
        let mut r = record("w1", &["a"]);
        r.services = vec![
            serde_json::json!({"name": "x", "port": 1}),
            Value::from("y"),
        ];
        reg.insert(r);
        let keys: Vec<String> = index(&reg).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["a", "x", "y"]);
    }

    #[test]
    fn sweep_removes_only_expired() {
        let mut reg = Registry::default();
        let mut old = record("old", &["a"]);
        let now = Instant::now();
        old.last_seen = now - Duration::from_secs(10);
        reg.insert(old);
        reg.insert(record("new", &["a"]));
        let live = Liveness {
            heartbeat_timeout: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(5),
        };
        assert_eq!(reg.sweep(now, &live), vec!["old".to_string()]);
        assert_eq!(
            index(&reg),
            vec![("a".to_string(), vec!["new".to_string()])]
        );
    }

    #[test]
    fn busy_is_healthy_but_offline_is_not() {
        let live = Liveness {
            heartbeat_timeout: Duration::from_secs(60),
            worker_timeout: Duration::from_secs(600),
        };
        let mut reg = Registry::default();
        reg.insert(record("w", &[]));
        let hb = |s: &str| HeartbeatRequest {
            worker_id: "w".into(),
            status: Some(s.into()),
            ..Default::default()
        };
        let now = Instant::now();
        assert!(reg.heartbeat(hb("busy"), now, SystemTime::now()));
        assert!(reg.get("w").unwrap().is_healthy(now, &live));
        reg.heartbeat(hb("Offline"), now, SystemTime::now());
        assert!(!reg.get("w").unwrap().is_healthy(now, &live));
        assert!(!reg.heartbeat(
            HeartbeatRequest {
                worker_id: "nope".into(),
                ..Default::default()
            },
            now,
            SystemTime::now()
        ));
    }

    #[test]
    fn jobs_survive_reregistration_and_are_taken_once() {
        let mut reg = Registry::default();
        reg.insert(record("w", &[]));
        assert!(reg.push_job("w", Value::from(1)));
        reg.insert(record("w", &[]));
        assert_eq!(reg.take_jobs("w"), Some(vec![Value::from(1)]));
        assert_eq!(reg.take_jobs("w"), Some(vec![]));
        assert_eq!(reg.take_jobs("x"), None);
    }
}
