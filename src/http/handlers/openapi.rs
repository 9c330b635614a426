//! The OpenAPI 3.1 description of the HTTP API, generated from the code.
//!
//! Owns: the document (`/openapi.json`), its reply shapes for replies that
//! the handlers assemble from pre-serialised parts (the structs
//! below: they are never built, they only describe bytes the handlers
//! write), and the parts every route shares: security schemes and the
//! role each operation needs, taken from the role table
//! (`access::need`), and the errors any route can answer.
//!
//! Each route's own contract (method, path, parameters, body, replies) is
//! the `#[utoipa::path]` on its handler, next to the code it describes.
//! Request and reply types that the handlers really (de)serialise derive
//! `ToSchema` where they are defined (`model::wire`, `model::worker`,
//! `handlers::worker`). `tests/openapi.rs` checks that the document and
//! the router agree, route for route; the CI schemathesis gate
//! (`.ci/schemathesis`) checks every reply against it.
//!
//! Must not: be built on a request path more than once per shard (it is
//! cached per thread), or describe behaviour the handlers do not have.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{json, Value};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, OpenApi as Doc, RefOr};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::super::access::need;
use super::super::router::{route, Route};
use crate::model::wire::schema::{ID_PATTERN, TEXT_PATTERN, WORKER_TYPE_PATTERN};

/// The document, built once per shard thread (no lock, no atomic).
pub(crate) fn json() -> Bytes {
    thread_local! {
        static SPEC: OnceCell<Bytes> = const { OnceCell::new() };
    }
    SPEC.with(|s| {
        s.get_or_init(|| Bytes::from(document().to_string()))
            .clone()
    })
}

/// The whole document: what the derives and annotations say, then the
/// schemas that are written as JSON ([`patch`]).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(Api::openapi()).unwrap_or_default();
    patch(&mut doc);
    doc
}

/// Puts in what the typed model cannot say (`oneOf` over required fields,
/// `not`, several types): the parameter rules the handlers apply, by name,
/// and the request bodies whose fields depend on each other.
fn patch(doc: &mut Value) {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut() {
                let params = op.get_mut("parameters").and_then(Value::as_array_mut);
                for p in params.into_iter().flatten() {
                    let name = p["name"].as_str().unwrap_or_default();
                    if let Some(s) = param_schema(name, p["in"] == "query") {
                        p["schema"] = s;
                    }
                }
            }
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("TaskSubmit".into(), task_submit_schema());
        schemas.insert("Pin".into(), pin_schema());
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rma-coordinator-rs",
        description = "Coordinator for pools of AI worker machines: workers register, \
heartbeat, pull tasks and receive inference requests routed through the coordinator. \
Wire-compatible with the Local Coordinator Service and the RMA Distributed Coordinator \
Service.\n\nWith no key or user configured the coordinator is open (every security \
requirement below is then waived). Otherwise each operation needs the role named in its \
`x-required-role` (`admin` may do everything), given as `X-API-Key`, \
`Authorization: Bearer` (an API key or a login token), or the `coordinator_session` \
cookie of `POST /api/session`. Every error is `{\"detail\": \"...\"}`.",
        license(name = "MIT"),
    ),
    paths(
        super::worker::register,
        super::worker::heartbeat,
        super::worker::unregister,
        super::tasks::pull,
        super::tasks::complete,
        super::coordinator::workers,
        super::coordinator::broadcast,
        super::tasks::submit,
        super::tasks::get,
        super::tasks::admin_list,
        super::admin::workers,
        super::worker::drain,
        super::worker::undrain,
        super::admin::services,
        super::admin::stats,
        super::admin::health,
        super::admin::gaps,
        super::inference::pins_get,
        super::inference::pins,
        super::inference::pins_delete,
        super::services::discover,
        super::services::list,
        super::inference::llm,
        super::inference::vision,
        super::inference::rag,
        super::inference::graph,
        super::inference::service,
        super::inference::api_service,
        super::events::stream,
        super::events_ws::upgrade,
        super::auth::login,
        super::auth::verify,
        super::session::create,
        super::session::delete,
        super::ops::health,
        super::ops::cluster_summary,
        super::ops::metrics,
        super::docs::openapi_json,
        super::docs::swagger,
        super::docs::redoc,
        super::docs::asset,
        super::graphql::graphql_get,
        super::graphql::serve_request,
        super::history::query,
        super::history::list,
        super::tasks::requeue,
        super::ui::serve,
    ),
    components(schemas(Detail)),
    modifiers(&Shared),
    tags(
        (name = "workers", description = "What worker agents call: register, heartbeat, pull and complete tasks."),
        (name = "pool", description = "The worker list edge caches poll, discovery, broadcast jobs."),
        (name = "tasks", description = "Submit tasks and follow them."),
        (name = "inference", description = "Requests routed to a worker of a service, and their answers relayed."),
        (name = "admin", description = "Operator views and actions."),
        (name = "events", description = "The change stream: Server-Sent Events, NDJSON, WebSocket."),
        (name = "auth", description = "Login tokens and browser sessions."),
        (name = "ops", description = "Liveness, metrics, this document."),
        (name = "graphql", description = "The same data as GraphQL (docs/graphql.md)."),
    )
)]
struct Api;

