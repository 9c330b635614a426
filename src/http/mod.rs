//! The HTTP front of a shard: accept loop, connection lifecycle, dispatch.
//!
//! Owns: hyper connection setup over the runtime's IO adapter, connection
//! caps and timeouts (idle, slow headers, slow bodies), graceful shutdown,
//! routing to handlers, CORS and credential checks (`auth`, against the
//! role table in `access`), metrics per route, the
//! mapping of every error to a JSON response, and handing a connection
//! whose request switched to WebSocket (`ws`) to its session. Handlers live
//! one file per API area under `handlers/`.
//!
//! Must not: touch another shard's state (go through `Shard::call` /
//! `map_reduce`), block, or panic on any input.

pub mod access;
pub(crate) mod accesslog;
pub(crate) mod auth;
mod cors;
pub(crate) mod error;
mod handlers;
pub(crate) mod peer;
pub mod request;
pub(crate) mod router;
pub(crate) mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{select, Either};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

use crate::config::Config;
use crate::runtime::{
    self, ConnActivity, HyperIo, Listener, LocalShutdown, Shutdown, TaskGroup, TcpConn,
};
use crate::shard::Shard;
pub(crate) use error::ApiError;
pub use router::Route;

/// The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    handlers::openapi::document()
}

/// The GraphQL schema of `/graphql`, as SDL.
pub fn graphql_sdl() -> String {
    handlers::graphql_sdl()
}
pub(crate) use router::ROUTE_NAMES;

/// Response body type for every route: a complete buffer (nearly every
/// answer, with no allocation beyond its bytes), or a worker's response
/// streamed frame by frame. A stream is not `Send`: shard-local streams
/// (the proxy's pooled connections) live on one thread, and hyper's HTTP/1
/// server does not need `Send` bodies.
pub(crate) enum Body {
    Full(Full<Bytes>),
    Stream(Pin<Box<dyn hyper::body::Body<Data = Bytes, Error = BoxError>>>),
}

/// Error type of streamed bodies (hyper accepts anything convertible).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A complete response body.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Body::Full(Full::new(b.into()))
}

/// A streamed response body.
pub(crate) fn streamed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    Body::Stream(Box::pin(b.map_err(|e| Box::new(e) as BoxError)))
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Body::Stream(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_end_stream(),
            Body::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => b.size_hint(),
            Body::Stream(b) => b.size_hint(),
        }
    }
}

/// Which shard answered: lets operators and tests see the sharding at work.
pub(crate) const SHARD_HEADER: &str = "x-coordinator-shard";

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What a handler sees besides the request.
pub(crate) struct Ctx {
    pub shard: Rc<Shard>,
    pub peer: Option<SocketAddr>,
    /// Fires when the shard starts shutting down: a handler that waits
    /// (a task long-poll) answers at once instead of outliving the drain.
    pub stopping: LocalShutdown,
    /// This shard's credentials and login limiter.
    pub guard: Rc<auth::Guard>,
    /// Who is calling, as the guard established for this route.
    pub grant: auth::Grant,
    /// The connection's activity: lets a handler close it (`abort`).
    pub activity: Rc<ConnActivity>,
    /// Where a WebSocket handshake leaves its session's parameters.
    pub switch: ws::SwitchSlot,
    /// This shard's access log and request ids.
    pub log: Rc<accesslog::AccessLog>,
    /// Where the handler notes the worker of a request being logged.
    pub note: Option<accesslog::WorkerNote>,
    /// The request's id (`X-Request-Id`): the client's, or one made by
    /// the dispatcher; the proxy passes it to workers.
    pub request_id: HeaderValue,
    /// Cluster mode, proxied routes: the request as another node would
    /// take it, for when no worker of this node serves it.
    pub relay: std::cell::RefCell<Option<peer::Head>>,
    /// Cluster mode, pool views: the caller's headers (its credentials)
    /// for asking the other nodes for their parts.
    pub creds: Option<hyper::HeaderMap>,
}

impl Ctx {
    /// 403 unless the caller may act for worker `id` (worker keys limited
    /// to id patterns); handlers call it once they know the id.
    pub(crate) fn may_act_for(&self, id: &str) -> Result<(), ApiError> {
        if let Some(note) = &self.note {
            note.borrow_mut().get_or_insert_with(|| id.to_string());
        }
        self.guard.may_act_for(&self.grant, id)
    }

