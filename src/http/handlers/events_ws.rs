//! `GET /api/events/ws`: registry events over a WebSocket.
//!
//! In cluster mode the session follows the whole cluster's stream
//! (`events_cluster::open_merged`), with composite indexes.
//!
//! Owns: the session after the handshake: keep-alive pings, what a client
//! may send (`{"subscribe": {...}}`), which close code ends a session for
//! which reason, and sending event batches one text frame per event.
//! Must not: handle frames or sockets below the message level (`ws::Socket`
//! does), or hold a shard borrow across an await.

use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{select, Either};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use serde_json::{Map, Value};

use super::events::{write_events, write_reset};
use super::events_cluster::Frames;
use crate::events::frame::Format;
use crate::events::Filter;
use crate::http::ws::{self, code, Received, Socket};
use crate::http::{ApiError, Body, Ctx};
use crate::runtime;
use crate::shard::{Next, Subscription};

/// A ping goes out this long after the last one.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(15);

/// After a ping, a client that sends nothing at all (no pong, no message)
/// for this long is taken for dead: close 1008 "no pong".
pub(crate) const PONG_TIMEOUT: Duration = Duration::from_secs(30);

/// Client messages handled in a row before the session lets the shard's
/// other tasks run: a client that floods the socket must not starve them.
const BURST: u32 = 16;

/// The handshake: 101 and the connection runs [`session`] next.
/// Its filter and cursor are checked first: bad ones are a 400, not a
/// session that closes at once.
#[utoipa::path(
    get,
    path = "/api/events/ws",
    tag = "events",
    summary = "The change stream over a WebSocket",
    description = "RFC 6455 upgrade; the query takes the filters of `/api/events`. One JSON event per text frame; a client may send `{\"subscribe\": {...}}` to change its filter.",
    params(
        super::openapi::EventParams,
    ),
    responses(
        (status = 101, description = "Switching Protocols"),
        (status = 426, description = "`Sec-WebSocket-Version` is not 13", body = super::openapi::Detail),
    )
)]
pub(super) async fn upgrade(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    super::events::subscription(&ctx.shard, req.uri().query(), None)?;
    ws::accept(&ctx, &req, ws::Session::Events)
}

/// What woke the session.
enum Wake {
    Stop,
    Tick,
    Client(Received),
    Events(Raw),
}

/// Where a session's events come from: this node's shards, or, in
/// cluster mode, every node's merged (`events_cluster`).
enum Feed {
    Local(Subscription),
    Merged {
        frames: Frames,
        /// The composite index after the last frame read: where a new
        /// filter resumes.
        at: String,
        /// The caller's credentials, for the other nodes' parts.
        headers: HeaderMap,
    },
}

/// What a feed gave, before it is framed.
enum Raw {
    Local(Next),
    Merged(Option<Bytes>),
}

/// Text frames to send, and the close that follows them, if any.
struct Out {
    texts: Vec<String>,
    close: Option<(u16, &'static str)>,
}

const RESET: (u16, &str) = (code::RESET, "reset: list again, then subscribe");

impl Feed {
    /// The feed of a session opened with `query` (its filter and `since`).
    async fn open(ctx: &Ctx, query: &str, headers: Option<HeaderMap>) -> Result<Feed, ApiError> {
        match headers {
            Some(headers) if ctx.shard.node().is_some() => {
                let since = crate::http::request::query_param(Some(query), "since");
                let (at, frames) =
                    super::events_cluster::open_merged(ctx, query, since, &headers).await?;
                Ok(Feed::Merged {
                    frames,
                    at,
                    headers,
                })
            }
            _ => {
                let (filter, from) = super::events::subscription(&ctx.shard, Some(query), None)?;
                Ok(Feed::Local(ctx.shard.subscribe(filter, from, None).await?))
            }
        }
    }

    /// The next batch (cancel-safe: nothing is lost when another wake
    /// comes first).
    async fn next(&mut self) -> Raw {
        match self {
            Feed::Local(sub) => Raw::Local(sub.next().await),
            Feed::Merged { frames, .. } => Raw::Merged(frames.next().await),
        }
    }

