//! Route handlers, one file per API area. Each returns a response or an
//! `ApiError`; `super::dispatch` turns errors into JSON.

mod admin;
mod coordinator;
mod inference;
mod ops;
mod services;
mod tasks;
mod worker;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::error::ApiError;
use super::{Body, Ctx, Route};
use crate::shard::msg::{ListKind, Listing, Request as ShardRequest, Summary};

pub async fn handle(
    ctx: Ctx,
    route: Route,
    param: Option<String>,
    allow: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Register => worker::register(ctx, req).await,
        Route::Heartbeat => worker::heartbeat(ctx, req).await,
        Route::Unregister => worker::unregister(ctx, param.unwrap_or_default()).await,
        Route::Tasks => tasks::pull(ctx, req).await,
        Route::TaskComplete => tasks::complete(ctx, req).await,
        Route::TaskSubmit => tasks::submit(ctx, req).await,
        Route::TaskGet => tasks::get(ctx, param.unwrap_or_default()).await,
        Route::AdminTasks => tasks::admin_list(ctx, req).await,
        Route::InferenceLlm => inference::llm(ctx, req).await,
        Route::InferenceVision => inference::vision(ctx, req).await,
        Route::InferenceRag => inference::rag(ctx, req).await,
        Route::InferenceGraph => inference::graph(ctx, req).await,
        Route::ServiceProxy => inference::service(ctx, param.unwrap_or_default(), req).await,
        Route::AdminPins => inference::pins(ctx, req).await,
        Route::CoordinatorWorkers => coordinator::workers(ctx).await,
        Route::Broadcast => coordinator::broadcast(ctx, req).await,
        Route::AdminWorkers => admin::workers(ctx).await,
        Route::AdminServices => admin::services(ctx).await,
        Route::AdminStats => admin::stats(ctx).await,
        Route::AdminHealth => admin::health(ctx).await,
        Route::AdminGaps => admin::gaps(ctx).await,
        Route::Discover => services::discover(ctx, param.unwrap_or_default()).await,
        Route::ServicesList => services::list(ctx).await,
        Route::Health => ops::health(ctx).await,
        Route::Metrics => ops::metrics(ctx).await,
        Route::NotFound => Err(ApiError::NotFound("Not Found".into())),
        Route::MethodNotAllowed | Route::Preflight => Err(ApiError::MethodNotAllowed { allow }),
    }
}

/// Registry-wide aggregates, merged from every shard.
async fn summary(ctx: &Ctx) -> Result<Summary, ApiError> {
    let mut total = Summary::default();
    for r in ctx.shard.fan_out(|| ShardRequest::Summary).await? {
        total.merge(*r.summary()?);
    }
    Ok(total)
}

/// Worker listings from every shard, spliced into one JSON array.
async fn listing(
    ctx: &Ctx,
    make: impl Fn() -> ShardRequest,
) -> Result<(Vec<u8>, Listing), ApiError> {
    let parts = ctx.shard.fan_out(make).await?;
    let mut items = Vec::with_capacity(2);
    let mut merged = Listing::default();
    items.push(b'[');
    for p in parts {
        let l = p.listing()?;
        if l.count > 0 {
            if merged.count > 0 {
                items.push(b',');
            }
            items.extend_from_slice(&l.items);
        }
        merged.count += l.count;
        merged.healthy += l.healthy;
        if let Some((load, rec)) = l.best {
            if merged.best.as_ref().is_none_or(|(b, _)| load < *b) {
                merged.best = Some((load, rec));
            }
        }
    }
    items.push(b']');
    Ok((items, merged))
}

fn list_request(kind: ListKind) -> impl Fn() -> ShardRequest {
    move || ShardRequest::List(kind)
}

/// Appends `"key":` then a JSON value, for responses assembled from
/// pre-serialised parts.
fn put_raw(out: &mut Vec<u8>, key: &str, raw: &[u8]) {
    if out.len() > 1 {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(raw);
}

fn put<T: serde::Serialize>(out: &mut Vec<u8>, key: &str, v: &T) {
    let raw = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
    put_raw(out, key, &raw);
}
