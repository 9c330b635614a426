//! Admin routes: every worker, services, stats, health, gaps. All fan out
//! to every shard and merge.

use std::collections::HashMap;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json as j, Value};

use super::super::error::ApiError;
use super::super::{json, Body, Ctx};
use super::{events, lists};
use super::{put, summary};
use crate::model::time::now_iso8601;
use crate::shard::msg::{ListKind, Reply, Request as ShardRequest};

/// `GET /api/admin/workers`: every worker (filtered) with its age and
/// health, whole (streamed when large) or one page at a time. `total` and
/// `healthy` count the workers in the reply.
#[utoipa::path(
    get,
    path = "/api/admin/workers",
    tag = "admin",
    summary = "Every worker",
    description = "Healthy or not, with `age_seconds` and `is_healthy`. Filters, paging, `index`/`wait` and `since` as `/api/coordinator/workers`.",
    params(super::openapi::WorkerListParams),
    responses((status = 200, description = "Workers, or with `since` the changes", body = super::openapi::AdminWorkersOrDelta))
)]
pub(super) async fn workers(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let tail: lists::Tail = |out, t| {
        put(out, "total", &t.count);
        put(out, "healthy", &t.healthy);
    };
    events::worker_list(ctx, req, ListKind::Admin, tail).await
}

#[utoipa::path(
    get, path = "/api/admin/services", tag = "admin", summary = "Services and their healthy workers",
    responses((status = 200, description = "Services", body = super::openapi::AdminServices))
)]
pub(super) async fn services(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let members = ctx
        .shard
        .map_reduce(
            || ShardRequest::ServiceMembers,
            Reply::members,
            HashMap::<String, Vec<String>>::new(),
            |mut all, part| {
                for (k, mut ids) in part {
                    all.entry(k).or_default().append(&mut ids);
                }
                all
            },
        )
        .await?;
    let mut names: Vec<&String> = members.keys().collect();
    names.sort();
    let list: Vec<_> = names
        .iter()
        .map(|n| {
            let mut ids = members[*n].clone();
            ids.sort();
            j!({"name": n, "worker_count": ids.len(), "workers": ids})
        })
        .collect();
    let out = j!({"services": list, "total_services": names.len()});
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}

/// Tier buckets as the service coordinator names them.
const TIER_KEYS: [(usize, &str); 3] = [
    (1, "gpu_workers"),
    (2, "service_workers"),
    (3, "data_workers"),
];

#[utoipa::path(
    get, path = "/api/admin/stats", tag = "admin", summary = "Counts and average load by tier",
    responses((status = 200, description = "Stats", body = super::openapi::Stats))
)]
pub(super) async fn stats(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let s = summary(ctx).await?;
    let mut by_tier = serde_json::Map::new();
    let mut load = serde_json::Map::new();
    for (t, k) in TIER_KEYS {
        by_tier.insert(k.into(), j!(s.tier_count[t]));
        let avg = if s.tier_count[t] > 0 {
            s.tier_load[t] / s.tier_count[t] as f64
        } else {
            0.0
        };
        load.insert(k.into(), j!(avg));
    }
    let out = j!({
        "total_workers": s.total,
        "healthy_workers": s.healthy,
        "workers_by_tier": by_tier,
        "average_load_by_tier": load,
        "total_tasks_completed": s.tasks_completed,
        "timestamp": now_iso8601(),
    });
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}

/// Cluster mode: a merged `/api/admin/services` has each service once,
/// with the workers every node listed for it.
pub(super) fn fix_services(all: &mut Value, each: &[Value]) {
    let mut by: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for part in each {
        for svc in part["services"].as_array().into_iter().flatten() {
            let Some(name) = svc["name"].as_str() else {
                continue;
            };
            let ids = svc["workers"].as_array().cloned().unwrap_or_default();
            by.entry(name.to_string()).or_default().extend(ids);
        }
    }
    let list: Vec<Value> = by
        .into_iter()
        .map(|(name, mut ids)| {
            ids.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            j!({"name": name, "worker_count": ids.len(), "workers": ids})
        })
        .collect();
    all["total_services"] = j!(list.len());
    all["services"] = Value::Array(list);
}

#[utoipa::path(
    get, path = "/api/admin/health", tag = "admin", summary = "Pool health",
    responses((status = 200, description = "Health", body = super::openapi::AdminHealth))
)]
pub(super) async fn health(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let s = summary(ctx).await?;
    let gpu = s.tier_count[1] > 0;
    let service = s.tier_count[2] > 0;
    let out = j!({
        "overall_status": if gpu && service { "healthy" } else { "degraded" },
        "workers_by_status": s.by_status,
        "has_minimum_workers": {"gpu_workers": gpu, "service_workers": service},
        "total_workers": s.total,
        "healthy_workers": s.healthy,
        "timestamp": now_iso8601(),
    });
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}

#[utoipa::path(
    get, path = "/api/admin/gaps", tag = "admin", summary = "Catalog services with few or no healthy workers",
    responses((status = 200, description = "Coverage", body = super::openapi::Gaps))
)]
pub(super) async fn gaps(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let s = summary(ctx).await?;
    let cfg = &ctx.shard.cfg;
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    let list: Vec<_> = cfg
        .catalog
        .services()
        .iter()
        .map(|svc| {
            let n = s.services.get(&svc.name).copied().unwrap_or(0);
            let status = match n {
                0 => {
                    critical.push(svc.name.clone());
                    "critical"
                }
                1 => {
                    warning.push(svc.name.clone());
                    "warning"
                }
                _ => "ok",
            };
            j!({
                "service": svc.name,
                "tier": svc.tier,
                "requires": svc.requires,
                "healthy_workers": n,
                "status": status,
            })
        })
        .collect();
    let out = j!({
        "gaps": list,
        "critical": critical,
        "warning": warning,
        "timestamp": now_iso8601(),
    });
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}
