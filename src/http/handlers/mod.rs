//! Route handlers, one file per API area. Each returns a response or an
//! `ApiError`; `super::dispatch` turns errors into JSON.

mod admin;
mod auth;
mod coordinator;
mod docs;
mod events;
mod graphql;
mod history;
pub(super) use graphql::{sdl as graphql_sdl, ws_session as graphql_ws_session};
mod events_cluster;
pub(super) mod events_ws;
mod inference;
mod lists;
pub(super) mod openapi;
mod ops;
mod services;
mod session;
mod tasks;
mod ui;
mod worker;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::error::ApiError;
use super::{peer, Body, Ctx, Route};
use crate::shard::msg::{Reply, Request as ShardRequest, Summary};

pub(super) async fn handle(
    mut ctx: Ctx,
    route: Route,
    param: Option<String>,
    allow: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if route.is_proxied() {
        *ctx.relay.borrow_mut() = peer::Head::of(&ctx, &req);
    }
    if matches!(
        route,
        Route::AdminStats
            | Route::AdminHealth
            | Route::AdminGaps
            | Route::ServicesList
            | Route::GraphQl
    ) {
        ctx.creds = peer::creds(&ctx, &req);
    }
    match route {
        Route::Register => worker::register(ctx, req).await,
        Route::Heartbeat => worker::heartbeat(ctx, req).await,
        Route::Unregister => worker::unregister(ctx, param.unwrap_or_default(), req).await,
        Route::Tasks => tasks::pull(ctx, req).await,
        Route::TaskComplete => tasks::complete(ctx, req).await,
        Route::TaskSubmit => tasks::submit(ctx, req).await,
        Route::TaskGet => tasks::get(&ctx, param.unwrap_or_default(), req).await,
        Route::AdminTasks => tasks::admin_list(ctx, req).await,
        Route::InferenceLlm => inference::llm(ctx, req).await,
        Route::InferenceVision => inference::vision(ctx, req).await,
        Route::InferenceRag => inference::rag(ctx, req).await,
        Route::InferenceGraph => inference::graph(ctx, req).await,
        Route::ServiceProxy => inference::service(ctx, param.unwrap_or_default(), req).await,
        Route::ApiServiceProxy => inference::api_service(ctx, param.unwrap_or_default(), req).await,
        Route::AdminPins => inference::pins(ctx, req).await,
        Route::CoordinatorWorkers => peer::whole_pool(ctx, req, None, coordinator::workers).await,
        Route::Events => events_cluster::stream(ctx, req).await,
        Route::Broadcast => coordinator::broadcast(ctx, req).await,
        Route::AdminWorkers => peer::whole_pool(ctx, req, None, admin::workers).await,
        Route::AdminServices => {
            let fix: peer::Fix = admin::fix_services;
            peer::whole_pool(ctx, req, Some(fix), |ctx, _| async move {
                admin::services(&ctx).await
            })
            .await
        }
        Route::AdminStats => admin::stats(&ctx).await,
        Route::AdminHealth => admin::health(&ctx).await,
        Route::AdminGaps => admin::gaps(&ctx).await,
        Route::Discover => {
            let fix: peer::Fix = services::fix_discover;
            let param = param.unwrap_or_default();
            peer::whole_pool(ctx, req, Some(fix), |ctx, req| {
                services::discover(ctx, param, req)
            })
            .await
        }
        Route::ServicesList => services::list(ctx).await,
        Route::Health => ops::health(&ctx).await,
        Route::Metrics => ops::metrics(ctx).await,
        Route::AuthLogin => auth::login(ctx, req).await,
        Route::AuthVerify => auth::verify(ctx).await,
        Route::SessionCreate => session::create(ctx, req).await,
        Route::SessionDelete => session::delete(ctx).await,
        Route::EventsWs => events_ws::upgrade(ctx, req).await,
        Route::OpenApi => Ok(docs::openapi_json()),
        Route::Docs => Ok(docs::swagger()),
        Route::Redoc => Ok(docs::redoc()),
        Route::DocsAsset => docs::asset(param.as_deref().unwrap_or_default()),
        Route::GraphQl => graphql::serve_request(ctx, req).await,
        Route::WorkerDrain => worker::drain(&ctx, &param.unwrap_or_default(), true, req).await,
        Route::WorkerUndrain => worker::drain(&ctx, &param.unwrap_or_default(), false, req).await,
        Route::History => history::query(ctx, req).await,
        Route::HistorySeries => history::list(&ctx),
        Route::TaskRequeue => tasks::requeue(&ctx, &param.unwrap_or_default(), req).await,
        Route::Ui => ui::serve(param.as_deref()),
        Route::ClusterSummary => ops::cluster_summary(&ctx).await,
        Route::NotFound => Err(ApiError::NotFound("Not Found".into())),
        Route::MethodNotAllowed | Route::Preflight => Err(ApiError::MethodNotAllowed { allow }),
    }
}

/// Registry-wide aggregates, merged from every shard.
/// The pool's aggregates: this node's shards, and in cluster mode every
/// other node's (`GET /api/cluster/summary`), merged.
async fn summary(ctx: &Ctx) -> Result<Summary, ApiError> {
    let (local, parts) = futures::join!(node_summary(ctx), peer::summaries(ctx));
    Ok(parts.into_iter().fold(local?, Summary::merge))
}

/// This node's aggregates (its shards).
async fn node_summary(ctx: &Ctx) -> Result<Summary, ApiError> {
    let total = ctx
        .shard
        .map_reduce(
            || ShardRequest::Summary,
            Reply::summary,
            Summary::default(),
            |all, part| all.merge(*part),
        )
        .await?;
    Ok(total)
}

/// Worker JSON pieces (from one shard or several), spliced into one array
/// only when the response is written, so each byte is copied once.
struct Items(Vec<bytes::Bytes>);

impl Items {
    /// Length of the JSON array `[a,b,...]`.
    fn array_len(&self) -> usize {
        let parts = self.0.iter().filter(|p| !p.is_empty());
        2 + parts.clone().map(|p| p.len()).sum::<usize>() + parts.count().saturating_sub(1)
    }

    fn write_array(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        self.write_inner(out);
        out.push(b']');
    }

    /// The elements, comma-separated, without the brackets.
    fn write_inner(&self, out: &mut Vec<u8>) {
        for (i, p) in self.0.iter().filter(|p| !p.is_empty()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(p);
        }
    }
}

/// Appends `"key":` for responses assembled from pre-serialised parts
/// (a comma first unless it is the object's first key).
fn put_key(out: &mut Vec<u8>, key: &str) {
    if out.last().is_some_and(|b| *b != b'{') {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends `"key":` then raw JSON.
fn put_raw(out: &mut Vec<u8>, key: &str, raw: &[u8]) {
    put_key(out, key);
    out.extend_from_slice(raw);
}

/// Appends `"key":[...]` with the workers of every shard.
fn put_items(out: &mut Vec<u8>, key: &str, items: &Items) {
    put_key(out, key);
    items.write_array(out);
}

fn put<T: serde::Serialize>(out: &mut Vec<u8>, key: &str, v: &T) {
    let raw = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
    put_raw(out, key, &raw);
}
