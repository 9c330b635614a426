//! Forwarding a request to a worker: the per-shard outbound HTTP/1.1 client
//! (hyper over the runtime's glommio sockets, plain or TLS, one keep-alive
//! pool per worker origin = scheme, host, port), worker choice
//! (`route::choose`), cooldowns, failover and streaming the answer back
//! frame by frame.
//!
//! Connecting = resolving the host (`resolve`, skipped for IP literals),
//! keeping only the addresses the address guard allows (`guard`: never
//! link-local, unspecified or our own listening address, and only
//! `--worker-networks` when set; checked on every resolved address, so a
//! name cannot resolve around it), trying them in order, and for `https` a
//! TLS handshake (`tls` holds the settings); all of it within
//! `--proxy-connect-timeout`, and any failure in it means the request was
//! not sent. Endpoint parsing lives in `endpoint`. Nothing here may block
//! the shard: DNS runs off it.
//!
//! Every forwarded request carries a `Via` naming this coordinator; one
//! that arrives with it already is a loop and is refused before anything
//! else happens (no fetch, no cache entry, no counter).
//!
//! Everything here is shard-local: the pool, the in-flight counts and the
//! cooldowns belong to one shard (a worker failing on one shard is cooled
//! there; other shards learn on their own). The candidate list comes from
//! every shard's registry (a fan-out) and is cached for a short time.
//! Pins are replicated to every shard by the admin route.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, Response};

pub mod endpoint;
pub mod guard;
pub mod resolve;
pub mod route;
pub mod tls;

pub use endpoint::{parse_endpoint, Endpoint, Origin, Scheme};
use guard::AddrGuard;
use resolve::{ResolveError, Resolver};
use route::{Ask, Candidate};

use crate::model::worker::WorkerRecord;
use crate::runtime::{self, HyperIo};

type Sender = SendRequest<Full<Bytes>>;

/// Idle keep-alive connections kept per worker origin.
const MAX_IDLE: usize = 32;

/// Grace past the connect timeout before the backstop around a checkout fires.
const CHECKOUT_SLACK: Duration = Duration::from_millis(50);

/// A healthy worker serving a service, as the registry reports it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub worker_id: String,
    /// Where the worker is reached, parsed from its `tunnel_url` /
    /// `endpoint` (a bare address gets the service's port from the catalog
    /// or the worker's declared services), or why it cannot be.
    pub target: Result<Endpoint, String>,
    pub loaded_models: Vec<String>,
    pub active_requests: u64,
    pub current_load: f64,
}

impl Upstream {
    pub fn of(w: &WorkerRecord, service: &str) -> Upstream {
        let declared = w.services.iter().find_map(|s| {
            let o = s.as_object()?;
            (o.get("name")?.as_str()? == service)
                .then(|| o.get("port")?.as_u64())
                .flatten()
        });
        let port = w
            .service_configs
            .iter()
            .find(|c| c.name == service)
            .map(|c| c.port)
            .or(declared.and_then(|p| u16::try_from(p).ok()));
        let target = match w.endpoint() {
            Some(e) => parse_endpoint(e, port),
            None => Err("worker has no endpoint".to_string()),
        };
        Upstream {
            worker_id: w.worker_id.clone(),
            target,
            loaded_models: w.state.loaded_models.clone(),
            active_requests: w.state.active_requests,
            current_load: w.state.current_load,
        }
    }
}

/// How forwarding ended, for metrics and the HTTP error. The texts of
/// `BadGateway`, `Timeout` and `Refused` may name addresses, ports and OS
/// errors: only an admin sees them (see [`Failed::for_caller`]).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("No healthy worker available for service: {0}")]
    NoWorker(String),
    /// Neither a catalog service nor one a registered worker declares.
    #[error("Service '{0}' not found")]
    UnknownService(String),
    /// The request already passed through this coordinator.
    #[error("Loop detected: the request already passed through this coordinator")]
    Loop,
    /// The worker answered with a 5xx (no address in the text).
    #[error("Worker request failed: {0}")]
    Answered(String),
    #[error("Worker request failed: {0}")]
    BadGateway(String),
    #[error("Worker request timed out: {0}")]
    Timeout(String),
    /// Every address of the worker is refused by the address guard.
    #[error("Worker request failed: {0}")]
    Refused(String),
}

