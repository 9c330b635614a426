//! Worker-facing routes: register, heartbeat, unregister. Each operates on
//! one worker and runs on its owner shard. (Task pull and completion live
//! in `tasks.rs`.)

use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::super::error::ApiError;
use super::super::request::{parse_object, read_body, valid_id};
use super::super::{json, json_static, Body, Ctx};
use crate::model::wire::{HeartbeatRequest, RegisterRequest};
use crate::model::worker::{ContainerConfig, Registration, ServiceConfig, WorkerRecord};
use crate::model::{classify, ServiceSpec};
use crate::shard::msg::{Coverage, Reply, Request as ShardRequest};
use crate::shard::ShardError;

const HEARTBEAT_OK: &[u8] = br#"{"status":"ok","message":"Heartbeat received"}"#;

fn worker_not_found() -> ApiError {
    ApiError::NotFound("Worker not found".into())
}

async fn body(ctx: &Ctx, req: Request<Incoming>) -> Result<bytes::Bytes, ApiError> {
    let cfg = &ctx.shard.cfg;
    read_body(req, cfg.max_body_bytes, cfg.body_timeout).await
}

#[derive(Serialize)]
struct Registered<'a> {
    status: &'static str,
    worker_id: &'a str,
    worker_type: crate::model::WorkerType,
    tier: u8,
    assigned_services: &'a [String],
    service_configs: &'a [ServiceConfig],
    assigned_containers: &'a [ContainerConfig],
    heartbeat_url: &'static str,
    heartbeat_interval: u64,
    coordinator_url: String,
    tunnel_url: Option<&'a str>,
    endpoint: Option<&'a str>,
    message: String,
}

