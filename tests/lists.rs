//! Lists that scale, over real HTTP with 2 shards: cursor paging while
//! workers come and go, filters, bad parameters, the streamed whole list
//! against the paged walk, discovery and admin task paging.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use coordinator::model::placement::owner_of;
use serde_json::{json, Value};

/// Registers `ids` with `body(id)` over `threads` keep-alive connections.
fn register_all(addr: SocketAddr, ids: &[String], threads: usize, body: fn(&str) -> Value) {
    std::thread::scope(|s| {
        for part in ids.chunks(ids.len().div_ceil(threads).max(1)) {
            s.spawn(move || {
                let mut c = Conn::open(addr);
                for id in part {
                    let r = c.post("/api/worker/register", &body(id));
                    assert_eq!(r.status, 200, "register {id}: {}", r.text());
                }
            });
        }
    });
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn worker_ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|w| w["worker_id"].as_str().unwrap().to_string())
        .collect()
}

/// Worker lists go shard by shard (within a shard, in the order of the
/// registry's slots, which a client cannot see).
fn in_list_order(ids: &[String], shards: usize) -> bool {
    let owners: Vec<usize> = ids.iter().map(|id| owner_of(id, shards)).collect();
    owners.windows(2).all(|w| w[0] <= w[1])
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn paging_lists_every_worker_once_while_others_register_and_leave() {
    let s = start(2, |_| {});
    let stable = ids("stable", 240);
    register_all(s.addr, &stable, 4, cpu_worker);
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, addr) = (stop.clone(), s.addr);
        std::thread::spawn(move || {
            let mut c = Conn::open(addr);
            let mut i = 0u64;
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                // Registered and removed three at a time, so freed slots
                // are taken again while the walks go on.
                for prefix in ["a-churn", "stable-00100x", "z-churn"] {
                    let id = format!("{prefix}-{i}");
                    assert_eq!(c.post("/api/worker/register", &cpu_worker(&id)).status, 200);
                    if i >= 3 {
                        let old = format!("{prefix}-{}", i - 3);
                        let path = format!("/api/worker/unregister/{old}");
                        assert_eq!(c.request("DELETE", &path, &[], None).status, 200);
                    }
                }
                i += 1;
                rounds += 1;
            }
            rounds
        })
    };
    let mut c = Conn::open(s.addr);
    for path in [
        "/api/coordinator/workers?limit=7",
        "/api/admin/workers?limit=11",
    ] {
        for _ in 0..3 {
            let listed = worker_ids(&walk_pages(&mut c, path, "workers"));
            let mut seen = HashSet::new();
            for id in &listed {
                assert!(seen.insert(id), "{path}: {id} listed twice");
            }
            for id in &stable {
                assert!(seen.contains(id), "{path}: {id} missing");
            }
            assert!(in_list_order(&listed, s.shards), "{path}: out of order");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(rounds > 0, "no churn happened during the walks");
}

#[test]
fn every_filter_narrows_with_and_without_limit() {
    let s = start(2, |c| c.heartbeat_timeout = Duration::from_secs(3));
    let mut c = Conn::open(s.addr);
    register(s.addr, &gpu_worker("gpu-1"));
    register(s.addr, &with_service(cpu_worker("cpu-1"), "svc-f"));
    register(s.addr, &with_service(cpu_worker("cpu-2"), "svc-f"));
    register(s.addr, &storage_worker("sto-1"));
    register(s.addr, &cpu_worker("cpu-3"));
    let beat = |c: &mut Conn, id: &str, extra: Value| {
        let mut b = json!({"worker_id": id});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert_eq!(c.post("/api/worker/heartbeat", &b).status, 200);
    };
    let fresh = |c: &mut Conn| {
        beat(c, "gpu-1", json!({"loaded_models": ["llama3:8b"]}));
        beat(c, "cpu-1", json!({"status": "busy"}));
        beat(c, "cpu-2", json!({"status": "offline"}));
        beat(c, "sto-1", json!({"loaded_models": ["llama3:8b", "x"]}));
    };
    // cpu-3 goes stale: the others keep heartbeating until it has.
    let stale_seen = eventually(Duration::from_secs(20), || {
        fresh(&mut c);
        let r = c.get("/api/admin/workers?status=stale");
        worker_ids(r.json()["workers"].as_array().unwrap()) == ["cpu-3"]
    });
    assert!(stale_seen, "cpu-3 never listed as stale");
    let cases: [(&str, &str, &[&str]); 12] = [
        ("/api/coordinator/workers", "tier=1", &["gpu-1"]),
        ("/api/coordinator/workers", "tier=0", &[]),
        ("/api/coordinator/workers", "worker_type=CPU", &["cpu-1"]),
        (
            "/api/coordinator/workers",
            "model=llama3:8b",
            &["gpu-1", "sto-1"],
        ),
        ("/api/coordinator/workers", "status=busy", &["cpu-1"]),
        ("/api/coordinator/workers", "service=svc-f", &["cpu-1"]),
        (
            "/api/coordinator/workers",
            "service=svc-f&status=offline",
            &[],
        ),
        ("/api/admin/workers", "service=svc-f", &["cpu-1", "cpu-2"]),
        ("/api/admin/workers", "status=offline", &["cpu-2"]),
        (
            "/api/admin/workers",
            "status=healthy",
            &["cpu-1", "gpu-1", "sto-1"],
        ),
        (
            "/api/admin/workers",
            "worker_type=cpu&tier=2",
            &["cpu-1", "cpu-2", "cpu-3"],
        ),
        (
            "/api/admin/workers",
            "model=x&worker_type=storage",
            &["sto-1"],
        ),
    ];
    for (path, filter, want) in cases {
        // Everyone but cpu-3 stays fresh for this case's two lists.
        fresh(&mut c);
        let want: BTreeSet<String> = set(want);
        let whole = c.get(&format!("{path}?{filter}"));
        assert_eq!(whole.status, 200, "{path}?{filter}: {}", whole.text());
        let got: BTreeSet<String> = worker_ids(whole.json()["workers"].as_array().unwrap())
            .into_iter()
            .collect();
        assert_eq!(got, want, "{path}?{filter}");
        let paged = walk_pages(&mut c, &format!("{path}?{filter}&limit=1"), "workers");
        let got: BTreeSet<String> = worker_ids(&paged).into_iter().collect();
        assert_eq!(got, want, "{path}?{filter}&limit=1");
    }
    // Admin counts describe the workers in the reply.
    let a = c.get("/api/admin/workers?service=svc-f").json();
    assert_eq!(
        (a["total"].as_u64(), a["healthy"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn bad_parameters_are_400_and_limits_are_clamped() {
    let s = start(2, |_| {});
    let all = ids("w", 1003);
    register_all(s.addr, &all, 4, cpu_worker);
    let mut c = Conn::open(s.addr);
    for bad in [
        "/api/coordinator/workers?after=not-a-cursor",
        "/api/coordinator/workers?after=%zz",
        "/api/admin/workers?limit=ten",
        "/api/admin/workers?limit=1.5",
        "/api/coordinator/workers?tier=5",
        "/api/coordinator/workers?tier=x",
        "/api/admin/workers?worker_type=tpu",
        "/api/admin/workers?status=",
        "/api/services/discover/llm?model=",
        "/api/admin/tasks?state=zombie",
        "/api/admin/tasks?after=zz",
    ] {
        let r = c.get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(!r.detail().is_empty(), "{bad}");
    }
    assert!(c
        .get("/api/coordinator/workers?tier=9")
        .detail()
        .starts_with("tier: "));
    // limit=0 is one worker; 10^9 is the maximum, 1000.
    let one = c.get("/api/coordinator/workers?limit=0").json();
    assert_eq!(one["workers"].as_array().unwrap().len(), 1);
    assert_eq!(one["count"], 1);
    assert!(one["next"].is_string());
    let big = c.get("/api/coordinator/workers?limit=1000000000").json();
    assert_eq!(big["workers"].as_array().unwrap().len(), 1000);
    let next = big["next"]
        .as_str()
        .expect("more than 1000 workers")
        .to_string();
    let rest = c
        .get(&format!(
            "/api/coordinator/workers?limit=1000000000&after={next}"
        ))
        .json();
    assert_eq!(rest["workers"].as_array().unwrap().len(), 3);
    assert!(rest["next"].is_null());
    // A cursor from a coordinator with another shard count is refused.
    let other = start(3, |_| {});
    register(other.addr, &cpu_worker("x-1"));
    register(other.addr, &cpu_worker("x-2"));
    let foreign = get(other.addr, "/api/admin/workers?limit=1").json()["next"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c.get(&format!("/api/admin/workers?limit=5&after={foreign}"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.detail().contains("shard count"), "{}", r.detail());
}

#[test]
fn small_whole_list_keeps_the_compat_shape_and_equals_the_paged_walk() {
    let s = start(2, |_| {});
    register_all(s.addr, &ids("small", 50), 2, gpu_worker);
    let mut c = Conn::open(s.addr);
    for (path, compat) in [
        (
            "/api/coordinator/workers",
            set(&["workers", "count", "timestamp"]),
        ),
        ("/api/admin/workers", set(&["workers", "total", "healthy"])),
    ] {
        let r = c.get(path);
        if path.ends_with("coordinator/workers") {
            // A small healthy list is each shard's cached part, in one
            // buffer as before paging existed. (Admin records are encoded
            // fresh in time-bounded pieces, so whether those fit in one
            // piece depends on the machine's speed.)
            assert!(r.header("content-length").is_some(), "{path}: one buffer");
        }
        let whole = r.json();
        assert_eq!(keys(&whole), compat, "{path}");
        let listed = whole["workers"].as_array().unwrap();
        assert_eq!(listed.len(), 50);
        let paged = walk_pages(&mut c, &format!("{path}?limit=9"), "workers");
        if path.ends_with("coordinator/workers") {
            assert_eq!(&paged, listed, "{path}");
        } else {
            assert_eq!(worker_ids(&paged), worker_ids(listed), "{path}");
        }
    }
    let paged = c.get("/api/coordinator/workers?limit=9").json();
    assert_eq!(
        keys(&paged),
        set(&["workers", "count", "timestamp", "next"])
    );
}

fn big_worker(id: &str) -> Value {
    let mut b = cpu_worker(id);
    // About 1 KB per listed record, so each shard's part is past the size
    // a shard builds whole and the list is streamed.
    b["capabilities"]["notes"] = Value::from("n".repeat(300));
    b
}

#[test]
fn twenty_thousand_workers_stream_chunked_and_equal_the_paged_walk() {
    let s = start(2, |_| {});
    let all = ids("big", 20_000);
    register_all(s.addr, &all, 4, big_worker);
    let mut c = Conn::open(s.addr);
    let r = c.get("/api/coordinator/workers");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.header("content-length").is_none());
    let whole = r.json();
    assert_eq!(keys(&whole), set(&["workers", "count", "timestamp"]));
    let listed = whole["workers"].as_array().unwrap();
    assert_eq!(
        (listed.len(), whole["count"].as_u64()),
        (20_000, Some(20_000))
    );
    let paged = walk_pages(&mut c, "/api/coordinator/workers?limit=1000", "workers");
    assert_eq!(&paged, listed);
    let got: HashSet<String> = worker_ids(listed).into_iter().collect();
    assert_eq!(got, all.iter().cloned().collect::<HashSet<_>>());
    // The admin list streams too, with its own compat keys and counts.
    let r = c.get("/api/admin/workers?worker_type=cpu");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let admin = r.json();
    assert_eq!(keys(&admin), set(&["workers", "total", "healthy"]));
    assert_eq!(
        (admin["total"].as_u64(), admin["healthy"].as_u64()),
        (Some(20_000), Some(20_000))
    );
    assert_eq!(
        worker_ids(admin["workers"].as_array().unwrap()),
        worker_ids(listed)
    );
}

#[test]
fn discovery_pages_and_streams_with_its_recommendation() {
    let s = start(2, |_| {});
    let svc = ids("d", 40);
    register_all(s.addr, &svc, 2, |id| with_service(cpu_worker(id), "svc-d"));
    register(s.addr, &cpu_worker("not-in-svc"));
    let mut c = Conn::open(s.addr);
    // Loads 0.40 .. 0.01; d-00039 is the least loaded.
    let mut loads = HashMap::new();
    for (i, id) in svc.iter().enumerate() {
        let load = (40 - i) as f64 / 100.0;
        loads.insert(id.clone(), load);
        let hb = json!({"worker_id": id, "current_load": load});
        assert_eq!(c.post("/api/worker/heartbeat", &hb).status, 200);
    }
    let whole = c.get("/api/services/discover/svc-d").json();
    assert_eq!(
        keys(&whole),
        set(&["service", "workers", "count", "recommended"])
    );
    assert_eq!(whole["count"], 40);
    assert_eq!(whole["recommended"]["worker_id"], "d-00039");
    let listed = whole["workers"].as_array().unwrap();
    let mut pages = 0;
    let mut next: Option<String> = None;
    let mut walked = Vec::new();
    loop {
        let url = match &next {
            Some(n) => format!("/api/services/discover/svc-d?limit=6&after={n}"),
            None => "/api/services/discover/svc-d?limit=6".to_string(),
        };
        let page = c.get(&url).json();
        let items = page["workers"].as_array().unwrap().clone();
        // Each page recommends its own least-loaded worker.
        let best = items
            .iter()
            .min_by(|a, b| {
                loads[a["worker_id"].as_str().unwrap()]
                    .total_cmp(&loads[b["worker_id"].as_str().unwrap()])
            })
            .unwrap();
        assert_eq!(page["recommended"], *best);
        walked.extend(items);
        pages += 1;
        match page["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 7);
    assert_eq!(&walked, listed);
    // A filter that leaves nobody: 503, whole and paged.
    for url in [
        "/api/services/discover/svc-d?tier=1",
        "/api/services/discover/svc-d?tier=1&limit=5",
        "/api/services/discover/svc-none",
    ] {
        let r = c.get(url);
        assert_eq!(r.status, 503, "{url}: {}", r.text());
        assert!(r.detail().contains("No healthy workers"), "{url}");
    }
}

#[test]
fn admin_tasks_page_in_task_id_order_with_filters() {
    let s = start(2, |_| {});
    let workers = [id_on_shard("tw", 0, 2), id_on_shard("tw", 1, 2)];
    for w in &workers {
        register(s.addr, &cpu_worker(w));
    }
    let mut c = Conn::open(s.addr);
    let mut submitted = HashMap::new();
    for i in 0..45 {
        let w = &workers[i % 2];
        let ty = if i % 3 == 0 { "embed" } else { "reload" };
        let r = c.post(
            "/api/tasks",
            &json!({"type": ty, "payload": {"i": i}, "worker_id": w}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["task_id"].as_str().unwrap().to_string();
        submitted.insert(id, (w.clone(), ty));
    }
    // Compat: no limit, newest 100 first, no `next`.
    let compat = c.get("/api/admin/tasks").json();
    assert_eq!(keys(&compat), set(&["tasks", "count", "counts", "queues"]));
    assert_eq!(compat["count"], 45);
    let page = c.get("/api/admin/tasks?limit=4").json();
    assert_eq!(
        keys(&page),
        set(&["tasks", "count", "counts", "queues", "next"])
    );
    assert_eq!(page["count"], 45);
    let walked = walk_pages(&mut c, "/api/admin/tasks?limit=4", "tasks");
    let ids: Vec<String> = walked
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 45);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        45,
        "a task listed twice"
    );
    assert!(ids.iter().all(|id| submitted.contains_key(id)));
    // Shard by shard (a task lives on its worker's shard), ids ascending.
    let order: Vec<(usize, &String)> = ids
        .iter()
        .map(|id| (owner_of(&submitted[id].0, 2), id))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    // Filters, paged and not.
    let embed = walk_pages(&mut c, "/api/admin/tasks?type=embed&limit=2", "tasks");
    assert_eq!(embed.len(), 15);
    assert!(embed.iter().all(|t| t["type"] == "embed"));
    let w1 = format!(
        "/api/admin/tasks?worker={}&state=queued&limit=1000000",
        workers[1]
    );
    let mine = c.get(&w1).json();
    assert_eq!(mine["tasks"].as_array().unwrap().len(), 22);
    assert!(mine["next"].is_null());
    assert_eq!(mine["count"], 22);
    let none = c.get("/api/admin/tasks?state=completed&limit=10").json();
    assert_eq!(
        (
            none["tasks"].as_array().unwrap().len(),
            none["next"].is_null()
        ),
        (0, true)
    );
}
