//! What worker choice remembers on a shard (pingora's load balancing):
//! requests in flight per worker ([`InFlight`]), cooldowns after a failure,
//! admin pins, and the short-lived cache of each service's worker list; and
//! the call into `route::choose`, which turns that state and the request
//! into one worker.
//!
//! Everything here is shard-local: a worker failing on one shard is cooled
//! there; other shards learn on their own. The worker lists come from
//! every shard's registry (a fan-out the caller runs) and are cached here
//! for a short time; pins are replicated to every shard by the admin route.
//! This file must not connect, send or count outcomes: it only says which
//! worker to try next, and is told how the try went.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::route::{self, Ask, Candidate};
use super::{Hasher, Upstream};

/// A service's worker list and when it was fetched.
type Cached = (Instant, Rc<Vec<Upstream>>);

/// Service worker lists cached per shard before expired ones are dropped.
/// Only known services are cached, so this is rarely reached.
const MAX_CACHED: usize = 1024;

/// A shard's worker-choice state. The maps use ahash, as the registry and
/// task table do: they are hashed on every proxied request (in-flight and
/// cooldown once per candidate per attempt).
#[derive(Default)]
pub(crate) struct Balancer {
    inflight: RefCell<HashMap<String, u32, Hasher>>,
    cooldown: RefCell<HashMap<String, Instant, Hasher>>,
    /// "service:<name>" / "model:<name>" -> pinned worker ids.
    pins: RefCell<BTreeMap<String, Vec<String>>>,
    cache: RefCell<HashMap<String, Cached, Hasher>>,
}

impl Balancer {
    /// Removed workers' cooldowns go, and so do the cached lists that may
    /// still name them.
    pub(crate) fn forget(&self, workers: &[String]) {
        let mut cooling = self.cooldown.borrow_mut();
        for w in workers {
            cooling.remove(w);
        }
        self.cache.borrow_mut().clear();
    }

    /// The registry changed (a worker registered): every cached list may
    /// lack it, so all go.
    pub(crate) fn refresh(&self) {
        self.cache.borrow_mut().clear();
    }

    /// Workers cooling down now.
    pub(crate) fn cooling(&self) -> u64 {
        let now = Instant::now();
        self.cooldown
            .borrow()
            .values()
            .filter(|until| **until > now)
            .count() as u64
    }

    pub(crate) fn set_pin(&self, key: String, workers: Option<Vec<String>>) {
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

    pub(crate) fn pins(&self) -> BTreeMap<String, Vec<String>> {
        self.pins.borrow().clone()
    }

    /// `service`'s cached worker list, if fetched less than `ttl` ago.
    pub(crate) fn cached(&self, service: &str, ttl: Duration) -> Option<Rc<Vec<Upstream>>> {
        let cache = self.cache.borrow();
        let (at, list) = cache.get(service)?;
        (at.elapsed() < ttl).then(|| list.clone())
    }

    /// Keeps `list` for `service`. An empty list is not kept: "no worker"
    /// must not outlive the registration that ends it.
    pub(crate) fn store(&self, service: &str, list: Vec<Upstream>) -> Rc<Vec<Upstream>> {
        let list = Rc::new(list);
        if list.is_empty() {
            return list;
        }
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(service.to_string(), (Instant::now(), list.clone()));
        list
    }

    /// The workers pinned for `model` (when it has a pin), else for
    /// `service`.
    pub(crate) fn pinned(&self, service: &str, model: Option<&str>) -> Vec<String> {
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

    /// Keeps `worker` out of choices for `cooldown` (unless every
    /// candidate is cooling: see `route`).
    pub(crate) fn cool(&self, worker: &str, cooldown: Duration) {
        let now = Instant::now();
        let mut cooling = self.cooldown.borrow_mut();
        // Ended cooldowns have no effect; dropping them here keeps the map
        // to the workers cooling now, not every worker that ever failed.
        cooling.retain(|_, until| *until > now);
        cooling.insert(worker.to_string(), now + cooldown);
    }

    /// The index in `ups` of the worker to try for `ask`, if any is left.
    pub(crate) fn choose(&self, ups: &[Upstream], ask: &Ask<'_>) -> Option<usize> {
        let cands = self.candidates(ups);
        route::choose(&cands, ask, &mut |n| fastrand::usize(..n))
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
}

/// Counts a request in flight to worker `ups[i]` until dropped (at the end
/// of the streamed body, or on any failure). Holding the list's `Rc` and
/// an index, not a copy of the id, costs no allocation per request.
pub(crate) struct InFlight {
    balancer: Rc<Balancer>,
    ups: Rc<Vec<Upstream>>,
    i: usize,
}

impl InFlight {
    pub(crate) fn new(balancer: Rc<Balancer>, ups: Rc<Vec<Upstream>>, i: usize) -> Self {
        {
            let mut m = balancer.inflight.borrow_mut();
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
        Self { balancer, ups, i }
    }

    /// The worker this request is in flight to.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.ups[self.i]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let worker = &self.ups[self.i].worker_id;
        let mut m = self.balancer.inflight.borrow_mut();
        if let Some(n) = m.get_mut(worker) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(worker);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: &str) -> Upstream {
        Upstream {
            worker_id: id.to_string(),
            target: Err("test".to_string()),
            loaded_models: Vec::new(),
            active_requests: 0,
            current_load: 0.0,
        }
    }

    fn ask<'a>(pinned: &'a [String], exclude: &'a [&'a str]) -> Ask<'a> {
        Ask {
            model: None,
            session: None,
            pinned,
            exclude,
        }
    }