/// Adds what every operation shares, from one place: its security (from
/// the role table, so the document cannot drift from what the server
/// enforces) and the errors any route may answer.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut Doc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key, or a token of POST /api/auth/login"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::http::auth::SESSION_COOKIE,
            ))),
        );
        let schemes = || {
            ["api_key", "bearer", "session"]
                .into_iter()
                .map(|s| SecurityRequirement::new(s, Vec::<String>::new()))
                .collect::<Vec<_>>()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let sample = sample_path(path);
            let ops = [
                ("GET", &mut item.get),
                ("POST", &mut item.post),
                ("PUT", &mut item.put),
                ("DELETE", &mut item.delete),
                ("PATCH", &mut item.patch),
                ("HEAD", &mut item.head),
            ];
            let routed = |method: &str| route(&method.parse().expect("a method"), &sample).route;
            let shared = |r: Route| {
                ops.iter()
                    .filter(|(m, o)| o.is_some() && routed(m) == r)
                    .count()
                    > 1
            };
            let shared: Vec<bool> = ops.iter().map(|(m, _)| shared(routed(m))).collect();
            for ((method, op), several) in ops.into_iter().zip(shared) {
                let Some(op) = op.as_mut() else { continue };
                let routed = routed(method);
                // Operation ids are the route names of the metrics and the
                // access log (with the method where one route serves several).
                op.operation_id = Some(match several {
                    true => format!("{}_{}", routed.name(), method.to_ascii_lowercase()),
                    false => routed.name().to_string(),
                });
                let role = need(routed, false).name();
                let ext = ExtensionsBuilder::new()
                    .add("x-required-role", Value::from(role))
                    .build();
                op.extensions
                    .get_or_insert_with(Default::default)
                    .merge(ext);
                let add = |op: &mut utoipa::openapi::path::Operation, code: &str, why: &str| {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(why));
                };
                if role != "public" {
                    op.security = Some(schemes());
                    if !is_proxy(routed) {
                        add(op, "401", "No credential, or an invalid one");
                        add(op, "403", "The credential's role may not call this");
                    }
                }
                // Fixed assets fail only on auth; a proxy's every status
                // may be the worker's own, so its one `default` reply says it all.
                if is_static(routed) || is_proxy(routed) {
                    continue;
                }
                add(
                    op,
                    "400",
                    "A malformed request: bad query value, cursor or encoding",
                );
                if op.request_body.is_some() {
                    add(op, "413", "The body is larger than --max-body-bytes");
                    add(
                        op,
                        "422",
                        "The body is not what the route takes: the detail names the field",
                    );
                }
                add(
                    op,
                    "503",
                    "A shard did not answer in time, or nothing can serve the request",
                );
            }
        }
    }
}

/// The rules the handlers apply to a query or path parameter, by name:
/// ids as `valid_id`, filter texts as `filter::parse_name`, integers that
/// are clamped (any integer is taken).
fn param_schema(name: &str, query: bool) -> Option<Value> {
    Some(match name {
        "worker_id" | "worker" | "task_id" => json!({"type": "string", "pattern": ID_PATTERN}),
        "service" | "model" | "status" | "type" if query => {
            json!({"type": "string", "pattern": TEXT_PATTERN})
        }
        "worker_type" => json!({"type": "string", "pattern": WORKER_TYPE_PATTERN}),
        "state" => {
            json!({"type": "string", "enum": ["queued", "leased", "completed", "failed", "dead"]})
        }
        "limit" | "max" | "from" | "to" | "step" => json!({"type": "integer"}),
        "series" => {
            let names: Vec<&str> = crate::history::series::SERIES
                .iter()
                .map(|s| s.name)
                .collect();
            json!({"type": "string", "enum": names})
        }
        _ => return None,
    })
}

