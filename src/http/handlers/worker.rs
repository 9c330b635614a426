//! Worker-facing routes: register, heartbeat, unregister. Each operates on
//! one worker and runs on its owner shard. (Task pull and completion live
//! in `tasks.rs`.)

use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::super::error::ApiError;
use super::super::request::{parse_object, path_id, valid_id};
use super::super::{json, json_static, peer, Body, Ctx};
use crate::model::wire::{HeartbeatRequest, RegisterRequest};
use crate::model::worker::{Assigned, Containers, Registration, ServiceConfigView, WorkerRecord};
use crate::model::{classify, Classification, ServiceSpec};
use crate::shard::msg::{Coverage, ProxyOp, Reply, Request as ShardRequest};

const HEARTBEAT_OK: &[u8] = br#"{"status":"ok","message":"Heartbeat received"}"#;

fn worker_not_found() -> ApiError {
    ApiError::NotFound("Worker not found".into())
}

/// The registration reply. Its service and container lists are written
/// straight from the catalog entries the worker was assigned, the way
/// `WorkerRecord::registered` derives the record's, so the record can go to
/// its owner shard first and the reply is serialised once, with the id
/// the owner accepted.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Registered<'a> {
    /// Always `registered`.
    status: &'static str,
    worker_id: &'a str,
    worker_type: crate::model::WorkerType,
    tier: u8,
    #[schema(value_type = Vec<String>)]
    assigned_services: Assigned<'a, &'static str>,
    #[schema(value_type = Vec<ServiceConfigView<'static>>)]
    service_configs: Assigned<'a, ServiceConfigView<'static>>,
    #[schema(value_type = Vec<crate::model::env::ContainerJson<'static>>)]
    assigned_containers: Containers<'a>,
    heartbeat_url: &'static str,
    heartbeat_interval: u64,
    coordinator_url: &'a str,
    tunnel_url: Option<&'a str>,
    endpoint: Option<&'a str>,
    message: String,
}

/// Where agents (and the containers they start) are told to reach us:
/// `--public-url`, else the Host the agent came in by (it reached us
/// there), else our listen address.
fn coordinator_url(ctx: &Ctx, host: Option<String>) -> String {
    let cfg = &ctx.shard.cfg;
    match (&cfg.public_url, host) {
        (None, Some(h)) => format!("http://{h}"),
        _ => cfg.coordinator_url(),
    }
}