/// A failed forward: the error and the worker it last happened with.
#[derive(Debug)]
pub struct Failed {
    pub error: ProxyError,
    pub worker: Option<String>,
}

impl Failed {
    fn of(error: ProxyError) -> Self {
        Failed {
            error,
            worker: None,
        }
    }

    /// The error as the caller may see it: an admin gets the full text;
    /// anyone else gets the worker's id instead of addresses, ports and OS
    /// errors, so the proxy cannot be used to map a network.
    pub fn for_caller(self, admin: bool) -> ProxyError {
        let Some(w) = self.worker.filter(|_| !admin) else {
            return self.error;
        };
        match self.error {
            ProxyError::BadGateway(_) | ProxyError::Refused(_) => {
                ProxyError::BadGateway(format!("worker {w} could not be reached"))
            }
            ProxyError::Timeout(_) => {
                ProxyError::Timeout(format!("worker {w} did not answer in time"))
            }
            other => other,
        }
    }
}

/// Per-shard counters, merged on scrape.
#[derive(Debug, Clone, Default)]
pub struct ProxyCounters {
    /// service -> outcome -> requests.
    pub routed: ByOutcome,
    /// worker -> outcome -> attempts.
    pub attempts: ByOutcome,
    pub upstream_latency: crate::metrics::Histogram,
    pub cooldowns: u64,
    pub retries: u64,
    pub connections_opened: u64,
    pub dns_lookups: u64,
}

/// Name -> outcome -> count. Nested rather than keyed by `(name, outcome)`
/// so that counting a request looks the name up by `&str` and copies it
/// only the first time it is seen.
pub type ByOutcome = BTreeMap<String, BTreeMap<&'static str, u64>>;

fn bump(map: &mut ByOutcome, name: &str, outcome: &'static str) {
    let per = match map.get_mut(name) {
        Some(per) => per,
        None => map.entry(name.to_string()).or_default(),
    };
    *per.entry(outcome).or_default() += 1;
}

/// A request to forward.
pub struct Outbound {
    pub service: String,
    pub model: Option<String>,
    pub session: Option<String>,
    pub method: Method,
    /// Path and query on the worker (the endpoint's prefix is prepended).
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Settings the proxy runs with.
#[derive(Debug, Clone, Copy)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub cooldown: Duration,
    pub cache_ttl: Duration,
}

/// A service's worker list and when it was fetched.
type Cached = (Instant, Rc<Vec<Upstream>>);

/// ahash, as in the registry and task table: these maps are hashed on every
/// proxied request (in-flight and cooldown once per candidate per attempt).
type Hasher = ahash::RandomState;

pub struct ProxyState {
    pools: RefCell<HashMap<Origin, Vec<Sender>, Hasher>>,
    resolver: Resolver,
    tls: futures_rustls::TlsConnector,
    inflight: RefCell<HashMap<String, u32, Hasher>>,
    cooldown: RefCell<HashMap<String, Instant, Hasher>>,
    /// "service:<name>" / "model:<name>" -> pinned worker ids.
    pins: RefCell<BTreeMap<String, Vec<String>>>,
    cache: RefCell<HashMap<String, Cached, Hasher>>,
    counters: RefCell<ProxyCounters>,
    guard: AddrGuard,
    /// `Via` value we add (`1.1 <token>`) and the token we recognise.
    via: HeaderValue,
    via_token: String,
}

/// Service worker lists cached per shard before expired ones are dropped.
/// Only known services are cached, so this is rarely reached.
const MAX_CACHED: usize = 1024;

/// What a shard's proxy needs from the server: the TLS client settings,
/// the address guard and this coordinator's `Via` token.
#[derive(Clone)]
pub struct ProxySetup {
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    pub guard: AddrGuard,
    pub via_token: String,
}

