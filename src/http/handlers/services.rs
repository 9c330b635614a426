//! Service discovery: who runs a service, and the catalog with coverage.

use hyper::{Response, StatusCode};
use serde_json::json as j;

use super::super::error::ApiError;
use super::super::request::percent_decode;
use super::super::{json, Body, Ctx};
use super::{listing, put, put_items, put_raw, summary};
use crate::model::time::now_iso8601;
use crate::shard::msg::Request as ShardRequest;

pub(super) async fn discover(ctx: Ctx, raw: String) -> Result<Response<Body>, ApiError> {
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
    let (items, l) = listing(&ctx, || ShardRequest::Discover(service.clone())).await?;
    let Some((_, best)) = l.best else {
        return Err(ApiError::Unavailable(format!(
            "No healthy workers available for service: {service}"
        )));
    };
    let mut out = Vec::with_capacity(items.array_len() + best.len() + 64);
    out.push(b'{');
    put(&mut out, "service", &service);
    put_items(&mut out, "workers", &items);
    put(&mut out, "count", &l.count);
    put_raw(&mut out, "recommended", &best);
    out.push(b'}');
    Ok(json(StatusCode::OK, out))
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
