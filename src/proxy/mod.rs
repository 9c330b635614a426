//! Forwarding inference requests to workers: the per-shard outbound
//! HTTP/1.1 client (hyper over the runtime's glommio sockets, plain or
//! TLS), worker choice, cooldowns, failover and streaming the answer back.
//! Split as pingora splits it: connections, load balancing, forwarding.
//!
//! # Layout
//!
//! - `mod.rs` (this file): the types the rest of the coordinator sees
//!   ([`Upstream`], [`Outbound`], [`ProxyConfig`], [`ProxySetup`],
//!   [`ProxyError`] / [`Failed`], [`ProxyCounters`]) and [`ProxyState`], a
//!   shard's proxy: the pool, the balancer and the counters, nothing else.
//! - `forward`: one request's life: loop check, worker list (cached or
//!   fetched), attempts with failover, the `Via` it carries, outcome
//!   counting, and the streamed answer ([`Streamed`]).
//! - `balance`: what choosing a worker remembers: in-flight counts,
//!   cooldowns, pins, the cached worker lists; it asks `route` to choose.
//! - `route`: the choice itself, a pure function.
//! - `pool`: keep-alive connections per worker origin and connecting new
//!   ones (resolve, guard, TCP, TLS, HTTP/1 handshake).
//! - `resolve`: the per-shard DNS cache; lookups run off the shard.
//! - `guard`: what the proxy refuses: addresses (SSRF), loops, paths that
//!   climb out of a prefix, our own credentials.
//! - `tls`: the client TLS settings, built once at start.
//! - `endpoint`: a worker's registered URL parsed into scheme, host, port
//!   and path prefix.
//! - `headers`: which headers cross the proxy (hop-by-hop out, our
//!   credentials out, `X-Forwarded-For` in).
//!
//! Everything here is shard-local: the pool, the in-flight counts and the
//! cooldowns belong to one shard (a worker failing on one shard is cooled
//! there; other shards learn on their own). The candidate list comes from
//! every shard's registry (a fan-out the caller runs and hands in as
//! `fetch`) and is cached for a short time. Pins are replicated to every
//! shard by the admin route.
//!
//! What this module must not do: block the shard (DNS runs off it), share
//! state between shards, or reach up into the layers that use it. Files
//! here import only `model`, `metrics` and `runtime` from the crate (and
//! each other): never `tasks`, `shard`, `store`, `config`, `http` or
//! `server`; what they need from those arrives as arguments
//! ([`ProxySetup`], [`ProxyConfig`], the `fetch` closure). A test below
//! holds the files to that.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::Method;

mod balance;
pub(crate) mod endpoint;
mod forward;
pub mod guard;
mod headers;
mod pool;
pub(crate) mod resolve;
pub mod route;
pub(crate) mod scrape;
pub(crate) mod tls;

use balance::Balancer;
pub(crate) use endpoint::{parse_endpoint, Endpoint};
pub(crate) use forward::forward;
use guard::AddrGuard;
pub(crate) use headers::{append_forwarded_for, strip_hop_by_hop, upstream_headers};
pub(crate) use pool::{Pool, Sender as PoolSender};

use crate::model::worker::WorkerRecord;

/// ahash, as in the registry and task table: the proxy's maps are hashed
/// on every proxied request.
type Hasher = ahash::RandomState;