pub async fn register(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let body = body(&ctx, req).await?;
    let r: RegisterRequest = parse_object(&body)?;
    let generated = r.worker_id.is_none();
    let worker_id = match r.worker_id {
        Some(id) => {
            valid_id("worker_id", &id)?;
            id
        }
        None => generate_id(),
    };
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

    // Assignment balances against what the whole cluster already covers.
    let exclude = worker_id.clone();
    let coverage = ctx
        .shard
        .map_reduce(
            || ShardRequest::Coverage {
                exclude: Some(exclude.clone()),
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
    let assigned: Vec<&ServiceSpec> = cfg.catalog.assign(
        class.worker_type,
        &|name| coverage.per_service.get(name).copied().unwrap_or(0),
        in_tier,
    );

    let ip_address = r
        .ip_address
        .filter(|s| !s.is_empty())
        .or_else(|| ctx.peer.map(|p| p.ip().to_string()));
    let registration = Registration {
        worker_id: worker_id.clone(),
        capabilities,
        tunnel_url: r.tunnel_url.filter(|s| !s.is_empty()),
        ip_address,
        services: r.services.unwrap_or_default(),
        containers: r.containers.unwrap_or_default(),
    };
    let rec = WorkerRecord::registered(registration, class, &assigned);
    let reply = Registered {
        status: "registered",
        worker_id: &worker_id,
        worker_type: rec.worker_type,
        tier: rec.tier,
        assigned_services: &rec.assigned_services,
        service_configs: &rec.service_configs,
        assigned_containers: &rec.assigned_containers,
        heartbeat_url: "/api/worker/heartbeat",
        heartbeat_interval: cfg.heartbeat_interval_secs,
        coordinator_url: cfg
            .public_url
            .clone()
            .or_else(|| host.map(|h| format!("http://{h}")))
            .unwrap_or_default(),
        tunnel_url: rec.tunnel_url.as_deref(),
        endpoint: rec.endpoint(),
        message: format!(
            "Worker registered as tier {} ({}) with {} service(s)",
            rec.tier,
            rec.worker_type.as_str(),
            rec.assigned_services.len()
        ),
    };
    let mut out = serde_json::to_vec(&reply).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut rec = Box::new(rec);
    let mut worker_id = worker_id;
    let replaced = if generated {
        // 32 random bits collide after ~65k registrations at even odds, and
        // a collision would silently replace another machine's record: the
        // owner refuses a taken id and we draw again.
        let mut tries = 0;
        loop {
            let owner = ctx.shard.owner_of(&worker_id);
            match ctx
                .shard
                .call(owner, ShardRequest::RegisterNew(rec))
                .await?
            {
                Reply::Registered { replaced } => break replaced,
                Reply::AtCapacity => return Err(ShardError::AtCapacity.into()),
                Reply::IdTaken(back) if tries < 16 => {
                    tries += 1;
                    rec = back;
                    let new_id = generate_id();
                    out = respell_id(&out, &worker_id, &new_id);
                    rec.worker_id = new_id.clone();
                    worker_id = new_id;
                }
                _ => {
                    return Err(ApiError::Unavailable(
                        "Could not allocate a free worker id".into(),
                    ))
                }
            }
        }
    } else {
        let owner = ctx.shard.owner_of(&worker_id);
        ctx.shard
            .call(owner, ShardRequest::Register(rec))
            .await?
            .registered()?
    };
    tracing::info!(worker_id, tier = class.tier, replaced, "worker registered");
    Ok(json(StatusCode::OK, out))
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

/// `worker-` + 8 hex digits, the service original's format.
fn generate_id() -> String {
    format!("worker-{:08x}", fastrand::u32(..))
}

/// The reply with a redrawn generated id: it appears only as the
/// `worker_id` value, and both ids are `worker-` + 8 hex digits, so a
/// byte substitution is exact.
fn respell_id(out: &[u8], old: &str, new: &str) -> Vec<u8> {
    let from = format!("\"worker_id\":\"{old}\"");
    let to = format!("\"worker_id\":\"{new}\"");
    String::from_utf8_lossy(out)
        .replacen(&from, &to, 1)
        .into_bytes()
}

pub async fn heartbeat(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    // A heartbeat replaces the worker's reported state: its size bounds
    // what one worker can make us hold (a real one is ~300 bytes).
    let cfg = &ctx.shard.cfg;
    let limit = cfg.max_body_bytes.min(cfg.max_capabilities_bytes);
    let body = read_body(req, limit, cfg.body_timeout).await?;
    let mut hb: HeartbeatRequest = parse_object(&body)?;
    valid_id("worker_id", &hb.worker_id)?;
    ctx.may_act_for(&hb.worker_id)?;
    let owner = ctx.shard.owner_of(&hb.worker_id);
    // Only a heartbeat carrying progress needs its id after the call.
    let progress = match hb.task_ids.take().or(hb.active_tasks.take()) {
        Some(ids) if !ids.is_empty() => Some((hb.worker_id.clone(), ids)),
        _ => None,
    };
    let found = ctx
        .shard
        .call(owner, ShardRequest::Heartbeat(Box::new(hb)))
        .await?
        .found()?;
    if found {
        if let Some((worker_id, ids)) = progress {
            super::tasks::extend_leases(&ctx, &worker_id, ids).await?;
        }
        Ok(json_static(HEARTBEAT_OK))
    } else {
        Err(worker_not_found())
    }
}

pub async fn unregister(ctx: Ctx, raw_id: String) -> Result<Response<Body>, ApiError> {
    let id = super::super::request::percent_decode(&raw_id, false)
        .ok_or_else(|| ApiError::field("worker_id", "invalid percent-encoding"))?;
    valid_id("worker_id", &id)?;
    ctx.may_act_for(&id)?;
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_original_format() {
        for _ in 0..100 {
            let id = generate_id();
            assert_eq!(id.len(), 15);
            assert!(id.starts_with("worker-"));
            assert!(id[7..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn respelling_replaces_only_the_worker_id_value() {
        let out =
            br#"{"status":"registered","worker_id":"worker-0000abcd","message":"worker-0000abcd"}"#;
        let got = respell_id(out, "worker-0000abcd", "worker-12345678");
        assert_eq!(
            got,
            br#"{"status":"registered","worker_id":"worker-12345678","message":"worker-0000abcd"}"#
        );
    }
}
