//! Service discovery: who runs a service, and the catalog with coverage.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json as j;

use super::super::error::ApiError;
use super::super::request::percent_decode;
use super::super::{json, Body, Ctx};
use super::lists::{self, Tally, Walk};
use super::{put, put_items, put_raw, summary};
use crate::model::time::now_iso8601;
use crate::shard::msg::{ListKind, ListQuery};

/// `GET /api/services/discover/{service}`: the service's healthy workers
/// (filtered) and the least loaded of them, whole (streamed when large) or
/// one page at a time (then `recommended` is the page's least loaded).
/// 503 when a walk from the start finds none.
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
    if let Some(paging) = lists::paging(q, ctx.shard.count)? {
        drop(req);
        let from_start = paging.after.is_none();
        let page = lists::page(&ctx, query, paging).await?;
        if from_start && page.tally.count == 0 {
            return Err(none());
        }
        let best = page.tally.best.as_ref().map(|(_, b)| b.as_slice());
        let best = best.unwrap_or(b"null");
        let mut out = Vec::with_capacity(page.items.array_len() + best.len() + 256);
        out.push(b'{');
        put(&mut out, "service", &service);
        put_items(&mut out, "workers", &page.items);
        put(&mut out, "count", &page.tally.count);
        put_raw(&mut out, "recommended", best);
        put(&mut out, "next", &page.next);
        out.push(b'}');
        return Ok(json(StatusCode::OK, out));
    }
    drop(req);
    let mut walk = Walk::start(&ctx, query).await?;
    if !walk.any().await? {
        return Err(none());
    }
    let mut prefix = b"{".to_vec();
    put(&mut prefix, "service", &service);
    prefix.extend_from_slice(b",\"workers\":[");
    let suffix = |t: &Tally| {
        let best = t.best.as_ref().map(|(_, b)| b.as_slice());
        let mut out = b"]".to_vec();
        put(&mut out, "count", &t.count);
        // Only null if every worker left between the first piece and the end.
        put_raw(&mut out, "recommended", best.unwrap_or(b"null"));
        out.push(b'}');
        out
    };
    walk.respond(prefix, Box::new(suffix)).await
}

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