/// A healthy worker serving a service, as the registry reports it.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
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
    pub(crate) fn of(w: &WorkerRecord, service: &str) -> Upstream {
        let port = w.port_of(service);
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

/// How forwarding ended without a worker's answer, for metrics and the
/// HTTP error (a worker's answer, 5xx included, is relayed instead). The texts of
/// `BadGateway`, `Timeout` and `Refused` may name addresses, ports and OS
/// errors: only an admin sees them (see [`Failed::for_caller`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("No healthy worker available for service: {0}")]
    NoWorker(String),
    /// Neither a catalog service nor one a registered worker declares.
    #[error("Service '{0}' not found")]
    UnknownService(String),
    /// The request already passed through this coordinator.
    #[error("Loop detected: the request already passed through this coordinator")]
    Loop,
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
pub(crate) struct Failed {
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
    pub(crate) fn for_caller(self, admin: bool) -> ProxyError {
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
pub(crate) type ByOutcome = BTreeMap<String, BTreeMap<&'static str, u64>>;

fn bump(map: &mut ByOutcome, name: &str, outcome: &'static str) {
    let per = match map.get_mut(name) {
        Some(per) => per,
        None => map.entry(name.to_string()).or_default(),
    };
    *per.entry(outcome).or_default() += 1;
}

/// A request to forward.
pub(crate) struct Outbound {
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

/// What a shard's proxy needs from the server: the TLS client settings,
/// the address guard and this coordinator's `Via` token.
#[derive(Clone)]
pub(crate) struct ProxySetup {
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    pub guard: AddrGuard,
    pub via_token: String,
}

/// A shard's proxy: its connection pool, its worker-choice state and its
/// counters. `forward` drives them; this only owns them and answers the
/// shard's admin and metrics calls.
pub(crate) struct ProxyState {
    pool: Pool,
    /// Shared with the in-flight guards of requests still streaming.
    balancer: Rc<Balancer>,
    counters: RefCell<ProxyCounters>,
    /// `Via` value we add (`1.1 <token>`) and the token we recognise.
    via: HeaderValue,
    via_token: String,
}

impl ProxyState {
    /// A shard's proxy state; `setup.tls` is the server-wide client TLS
    /// configuration, of which the pool takes its own copy (see
    /// `pool::Pool::new`).
    pub(crate) fn new(setup: ProxySetup) -> Self {
        let ProxySetup {
            tls,
            guard,
            via_token,
        } = setup;
        let via = HeaderValue::from_str(&format!("1.1 {via_token}"))
            .unwrap_or(HeaderValue::from_static("1.1 coordinator"));
        Self {
            pool: Pool::new(tls, guard),
            balancer: Rc::default(),
            counters: RefCell::default(),
            via,
            via_token,
        }
    }

    /// A removed worker's per-worker state goes with it: its attempt
    /// series, its cooldown, and the cached lists that may still name it.
    pub(crate) fn forget(&self, workers: &[String]) {
        {
            let mut c = self.counters.borrow_mut();
            for w in workers {
                c.attempts.remove(w);
            }
        }
        self.balancer.forget(workers);
    }

    /// A worker registered somewhere: the cached worker lists are dropped,
    /// so the next request sees it (read-your-writes routing).
    pub(crate) fn refresh(&self) {
        self.balancer.refresh();
    }

    /// Upstream latency alone (history samples; no per-worker maps copied).
    pub(crate) fn upstream_latency(&self) -> crate::metrics::Histogram {
        self.counters.borrow().upstream_latency.clone()
    }

    /// This shard's counters, with the gauges (cooling workers) and the
    /// pool's own counts filled in as of now.
    pub(crate) fn counters(&self) -> ProxyCounters {
        let mut c = self.counters.borrow().clone();
        c.dns_lookups = self.pool.dns_lookups();
        c.connections_opened = self.pool.connections_opened();
        c.cooldowns = self.balancer.cooling();
        c
    }

    /// Pins `key` ("service:<name>" / "model:<name>") to `workers`; `None`
    /// or an empty list removes the pin.
    pub(crate) fn set_pin(&self, key: String, workers: Option<Vec<String>>) {
        self.balancer.set_pin(key, workers);
    }

    pub(crate) fn pins(&self) -> BTreeMap<String, Vec<String>> {
        self.balancer.pins()
    }

    /// Caches `service`'s worker list on this shard and returns it shared.
    pub(crate) fn store(&self, service: &str, list: Vec<Upstream>) -> Rc<Vec<Upstream>> {
        self.balancer.store(service, list)
    }

    fn count(&self, service: &str, outcome: &'static str) {
        bump(&mut self.counters.borrow_mut().routed, service, outcome);
    }

    fn count_attempt(&self, worker: &str, outcome: &'static str) {
        bump(&mut self.counters.borrow_mut().attempts, worker, outcome);
    }
}