impl ProxyState {
    /// A shard's proxy state; `tls` is the server-wide client TLS
    /// configuration (see `tls`). The shard works on its own copy
    /// with its own session cache: rustls's default resumption store is a
    /// `Mutex`, and the config's `Arc` is cloned per new connection; shared,
    /// both would be touched by every shard's handshakes.
    pub fn new(setup: ProxySetup) -> Self {
        let ProxySetup {
            tls,
            guard,
            via_token,
        } = setup;
        let via = HeaderValue::from_str(&format!("1.1 {via_token}"))
            .unwrap_or(HeaderValue::from_static("1.1 coordinator"));
        let mut own = (*tls).clone();
        own.resumption = rustls::client::Resumption::default();
        Self {
            pools: RefCell::default(),
            resolver: Resolver::default(),
            tls: futures_rustls::TlsConnector::from(std::sync::Arc::new(own)),
            inflight: RefCell::default(),
            cooldown: RefCell::default(),
            pins: RefCell::default(),
            cache: RefCell::default(),
            counters: RefCell::default(),
            guard,
            via,
            via_token,
        }
    }

    /// A removed worker's per-worker state goes with it: its attempt
    /// series, its cooldown, and the cached lists that may still name it.
    pub fn forget(&self, workers: &[String]) {
        {
            let mut c = self.counters.borrow_mut();
            for w in workers {
                c.attempts.remove(w);
            }
        }
        let mut cooling = self.cooldown.borrow_mut();
        for w in workers {
            cooling.remove(w);
        }
        self.cache.borrow_mut().clear();
    }

    pub fn counters(&self) -> ProxyCounters {
        let mut c = self.counters.borrow().clone();
        c.dns_lookups = self.resolver.lookups_started();
        let now = Instant::now();
        c.cooldowns = self
            .cooldown
            .borrow()
            .values()
            .filter(|until| **until > now)
            .count() as u64;
        c
    }

    pub fn set_pin(&self, key: String, workers: Option<Vec<String>>) {
        let mut pins = self.pins.borrow_mut();
        match workers {
            Some(w) if !w.is_empty() => {
                pins.insert(key, w);
            }
            _ => {
                pins.remove(&key);
            }
        }
    }

    pub fn pins(&self) -> BTreeMap<String, Vec<String>> {
        self.pins.borrow().clone()
    }

    fn cached(&self, service: &str, ttl: Duration) -> Option<Rc<Vec<Upstream>>> {
        let cache = self.cache.borrow();
        let (at, list) = cache.get(service)?;
        (at.elapsed() < ttl).then(|| list.clone())
    }

    pub fn store(&self, service: &str, list: Vec<Upstream>) -> Rc<Vec<Upstream>> {
        let list = Rc::new(list);
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(service.to_string(), (Instant::now(), list.clone()));
        list
    }

    fn pinned(&self, service: &str, model: Option<&str>) -> Vec<String> {
        let pins = self.pins.borrow();
        // Usually nothing is pinned: skip formatting the lookup keys. (The
        // "kind:name" keys are shared with the admin route and the store.)
        if pins.is_empty() {
            return Vec::new();
        }
        model
            .and_then(|m| pins.get(&format!("model:{m}")))
            .or_else(|| pins.get(&format!("service:{service}")))
            .cloned()
            .unwrap_or_default()
    }

    fn cool(&self, worker: &str, cfg: &ProxyConfig) {
        let now = Instant::now();
        let mut cooling = self.cooldown.borrow_mut();
        // Ended cooldowns have no effect; dropping them here keeps the map
        // to the workers cooling now, not every worker that ever failed.
        cooling.retain(|_, until| *until > now);
        cooling.insert(worker.to_string(), now + cfg.cooldown);
    }

    fn count(&self, service: &str, outcome: &'static str) {
        bump(&mut self.counters.borrow_mut().routed, service, outcome);
    }

    fn count_attempt(&self, worker: &str, outcome: &'static str) {
        bump(&mut self.counters.borrow_mut().attempts, worker, outcome);
    }

