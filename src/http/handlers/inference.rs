//! Inference routes (the service coordinator's `/api/inference/*`), the
//! generic proxies (the local coordinator's `ANY /service/{service}/{path}`,
//! the service coordinator's `ANY /api/service/{name}/{path}`), and the
//! admin pins that steer them. Worker choice, failover and streaming
//! are in `proxy`; this file turns HTTP requests into `Outbound`s
//! and proxy outcomes into responses.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::super::accesslog::REQUEST_ID;
use super::super::error::ApiError;
use super::super::request::{encode_query, parse_object, percent_decode, query_param};
use super::super::{json, Body, Ctx};
use crate::proxy::{self, Outbound, Upstream};
use crate::shard::msg::{ProxyOp, Reply, Request as ShardRequest};

const SESSION_HEADER: &str = "x-session-id";

fn session(h: &HeaderMap) -> Option<String> {
    h.get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The catalog name for a service or its short alias (`llm`, `ocr`, ...).
fn service_name(ctx: &Ctx, s: &str) -> String {
    ctx.shard
        .cfg
        .catalog
        .resolve(s)
        .map(|spec| spec.name.clone())
        .unwrap_or_else(|| s.to_string())
}

/// Healthy workers of `service` from every shard; `None` when the service
/// is unknown (not in the catalog, declared by no registered worker, and
/// not `known` to the route), so that random names create no per-service
/// state.
async fn fetch(ctx: &Ctx, service: String, known: bool) -> Result<Option<Vec<Upstream>>, ApiError> {
    let in_catalog = known || ctx.shard.cfg.catalog.resolve(&service).is_some();
    let (mut all, known) = ctx
        .shard
        .map_reduce(
            || ShardRequest::Proxy(ProxyOp::Candidates(service.clone())),
            Reply::upstreams,
            (Vec::new(), in_catalog),
            |(mut all, known), (ups, declared)| {
                all.extend(ups);
                (all, known | declared)
            },
        )
        .await?;
    // Same order on every shard, so the routing inputs do not depend on
    // which shard answered first.
    all.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    Ok(known.then_some(all))
}

/// Forwards `out`; `admin` (the caller carried our `--api-key`) decides
/// whether a failure's detail may show the worker's address and the OS
/// error, or only its id. Operators get the full error in the log.
async fn forward(ctx: &Ctx, out: Outbound, admin: bool) -> Result<Response<Body>, ApiError> {
    forward_known(ctx, out, admin, false).await
}

/// [`forward`], where `known` says the route itself names the service,
/// so no worker for it is a 503 rather than a 404.
async fn forward_known(
    ctx: &Ctx,
    out: Outbound,
    admin: bool,
    known: bool,
) -> Result<Response<Body>, ApiError> {
    let cfg = ctx.shard.cfg.proxy();
    let candidates = |service| fetch(ctx, service, known);
    let body = out.body.clone();
    match proxy::forward(&ctx.shard.proxy, &cfg, out, candidates).await? {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, crate::http::streamed(body)))
        }
        Err(failed) => {
            // Cluster mode: no worker of this node serves it; a worker
            // another node owns may.
            if matches!(
                failed.error,
                proxy::ProxyError::NoWorker(_) | proxy::ProxyError::UnknownService(_)
            ) {
                let head = ctx.relay.borrow_mut().take();
                if let Some(head) = head {
                    if let Some(resp) =
                        crate::http::peer::relay_to_any(ctx, head, body, cfg.request_timeout).await
                    {
                        return Ok(resp);
                    }
                }
            }
            if let Some(worker) = &failed.worker {
                tracing::warn!(worker = %worker, error = %failed.error, "proxied request failed");
            }
            Err(failed.for_caller(admin).into())
        }
    }
}

/// An admin caller sees worker addresses and OS errors in 502/504
/// details; everyone else sees the worker's id only.
fn is_admin(ctx: &Ctx, _h: &HeaderMap) -> bool {
    ctx.grant.role == Some(crate::model::credential::Role::Admin)
}

/// A JSON `POST` to `path_and_query` on a worker of `alias`'s service,
/// carrying the client's session and the headers [`json_headers`] keeps;
/// callers add the model and body when they have them.
fn post_to(ctx: &Ctx, h: &HeaderMap, alias: &str, path_and_query: String) -> Outbound {
    Outbound {
        service: service_name(ctx, alias),
        model: None,
        session: session(h),
        method: Method::POST,
        path_and_query,
        headers: json_headers(h, ctx),
        body: Bytes::new(),
    }
}

