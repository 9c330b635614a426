//! Cluster mode: relaying a request to the node that owns it, and asking
//! every node for its part of a whole-pool view.
//!
//! A relayed request is the client's own (method, path, query, headers
//! with its credentials, body), sent over a keep-alive connection from the
//! shard's pool of peer connections, marked with [`RELAYED`] naming this
//! node. A node never relays a request that carries the mark: it answers
//! it itself, so two nodes whose views briefly disagree cannot bounce a
//! request between them. The owner's answer is relayed back as it came
//! (status, headers minus hop-by-hop, body).
//!
//! A whole-pool view asks every other node for its own part with
//! [`SCOPE`]` = node` (such a request is answered from that node alone and
//! never fans out again); the handler merges the parts. Peers that do not
//! answer are left out and named, so a view during a failover is partial
//! rather than failed.
//!
//! This file must not decide ownership (`shard::cluster`) or merge views
//! (the handlers).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use super::{full, Body, Ctx};
use crate::proxy::{strip_hop_by_hop, PoolSender};
use crate::shard::cluster::Peer;

/// Request header of a relayed request: the relaying node's id.
pub(crate) const RELAYED: &str = "x-coordinator-relayed-by";
/// Request header asking for this node's part of a whole-pool view only.
pub(crate) const SCOPE: &str = "x-coordinator-scope";
/// Response header: the node that answered (cluster mode).
pub(crate) const NODE: &str = "x-coordinator-node";

/// Largest answer taken from another node (whole-pool parts included).
const MAX_ANSWER: usize = 256 << 20;
/// Connecting to another node: it is on the same network.
const CONNECT: Duration = Duration::from_secs(2);

/// What is needed to relay a request once its body has been read.
#[derive(Clone)]
pub(crate) struct Head {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Head {
    pub(crate) fn new(method: Method, path: String, headers: HeaderMap) -> Head {
        Head {
            method,
            path,
            headers,
        }
    }

    /// The request's head, in cluster mode only and when it may still be
    /// relayed (no [`RELAYED`] mark).
    pub(crate) fn of<B>(ctx: &Ctx, req: &Request<B>) -> Option<Head> {
        ctx.shard.node()?;
        if req.headers().contains_key(RELAYED) {
            return None;
        }
        Some(Head {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: req.headers().clone(),
        })
    }
}

/// A request another node sent for its part (relayed and node-scoped):
/// only those carry internal parameters (a pull's `keys`).
pub(crate) fn from_node<B>(ctx: &Ctx, req: &Request<B>) -> bool {
    ctx.shard.node().is_some() && req.headers().contains_key(RELAYED) && node_scope(req)
}

/// Whether the request asks for this node's part only.
pub(crate) fn node_scope<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(SCOPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"node"))
}

