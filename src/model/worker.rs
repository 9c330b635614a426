//! A worker's record: what it registered, what it last reported, and the
//! pure rules on it (liveness, the JSON a listing shows, which services it
//! is indexed under).
//!
//! Plain data and pure functions: the shard's registry holds these, the
//! store persists them and the proxy reads their addresses, so the type
//! lives here, below all three.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::env::{ContainerJson, Env, Vars};
use crate::model::time::iso8601;
use crate::model::{Classification, EnvContext, ServiceSpec, WorkerType};

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
pub(crate) struct ServiceConfig {
    pub name: String,
    pub port: u16,
    pub priority: u32,
}

/// A container the worker was told to run. Its env is not kept here: it
/// is the catalog's templates, expanded when the record is written
/// (`write_json`). A row stored with an `env` loads without it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub port: u16,
}

/// What the latest heartbeat said.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub(crate) struct ReportedState {
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
    pub(crate) service_configs: Vec<ServiceConfig>,
    pub(crate) assigned_containers: Vec<ContainerConfig>,
    pub registered_at: SystemTime,
    pub last_heartbeat_at: SystemTime,
    pub last_seen: Instant,
    pub(crate) state: ReportedState,
    pub tasks_completed: u64,
}

/// What a registering agent says about itself, validated and defaulted
/// by the HTTP layer.
pub struct Registration {
    pub worker_id: String,
    pub capabilities: Map<String, Value>,
    pub tunnel_url: Option<String>,
    pub ip_address: Option<String>,
    pub services: Vec<Value>,
    pub containers: Vec<Value>,
}

impl WorkerRecord {
    /// A worker that has just registered: what it said, its class, and the
    /// catalog services it was assigned (with their ports and containers).
    pub fn registered(r: Registration, class: Classification, assigned: &[&ServiceSpec]) -> Self {
        let now = SystemTime::now();
        Self {
            worker_id: r.worker_id,
            worker_type: class.worker_type,
            tier: class.tier,
            tunnel_url: r.tunnel_url,
            ip_address: r.ip_address,
            capabilities: r.capabilities,
            services: r.services,
            containers: r.containers,
            assigned_services: assigned.iter().map(|s| s.name.clone()).collect(),
            service_configs: assigned
                .iter()
                .map(|s| ServiceConfig {
                    name: s.name.clone(),
                    port: s.port,
                    priority: s.priority,
                })
                .collect(),
            assigned_containers: assigned
                .iter()
                .map(|s| ContainerConfig {
                    name: s.name.clone(),
                    image: s.image.clone(),
                    port: s.port,
                })
                .collect(),
            registered_at: now,
            last_heartbeat_at: now,
            last_seen: Instant::now(),
            state: ReportedState {
                status: "healthy".into(),
                ..Default::default()
            },
            tasks_completed: 0,
        }
    }

    /// Where to reach the worker: its tunnel if it has one, else its address.
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.tunnel_url
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(self.ip_address.as_deref())
    }

    /// Services this worker is indexed under: what it was assigned plus
    /// what it declared running (`services: [{name, ..}]` or `["name"]`).
    pub(crate) fn index_keys(&self) -> HashSet<&str> {
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

    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    /// Fresh heartbeat and not reporting itself down. Any other status
    /// string ("busy", "loading", ...) counts as healthy.
    pub fn is_healthy(&self, now: Instant, live: &Liveness) -> bool {
        self.age(now) <= live.heartbeat_timeout && !self.reports_down()
    }

    /// The worker's own status says it should get no work.
    pub(crate) fn reports_down(&self) -> bool {
        DOWN_STATUSES
            .iter()
            .any(|s| self.state.status.eq_ignore_ascii_case(s))
    }

    /// Serialises the full record (plus `age_seconds`/`is_healthy` for admin
    /// views) onto `out`; `env` expands the containers' env templates.
    pub fn write_json(
        &self,
        out: &mut Vec<u8>,
        now: Instant,
        live: &Liveness,
        admin: bool,
        env: EnvContext<'_>,
    ) {
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
            assigned_containers: Containers {
                list: &self.assigned_containers,
                worker_id: &self.worker_id,
                env,
            },
            current_load: self.state.current_load,
            available_memory: self.state.available_memory.as_deref(),
            loaded_models: &self.state.loaded_models,
            active_requests: self.state.active_requests,
            gpu_utilization: self.state.gpu_utilization,
            services_status: &self.state.services_status,
            specialization: self.state.specialization.as_deref(),
            tasks_completed: self.tasks_completed,
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
    assigned_containers: Containers<'a>,
    current_load: f64,
    available_memory: Option<&'a str>,
    loaded_models: &'a [String],
    active_requests: u64,
    gpu_utilization: Option<f64>,
    services_status: &'a Map<String, Value>,
    specialization: Option<&'a str>,
    tasks_completed: u64,
    registered_at: String,
    last_heartbeat: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_healthy: Option<bool>,
}

/// A record's containers as JSON, each env expanded from the catalog.
struct Containers<'a> {
    list: &'a [ContainerConfig],
    worker_id: &'a str,
    env: EnvContext<'a>,
}

impl Serialize for Containers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.list.iter().map(|c| ContainerJson {
            name: &c.name,
            image: &c.image,
            port: c.port,
            env: Env {
                templates: self.env.catalog.env_of(&c.name),
                vars: Vars {
                    worker_id: self.worker_id,
                    coordinator_url: self.env.coordinator_url,
                    port: c.port,
                },
            },
        }))
    }
}
