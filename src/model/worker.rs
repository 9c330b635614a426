//! A worker's record: what it registered, what it last reported, and the
//! pure rules on it (liveness, the JSON a listing shows, which services it
//! is indexed under).
//!
//! Plain data and pure functions: the shard's registry holds these, the
//! store persists them and the proxy reads their addresses, so the type
//! lives here, below all three.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::model::time::iso8601;
use crate::model::{Classification, ServiceSpec, WorkerType};

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

/// What the latest heartbeat said.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub(crate) struct ReportedState {
    /// The common statuses are static strings: no allocation per worker.
    pub status: Cow<'static, str>,
    pub current_load: f64,
    pub available_memory: Option<String>,
    pub loaded_models: Vec<String>,
    pub active_requests: u64,
    pub gpu_utilization: Option<f64>,
    /// As the agent sent it (a JSON object), `None` until one was sent.
    pub services_status: Option<Box<RawValue>>,
    pub specialization: Option<String>,
}

/// Statuses agents report, kept without an allocation.
pub(crate) const KNOWN_STATUSES: [&str; 9] = [
    "healthy",
    "busy",
    "loading",
    "idle",
    "unhealthy",
    "offline",
    "error",
    "stopping",
    "failed",
];

/// A reported status as stored: a static string when it is a known one.
pub(crate) fn status_of(s: String) -> Cow<'static, str> {
    match KNOWN_STATUSES.iter().find(|k| **k == s) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s),
    }
}

/// A service the worker declared running (`services: [{name, port}]` or
/// `["name"]`): what routing and the service index need of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Declared {
    pub name: Box<str>,
    pub port: Option<u16>,
}

/// A registered worker.
///
/// Kept compact, since a shard may hold a million of these (the target is
/// at most 1 KB of memory per worker, everything included): what the
/// agent sent and only the coordinator echoes back (capabilities, its
/// service and container lists) is held as the JSON text it arrived as
/// (capabilities re-encoded compactly, keys sorted), the assigned services
/// are references into the catalog (their ports, images and containers are
/// written from it), and the common statuses are static strings.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub worker_type: WorkerType,
    pub tier: u8,
    pub tunnel_url: Option<String>,
    pub ip_address: Option<String>,
    /// A JSON object.
    pub capabilities: Box<RawValue>,
    /// JSON arrays as sent; `None` when absent or empty.
    pub services: Option<Box<RawValue>>,
    pub containers: Option<Box<RawValue>>,
    pub(crate) declared: Box<[Declared]>,
    pub(crate) assigned: Box<[&'static ServiceSpec]>,
    pub registered_at: SystemTime,
    pub last_heartbeat_at: SystemTime,
    pub last_seen: Instant,
    pub(crate) state: ReportedState,
    pub tasks_completed: u64,
    /// Drained by an operator: no new routed requests or task leases (its
    /// in-flight ones finish); kept across re-registration and restarts.
    pub drained: bool,
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

/// JSON text of a value that came from JSON (cannot fail).
fn raw(v: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| empty_object())
}

/// `{}` as JSON text.
pub(crate) fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("valid JSON")
}

/// The services a `services` list declares.
pub(crate) fn declared_of(services: &[Value]) -> Box<[Declared]> {
    services
        .iter()
        .filter_map(|s| match s {
            Value::String(n) => Some(Declared {
                name: n.as_str().into(),
                port: None,
            }),
            Value::Object(o) => Some(Declared {
                name: o.get("name")?.as_str()?.into(),
                port: o
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok()),
            }),
            _ => None,
        })
        .collect()
}

/// Held as JSON text, `None` for an empty list.
pub(crate) fn raw_list(items: &[Value]) -> Option<Box<RawValue>> {
    (!items.is_empty()).then(|| raw(&items))
}