    /// The request's whole body, within `--max-body-bytes` (413) and
    /// `--body-timeout` (408). The one way handlers read a body.
    pub(crate) async fn body(
        &self,
        req: hyper::Request<Incoming>,
    ) -> Result<bytes::Bytes, ApiError> {
        self.body_within(req, usize::MAX).await
    }

    /// As [`Ctx::body`], with a lower limit for routes whose bodies are
    /// small by nature (heartbeats, logins).
    pub(crate) async fn body_within(
        &self,
        req: hyper::Request<Incoming>,
        limit: usize,
    ) -> Result<bytes::Bytes, ApiError> {
        let cfg = &self.shard.cfg;
        request::read_body(req, cfg.max_body_bytes.min(limit), cfg.body_timeout).await
    }
}

/// Accepts connections until shutdown, then drains in-flight requests.
pub(crate) async fn serve(shard: Rc<Shard>, listener: Listener, shutdown: Shutdown) {
    let cfg = &shard.cfg;
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // The head limit is exact (a head of N bytes passes, N + 1 gets
        // 431); the read buffer must be larger than it, and hyper wants at
        // least 8 KiB.
        .max_header_size(cfg.max_header_bytes)
        .max_buf_size(cfg.max_header_bytes.saturating_add(1).max(8192))
        // Queue body buffers, never copy them into a per-connection buffer
        // that keeps its largest size (see `runtime::io`).
        .writev(true)
        .max_headers(100);
    let builder = Rc::new(builder);
    let guard = Rc::new(auth::Guard::new(cfg));
    let log = Rc::new(accesslog::AccessLog::new(
        shard.epoch,
        shard.id,
        cfg.access_log_rate,
    ));
    let conns = Rc::new(TaskGroup::default());
    // Connections learn of shutdown from this shard, not from the other
    // thread that requested it (see `runtime::notify`).
    let (stop_conns, conns_stop) = runtime::local_shutdown();
    loop {
        let accepted = {
            let accept = pin!(listener.accept());
            let stop = pin!(shutdown.wait());
            match select(accept, stop).await {
                Either::Left((r, _)) => r,
                Either::Right(_) => break,
            }
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                runtime::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        {
            let mut m = shard.metrics.borrow_mut();
            if m.connections_open as usize >= cfg.max_connections_per_shard {
                m.connections_rejected += 1;
                drop(m);
                runtime::spawn(reject(accepted.stream));
                continue;
            }
            m.connections_accepted += 1;
            m.connections_open += 1;
        }
        let task = connection(
            shard.clone(),
            builder.clone(),
            accepted.stream,
            accepted.peer,
            guard.clone(),
            log.clone(),
            conns_stop.clone(),
        );
        if !conns.spawn(task) {
            break;
        }
    }
    drop(listener);
    stop_conns.fire();
    if runtime::timeout(cfg.shutdown_timeout, conns.close())
        .await
        .is_err()
    {
        tracing::warn!(
            shard = shard.id,
            "shutdown timeout: dropping remaining connections"
        );
    }
}

/// Over the per-shard cap: say so and close, rather than leave the client
/// hanging in the backlog.
async fn reject(stream: TcpConn) {
    const BODY: &str = r#"{"detail":"Too many connections"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    runtime::answer_and_close(stream, answer.as_bytes(), Duration::from_secs(2)).await;
}

async fn connection(
    shard: Rc<Shard>,
    builder: Rc<http1::Builder>,
    stream: TcpConn,
    peer: Option<SocketAddr>,
    guard: Rc<auth::Guard>,
    log: Rc<accesslog::AccessLog>,
    shutdown: LocalShutdown,
) {
    // Borrowed, never cloned: `cfg` is one `Arc` shared by every shard, and
    // bumping its count would make all cores write one cache line.
    let cfg = &shard.cfg;
    let activity = Rc::new(ConnActivity::new());
    activity.set_fd(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let switch = ws::SwitchSlot::default();
    let io = HyperIo::new(stream, activity.clone()).with_error_bodies(error::hyper_error_body);
    let svc = {
        let shard = shard.clone();
        let activity = activity.clone();
        let stopping = shutdown.clone();
        let guard = guard.clone();
        let switch = switch.clone();
        let log = log.clone();
        service_fn(move |req: Request<Incoming>| {
            let ctx = Ctx {
                shard: shard.clone(),
                peer,
                stopping: stopping.clone(),
                guard: guard.clone(),
                grant: auth::Grant::ANONYMOUS,
                activity: activity.clone(),
                switch: switch.clone(),
                log: log.clone(),
                note: None,
                request_id: HeaderValue::from_static(""),
                relay: Default::default(),
                creds: None,
            };
            let activity = activity.clone();
            async move {
                activity.begin_request();
                let _done = EndRequest(&activity);
                Ok::<_, Infallible>(dispatch(ctx, req).await)
            }
        })
    };
    // Not pinned in place: after a `101`, `into_parts` takes the socket
    // back out, and a streaming response moves it to the background queue
    // (the connection is `Unpin`, so polling it needs no pin).
    let mut conn = builder.serve_connection(io, svc);
    let mut served = drive(&mut conn, &activity, cfg, &shutdown, true).await;
    if served == Served::ToBackground {
        // An event stream: the rest of this connection (every write to the
        // subscriber) runs in the background queue, so a thousand streams
        // cannot hold up the requests on this shard. This task waits for it
        // and stays the connection's member of the shutdown group.
        let (shard, activity, shutdown) = (shard.clone(), activity.clone(), shutdown.clone());
        let moved = runtime::in_background(async move {
            let served = drive(&mut conn, &activity, &shard.cfg, &shutdown, false).await;
            (conn, served)
        });
        (conn, served) = moved.await;
    }
    let done = served == Served::Finished(true);
    // A handler answered 101 and hyper, done with the connection, left the
    // socket open: the session runs on it, in the background queue (its
    // own pings replace the idle watchdog; it still counts as an open
    // connection until it ends).
    if let Some(sw) = switch.take().filter(|_| done) {
        let parts = conn.into_parts();
        if let Some(tcp) = parts.io.into_plain() {
            let ctx = Ctx {
                shard: shard.clone(),
                peer,
                stopping: shutdown,
                guard,
                grant: sw.grant,
                activity: activity.clone(),
                switch,
                log,
                note: None,
                request_id: HeaderValue::from_static(""),
                relay: Default::default(),
                creds: None,
            };
            let read_buf = parts.read_buf.to_vec();
            runtime::in_background(async move {
                let socket = ws::Socket::server(tcp, read_buf).await;
                ctx.shard.metrics.borrow_mut().websocket_sessions += 1;
                let shard = ctx.shard.clone();
                match sw.session {
                    ws::Session::Events => {
                        handlers::events_ws::session(ctx, sw.query, sw.creds, socket).await
                    }
                    ws::Session::GraphQl => handlers::graphql_ws_session(ctx, socket).await,
                }
                shard.metrics.borrow_mut().websocket_sessions -= 1;
            })
            .await;
        }
    }
    let mut m = shard.metrics.borrow_mut();
    m.connections_open -= 1;
    if served == Served::TimedOut {
        m.connections_timed_out += 1;
    }
}

/// How serving a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// hyper finished with it (true: cleanly, so a `101` can take over).
    Finished(bool),
    /// The watchdog closed it (idle, or a request head too slow).
    TimedOut,
    /// A handler asked for the rest to run in the background queue.
    ToBackground,
}

/// Polls `conn` until it ends, the watchdog or a handler closes it, the
/// shard stops (the request in progress is finished first), or, when
/// `may_move`, a handler asks to move it to the background queue.
async fn drive<S>(
    conn: &mut http1::Connection<HyperIo, S>,
    activity: &ConnActivity,
    cfg: &Config,
    shutdown: &LocalShutdown,
    may_move: bool,
) -> Served
where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<BoxError>,
{
    let watchdog = pin!(watchdog(activity, cfg.idle_timeout, cfg.header_timeout));
    let aborted = pin!(activity.aborted());
    let stop = pin!(shutdown.wait());
    // Polled after `conn` in the same pass, which is where a handler sets it.
    let moved = pin!(async {
        if may_move {
            activity.moved_to_background().await
        } else {
            std::future::pending().await
        }
    });
    let ended = select(watchdog, select(aborted, moved));
    match select(&mut *conn, select(ended, stop)).await {
        Either::Left((r, _)) => Served::Finished(r.is_ok()),
        Either::Right((Either::Left((Either::Left(_), _)), _)) => Served::TimedOut,
        // A handler asked for the connection to go: drop it.
        Either::Right((Either::Left((Either::Right((Either::Left(_), _)), _)), _)) => {
            Served::Finished(false)
        }
        Either::Right((Either::Left((Either::Right((Either::Right(_), _)), _)), _)) => {
            Served::ToBackground
        }
        Either::Right((Either::Right(_), _)) => {
            // Finish the request in progress, then close.
            Pin::new(&mut *conn).graceful_shutdown();
            Served::Finished(matches!(
                runtime::timeout(cfg.shutdown_timeout, &mut *conn).await,
                Ok(Ok(()))
            ))
        }
    }
}

struct EndRequest<'a>(&'a ConnActivity);

