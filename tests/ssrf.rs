//! The proxy is neither an open proxy nor a port scanner: addresses it
//! refuses to connect to (link-local, unspecified, its own, outside
//! `--worker-networks`, also behind a hostname), loops (`Via`, 508), paths
//! climbing out of the worker's prefix, our credentials reaching workers,
//! addresses in non-admin error details, and labels growing with client
//! input. Real servers with 2 shards, simulated workers on loopback.

mod common;
mod sim;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sim::{worker_of, Sim};

/// A registration of worker `id` serving `service` at `url`.
fn worker_at(id: &str, url: &str, service: &str) -> Value {
    json!({
        "worker_id": id,
        "tunnel_url": url,
        "capabilities": {"hostname": id, "has_storage": true, "worker_type": "storage"},
        "services": [{"name": service, "port": 8000}],
    })
}

fn metrics(c: &mut Conn) -> String {
    c.get("/metrics").text()
}

/// Attempts of `worker` with `outcome`, summed over shards.
fn attempts(m: &str, worker: &str, outcome: &str) -> f64 {
    sum_samples(
        m,
        &format!(
            "coordinator_upstream_attempts_total{{worker=\"{worker}\",outcome=\"{outcome}\"}}"
        ),
    )
}

fn accepted(m: &str) -> f64 {
    sum_samples(m, "coordinator_connections_accepted_total")
}

fn admin_get(c: &mut Conn, path: &str) -> Resp {
    get_with_key(c, path, ADMIN_KEY)
}

fn client_get(c: &mut Conn, path: &str) -> Resp {
    get_with_key(c, path, CLIENT_KEY)
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn link_local_and_unspecified_targets_are_refused_by_policy() {
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        with_keys(c);
    });
    // 0.0.0.0 would reach a local listener on Linux: a live simulator
    // behind it proves nothing was connected.
    let sim = Sim::start("unspec");
    for (id, url, svc) in [
        ("meta", "http://169.254.169.254".to_string(), "svc-meta"),
        (
            "meta6",
            "http://[::ffff:169.254.169.254]:80".into(),
            "svc-meta6",
        ),
        ("ll6", "http://[fe80::1]:8000".into(), "svc-ll6"),
        (
            "unspec",
            format!("http://0.0.0.0:{}", sim.addr.port()),
            "svc-unspec",
        ),
        (
            "unspec6",
            format!("http://[::]:{}", sim.addr.port()),
            "svc-unspec6",
        ),
    ] {
        register_admin(s.addr, &worker_at(id, &url, svc));
        let mut c = Conn::open(s.addr);
        let r = client_get(&mut c, &format!("/service/{svc}/latest/meta-data"));
        assert_eq!(r.status, 502, "{id}: {}", r.text());
        let d = r.detail();
        assert!(d.contains(id), "{d}");
        assert!(!d.contains("169.254") && !d.contains("policy"), "{d}");
        let r = admin_get(&mut c, &format!("/service/{svc}/x"));
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.detail().contains("refused by policy"), "{}", r.detail());
        assert!(attempts(&metrics(&mut c), id, "refused") >= 2.0);
    }
    assert_eq!(sim.hits(), 0, "a refused address was connected to");
}

#[test]
fn the_coordinators_own_port_is_refused_directly_and_behind_localhost() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let port = s.addr.port();
    register(
        s.addr,
        &worker_at("self-ip", &format!("http://127.0.0.1:{port}"), "svc-self"),
    );
    register(
        s.addr,
        &worker_at("self-name", &format!("http://localhost:{port}"), "svc-name"),
    );
    register(
        s.addr,
        &worker_at(
            "self-mapped",
            &format!("http://[::ffff:127.0.0.1]:{port}"),
            "svc-mapped",
        ),
    );
    let mut c = Conn::open(s.addr);
    let before = accepted(&metrics(&mut c));
    for svc in ["svc-self", "svc-name", "svc-mapped"] {
        for _ in 0..5 {
            let r = c.get(&format!("/service/{svc}/x"));
            // localhost may also resolve to ::1, where nothing listens.
            assert!(matches!(r.status, 502 | 508), "{svc}: {}", r.text());
        }
    }
    let m = metrics(&mut c);
    // All on one client connection: the coordinator accepted none from itself.
    assert_eq!(accepted(&m) - before, 0.0, "{m}");
    assert!(attempts(&m, "self-ip", "refused") >= 5.0, "{m}");
    assert!(attempts(&m, "self-mapped", "refused") >= 5.0, "{m}");
}