/// `POST /api/tasks`: the first of `type`, `task_type`, `job_type` that is
/// not null names the type (non-empty); exactly one target is not null.
fn task_submit_schema() -> Value {
    let loose = json!({"type": ["string", "number", "null"]});
    let target = json!({"oneOf": [
        {"type": "string", "pattern": ID_PATTERN},
        {"type": ["number", "null"]},
    ]});
    let named =
        |field: &str| json!({"type": ["string", "number"], "minLength": 1, "description": field});
    let given = |field: &str| json!({"required": [field], "properties": {field: {"not": {"type": "null"}}}});
    json!({
        "type": "object",
        "description": "A task. Exactly one of `worker_id`, `service`, `capability`. The type may also be spelled `task_type` or `job_type`, the payload `job_data`.",
        "properties": {
            "type": loose, "task_type": loose, "job_type": loose,
            "payload": {"description": "Any JSON"},
            "job_data": {"description": "Any JSON (when `payload` is absent)"},
            "worker_id": target, "service": target, "capability": target,
            "max_attempts": {"type": ["integer", "null"], "minimum": 1, "maximum": 100,
                             "description": "Default --task-max-attempts"},
        },
        "anyOf": [
            {"required": ["type"], "properties": {"type": named("type")}},
            {"required": ["task_type"], "properties": {"type": {"type": "null"}, "task_type": named("task_type")}},
            {"required": ["job_type"], "properties": {"type": {"type": "null"}, "task_type": {"type": "null"}, "job_type": named("job_type")}},
        ],
        "oneOf": [given("worker_id"), given("service"), given("capability")],
        "example": {"type": "embed", "payload": {"text": "..."}, "service": "rag-embeddings", "max_attempts": 3},
    })
}

/// `PUT /api/admin/pins`: exactly one of `service` and `model` (an empty
/// one counts as absent), and the workers.
fn pin_schema() -> Value {
    let named = |field: &str| json!({"required": [field], "properties": {field: {"type": "string", "minLength": 1}}});
    json!({
        "type": "object",
        "properties": {
            "service": {"type": ["string", "null"], "description": "A service (short names resolve)"},
            "model": {"type": ["string", "null"], "description": "A model name"},
            "workers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "required": ["workers"],
        "oneOf": [
            {"allOf": [named("service"), {"not": named("model")}]},
            {"allOf": [named("model"), {"not": named("service")}]},
        ],
    })
}

/// Routes whose answers are fixed bytes: only auth can fail them.
fn is_static(r: Route) -> bool {
    matches!(
        r,
        Route::OpenApi | Route::Docs | Route::Redoc | Route::DocsAsset
    )
}

/// Routes that relay a worker's answer, whatever its status.
fn is_proxy(r: Route) -> bool {
    matches!(
        r,
        Route::ServiceProxy
            | Route::ApiServiceProxy
            | Route::InferenceLlm
            | Route::InferenceVision
            | Route::InferenceRag
            | Route::InferenceGraph
    )
}

/// A concrete path the router maps like the templated one.
fn sample_path(templated: &str) -> String {
    templated
        .split('/')
        .map(|seg| match seg.starts_with('{') {
            true => "x",
            false => seg,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "Detail",
            )))),
        )
        .build()
        .into()
}

// ---------------------------------------------------------------------------
// Shapes of replies the handlers write from parts (never constructed).

/// One node's aggregates (`GET /api/cluster/summary`), summed across
/// nodes by the others.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct NodeSummary {
    total: u64,
    healthy: u64,
    stale: u64,
    /// Healthy workers per tier, index = tier (0 unused).
    tier_count: [u64; 5],
    /// Summed reported load of those workers, per tier.
    tier_load: [f64; 5],
    /// Workers by reported status (`stale` for the rest).
    by_status: std::collections::HashMap<String, u64>,
    /// Healthy workers per service.
    services: std::collections::HashMap<String, u64>,
    tasks_completed: u64,
}

/// Every error: `{"detail": "..."}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Detail {
    /// What went wrong; validation errors start with the field.
    #[schema(example = "current_load: expected a number, got a string")]
    detail: String,
}

