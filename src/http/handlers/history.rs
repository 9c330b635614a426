//! `GET /api/history` and `GET /api/history/series`: historical metrics.
//!
//! Owns: reading and clamping the query, and shaping the answer. The
//! samples, tiers and arithmetic are `crate::history`'s; the query runs on
//! the history thread (the shard only awaits its answer).
//! Must not: read samples itself or block the shard.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::super::error::ApiError;
use super::super::request::{clamp_integer, valid_id};
use super::super::{json, Body, Ctx};
use super::lists::{bad, param};
use crate::history::series::{self, SERIES};
use crate::history::Query;

/// Longest range one query may span (the longest a tier may be kept).
const MAX_SPAN: u64 = crate::history::rollup::MAX_RETENTION as u64;

/// A whole number of seconds, clamped to `lo..=hi`.
fn seconds(q: Option<&str>, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    param(q, name)?
        .map(|v| {
            clamp_integer(&v, lo, hi).ok_or_else(|| bad(name, "must be a whole number of seconds"))
        })
        .transpose()
}

#[utoipa::path(
    get,
    path = "/api/history",
    tag = "admin",
    summary = "Historical metrics of one series",
    description = "Samples of one series over a time range, folded into `step`-second buckets from the finest stored tier that covers the range (raw every `--history-interval`, 1 minute, 1 hour). Each line's arrays align with `timestamps`; `null` where nothing was sampled.",
    params(
        ("series" = String, Query, description = "A series name from `GET /api/history/series`"),
        ("worker_id" = Option<String>, Query, description = "The worker, for the per-worker series (`worker_load`, `worker_active`) only"),
        ("from" = Option<u64>, Query, description = "Range start, Unix seconds (default: an hour before `to`)"),
        ("to" = Option<u64>, Query, description = "Range end, Unix seconds (default: now)"),
        ("step" = Option<u64>, Query, description = "Bucket width in seconds; rounded up to a multiple of the tier's and so that at most 2000 buckets are returned"),
    ),
    responses(
        (status = 200, description = "The series", body = super::openapi::HistoryAnswer),
        (status = 503, description = "History is off (`--no-history`) or busy", body = super::openapi::Detail),
    )
)]
pub(super) async fn query(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = req.uri().query().map(str::to_string);
    drop(req);
    let q = q.as_deref();
    let name = param(q, "series")?.ok_or_else(|| bad("series", "is required"))?;
    let idx = series::find(&name).ok_or_else(|| {
        let names: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
        bad(
            "series",
            format!("unknown series; one of {}", names.join(", ")),
        )
    })?;
    let def = &SERIES[idx];
    let worker = match (param(q, "worker_id")?, def.per_worker) {
        (Some(w), true) => {
            valid_id("worker_id", &w)?;
            w
        }
        (None, true) => return Err(bad("worker_id", format!("is required for series {name}"))),
        (Some(_), false) => {
            return Err(bad("worker_id", format!("series {name} is not per worker")))
        }
        (None, false) => String::new(),
    };
    let history = ctx
        .shard
        .history()
        .ok_or_else(|| ApiError::Unavailable("History is off (--no-history)".into()))?;
    let now = crate::history::unix_time().as_secs();
    // The range is clamped to what can exist: nothing before the epoch,
    // nothing later than the next sample, at most MAX_SPAN long.
    let latest = now + history.settings().interval_s as u64;
    let to = seconds(q, "to", 1, latest)?.unwrap_or(now);
    let from = seconds(q, "from", 0, latest)?.unwrap_or(to.saturating_sub(3600));
    if from >= to {
        return Err(bad("from", "must be before to"));
    }
    let from = from.max(to.saturating_sub(MAX_SPAN));
    let step = seconds(q, "step", 1, MAX_SPAN)?;
    let answer = history
        .query(Query {
            series: idx,
            worker,
            from: from as i64,
            to: to as i64,
            step: step.map(|s| s as i64),
        })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let body = serde_json::to_vec(&answer).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(json(StatusCode::OK, body))
}

#[utoipa::path(
    get,
    path = "/api/history/series",
    tag = "admin",
    summary = "The series kept as history",
    responses((status = 200, description = "Series, sample intervals and retention per tier", body = super::openapi::HistorySeries))
)]
pub(super) fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let c = &ctx.shard.cfg;
    let r = c.history_retention;
    let body = json!({
        "enabled": ctx.shard.history().is_some(),
        "interval_seconds": c.history_interval.as_secs(),
        "worker_interval_seconds": c.history_worker_interval.as_secs(),
        "retention_seconds": {"raw": r.raw, "1m": r.minute, "1h": r.hour,
            "worker_1m": r.worker_minute, "worker_1h": r.worker_hour},
        "series": &SERIES[..],
    });
    Ok(json(StatusCode::OK, body.to_string().into_bytes()))
}