#[test]
fn worker_networks_limit_where_the_proxy_connects() {
    let sim = Sim::start("in-lo");
    let only10 = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        c.worker_networks = coordinator::proxy::guard::parse_networks("10.0.0.0/8").unwrap();
    });
    register(only10.addr, &sim.registration(&["svc-lo"]));
    // A hostname cannot resolve around the rule either.
    let by_name = format!("http://localhost:{}", sim.addr.port());
    register(only10.addr, &worker_at("by-name", &by_name, "svc-lo-name"));
    let mut c = Conn::open(only10.addr);
    for svc in ["svc-lo", "svc-lo-name"] {
        let r = c.get(&format!("/service/{svc}/x"));
        assert_eq!(r.status, 502, "{}", r.text());
    }
    let m = metrics(&mut c);
    assert!(attempts(&m, "in-lo", "refused") >= 1.0, "{m}");
    assert!(attempts(&m, "by-name", "refused") >= 1.0, "{m}");
    assert_eq!(sim.hits(), 0);

    let lo = start(2, |c| {
        c.worker_networks = coordinator::proxy::guard::parse_networks("127.0.0.0/8").unwrap();
    });
    register(lo.addr, &sim.registration(&["svc-lo"]));
    assert_eq!(worker_of(&get(lo.addr, "/service/svc-lo/x")), sim.id);
}

#[test]
fn a_loop_between_coordinators_is_508_without_a_connection_storm() {
    let a = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let b = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    // Each one's worker for `svc-loop` is the other's proxy route.
    register(
        a.addr,
        &worker_at(
            "to-b",
            &format!("http://{}/service/svc-loop", b.addr),
            "svc-loop",
        ),
    );
    register(
        b.addr,
        &worker_at(
            "to-a",
            &format!("http://{}/service/svc-loop", a.addr),
            "svc-loop",
        ),
    );
    let (mut ca, mut cb) = (Conn::open(a.addr), Conn::open(b.addr));
    let before = (accepted(&metrics(&mut ca)), accepted(&metrics(&mut cb)));
    let r = ca.get("/service/svc-loop/x");
    assert_eq!(r.status, 508, "{}", r.text());
    assert!(r.detail().contains("Loop detected"), "{}", r.detail());
    let after = (accepted(&metrics(&mut ca)), accepted(&metrics(&mut cb)));
    assert!(
        after.0 - before.0 < 10.0 && after.1 - before.1 < 10.0,
        "{before:?} -> {after:?}"
    );

    // The token a worker sees, sent back to us, is refused at once.
    let sim = Sim::start("via");
    register(a.addr, &sim.registration(&["svc-via"]));
    let r = ca.get("/service/svc-via/x");
    let via = r.json()["headers"]["via"].as_str().unwrap().to_string();
    assert!(via.starts_with("1.1 coordinator-"), "{via}");
    let hits = sim.hits();
    let r = ca.request(
        "GET",
        "/service/svc-via/x",
        &[("Via", &format!("1.0 edge, {via}"))],
        None,
    );
    assert_eq!(r.status, 508, "{}", r.text());
    assert_eq!(sim.hits(), hits);
    // Another coordinator's token is not ours.
    let r = ca.request(
        "GET",
        "/service/svc-via/x",
        &[("Via", "1.1 coordinator-0")],
        None,
    );
    assert_eq!(worker_of(&r), sim.id);
}

#[test]
fn paths_stay_under_the_worker_prefix() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let sim = Sim::start("pfx");
    let url = format!("{}/base", sim.url());
    register(s.addr, &sim.registration_at(&url, &["svc-pfx"]));
    let mut c = Conn::open(s.addr);
    for (path, want) in [
        ("/service/svc-pfx/a/../b", "/base/b"),
        ("/service/svc-pfx/a/./b/", "/base/a/b/"),
        ("/service/svc-pfx/a/%2e%2E/b", "/base/b"),
        ("/service/svc-pfx/a/b/..", "/base/a/"),
        ("/service/svc-pfx/", "/base/"),
    ] {
        let r = c.get(path);
        assert_eq!(worker_of(&r), sim.id);
        assert_eq!(r.json()["path"], want, "{path}");
    }
    // The query passes unchanged, encoded dots and slashes included.
    let r = c.get("/service/svc-pfx/x/../y?next=..%2F..%2Fsecret&a=%2e%2e");
    assert_eq!(r.json()["path"], "/base/y");
    assert_eq!(r.json()["query"], "next=..%2F..%2Fsecret&a=%2e%2e");
    let hits = sim.hits();
    for path in [
        "/service/svc-pfx/../../etc/passwd",
        "/service/svc-pfx/..",
        "/service/svc-pfx/a/../../x",
        "/service/svc-pfx/%2e%2e/x",
        "/service/svc-pfx/.%2E/x",
        "/service/svc-pfx/a%2f..%2f..%2fx",
        "/service/svc-pfx/a%5C..%5Cx",
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.detail().starts_with("Path "), "{}", r.detail());
    }
    assert_eq!(sim.hits(), hits, "a refused path reached the worker");
}