    /// One text frame per event.
    async fn render(&mut self, raw: Raw) -> Out {
        let mut out = Out {
            texts: Vec::new(),
            close: None,
        };
        match (self, raw) {
            (Feed::Local(sub), Raw::Local(Next::Reset(why))) => {
                let mut text = Vec::new();
                write_reset(sub, Format::Object, why, &mut text).await;
                out.texts.push(String::from_utf8_lossy(&text).into_owned());
                out.close = Some(RESET);
            }
            (Feed::Local(sub), Raw::Local(Next::Events { source, events })) => {
                let mut buf = Vec::new();
                write_events(sub, source, &events, Format::Object, &mut buf, |o| {
                    out.texts.push(String::from_utf8_lossy(o).into_owned());
                    o.clear();
                });
            }
            (Feed::Merged { at, .. }, Raw::Merged(Some(chunk))) => {
                for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let kind = super::events_cluster::line_event(line).map(|(index, kind)| {
                        at.clear();
                        at.push_str(index);
                        kind == "reset"
                    });
                    out.texts.push(String::from_utf8_lossy(line).into_owned());
                    if kind == Some(true) {
                        out.close = Some(RESET);
                        break;
                    }
                }
            }
            // A node's part ended (it stopped, its connection broke).
            (Feed::Merged { .. }, Raw::Merged(None)) => {
                out.close = Some((
                    code::GOING_AWAY,
                    "a node's part of the stream ended: resume from the last index",
                ));
            }
            _ => {}
        }
        out
    }

    /// Same place in the stream, the filter of `o`.
    async fn resubscribe(&mut self, ctx: &Ctx, o: &Map<String, Value>) -> Result<(), ApiError> {
        let filter = Filter::from_json(o).map_err(ApiError::BadRequest)?;
        match self {
            Feed::Local(sub) => {
                let from = Some(Ok(sub.cursor()));
                *sub = ctx.shard.subscribe(filter, from, None).await?;
            }
            Feed::Merged {
                frames,
                at,
                headers,
            } => {
                let (start, next) = super::events_cluster::open_merged(
                    ctx,
                    &filter_query(o),
                    Some(at.clone()),
                    headers,
                )
                .await?;
                *frames = next;
                *at = start;
            }
        }
        Ok(())
    }
}

/// A subscribe object as the query of `/api/events` (`topics` may be an
/// array or a comma-separated string; both become the latter).
fn filter_query(o: &Map<String, Value>) -> String {
    let mut q = Vec::new();
    for (k, v) in o {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            _ => continue,
        };
        q.push(format!("{k}={}", crate::http::peer::encode(&text)));
    }
    q.join("&")
}

