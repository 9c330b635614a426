//! DNS for worker hostnames (`https://abc.trycloudflare.com`,
//! `http://gpu-box.lan:8000`, `localhost`): a per-shard cache in front of
//! the system resolver (`getaddrinfo`, so /etc/hosts and nsswitch apply,
//! as they did for the original's httpx).
//!
//! A lookup blocks, so it never runs on the shard: it goes to
//! `runtime::off_shard` and the shard awaits the answer. Per host:
//! - a good answer is used for [`TTL`]; after that the stale addresses are
//!   still used while one background lookup refreshes them, so a request
//!   waits for DNS only the first time a shard meets a name;
//! - a failure is remembered for [`NEGATIVE_TTL`], so a worker with a dead
//!   name costs one lookup per shard per few seconds, not one per request;
//! - concurrent requests for the same name share one lookup;
//! - at most [`MAX_LOOKUPS`] lookups run at once per shard (each holds a
//!   thread until `getaddrinfo` gives up, however long the waiting request
//!   was willing to wait).
//!
//! Everything here is shard-local (`Rc`, `RefCell`): no lock, no atomic.
//! This file must not connect anywhere; the pool decides what to do with
//! the addresses (try them in order) and how long to wait.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{FutureExt, Shared};

use crate::runtime;

/// How long a resolved address list is used before it is refreshed.
pub(crate) const TTL: Duration = Duration::from_secs(30);
/// How long a failed lookup is remembered.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Lookups in progress at once on one shard.
pub(crate) const MAX_LOOKUPS: usize = 32;
/// Cached names per shard before expired ones are dropped.
const MAX_ENTRIES: usize = 4096;

/// A lookup's answer: the addresses in the resolver's order of preference.
pub(crate) type Answer = Result<Rc<[IpAddr]>, String>;
type Lookup = Shared<Pin<Box<dyn Future<Output = Answer>>>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolveError {
    /// The name did not resolve (or the lookup could not be run).
    Failed(String),
    /// No answer within the time the caller gave.
    TimedOut,
}

#[derive(Default)]
struct Entry {
    /// The last finished lookup's answer and when it stops being fresh.
    answer: Option<(Answer, Instant)>,
    /// A lookup in progress.
    pending: Option<Lookup>,
}

/// What the cache can say about a name without waiting.
#[derive(Debug, PartialEq, Eq)]
enum Cached {
    /// Use this answer (fresh, or a failure still remembered).
    Use(Answer),
    /// Use these addresses, but refresh them (past their TTL).
    Stale(Rc<[IpAddr]>),
    /// Nothing usable: wait for a lookup.
    Miss,
}

