//! Cluster mode: one change stream for the whole cluster.
//!
//! `GET /api/events` on a node of a cluster streams its own events and
//! every other node's, merged as they come: the node opens a node-scoped
//! stream to each other node (same filters, the caller's credentials) and
//! interleaves their frames with its own, frame by frame.
//!
//! Each node's cursors only mean something to that node, so the merged
//! stream's cursor is composite: `<node>~<cursor>` for every node, joined
//! with `,` (node ids cannot hold either character). Every frame's id (SSE
//! `id:` and the `index` of its object) is rewritten to the composite
//! position after it. A client resumes with it on any node: each node's
//! part resumes from its own cursor, a node that joined since starts from
//! now, and a node that left is dropped: the events it had not yet sent
//! went with it, so the resumed stream starts with a `reset` (re-list, as
//! after any reset); its workers are on their new owners by then. When any
//! part ends (a node stopped, its connection broke), the merged stream
//! ends and the client resumes.
//!
//! SSE, NDJSON and the WebSocket stream (`/api/events/ws`, through
//! [`open_merged`]) are all merged this way.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use http_body_util::{BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};

use super::super::error::ApiError;
use super::super::peer::{self, Head};
use super::super::{streamed, Body, Ctx};

const LAST_EVENT_ID: &str = "last-event-id";

/// How frames are delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// `id: ..\nevent: ..\ndata: {"index":".."..}\n\n`
    Sse,
    /// `{"index":"..",..}\n`
    Ndjson,
}

/// `GET /api/events` in cluster mode (anything else goes to the node's own
/// stream unchanged).
pub(super) async fn stream(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if ctx.shard.node().is_none() || peer::node_scope(&req) {
        return super::events::stream(ctx, req).await;
    }
    let me = ctx.shard.node_id().unwrap_or_default().to_string();
    let q = req.uri().query().unwrap_or("");
    let since = req
        .headers()
        .get(LAST_EVENT_ID)
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::BadRequest("Last-Event-ID: not a cursor".into()))?
        .or_else(|| super::super::request::query_param(Some(q), "since"));
    let (resume, lost_nodes) = positions(&ctx, since, req.headers()).await?;
    let path = events_path(q);
    let mut sources = peer_parts(&ctx, &path, req.headers(), &resume).await?;
    let (mut parts, body) = req.into_parts();
    parts.headers = with_cursor(&parts.headers, &resume, &me);
    parts.uri = path
        .parse()
        .map_err(|_| ApiError::BadRequest("bad query".into()))?;
    let local = super::events::stream(ctx, Request::from_parts(parts, body)).await?;
    let wire = match local.headers().get(CONTENT_TYPE) {
        Some(v) if v.as_bytes().starts_with(b"application/x-ndjson") => Wire::Ndjson,
        _ => Wire::Sse,
    };
    let (head, local_body) = local.into_parts();
    let local_body = BodyStream::new(local_body).filter_map(|f| async move {
        match f {
            Ok(f) => f.into_data().ok().map(Ok),
            Err(_) => Some(Err(())),
        }
    });
    sources.push((me, Box::pin(local_body)));
    let (_, frames) = merged(sources, resume, lost_nodes, wire);
    let body = StreamBody::new(frames.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Ok(Response::from_parts(head, streamed(body)))
}

/// Merged NDJSON frames, complete ones only, each with its composite index.
pub(crate) type Frames = Pin<Box<dyn Stream<Item = Bytes>>>;

/// The whole cluster's stream for a WebSocket session: its filter is
/// `query` (`topics`, `worker_id`, `service`, `task_id`), it starts after
/// `since` (a composite or plain cursor; None: now), and the other nodes'
/// parts are asked for with the caller's `headers`. Returns the composite
/// position it starts at, and its frames.
pub(crate) async fn open_merged(
    ctx: &Ctx,
    query: &str,
    since: Option<String>,
    headers: &HeaderMap,
) -> Result<(String, Frames), ApiError> {
    let me = ctx.shard.node_id().unwrap_or_default().to_string();
    let (resume, lost_nodes) = positions(ctx, since, headers).await?;
    let mut headers = headers.clone();
    headers.insert(ACCEPT, HeaderValue::from_static("application/x-ndjson"));
    let mut sources = peer_parts(ctx, &events_path(query), &headers, &resume).await?;
    let mine = resume.get(&me).and_then(|c| HeaderValue::from_str(c).ok());
    let (filter, from) = super::events::subscription(&ctx.shard, Some(query), mine.as_ref())?;
    let sub = ctx.shard.subscribe(filter, from, None).await?;
    let local = super::events::ndjson_part(sub, ctx.stopping.clone()).map(|r| r.map_err(|_| ()));
    sources.push((me, Box::pin(local)));
    Ok(merged(sources, resume, lost_nodes, Wire::Ndjson))
}

