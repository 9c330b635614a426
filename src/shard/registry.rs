//! One shard's slice of the worker registry.
//!
//! Owns the records of the workers whose id hashes to this shard, the
//! service -> workers index for them. (Their tasks live in `tasks::TaskTable`.) It is a plain
//! data structure: no IO, no async, no knowledge of other shards; the shard
//! wraps it in a `RefCell` and never holds a borrow across an await.
//!
//! Invariant: `by_service[s]` contains `w` exactly when worker `w` is in
//! `workers` and `s` is one of `w.index_keys()`. Every mutation goes through
//! `insert` / `remove`, which maintain it.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime};

use crate::model::wire::HeartbeatRequest;
use crate::model::worker::{Liveness, WorkerRecord};
use crate::model::EnvContext;

type Hasher = ahash::RandomState;

/// The shard-local registry.
#[derive(Debug, Default)]
pub struct Registry {
    workers: HashMap<String, WorkerRecord, Hasher>,
    by_service: HashMap<String, HashSet<String, Hasher>, Hasher>,
    /// Each worker's JSON for the healthy listing, made on the first listing
    /// after the record last changed. Edge caches poll the full list far
    /// more often than any one worker heartbeats, and serialising a record
    /// costs microseconds, so a 1,000-worker list would otherwise spend
    /// milliseconds re-encoding what has not changed. Every mutation of a
    /// record must drop its entry (`changed`).
    listed: HashMap<String, Box<[u8]>, Hasher>,
    /// Bumped by every mutation, so a shard can tell whether a listing it
    /// built earlier still describes the registry.
    generation: u64,
    /// Healthy coverage (per service, per tier) for service assignment,
    /// kept up to date by each mutation rather than recounted on every
    /// registration, which made registering n workers cost O(n^2).
    /// Mutations judge a worker by its reported status (a worker that has
    /// just registered or heartbeated is fresh); staleness is applied by
    /// `refresh_coverage`, which the shard calls on every sweep, so the
    /// counts may include a worker for up to one sweep interval after it
    /// went stale. Assignment is a balancing heuristic; that lag is fine.
    counted: HashSet<String, Hasher>,
    cov_service: HashMap<String, u32, Hasher>,
    cov_tier: [u32; 5],
    tasks_completed: u64,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    pub(crate) fn tasks_completed(&self) -> u64 {
        self.tasks_completed
    }