impl WorkerRecord {
    /// A worker that has just registered: what it said, its class, and the
    /// catalog services it was assigned (with their ports and containers).
    pub fn registered(
        r: Registration,
        class: Classification,
        assigned: &[&'static ServiceSpec],
    ) -> Self {
        let now = SystemTime::now();
        Self {
            worker_id: r.worker_id,
            worker_type: class.worker_type,
            tier: class.tier,
            tunnel_url: r.tunnel_url,
            ip_address: r.ip_address,
            capabilities: raw(&r.capabilities),
            declared: declared_of(&r.services),
            services: raw_list(&r.services),
            containers: raw_list(&r.containers),
            assigned: assigned.into(),
            registered_at: now,
            last_heartbeat_at: now,
            last_seen: Instant::now(),
            state: ReportedState {
                status: Cow::Borrowed("healthy"),
                ..Default::default()
            },
            tasks_completed: 0,
            drained: false,
        }
    }

    /// Names of the catalog services assigned to this worker.
    pub fn assigned_services(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.assigned.iter().map(|s| s.name.as_str())
    }

    /// The capabilities as a map (parsed on demand: rare paths only).
    pub(crate) fn capability_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.capabilities.get()).unwrap_or_default()
    }

    /// The port to reach `service` on: the catalog's for an assigned one,
    /// else the port the worker declared for it.
    pub(crate) fn port_of(&self, service: &str) -> Option<u16> {
        self.assigned
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.port)
            .or_else(|| {
                self.declared
                    .iter()
                    .find(|d| &*d.name == service)
                    .and_then(|d| d.port)
            })
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
    /// Sorted and without repeats: the same order on every run (a hash
    /// set's order, and so the work done in it, would change per process).
    pub(crate) fn index_keys(&self) -> Vec<&str> {
        let assigned = self.assigned.iter().map(|s| s.name.as_str());
        let mut keys: Vec<&str> = assigned
            .chain(self.declared.iter().map(|d| &*d.name))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    /// Fresh heartbeat and not reporting itself down. Any other status
    /// string ("busy", "loading", ...) counts as healthy.
    pub fn is_healthy(&self, now: Instant, live: &Liveness) -> bool {
        self.age(now) <= live.heartbeat_timeout && !self.reports_down()
    }

    /// The worker should get no new work: its own status says so, or an
    /// operator drained it. Such a worker is not healthy for routing,
    /// listing, coverage and leasing, whatever its heartbeats.
    pub(crate) fn reports_down(&self) -> bool {
        self.drained
            || DOWN_STATUSES
                .iter()
                .any(|s| self.state.status.eq_ignore_ascii_case(s))
    }

    /// The status views show: `drained` while drained, else the reported one.
    pub(crate) fn shown_status(&self) -> &str {
        match self.drained {
            true => "drained",
            false => &self.state.status,
        }
    }

    /// Serialises the full record (plus `age_seconds`/`is_healthy` for admin
    /// views) onto `out`; the containers' env templates are expanded with
    /// `coordinator_url` (our public URL) and the worker's id.
    pub fn write_json(
        &self,
        out: &mut Vec<u8>,
        now: Instant,
        live: &Liveness,
        admin: bool,
        coordinator_url: &str,
    ) {
        let age = self.age(now);
        let view = WorkerView {
            worker_id: &self.worker_id,
            worker_type: self.worker_type,
            tier: self.tier,
            status: self.shown_status(),
            tunnel_url: self.tunnel_url.as_deref(),
            ip_address: self.ip_address.as_deref(),
            endpoint: self.endpoint(),
            capabilities: &self.capabilities,
            services: OrEmpty(self.services.as_deref(), "[]"),
            containers: OrEmpty(self.containers.as_deref(), "[]"),
            assigned_services: Assigned(&self.assigned, |s| s.name.as_str()),
            service_configs: Assigned(&self.assigned, ServiceConfigView::of),
            assigned_containers: Containers {
                specs: &self.assigned,
                worker_id: &self.worker_id,
                coordinator_url,
            },
            current_load: self.state.current_load,
            available_memory: self.state.available_memory.as_deref(),
            loaded_models: &self.state.loaded_models,
            active_requests: self.state.active_requests,
            gpu_utilization: self.state.gpu_utilization,
            services_status: OrEmpty(self.state.services_status.as_deref(), "{}"),
            specialization: self.state.specialization.as_deref(),
            tasks_completed: self.tasks_completed,
            registered_at: iso8601(self.registered_at),
            last_heartbeat: iso8601(self.last_heartbeat_at),
            age_seconds: admin.then_some(age.as_secs_f64()),
            is_healthy: admin.then(|| self.is_healthy(now, live)),
            drained: self.drained,
        };
        // Serialising a borrowed struct of plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &view);
    }
}