/// `POST /api/worker/register`: read and check the body, assign services
/// against the cluster's coverage, place the record on its owner shard
/// (drawing a new id if a generated one is taken), then answer.
#[utoipa::path(
    post,
    path = "/api/worker/register",
    tag = "workers",
    summary = "Register a worker",
    description = "Both originals' shapes: the local one (the worker chooses `worker_id`, flags such as `has_gpu` decide the type) and the service one (no `worker_id`: `worker-` + 8 hex digits is made; sizes decide the tier). Re-registering an id replaces its record. The reply carries the fields of both originals.",
    request_body(content = crate::model::wire::RegisterRequest, examples(
        ("local" = (summary = "Local agent: the worker chooses its id", value = json!({"worker_id": "gpu-box-1", "tunnel_url": "https://gpu-box-1.example", "capabilities": {"hostname": "gpu-box-1", "cpu_cores": 16, "has_gpu": true, "gpu_type": "RTX 4090", "gpu_memory": "24GB", "worker_type": "gpu", "ram": "64GB"}, "services": [{"name": "llm-inference", "port": 8105}], "vpn_ip": "10.8.0.5"}))),
        ("service" = (summary = "Service agent: sizes decide the tier", value = json!({"capabilities": {"cpu_cores": 16, "ram": "64GB", "gpu_memory": "24576MB", "gpu_type": "RTX 4090"}, "ip_address": "203.0.113.7"}))),
    )),
    responses(
        (status = 200, description = "Registered", body = Registered),
        (status = 507, description = "The registry is full (--max-workers)", body = super::openapi::Detail),
    )
)]
pub(super) async fn register(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let head = peer::Head::of(&ctx, &req);
    let body = ctx.body(req).await?;
    let r: RegisterRequest = parse_object(&body)?;
    let generated = r.worker_id.is_none();
    let worker_id = match r.worker_id {
        Some(id) => {
            valid_id("worker_id", &id)?;
            id
        }
        None => generate_id(&ctx),
    };
    if let (Some(head), Some(owner)) = (head, ctx.shard.remote_worker(&worker_id)) {
        return peer::relay(&ctx, &owner, head, body, RELAY_WAIT).await;
    }
    writable(&ctx)?;
    // A key limited to id patterns registers only ids it matches (a
    // generated id is `worker-` + hex, matched by `worker-*`).
    ctx.may_act_for(&worker_id)?;
    let capabilities = r.capabilities.unwrap_or_default();
    let cfg = &ctx.shard.cfg;
    check_worker_size(
        cfg,
        &capabilities,
        r.services.as_deref(),
        r.containers.as_deref(),
    )?;
    let class = classify(&capabilities);
    let assigned = assign(&ctx, &worker_id, class).await?;
    let ip_address = r
        .ip_address
        .filter(|s| !s.is_empty())
        .or_else(|| ctx.peer.map(|p| p.ip().to_string()));
    let registration = Registration {
        worker_id,
        capabilities,
        tunnel_url: r.tunnel_url.filter(|s| !s.is_empty()),
        ip_address,
        services: r.services.unwrap_or_default(),
        containers: r.containers.unwrap_or_default(),
    };
    let rec = WorkerRecord::registered(registration, class, &assigned);
    let tunnel_url = rec.tunnel_url.clone();
    let endpoint = rec.endpoint().map(str::to_string);
    let (worker_id, replaced) = place(&ctx, Box::new(rec), generated).await?;
    tracing::info!(worker_id, tier = class.tier, replaced, "worker registered");
    // Once this reply is out, a proxied request on any shard finds the
    // worker (no shard keeps a list without it).
    refresh_routing(&ctx).await;
    let coordinator_url = coordinator_url(&ctx, host);
    let reply = Registered {
        status: "registered",
        worker_id: &worker_id,
        worker_type: class.worker_type,
        tier: class.tier,
        assigned_services: Assigned(&assigned, |s| s.name.as_str()),
        service_configs: Assigned(&assigned, ServiceConfigView::of),
        assigned_containers: Containers {
            specs: &assigned,
            worker_id: &worker_id,
            coordinator_url: &coordinator_url,
        },
        heartbeat_url: "/api/worker/heartbeat",
        heartbeat_interval: cfg.heartbeat_interval_secs,
        coordinator_url: &coordinator_url,
        tunnel_url: tunnel_url.as_deref(),
        endpoint: endpoint.as_deref(),
        message: format!(
            "Worker registered as tier {} ({}) with {} service(s)",
            class.tier,
            class.worker_type.as_str(),
            assigned.len()
        ),
    };
    let out = serde_json::to_vec(&reply).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(json(StatusCode::OK, out))
}

/// The catalog services a worker of `class` is given, balanced against
/// what the whole cluster already covers (not counting `worker_id`'s own
/// current record, so a re-registration is not counted twice).
async fn assign(
    ctx: &Ctx,
    worker_id: &str,
    class: Classification,
) -> Result<Vec<&'static ServiceSpec>, ApiError> {
    let coverage = ctx
        .shard
        .map_reduce(
            || ShardRequest::Coverage {
                exclude: Some(worker_id.to_string()),
            },
            Reply::coverage,
            Coverage::default(),
            Coverage::merge,
        )
        .await?;
    let in_tier = coverage
        .per_tier
        .get(class.tier as usize)
        .copied()
        .unwrap_or(0);
    Ok(ctx.shard.cfg.catalog.assign(
        class.worker_type,
        &|name| coverage.per_service.get(name).copied().unwrap_or(0),
        in_tier,
    ))
}