/// Built from scratch (only these headers go on), so there is nothing
/// hop-by-hop to strip: only `X-Forwarded-For` is added. `Authorization`
/// goes on unless it carries our own key; `X-Request-Id` goes on; `Via` goes on so that a loop
/// through these routes is seen too.
fn json_headers(h: &HeaderMap, ctx: &Ctx) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for name in [hyper::header::ACCEPT, hyper::header::AUTHORIZATION] {
        if let Some(v) = h.get(&name) {
            out.insert(name, v.clone());
        }
    }
    // The request's id, so the worker's logs can be matched with ours.
    out.insert(REQUEST_ID, ctx.request_id.clone());
    for v in h.get_all(hyper::header::VIA) {
        out.append(hyper::header::VIA, v.clone());
    }
    crate::proxy::guard::strip_credentials(
        &mut out,
        ctx.guard.authorization_is_ours(&ctx.grant, h),
    );
    proxy::append_forwarded_for(&mut out, ctx.peer.map(|p| p.ip()));
    out
}

/// `{model, prompt, max_tokens=512, temperature=0.7, stream?}` with the
/// original defaults; unknown fields pass through to the worker.
fn inference_body(o: &Map<String, Value>) -> Result<(String, Map<String, Value>), ApiError> {
    let model = match o.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ApiError::field("model", "field required")),
    };
    match o.get("prompt") {
        Some(Value::String(_)) => {}
        _ => return Err(ApiError::field("prompt", "field required")),
    }
    // The service original's pydantic model: `max_tokens: int = 512`,
    // `temperature: float = 0.7`; a value of another type is a 422, null
    // is the default.
    let mut b = o.clone();
    match o.get("max_tokens") {
        None | Some(Value::Null) => {
            b.insert("max_tokens".into(), json!(512));
        }
        Some(v) if crate::model::wire::whole_number(v).is_some() => {}
        Some(_) => {
            return Err(ApiError::field(
                "max_tokens",
                "expected a non-negative integer",
            ))
        }
    }
    match o.get("temperature") {
        None | Some(Value::Null) => {
            b.insert("temperature".into(), json!(0.7));
        }
        Some(Value::Number(_)) => {}
        Some(_) => return Err(ApiError::field("temperature", "expected a number")),
    }
    Ok((model, b))
}

async fn read_json_object(
    ctx: &Ctx,
    req: Request<Incoming>,
) -> Result<Map<String, Value>, ApiError> {
    let body = ctx.body(req).await?;
    parse_object(&body)
}

/// `POST /api/inference/llm` -> worker `POST /v1/completions` (OpenAI style).
#[utoipa::path(
    post, path = "/api/inference/llm", tag = "inference", summary = "Completion (to a worker's /v1/completions)",
    request_body(content = super::openapi::Inference, example = json!({"model": "llama3:8b", "prompt": "Say hello", "max_tokens": 64, "temperature": 0.7})),
    responses(
        (status = "default", description = "The worker's own answer, relayed as it sent it (any status, headers and body); or the coordinator's `{\"detail\"}` error: 502 no worker could be reached, 503 no healthy worker serves it, 504 the worker did not answer in time, and the 4xx of a bad request"),
    )
)]
pub(super) async fn llm(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let mut out = post_to(&ctx, req.headers(), "llm", "/v1/completions".into());
    let admin = is_admin(&ctx, req.headers());
    let o = read_json_object(&ctx, req).await?;
    let (model, body) = inference_body(&o)?;
    out.model = Some(model);
    out.body = Bytes::from(Value::Object(body).to_string());
    forward(&ctx, out, admin).await
}

