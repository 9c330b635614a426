use super::*;

use serde_json::{Map, Value};

use crate::model::worker::Registration;
use crate::model::{ServiceSpec, WorkerType};

fn live() -> Liveness {
    Liveness {
        heartbeat_timeout: Duration::from_secs(2),
        worker_timeout: Duration::from_secs(5),
    }
}

pub(crate) fn record(id: &str, assigned: &[&str]) -> WorkerRecord {
    let r = Registration {
        worker_id: id.to_string(),
        capabilities: Map::new(),
        tunnel_url: None,
        ip_address: Some("127.0.0.1".into()),
        services: vec![],
        containers: vec![],
    };
    // Service names of the tests' own, not catalog entries.
    let specs: Vec<&'static ServiceSpec> = assigned.iter().map(|n| spec(n)).collect();
    WorkerRecord::registered(r, WorkerType::Cpu.into(), &specs)
}

/// A catalog entry named `name` (leaked: tests only).
fn spec(name: &str) -> &'static ServiceSpec {
    Box::leak(Box::new(ServiceSpec {
        name: name.into(),
        tier: 2,
        requires: WorkerType::Cpu,
        priority: 1,
        port: 9000,
        image: String::new(),
        env: Default::default(),
    }))
}

fn hb(id: &str, status: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        worker_id: id.into(),
        status: Some(status.into()),
        ..Default::default()
    }
}

fn index(reg: &Registry) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = reg
        .service_names()
        .map(|k| {
            let mut ids: Vec<String> = reg
                .service_workers(k)
                .map(|w| w.worker_id.clone())
                .collect();
            ids.sort();
            (k.to_string(), ids)
        })
        .collect();
    v.sort();
    v
}

/// What the counts must be, recounted from scratch by the clock's verdict
/// as the wheel last applied it (`fresh` per worker as the registry holds
/// it), compared with the incremental ones.
fn assert_counts_exact(reg: &Registry) {
    let mut expect = Counts::default();
    for cell in reg.chunks.iter().flatten() {
        if let Some(e) = &cell.entry {
            assert_eq!(e.healthy, e.fresh && !e.rec.reports_down());
            expect.add(e);
        }
    }
    let c = &reg.counts;
    assert_eq!(c.healthy, expect.healthy);
    assert_eq!(c.stale, expect.stale);
    assert_eq!(c.tier_count, expect.tier_count);
    assert_eq!(c.tier_load_micros, expect.tier_load_micros);
    let sorted = |m: &HashMap<String, u64, Hasher>| {
        let mut v: Vec<_> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&c.fresh_by_status), sorted(&expect.fresh_by_status));
    let mut a: Vec<_> = c.per_service.iter().collect();
    let mut b: Vec<_> = expect.per_service.iter().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // The index names exactly the registered workers' keys.
    let mut keyed = 0;
    for w in reg.workers() {
        for k in w.index_keys() {
            assert!(reg.service_workers(k).any(|x| x.worker_id == w.worker_id));
            keyed += 1;
        }
    }
    let indexed: usize = reg.by_service.values().map(BTreeSet::len).sum();
    assert_eq!(indexed, keyed);
    assert_eq!(reg.ids.len(), reg.len());
}

#[test]
fn reregister_replaces_index_entries_and_keeps_the_slot() {
    let mut reg = Registry::new(live());
    assert!(!reg.insert(record("w1", &["a", "b"])));
    let slot = reg.slot_of("w1");
    assert!(reg.insert(record("w1", &["c"])));
    assert_eq!(reg.slot_of("w1"), slot);
    assert_eq!(index(&reg), vec![("c".to_string(), vec!["w1".to_string()])]);
    assert_eq!(reg.len(), 1);
    reg.remove("w1");
    assert!(index(&reg).is_empty());
    assert!(reg.get("w1").is_none());
    assert_counts_exact(&reg);
}

#[test]
fn declared_services_are_indexed_too() {
    let mut reg = Registry::new(live());
    let mut r = record("w1", &["a"]);
    let declared = [
        serde_json::json!({"name": "x", "port": 1}),
        Value::from("y"),
    ];
    r.declared = crate::model::worker::declared_of(&declared);
    r.services = crate::model::worker::raw_list(&declared);
    reg.insert(r);
    let keys: Vec<String> = index(&reg).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["a", "x", "y"]);
}

#[test]
fn slots_are_reused_and_lookups_stay_right_across_chunks() {
    let mut reg = Registry::new(live());
    let n = CHUNK * 2 + 10;
    for i in 0..n {
        reg.insert(record(&format!("w{i}"), &["s"]));
    }
    for i in (0..n).step_by(3) {
        assert!(reg.remove(&format!("w{i}")).is_some());
    }
    for i in 0..n {
        assert_eq!(reg.get(&format!("w{i}")).is_some(), i % 3 != 0, "w{i}");
    }
    let before = reg.chunks.len();
    for i in 0..n / 3 {
        reg.insert(record(&format!("new{i}"), &["s"]));
    }
    assert_eq!(reg.chunks.len(), before, "freed slots are taken first");
    assert_eq!(reg.len(), n - n.div_ceil(3) + n / 3);
    assert_eq!(reg.workers().count(), reg.len());
    assert_eq!(reg.service_workers("s").count(), reg.len());
    assert_counts_exact(&reg);
}