/// The JSON of a worker in every listing; `#[schema]` attributes give the
/// OpenAPI spec the shapes that hand-written `Serialize` impls produce.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Worker)]
pub(crate) struct WorkerView<'a> {
    worker_id: &'a str,
    worker_type: WorkerType,
    /// 1 gpu, 2 cpu, 3 storage, 4 edge.
    tier: u8,
    /// As last reported (any string; `healthy` until a heartbeat says
    /// otherwise), or `drained` while an operator has it drained.
    status: &'a str,
    tunnel_url: Option<&'a str>,
    ip_address: Option<&'a str>,
    /// `tunnel_url`, else `ip_address`.
    endpoint: Option<&'a str>,
    /// As the agent sent them.
    #[schema(value_type = Object)]
    capabilities: &'a RawValue,
    /// The services the agent declared, as sent.
    #[schema(value_type = Vec<Value>)]
    services: OrEmpty<'a>,
    #[schema(value_type = Vec<Value>)]
    containers: OrEmpty<'a>,
    #[schema(value_type = Vec<String>)]
    assigned_services: Assigned<'a, &'static str>,
    #[schema(value_type = Vec<ServiceConfigView<'static>>)]
    service_configs: Assigned<'a, ServiceConfigView<'static>>,
    #[schema(value_type = Vec<crate::model::env::ContainerJson<'static>>)]
    assigned_containers: Containers<'a>,
    current_load: f64,
    available_memory: Option<&'a str>,
    loaded_models: &'a [String],
    active_requests: u64,
    gpu_utilization: Option<f64>,
    /// The last heartbeat's `services_status` object (`{}` until one came).
    #[schema(value_type = Object)]
    services_status: OrEmpty<'a>,
    specialization: Option<&'a str>,
    tasks_completed: u64,
    /// ISO 8601, UTC with offset.
    registered_at: String,
    last_heartbeat: String,
    /// Drained by an operator (`POST /api/admin/workers/{id}/drain`);
    /// present (true) only while drained, so the lists every edge cache
    /// polls carry no extra bytes for the workers that are not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    drained: bool,
    /// Admin listing only: seconds since the last heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    age_seconds: Option<f64>,
    /// Admin listing only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    is_healthy: Option<bool>,
}

/// A JSON text held as sent, or the given empty value when absent.
struct OrEmpty<'a>(Option<&'a RawValue>, &'static str);

impl Serialize for OrEmpty<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => v.serialize(s),
            None if self.1 == "[]" => s.collect_seq(std::iter::empty::<()>()),
            None => s.collect_map(std::iter::empty::<((), ())>()),
        }
    }
}

/// A list written from the assigned catalog entries, one item each.
pub(crate) struct Assigned<'a, T>(
    pub &'a [&'static ServiceSpec],
    pub fn(&'static ServiceSpec) -> T,
);

impl<T: Serialize> Serialize for Assigned<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|spec| (self.1)(spec)))
    }
}

/// An assigned service's port and priority, as agents read them.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ServiceConfig)]
pub(crate) struct ServiceConfigView<'a> {
    name: &'a str,
    port: u16,
    priority: u32,
}

impl ServiceConfigView<'static> {
    pub(crate) fn of(s: &'static ServiceSpec) -> Self {
        Self {
            name: &s.name,
            port: s.port,
            priority: s.priority,
        }
    }
}

/// The assigned services' containers for `worker_id`, each env expanded
/// from the catalog's templates. The registration reply and the listings
/// both write this, so the two cannot drift apart.
pub(crate) struct Containers<'a> {
    pub specs: &'a [&'static ServiceSpec],
    pub worker_id: &'a str,
    pub coordinator_url: &'a str,
}

impl Serialize for Containers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.specs
                .iter()
                .map(|spec| spec.container(self.worker_id, self.coordinator_url)),
        )
    }
}