    fn candidates<'a>(&self, ups: &'a [Upstream]) -> Vec<Candidate<'a>> {
        let now = Instant::now();
        let inflight = self.inflight.borrow();
        let cooldown = self.cooldown.borrow();
        ups.iter()
            .map(|u| Candidate {
                worker_id: &u.worker_id,
                loaded_models: &u.loaded_models,
                inflight: inflight.get(&u.worker_id).copied().unwrap_or(0),
                active_requests: u.active_requests,
                current_load: u.current_load,
                cooling: cooldown.get(&u.worker_id).is_some_and(|t| *t > now),
            })
            .collect()
    }

    /// A connection to `target`: an idle pooled one (`true`), else a new
    /// one. The whole connect (DNS, TCP to each address in turn, TLS,
    /// HTTP/1 handshake) is bounded by the connect timeout; every error here
    /// means nothing was sent.
    async fn checkout(
        &self,
        target: &Endpoint,
        cfg: &ProxyConfig,
    ) -> Result<(Sender, bool), ProxyError> {
        loop {
            let idle = self
                .pools
                .borrow_mut()
                .get_mut(&target.origin)
                .and_then(Vec::pop);
            match idle {
                Some(s) if s.is_ready() && !s.is_closed() => return Ok((s, true)),
                Some(_) => continue,
                None => break,
            }
        }
        let deadline = Instant::now() + cfg.connect_timeout;
        let origin = &target.origin;
        let io = match target.ip {
            // IP literals skip the resolver entirely (and allocate nothing).
            Some(ip) => {
                self.allowed(std::slice::from_ref(&ip), target)?;
                connect_any(std::slice::from_ref(&ip), target, deadline).await?
            }
            None => {
                let ips = self
                    .resolver
                    .resolve(&origin.host, cfg.connect_timeout)
                    .await
                    .map_err(|e| match e {
                        ResolveError::Failed(why) => {
                            ProxyError::BadGateway(format!("cannot resolve {}: {why}", origin.host))
                        }
                        ResolveError::TimedOut => ProxyError::Timeout(format!(
                            "resolving {} took longer than {:?}",
                            origin.host, cfg.connect_timeout
                        )),
                    })?;
                let ips = self.allowed(&ips, target)?;
                connect_any(&ips, target, deadline).await?
            }
        };
        let io = match origin.scheme {
            Scheme::Http => io,
            Scheme::Https => {
                // SNI and certificate check against the URL's host (an IP
                // literal becomes an IP-address name, checked against the
                // certificate's IP SANs).
                let name =
                    rustls::pki_types::ServerName::try_from(origin.host.clone()).map_err(|e| {
                        ProxyError::BadGateway(format!("{origin}: not a TLS server name: {e}"))
                    })?;
                let left = deadline.saturating_duration_since(Instant::now());
                match runtime::timeout(left, io.start_tls(&self.tls, name)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        return Err(ProxyError::BadGateway(format!(
                            "TLS handshake with {origin}: {e}"
                        )))
                    }
                    Err(_) => {
                        return Err(ProxyError::Timeout(format!(
                            "TLS handshake with {origin} took longer than {:?}",
                            cfg.connect_timeout
                        )))
                    }
                }
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| ProxyError::BadGateway(format!("handshake with {origin}: {e}")))?;
        runtime::spawn(async move {
            let _ = conn.await;
        });
        self.counters.borrow_mut().connections_opened += 1;
        Ok((sender, false))
    }

    /// The addresses of `ips` the guard lets us connect to (at the
    /// target's port); none is a `Refused` error naming them.
    fn allowed(&self, ips: &[IpAddr], target: &Endpoint) -> Result<Vec<IpAddr>, ProxyError> {
        let port = target.origin.port;
        let mut ok = Vec::with_capacity(ips.len());
        let mut refused = Vec::new();
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            match self.guard.check(addr) {
                Ok(()) => ok.push(*ip),
                Err(why) => refused.push(format!("{addr} ({why})")),
            }
        }
        if ok.is_empty() {
            return Err(ProxyError::Refused(format!(
                "{}: refused by policy: {}",
                target.origin,
                refused.join("; ")
            )));
        }
        Ok(ok)
    }

    fn checkin(&self, origin: &Origin, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut pools = self.pools.borrow_mut();
        // Looked up by reference first: the key is cloned only the first
        // time an origin gets a pool, not per request.
        let idle = match pools.get_mut(origin) {
            Some(v) => v,
            None => pools.entry(origin.clone()).or_default(),
        };
        if idle.len() < MAX_IDLE {
            idle.push(s);
        }
    }
}