#[test]
fn a_walk_resumed_from_a_slot_sees_every_worker_that_stayed_exactly_once() {
    let mut reg = Registry::new(live());
    for i in 0..50 {
        reg.insert(record(&format!("w{i}"), &[]));
    }
    let mut seen = Vec::new();
    let mut from = 0;
    let mut round = 0;
    loop {
        let page: Vec<(Slot, String)> = reg
            .workers_from(from)
            .take(7)
            .map(|(s, w)| (s, w.worker_id.clone()))
            .collect();
        let Some(&(last, _)) = page.last() else { break };
        seen.extend(page.into_iter().map(|(_, id)| id));
        from = last + 1;
        // Churn between pages: one leaves, one arrives (maybe in its slot).
        round += 1;
        reg.remove(&format!("w{}", 49 - round));
        reg.insert(record(&format!("late{round}"), &[]));
    }
    for i in 0..(49 - round) {
        let id = format!("w{i}");
        assert_eq!(seen.iter().filter(|s| **s == id).count(), 1, "{id}");
    }
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no worker twice");
}

#[test]
fn coverage_follows_every_mutation_and_staleness() {
    let cov = |reg: &Registry, ex: Option<&str>| {
        let (s, t) = reg.coverage(ex);
        let mut s: Vec<(String, u32)> = s.into_iter().collect();
        s.sort();
        (s, t[2])
    };
    let mut reg = Registry::new(live());
    reg.insert(record("a", &["x", "y"]));
    reg.insert(record("b", &["x"]));
    let both = vec![("x".to_string(), 2), ("y".to_string(), 1)];
    assert_eq!(cov(&reg, None), (both.clone(), 2));
    // A re-registering worker does not count itself.
    assert_eq!(cov(&reg, Some("a")), (vec![("x".to_string(), 1)], 1));
    // Re-registration with other services moves its counts.
    reg.insert(record("a", &["z"]));
    assert_eq!(
        cov(&reg, None),
        (vec![("x".to_string(), 1), ("z".to_string(), 1)], 2)
    );
    // A worker reporting itself offline drops out, and back in.
    let now = Instant::now();
    assert_eq!(
        reg.heartbeat(hb("b", "offline"), now, SystemTime::now()),
        Some(true)
    );
    assert_eq!(cov(&reg, None), (vec![("z".to_string(), 1)], 1));
    assert_eq!(
        reg.heartbeat(hb("b", "busy"), now, SystemTime::now()),
        Some(true)
    );
    assert_eq!(cov(&reg, None).1, 2);
    assert_eq!(
        reg.heartbeat(hb("b", "busy"), now, SystemTime::now()),
        Some(false),
        "nothing routing-relevant changed"
    );
    // Staleness is applied when the deadline comes due.
    let later = now + Duration::from_secs(3);
    let ex = reg.expire(later, usize::MAX);
    assert_eq!((ex.went_stale, ex.removed.len(), ex.more), (2, 0, false));
    assert_eq!(cov(&reg, None), (vec![], 0));
    assert_counts_exact(&reg);
    assert_eq!(
        reg.heartbeat(hb("a", "healthy"), later, SystemTime::now()),
        Some(true)
    );
    assert_eq!(cov(&reg, None), (vec![("z".to_string(), 1)], 1));
    reg.remove("a");
    assert_eq!(cov(&reg, None), (vec![], 0));
    assert_counts_exact(&reg);
}

#[test]
fn a_heartbeat_moves_the_deadline_and_only_expired_workers_are_swept() {
    let mut reg = Registry::new(live());
    let t0 = Instant::now();
    reg.insert(record("quiet", &["a"]));
    reg.insert(record("chatty", &["a"]));
    let queued = reg.queued_deadlines();
    // Heartbeats of a fresh worker add nothing to the wheel.
    for i in 1..=4 {
        let at = t0 + Duration::from_millis(1500 * i);
        assert!(reg
            .heartbeat(hb("chatty", "healthy"), at, SystemTime::now())
            .is_some());
        reg.expire(at, usize::MAX);
        assert_counts_exact(&reg);
    }
    assert!(reg.queued_deadlines() <= queued + 1);
    // quiet went stale after 2 s and was removed after 5 s; chatty (last
    // beat at 6 s) is fresh.
    let at = t0 + Duration::from_millis(6100);
    let a = reg.aggregates();
    assert_eq!((a.total, a.healthy, a.stale), (1, 1, 0));
    assert!(reg.get("quiet").is_none(), "removed by the expiries above");
    assert!(reg.get("chatty").is_some());
    let ex = reg.expire(at, usize::MAX);
    assert!(ex.removed.is_empty());
    // chatty goes silent: stale at 8 s, removed at 11 s, not before.
    let ex = reg.expire(t0 + Duration::from_millis(8200), usize::MAX);
    assert_eq!((ex.went_stale, ex.removed.len()), (1, 0));
    assert_eq!(reg.aggregates().stale, 1);
    assert_eq!(reg.aggregates().by_status.get("stale"), Some(&1));
    let ex = reg.expire(t0 + Duration::from_millis(10_900), usize::MAX);
    assert!(ex.removed.is_empty());
    let ex = reg.expire(t0 + Duration::from_millis(11_200), usize::MAX);
    assert_eq!(ex.removed, vec!["chatty".to_string()]);
    assert!(reg.is_empty());
    assert!(index(&reg).is_empty());
    assert_counts_exact(&reg);
}

