//! Draining a worker, over real HTTP with 2 shards: no new routed
//! requests, no new task leases, a request in flight finishes, every view
//! shows it, it survives re-registration, and undrain brings it back.
//! Also through GraphQL's `drainWorker` / `undrainWorker`.

mod common;
mod sim;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sim::{worker_of, Mode, Sim};

fn drain(addr: std::net::SocketAddr, id: &str, action: &str) -> Value {
    let r = call(
        addr,
        "POST",
        &format!("/api/admin/workers/{id}/{action}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn a_drained_worker_gets_no_new_requests_or_leases_and_finishes_what_it_has() {
    let s = start(2, |_| {});
    let a = Sim::start("dr-a");
    let b = Sim::start("dr-b");
    for w in [&a, &b] {
        register(s.addr, &w.registration(&["svc-dr"]));
    }
    let mut c = Conn::open(s.addr);
    // Both serve before the drain.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(worker_of(&c.get("/service/svc-dr/work")));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A slow request in flight on dr-a when it is drained still finishes.
    a.set(Mode::Stall(Duration::from_millis(800)));
    b.set(Mode::Stall(Duration::from_millis(800)));
    let addr = s.addr;
    let inflight: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get(addr, "/service/svc-dr/work")))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let rec = drain(s.addr, "dr-a", "drain");
    assert_eq!(rec["drained"], true);
    assert_eq!(rec["status"], "drained");
    assert_eq!(rec["is_healthy"], false);
    for t in inflight {
        assert_eq!(t.join().unwrap().status, 200);
    }
    a.set(Mode::Ok);
    b.set(Mode::Ok);

    // New requests go to dr-b only; a task for dr-a is not leased.
    let hits = a.hits();
    for _ in 0..40 {
        assert_eq!(worker_of(&c.get("/service/svc-dr/work")), "dr-b");
    }
    assert_eq!(a.hits(), hits);
    let t = post(
        s.addr,
        "/api/tasks",
        &json!({"type": "x", "worker_id": "dr-a"}),
    );
    assert_eq!(t.status, 201);
    let pulled = get(s.addr, "/api/worker/tasks?worker_id=dr-a");
    assert_eq!(pulled.json()["tasks"], json!([]));

    // Every view shows it drained; the client's lists leave it out.
    let admin = get(s.addr, "/api/admin/workers").json();
    let row = admin["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == "dr-a")
        .unwrap()
        .clone();
    assert_eq!(
        (row["drained"].clone(), row["status"].clone()),
        (json!(true), json!("drained"))
    );
    let healthy = get(s.addr, "/api/coordinator/workers").json();
    assert!(healthy["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["worker_id"] != "dr-a"));
    let d = get(s.addr, "/api/services/discover/svc-dr").json();
    assert_eq!(d["count"], 1);
    assert_eq!(
        get(s.addr, "/api/admin/health").json()["workers_by_status"]["drained"],
        1
    );
    let only = get(s.addr, "/api/admin/workers?status=drained").json();
    assert_eq!(only["total"], 1);

    // Heartbeats and a re-registration keep the drain.
    assert_eq!(heartbeat(s.addr, &a.heartbeat(&[], 0)).status, 200);
    register(s.addr, &a.registration(&["svc-dr"]));
    assert_eq!(
        get(s.addr, "/api/services/discover/svc-dr").json()["count"],
        1
    );

    // Undrain: requests and the waiting task reach it again.
    let rec = drain(s.addr, "dr-a", "undrain");
    assert_eq!(
        (rec.get("drained"), &rec["status"]),
        (None, &json!("healthy"))
    );
    let pulled = get(s.addr, "/api/worker/tasks?worker_id=dr-a").json();
    assert_eq!(pulled["tasks"].as_array().unwrap().len(), 1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(worker_of(&c.get("/service/svc-dr/work")));
    }
    assert_eq!(seen.len(), 2);

    // Unknown worker, bad id, wrong method.
    assert_eq!(
        call(s.addr, "POST", "/api/admin/workers/nope/drain", None).status,
        404
    );
    assert_eq!(
        call(s.addr, "POST", "/api/admin/workers/%01/drain", None).status,
        422
    );
    assert_eq!(get(s.addr, "/api/admin/workers/dr-a/drain").status, 405);
}

#[test]
fn drain_needs_admin_and_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("drain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = dir.join("c.db");
    let keyed = |c: &mut coordinator::Config| {
        with_keys(c);
        c.database_path = Some(db.clone());
    };
    let s = start(2, keyed);
    register_admin(s.addr, &gpu_worker("dr-k"));
    let mut c = Conn::open(s.addr);
    let path = "/api/admin/workers/dr-k/drain";
    assert_eq!(c.request("POST", path, &[], None).status, 401);
    assert_eq!(
        c.request("POST", path, &[("X-API-Key", CLIENT_KEY)], None)
            .status,
        403
    );
    assert_eq!(
        c.request("POST", path, &[("X-API-Key", ADMIN_KEY)], None)
            .status,
        200
    );
    drop(c);
    s.server.stop();

    let s = start(2, keyed);
    let r = get_with_key(&mut Conn::open(s.addr), "/api/admin/workers", ADMIN_KEY).json();
    assert_eq!(r["workers"][0]["drained"], true, "{r}");
    s.server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn graphql_drains_and_undrains() {
    let s = start(2, |_| {});
    register(s.addr, &gpu_worker("dr/g 1"));
    let q =
        "mutation($id: String!) { d: drainWorker(id: $id) { workerId drained status isHealthy } }";
    let body = serde_json::to_vec(&json!({"query": q, "variables": {"id": "dr/g 1"}})).unwrap();
    let r = Conn::open(s.addr).request("POST", "/graphql", &[], Some(&body));
    assert_eq!(
        r.json()["data"]["d"],
        json!({"workerId": "dr/g 1", "drained": true, "status": "drained", "isHealthy": false})
    );
    let q = "mutation { u: undrainWorker(id: \"dr/g 1\") { drained } n: drainWorker(id: \"ghost\") { drained } }";
    let body = serde_json::to_vec(&json!({"query": q})).unwrap();
    let v = Conn::open(s.addr)
        .request("POST", "/graphql", &[], Some(&body))
        .json();
    assert_eq!(v["data"]["u"], json!({"drained": false}), "{v}");
    assert_eq!(v["errors"][0]["extensions"]["status"], 404, "{v}");
    let v = get(s.addr, "/api/admin/workers").json();
    assert!(v["workers"][0].get("drained").is_none(), "{v}");
}