/// Connects to the first of `ips` (at the endpoint's port) that accepts,
/// in order. Each address gets an equal share of the time left, so one
/// that swallows SYNs cannot use up the budget of those after it.
async fn connect_any(
    ips: &[IpAddr],
    target: &Endpoint,
    deadline: Instant,
) -> Result<HyperIo, ProxyError> {
    let mut errors: Vec<String> = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let share = left / (ips.len() - i) as u32;
        let addr = SocketAddr::new(*ip, target.origin.port);
        match HyperIo::connect(addr, share).await {
            Ok(io) => return Ok(io),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    let origin = &target.origin;
    if Instant::now() >= deadline {
        let tried = if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join("; "))
        };
        return Err(ProxyError::Timeout(format!(
            "connect to {origin} took longer than the connect timeout{tried}"
        )));
    }
    Err(ProxyError::BadGateway(format!(
        "connect to {origin}: {}",
        errors.join("; ")
    )))
}

/// Counts a request in flight to worker `ups[i]` until dropped (at the end
/// of the streamed body, or on any failure). Holding the list's `Rc` and
/// an index, not a copy of the id, costs no allocation per request.
struct InFlight {
    state: Rc<ProxyState>,
    ups: Rc<Vec<Upstream>>,
    i: usize,
}

impl InFlight {
    fn new(state: Rc<ProxyState>, ups: Rc<Vec<Upstream>>, i: usize) -> Self {
        {
            let mut m = state.inflight.borrow_mut();
            let worker = &ups[i].worker_id;
            // Looked up by reference first: the id is copied only when the
            // worker has nothing else in flight on this shard.
            match m.get_mut(worker) {
                Some(n) => *n += 1,
                None => {
                    m.insert(worker.clone(), 1);
                }
            }
        }
        Self { state, ups, i }
    }

    fn upstream(&self) -> &Upstream {
        &self.ups[self.i]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let worker = &self.ups[self.i].worker_id;
        let mut m = self.state.inflight.borrow_mut();
        if let Some(n) = m.get_mut(worker) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(worker);
            }
        }
    }
}

