//! `GET /api/history` and `GET /api/history/series`: historical metrics.
//!
//! Owns: reading and clamping the query, and shaping the answer. The
//! samples, tiers and arithmetic are `crate::history`'s; the query runs on
//! the history thread (the shard only awaits its answer). In cluster mode
//! each node samples its own share; a query merges the other nodes' answers
//! to the same range bucket by bucket ([`merge`]).
//! Must not: read samples itself or block the shard.

use std::collections::HashMap;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::super::error::ApiError;
use super::super::request::{clamp_integer, valid_id};
use super::super::{json, peer, Body, Ctx};
use super::lists::{bad, param};
use crate::history::series::{self, SeriesDef, SERIES};
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
    // In cluster mode every node samples its own share: the others' parts
    // are asked for (node-scoped) and merged below.
    let gather =
        (ctx.shard.node().is_some() && !peer::node_scope(&req)).then(|| req.headers().clone());
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
    let body = match gather {
        None => serde_json::to_vec(&answer),
        Some(headers) => {
            // The others fold the same range into the same buckets.
            let mut path = format!(
                "/api/history?series={}&from={}&to={}&step={}",
                def.name, answer.from, answer.to, answer.step
            );
            if let Some(w) = &answer.worker_id {
                path.push_str(&format!("&worker_id={}", peer::encode(w)));
            }
            let (parts, missing) = peer::gather_path(&ctx, path, &headers).await;
            let mut all = serde_json::to_value(&answer).unwrap_or_default();
            merge(&mut all, &parts, combiner(def));
            peer::mark_nodes(&ctx.shard, &mut all, missing);
            serde_json::to_vec(&all)
        }
    }
    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(json(StatusCode::OK, body))
}

/// How two nodes' values of one bucket make the cluster's: counts and
/// rates of each node's share add up; a latency percentile cannot be
/// added, and the largest is an upper bound of the cluster's; a worker is
/// sampled by one node at a time, and where two overlap (a handover inside
/// one bucket) the larger stands.
fn combiner(def: &SeriesDef) -> fn(f64, f64) -> f64 {
    if def.per_worker || def.unit == "ms" {
        f64::max
    } else {
        |a, b| a + b
    }
}

/// Merges other nodes' answers to the same query into `into`: buckets
/// are matched by timestamp (one the local answer lacks is dropped), lines
/// by their labels (a line only another node has is added), and each of
/// `avg`, `min`, `max` and `last` is combined where both have a value.
fn merge(into: &mut Value, parts: &[Value], combine: fn(f64, f64) -> f64) {
    let stamps: Vec<i64> = into["timestamps"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let at: HashMap<i64, usize> = stamps.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let Some(lines) = into.get_mut("lines").and_then(Value::as_array_mut) else {
        return;
    };
    for part in parts {
        let Some(theirs) = part["lines"].as_array() else {
            continue;
        };
        let their_stamps: Vec<Option<usize>> = part["timestamps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t.as_i64().and_then(|t| at.get(&t).copied()))
                    .collect()
            })
            .unwrap_or_default();
        for line in theirs {
            let pos = match lines.iter().position(|l| l["labels"] == line["labels"]) {
                Some(p) => p,
                None => {
                    let empty = Value::Array(vec![Value::Null; stamps.len()]);
                    lines.push(json!({"labels": line["labels"].clone(), "avg": empty,
                        "min": empty, "max": empty, "last": empty}));
                    lines.len() - 1
                }
            };
            fold_line(&mut lines[pos], line, &their_stamps, combine);
        }
    }
    lines.sort_by_key(|l| l["labels"].to_string());
}

