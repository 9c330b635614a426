//! `POST /graphql` (and `GET /graphql?query=`): the pool, its tasks and
//! pins as a GraphQL API (`async-graphql`); GraphiQL for a browser's GET;
//! subscriptions to the change stream over graphql-transport-ws
//! ([`ws_session`]).
//!
//! async-graphql wants `Send` resolvers; a shard (`Rc`, its mesh, its
//! executor) is not. So each request runs two things on its shard thread:
//! the schema's execution, whose resolvers only send an [`Ask`] (plain
//! data) over a channel and await the answer, and a local loop that owns
//! the request's [`Ctx`] and answers each ask with the same code the REST
//! routes run (their typed fan-outs over the shards). No resolver locks or
//! shares shard state; the loop ends with the execution (for a WebSocket
//! session, with the session), and also pumps each subscription's events
//! from the shard's subscriber into its bounded GraphQL stream.
//!
//! Auth is the REST routes': `/graphql` needs any valid credential, and
//! every field needs the role of the REST route it mirrors (`workers` that
//! are all healthy: the client's worker list; any other `workers`: the
//! admin list; `tasks`: admin; `task`: client; ...), checked against the
//! same role table (`access::need`).
//!
//! Must not: run without depth and complexity limits, or answer anything
//! REST would not answer the same caller.

use std::cell::OnceCell;
use std::pin::pin;

use std::collections::HashMap;

use async_graphql::{
    Context, ErrorExtensions, InputObject, Json, Object, Schema, SimpleObject, Subscription,
};
use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::LocalBoxFuture;
use futures::future::{select, Either};
use futures::stream::{AbortHandle, Abortable, BoxStream, FuturesUnordered, SelectAll};
use futures::StreamExt;
use futures::{FutureExt, Stream};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::access::need;
use super::super::error::ApiError;
use super::super::request::{encode_query, query_param};
use super::super::router::Route;
use super::super::{json, Body, Ctx};
use super::{lists, tasks};
use crate::events::frame::Format;
use crate::http::ws::{self, code, Received, Socket};
use crate::model::credential::Role;
use crate::shard::msg::{ListKind, ListQuery, Request as ShardRequest};

/// Deepest query accepted (a worker page's nodes' fields are depth 3).
pub(crate) const MAX_DEPTH: usize = 8;
/// Most complex query accepted (async-graphql counts one per field).
pub(crate) const MAX_COMPLEXITY: usize = 500;

pub(crate) type CoordinatorSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// The schema, built once per shard thread.
fn schema() -> CoordinatorSchema {
    thread_local! {
        static SCHEMA: OnceCell<CoordinatorSchema> = const { OnceCell::new() };
    }
    SCHEMA.with(|s| s.get_or_init(build).clone())
}

fn build() -> CoordinatorSchema {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// The schema in GraphQL SDL (for docs and client generators).
pub(crate) fn sdl() -> String {
    build().sdl()
}

/// What a resolver asks of its shard: plain data, so it may cross the
/// `Send` boundary of async-graphql.
enum Ask {
    /// A page of the worker list, as the REST query string says.
    Workers {
        kind: ListKind,
        query: String,
    },
    Worker(String),
    Services,
    Gaps,
    Stats,
    Health,
    Pins,
    /// A page of `/api/admin/tasks`.
    Tasks(String),
    Task(String),
    Submit(Map<String, Value>),
    SetPin {
        service: Option<String>,
        model: Option<String>,
        workers: Option<Vec<String>>,
    },
    Drain {
        id: String,
        drained: bool,
    },
    /// Follow the change stream (`/api/events`'s query string) into `sink`.
    Subscribe {
        query: String,
        sink: mpsc::Sender<Value>,
    },
}

/// Events a subscription may have in flight to its client before the
/// pump waits (and the shard's own subscriber buffer takes the slack).
const SUBSCRIPTION_BUFFER: usize = 64;

/// The JSON text of a REST reply: resolvers decode it straight into their
/// types (one parse, no intermediate `Value`).
type Answer = Result<Bytes, ApiError>;

/// The resolvers' side of the channel, and who is asking.
struct Bridge {
    tx: mpsc::UnboundedSender<(Ask, oneshot::Sender<Answer>)>,
    /// The caller's role; `Admin` on an open coordinator.
    role: Role,
}

/// Sends `ask` for a field that mirrors REST route `route`; refused when
/// the caller's role may not call that route.
async fn ask(ctx: &Context<'_>, route: Route, ask: Ask) -> async_graphql::Result<Bytes> {
    let bridge = ctx.data::<Bridge>()?;
    if !need(route, false).allows(bridge.role) {
        return Err(async_graphql::Error::new(format!(
            "Forbidden: the {} role may not read this field",
            bridge.role.as_str()
        ))
        .extend_with(|_, e| e.set("status", 403)));
    }
    let (reply, answer) = oneshot::channel();
    bridge
        .tx
        .unbounded_send((ask, reply))
        .map_err(|_| async_graphql::Error::new("the request is ending"))?;
    match answer.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let status = e.status().as_u16();
            Err(async_graphql::Error::new(e.to_string())
                .extend_with(|_, x| x.set("status", status)))
        }
        Err(_) => Err(async_graphql::Error::new("the request is ending")),
    }
}