#[test]
fn our_credentials_and_cookies_do_not_reach_workers() {
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        with_keys(c);
    });
    let sim = Sim::start("creds");
    register_admin(s.addr, &sim.registration(&["svc-creds"]));
    let bearer = format!("Bearer {ADMIN_KEY}");
    let mut c = Conn::open(s.addr);
    let r = c.request(
        "GET",
        "/service/svc-creds/x",
        &[
            ("X-API-Key", ADMIN_KEY),
            ("Authorization", &bearer),
            ("Cookie", "session=ours"),
            ("X-Custom", "yes"),
        ],
        None,
    );
    let h = &r.json()["headers"];
    assert_eq!(worker_of(&r), sim.id);
    for gone in ["x-api-key", "authorization", "cookie"] {
        assert!(h.get(gone).is_none(), "{gone} reached the worker: {h}");
    }
    assert_eq!(h["x-custom"], "yes");
    // The client's own credential for the worker passes.
    let r = c.request(
        "GET",
        "/service/svc-creds/x",
        &[
            ("Authorization", "Bearer for-the-worker"),
            ("X-API-Key", CLIENT_KEY),
        ],
        None,
    );
    let h = &r.json()["headers"];
    assert_eq!(h["authorization"], "Bearer for-the-worker");
    assert!(h.get("x-api-key").is_none(), "{h}");
}

#[test]
fn a_502_names_the_worker_and_only_an_admin_sees_the_address() {
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        c.route_cooldown = Duration::from_millis(1);
        with_keys(c);
    });
    let port = closed_port();
    register_admin(
        s.addr,
        &worker_at("gone-1", &format!("http://127.0.0.1:{port}"), "svc-gone"),
    );
    let mut c = Conn::open(s.addr);
    // A client (and, with no auth configured, anyone) sees the worker id.
    for key in [CLIENT_KEY, "bearer"] {
        let h = if key == "bearer" {
            vec![("Authorization", "Bearer cl1ent-k3y")]
        } else {
            vec![("X-API-Key", key)]
        };
        let r = c.request("GET", "/service/svc-gone/x", &h, None);
        assert_eq!(r.status, 502, "{}", r.text());
        let d = r.detail();
        assert_eq!(
            d,
            "Worker request failed: worker gone-1 could not be reached"
        );
        assert!(
            !d.contains(&port.to_string()) && !d.contains("127.0.0.1"),
            "{d}"
        );
    }
    let r = admin_get(&mut c, "/service/svc-gone/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.detail().contains(&format!("127.0.0.1:{port}")),
        "{}",
        r.detail()
    );
}

#[test]
fn random_unknown_services_are_404_and_leave_metrics_flat() {
    let s = start(2, |_| {});
    let mut conns: Vec<Conn> = (0..2).map(|i| conn_on_shard(s.addr, i)).collect();
    // Warm up: the first 404s create the route/status series once (per shard).
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..5 {
            assert_eq!(c.get(&format!("/service/warm-{i}-{j}/x")).status, 404);
        }
    }
    // The first scrape creates its own route's series: measure the second.
    metrics(&mut conns[0]);
    let before = metrics(&mut conns[0]).len();
    for i in 0..5000 {
        let c = &mut conns[i % 2];
        let name = format!("rnd-{:x}", fastrand::u64(..));
        let r = c.get(&format!("/service/{name}/x"));
        assert_eq!(r.status, 404, "{}", r.text());
        if i == 0 {
            assert_eq!(r.detail(), format!("Service '{name}' not found"));
        }
    }
    let m = metrics(&mut conns[0]);
    assert!(
        m.len().abs_diff(before) < 400,
        "/metrics grew from {before} to {} bytes",
        m.len()
    );
    assert!(!m.contains("rnd-"), "an unknown name became a label");
}

/// Registers `n` workers of `svc` at a closed port, gets each attempted
/// (connect errors), and returns their ids.
fn attempted_workers(c: &mut Conn, prefix: &str, n: usize, svc: &str) -> Vec<String> {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        let b = serde_json::to_vec(&worker_at(id, &url, svc)).unwrap();
        assert_eq!(
            c.request("POST", "/api/worker/register", &[], Some(&b))
                .status,
            200
        );
    }
    for _ in 0..(n / 2).max(1) {
        assert_eq!(c.get(&format!("/service/{svc}/x")).status, 502);
    }
    ids
}

#[test]
fn removed_workers_leave_no_attempt_series() {
    let s = start(2, |c| c.route_cooldown = Duration::from_secs(60));
    let mut c = Conn::open(s.addr);
    let ids = attempted_workers(&mut c, "churn", 1000, "svc-churn");
    let m = metrics(&mut c);
    let series = m.matches("worker=\"churn-").count();
    assert!(series >= 100, "only {series} attempt series");
    for id in &ids {
        let r = c.request("DELETE", &format!("/api/worker/unregister/{id}"), &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = metrics(&mut c);
    assert!(
        !m.contains("worker=\"churn-"),
        "series of removed workers remain"
    );
}

#[test]
fn swept_workers_leave_no_attempt_series() {
    let s = start(2, |c| {
        c.heartbeat_timeout = Duration::from_secs(2);
        c.worker_timeout = Duration::from_secs(2);
        c.route_cooldown = Duration::from_secs(60);
    });
    let mut c = Conn::open(s.addr);
    attempted_workers(&mut c, "swept", 20, "svc-swept");
    assert!(metrics(&mut c).contains("worker=\"swept-"));
    assert!(
        eventually(Duration::from_secs(15), || !metrics(&mut c)
            .contains("worker=\"swept-")),
        "series of swept workers remain"
    );
}