    /// Service name -> ids of the workers indexed under it.
    pub(crate) fn service_index(&self) -> impl Iterator<Item = (&str, &HashSet<String, Hasher>)> {
        self.by_service.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The records of the workers indexed under `service`.
    pub(crate) fn service_workers<'a>(
        &'a self,
        service: &str,
    ) -> impl Iterator<Item = &'a WorkerRecord> + 'a {
        let ids = self.by_service.get(service);
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.workers.get(id))
    }

    /// Changes with every mutation of the registry.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Every mutation of worker `id`'s record goes through here first.
    fn changed(&mut self, id: &str) {
        self.listed.remove(id);
        self.generation += 1;
    }

    /// Inserts or replaces a record; returns true when it replaced one.
    pub fn insert(&mut self, mut rec: WorkerRecord) -> bool {
        let old = self.remove(&rec.worker_id);
        self.changed(&rec.worker_id);
        let replaced = old.is_some();
        if let Some(old) = old {
            rec.tasks_completed += old.tasks_completed;
        }
        for key in rec.index_keys() {
            self.by_service
                .entry(key.to_string())
                .or_default()
                .insert(rec.worker_id.clone());
        }
        let id = rec.worker_id.clone();
        let counts = !rec.reports_down();
        self.workers.insert(id.clone(), rec);
        self.set_counted(&id, counts);
        replaced
    }

    /// Puts worker `id` in or out of the coverage counts.
    fn set_counted(&mut self, id: &str, on: bool) {
        if self.counted.contains(id) == on {
            return;
        }
        let Some(rec) = self.workers.get(id) else {
            return;
        };
        let tier = (rec.tier as usize).min(4);
        let keys: Vec<String> = rec.index_keys().into_iter().map(str::to_string).collect();
        if on {
            self.counted.insert(id.to_string());
            self.cov_tier[tier] += 1;
            for k in keys {
                *self.cov_service.entry(k).or_default() += 1;
            }
        } else {
            self.counted.remove(id);
            self.cov_tier[tier] = self.cov_tier[tier].saturating_sub(1);
            for k in keys {
                if let Some(n) = self.cov_service.get_mut(&k) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.cov_service.remove(&k);
                    }
                }
            }
        }
    }

    /// Healthy workers per service and per tier (index = tier), leaving
    /// out `exclude` (a re-registering worker must not count itself).
    pub fn coverage(&self, exclude: Option<&str>) -> (HashMap<String, u32>, [u32; 5]) {
        let mut services: HashMap<String, u32> = self
            .cov_service
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut tiers = self.cov_tier;
        if let Some(rec) = exclude
            .filter(|id| self.counted.contains(*id))
            .and_then(|id| self.workers.get(id))
        {
            let t = (rec.tier as usize).min(4);
            tiers[t] = tiers[t].saturating_sub(1);
            for k in rec.index_keys() {
                if let Some(n) = services.get_mut(k) {
                    *n = n.saturating_sub(1);
                }
            }
            services.retain(|_, n| *n > 0);
        }
        (services, tiers)
    }

    /// Re-judges every worker's place in the coverage counts by the clock
    /// (staleness); called on each sweep.
    pub(crate) fn refresh_coverage(&mut self, now: Instant, live: &Liveness) {
        let flips: Vec<(String, bool)> = self
            .workers
            .values()
            .filter_map(|w| {
                let on = w.is_healthy(now, live);
                (self.counted.contains(&w.worker_id) != on).then(|| (w.worker_id.clone(), on))
            })
            .collect();
        for (id, on) in flips {
            self.set_counted(&id, on);
        }
    }

    /// Puts back a record read from the database at startup, counting its
    /// completed tasks into the shard's total.
    pub(crate) fn restore(&mut self, rec: WorkerRecord) {
        self.tasks_completed += rec.tasks_completed;
        self.insert(rec);
    }

    /// Removes a worker and every index entry naming it.
    pub(crate) fn remove(&mut self, id: &str) -> Option<WorkerRecord> {
        self.set_counted(id, false);
        let rec = self.workers.remove(id)?;
        self.changed(id);
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
        // `changed`, spelled out: the record is already borrowed.
        self.listed.remove(&hb.worker_id);
        self.generation += 1;
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
        let on = !rec.reports_down();
        self.set_counted(&hb.worker_id, on);
        true
    }

    /// Appends the healthy-listing JSON of every healthy worker (of
    /// `service`, when given) to `out`, comma-separated, and calls `seen`
    /// with each such record and its JSON. Returns how many were written
    /// and until when the result stays true without a mutation (the moment
    /// the first of them goes stale).
    pub fn write_healthy(
        &mut self,
        service: Option<&str>,
        now: Instant,
        live: &Liveness,
        env: EnvContext<'_>,
        out: &mut Vec<u8>,
        mut seen: impl FnMut(&WorkerRecord, &[u8]),
    ) -> (usize, Option<Instant>) {
        let mut valid_until: Option<Instant> = None;
        let Self {
            workers,
            by_service,
            listed,
            ..
        } = self;
        let mut emit = |w: &WorkerRecord, out: &mut Vec<u8>, n: &mut usize| {
            if !w.is_healthy(now, live) {
                return;
            }
            let stale_at = w.last_seen + live.heartbeat_timeout;
            if valid_until.is_none_or(|v| stale_at < v) {
                valid_until = Some(stale_at);
            }
            if !listed.contains_key(w.worker_id.as_str()) {
                let mut buf = Vec::with_capacity(1024);
                w.write_json(&mut buf, now, live, false, env);
                listed.insert(w.worker_id.clone(), buf.into_boxed_slice());
            }
            let json = &listed[w.worker_id.as_str()];
            if *n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(json);
            seen(w, json);
            *n += 1;
        };
        let mut n = 0;
        match service {
            Some(s) => {
                for w in by_service
                    .get(s)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| workers.get(id))
                {
                    emit(w, out, &mut n);
                }
            }
            None => {
                for w in workers.values() {
                    emit(w, out, &mut n);
                }
            }
        }
        (n, valid_until)
    }

    /// Removes workers silent for longer than `worker_timeout`; returns their ids.
    pub(crate) fn sweep(&mut self, now: Instant, live: &Liveness) -> Vec<String> {
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

    /// Counts a completed task; false when the worker is unknown.
    pub(crate) fn complete_task(&mut self, id: &str) -> bool {
        self.changed(id);
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
    use std::time::Duration;

    use serde_json::{Map, Value};

    use crate::model::worker::Registration;
    use crate::model::WorkerType;

    pub(crate) fn record(id: &str, assigned: &[&str]) -> WorkerRecord {
        let r = Registration {
            worker_id: id.to_string(),
            capabilities: Map::new(),
            tunnel_url: None,
            ip_address: Some("127.0.0.1".into()),
            services: vec![],
            containers: vec![],
        };
        let mut rec = WorkerRecord::registered(r, WorkerType::Cpu.into(), &[]);
        // Service names of the tests' own, not catalog entries.
        rec.assigned_services = assigned.iter().map(|s| s.to_string()).collect();
        rec
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
    fn coverage_follows_every_mutation_and_staleness() {
        let live = Liveness {
            heartbeat_timeout: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(60),
        };
        let cov = |reg: &Registry, ex: Option<&str>| {
            let (s, t) = reg.coverage(ex);
            let mut s: Vec<(String, u32)> = s.into_iter().collect();
            s.sort();
            (s, t[2])
        };
        let mut reg = Registry::default();
        reg.insert(record("a", &["x", "y"]));
        reg.insert(record("b", &["x"]));
        let both = vec![("x".to_string(), 2), ("y".to_string(), 1)];
        assert_eq!(cov(&reg, None), (both.clone(), 2));
        // A re-registering worker does not count itself.
        assert_eq!(cov(&reg, Some("a")), (vec![("x".to_string(), 1)], 1));
        // Re-registration with other services moves its counts.
        reg.insert(record("a", &["z"]));
        assert_eq!(
            cov(&reg, None),
            (vec![("x".to_string(), 1), ("z".to_string(), 1)], 2)
        );
        // A worker reporting itself offline drops out, and back in.
        let hb = |id: &str, status: &str| HeartbeatRequest {
            worker_id: id.into(),
            status: Some(status.into()),
            ..Default::default()
        };
        let now = Instant::now();
        reg.heartbeat(hb("b", "offline"), now, SystemTime::now());
        assert_eq!(cov(&reg, None), (vec![("z".to_string(), 1)], 1));
        reg.heartbeat(hb("b", "busy"), now, SystemTime::now());
        assert_eq!(cov(&reg, None).1, 2);
        // Staleness is applied on refresh (each sweep).
        let later = now + Duration::from_secs(3);
        reg.refresh_coverage(later, &live);
        assert_eq!(cov(&reg, None), (vec![], 0));
        reg.heartbeat(hb("a", "healthy"), later, SystemTime::now());
        assert_eq!(cov(&reg, None), (vec![("z".to_string(), 1)], 1));
        reg.remove("a");
        assert_eq!(cov(&reg, None), (vec![], 0));
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
}