fn decode<T: DeserializeOwned>(b: Bytes) -> async_graphql::Result<T> {
    serde_json::from_slice(&b).map_err(|e| async_graphql::Error::new(format!("bad reply: {e}")))
}

/// A REST reply's list under `key` (`{"services": [...]}`, ...).
fn decode_list<T: DeserializeOwned>(b: Bytes, key: &str) -> async_graphql::Result<Vec<T>> {
    let mut o: serde_json::Map<String, Value> = decode(b)?;
    let list = o.remove(key).unwrap_or(Value::Array(Vec::new()));
    serde_json::from_value(list).map_err(|e| async_graphql::Error::new(format!("bad reply: {e}")))
}

/// Answers asks with the REST routes' own code until the execution drops
/// its side of the channel, and pumps the change stream into the
/// subscriptions it started (they end with it, or when their client
/// stops listening).
async fn serve(ctx: &Ctx, mut rx: mpsc::UnboundedReceiver<(Ask, oneshot::Sender<Answer>)>) {
    let mut pumps: FuturesUnordered<LocalBoxFuture<'_, ()>> = FuturesUnordered::new();
    loop {
        let got = if pumps.is_empty() {
            rx.next().await
        } else {
            match select(rx.next(), pumps.next()).await {
                Either::Left((got, _)) => got,
                Either::Right(_) => continue,
            }
        };
        let Some((ask, reply)) = got else { return };
        let answer = match ask {
            Ask::Subscribe { query, sink } => match follow(ctx, &query).await {
                Ok(source) => {
                    pumps.push(pump(source, sink).boxed_local());
                    Ok(Bytes::from_static(b"null"))
                }
                Err(e) => Err(e),
            },
            ask => answer(ctx, ask).await,
        };
        let _ = reply.send(answer);
    }
}

/// A change-stream subscription from `/api/events`'s query string.
async fn follow(ctx: &Ctx, q: &str) -> Result<crate::shard::Subscription, ApiError> {
    let (filter, from) = super::events::subscription(&ctx.shard, Some(q), None)?;
    Ok(ctx.shard.subscribe(filter, from, None).await?)
}

/// Moves events from the shard's subscription to a GraphQL stream, one
/// JSON object each (the objects `/api/events/ws` sends); a reset is
/// passed on and ends the stream.
async fn pump(mut source: crate::shard::Subscription, mut sink: mpsc::Sender<Value>) {
    use futures::SinkExt;
    loop {
        let mut out = Vec::new();
        let mut values = Vec::new();
        let reset = match source.next().await {
            crate::shard::Next::Reset(why) => {
                super::events::write_reset(&source, Format::Object, why, &mut out).await;
                values.push(serde_json::from_slice(&out).unwrap_or(Value::Null));
                true
            }
            crate::shard::Next::Events {
                source: from,
                events,
            } => {
                super::events::write_events(
                    &source,
                    from,
                    &events,
                    Format::Object,
                    &mut out,
                    |o| {
                        values.push(serde_json::from_slice(o).unwrap_or(Value::Null));
                        o.clear();
                    },
                );
                false
            }
        };
        for v in values {
            if sink.send(v).await.is_err() {
                return;
            }
        }
        if reset {
            return;
        }
    }
}