/// Sends the request to `peer` and relays its answer. `wait` bounds the
/// exchange (a task long-poll waits longer than a heartbeat).
pub(crate) async fn relay(
    ctx: &Ctx,
    peer: &Peer,
    head: Head,
    body: Bytes,
    wait: Duration,
) -> Result<Response<Body>, ApiError> {
    let (status, headers, body) = exchange(ctx, peer, head, body, wait, false).await?;
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Sends the request to the other nodes in turn until one answers with
/// anything but "no worker here" (404/503); None when none does. For a
/// proxied request no worker of this node can serve.
pub(crate) async fn relay_to_any(
    ctx: &Ctx,
    head: Head,
    body: Bytes,
    wait: Duration,
) -> Option<Response<Body>> {
    for p in ctx.shard.peers() {
        match relay(ctx, &p, head.clone(), body.clone(), wait).await {
            Ok(r)
                if r.status() != StatusCode::NOT_FOUND
                    && r.status() != StatusCode::SERVICE_UNAVAILABLE =>
            {
                return Some(r)
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(node = %p.node_id, error = %e, "relaying a proxied request"),
        }
    }
    None
}

/// Opens a node-scoped streaming request to `peer` (an event stream) and
/// returns its answer with the body still streaming; the connection is not
/// pooled again (it lives as long as the stream).
pub(crate) async fn open_stream(
    ctx: &Ctx,
    peer: &Peer,
    head: Head,
) -> Result<Response<hyper::body::Incoming>, ApiError> {
    let (resp, _) = send(ctx, peer, head, Bytes::new(), CONNECT * 5, true).await?;
    Ok(resp)
}

/// Sends one request to `peer` over a pooled connection and waits up to
/// `wait` for the answer's head; returns it with the connection, which
/// goes back to the pool once the body has been read.
async fn send(
    ctx: &Ctx,
    peer: &Peer,
    head: Head,
    body: Bytes,
    wait: Duration,
    scoped: bool,
) -> Result<(Response<hyper::body::Incoming>, PoolSender), ApiError> {
    let node = ctx
        .shard
        .node()
        .ok_or_else(|| ApiError::Unavailable("not in cluster mode".into()))?;
    let unreachable = |why: String| {
        ApiError::Unavailable(format!(
            "node {} is unreachable: {why}; retry shortly",
            peer.node_id
        ))
    };
    let started = Instant::now();
    let (mut sender, _) = node
        .pool
        .checkout(&peer.endpoint, CONNECT)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = head.method;
    *req.uri_mut() = head
        .path
        .parse()
        .map_err(|_| ApiError::BadRequest("unrelayable request path".into()))?;
    *req.headers_mut() = outbound_headers(ctx, peer, head.headers, scoped);
    let left = wait.saturating_sub(started.elapsed());
    match crate::runtime::timeout(left, sender.send_request(req)).await {
        Ok(Ok(r)) => Ok((r, sender)),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(ApiError::GatewayTimeout(format!(
            "node {} did not answer within {wait:?}",
            peer.node_id
        ))),
    }
}

/// `peer`'s event cursor of now (the index its worker list carries), so
/// a merged stream knows every node's position from its start.
pub(crate) async fn head_cursor(
    ctx: &Ctx,
    peer: &Peer,
    creds: &HeaderMap,
) -> Result<String, ApiError> {
    let head = Head::new(
        Method::GET,
        "/api/coordinator/workers?limit=1".into(),
        creds.clone(),
    );
    let (status, headers, _) =
        exchange(ctx, peer, head, Bytes::new(), Duration::from_secs(10), true).await?;
    headers
        .get("x-coordinator-index")
        .and_then(|v| v.to_str().ok())
        .filter(|_| status == StatusCode::OK)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "node {} gave no stream position ({status}); retry shortly",
                peer.node_id
            ))
        })
}

/// The headers of a request to `peer`: the caller's minus hop-by-hop ones,
/// `Host` of the peer, the relay mark and, when `scoped`, the node scope.
fn outbound_headers(ctx: &Ctx, peer: &Peer, mut headers: HeaderMap, scoped: bool) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(HOST);
    headers.remove(CONTENT_LENGTH);
    headers.insert(
        HOST,
        HeaderValue::from_str(&peer.endpoint.authority)
            .unwrap_or(HeaderValue::from_static("localhost")),
    );
    if let Some(me) = ctx.shard.node_id() {
        if let Ok(v) = HeaderValue::from_str(me) {
            headers.insert(HeaderName::from_static(RELAYED), v);
        }
    }
    if scoped {
        headers.insert(
            HeaderName::from_static(SCOPE),
            HeaderValue::from_static("node"),
        );
    }
    headers
}

async fn exchange(
    ctx: &Ctx,
    peer: &Peer,
    head: Head,
    body: Bytes,
    wait: Duration,
    scoped: bool,
) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let started = Instant::now();
    let (resp, sender) = send(ctx, peer, head, body, wait, scoped).await?;
    let (parts, incoming) = resp.into_parts();
    let left = wait.saturating_sub(started.elapsed());
    let bytes =
        match crate::runtime::timeout(left, Limited::new(incoming, MAX_ANSWER).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                return Err(ApiError::Unavailable(format!(
                    "node {} broke off its answer: {e}; retry shortly",
                    peer.node_id
                )))
            }
            Err(_) => {
                return Err(ApiError::GatewayTimeout(format!(
                    "node {} did not finish its answer within {wait:?}",
                    peer.node_id
                )))
            }
        };
    if let Some(node) = ctx.shard.node() {
        node.pool.checkin(&peer.endpoint.origin, sender);
    }
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(CONTENT_LENGTH);
    Ok((parts.status, headers, bytes))
}