/// `POST /api/inference/vision` -> worker `POST /api/generate` (Ollama style).
#[utoipa::path(
    post, path = "/api/inference/vision", tag = "inference", summary = "Vision (to a worker's /api/generate)",
    request_body(content = super::openapi::Inference, example = json!({"model": "llava", "prompt": "What is in the picture?", "images": ["<base64>"]})),
    responses(
        (status = "default", description = "The worker's own answer, relayed as it sent it (any status, headers and body); or the coordinator's `{\"detail\"}` error: 502 no worker could be reached, 503 no healthy worker serves it, 504 the worker did not answer in time, and the 4xx of a bad request"),
    )
)]
pub(super) async fn vision(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let mut out = post_to(&ctx, req.headers(), "ocr", "/api/generate".into());
    let admin = is_admin(&ctx, req.headers());
    let o = read_json_object(&ctx, req).await?;
    let (model, b) = inference_body(&o)?;
    let mut body = json!({
        "model": model,
        "prompt": b["prompt"],
        "stream": b.get("stream").cloned().unwrap_or(json!(false)),
        "options": {"temperature": b["temperature"], "num_predict": b["max_tokens"]},
    });
    if let Some(images) = b.get("images") {
        body["images"] = images.clone();
    }
    out.model = Some(model);
    out.body = Bytes::from(body.to_string());
    forward(&ctx, out, admin).await
}

/// `POST /api/inference/rag/query?query=..&context=..` -> worker `POST /query?...`.
#[utoipa::path(
    post, path = "/api/inference/rag/query", tag = "inference", summary = "RAG query (to a worker's /query)",
    params(
        ("query" = String, Query, description = "The question"),
        ("context" = Option<String>, Query, description = "Extra context"),
    ),
    responses(
        (status = "default", description = "The worker's own answer, relayed as it sent it (any status, headers and body); or the coordinator's `{\"detail\"}` error: 502 no worker could be reached, 503 no healthy worker serves it, 504 the worker did not answer in time, and the 4xx of a bad request"),
    )
)]
pub(super) async fn rag(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = req.uri().query();
    let text = query_param(q, "query").ok_or_else(|| ApiError::field("query", "field required"))?;
    let qs = encode_query(&[
        ("query", Some(text)),
        ("context", query_param(q, "context")),
    ]);
    let out = post_to(&ctx, req.headers(), "rag", format!("/query?{qs}"));
    forward(&ctx, out, is_admin(&ctx, req.headers())).await
}

/// `POST /api/inference/graph/extract?text=..` -> worker `POST /extract?text=..`.
#[utoipa::path(
    post, path = "/api/inference/graph/extract", tag = "inference", summary = "Entity extraction (to a worker's /extract)",
    params(("text" = String, Query, description = "The text")),
    responses(
        (status = "default", description = "The worker's own answer, relayed as it sent it (any status, headers and body); or the coordinator's `{\"detail\"}` error: 502 no worker could be reached, 503 no healthy worker serves it, 504 the worker did not answer in time, and the 4xx of a bad request"),
    )
)]
pub(super) async fn graph(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = req.uri().query();
    let text = query_param(q, "text").ok_or_else(|| ApiError::field("text", "field required"))?;
    let path = format!("/extract?{}", encode_query(&[("text", Some(text))]));
    let admin = is_admin(&ctx, req.headers());
    forward(&ctx, post_to(&ctx, req.headers(), "ner", path), admin).await
}

/// `ANY /service/{service}/{path}`: method, path, query, headers (minus
/// hop-by-hop and our credentials, plus X-Forwarded-For and Via) and body
/// go to a worker of the service. The path is normalised first
/// (`guard::normalise_path`: `.`/`..`, also as `%2e`, resolved; climbing
/// above the service root, or an encoded `/` or `\`, is a 400), so it
/// stays under the worker URL's prefix; the query passes unchanged.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/service/{service}/{path}",
    tag = "inference",
    summary = "Any request, to a worker of a service",
    description = "Method, `/{path}?{query}`, headers (minus hop-by-hop and credentials) and body go to a healthy worker of the service, balanced with failover. `path` may hold several segments.",
    params(
        ("service" = String, Path, description = "A catalog name or short name"),
        ("path" = String, Path, description = "The worker's path (several segments; no encoded `/` or `\\`, no climbing above the service with `..`)", pattern = r"^(?!\.\.?$)[^/\\]*$"),
    ),
    request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "Any body of any type, or none, passed on as it is"),
    responses(
        (status = "default", description = "The worker's own answer, relayed as it sent it (any status, headers and body); or the coordinator's `{\"detail\"}` error: 502 no worker could be reached, 503 no healthy worker serves it, 504 the worker did not answer in time, and the 4xx of a bad request"),
    )
)]
pub(super) async fn service(
    ctx: Ctx,
    rest: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (svc, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let svc = percent_decode(svc, false)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::NotFound("Not Found".into()))?;
    let service = service_name(&ctx, &svc);
    generic(&ctx, service, path, req, false).await
}