/// One client's session, from after the `101` until it closes. `headers`
/// are the caller's credentials in cluster mode (the stream is then the
/// whole cluster's).
pub(crate) async fn session(
    ctx: Ctx,
    query: Option<String>,
    headers: Option<HeaderMap>,
    mut ws: Socket,
) {
    // Checked by `upgrade` already; a failure here can only be a shard or
    // a node that does not answer.
    let query = query.unwrap_or_default();
    let mut feed = match Feed::open(&ctx, &query, headers).await {
        Ok(f) => f,
        Err(ApiError::BadRequest(_)) => return ws.close(code::POLICY, "bad subscription").await,
        Err(_) => return ws.close(code::INTERNAL, "events unavailable").await,
    };

    let mut ping_at = Instant::now() + PING_INTERVAL;
    // Set while a ping is unanswered: the deadline for any sign of life.
    let mut alive_by: Option<Instant> = None;
    let mut burst = 0u32;
    let (close_code, reason) = loop {
        let now = Instant::now();
        let wake_at = alive_by.map_or(ping_at, |a| a.min(ping_at));
        let wake = {
            // Stop and timer first: a client that keeps the socket busy
            // must not hold off shutdown or its own liveness check.
            let stop = pin!(ctx.stopping.wait());
            let tick = pin!(runtime::sleep(wake_at.saturating_duration_since(now)));
            let recv = pin!(ws.recv());
            let events = pin!(feed.next());
            match select(select(stop, tick), select(recv, events)).await {
                Either::Left((Either::Left(_), _)) => Wake::Stop,
                Either::Left((Either::Right(_), _)) => Wake::Tick,
                Either::Right((Either::Left((m, _)), _)) => Wake::Client(m),
                Either::Right((Either::Right((batch, _)), _)) => Wake::Events(batch),
            }
        };
        match wake {
            Wake::Stop => break (code::GOING_AWAY, "server shutting down"),
            Wake::Tick => {
                let now = Instant::now();
                if alive_by.is_some_and(|a| a <= now) {
                    break (code::POLICY, "no pong");
                }
                if ping_at <= now {
                    if ws.ping().await.is_err() {
                        return;
                    }
                    ping_at = now + PING_INTERVAL;
                    alive_by.get_or_insert(now + PONG_TIMEOUT);
                }
            }
            Wake::Client(m) => {
                // Any frame shows the client is there.
                alive_by = None;
                match m {
                    Received::Alive => {}
                    Received::Text(t) => {
                        let o = match parse_subscribe(&t) {
                            Ok(o) => o,
                            Err(reason) => break (code::POLICY, reason),
                        };
                        match feed.resubscribe(&ctx, &o).await {
                            Ok(()) => {}
                            Err(ApiError::BadRequest(_)) => {
                                break (code::POLICY, "bad subscribe filter")
                            }
                            Err(_) => break (code::INTERNAL, "events unavailable"),
                        }
                    }
                    Received::Binary => break (code::UNSUPPORTED, "binary messages not accepted"),
                    Received::Closed => break (code::NORMAL, ""),
                    Received::Violation(c, reason) => break (c, reason),
                    Received::Gone => return,
                }
                burst += 1;
                if burst >= BURST {
                    burst = 0;
                    runtime::breathe().await;
                }
            }
            Wake::Events(raw) => {
                // Framed first (the positions are borrowed), sent after.
                let out = feed.render(raw).await;
                for text in out.texts {
                    if ws.send_text(text).await.is_err() {
                        return;
                    }
                }
                if let Some(close) = out.close {
                    break close;
                }
            }
        }
    };
    ws.close(close_code, reason).await;
}

/// The one message a client may send: `{"subscribe": {...}}`. The object
/// comes back as is (its keys are the event filter's business); anything
/// else is a short reason for the close frame.
pub(crate) fn parse_subscribe(text: &str) -> Result<Map<String, Value>, &'static str> {
    const SHAPE: &str = r#"expected {"subscribe": {...}}"#;
    let v: Value = serde_json::from_str(text).map_err(|_| "malformed JSON")?;
    let Value::Object(mut top) = v else {
        return Err(SHAPE);
    };
    if top.len() != 1 {
        return Err(SHAPE);
    }
    match top.remove("subscribe") {
        Some(Value::Object(filter)) => Ok(filter),
        _ => Err(SHAPE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_messages() {
        let f = parse_subscribe(r#"{"subscribe": {"kinds": ["worker"], "tier": 1}}"#).unwrap();
        assert_eq!(f["tier"], 1);
        assert!(parse_subscribe(r#"{"subscribe": {}}"#).unwrap().is_empty());
        for bad in [
            "",
            "{",
            "null",
            "[]",
            r#"{"subscribe": []}"#,
            r#"{"subscribe": "all"}"#,
            r#"{"unsubscribe": {}}"#,
            r#"{"subscribe": {}, "also": 1}"#,
        ] {
            assert!(parse_subscribe(bad).is_err(), "{bad:?}");
        }
        // Reasons fit a close frame (123 bytes).
        assert!(parse_subscribe("[]").unwrap_err().len() <= 123);
    }

    #[test]
    fn a_subscribe_object_becomes_the_stream_query() {
        let o = parse_subscribe(
            r#"{"subscribe": {"topics": ["workers", "tasks"], "worker_id": "gpu 1", "n": 3}}"#,
        )
        .unwrap();
        assert_eq!(filter_query(&o), "topics=workers%2Ctasks&worker_id=gpu%201");
        let o = parse_subscribe(r#"{"subscribe": {"topics": "workers"}}"#).unwrap();
        assert_eq!(filter_query(&o), "topics=workers");
    }

    #[test]
    fn intervals_are_the_documented_ones() {
        assert_eq!(PING_INTERVAL, Duration::from_secs(15));
        assert_eq!(PONG_TIMEOUT, Duration::from_secs(30));
    }
}
