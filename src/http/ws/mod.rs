//! WebSocket connections: the `101` hand-over from hyper and the
//! message-level socket a session talks through.
//!
//! hyper's own upgrade API needs `Send` IO, which a shard's sockets are
//! not. So a WebSocket route answers `101` itself and leaves a [`Switch`]
//! in the connection's slot; once hyper has written that answer and let go
//! of the connection, `super::connection` takes the socket back and runs
//! the route's session on a [`Socket`].
//!
//! Owns: the handshake answer, the protocol limits (message size, write
//! timeout, close linger), what tungstenite's errors mean as close codes,
//! and closing without a reset. Must not: know what a session says
//! (events, subscriptions): its handler does.

pub(crate) mod handshake;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures::{SinkExt, StreamExt};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};

use super::{auth, full, ApiError, Body, Ctx};
use crate::runtime::{self, TcpConn};

/// What a handler that answered `101` leaves for the connection: who was
/// let in and the request's query (the session's parameters).
pub(crate) struct Switch {
    pub grant: auth::Grant,
    pub query: Option<String>,
    pub session: Session,
    /// Cluster mode: the handshake's headers (its credentials), for the
    /// other nodes' parts of a merged stream.
    pub creds: Option<hyper::HeaderMap>,
}

/// Which session runs on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    /// `/api/events/ws`: the change stream, one event per message.
    Events,
    /// `/graphql`: the graphql-transport-ws protocol.
    GraphQl,
}

/// The subprotocol of GraphQL over WebSocket (graphql-ws).
pub(crate) const GRAPHQL_WS: &str = "graphql-transport-ws";

/// One per connection, shared by its requests' handlers and the
/// connection task. Empty unless a handshake was accepted.
pub(crate) type SwitchSlot = Rc<Cell<Option<Switch>>>;

/// Largest message (and frame) a client may send; more closes with 1009.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// A send that the client does not take within this ends the session: a
/// reader that stopped reading must not hold the server's buffers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// After our close frame, how long we wait for the client to close its
/// side before dropping the connection.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Close codes (RFC 6455 7.4.1) and the application codes we use.
pub(crate) mod code {
    /// The purpose is fulfilled; also the echo of a client's close.
    pub(crate) const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// A frame broke the protocol (e.g. unmasked, bad opcode).
    pub(crate) const PROTOCOL: u16 = 1002;
    /// A binary message: the protocol is text (JSON) only.
    pub(crate) const UNSUPPORTED: u16 = 1003;
    /// A text message that is not UTF-8.
    pub(crate) const INVALID_DATA: u16 = 1007;
    /// A message the session does not accept, or no pong in time.
    pub(crate) const POLICY: u16 = 1008;
    /// A message over [`super::MAX_MESSAGE_BYTES`].
    pub(crate) const TOO_BIG: u16 = 1009;
    /// The event stream was reset: list afresh, then subscribe again.
    pub(crate) const RESET: u16 = 4000;
    /// The server could not serve the session (a shard did not answer).
    pub(crate) const INTERNAL: u16 = 1011;
}

/// Checks a handshake, leaves the connection its [`Switch`] and answers
/// `101`. The guard has already let the caller in.
pub(crate) fn accept(
    ctx: &Ctx,
    req: &Request<Incoming>,
    session: Session,
) -> Result<Response<Body>, ApiError> {
    let accept = handshake::check(
        req.method(),
        req.version(),
        req.headers(),
        !req.body().is_end_stream(),
    )?;
    if !handshake::origin_allowed(req.headers(), &ctx.shard.cfg.allowed_origins) {
        return Err(ApiError::Forbidden(
            "Origin not allowed to open a WebSocket (see ALLOWED_ORIGINS)".into(),
        ));
    }
    // GraphQL clients name their protocol; answering without it makes
    // them drop the connection, so a client that does not is refused.
    let graphql = session == Session::GraphQl;
    if graphql {
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == GRAPHQL_WS);
        if !offered {
            return Err(ApiError::BadRequest(format!(
                "Sec-WebSocket-Protocol: {GRAPHQL_WS} required"
            )));
        }
    }
    ctx.switch.set(Some(Switch {
        grant: ctx.grant,
        query: req.uri().query().map(str::to_string),
        session,
        creds: super::peer::creds(ctx, req),
    }));
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", accept);
    if graphql {
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(GRAPHQL_WS),
        );
    }
    Ok(r)
}