/// Leases for `worker_id` from queues other nodes own (`remote`: each
/// node and its keys), at most `max` in all, asked in turn without
/// waiting, with the worker's own credentials. A node that fails is
/// skipped (its tasks are there at the next pull).
pub(crate) async fn remote_leases(
    ctx: &Ctx,
    worker_id: &str,
    remote: &[(Peer, Vec<String>)],
    max: usize,
    creds: &HeaderMap,
) -> Vec<Value> {
    let mut got = Vec::new();
    for (peer, keys) in remote {
        if got.len() >= max {
            break;
        }
        let head = Head {
            method: Method::GET,
            path: format!(
                "/api/worker/tasks?worker_id={}&wait=0&max={}&keys={}",
                encode(worker_id),
                max - got.len(),
                encode(&keys.join(","))
            ),
            headers: creds.clone(),
        };
        let wait = Duration::from_secs(10);
        match exchange(ctx, peer, head, Bytes::new(), wait, true).await {
            Ok((StatusCode::OK, _, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Some(tasks) = v["tasks"].as_array() {
                    got.extend(tasks.iter().cloned());
                }
            }
            Ok((status, _, _)) => {
                tracing::debug!(node = %peer.node_id, %status, "remote queues refused a pull")
            }
            Err(e) => {
                tracing::debug!(node = %peer.node_id, error = %e, "remote queues unreachable")
            }
        }
    }
    got
}

/// The request's headers (its credentials) for calls this node makes to
/// others on its behalf, in cluster mode.
pub(crate) fn creds<B>(ctx: &Ctx, req: &Request<B>) -> Option<HeaderMap> {
    ctx.shard.node()?;
    let mut h = req.headers().clone();
    h.remove(RELAYED);
    h.remove(SCOPE);
    Some(h)
}

/// Extends the leases `worker_id` holds on tasks other nodes own
/// (`remote`: each node and its task ids) by a node-scoped heartbeat
/// there. Best effort, like every lease extension.
pub(crate) async fn extend_remote(
    ctx: &Ctx,
    worker_id: &str,
    remote: Vec<(Peer, Vec<String>)>,
    creds: &HeaderMap,
) {
    let asks = remote.into_iter().map(|(peer, ids)| {
        let body = serde_json::json!({"worker_id": worker_id, "task_ids": ids});
        let mut headers = creds.clone();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let head = Head {
            method: Method::POST,
            path: "/api/worker/heartbeat".into(),
            headers,
        };
        async move {
            let r = exchange(
                ctx,
                &peer,
                head,
                Bytes::from(body.to_string()),
                Duration::from_secs(10),
                true,
            )
            .await;
            if let Err(e) = r {
                tracing::debug!(node = %peer.node_id, error = %e, "extending remote leases");
            }
        }
    });
    join_all(asks).await;
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every other node's aggregates (`GET /api/cluster/summary`), with the
/// caller's credentials when it gave any; nodes that do not answer are
/// left out (a pool view during a failover counts the live nodes).
pub(crate) async fn summaries(ctx: &Ctx) -> Vec<crate::shard::msg::Summary> {
    let peers = ctx.shard.peers();
    if peers.is_empty() {
        return Vec::new();
    }
    let creds = ctx.creds.clone().unwrap_or_default();
    let wait = ctx.shard.cfg.gather_timeout.max(Duration::from_secs(2));
    let asks = peers.iter().map(|p| {
        let head = Head {
            method: Method::GET,
            path: "/api/cluster/summary".into(),
            headers: creds.clone(),
        };
        exchange(ctx, p, head, Bytes::new(), wait, true)
    });
    let mut out = Vec::new();
    for (p, r) in peers.iter().zip(join_all(asks).await) {
        match r {
            Ok((StatusCode::OK, _, body)) => match serde_json::from_slice(&body) {
                Ok(s) => out.push(s),
                Err(e) => tracing::debug!(node = %p.node_id, error = %e, "unreadable summary"),
            },
            Ok((status, _, _)) => tracing::debug!(node = %p.node_id, %status, "summary refused"),
            Err(e) => tracing::debug!(node = %p.node_id, error = %e, "no summary"),
        }
    }
    out
}

/// Sends the request (`head` and `body`) to every other node, node-scoped,
/// and returns the JSON of the answers that came back 200 (a node with
/// nothing to do answers otherwise and is left out).
pub(crate) fn gather_with<'a>(
    ctx: &'a Ctx,
    head: Head,
    body: Bytes,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Value>> + 'a>> {
    Box::pin(async move {
        let peers = ctx.shard.peers();
        let wait = ctx.shard.cfg.gather_timeout.max(Duration::from_secs(2));
        let asks = peers
            .iter()
            .map(|p| exchange(ctx, p, head.clone(), body.clone(), wait, true));
        let mut out = Vec::new();
        for (p, r) in peers.iter().zip(join_all(asks).await) {
            match r {
                Ok((StatusCode::OK, _, b)) => {
                    if let Ok(v) = serde_json::from_slice(&b) {
                        out.push(v);
                    }
                }
                Ok((status, _, _)) => tracing::debug!(node = %p.node_id, %status, "no part"),
                Err(e) => tracing::debug!(node = %p.node_id, error = %e, "no part"),
            }
        }
        out
    })
}

/// Asks every other node for its part of the view `req` names and returns
/// the JSON answers that came back with 200, and the ids of the nodes
/// that gave none.
pub(crate) async fn gather<B>(ctx: &Ctx, req: &Request<B>) -> (Vec<Value>, Vec<String>) {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    gather_path(ctx, path, req.headers()).await
}

/// [`gather`] of `GET path` with the caller's `headers`.
pub(crate) async fn gather_path(
    ctx: &Ctx,
    path: String,
    headers: &HeaderMap,
) -> (Vec<Value>, Vec<String>) {
    let peers = ctx.shard.peers();
    if peers.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let wait = ctx.shard.cfg.gather_timeout.max(Duration::from_secs(2));
    let asks = peers.iter().map(|p| {
        let head = Head {
            method: Method::GET,
            path: path.clone(),
            headers: headers.clone(),
        };
        exchange(ctx, p, head, Bytes::new(), wait, true)
    });
    let mut parts = Vec::new();
    let mut missing = Vec::new();
    for (p, r) in peers.iter().zip(join_all(asks).await) {
        match r {
            Ok((StatusCode::OK, _, body)) => match serde_json::from_slice(&body) {
                Ok(v) => parts.push(v),
                Err(_) => missing.push(p.node_id.clone()),
            },
            Ok((status, _, _)) => {
                tracing::debug!(node = %p.node_id, %status, "peer refused its part of a view");
                missing.push(p.node_id.clone());
            }
            Err(e) => {
                tracing::debug!(node = %p.node_id, error = %e, "peer gave no part of a view");
                missing.push(p.node_id.clone());
            }
        }
    }
    (parts, missing)
}

/// Names, in a merged answer, how many nodes there are and which gave no
/// part.
pub(crate) fn mark_nodes(shard: &crate::shard::Shard, all: &mut Value, missing: Vec<String>) {
    if let Value::Object(o) = all {
        if !missing.is_empty() {
            o.insert("nodes_missing".into(), Value::from(missing));
        }
        if let Some(view) = shard.view() {
            o.insert("nodes".into(), Value::from(view.members.len()));
        }
    }
}

/// Recomputes, in a merged whole-pool answer, what summing got wrong.
pub(crate) type Fix = fn(&mut Value, &[Value]);

/// A list view may be merged across nodes: no paging, no change feed, no
/// blocking query (those carry per-node cursors and indexes and stay
/// node-local, see docs/cluster.md).
pub(crate) fn mergeable_list<B>(req: &Request<B>) -> bool {
    let q = req.uri().query().unwrap_or("");
    !q.split('&').any(|kv| {
        let k = kv.split('=').next().unwrap_or("");
        matches!(k, "after" | "limit" | "since" | "index" | "wait")
    })
}

/// Merges whole-pool answers of one shape: arrays are concatenated,
/// integers summed, objects merged key by key the same way; any other
/// value (a timestamp, a status word) is this node's.
pub(crate) fn merge(mut local: Value, parts: Vec<Value>) -> Value {
    for p in parts {
        merge_into(&mut local, p);
    }
    local
}

fn merge_into(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Array(a), Value::Array(b)) => a.extend(b),
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge_into(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                *a = (x + y).into();
            }
        }
        _ => {}
    }
}

