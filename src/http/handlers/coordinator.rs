//! Edge-facing routes: the healthy worker list and job broadcast.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::super::error::ApiError;
use super::super::request::parse_object;
use super::super::{json, Body, Ctx};
use super::put;
use super::{events, lists};
use crate::model::time::now_iso8601;
use crate::model::wire::BroadcastRequest;
use crate::shard::msg::{BroadcastJob, ListKind, Reply, Request as ShardRequest};

/// `GET /api/coordinator/workers`: every healthy worker (filtered), whole
/// (streamed when large) or one page at a time (`limit`, `after`).
pub(super) async fn workers(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let tail: lists::Tail = |out, t| {
        put(out, "count", &t.count);
        put(out, "timestamp", &now_iso8601());
    };
    events::worker_list(ctx, req, ListKind::Healthy, tail).await
}

pub(super) async fn broadcast(
    ctx: Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body = ctx.body(req).await?;
    let b: BroadcastRequest = parse_object(&body)?;
    let job = Arc::new(BroadcastJob {
        job_type: b.job_type,
        job_data: b.job_data,
        required_capability: b.required_capability,
    });
    let mut delivered = ctx
        .shard
        .map_reduce(
            || ShardRequest::Broadcast(job.clone()),
            Reply::delivered,
            Vec::new(),
            |mut all, part| {
                all.extend(part);
                all
            },
        )
        .await?;
    if delivered.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "No capable workers available for job type: {}",
            job.job_type
        )));
    }
    delivered.sort();
    let workers: Vec<_> = delivered
        .iter()
        .map(|(w, t)| {
            serde_json::json!({
                "worker_id": w,
                "task_id": t,
                "status": "success",
                "message": "Job queued for the worker",
            })
        })
        .collect();
    let out = serde_json::json!({
        "job_type": job.job_type,
        "broadcasted_to": delivered.len(),
        "successful": delivered.len(),
        "workers": workers,
    });
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}