/// The parts merged from `resume` on, led by a reset when a node named
/// by the resume position has left; and the composite position they start
/// at.
fn merged(
    sources: Vec<(String, Part)>,
    resume: BTreeMap<String, String>,
    lost_nodes: bool,
    wire: Wire,
) -> (String, Frames) {
    let start = composite(&resume);
    let first = lost_nodes.then(|| reset_frame(&start, wire));
    let frames = Merge::new(sources, resume, wire).into_stream();
    (start, Box::pin(stream::iter(first).chain(frames)))
}

/// The position a merged stream starts from: every live node's cursor
/// (from `since` where it names the node, else the node's position now, so
/// that the composite cursor names every node from the first event on),
/// and whether `since` named a node that has left since.
async fn positions(
    ctx: &Ctx,
    since: Option<String>,
    headers: &HeaderMap,
) -> Result<(BTreeMap<String, String>, bool), ApiError> {
    let me = ctx.shard.node_id().unwrap_or_default().to_string();
    let peers = ctx.shard.peers();
    let mut resume = match since {
        None => BTreeMap::new(),
        Some(c) => parse(&c, &me)?,
    };
    let before = resume.len();
    resume.retain(|node, _| *node == me || peers.iter().any(|p| p.node_id == *node));
    let lost_nodes = resume.len() < before;
    if !resume.contains_key(&me) {
        let heads = ctx.shard.heads().await?;
        let now = crate::events::Cursor {
            epoch: ctx.shard.epoch,
            pos: heads,
        };
        resume.insert(me.clone(), now.encode());
    }
    for p in &peers {
        if !resume.contains_key(&p.node_id) {
            let now = peer::head_cursor(ctx, p, headers).await?;
            resume.insert(p.node_id.clone(), now);
        }
    }
    Ok((resume, lost_nodes))
}

/// `/api/events` with the filters of `query` (its `since` dropped: each
/// part gets its own cursor).
fn events_path(query: &str) -> String {
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("since="))
        .collect();
    if rest.is_empty() {
        "/api/events".to_string()
    } else {
        format!("/api/events?{}", rest.join("&"))
    }
}

/// `headers` with `Last-Event-ID` set to `node`'s cursor in `resume`.
fn with_cursor(headers: &HeaderMap, resume: &BTreeMap<String, String>, node: &str) -> HeaderMap {
    let mut h = headers.clone();
    h.remove(LAST_EVENT_ID);
    if let Some(c) = resume.get(node).and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert(HeaderName::from_static(LAST_EVENT_ID), c);
    }
    h
}

/// Opens every other node's part: a node-scoped `GET path` from its
/// cursor in `resume`.
async fn peer_parts(
    ctx: &Ctx,
    path: &str,
    headers: &HeaderMap,
    resume: &BTreeMap<String, String>,
) -> Result<Vec<(String, Part)>, ApiError> {
    let mut sources: Vec<(String, Part)> = Vec::new();
    for p in &ctx.shard.peers() {
        let head = Head::new(
            Method::GET,
            path.to_string(),
            with_cursor(headers, resume, &p.node_id),
        );
        let resp = peer::open_stream(ctx, p, head).await?;
        if resp.status() != StatusCode::OK {
            return Err(ApiError::Unavailable(format!(
                "node {} did not open its part of the stream ({}); retry shortly",
                p.node_id,
                resp.status()
            )));
        }
        let body = BodyStream::new(resp.into_body()).filter_map(|f| async move {
            match f {
                Ok(f) => f.into_data().ok().map(Ok),
                Err(e) => {
                    tracing::debug!(error = %e, "a node's part of the stream broke");
                    Some(Err(()))
                }
            }
        });
        sources.push((p.node_id.clone(), Box::pin(body)));
    }
    Ok(sources)
}