async fn answer(ctx: &Ctx, ask: Ask) -> Answer {
    let reply = match ask {
        Ask::Workers { kind, query } => return worker_page(ctx, kind, &query).await,
        Ask::Worker(id) => {
            let owner = ctx.shard.owner_of(&id);
            let got = ctx.shard.call(owner, ShardRequest::Worker(id)).await?;
            return match got.worker()? {
                Some(bytes) => Ok(Bytes::from(bytes)),
                None => Ok(Bytes::from_static(b"null")),
            };
        }
        Ask::Services => super::admin::services(ctx).await?,
        Ask::Gaps => super::admin::gaps(ctx).await?,
        Ask::Stats => super::admin::stats(ctx).await?,
        Ask::Health => super::admin::health(ctx).await?,
        Ask::Pins => super::inference::pins_view(ctx),
        Ask::Tasks(q) => tasks::admin_list_query(ctx, Some(&q)).await?,
        Ask::Task(id) => match tasks::get_task(ctx, id).await {
            Err(ApiError::NotFound(_)) => return Ok(Bytes::from_static(b"null")),
            other => other?,
        },
        Ask::Submit(o) => tasks::submit_object(ctx, o).await?,
        Ask::SetPin {
            service,
            model,
            workers,
        } => super::inference::set_pin(ctx, service, model, workers).await?,
        Ask::Drain { id, drained } => super::worker::set_drained(ctx, id, drained).await?,
        // Taken by `serve`, which keeps the subscription running.
        Ask::Subscribe { .. } => return Err(ApiError::BadRequest("not here".into())),
    };
    body_json(reply).await
}

/// The JSON of a complete REST reply.
async fn body_json(r: Response<Body>) -> Answer {
    Ok(r.into_body()
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .to_bytes())
}

/// One page of workers, as the REST lists write it: `{"workers": [...],
/// "next"}` (no counts: GraphQL does not ask for them).
async fn worker_page(ctx: &Ctx, kind: ListKind, q: &str) -> Answer {
    let q = Some(q);
    let query = ListQuery {
        kind,
        filter: lists::worker_filter(ctx, q)?,
        after: None,
        max: 0,
        whole: false,
        best: false,
    };
    let paging = lists::paging(q, ctx.shard.count)?;
    let no_counts: lists::Tail = |_, _| {};
    body_json(lists::reply(ctx, query, paging, Vec::new(), no_counts, None).await?).await
}

/// `POST /graphql` (`{"query", "variables"?, "operationName"?}`) or
/// `GET /graphql?query=..&variables=..&operationName=..` (queries only).
#[utoipa::path(
    get,
    path = "/graphql",
    tag = "graphql",
    summary = "GraphQL query by GET; GraphiQL; the WebSocket",
    description = "With `query`: runs it (queries only; a mutation is an error with status 405). A browser (`Accept: text/html`) without `query` gets GraphiQL. With `Upgrade: websocket` and `Sec-WebSocket-Protocol: graphql-transport-ws`: a GraphQL WebSocket session (subscriptions, docs/graphql.md).",
    params(
        ("query" = String, Query, description = "The query document"),
        ("variables" = Option<String>, Query, description = "Variables as JSON text"),
        ("operationName" = Option<String>, Query, description = "Which operation"),
    ),
    responses(
        (status = 200, description = "`data` and/or `errors`; GraphiQL for a browser", content(
            (super::openapi::GraphQlResponse = "application/json"),
            (String = "text/html"),
        )),
        (status = 101, description = "Switching Protocols (graphql-transport-ws)"),
    )
)]
#[allow(dead_code)]
pub(super) fn graphql_get() {}

