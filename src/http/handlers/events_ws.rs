//! `GET /api/events/ws`: registry events over a WebSocket.
//!
//! Owns: the session after the handshake: keep-alive pings, what a client
//! may send (`{"subscribe": {...}}`), which close code ends a session for
//! which reason, and sending event batches one text frame per event.
//! Must not: handle frames or sockets below the message level (`ws::Socket`
//! does), or hold a shard borrow across an await.

use std::pin::pin;
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Map, Value};

use super::events::{write_events, write_reset};
use crate::events::frame::Format;
use crate::events::Filter;
use crate::http::ws::{self, code, Received, Socket};
use crate::http::{ApiError, Body, Ctx};
use crate::runtime;
use crate::shard::Next;

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
    Events(Next),
}

/// One client's session, from after the `101` until it closes.
pub(crate) async fn session(ctx: Ctx, query: Option<String>, mut ws: Socket) {
    // Checked by `upgrade` already; a failure here can only be a shard
    // that does not answer.
    let Ok((filter, from)) = super::events::subscription(&ctx.shard, query.as_deref(), None) else {
        return ws.close(code::POLICY, "bad subscription").await;
    };
    let Ok(mut source) = ctx.shard.subscribe(filter, from, None).await else {
        return ws.close(code::INTERNAL, "events unavailable").await;
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
            let events = pin!(source.next());
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
                        let filter = match parse_subscribe(&t).map(|o| Filter::from_json(&o)) {
                            Ok(Ok(f)) => f,
                            Ok(Err(_)) => break (code::POLICY, "bad subscribe filter"),
                            Err(reason) => break (code::POLICY, reason),
                        };
                        // Same place in the stream, new filter.
                        let from = Some(Ok(source.cursor()));
                        match ctx.shard.subscribe(filter, from, None).await {
                            Ok(s) => source = s,
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
            Wake::Events(Next::Reset(why)) => {
                let mut out = Vec::new();
                write_reset(&source, Format::Object, why, &mut out).await;
                let _ = ws
                    .send_text(String::from_utf8_lossy(&out).into_owned())
                    .await;
                break (code::RESET, "reset: list again, then subscribe");
            }
            Wake::Events(Next::Events {
                source: from,
                events,
            }) => {
                // Framed first (the positions are borrowed), sent after.
                let mut texts = Vec::with_capacity(events.len());
                let mut out = Vec::new();
                write_events(&source, from, &events, Format::Object, &mut out, |o| {
                    texts.push(String::from_utf8_lossy(o).into_owned());
                    o.clear();
                });
                for text in texts {
                    if ws.send_text(text).await.is_err() {
                        return;
                    }
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
    fn intervals_are_the_documented_ones() {
        assert_eq!(PING_INTERVAL, Duration::from_secs(15));
        assert_eq!(PONG_TIMEOUT, Duration::from_secs(30));
    }
}