/// The composite index and the event type of an NDJSON line of a merged
/// stream.
pub(crate) fn line_event(line: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(line).ok()?;
    event_head(text)
}

type Part = Pin<Box<dyn Stream<Item = Result<Bytes, ()>>>>;
/// A part's chunks tagged with its index; `None` once it has ended.
type Tagged = Pin<Box<dyn Stream<Item = (usize, Option<Bytes>)>>>;

/// The merge's state: each part's unfinished frame and every node's last
/// cursor.
struct Merge {
    names: Vec<String>,
    bufs: Vec<Vec<u8>>,
    positions: BTreeMap<String, String>,
    wire: Wire,
    parts: stream::SelectAll<Tagged>,
}

impl Merge {
    fn new(sources: Vec<(String, Part)>, positions: BTreeMap<String, String>, wire: Wire) -> Merge {
        let mut names = Vec::new();
        let mut parts = stream::SelectAll::new();
        for (i, (name, part)) in sources.into_iter().enumerate() {
            names.push(name);
            // A part ends with `None` (ended or broke): the merge ends then.
            let tagged = part
                .map(move |r| (i, r.ok()))
                .chain(stream::once(async move { (i, None) }));
            let tagged: Tagged = Box::pin(tagged);
            parts.push(tagged);
        }
        Merge {
            bufs: vec![Vec::new(); names.len()],
            names,
            positions,
            wire,
            parts,
        }
    }

    fn into_stream(self) -> impl Stream<Item = Bytes> {
        stream::unfold(Some(self), |state| async move {
            let mut m = state?;
            loop {
                match m.parts.next().await {
                    Some((i, Some(chunk))) => {
                        m.bufs[i].extend_from_slice(&chunk);
                        let mut out = Vec::new();
                        let mut buf = std::mem::take(&mut m.bufs[i]);
                        rewrite(&mut buf, &m.names[i], &mut m.positions, m.wire, &mut out);
                        m.bufs[i] = buf;
                        if !out.is_empty() {
                            return Some((Bytes::from(out), Some(m)));
                        }
                    }
                    _ => return None,
                }
            }
        })
    }
}

/// A composite cursor back as node -> cursor; a plain cursor is this
/// node's (`me`). Malformed is a 400.
fn parse(c: &str, me: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    if !c.contains('~') {
        out.insert(me.to_string(), c.to_string());
        return Ok(out);
    }
    if c.len() > 64 * 1024 {
        return Err(ApiError::BadRequest("since: cursor too long".into()));
    }
    for pair in c.split(',') {
        let (node, cur) = pair
            .split_once('~')
            .filter(|(n, c)| !n.is_empty() && !c.is_empty())
            .ok_or_else(|| ApiError::BadRequest("since: not a cursor of this cluster".into()))?;
        out.insert(node.to_string(), cur.to_string());
    }
    Ok(out)
}

/// A `reset` at `cursor`: the reader must re-list, then follow from it.
fn reset_frame(cursor: &str, wire: Wire) -> Bytes {
    // In the order of every other event (`crate::events::frame::reset`):
    // readers find the index and type at the start.
    let event = format!(
        "{{\"index\":{},\"type\":\"reset\",\"key\":\"\",\"time\":{},\"data\":{}}}",
        serde_json::Value::from(cursor),
        serde_json::Value::from(crate::model::time::now_iso8601()),
        serde_json::json!({"reason": "a node of the cluster left; its unsent events are gone"}),
    );
    Bytes::from(match wire {
        Wire::Sse => format!("id: {cursor}\nevent: reset\ndata: {event}\n\n"),
        Wire::Ndjson => format!("{event}\n"),
    })
}

fn composite(positions: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (node, cur) in positions {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(node);
        s.push('~');
        s.push_str(cur);
    }
    s
}