fn classify(answer: Option<&(Answer, Instant)>, now: Instant) -> Cached {
    match answer {
        Some((a, until)) if now < *until => Cached::Use(a.clone()),
        Some((Ok(addrs), _)) => Cached::Stale(addrs.clone()),
        _ => Cached::Miss,
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    running: usize,
    started: u64,
}

/// A shard's DNS cache.
#[derive(Default)]
pub(crate) struct Resolver {
    inner: Rc<RefCell<Inner>>,
}

impl Resolver {
    /// The addresses of `host`, waiting at most `within` for a lookup.
    pub(crate) async fn resolve(
        &self,
        host: &str,
        within: Duration,
    ) -> Result<Rc<[IpAddr]>, ResolveError> {
        // Decide under the borrow, act after it: glommio may run a task it
        // is asked to spawn right away, and `start` spawns one that borrows.
        let (cached, pending) = {
            let inner = self.inner.borrow();
            let entry = inner.entries.get(host);
            (
                classify(entry.and_then(|e| e.answer.as_ref()), Instant::now()),
                entry.and_then(|e| e.pending.clone()),
            )
        };
        let lookup = match (cached, pending) {
            (Cached::Use(a), _) => return a.map_err(ResolveError::Failed),
            (Cached::Stale(addrs), pending) => {
                if pending.is_none() {
                    // Not awaited: the refreshed answer lands in the cache.
                    drop(self.start(host));
                }
                return Ok(addrs);
            }
            (Cached::Miss, Some(l)) => l,
            (Cached::Miss, None) => self.start(host),
        };
        match runtime::timeout(within, lookup).await {
            Ok(a) => a.map_err(ResolveError::Failed),
            Err(_) => Err(ResolveError::TimedOut),
        }
    }

    /// Lookups started on this shard so far (for metrics and tests).
    pub(crate) fn lookups_started(&self) -> u64 {
        self.inner.borrow().started
    }

    /// Starts a lookup of `host` and a shard task that files its answer,
    /// so the answer is cached even when every waiting request gave up.
    fn start(&self, host: &str) -> Lookup {
        let shared = {
            let mut inner = self.inner.borrow_mut();
            if inner.running >= MAX_LOOKUPS {
                let busy: Answer = Err(format!(
                    "{MAX_LOOKUPS} DNS lookups already in progress on this shard"
                ));
                let ready: Pin<Box<dyn Future<Output = Answer>>> =
                    Box::pin(futures::future::ready(busy));
                return ready.shared();
            }
            inner.running += 1;
            inner.started += 1;
            let name = host.to_string();
            let job = runtime::off_shard("dns-lookup", move || lookup(&name));
            let fut: Pin<Box<dyn Future<Output = Answer>>> = Box::pin(async move {
                match job.await {
                    Some(Ok(addrs)) => Ok(Rc::from(addrs)),
                    Some(Err(e)) => Err(e),
                    None => Err("the DNS lookup thread failed".to_string()),
                }
            });
            let shared = fut.shared();
            inner.entries.entry(host.to_string()).or_default().pending = Some(shared.clone());
            shared
        };
        let cache = self.inner.clone();
        let host = host.to_string();
        let filed = shared.clone();
        runtime::spawn(async move {
            let answer = filed.await;
            let mut inner = cache.borrow_mut();
            inner.running -= 1;
            let now = Instant::now();
            let ttl = if answer.is_ok() { TTL } else { NEGATIVE_TTL };
            if let Err(e) = &answer {
                tracing::warn!(host = %host, error = %e, "worker host does not resolve");
            }
            let entry = inner.entries.entry(host).or_default();
            entry.pending = None;
            entry.answer = Some((answer, now + ttl));
            if inner.entries.len() > MAX_ENTRIES {
                inner.entries.retain(|_, e| {
                    e.pending.is_some() || e.answer.as_ref().is_some_and(|(_, t)| *t > now)
                });
            }
        });
        shared
    }
}

/// The blocking part, run off the shard: every address of `host`, in the
/// system resolver's order (RFC 6724 preference), duplicates dropped.
fn lookup(host: &str) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in (host, 0u16).to_socket_addrs().map_err(|e| e.to_string())? {
        if !out.contains(&a.ip()) {
            out.push(a.ip());
        }
    }
    if out.is_empty() {
        return Err("the name has no addresses".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_answers_and_remembered_failures_are_used_as_is() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let addrs: Rc<[IpAddr]> = Rc::from(vec!["10.0.0.1".parse().unwrap()]);
        assert_eq!(
            classify(Some(&(Ok(addrs.clone()), later)), now),
            Cached::Use(Ok(addrs.clone()))
        );
        assert_eq!(
            classify(Some(&(Err("nx".into()), later)), now),
            Cached::Use(Err("nx".into()))
        );
        // Past its TTL a good answer is still used while it is refreshed;
        // an expired failure is looked up again.
        assert_eq!(
            classify(Some(&(Ok(addrs.clone()), now)), later),
            Cached::Stale(addrs)
        );
        assert_eq!(
            classify(Some(&(Err("nx".into()), now)), later),
            Cached::Miss
        );
        assert_eq!(classify(None, now), Cached::Miss);
    }

    #[test]
    fn answers_and_failures_are_cached_per_shard() {
        crate::runtime::block_on(async {
            let r = Resolver::default();
            let wait = Duration::from_secs(5);
            let a = r.resolve("localhost", wait).await.unwrap();
            assert!(a.iter().all(IpAddr::is_loopback), "{a:?}");
            assert_eq!(r.resolve("localhost", wait).await.unwrap(), a);
            assert_eq!(r.lookups_started(), 1);
            let e = r.resolve("no-such-host.invalid", wait).await.unwrap_err();
            assert!(matches!(e, ResolveError::Failed(_)), "{e:?}");
            assert_eq!(
                r.resolve("no-such-host.invalid", wait).await.unwrap_err(),
                e
            );
            assert_eq!(r.lookups_started(), 2);
        })
        .unwrap();
    }

    #[test]
    fn the_system_resolver_answers_for_localhost_and_refuses_invalid() {
        let a = lookup("localhost").unwrap();
        assert!(a.iter().all(IpAddr::is_loopback), "{a:?}");
        // RFC 6761: .invalid never resolves.
        assert!(lookup("no-such-host.invalid").is_err());
    }
}