/// Combines another node's `line` into `into`, the same line of this
/// node's answer; `slots` maps each of its buckets to one of ours.
fn fold_line(
    into: &mut Value,
    line: &Value,
    slots: &[Option<usize>],
    combine: fn(f64, f64) -> f64,
) {
    for field in ["avg", "min", "max", "last"] {
        let (Some(src), Some(dst)) = (
            line[field].as_array(),
            into.get_mut(field).and_then(Value::as_array_mut),
        ) else {
            continue;
        };
        for (slot, v) in slots.iter().zip(src) {
            let (Some(Some(slot)), Some(v)) = (slot.map(|i| dst.get_mut(i)), v.as_f64()) else {
                continue;
            };
            let merged = slot.as_f64().map_or(v, |x| combine(x, v));
            *slot = serde_json::Number::from_f64(merged).map_or(Value::Null, Value::Number);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(stamps: &[i64], lines: Value) -> Value {
        json!({"series": "workers", "timestamps": stamps, "lines": lines})
    }

    #[test]
    fn counts_add_up_bucket_by_bucket_and_new_lines_join_in_order() {
        let mut mine = answer(
            &[10, 20, 30],
            json!([{"labels": {"status": "healthy"}, "avg": [1.0, null, 3.0],
                "min": [1.0, null, 3.0], "max": [1.0, null, 3.0], "last": [1.0, null, 3.0]}]),
        );
        // The other node's buckets are offset by one (20 and 30 match, 40
        // does not) and it has a line this node lacks.
        let theirs = answer(
            &[20, 30, 40],
            json!([
                {"labels": {"status": "healthy"}, "avg": [5.0, 2.0, 9.0],
                    "min": [5.0, 2.0, 9.0], "max": [5.0, 2.0, 9.0], "last": [5.0, 2.0, 9.0]},
                {"labels": {"status": "busy"}, "avg": [1.0, null, 7.0],
                    "min": [1.0, null, 7.0], "max": [1.0, null, 7.0], "last": [1.0, null, 7.0]}
            ]),
        );
        merge(&mut mine, &[theirs], combiner(&SERIES[0]));
        let lines = mine["lines"].as_array().unwrap();
        assert_eq!(lines[0]["labels"], json!({"status": "busy"}));
        assert_eq!(lines[0]["avg"], json!([null, 1.0, null]));
        assert_eq!(lines[1]["labels"], json!({"status": "healthy"}));
        assert_eq!(lines[1]["avg"], json!([1.0, 5.0, 5.0]));
        assert_eq!(lines[1]["last"], json!([1.0, 5.0, 5.0]));
    }

    #[test]
    fn percentiles_and_per_worker_series_take_the_larger() {
        let p99 = &SERIES[series::find("latency_p99_ms").unwrap()];
        let load = &SERIES[series::find("worker_load").unwrap()];
        let requests = &SERIES[series::find("requests").unwrap()];
        assert_eq!(combiner(p99)(2.0, 7.0), 7.0);
        assert_eq!(combiner(load)(0.5, 0.25), 0.5);
        assert_eq!(combiner(requests)(2.0, 7.0), 9.0);
        let mut mine = answer(
            &[10],
            json!([{"labels": {"route": "all"}, "avg": [2.0], "min": [1.0], "max": [3.0], "last": [2.0]}]),
        );
        let theirs = answer(
            &[10],
            json!([{"labels": {"route": "all"}, "avg": [4.0], "min": [0.5], "max": [6.0], "last": [1.0]}]),
        );
        merge(&mut mine, &[theirs], combiner(p99));
        let line = &mine["lines"][0];
        assert_eq!(
            (
                line["avg"][0].clone(),
                line["min"][0].clone(),
                line["max"][0].clone(),
                line["last"][0].clone()
            ),
            (json!(4.0), json!(1.0), json!(6.0), json!(2.0))
        );
    }

    #[test]
    fn a_malformed_part_changes_nothing() {
        let lines =
            json!([{"labels": {}, "avg": [1.0], "min": [1.0], "max": [1.0], "last": [1.0]}]);
        let mut mine = answer(&[10], lines.clone());
        merge(
            &mut mine,
            &[json!({"detail": "no"}), json!([1, 2])],
            combiner(&SERIES[0]),
        );
        assert_eq!(mine["lines"], lines);
    }
}