/// What the client sent next.
#[derive(Debug)]
pub(crate) enum Received {
    Text(Utf8Bytes),
    Binary,
    /// A ping (answered by the socket itself) or a pong.
    Alive,
    /// The client closed; [`Socket::close`] sends the echo.
    Closed,
    /// The client broke the protocol: close with this code and reason.
    Violation(u16, &'static str),
    /// The connection is gone (EOF, reset): nothing more can be sent.
    Gone,
}

/// The connection is gone; the session can only end.
#[derive(Debug)]
pub(crate) struct Gone;

/// A server-side WebSocket on an upgraded connection.
pub(crate) struct Socket {
    ws: WebSocketStream<TcpConn>,
    /// The client sent its close: tungstenite has queued the echo and
    /// refuses any other frame.
    peer_closed: bool,
}

impl Socket {
    /// Speaks WebSocket on `tcp`, starting with `read_ahead`: bytes the
    /// client sent after its handshake that HTTP had already read.
    pub(crate) async fn server(tcp: TcpConn, read_ahead: Vec<u8>) -> Socket {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES))
            // Small reads and no write batching: sessions are many and
            // mostly idle; every send is flushed at once anyway.
            .read_buffer_size(4 << 10)
            .write_buffer_size(0)
            // A send waits for its flush, so this holds one message at most.
            .max_write_buffer_size(4 << 20);
        let ws =
            WebSocketStream::from_partially_read(tcp, read_ahead, Role::Server, Some(config)).await;
        Socket {
            ws,
            peer_closed: false,
        }
    }

    /// The next thing the client sent. Cancel-safe: a frame read in part
    /// stays buffered for the next call. Also sends the pong (or close
    /// echo) tungstenite queued for what it read before.
    pub(crate) async fn recv(&mut self) -> Received {
        match self.ws.next().await {
            None => Received::Gone,
            Some(Ok(Message::Text(t))) => Received::Text(t),
            Some(Ok(Message::Binary(_))) => Received::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Received::Alive,
            Some(Ok(Message::Close(_))) => {
                self.peer_closed = true;
                Received::Closed
            }
            Some(Err(WsError::Capacity(_))) => {
                Received::Violation(code::TOO_BIG, "message too big")
            }
            Some(Err(WsError::Utf8(_))) => Received::Violation(code::INVALID_DATA, "invalid UTF-8"),
            Some(Err(WsError::Protocol(_))) => {
                Received::Violation(code::PROTOCOL, "protocol error")
            }
            Some(Err(_)) => Received::Gone,
        }
    }

    /// Sends one text message.
    pub(crate) async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), Gone> {
        self.send(Message::Text(text.into())).await
    }

    /// Sends a ping (the client answers with a pong).
    pub(crate) async fn ping(&mut self) -> Result<(), Gone> {
        self.send(Message::Ping(bytes::Bytes::new())).await
    }

    async fn send(&mut self, m: Message) -> Result<(), Gone> {
        match runtime::timeout(WRITE_TIMEOUT, self.ws.send(m)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// Sends a close frame (after a client's close: the echo of its code
    /// instead) and ends the connection without a reset.
    pub(crate) async fn close(mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(reason),
        };
        // Errors mean the peer is gone: nothing to add.
        let _ = if self.peer_closed {
            runtime::timeout(WRITE_TIMEOUT, self.ws.flush()).await
        } else {
            runtime::timeout(WRITE_TIMEOUT, self.ws.close(Some(frame))).await
        };
        // Unread input would make the close a reset; what a client may
        // still be sending is bounded by time and by 16 messages' worth.
        runtime::finish(self.ws.into_inner(), CLOSE_LINGER, 16 * MAX_MESSAGE_BYTES).await;
    }
}