/// The names the service original proxies under `/api/service/`. Each is
/// resolved like a `/service/` name (the catalog's short names: `upload`
/// is `document-processing`, `rag` `rag-embeddings`, `notes` `notes-coa`,
/// `ner` `ner-extraction`); `client-rag` and `doc-processor` are catalog
/// services; no catalog has a `frontend`: it goes to workers that declare
/// one. The original matched "container name contains the name" instead,
/// so its `rag` also caught `client-rag` containers.
const API_SERVICE_NAMES: [&str; 7] = [
    "upload",
    "rag",
    "notes",
    "ner",
    "client-rag",
    "doc-processor",
    "frontend",
];

/// `ANY /api/service/{name}/{path}` (the service original's proxy, which
/// its edge router forwards to): like `/service/`, for the names in
/// [`API_SERVICE_NAMES`]. The worker is sent `/{path}` and the query, as
/// the original sent `{tunnel_url}/{path}`. Any other name is a 404; a
/// listed name no healthy worker serves is a 503, as in the original.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/api/service/{name}/{path}",
    tag = "inference",
    summary = "The service original's proxy",
    description = "`name` is one of upload, rag, notes, ner, client-rag, doc-processor, frontend; the worker is sent `/{path}?{query}`.",
    params(
        ("name" = String, Path, description = "upload, rag, notes, ner, client-rag, doc-processor or frontend"),
        ("path" = String, Path, description = "The worker's path (several segments; no encoded `/` or `\\`, no climbing above the service with `..`)", pattern = r"^(?!\.\.?$)[^/\\]*$"),
    ),
    request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "Any body of any type, or none, passed on as it is"),
    responses(
        (status = "default", description = "The worker's own answer, relayed as it sent it (any status, headers and body); or the coordinator's `{\"detail\"}` error: 502 no worker could be reached, 503 no healthy worker serves it, 504 the worker did not answer in time, and the 4xx of a bad request"),
    )
)]
pub(super) async fn api_service(
    ctx: Ctx,
    rest: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (name, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let name = percent_decode(name, false).unwrap_or_default();
    if !API_SERVICE_NAMES.contains(&name.as_str()) {
        return Err(ApiError::NotFound(format!("Service '{name}' not found")));
    }
    let service = service_name(&ctx, &name);
    generic(&ctx, service, path, req, true).await
}

/// Forwards `req` to a worker of `service` at `/{path}` plus its query,
/// as the generic proxies do.
async fn generic(
    ctx: &Ctx,
    service: String,
    path: &str,
    req: Request<Incoming>,
    known: bool,
) -> Result<Response<Body>, ApiError> {
    let mut path_and_query = crate::proxy::guard::normalise_path(path)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(q) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let method = req.method().clone();
    let sess = session(req.headers());
    let model = req
        .headers()
        .get("x-model")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Borrowed, not cloned: the config's Arc is shared by every shard, and
    // cloning it per request would bump a cross-shard atomic.
    let admin = is_admin(ctx, req.headers());
    let mut headers = proxy::upstream_headers(
        req.headers().clone(),
        ctx.peer.map(|p| p.ip()),
        ctx.guard.authorization_is_ours(&ctx.grant, req.headers()),
    );
    // The id the client is told (a client's unusable one is replaced).
    headers.insert(REQUEST_ID, ctx.request_id.clone());
    let body = ctx.body(req).await?;
    let out = Outbound {
        service,
        model,
        session: sess,
        method,
        path_and_query,
        headers,
        body,
    };
    forward_known(ctx, out, admin, known).await
}

/// `GET /api/admin/pins` (the spec's view of `pins`, which serves all
/// three methods).
#[utoipa::path(
    get, path = "/api/admin/pins", tag = "admin", summary = "Routing pins",
    responses((status = 200, description = "The pins", body = super::openapi::Pins))
)]
#[allow(dead_code)]
pub(super) fn pins_get() {}