    #[test]
    fn in_flight_counts_last_until_the_guard_drops() {
        let b = Rc::new(Balancer::default());
        let ups = Rc::new(vec![up("a"), up("b")]);
        let first = InFlight::new(b.clone(), ups.clone(), 0);
        let second = InFlight::new(b.clone(), ups.clone(), 0);
        let inflight = |b: &Balancer| {
            b.candidates(&ups)
                .iter()
                .map(|c| c.inflight)
                .collect::<Vec<_>>()
        };
        assert_eq!(inflight(&b), [2, 0]);
        // With "a" busy, least outstanding picks "b" every time.
        assert_eq!(b.choose(&ups, &ask(&[], &[])), Some(1));
        drop(first);
        assert_eq!(inflight(&b), [1, 0]);
        drop(second);
        assert_eq!(inflight(&b), [0, 0]);
        assert!(
            b.inflight.borrow().is_empty(),
            "no entry for an idle worker"
        );
    }

    #[test]
    fn no_worker_is_never_cached_and_a_refresh_drops_every_list() {
        let b = Balancer::default();
        let ttl = Duration::from_secs(60);
        assert!(b.store("empty", Vec::new()).is_empty());
        assert!(b.cached("empty", ttl).is_none());
        b.store("svc", vec![up("a")]);
        assert_eq!(b.cached("svc", ttl).map(|l| l.len()), Some(1));
        b.refresh();
        assert!(b.cached("svc", ttl).is_none());
    }

    #[test]
    fn a_cooling_worker_is_avoided_and_forgotten_with_the_worker() {
        let b = Balancer::default();
        let ups = vec![up("a"), up("b")];
        b.cool("a", Duration::from_secs(60));
        assert_eq!(b.cooling(), 1);
        for _ in 0..20 {
            assert_eq!(b.choose(&ups, &ask(&[], &[])), Some(1));
        }
        b.store("svc", ups.clone());
        b.forget(&["a".to_string()]);
        assert_eq!(b.cooling(), 0);
        assert!(b.cached("svc", Duration::from_secs(60)).is_none());
    }

    #[test]
    fn a_model_pin_wins_over_a_service_pin_and_an_empty_pin_clears() {
        let b = Balancer::default();
        b.set_pin("service:svc".into(), Some(vec!["a".into()]));
        b.set_pin("model:m".into(), Some(vec!["b".into()]));
        assert_eq!(b.pinned("svc", Some("m")), ["b"]);
        assert_eq!(b.pinned("svc", Some("other")), ["a"]);
        b.set_pin("service:svc".into(), Some(Vec::new()));
        assert!(b.pinned("svc", None).is_empty());
        assert_eq!(b.pins().len(), 1);
    }
}
