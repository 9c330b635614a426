//! Service discovery: who runs a service, and the catalog with coverage.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json as j;
use serde_json::Value;

use super::super::error::ApiError;
use super::super::request::percent_decode;
use super::super::{json, Body, Ctx};
use super::lists;
use super::{put, put_raw, summary};
use crate::model::time::now_iso8601;
use crate::shard::msg::{ListKind, ListQuery};

/// Cluster mode: the least loaded of every node's workers is the
/// recommended one of a merged discovery.
pub(super) fn fix_discover(all: &mut Value, _each: &[Value]) {
    let best = all["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .min_by(|a, b| {
            let load = |w: &Value| w["current_load"].as_f64().unwrap_or(f64::MAX);
            load(a).total_cmp(&load(b))
        })
        .cloned();
    if let Some(b) = best {
        all["recommended"] = b;
    }
}

/// `GET /api/services/discover/{service}`: the service's healthy workers
/// (filtered) and the least loaded of them, whole (streamed when large) or
/// one page at a time (then `recommended` is the page's least loaded).
/// 503 when a walk from the start finds none.
#[utoipa::path(
    get,
    path = "/api/services/discover/{service}",
    tag = "pool",
    summary = "The healthy workers of a service",
    params(
        ("service" = String, Path, description = "A catalog name or short name (`llm`, `ocr`, `rag`, `ner`, `upload`, `notes`)"),
        ("limit" = Option<u32>, Query, description = "One page of at most this many (clamped to 1..=1000)"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
        ("tier" = Option<u8>, Query, description = "Tier 0..=4", minimum = 0, maximum = 4),
        ("worker_type" = Option<String>, Query, description = "gpu, cpu, storage or edge"),
        ("model" = Option<String>, Query, description = "A model in `loaded_models`"),
        ("status" = Option<String>, Query, description = "healthy, stale, or a reported status"),
    ),
    responses(
        (status = 200, description = "Workers and the recommended one", body = super::openapi::Discovery),
        (status = 503, description = "No healthy worker runs it", body = super::openapi::Detail),
    )
)]
pub(super) async fn discover(
    ctx: Ctx,
    raw: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let name = percent_decode(&raw, false)
        .ok_or_else(|| ApiError::field("service", "invalid percent-encoding"))?;
    // Short names (llm, rag, ...) resolve through the catalog's aliases.
    let service = ctx
        .shard
        .cfg
        .catalog
        .resolve(&name)
        .map(|s| s.name.clone())
        .unwrap_or(name);
    let q = req.uri().query();
    let mut filter = lists::worker_filter(&ctx, q)?;
    // The path names the service; a `service` parameter does not override it.
    filter.service = Some(service.clone());
    let query = ListQuery {
        kind: ListKind::Healthy,
        filter,
        after: None,
        max: 0,
        whole: true,
        best: true,
    };
    let none = || {
        ApiError::Unavailable(format!(
            "No healthy workers available for service: {service}"
        ))
    };
    let paging = lists::paging(q, ctx.shard.count)?;
    drop(req);
    let mut head = Vec::new();
    put(&mut head, "service", &service);
    let tail: lists::Tail = |out, t| {
        put(out, "count", &t.count);
        // A page's least loaded; for a whole list null only if every
        // worker left between its first piece and its end.
        let best = t.best.as_ref().map(|(_, b)| b.as_slice());
        put_raw(out, "recommended", best.unwrap_or(b"null"));
    };
    lists::reply(&ctx, query, paging, head, tail, Some(&none)).await
}

#[utoipa::path(
    get, path = "/api/services/list", tag = "pool", summary = "Catalog services and their healthy workers",
    responses((status = 200, description = "Services", body = super::openapi::ServicesList))
)]
pub(super) async fn list(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let s = summary(&ctx).await?;
    let mut services = serde_json::Map::new();
    let mut available = 0;
    for svc in ctx.shard.cfg.catalog.services() {
        let n = s.services.get(&svc.name).copied().unwrap_or(0);
        if n > 0 {
            available += 1;
        }
        services.insert(
            svc.name.clone(),
            j!({"name": svc.name, "healthy_workers": n, "tier": svc.tier, "requires": svc.requires, "port": svc.port}),
        );
    }
    let out = j!({"services": services, "total_available": available, "timestamp": now_iso8601()});
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}