/// Stores `rec` on its owner shard; returns the id it was stored under and
/// whether it replaced a record. A generated id that is taken is redrawn:
/// 32 random bits collide after ~65k registrations at even odds, and a
/// collision must not silently replace another machine's record.
async fn place(
    ctx: &Ctx,
    mut rec: Box<WorkerRecord>,
    generated: bool,
) -> Result<(String, bool), ApiError> {
    if !generated {
        let id = rec.worker_id.clone();
        let owner = ctx.shard.owner_of(&id);
        let replaced = ctx
            .shard
            .call(owner, ShardRequest::Register(rec))
            .await?
            .registered()?;
        return Ok((id, replaced));
    }
    for _ in 0..=16 {
        let id = rec.worker_id.clone();
        let owner = ctx.shard.owner_of(&id);
        match ctx
            .shard
            .call(owner, ShardRequest::RegisterNew(rec))
            .await?
        {
            Reply::IdTaken(back) => {
                rec = back;
                rec.worker_id = generate_id(ctx);
            }
            reply => return Ok((id, reply.registered()?)),
        }
    }
    Err(ApiError::Unavailable(
        "Could not allocate a free worker id".into(),
    ))
}

/// What one registration may make us keep: `capabilities` up to
/// `--max-capabilities-bytes` of JSON (413), and at most
/// `--max-worker-entries` services and containers (422).
fn check_worker_size(
    cfg: &crate::config::Config,
    capabilities: &serde_json::Map<String, serde_json::Value>,
    services: Option<&[serde_json::Value]>,
    containers: Option<&[serde_json::Value]>,
) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(capabilities).map_or(usize::MAX, |v| v.len());
    if bytes > cfg.max_capabilities_bytes {
        return Err(ApiError::TooLarge(format!(
            "capabilities: {bytes} bytes of JSON, limit {}",
            cfg.max_capabilities_bytes
        )));
    }
    for (field, n) in [
        ("services", services.map_or(0, <[_]>::len)),
        ("containers", containers.map_or(0, <[_]>::len)),
    ] {
        if n > cfg.max_worker_entries {
            return Err(ApiError::field(
                field,
                format!("{n} entries, at most {}", cfg.max_worker_entries),
            ));
        }
    }
    Ok(())
}

/// `worker-` + 8 hex digits, the service original's format. In cluster
/// mode, one this node owns (about one draw in N), so the registration
/// stays here.
fn generate_id(ctx: &Ctx) -> String {
    loop {
        let id = random_id();
        if ctx.shard.remote_worker(&id).is_none() {
            return id;
        }
    }
}

fn random_id() -> String {
    format!("worker-{:08x}", fastrand::u32(..))
}