/// `{"status": "ok", "message"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Ack {
    #[schema(example = "ok")]
    status: String,
    #[schema(example = "Heartbeat received")]
    message: String,
}

/// The healthy workers (edge caches poll this).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct WorkerList {
    #[schema(value_type = Vec<crate::model::worker::WorkerView<'static>>)]
    workers: Vec<()>,
    /// Workers in this reply.
    count: u64,
    timestamp: String,
    /// Paged replies only: the cursor of the next page, null on the last.
    #[schema(required = false)]
    next: Option<String>,
}

/// `?since=<cursor>`: what changed since the cursor.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct WorkerDelta {
    /// The cursor to pass as `since` next time.
    index: String,
    /// Workers registered or changed since (full records).
    #[schema(value_type = Vec<crate::model::worker::WorkerView<'static>>)]
    upserts: Vec<()>,
    /// Ids of workers removed since.
    removed: Vec<String>,
    /// True when the cursor was too old: `upserts` is then the whole list.
    reset: bool,
}

/// Every worker, healthy or not, with `age_seconds` and `is_healthy`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct AdminWorkers {
    #[schema(value_type = Vec<crate::model::worker::WorkerView<'static>>)]
    workers: Vec<()>,
    /// Workers in this reply.
    total: u64,
    /// Healthy workers in this reply.
    healthy: u64,
    #[schema(required = false)]
    next: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ServiceWorkers {
    name: String,
    /// Ids of the healthy workers running it.
    workers: Vec<String>,
    worker_count: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct AdminServices {
    services: Vec<ServiceWorkers>,
    total_services: u64,
}

/// Keyed `gpu_workers` (tier 1), `service_workers` (2), `data_workers` (3).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ByTier<T> {
    gpu_workers: T,
    service_workers: T,
    data_workers: T,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Stats {
    total_workers: u64,
    healthy_workers: u64,
    workers_by_tier: ByTier<u64>,
    average_load_by_tier: ByTier<f64>,
    total_tasks_completed: u64,
    timestamp: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Minimum {
    gpu_workers: bool,
    service_workers: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct AdminHealth {
    /// `healthy` with at least one healthy gpu and one healthy cpu worker.
    #[schema(example = "healthy")]
    overall_status: String,
    /// Fresh workers by reported status, and `stale` for the rest.
    workers_by_status: BTreeMap<String, u64>,
    has_minimum_workers: Minimum,
    total_workers: u64,
    healthy_workers: u64,
    timestamp: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Gap {
    service: String,
    tier: u8,
    requires: String,
    healthy_workers: u64,
    /// `critical` (0 healthy workers), `warning` (1) or `ok`.
    status: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Gaps {
    gaps: Vec<Gap>,
    critical: Vec<String>,
    warning: Vec<String>,
    timestamp: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Discovery {
    /// The catalog name the path resolved to.
    service: String,
    #[schema(value_type = Vec<crate::model::worker::WorkerView<'static>>)]
    workers: Vec<()>,
    count: u64,
    /// The least-loaded worker (of the page, when paged).
    #[schema(value_type = Option<crate::model::worker::WorkerView<'static>>)]
    recommended: Option<()>,
    #[schema(required = false)]
    next: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ServiceSummary {
    name: String,
    healthy_workers: u64,
    tier: u8,
    requires: String,
    port: u16,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ServicesList {
    services: BTreeMap<String, ServiceSummary>,
    total_available: u64,
    timestamp: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct HealthWorkers {
    total: u64,
    active: u64,
    stale: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Health {
    #[schema(example = "healthy")]
    status: String,
    #[schema(example = "rma-coordinator-rs")]
    coordinator: String,
    version: String,
    environment: String,
    shards: u64,
    timestamp: String,
    workers: HealthWorkers,
}

/// Exactly one of `worker_id`, `service`, `capability`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct TaskSubmit {
    /// Also spelled `task_type` or `job_type`.
    #[schema(example = "embed")]
    r#type: String,
    /// Any JSON (also spelled `job_data`).
    #[schema(value_type = Option<Value>)]
    payload: Option<()>,
    /// A registered worker's id (404 when unknown).
    worker_id: Option<String>,
    /// Any worker indexed under this service (it may wait for one).
    service: Option<String>,
    /// Any worker whose capability of this name is truthy.
    capability: Option<String>,
    /// 1..=100; default `--task-max-attempts`.
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Target {
    /// `worker`, `service` or `capability`.
    kind: String,
    name: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Submitted {
    task_id: String,
    /// Always `queued`.
    state: String,
    target: Target,
    max_attempts: u32,
}

/// A task's full record.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Task {
    task_id: String,
    r#type: String,
    #[schema(value_type = Value)]
    payload: (),
    state: crate::tasks::task::TaskState,
    target: Target,
    attempts: u32,
    max_attempts: u32,
    /// The worker of the current or last lease.
    worker_id: Option<String>,
    lease_expires_at: Option<String>,
    #[schema(value_type = Value)]
    result: (),
    #[schema(value_type = Value)]
    error: (),
    finished_by: Option<String>,
    created_at: String,
    updated_at: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Queue {
    queue: String,
    depth: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct AdminTasks {
    /// The newest 100 matches, or one page with `limit`.
    tasks: Vec<Task>,
    /// All matches.
    count: u64,
    /// Tasks in every state.
    counts: BTreeMap<String, u64>,
    queues: Vec<Queue>,
    #[schema(required = false)]
    next: Option<String>,
}

/// A task as a worker receives it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct LeasedTask {
    task_id: String,
    r#type: String,
    /// The same as `type` (the service original's name).
    task_type: String,
    #[schema(value_type = Value)]
    payload: (),
    /// The same as `type` (broadcast-era name).
    job_type: String,
    #[schema(value_type = Value)]
    job_data: (),
    attempt: u32,
    max_attempts: u32,
    lease_seconds: f64,
    lease_expires_at: String,
    created_at: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Pulled {
    tasks: Vec<LeasedTask>,
}

/// The real agent's shape. The service original's (ids in the query and
/// the result as the body) is taken too.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Complete {
    worker_id: Option<String>,
    task_id: Option<String>,
    #[schema(value_type = Value)]
    result: (),
    /// `failed` (or `error`) reports a failure.
    status: Option<String>,
    #[schema(value_type = Value)]
    error: (),
    /// false: do not retry a failure.
    retry: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Completed {
    status: String,
    message: String,
    task_id: String,
    state: crate::tasks::task::TaskState,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct BroadcastWorker {
    worker_id: String,
    #[schema(required = false)]
    task_id: Option<String>,
    status: String,
    message: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Broadcast {
    job_type: String,
    broadcasted_to: u64,
    successful: u64,
    workers: Vec<BroadcastWorker>,
}

/// Either `service` or `model`, and the workers it is pinned to.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Pin {
    service: Option<String>,
    model: Option<String>,
    workers: Vec<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct PinView {
    /// `service` or `model`.
    kind: String,
    name: String,
    workers: Vec<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Pins {
    pins: Vec<PinView>,
    count: u64,
}

/// `{model, prompt, max_tokens = 512, temperature = 0.7}`; other fields go
/// to the worker too.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Inference {
    #[schema(example = "llama3:8b", min_length = 1)]
    model: String,
    #[schema(example = "Say hello")]
    prompt: String,
    /// Default 512.
    max_tokens: Option<u64>,
    /// Default 0.7.
    temperature: Option<f64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Login {
    username: String,
    password: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Token {
    access_token: String,
    /// Always `bearer`.
    token_type: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Verified {
    valid: bool,
    /// The user, or the key's name.
    username: Option<String>,
    role: String,
}

/// Or an empty body and the key in `X-API-Key`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct SessionRequest {
    api_key: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Session {
    role: String,
    /// ISO 8601; null on an open coordinator.
    expires_at: Option<String>,
    /// True on an open coordinator (no key, no user): no cookie is set.
    #[schema(required = false)]
    open: Option<bool>,
}

/// A schema that is one of two named ones (a list, or with `since` a delta).
macro_rules! one_of {
    ($name:ident, $a:ident, $b:ident) => {
        pub(super) struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::OneOfBuilder::new()
                    .item(utoipa::openapi::Ref::from_schema_name(stringify!($a)))
                    .item(utoipa::openapi::Ref::from_schema_name(stringify!($b)))
                    .into()
            }
        }

        impl ToSchema for $name {
            fn schemas(out: &mut Vec<(String, RefOr<utoipa::openapi::schema::Schema>)>) {
                for (name, schema) in [
                    (stringify!($a), <$a as utoipa::PartialSchema>::schema()),
                    (stringify!($b), <$b as utoipa::PartialSchema>::schema()),
                ] {
                    out.push((name.to_string(), schema));
                }
                <$a as ToSchema>::schemas(out);
                <$b as ToSchema>::schemas(out);
            }
        }
    };
}

one_of!(WorkerListOrDelta, WorkerList, WorkerDelta);
one_of!(AdminWorkersOrDelta, AdminWorkers, WorkerDelta);

/// A GraphQL request (GraphQL over HTTP).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct GraphQlRequest {
    #[schema(
        example = "{ workers(first: 10) { nodes { workerId status } pageInfo { endCursor } } }"
    )]
    query: String,
    variables: Option<BTreeMap<String, Value>>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
}

/// A GraphQL response.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct GraphQlResponse {
    #[schema(value_type = Option<Object>, required = false)]
    data: Option<()>,
    #[schema(value_type = Option<Vec<Object>>, required = false)]
    errors: Option<()>,
}

/// The query of the worker lists (`/api/coordinator/workers`,
/// `/api/admin/workers`): paging, filters, and the change-stream cursors.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct WorkerListParams {
    /// One page of at most this many (clamped to 1..=1000).
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// Workers indexed under this service (short names resolve).
    service: Option<String>,
    /// Tier 0..=4.
    #[param(minimum = 0, maximum = 4)]
    tier: Option<u8>,
    /// gpu, cpu, storage or edge.
    worker_type: Option<String>,
    /// A model in `loaded_models`.
    model: Option<String>,
    /// healthy, stale, or a reported status.
    status: Option<String>,
    /// A cursor: with `wait`, hold the request until a worker changes after it.
    index: Option<String>,
    /// How long to hold an `index` request: `30s`, `500ms`, `5m`, or
    /// seconds; at most 300 s.
    #[param(pattern = r"^([0-9]+\.?[0-9]*|\.[0-9]+)(ms|s|m)?$")]
    wait: Option<String>,
    /// A cursor: answer only the changes since.
    since: Option<String>,
}

/// The change stream's filters and cursor (`/api/events`, its WebSocket).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct EventParams {
    /// Comma list: worker, task, pin, service.
    topics: Option<String>,
    /// Only this worker's events.
    worker_id: Option<String>,
    /// Only this service's events.
    service: Option<String>,
    /// Only this task's events.
    task_id: Option<String>,
    /// Resume after this cursor.
    since: Option<String>,
}

/// One line of a history answer; arrays align with `timestamps`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct HistoryLine {
    /// The line's label, e.g. `{"route": "heartbeat"}` (empty for series
    /// without a label).
    labels: BTreeMap<String, String>,
    /// Mean of the samples in each bucket; `null` where none.
    avg: Vec<Option<f64>>,
    min: Vec<Option<f64>>,
    max: Vec<Option<f64>>,
    /// The latest sample of each bucket.
    last: Vec<Option<f64>>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct HistoryAnswer {
    series: String,
    /// The worker, for a per-worker series.
    worker_id: Option<String>,
    from: i64,
    to: i64,
    /// Bucket width, seconds.
    step: i64,
    /// The tier read: `raw`, `1m` or `1h`.
    tier: String,
    /// Bucket starts, Unix seconds.
    timestamps: Vec<i64>,
    lines: Vec<HistoryLine>,
    /// Cluster mode: the live nodes whose samples were merged (counts and
    /// rates summed, percentiles and per-worker values the largest).
    nodes: Option<u64>,
    /// Cluster mode: nodes that gave no part.
    nodes_missing: Option<Vec<String>>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct HistorySeriesDef {
    name: String,
    unit: String,
    /// The label telling the series' lines apart (none or one).
    labels: Vec<String>,
    help: String,
    /// Needs `worker_id`.
    per_worker: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct HistoryRetention {
    raw: i64,
    #[schema(rename = "1m")]
    minute: i64,
    #[schema(rename = "1h")]
    hour: i64,
    /// Each worker's lines (no raw tier).
    worker_1m: i64,
    worker_1h: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct HistorySeries {
    /// False with `--no-history`.
    enabled: bool,
    interval_seconds: u64,
    worker_interval_seconds: u64,
    /// How long each tier is kept, seconds.
    retention_seconds: HistoryRetention,
    series: Vec<HistorySeriesDef>,
}
