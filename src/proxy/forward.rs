//! Forwarding one request (pingora's proxy phase): refuse a loop, get the
//! service's workers (cached, else fetched), ask the balancer for a worker,
//! check a connection out of the pool, send, fail over once, and stream the
//! answer back frame by frame ([`Streamed`]), returning the connection to
//! the pool when the body ends.
//!
//! Every forwarded request carries a `Via` naming this coordinator; one
//! that arrives with it already is a loop and is refused before anything
//! else happens (no fetch, no cache entry, no counter).
//!
//! Failover: a worker that could not be reached (nothing was sent) is
//! always left for another; one that answered 5xx, timed out or broke the
//! connection is retried elsewhere only for idempotent methods, since the
//! request may have had its effect. A connection failure, a timeout or a
//! 5xx also cools the worker (`balance`).
//!
//! A worker's own answer is relayed as it sent it (status, headers minus
//! hop-by-hop, body), errors included: agents answer e.g.
//! `503 {"detail": "DHT router not initialized"}` and clients read that
//! `detail`. When a retried 5xx finds no better answer (no other worker, or
//! the other one cannot be reached), the 5xx is relayed. Our own 502/504
//! are only for workers that gave no answer at all.
//!
//! This file owns the outcome labels and counts them (per service and per
//! attempt); it must not open connections itself (`pool`) or decide which
//! worker comes next (`balance`, `route`).

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, Response};

use super::balance::InFlight;
use super::endpoint::Endpoint;
use super::headers::strip_hop_by_hop;
use super::pool::{Sender, CHECKOUT_SLACK};
use super::route::Ask;
use super::{guard, Failed, Outbound, ProxyConfig, ProxyError, ProxyState, Upstream};
use crate::runtime;

/// The upstream answered (any status): stream it back.
pub(crate) type Forwarded = Response<Streamed>;

/// Picks a worker, sends, fails over once, and returns the worker's
/// response (any status, 5xx included) with its body still streaming. `fetch` supplies the healthy
/// workers of the service (it is given the name) when the shard's cache
/// is stale.
pub(crate) async fn forward<F, Fut, E>(
    state: &Rc<ProxyState>,
    cfg: &ProxyConfig,
    req: Outbound,
    fetch: F,
) -> Result<Result<Forwarded, Failed>, E>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Vec<Upstream>>, E>>,
{
    if guard::has_via(&req.headers, &state.via_token) {
        return Ok(Err(Failed::of(ProxyError::Loop)));
    }
    let ups = match state.balancer.cached(&req.service, cfg.cache_ttl) {
        Some(u) => u,
        None => match fetch(req.service.clone()).await? {
            Some(list) => state.store(&req.service, list),
            // Unknown: nothing is cached or counted under its name.
            None => return Ok(Err(Failed::of(ProxyError::UnknownService(req.service)))),
        },
    };
    Ok(forward_to(state, cfg, &req, &ups).await)
}

/// Up to two attempts at `req` over the workers `ups`.
async fn forward_to(
    state: &Rc<ProxyState>,
    cfg: &ProxyConfig,
    req: &Outbound,
    ups: &Rc<Vec<Upstream>>,
) -> Result<Forwarded, Failed> {
    let balancer = &state.balancer;
    let pinned = balancer.pinned(&req.service, req.model.as_deref());
    let mut tried: Vec<&str> = Vec::new();
    let mut last: Option<ProxyError> = None;
    // A worker's 5xx held back while an idempotent request is retried:
    // relayed if the retry gets no answer of its own.
    let mut answered: Option<Forwarded> = None;
    for attempt in 0..2 {
        let ask = Ask {
            model: req.model.as_deref(),
            session: req.session.as_deref(),
            pinned: &pinned,
            exclude: &tried,
        };
        let Some(i) = balancer.choose(ups, &ask) else {
            break;
        };
        let up = &ups[i];
        tried.push(&up.worker_id);
        if attempt > 0 {
            state.counters.borrow_mut().retries += 1;
        }
        let target = match &up.target {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(worker_id = %up.worker_id, error = %e, "worker endpoint unusable");
                state.count_attempt(&up.worker_id, "unusable");
                last = Some(ProxyError::BadGateway(format!("{}: {e}", up.worker_id)));
                continue;
            }
        };
        match send_once(state, cfg, req, (ups, i), target).await {
            // A loop another coordinator (or we, further down) detected:
            // not the worker's fault; pass the 508 back so the client learns.
            Ok(resp) if resp.status() == hyper::StatusCode::LOOP_DETECTED => {
                state.count_attempt(&up.worker_id, "loop");
                state.count(&req.service, "loop");
                return Ok(resp);
            }
            Ok(resp) if resp.status().is_server_error() => {
                tracing::warn!(
                    worker_id = %up.worker_id,
                    service = %req.service,
                    status = resp.status().as_u16(),
                    attempt,
                    "upstream answered a server error"
                );
                balancer.cool(&up.worker_id, cfg.cooldown);
                state.count_attempt(&up.worker_id, "upstream_5xx");
                if attempt == 0 && idempotent(&req.method) {
                    answered = Some(resp);
                    continue;
                }
                state.count(&req.service, "upstream_5xx");
                return Ok(resp);
            }
            Ok(resp) => {
                state.count_attempt(&up.worker_id, "ok");
                state.count(
                    &req.service,
                    if attempt == 0 { "ok" } else { "ok_after_retry" },
                );
                return Ok(resp);
            }
            Err(Failure { sent, err }) => {
                tracing::warn!(
                    worker_id = %up.worker_id,
                    service = %req.service,
                    sent,
                    attempt,
                    error = %err,
                    "upstream request failed"
                );
                balancer.cool(&up.worker_id, cfg.cooldown);
                let label = match err {
                    ProxyError::Timeout(_) => "timeout",
                    ProxyError::Refused(_) => "refused",
                    _ if !sent => "connect_error",
                    _ => "error",
                };
                state.count_attempt(&up.worker_id, label);
                let retry = !sent || idempotent(&req.method);
                last = Some(err);
                if !retry {
                    break;
                }
            }
        }
    }
    if let Some(resp) = answered {
        state.count(&req.service, "upstream_5xx");
        return Ok(resp);
    }
    let err = last.unwrap_or_else(|| ProxyError::NoWorker(req.service.clone()));
    let label = match err {
        ProxyError::NoWorker(_) | ProxyError::UnknownService(_) | ProxyError::Loop => "no_worker",
        ProxyError::Timeout(_) => "timeout",
        ProxyError::Refused(_) => "refused",
        ProxyError::BadGateway(_) => "bad_gateway",
    };
    state.count(&req.service, label);
    Err(Failed {
        error: err,
        worker: tried.last().map(|w| w.to_string()),
    })
}