/// Collects a response of this node into JSON (to merge other nodes'
/// parts into it); None when it is not a JSON 200.
pub(crate) async fn local_json(resp: Response<Body>) -> Result<Value, Response<Body>> {
    if resp.status() != StatusCode::OK {
        return Err(resp);
    }
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).map_err(|_| {
            Response::from_parts(
                parts,
                full(Bytes::from_static(b"{\"detail\":\"unmergeable answer\"}")),
            )
        }),
        Err(_) => Err(Response::from_parts(
            parts,
            full(Bytes::from_static(b"{\"detail\":\"unreadable answer\"}")),
        )),
    }
}

/// Runs a whole-pool view handler and, in cluster mode (unless the
/// request asks for this node's part only), merges every other node's
/// part into its answer with [`merge`]; `fix` recomputes what a plain
/// merge gets wrong (averages, status words) from the merged answer and
/// every node's own part. Nodes that gave no part are named in
/// `nodes_missing`.
pub(crate) async fn whole_pool<F, Fut>(
    ctx: Ctx,
    req: Request<hyper::body::Incoming>,
    fix: Option<Fix>,
    local: F,
) -> Result<Response<Body>, ApiError>
where
    F: FnOnce(Ctx, Request<hyper::body::Incoming>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, ApiError>>,
{
    if ctx.shard.node().is_none() || node_scope(&req) || !mergeable_list(&req) {
        return local(ctx, req).await;
    }
    let (parts, missing) = gather(&ctx, &req).await;
    let shard = ctx.shard.clone();
    let mine = match local(ctx, req).await {
        Ok(resp) => match local_json(resp).await {
            Ok(v) => v,
            Err(resp) => return Ok(resp),
        },
        // Nothing here (a discovery without a local worker): the others'
        // parts may still have some.
        Err(e) if e.status() == StatusCode::SERVICE_UNAVAILABLE && !parts.is_empty() => {
            Value::Object(Default::default())
        }
        Err(e) => return Err(e),
    };
    let each = fix.map(|_| {
        let mut v = parts.clone();
        v.push(mine.clone());
        v
    });
    let mut all = merge(mine, parts);
    if let (Some(fix), Some(each)) = (fix, each) {
        fix(&mut all, &each);
    }
    mark_nodes(&shard, &mut all, missing);
    Ok(super::json(
        StatusCode::OK,
        serde_json::to_vec(&all).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_concatenates_sums_and_keeps_the_rest() {
        let a = json!({"workers": [1], "count": 1, "by": {"x": 2, "s": "a"}, "timestamp": "t1"});
        let b = json!({"workers": [2, 3], "count": 2, "by": {"x": 1, "y": 4, "s": "b"}, "timestamp": "t2"});
        let m = merge(a, vec![b]);
        assert_eq!(
            m,
            json!({"workers": [1, 2, 3], "count": 3, "by": {"x": 3, "y": 4, "s": "a"}, "timestamp": "t1"})
        );
    }

    #[test]
    fn paged_and_blocking_lists_stay_local() {
        let r = |q: &str| {
            Request::get(format!("/api/admin/workers{q}"))
                .body(())
                .unwrap()
        };
        assert!(mergeable_list(&r("")));
        assert!(mergeable_list(&r("?status=healthy")));
        assert!(!mergeable_list(&r("?limit=5")));
        assert!(!mergeable_list(&r("?status=x&index=3&wait=5")));
    }
}