/// `POST /graphql` (`{"query", "variables"?, "operationName"?}`) or
/// `GET /graphql?query=..&variables=..&operationName=..` (queries only).
#[utoipa::path(
    post,
    path = "/graphql",
    tag = "graphql",
    summary = "GraphQL",
    description = "Queries `workers(filter, first, after)`, `worker(id)`, `services`, `gaps`, `stats`, `health`, `pins`, `tasks(filter, first, after)`, `task(id)`; mutations `submitTask`, `setPin`, `removePin` (POST only). Each field needs the role of the REST route it mirrors. Depth at most 8, complexity at most 500. Errors of the query itself come in `errors` with status 200, as GraphQL over HTTP does.",
    request_body(content = super::openapi::GraphQlRequest),
    responses(
        (status = 200, description = "`data` and/or `errors`", body = super::openapi::GraphQlResponse),
    )
)]
pub(super) async fn serve_request(
    ctx: Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        return ws::accept(&ctx, &req, ws::Session::GraphQl);
    }
    let gql: async_graphql::Request = if req.method() == Method::GET {
        let q = req.uri().query();
        // A browser opening /graphql gets GraphiQL.
        let html = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        let query = query_param(q, "query");
        if html && query.is_none() {
            return Ok(super::docs::graphiql());
        }
        let query = query.ok_or_else(|| ApiError::BadRequest("query: required".into()))?;
        let mut r = async_graphql::Request::new(query);
        if let Some(v) = query_param(q, "variables") {
            let vars: Value = serde_json::from_str(&v)
                .map_err(|e| ApiError::BadRequest(format!("variables: {e}")))?;
            r = r.variables(async_graphql::Variables::from_json(vars));
        }
        if let Some(name) = query_param(q, "operationName") {
            r = r.operation_name(name);
        }
        // A GET must not change anything (browsers and caches repeat them).
        r.data(GetRequest)
    } else {
        let body = ctx.body(req).await?;
        let v: Value = super::super::request::parse_json(&body)?;
        if !v.get("query").is_some_and(Value::is_string) {
            return Err(ApiError::field("query", "field required (a string)"));
        }
        serde_json::from_value(v).map_err(|e| ApiError::Unprocessable(format!("body: {e}")))?
    };
    let role = role_of(&ctx);
    let (tx, rx) = mpsc::unbounded();
    let schema = schema();
    let exec = pin!(schema.execute(gql.data(Bridge { tx, role })));
    let served = pin!(serve(&ctx, rx));
    let resp = match select(exec, served).await {
        Either::Left((r, _)) => r,
        // `serve` ends only once the execution dropped its sender.
        Either::Right(((), exec)) => exec.await,
    };
    let out = serde_json::to_vec(&resp).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(json(StatusCode::OK, out))
}

/// The caller's role for field checks: admin on an open coordinator.
fn role_of(ctx: &Ctx) -> Role {
    match ctx.guard.is_open() {
        true => Role::Admin,
        false => ctx.grant.role.unwrap_or(Role::Client),
    }
}

/// A graphql-transport-ws session (the graphql-ws library's protocol):
/// `connection_init` / `connection_ack`, then any number of `subscribe`
/// operations (queries and mutations answer once, subscriptions stream),
/// each answered with `next` messages and `complete` (or `error`); the
/// client's `complete` stops one; `ping` / `pong`. Protocol errors close
/// with the protocol's codes (4400 bad message, 4401 subscribe before the
/// ack, 4409 an id in use, 4429 a second init).
pub(crate) async fn ws_session(ctx: Ctx, mut ws: Socket) {
    let role = role_of(&ctx);
    let (tx, rx) = mpsc::unbounded();
    let (close, reason) = {
        let served = pin!(serve(&ctx, rx));
        let talk = pin!(talk(&ctx, &mut ws, tx, role));
        match select(talk, served).await {
            Either::Left((end, _)) => end,
            // `serve` ends only when `talk` dropped its sender.
            Either::Right(_) => (code::INTERNAL, "session ended"),
        }
    };
    if close != 0 {
        ws.close(close, reason).await;
    }
}

/// What a graphql-transport-ws operation produced: a response, or the end.
type Tagged = (String, Option<async_graphql::Response>);