/// Moves every complete frame of `buf` (from `node`) to `out`, its id
/// rewritten to the composite position after it; keeps the incomplete rest.
fn rewrite(
    buf: &mut Vec<u8>,
    node: &str,
    positions: &mut BTreeMap<String, String>,
    wire: Wire,
    out: &mut Vec<u8>,
) {
    let delim: &[u8] = match wire {
        Wire::Sse => b"\n\n",
        Wire::Ndjson => b"\n",
    };
    let mut start = 0;
    while let Some(at) = find(&buf[start..], delim) {
        let end = start + at + delim.len();
        let frame = &buf[start..end];
        match frame_id(frame, wire) {
            Some(id) => {
                positions.insert(node.to_string(), id.to_string());
                let comp = composite(positions);
                let text = String::from_utf8_lossy(frame);
                let text = text.replacen(
                    &format!("\"index\":\"{id}\""),
                    &format!("\"index\":\"{comp}\""),
                    1,
                );
                let text = if wire == Wire::Sse {
                    text.replacen(&format!("id: {id}\n"), &format!("id: {comp}\n"), 1)
                } else {
                    text
                };
                out.extend_from_slice(text.as_bytes());
            }
            None => out.extend_from_slice(frame),
        }
        start = end;
    }
    buf.drain(..start);
}

/// The cursor a frame carries, if any.
fn frame_id(frame: &[u8], wire: Wire) -> Option<&str> {
    let text = std::str::from_utf8(frame).ok()?;
    let body = match wire {
        Wire::Sse => text.lines().find_map(|l| l.strip_prefix("data: "))?,
        Wire::Ndjson => text,
    };
    event_head(body).map(|(index, _)| index)
}

/// The `index` and `type` an event object starts with: every event and
/// reset is written `{"index":"<cursor>","type":"<type>",...` (cursors and
/// type names hold no quote), so neither needs the object parsed.
fn event_head(object: &str) -> Option<(&str, &str)> {
    let rest = object.strip_prefix("{\"index\":\"")?;
    let (index, rest) = rest.split_once('"')?;
    let kind = rest
        .strip_prefix(",\"type\":\"")
        .and_then(|r| r.split_once('"'))
        .map_or("", |(kind, _)| kind);
    Some((index, kind))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_get_the_composite_id_and_partial_frames_wait() {
        let mut pos = BTreeMap::new();
        pos.insert("b".to_string(), "9-1".to_string());
        let mut buf = b"id: 5-2\nevent: worker.registered\ndata: {\"index\":\"5-2\",\"type\":\"x\"}\n\n: keepalive\n\nid: 5-3\nev".to_vec();
        let mut out = Vec::new();
        rewrite(&mut buf, "a", &mut pos, Wire::Sse, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "id: a~5-2,b~9-1\nevent: worker.registered\ndata: {\"index\":\"a~5-2,b~9-1\",\"type\":\"x\"}\n\n: keepalive\n\n"
        );
        assert_eq!(buf, b"id: 5-3\nev".to_vec());
        let mut out = Vec::new();
        let mut nd = b"{\"index\":\"7-7\",\"type\":\"y\"}\n\n{\"ind".to_vec();
        rewrite(&mut nd, "b", &mut pos, Wire::Ndjson, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"index\":\"a~5-2,b~7-7\",\"type\":\"y\"}\n\n"
        );
    }

    #[test]
    fn index_and_type_are_read_from_the_start_of_the_object() {
        let line = br#"{"index":"a~1,b~2","type":"task.state","key":"t","data":{"type":"reset"}}"#;
        assert_eq!(line_event(line), Some(("a~1,b~2", "task.state")));
        let reset = reset_frame("a~1,b~2", Wire::Ndjson);
        assert_eq!(
            line_event(reset.trim_ascii_end()),
            Some(("a~1,b~2", "reset"))
        );
        let sse = reset_frame("a~1", Wire::Sse);
        assert_eq!(frame_id(&sse, Wire::Sse), Some("a~1"));
        assert_eq!(line_event(b"not json"), None);
    }

    #[test]
    fn cursors_parse_plain_or_composite() {
        let m = parse("5-2", "a").unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("5-2"));
        let m = parse("a~5-2,b~9-1", "a").unwrap();
        assert_eq!(composite(&m), "a~5-2,b~9-1");
        assert!(parse("a~,b~1", "a").is_err());
        assert!(parse("~1", "a").is_err());
    }
}