/// How long a relayed worker request may take on its owner node.
const RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// 503 when this node may not write (cluster mode without a lease).
pub(super) fn writable(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.shard.fenced() {
        return Err(ApiError::Unavailable(
            "this coordinator has no cluster lease (etcd unreachable or without quorum): it \
             refuses changes until it has rejoined; retry shortly"
                .into(),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/api/worker/heartbeat",
    tag = "workers",
    summary = "Heartbeat",
    description = "Every field but `worker_id` may be missing or null; a missing one keeps its value, except `status` (default `healthy`). `task_ids` extends those tasks' leases. Agents re-register on 404.",
    request_body(content = crate::model::wire::HeartbeatRequest, example = json!({"worker_id": "gpu-box-1", "status": "busy", "current_load": 0.42, "available_memory": "48GB", "loaded_models": ["llama3:8b"], "active_requests": 2, "gpu_utilization": 0.6, "services_status": {"llm-inference": "running"}, "specialization": "llm"})),
    responses(
        (status = 200, description = "Recorded", body = super::openapi::Ack, example = json!({"status": "ok", "message": "Heartbeat received"})),
        (status = 404, description = "Unknown worker (re-register)", body = super::openapi::Detail, example = json!({"detail": "Worker not found"})),
    )
)]
pub(super) async fn heartbeat(
    ctx: Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    // A heartbeat replaces the worker's reported state: its size bounds
    // what one worker can make us hold (a real one is ~300 bytes).
    let cfg = &ctx.shard.cfg;
    let head = peer::Head::of(&ctx, &req);
    // Cluster mode: another node extending its worker's leases on tasks
    // this node owns; the worker itself lives there.
    let leases_only = peer::from_node(&ctx, &req);
    let creds = peer::creds(&ctx, &req);
    let body = ctx.body_within(req, cfg.max_capabilities_bytes).await?;
    let mut hb: HeartbeatRequest = parse_object(&body)?;
    valid_id("worker_id", &hb.worker_id)?;
    ctx.may_act_for(&hb.worker_id)?;
    if leases_only {
        let ids = hb
            .task_ids
            .take()
            .or(hb.active_tasks.take())
            .unwrap_or_default();
        super::tasks::extend_leases(&ctx, &hb.worker_id, ids, None).await?;
        return Ok(json_static(HEARTBEAT_OK));
    }
    if let (Some(head), Some(owner)) = (head, ctx.shard.remote_worker(&hb.worker_id)) {
        return peer::relay(&ctx, &owner, head, body, RELAY_WAIT).await;
    }
    let owner = ctx.shard.owner_of(&hb.worker_id);
    if !ctx.shard.is_settled() {
        // Ownership just moved here: the worker's record may still be on
        // its way from etcd. Wait for it rather than answer 404 (which
        // would make the agent register again).
        ctx.shard.settled(RELAY_WAIT).await;
    }
    // Only a heartbeat carrying progress needs its id after the call.
    let progress = match hb.task_ids.take().or(hb.active_tasks.take()) {
        Some(ids) if !ids.is_empty() => Some((hb.worker_id.clone(), ids)),
        _ => None,
    };
    let Some(routing) = ctx
        .shard
        .call(owner, ShardRequest::Heartbeat(Box::new(hb)))
        .await?
        .beat()?
    else {
        if !ctx.shard.is_settled() {
            // Not joined yet (etcd unreachable at start), or its share not
            // read from etcd yet: the worker may well be registered; a 404
            // would make its agent re-register.
            return Err(ApiError::Unavailable(
                "this coordinator has not yet taken over its share of the cluster's workers; retry shortly".into(),
            ));
        }
        return Err(worker_not_found());
    };
    if routing {
        // Rare (the worker came back, went down, or changed models): no
        // shard may keep routing by the old picture once we answer.
        refresh_routing(&ctx).await;
    }
    if let Some((worker_id, ids)) = progress {
        super::tasks::extend_leases(&ctx, &worker_id, ids, creds.as_ref()).await?;
    }
    Ok(json_static(HEARTBEAT_OK))
}

/// Read-your-writes routing: drops every shard's cached candidate lists,
/// so once the caller answers, a proxied request on any shard sees the
/// change. Best effort: a shard that cannot be reached keeps its list
/// until it expires (250 ms).
async fn refresh_routing(ctx: &Ctx) {
    let refresh = || ShardRequest::Proxy(ProxyOp::Refresh);
    if let Err(e) = ctx
        .shard
        .map_reduce(refresh, Reply::done, (), |(), ()| ())
        .await
    {
        tracing::warn!(error = %e, "dropping cached worker lists");
    }
}

#[utoipa::path(
    delete,
    path = "/api/worker/unregister/{worker_id}",
    tag = "workers",
    summary = "Unregister a worker",
    params(("worker_id" = String, Path, description = "The worker's id (percent-encoded)")),
    responses(
        (status = 200, description = "Removed", body = super::openapi::Ack),
        (status = 404, description = "Unknown worker", body = super::openapi::Detail),
        (status = 422, description = "Not a valid id", body = super::openapi::Detail),
    )
)]
pub(super) async fn unregister(
    ctx: Ctx,
    raw_id: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = path_id("worker_id", &raw_id)?;
    ctx.may_act_for(&id)?;
    if let (Some(head), Some(owner)) = (peer::Head::of(&ctx, &req), ctx.shard.remote_worker(&id)) {
        return peer::relay(&ctx, &owner, head, bytes::Bytes::new(), RELAY_WAIT).await;
    }
    writable(&ctx)?;
    let owner = ctx.shard.owner_of(&id);
    let found = ctx
        .shard
        .call(owner, ShardRequest::Unregister(id.clone()))
        .await?
        .found()?;
    if !found {
        return Err(worker_not_found());
    }
    tracing::info!(worker_id = id, "worker unregistered");
    ctx.shard.forget_workers(vec![id.clone()]).await;
    let out = serde_json::json!({"status": "ok", "message": format!("Worker {id} unregistered")});
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}

