//! Edge-facing routes: the healthy worker list and job broadcast.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::super::error::ApiError;
use super::super::request::parse_object;
use super::super::{json, peer, Body, Ctx};
use super::put;
use super::{events, lists};
use crate::model::time::now_iso8601;
use crate::model::wire::BroadcastRequest;
use crate::shard::msg::{BroadcastJob, ListKind, Reply, Request as ShardRequest};

/// `GET /api/coordinator/workers`: every healthy worker (filtered), whole
/// (streamed when large) or one page at a time (`limit`, `after`).
#[utoipa::path(
    get,
    path = "/api/coordinator/workers",
    tag = "pool",
    summary = "The healthy workers",
    description = "The full record of every healthy worker, as edge caches poll it. Filters and paging as every list; `index` + `wait` block until a worker changes; `since` answers only what changed. Replies carry `X-Coordinator-Index`.",
    params(super::openapi::WorkerListParams),
    responses(
        (status = 200, description = "The list, or with `since` the changes", body = super::openapi::WorkerListOrDelta),
    )
)]
pub(super) async fn workers(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let tail: lists::Tail = |out, t| {
        put(out, "count", &t.count);
        put(out, "timestamp", &now_iso8601());
    };
    events::worker_list(ctx, req, ListKind::Healthy, tail).await
}

#[utoipa::path(
    post,
    path = "/api/coordinator/broadcast-job",
    tag = "pool",
    summary = "Send a job to every capable worker",
    description = "Capable = healthy, tier <= 2, and (with `required_capability`) that capability truthy. Each gets one task on its own queue.",
    request_body(content = crate::model::wire::BroadcastRequest, example = json!({"job_type": "reload-model", "job_data": {"model": "llama3:8b"}, "required_capability": "has_gpu"})),
    responses(
        (status = 200, description = "Queued", body = super::openapi::Broadcast),
    )
)]
pub(super) async fn broadcast(
    ctx: Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    // Cluster mode: every other node queues the job for its own workers.
    let head = peer::Head::of(&ctx, &req);
    let body = ctx.body(req).await?;
    let b: BroadcastRequest = parse_object(&body)?;
    super::worker::writable(&ctx)?;
    let others = match head {
        Some(head) => peer::gather_with(&ctx, head, body.clone()),
        None => Box::pin(async { Vec::new() }),
    };
    let job = Arc::new(BroadcastJob {
        job_type: b.job_type,
        job_data: b.job_data,
        required_capability: b.required_capability,
    });
    let local = ctx.shard.map_reduce(
        || ShardRequest::Broadcast(job.clone()),
        Reply::delivered,
        Vec::new(),
        |mut all, part| {
            all.extend(part);
            all
        },
    );
    let (local, others) = futures::join!(local, others);
    let mut delivered = local?;
    for part in others {
        for w in part["workers"].as_array().into_iter().flatten() {
            if let (Some(id), Some(t)) = (w["worker_id"].as_str(), w["task_id"].as_str()) {
                delivered.push((id.to_string(), t.to_string()));
            }
        }
    }
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