/// `DELETE /api/admin/pins?service=..|model=..` (served by `pins`).
#[utoipa::path(
    delete, path = "/api/admin/pins", tag = "admin", summary = "Remove a pin",
    params(
        ("service" = Option<String>, Query, description = "The pinned service (or give `model`)"),
        ("model" = Option<String>, Query, description = "The pinned model"),
    ),
    responses(
        (status = 200, description = "The pins now", body = super::openapi::Pins),
        (status = 404, description = "No such pin", body = super::openapi::Detail),
        (status = 422, description = "Neither or both of `service` and `model`", body = super::openapi::Detail),
    )
)]
#[allow(dead_code)]
pub(super) fn pins_delete() {}

/// `GET|PUT|DELETE /api/admin/pins`. PUT `{service | model, workers: [..]}`
/// pins a service or a model to those workers (when any of them is a
/// healthy candidate); DELETE `?service=..` or `?model=..` removes it.
/// Pins are replicated to every shard.
#[utoipa::path(
    put,
    path = "/api/admin/pins",
    tag = "admin",
    summary = "Pin a service or a model to workers",
    description = "Routing for the service (or requests naming the model) then prefers these workers. Stored before the reply; replicated to every shard.",
    request_body(content = super::openapi::Pin, example = json!({"service": "llm-inference", "workers": ["gpu-1", "gpu-2"]})),
    responses(
        (status = 200, description = "The pins now", body = super::openapi::Pins),
        (status = 422, description = "A bad pin", body = super::openapi::Detail),
    )
)]
pub(super) async fn pins(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return Ok(pins_view(&ctx));
    }
    if method == Method::PUT {
        let o = read_json_object(&ctx, req).await?;
        let text = |name: &str| match o.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::field(name, "expected a string")),
        };
        let workers: Vec<String> = match o.get("workers") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| ApiError::field("workers", "expected a list of worker ids"))?,
            _ => {
                return Err(ApiError::field(
                    "workers",
                    "expected a non-empty list of worker ids",
                ))
            }
        };
        set_pin(&ctx, text("service")?, text("model")?, Some(workers)).await
    } else {
        let q = req.uri().query();
        let (service, model) = (query_param(q, "service"), query_param(q, "model"));
        drop(req);
        set_pin(&ctx, service, model, None).await
    }
}

/// Pins `service` or `model` (exactly one) to `workers`, or with `None`
/// removes its pin (404 if there is none), on every shard; answers the
/// pins now (REST and GraphQL `setPin` / `removePin`).
pub(super) async fn set_pin(
    ctx: &Ctx,
    service: Option<String>,
    model: Option<String>,
    workers: Option<Vec<String>>,
) -> Result<Response<Body>, ApiError> {
    let key = pin_key(service, model, ctx)?;
    super::worker::writable(ctx)?;
    if workers.is_none() && !ctx.shard.proxy.pins().contains_key(&key) {
        return Err(ApiError::NotFound("Pin not found".into()));
    }
    let set = || {
        ShardRequest::Proxy(ProxyOp::SetPin {
            key: key.clone(),
            workers: workers.clone(),
        })
    };
    ctx.shard
        .map_reduce(set, Reply::done, (), |(), ()| ())
        .await?;
    Ok(pins_view(ctx))
}

/// Exactly one of `service` and `model`; an empty one counts as absent.
fn pin_key(service: Option<String>, model: Option<String>, ctx: &Ctx) -> Result<String, ApiError> {
    let given = |v: Option<String>| v.filter(|s| !s.is_empty());
    match (given(service), given(model)) {
        (Some(s), None) => Ok(format!("service:{}", service_name(ctx, &s))),
        (None, Some(m)) => Ok(format!("model:{m}")),
        _ => Err(ApiError::field(
            "service",
            "give exactly one of service, model",
        )),
    }
}

pub(super) fn pins_view(ctx: &Ctx) -> Response<Body> {
    let pins: Vec<Value> = ctx
        .shard
        .proxy
        .pins()
        .into_iter()
        .map(|(k, w)| {
            let (kind, name) = k.split_once(':').unwrap_or(("service", k.as_str()));
            json!({"kind": kind, "name": name, "workers": w})
        })
        .collect();
    json(
        StatusCode::OK,
        json!({"pins": pins, "count": pins.len()})
            .to_string()
            .into_bytes(),
    )
}