/// The protocol loop; returns the close code and reason (0: the socket is
/// gone, nothing to close).
async fn talk(
    ctx: &Ctx,
    ws: &mut Socket,
    tx: mpsc::UnboundedSender<(Ask, oneshot::Sender<Answer>)>,
    role: Role,
) -> (u16, &'static str) {
    let schema = schema();
    let mut acked = false;
    let mut running: SelectAll<BoxStream<'static, Tagged>> = SelectAll::new();
    let mut ops: HashMap<String, AbortHandle> = HashMap::new();
    loop {
        let msg = {
            let stop = pin!(ctx.stopping.wait());
            let recv = pin!(ws.recv());
            if running.is_empty() {
                match select(stop, recv).await {
                    Either::Left(_) => return (code::GOING_AWAY, "server shutting down"),
                    Either::Right((m, _)) => Either::Left(m),
                }
            } else {
                let out = pin!(running.next());
                match select(stop, select(recv, out)).await {
                    Either::Left(_) => return (code::GOING_AWAY, "server shutting down"),
                    Either::Right((Either::Left((m, _)), _)) => Either::Left(m),
                    Either::Right((Either::Right((o, _)), _)) => Either::Right(o),
                }
            }
        };
        let text = match msg {
            Either::Right(Some((id, Some(resp)))) => {
                // Errors before anything ran (validation, auth of the
                // operation itself) are `error`; the rest are `next`.
                let failed = resp.data == async_graphql::Value::Null && !resp.errors.is_empty();
                if failed {
                    if let Some(h) = ops.remove(&id) {
                        h.abort();
                    }
                    serde_json::json!({"type": "error", "id": id, "payload": resp.errors})
                } else {
                    serde_json::json!({"type": "next", "id": id, "payload": resp})
                }
            }
            Either::Right(Some((id, None))) => match ops.remove(&id) {
                Some(_) => serde_json::json!({"type": "complete", "id": id}),
                None => continue,
            },
            Either::Right(None) => continue,
            Either::Left(Received::Text(t)) => {
                let Ok(m) = serde_json::from_str::<Value>(&t) else {
                    return (4400, "malformed message");
                };
                let id = m["id"].as_str().map(str::to_string);
                match (m["type"].as_str(), id) {
                    (Some("connection_init"), _) if acked => {
                        return (4429, "Too many initialisation requests")
                    }
                    (Some("connection_init"), _) => {
                        acked = true;
                        serde_json::json!({"type": "connection_ack"})
                    }
                    (Some("ping"), _) => serde_json::json!({"type": "pong"}),
                    (Some("pong"), _) => continue,
                    (Some("subscribe"), Some(_)) if !acked => return (4401, "Unauthorized"),
                    (Some("subscribe"), Some(id)) => {
                        if ops.contains_key(&id) {
                            return (4409, "Subscriber for this id already exists");
                        }
                        let Ok(req) =
                            serde_json::from_value::<async_graphql::Request>(m["payload"].clone())
                        else {
                            return (4400, "malformed subscribe payload");
                        };
                        let bridge = Bridge {
                            tx: tx.clone(),
                            role,
                        };
                        let (handle, reg) = AbortHandle::new_pair();
                        let stream = Abortable::new(schema.execute_stream(req.data(bridge)), reg);
                        let tag = id.clone();
                        let end = futures::stream::once(futures::future::ready((id.clone(), None)));
                        running.push(
                            stream
                                .map(move |r| (tag.clone(), Some(r)))
                                .chain(end)
                                .boxed(),
                        );
                        ops.insert(id, handle);
                        continue;
                    }
                    (Some("complete"), Some(id)) => {
                        if let Some(h) = ops.remove(&id) {
                            h.abort();
                        }
                        continue;
                    }
                    _ => return (4400, "unknown message"),
                }
            }
            Either::Left(Received::Alive) => continue,
            Either::Left(Received::Binary) => return (4400, "binary messages not accepted"),
            Either::Left(Received::Closed) => return (code::NORMAL, ""),
            Either::Left(Received::Violation(c, reason)) => return (c, reason),
            Either::Left(Received::Gone) => return (0, ""),
        };
        if ws.send_text(text.to_string()).await.is_err() {
            return (0, "");
        }
    }
}

/// Marks a request that came as a GET: mutations are refused.
struct GetRequest;

