//! The shard's outbound connections to workers: a keep-alive pool per
//! worker origin (scheme, host, port) and, when it has no idle connection,
//! connecting a new one (pingora's connector: `checkout -> (conn, reused)`,
//! `checkin`).
//!
//! Connecting = resolving the host (`resolve`, skipped for IP literals),
//! keeping only the addresses the address guard allows (`guard`: never
//! link-local, unspecified or our own listening address, and only
//! `--worker-networks` when set; checked on every resolved address, so a
//! name cannot resolve around it), trying them in order, and for `https` a
//! TLS handshake (`tls` holds the settings); all of it within the connect
//! timeout, and any failure in it means the request was not sent.
//!
//! Everything here is shard-local. This file must not choose workers, send
//! requests or read answers (that is `balance` and `forward`), and must not
//! block the shard: DNS runs off it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;

use super::endpoint::{Endpoint, Origin, Scheme};
use super::guard::AddrGuard;
use super::resolve::{ResolveError, Resolver};
use super::{Hasher, ProxyError};
use crate::runtime::{self, HyperIo};

/// One HTTP/1.1 connection to a worker, ready to send a request on.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// Idle keep-alive connections kept per worker origin.
const MAX_IDLE: usize = 32;

/// Grace past the connect timeout before the backstop around a checkout fires.
pub(crate) const CHECKOUT_SLACK: Duration = Duration::from_millis(50);

/// A shard's connections and what it takes to open one.
pub(crate) struct Pool {
    idle: RefCell<HashMap<Origin, Vec<Sender>, Hasher>>,
    resolver: Resolver,
    tls: futures_rustls::TlsConnector,
    guard: AddrGuard,
    opened: Cell<u64>,
}

impl Pool {
    /// `tls` is the server-wide client TLS configuration (see `tls`). The
    /// shard works on its own copy with its own session cache: rustls's
    /// default resumption store is a `Mutex`, and the config's `Arc` is
    /// cloned per new connection; shared, both would be touched by every
    /// shard's handshakes.
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>, guard: AddrGuard) -> Self {
        let mut own = (*tls).clone();
        own.resumption = rustls::client::Resumption::default();
        Self {
            idle: RefCell::default(),
            resolver: Resolver::default(),
            tls: futures_rustls::TlsConnector::from(Arc::new(own)),
            guard,
            opened: Cell::new(0),
        }
    }

    /// Connections this pool has opened (idle ones reused do not count).
    pub(crate) fn connections_opened(&self) -> u64 {
        self.opened.get()
    }

    /// DNS lookups the resolver has started.
    pub(crate) fn dns_lookups(&self) -> u64 {
        self.resolver.lookups_started()
    }

    /// A connection to `target`: an idle pooled one (`true`), else a new
    /// one. The whole connect (DNS, TCP to each address in turn, TLS,
    /// HTTP/1 handshake) is bounded by `connect_timeout`; every error here
    /// means nothing was sent.
    pub(crate) async fn checkout(
        &self,
        target: &Endpoint,
        connect_timeout: Duration,
    ) -> Result<(Sender, bool), ProxyError> {
        loop {
            let idle = self
                .idle
                .borrow_mut()
                .get_mut(&target.origin)
                .and_then(Vec::pop);
            match idle {
                Some(s) if s.is_ready() && !s.is_closed() => return Ok((s, true)),
                Some(_) => continue,
                None => break,
            }
        }
        let deadline = Instant::now() + connect_timeout;
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
                    .resolve(&origin.host, connect_timeout)
                    .await
                    .map_err(|e| match e {
                        ResolveError::Failed(why) => {
                            ProxyError::BadGateway(format!("cannot resolve {}: {why}", origin.host))
                        }
                        ResolveError::TimedOut => ProxyError::Timeout(format!(
                            "resolving {} took longer than {:?}",
                            origin.host, connect_timeout
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
                            "TLS handshake with {origin} took longer than {connect_timeout:?}"
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
        self.opened.set(self.opened.get() + 1);
        Ok((sender, false))
    }

    /// Gives a connection whose answer was read to the end back to the
    /// pool of `origin`; a closed one, or one past [`MAX_IDLE`], is dropped.
    pub(crate) fn checkin(&self, origin: &Origin, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        // Looked up by reference first: the key is cloned only the first
        // time an origin gets a pool, not per request.
        let conns = match idle.get_mut(origin) {
            Some(v) => v,
            None => idle.entry(origin.clone()).or_default(),
        };
        if conns.len() < MAX_IDLE {
            conns.push(s);
        }
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

#[cfg(test)]
mod tests {
    use super::super::endpoint::parse_endpoint;
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
}