/// The worker's response body, passed through frame by frame. When it
/// ends cleanly the connection goes back to the pool of the worker's origin
/// (the in-flight guard knows which worker that is).
pub struct Streamed {
    inner: Incoming,
    sender: Option<Sender>,
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
                    self.inflight.state.checkin(&t.origin, s);
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

/// Hop-by-hop headers (RFC 9110 7.6.1) plus what we set ourselves.
const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for n in HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        h.remove(n);
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// The upstream answered (any status): stream it back.
pub type Forwarded = Response<Streamed>;

/// Picks a worker, sends, fails over once, and returns the worker's
/// response with its body still streaming. `fetch` supplies the healthy
/// workers of the service (it is given the name) when the shard's cache
/// is stale.
pub async fn forward<F, Fut, E>(
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
    let ups = match state.cached(&req.service, cfg.cache_ttl) {
        Some(u) => u,
        None => match fetch(req.service.clone()).await? {
            Some(list) => state.store(&req.service, list),
            // Unknown: nothing is cached or counted under its name.
            None => return Ok(Err(Failed::of(ProxyError::UnknownService(req.service)))),
        },
    };
    Ok(forward_to(state, cfg, &req, &ups).await)
}

async fn forward_to(
    state: &Rc<ProxyState>,
    cfg: &ProxyConfig,
    req: &Outbound,
    ups: &Rc<Vec<Upstream>>,
) -> Result<Forwarded, Failed> {
    let pinned = state.pinned(&req.service, req.model.as_deref());
    let mut tried: Vec<&str> = Vec::new();
    let mut last: Option<ProxyError> = None;
    for attempt in 0..2 {
        let cands = state.candidates(ups);
        let ask = Ask {
            model: req.model.as_deref(),
            session: req.session.as_deref(),
            pinned: &pinned,
            exclude: &tried,
        };
        let Some(i) = route::choose(&cands, &ask, &mut |n| fastrand::usize(..n)) else {
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
                state.cool(&up.worker_id, cfg);
                state.count_attempt(&up.worker_id, "upstream_5xx");
                let err = ProxyError::Answered(format!(
                    "worker {} answered {}",
                    up.worker_id,
                    resp.status()
                ));
                if attempt == 0 && idempotent(&req.method) {
                    last = Some(err);
                    continue;
                }
                state.count(&req.service, "upstream_5xx");
                return Err(Failed {
                    error: err,
                    worker: Some(up.worker_id.clone()),
                });
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
                state.cool(&up.worker_id, cfg);
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
    let err = last.unwrap_or_else(|| ProxyError::NoWorker(req.service.clone()));
    let label = match err {
        ProxyError::NoWorker(_) | ProxyError::UnknownService(_) | ProxyError::Loop => "no_worker",
        ProxyError::Timeout(_) => "timeout",
        ProxyError::Refused(_) => "refused",
        ProxyError::BadGateway(_) | ProxyError::Answered(_) => "bad_gateway",
    };
    state.count(&req.service, label);
    Err(Failed {
        error: err,
        worker: tried.last().map(|w| w.to_string()),
    })
}

struct Failure {
    /// The request may have reached the worker.
    sent: bool,
    err: ProxyError,
}

async fn send_once(
    state: &Rc<ProxyState>,
    cfg: &ProxyConfig,
    req: &Outbound,
    (ups, i): (&Rc<Vec<Upstream>>, usize),
    target: &Endpoint,
) -> Result<Forwarded, Failure> {
    let up = &ups[i];
    let inflight = InFlight::new(state.clone(), ups.clone(), i);
    let started = Instant::now();
    // Only failures name the worker: formatted then, not per request.
    let who = || format!("worker {} at {}", up.worker_id, target.origin);
    let mut fresh_retry = true;
    loop {
        // The checkout bounds each of its steps by the connect timeout and
        // says which one ran out; this outer bound, a little later so those
        // messages win, is only a backstop.
        let backstop = cfg.connect_timeout + CHECKOUT_SLACK;
        let (mut sender, reused) =
            match runtime::timeout(backstop, state.checkout(target, cfg)).await {
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
                    inflight,
                };
                return Ok(Response::from_parts(parts, body));
            }
        }
    }
}

/// Request headers to send upstream: the client's minus hop-by-hop and
/// minus our own credentials (`guard::strip_credentials`: `X-API-Key`,
/// `Cookie`, and `Authorization` when it is ours), plus
/// `X-Forwarded-For` (appended to any the client sent).
pub fn upstream_headers(
    mut h: HeaderMap,
    peer: Option<IpAddr>,
    authorization_is_ours: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    guard::strip_credentials(&mut h, authorization_is_ours);
    h.remove(HOST);
    h.remove(hyper::header::CONTENT_LENGTH);
    append_forwarded_for(&mut h, peer);
    h
}

/// Appends the client's address to `X-Forwarded-For` (or starts it).
pub fn append_forwarded_for(h: &mut HeaderMap, peer: Option<IpAddr>) {
    let Some(ip) = peer else { return };
    let xff = HeaderName::from_static("x-forwarded-for");
    let v = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(xff, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tried_in_order_until_one_accepts() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let target = parse_endpoint(&format!("http://w.example:{port}"), None).unwrap();
        // Also loopback, but nothing listens there: refused at once.
        let refused: IpAddr = "127.0.0.2".parse().unwrap();
        let open: IpAddr = "127.0.0.1".parse().unwrap();
        runtime::block_on(async {
            let deadline = Instant::now() + Duration::from_secs(2);
            assert!(connect_any(&[refused, open], &target, deadline)
                .await
                .is_ok());
            match connect_any(&[refused, refused], &target, deadline).await {
                Err(ProxyError::BadGateway(m)) => {
                    assert!(
                        m.contains("http://w.example:") && m.contains("127.0.0.2"),
                        "{m}"
                    );
                    assert_eq!(m.matches("127.0.0.2").count(), 2, "{m}");
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("connected to a closed port"),
            }
        })
        .unwrap();
    }

    #[test]
    fn hop_by_hop_headers_go_and_xff_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("host", HeaderValue::from_static("coordinator"));
        let out = upstream_headers(h, Some("10.0.0.9".parse().unwrap()), false);
        assert!(out.get("connection").is_none() && out.get("x-secret").is_none());
        assert!(out.get("transfer-encoding").is_none() && out.get("host").is_none());
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(out["authorization"], "Bearer t");
    }
}
