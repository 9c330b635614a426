//! Operations routes: liveness summary and Prometheus metrics.
//!
//! `/metrics` gathers the shards' snapshots and the registry summary,
//! reads the process figures off the shard, and appends the build info.
//! Must not keep state between scrapes or block the shard on `/proc`.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json as j;

use super::super::error::ApiError;
use super::super::{json, Body, Ctx, ROUTE_NAMES};
use crate::metrics;
use crate::model::time::now_iso8601;
use crate::runtime;
use crate::shard::msg::{Reply, Request as ShardRequest};
use crate::shard::scrape::{encode, Gauges};

#[utoipa::path(
    get, path = "/health", tag = "ops", summary = "Liveness and worker counts",
    responses((status = 200, description = "Alive", body = super::openapi::Health))
)]
pub(super) async fn health(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    // This node's own counts: a liveness probe must not wait for others.
    let s = super::node_summary(ctx).await?;
    let cfg = &ctx.shard.cfg;
    let mut out = j!({
        "status": "healthy",
        "coordinator": "rma-coordinator-rs",
        "version": env!("CARGO_PKG_VERSION"),
        "environment": cfg.environment,
        "shards": ctx.shard.count,
        "timestamp": now_iso8601(),
        "workers": {"total": s.total, "active": s.healthy, "stale": s.stale},
    });
    // Cluster mode: this node's view (its workers above are its own share).
    if let (Some(view), Some(me)) = (ctx.shard.view(), ctx.shard.node_id()) {
        out["cluster"] = j!({
            "node_id": me,
            "members": view.members.iter().map(|m| j!({"node_id": m.node_id, "url": m.url, "shards": m.shards})).collect::<Vec<_>>(),
            "fenced": view.fenced,
            "epoch": view.epoch,
            "settled": ctx.shard.is_settled(),
        });
    }
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}

/// `GET /api/cluster/summary`: this node's own aggregates, which the
/// other nodes of a cluster merge into their pool views.
#[utoipa::path(
    get, path = "/api/cluster/summary", tag = "ops", summary = "This node's aggregates (cluster mode)",
    description = "What `/health`, `/api/admin/stats`, `/api/admin/health`, `/api/admin/gaps` and `/api/services/list` are computed from, for this node's workers only. The nodes of a cluster ask each other for it; outside cluster mode it is the whole pool.",
    responses((status = 200, description = "Counts by status, tier and service", body = super::openapi::NodeSummary))
)]
pub(super) async fn cluster_summary(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let s = super::node_summary(ctx).await?;
    Ok(json(
        StatusCode::OK,
        serde_json::to_vec(&s).unwrap_or_default(),
    ))
}

#[utoipa::path(
    get, path = "/metrics", tag = "ops", summary = "Prometheus metrics",
    responses((status = 200, description = "Text exposition format 0.0.4", content_type = "text/plain", body = String))
)]
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
    // /proc/self/fd lists every descriptor (tens of thousands at full
    // connection caps): read off the shard, while the fan-out runs.
    let process = runtime::off_shard("process-metrics", metrics::process_families);
    // This node's own workers: Prometheus scrapes every node of a cluster
    // and sums, so a node must not count another's.
    let (s, shards, process) = futures::join!(super::node_summary(&ctx), snapshots, process);
    let (s, shards) = (s?, shards?);
    let catalog_services = ctx
        .shard
        .cfg
        .catalog
        .services()
        .iter()
        .map(|svc| {
            let n = s.services.get(&svc.name).copied().unwrap_or(0);
            (svc.name.clone(), svc.tier, n)
        })
        .collect();
    let gauges = Gauges {
        workers_total: s.total,
        workers_active: s.healthy,
        services_total: s.services.values().filter(|n| **n > 0).count() as u64,
        tasks_completed: s.tasks_completed,
        workers_by_status: s.bounded_statuses(),
        healthy_by_tier: s.tier_count,
        catalog_services,
    };
    let mut text = encode(&ROUTE_NAMES, &shards, &gauges);
    if let Some(store) = ctx.shard.store() {
        store.snapshot().encode(&mut text);
    }
    if let Some(history) = ctx.shard.history() {
        text.push_str(&metrics::encode_text(&history.families()));
    }
    if let Some(view) = ctx.shard.view() {
        let families = [
            metrics::gauge(
                "coordinator_cluster_members",
                "Live nodes of the cluster as this node sees them (itself included when joined).",
                metrics::unlabelled(view.members.len() as u64),
            ),
            metrics::gauge(
                "coordinator_cluster_fenced",
                "1 while this node holds no cluster lease and refuses writes.",
                metrics::unlabelled(view.fenced as u64),
            ),
            metrics::counter(
                "coordinator_cluster_views_total",
                "Cluster views this node has seen (membership changes, fencing and rejoins).",
                metrics::unlabelled(view.epoch),
            ),
        ];
        text.push_str(&metrics::encode_text(&families));
    }
    let mut process = process.unwrap_or_default();
    process.insert(0, metrics::build_info());
    text.push_str(&metrics::encode_text(&process));
    let mut r = json(StatusCode::OK, text.into_bytes());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}