/// `POST /api/admin/workers/{id}/drain` (or `/undrain`).
#[utoipa::path(
    post,
    path = "/api/admin/workers/{worker_id}/drain",
    tag = "admin",
    summary = "Drain a worker",
    description = "The worker gets no new routed requests and no new task leases; what it is doing finishes. It leaves the healthy lists and the coverage counts, and every view shows it `drained` (`status` and `drained`). Kept across re-registration and restarts. Idempotent.",
    params(("worker_id" = String, Path, description = "The worker's id (percent-encoded)")),
    responses(
        (status = 200, description = "The worker's record now", body = crate::model::worker::WorkerView<'static>),
        (status = 404, description = "Unknown worker", body = super::openapi::Detail),
        (status = 422, description = "Not a valid id", body = super::openapi::Detail),
    )
)]
pub(super) async fn drain(
    ctx: &Ctx,
    raw_id: &str,
    drained: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = path_id("worker_id", raw_id)?;
    if let (Some(head), Some(owner)) = (peer::Head::of(ctx, &req), ctx.shard.remote_worker(&id)) {
        return peer::relay(ctx, &owner, head, bytes::Bytes::new(), RELAY_WAIT).await;
    }
    set_drained(ctx, id, drained).await
}

/// Drains or undrains worker `id` on its owner shard (REST and GraphQL);
/// answers its record as the admin list has it.
pub(super) async fn set_drained(
    ctx: &Ctx,
    id: String,
    drained: bool,
) -> Result<Response<Body>, ApiError> {
    valid_id("worker_id", &id)?;
    writable(ctx)?;
    let owner = ctx.shard.owner_of(&id);
    tracing::info!(worker_id = id, drained, "worker drain requested");
    let request = ShardRequest::Drain { id, drained };
    let (refresh, record) = ctx
        .shard
        .call(owner, request)
        .await?
        .drained()?
        .ok_or_else(worker_not_found)?;
    if refresh {
        refresh_routing(ctx).await;
    }
    Ok(json(StatusCode::OK, record))
}

/// `POST /api/admin/workers/{id}/undrain` (served by [`drain`]).
#[utoipa::path(
    post,
    path = "/api/admin/workers/{worker_id}/undrain",
    tag = "admin",
    summary = "Undrain a worker",
    description = "Ends a drain: the worker gets routed requests and task leases again (while healthy). Idempotent.",
    params(("worker_id" = String, Path, description = "The worker's id (percent-encoded)")),
    responses(
        (status = 200, description = "The worker's record now", body = crate::model::worker::WorkerView<'static>),
        (status = 404, description = "Unknown worker", body = super::openapi::Detail),
        (status = 422, description = "Not a valid id", body = super::openapi::Detail),
    )
)]
#[allow(dead_code)]
pub(super) fn undrain() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_original_format() {
        for _ in 0..100 {
            let id = random_id();
            assert_eq!(id.len(), 15);
            assert!(id.starts_with("worker-"));
            assert!(id[7..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn a_listing_expands_the_container_env_as_the_reply_does() {
        let catalog = crate::model::Catalog::builtin();
        let assigned: Vec<&'static ServiceSpec> = catalog.services().iter().take(3).collect();
        let reg = Registration {
            worker_id: "w".into(),
            capabilities: Default::default(),
            tunnel_url: None,
            ip_address: None,
            services: vec![],
            containers: vec![],
        };
        let rec = WorkerRecord::registered(reg, classify(&Default::default()), &assigned);
        let url = "https://coord.example";
        let reply = serde_json::to_value(Containers {
            specs: &assigned,
            worker_id: "w",
            coordinator_url: url,
        })
        .unwrap();
        let mut listed = Vec::new();
        let live = crate::model::worker::Liveness {
            heartbeat_timeout: std::time::Duration::from_secs(60),
            worker_timeout: std::time::Duration::from_secs(60),
        };
        rec.write_json(&mut listed, std::time::Instant::now(), &live, false, url);
        let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
        assert_eq!(reply, listed["assigned_containers"]);
        assert_eq!(reply[0]["env"]["WORKER_ID"], "w");
        assert_eq!(reply[0]["env"]["COORDINATOR_URL"], url);
        let names: Vec<&str> = assigned.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(listed["assigned_services"], serde_json::json!(names));
    }
}