/// Methods whose repetition has no further effect (RFC 9110 9.2.2): only
/// these are sent to a second worker once the first may have received them.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

struct Failure {
    /// The request may have reached the worker.
    sent: bool,
    err: ProxyError,
}

/// One attempt at `req` on worker `ups[i]`: a pooled connection, or a
/// fresh one if the pooled one turns out closed before anything went out.
async fn send_once(
    state: &Rc<ProxyState>,
    cfg: &ProxyConfig,
    req: &Outbound,
    (ups, i): (&Rc<Vec<Upstream>>, usize),
    target: &Endpoint,
) -> Result<Forwarded, Failure> {
    let up = &ups[i];
    let inflight = InFlight::new(state.balancer.clone(), ups.clone(), i);
    let started = Instant::now();
    // Only failures name the worker: formatted then, not per request.
    let who = || format!("worker {} at {}", up.worker_id, target.origin);
    let mut fresh_retry = true;
    loop {
        // The checkout bounds each of its steps by the connect timeout and
        // says which one ran out; this outer bound, a little later so those
        // messages win, is only a backstop.
        let backstop = cfg.connect_timeout + CHECKOUT_SLACK;
        let checkout = state.pool.checkout(target, cfg.connect_timeout);
        let (mut sender, reused) = match runtime::timeout(backstop, checkout).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let err = match e {
                    ProxyError::Timeout(m) => {
                        ProxyError::Timeout(format!("worker {}: {m}", up.worker_id))
                    }
                    ProxyError::BadGateway(m) => {
                        ProxyError::BadGateway(format!("worker {}: {m}", up.worker_id))
                    }
                    ProxyError::Refused(m) => {
                        ProxyError::Refused(format!("worker {}: {m}", up.worker_id))
                    }
                    other => other,
                };
                return Err(Failure { sent: false, err });
            }
            Err(_) => {
                return Err(Failure {
                    sent: false,
                    err: ProxyError::Timeout(format!(
                        "connect to {} took longer than {:?}",
                        who(),
                        cfg.connect_timeout
                    )),
                })
            }
        };
        let mut b = Request::builder()
            .method(req.method.clone())
            .uri(format!("{}{}", target.prefix, req.path_and_query));
        if let Some(h) = b.headers_mut() {
            h.clone_from(&req.headers);
            if let Ok(v) = HeaderValue::from_str(&target.authority) {
                h.insert(HOST, v);
            }
            // Our hop, after any the client's Via listed: if this request
            // comes back to us, `forward` sees it and refuses the loop.
            h.append(hyper::header::VIA, state.via.clone());
        }
        let out = match b.body(Full::new(req.body.clone())) {
            Ok(r) => r,
            Err(e) => {
                return Err(Failure {
                    sent: false,
                    err: ProxyError::BadGateway(format!("cannot build request: {e}")),
                })
            }
        };
        let sent = runtime::timeout(cfg.request_timeout, sender.send_request(out)).await;
        match sent {
            Err(_) => {
                return Err(Failure {
                    sent: true,
                    err: ProxyError::Timeout(format!(
                        "{} did not answer within {:?}",
                        who(),
                        cfg.request_timeout
                    )),
                })
            }
            Ok(Err(e)) => {
                // A pooled connection the worker had closed: the request
                // did not go out; try once more on a fresh connection.
                if reused
                    && fresh_retry
                    && (e.is_canceled() || e.is_closed() || e.is_incomplete_message())
                {
                    fresh_retry = false;
                    continue;
                }
                return Err(Failure {
                    sent: !e.is_canceled(),
                    err: ProxyError::BadGateway(format!("{}: {e}", who())),
                });
            }
            Ok(Ok(resp)) => {
                state
                    .counters
                    .borrow_mut()
                    .upstream_latency
                    .observe(started.elapsed());
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = Streamed {
                    inner: body,
                    sender: Some(sender),
                    state: state.clone(),
                    inflight,
                };
                return Ok(Response::from_parts(parts, body));
            }
        }
    }
}

/// The worker's response body, passed through frame by frame. When it
/// ends cleanly the connection goes back to the pool of the worker's origin
/// (the in-flight guard knows which worker that is).
pub(crate) struct Streamed {
    inner: Incoming,
    sender: Option<Sender>,
    state: Rc<ProxyState>,
    inflight: InFlight,
}

impl HttpBody for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &r {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(s) = self.sender.take() {
                if let Ok(t) = &self.inflight.upstream().target {
                    self.state.pool.checkin(&t.origin, s);
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