impl Drop for EndRequest<'_> {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// Resolves when the connection should be closed: idle too long with no
/// request in progress, or a request head arriving too slowly (measured
/// from its first byte; for a new connection, from the accept, so a client
/// that connects and trickles nothing is not kept for the whole idle time).
///
/// While idle it wakes at least every `header` so that a head whose first
/// byte arrives mid-sleep is still cut off `header` after that byte, not at
/// the idle deadline. That is one timer per `header` (10 s) per idle
/// connection: nothing next to the socket itself.
async fn watchdog(act: &ConnActivity, idle: Duration, header: Duration) {
    loop {
        let now = Instant::now();
        let deadline = if act.in_flight() > 0 {
            // Handlers bound their own work (body timeout, gather timeout).
            now + idle
        } else if let Some(started) = act.request_started() {
            started + header
        } else {
            act.last_io() + idle
        };
        if deadline <= now {
            return;
        }
        let wake = if act.in_flight() == 0 && act.request_started().is_none() {
            deadline.min(now + header)
        } else {
            deadline
        };
        runtime::sleep(wake - now).await;
    }
}

/// Routes, checks, runs the handler, and turns the outcome into a response.
async fn dispatch(mut ctx: Ctx, req: Request<Incoming>) -> Response<Body> {
    if ctx.shard.cfg.baseline_hello {
        // The benchmark baseline is hyper on our runtime adapter and nothing
        // else: no routing, CORS, shard header or metrics (docs/performance.md).
        return json_static(b"{\"hello\":\"world\"}");
    }
    let started = Instant::now();
    let shard = ctx.shard.clone();
    let cfg = &shard.cfg;
    // The request's id: the client's, or one made here; the proxy passes
    // it to the worker (from `ctx`), the client gets it on the reply.
    let request_id = accesslog::client_id(req.headers().get(accesslog::REQUEST_ID))
        .unwrap_or_else(|| ctx.log.new_id());
    ctx.request_id = request_id.clone();
    let matched = router::route(req.method(), req.uri().path());
    let (route, allow) = (matched.route, matched.allow);
    let origin = req.headers().get(hyper::header::ORIGIN).cloned();
    let log = ctx.log.clone();
    // What a logged request's line needs that the handler consumes.
    let logged = log.admit(started).then(|| {
        let note = accesslog::WorkerNote::default();
        ctx.note = Some(note.clone());
        (req.method().clone(), note)
    });

    // The guard judges the matched route, never the raw path.
    let result = if route == Route::Preflight {
        cors::preflight(cfg, origin.as_ref(), req.headers(), allow)
    } else {
        match ctx.guard.check(route, req.method(), req.headers()) {
            Err(e) => Err(e),
            Ok(grant) => {
                ctx.grant = grant;
                let param = matched.param.map(str::to_string);
                handlers::handle(ctx, route, param, allow, req).await
            }
        }
    };

    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let mut r = json(e.status(), e.body());
            if let Some((name, value)) = e.header() {
                r.headers_mut().insert(name, value);
            }
            r
        }
    };
    cors::decorate(cfg, origin.as_ref(), resp.headers_mut());
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    if let Some((method, note)) = &logged {
        log.line(accesslog::Line {
            method: method.as_str(),
            route: route.name(),
            status,
            elapsed,
            bytes: hyper::body::Body::size_hint(resp.body())
                .exact()
                .unwrap_or(0),
            request_id: request_id.to_str().unwrap_or(""),
            worker: note,
        });
    }
    let h = resp.headers_mut();
    if let Some(me) = shard.node_id() {
        // A relayed answer keeps the owner's name.
        if !h.contains_key(peer::NODE) {
            if let Ok(v) = HeaderValue::from_str(me) {
                h.insert(peer::NODE, v);
            }
        }
    }
    h.insert(SHARD_HEADER, HeaderValue::from(shard.id as u64));
    h.insert(accesslog::REQUEST_ID, request_id);
    shard
        .metrics
        .borrow_mut()
        .record(route.index(), status, elapsed);
    resp
}

/// A JSON response with the given status.
pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, JSON);
    r
}

/// A 200 JSON response from a static body (no allocation for the bytes).
pub(crate) fn json_static(body: &'static [u8]) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body)));
    r.headers_mut().insert(CONTENT_TYPE, JSON);
    r
}
