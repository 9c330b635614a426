//! Operations routes: liveness summary and Prometheus metrics.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json as j;

use super::super::error::ApiError;
use super::super::{json, Body, Ctx, ROUTE_NAMES};
use super::summary;
use crate::model::time::now_iso8601;
use crate::shard::msg::{Reply, Request as ShardRequest};
use crate::shard::scrape::{encode, Gauges};

pub(super) async fn health(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let s = summary(&ctx).await?;
    let cfg = &ctx.shard.cfg;
    let out = j!({
        "status": "healthy",
        "coordinator": "rma-coordinator-rs",
        "version": env!("CARGO_PKG_VERSION"),
        "environment": cfg.environment,
        "shards": ctx.shard.count,
        "timestamp": now_iso8601(),
        "workers": {"total": s.total, "active": s.healthy, "stale": s.stale},
    });
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}

pub(super) async fn metrics(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let snapshots = ctx.shard.map_reduce(
        || ShardRequest::Metrics,
        Reply::metrics,
        Vec::with_capacity(ctx.shard.count),
        |mut all, snap| {
            all.push(*snap);
            all
        },
    );
    let (s, shards) = futures::join!(summary(&ctx), snapshots);
    let (s, shards) = (s?, shards?);
    let gauges = Gauges {
        workers_total: s.total,
        workers_active: s.healthy,
        services_total: s.services.values().filter(|n| **n > 0).count() as u64,
        tasks_completed: s.tasks_completed,
    };
    let mut text = encode(&ROUTE_NAMES, &shards, &gauges);
    if let Some(store) = ctx.shard.store() {
        store.snapshot().encode(&mut text);
    }
    let mut r = json(StatusCode::OK, text.into_bytes());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}