fn refuse_on_get(ctx: &Context<'_>) -> async_graphql::Result<()> {
    match ctx.data_opt::<GetRequest>() {
        Some(_) => Err(async_graphql::Error::new("mutations need POST")
            .extend_with(|_, e| e.set("status", 405))),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Types: what the REST replies carry, in GraphQL's camelCase.

/// A worker, as `/api/admin/workers` lists it (`ageSeconds` and
/// `isHealthy` included).
#[derive(SimpleObject, Deserialize)]
pub(crate) struct Worker {
    worker_id: String,
    worker_type: String,
    /// 1 gpu, 2 cpu, 3 storage, 4 edge.
    tier: i32,
    /// As last reported.
    status: String,
    tunnel_url: Option<String>,
    ip_address: Option<String>,
    endpoint: Option<String>,
    capabilities: Json<Value>,
    services: Json<Value>,
    containers: Json<Value>,
    assigned_services: Vec<String>,
    service_configs: Json<Value>,
    assigned_containers: Json<Value>,
    current_load: f64,
    available_memory: Option<String>,
    loaded_models: Vec<String>,
    active_requests: u64,
    gpu_utilization: Option<f64>,
    services_status: Json<Value>,
    specialization: Option<String>,
    tasks_completed: u64,
    registered_at: String,
    last_heartbeat: String,
    #[serde(default)]
    age_seconds: Option<f64>,
    #[serde(default)]
    is_healthy: Option<bool>,
    /// Drained by an operator: no new routed requests or task leases.
    #[serde(default)]
    drained: bool,
}

/// A page of a list, and where the next one starts.
#[derive(SimpleObject)]
pub(crate) struct PageInfo {
    /// Pass as `after` for the next page; null on the last page.
    end_cursor: Option<String>,
    has_next_page: bool,
}

#[derive(SimpleObject)]
pub(crate) struct WorkerPage {
    nodes: Vec<Worker>,
    page_info: PageInfo,
}

#[derive(SimpleObject, Deserialize)]
pub(crate) struct ServiceWorkers {
    name: String,
    /// Ids of the healthy workers running it.
    workers: Vec<String>,
    worker_count: u64,
}

#[derive(SimpleObject, Deserialize)]
pub(crate) struct Gap {
    service: String,
    tier: i32,
    requires: String,
    healthy_workers: u64,
    /// `critical` (0), `warning` (1) or `ok`.
    status: String,
}

#[derive(SimpleObject, Deserialize)]
pub(crate) struct Stats {
    total_workers: u64,
    healthy_workers: u64,
    workers_by_tier: Json<Value>,
    average_load_by_tier: Json<Value>,
    total_tasks_completed: u64,
    timestamp: String,
}

#[derive(SimpleObject, Deserialize)]
pub(crate) struct Health {
    /// `healthy` with at least one healthy gpu and one healthy cpu worker.
    overall_status: String,
    /// Fresh workers by reported status, and `stale`.
    workers_by_status: Json<Value>,
    has_minimum_workers: Json<Value>,
    total_workers: u64,
    healthy_workers: u64,
    timestamp: String,
}

#[derive(SimpleObject, Deserialize)]
pub(crate) struct Pin {
    /// `service` or `model`.
    kind: String,
    name: String,
    workers: Vec<String>,
}

#[derive(SimpleObject, Deserialize)]
pub(crate) struct Target {
    /// `worker`, `service` or `capability`.
    kind: String,
    name: String,
}

/// A task's record, as `GET /api/tasks/{id}` answers it.
#[derive(SimpleObject, Deserialize)]
pub(crate) struct Task {
    task_id: String,
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    task_type: String,
    payload: Json<Value>,
    state: String,
    target: Target,
    attempts: u32,
    max_attempts: u32,
    worker_id: Option<String>,
    lease_expires_at: Option<String>,
    result: Json<Value>,
    error: Json<Value>,
    finished_by: Option<String>,
    created_at: String,
    updated_at: String,
}

#[derive(SimpleObject)]
pub(crate) struct TaskPage {
    nodes: Vec<Task>,
    page_info: PageInfo,
    /// Every task that matches the filter.
    total: u64,
}

#[derive(SimpleObject, Deserialize)]
pub(crate) struct Submitted {
    task_id: String,
    state: String,
    target: Target,
    max_attempts: u32,
}

/// The worker filters of the REST lists.
#[derive(InputObject, Default)]
pub(crate) struct WorkerFilter {
    /// Workers indexed under this service (short names resolve).
    service: Option<String>,
    /// 0..=4.
    tier: Option<i32>,
    /// gpu, cpu, storage or edge.
    worker_type: Option<String>,
    /// A model in `loadedModels`.
    model: Option<String>,
    /// `healthy`, `stale`, or a reported status.
    status: Option<String>,
}

/// The task filters of `/api/admin/tasks`.
#[derive(InputObject, Default)]
pub(crate) struct TaskFilter {
    /// queued, leased, completed, failed or dead.
    state: Option<String>,
    service: Option<String>,
    /// Tasks targeted at or last leased to this worker.
    worker: Option<String>,
    #[graphql(name = "type")]
    task_type: Option<String>,
}

/// `POST /api/tasks`: exactly one of `workerId`, `service`, `capability`.
#[derive(InputObject)]
pub(crate) struct TaskInput {
    #[graphql(name = "type")]
    task_type: String,
    payload: Option<Json<Value>>,
    worker_id: Option<String>,
    service: Option<String>,
    capability: Option<String>,
    max_attempts: Option<u32>,
}

/// `first` as the REST `limit` (clamped there to 1..=1000; default 100).
fn limit(first: Option<i32>) -> Option<String> {
    Some(first.unwrap_or(100).to_string())
}

fn page_info(next: Option<String>) -> PageInfo {
    PageInfo {
        has_next_page: next.is_some(),
        end_cursor: next,
    }
}

pub(crate) struct Query;

#[Object]
impl Query {
    /// Workers, a page at a time, in the REST lists' stable order. With
    /// `filter.status: "healthy"` the client's list (healthy workers only);
    /// otherwise every worker (admin).
    async fn workers(
        &self,
        ctx: &Context<'_>,
        filter: Option<WorkerFilter>,
        #[graphql(desc = "At most this many (clamped to 1..=1000; default 100)")] first: Option<
            i32,
        >,
        #[graphql(desc = "`pageInfo.endCursor` of the previous page")] after: Option<String>,
    ) -> async_graphql::Result<WorkerPage> {
        let f = filter.unwrap_or_default();
        let healthy = f
            .status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("healthy"));
        let (kind, route) = match healthy {
            true => (ListKind::Healthy, Route::CoordinatorWorkers),
            false => (ListKind::Admin, Route::AdminWorkers),
        };
        let status = f.status.filter(|_| !healthy);
        let query = encode_query(&[
            ("limit", limit(first)),
            ("after", Some(after.unwrap_or_default())),
            ("service", f.service),
            ("tier", f.tier.map(|t| t.to_string())),
            ("worker_type", f.worker_type),
            ("model", f.model),
            ("status", status),
        ]);
        #[derive(Deserialize)]
        struct P {
            workers: Vec<Worker>,
            next: Option<String>,
        }
        let p: P = decode(ask(ctx, route, Ask::Workers { kind, query }).await?)?;
        Ok(WorkerPage {
            nodes: p.workers,
            page_info: page_info(p.next),
        })
    }

    /// One worker by id (null when not registered).
    async fn worker(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<Option<Worker>> {
        decode(ask(ctx, Route::AdminWorkers, Ask::Worker(id)).await?)
    }

    /// Services and their healthy workers.
    async fn services(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ServiceWorkers>> {
        let v = ask(ctx, Route::AdminServices, Ask::Services).await?;
        decode_list(v, "services")
    }

    /// Catalog services with few or no healthy workers.
    async fn gaps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Gap>> {
        let v = ask(ctx, Route::AdminGaps, Ask::Gaps).await?;
        decode_list(v, "gaps")
    }

    async fn stats(&self, ctx: &Context<'_>) -> async_graphql::Result<Stats> {
        decode(ask(ctx, Route::AdminStats, Ask::Stats).await?)
    }

    async fn health(&self, ctx: &Context<'_>) -> async_graphql::Result<Health> {
        decode(ask(ctx, Route::AdminHealth, Ask::Health).await?)
    }

    /// Routing pins.
    async fn pins(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Pin>> {
        let v = ask(ctx, Route::AdminPins, Ask::Pins).await?;
        decode_list(v, "pins")
    }

    /// Tasks, a page at a time in (shard, task id) order.
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        filter: Option<TaskFilter>,
        #[graphql(desc = "At most this many (clamped to 1..=1000; default 100)")] first: Option<
            i32,
        >,
        #[graphql(desc = "`pageInfo.endCursor` of the previous page")] after: Option<String>,
    ) -> async_graphql::Result<TaskPage> {
        let f = filter.unwrap_or_default();
        let query = encode_query(&[
            ("limit", limit(first)),
            ("after", Some(after.unwrap_or_default())),
            ("state", f.state),
            ("service", f.service),
            ("worker", f.worker),
            ("type", f.task_type),
        ]);
        #[derive(Deserialize)]
        struct P {
            tasks: Vec<Task>,
            next: Option<String>,
            count: u64,
        }
        let p: P = decode(ask(ctx, Route::AdminTasks, Ask::Tasks(query)).await?)?;
        Ok(TaskPage {
            nodes: p.tasks,
            page_info: page_info(p.next),
            total: p.count,
        })
    }

    /// One task by id (null when unknown or evicted).
    async fn task(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<Option<Task>> {
        decode(ask(ctx, Route::TaskGet, Ask::Task(id)).await?)
    }
}

pub(crate) struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// The change stream (docs/events.md): one JSON event object per item,
    /// the objects `/api/events/ws` sends. Filters as `/api/events`; from
    /// `since` (a cursor) or from now. A `reset` event ends it (list
    /// again, then subscribe). Over WebSocket (graphql-transport-ws) at
    /// `/graphql`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "worker, task, pin, service (default: all)")] topics: Option<Vec<String>>,
        worker_id: Option<String>,
        service: Option<String>,
        task_id: Option<String>,
        since: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = Json<Value>>> {
        let query = encode_query(&[
            ("topics", topics.map(|t| t.join(","))),
            ("worker_id", worker_id),
            ("service", service),
            ("task_id", task_id),
            ("since", since),
        ]);
        let (sink, events) = mpsc::channel(SUBSCRIPTION_BUFFER);
        ask(ctx, Route::Events, Ask::Subscribe { query, sink }).await?;
        Ok(events.map(Json))
    }
}

pub(crate) struct Mutation;

#[Object]
impl Mutation {
    /// Queues a task (as `POST /api/tasks`).
    async fn submit_task(
        &self,
        ctx: &Context<'_>,
        input: TaskInput,
    ) -> async_graphql::Result<Submitted> {
        refuse_on_get(ctx)?;
        let mut o = Map::new();
        o.insert("type".into(), Value::String(input.task_type));
        if let Some(p) = input.payload {
            o.insert("payload".into(), p.0);
        }
        for (k, v) in [
            ("worker_id", input.worker_id),
            ("service", input.service),
            ("capability", input.capability),
        ] {
            if let Some(v) = v {
                o.insert(k.into(), Value::String(v));
            }
        }
        if let Some(n) = input.max_attempts {
            o.insert("max_attempts".into(), Value::from(n));
        }
        decode(ask(ctx, Route::TaskSubmit, Ask::Submit(o)).await?)
    }

    /// Pins a service or a model (exactly one) to workers; the pins now.
    async fn set_pin(
        &self,
        ctx: &Context<'_>,
        service: Option<String>,
        model: Option<String>,
        workers: Vec<String>,
    ) -> async_graphql::Result<Vec<Pin>> {
        refuse_on_get(ctx)?;
        let a = Ask::SetPin {
            service,
            model,
            workers: Some(workers),
        };
        let v = ask(ctx, Route::AdminPins, a).await?;
        decode_list(v, "pins")
    }

    /// Drains a worker (as `POST /api/admin/workers/{id}/drain`): no new
    /// routed requests or task leases; in-flight ones finish.
    async fn drain_worker(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<Worker> {
        refuse_on_get(ctx)?;
        decode(ask(ctx, Route::WorkerDrain, Ask::Drain { id, drained: true }).await?)
    }

    /// Ends a drain (as `POST /api/admin/workers/{id}/undrain`).
    async fn undrain_worker(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<Worker> {
        refuse_on_get(ctx)?;
        decode(ask(ctx, Route::WorkerUndrain, Ask::Drain { id, drained: false }).await?)
    }

    /// Removes the pin of a service or a model; the pins now.
    async fn remove_pin(
        &self,
        ctx: &Context<'_>,
        service: Option<String>,
        model: Option<String>,
    ) -> async_graphql::Result<Vec<Pin>> {
        refuse_on_get(ctx)?;
        let a = Ask::SetPin {
            service,
            model,
            workers: None,
        };
        let v = ask(ctx, Route::AdminPins, a).await?;
        decode_list(v, "pins")
    }
}