#[test]
fn a_stale_worker_that_heartbeats_again_goes_stale_on_time_again() {
    let mut reg = Registry::new(live());
    let t0 = Instant::now();
    reg.insert(record("w", &["a"]));
    assert_eq!(
        reg.expire(t0 + Duration::from_millis(2200), 100).went_stale,
        1
    );
    // Back at 3 s: its old ticket is due at its removal (5 s), which is
    // void now; it must go stale again at 3 + 2 = 5 s and be removed at
    // 3 + 5 = 8 s.
    let back = t0 + Duration::from_secs(3);
    assert_eq!(
        reg.heartbeat(hb("w", "healthy"), back, SystemTime::now()),
        Some(true)
    );
    assert_eq!(reg.aggregates().healthy, 1);
    let ex = reg.expire(t0 + Duration::from_millis(5200), 100);
    assert_eq!((ex.went_stale, ex.removed.len()), (1, 0));
    let ex = reg.expire(t0 + Duration::from_millis(7900), 100);
    assert!(ex.removed.is_empty());
    let ex = reg.expire(t0 + Duration::from_millis(8200), 100);
    assert_eq!(ex.removed, vec!["w".to_string()]);
    assert_counts_exact(&reg);
}

#[test]
fn expire_is_bounded_by_its_budget() {
    let mut reg = Registry::new(live());
    let t0 = Instant::now();
    for i in 0..1000 {
        reg.insert(record(&format!("w{i}"), &["a"]));
    }
    let later = t0 + Duration::from_secs(60);
    let mut removed = 0;
    let mut calls = 0;
    loop {
        let ex = reg.expire(later, 256);
        assert!(ex.removed.len() <= 256);
        removed += ex.removed.len();
        calls += 1;
        if !ex.more {
            break;
        }
    }
    assert_eq!((removed, calls), (1000, 4));
    assert!(reg.is_empty());
    assert_eq!(reg.queued_deadlines(), 0);
    assert_counts_exact(&reg);
}

#[test]
fn counts_stay_exact_under_a_random_mix_of_operations() {
    // Deterministic pseudo-random mix of register / heartbeat (all
    // statuses) / unregister / expiry, checking the counts after each.
    let mut reg = Registry::new(live());
    let t0 = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let statuses = ["healthy", "busy", "offline", "Error", "loading"];
    let services = [&["a"][..], &["a", "b"], &["c"], &[]];
    for step in 0..4000u64 {
        let now = t0 + Duration::from_millis(step * 7);
        let id = format!("w{}", next() % 60);
        match next() % 10 {
            0..=2 => {
                let mut r = record(&id, services[(next() % 4) as usize]);
                r.last_seen = now;
                r.tier = (next() % 5) as u8;
                reg.insert(r);
            }
            3..=6 => {
                let mut h = hb(&id, statuses[(next() % 5) as usize]);
                h.current_load = Some((next() % 1000) as f64 / 7.0);
                reg.heartbeat(h, now, SystemTime::now());
            }
            7 => {
                reg.remove(&id);
            }
            _ => {
                reg.expire(now, (next() % 8) as usize);
            }
        }
        assert_counts_exact(&reg);
    }
}

#[test]
fn busy_is_healthy_but_offline_is_not() {
    let live = Liveness {
        heartbeat_timeout: Duration::from_secs(60),
        worker_timeout: Duration::from_secs(600),
    };
    let mut reg = Registry::new(live);
    reg.insert(record("w", &[]));
    let now = Instant::now();
    assert!(reg
        .heartbeat(hb("w", "busy"), now, SystemTime::now())
        .is_some());
    assert!(reg.get("w").unwrap().is_healthy(now, &live));
    reg.heartbeat(hb("w", "Offline"), now, SystemTime::now());
    assert!(!reg.get("w").unwrap().is_healthy(now, &live));
    assert!(reg
        .heartbeat(hb("nope", "healthy"), now, SystemTime::now())
        .is_none());
}
