//! Limits that hold against hostile clients: client-supplied numbers are
//! clamped, every shard keeps answering whatever the query string says,
//! the head limit is exact, slow heads are cut off at the header timeout
//! (from the first byte, or from the accept), and every error a client
//! sees, hyper's own included, is `{"detail"}` JSON.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Every shard answers /health on a connection of its own.
fn every_shard_answers(s: &TestServer) {
    for shard in 0..s.shards {
        let mut c = conn_on_shard(s.addr, shard);
        let r = c.get("/health");
        assert_eq!(r.status, 200, "shard {shard}: {}", r.text());
        assert_eq!(r.shard(), shard);
    }
}

#[test]
fn a_huge_wait_is_clamped_and_no_shard_dies() {
    let s = start(2, |c| c.task_max_wait = Duration::from_millis(300));
    // Unknown worker: refused before any waiting, on every shard.
    for shard in 0..s.shards {
        let mut c = conn_on_shard(s.addr, shard);
        let r = c.get("/api/worker/tasks?worker_id=nobody&wait=1e20");
        assert_eq!(r.status, 404, "{}", r.text());
    }
    // A real worker asking for 1e20 s is served up to --task-max-wait.
    register(s.addr, &cpu_worker("w-wait"));
    for wait in ["1e20", "1e308", "18446744073709551616", "9e18"] {
        let r = get(
            s.addr,
            &format!("/api/worker/tasks?worker_id=w-wait&wait={wait}"),
        );
        assert_eq!(r.status, 200, "wait={wait}: {}", r.text());
        assert_eq!(r.json()["tasks"], json!([]));
    }
    for bad in ["-1", "NaN", "inf", "1e400", "abc"] {
        let r = get(
            s.addr,
            &format!("/api/worker/tasks?worker_id=w-wait&wait={bad}"),
        );
        assert_eq!(r.status, 422, "wait={bad}: {}", r.text());
        assert!(r.detail().contains("wait"), "{}", r.text());
    }
    every_shard_answers(&s);
}

/// (method, path) of every route, with a body where the route wants one.
fn routes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("POST", "/api/worker/register"),
        ("POST", "/api/worker/heartbeat"),
        ("DELETE", "/api/worker/unregister/fz-1"),
        ("GET", "/api/worker/tasks"),
        ("POST", "/api/worker/task-complete"),
        ("GET", "/api/coordinator/workers"),
        ("POST", "/api/coordinator/broadcast-job"),
        ("GET", "/api/admin/workers"),
        ("GET", "/api/admin/services"),
        ("GET", "/api/admin/stats"),
        ("GET", "/api/admin/health"),
        ("GET", "/api/admin/gaps"),
        ("GET", "/api/services/discover/llm"),
        ("GET", "/api/services/list"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", "/api/tasks"),
        ("GET", "/api/tasks/t-0000000000000001-0000000000000002"),
        ("GET", "/api/admin/tasks"),
        ("POST", "/api/inference/llm"),
        ("POST", "/api/inference/vision"),
        ("POST", "/api/inference/rag/query"),
        ("POST", "/api/inference/graph/extract"),
        ("GET", "/service/llm/v1/models"),
        ("GET", "/api/admin/pins"),
        ("PUT", "/api/admin/pins"),
        ("DELETE", "/api/admin/pins"),
    ]
}

/// A query string made of parameter names the handlers read and values
/// chosen to break parsers: huge, negative, non-finite, bad escapes.
fn hostile_query(rng: &mut fastrand::Rng) -> String {
    const NAMES: [&str; 14] = [
        "wait",
        "max",
        "limit",
        "worker_id",
        "worker",
        "task_id",
        "status",
        "state",
        "service",
        "model",
        "query",
        "context",
        "text",
        "x",
    ];
    const VALUES: [&str; 20] = [
        "1e20",
        "-1",
        "NaN",
        "inf",
        "-inf",
        "1e400",
        "18446744073709551616",
        "0",
        "",
        "%",
        "%zz",
        "%00",
        "%ff%fe",
        "+",
        "..%2f..",
        "a%20b",
        "9999999999",
        "-0",
        "0x10",
        "\u{7f}",
    ];
    let n = rng.usize(1..6);
    (0..n)
        .map(|_| {
            let k = NAMES[rng.usize(..NAMES.len())];
            let v = VALUES[rng.usize(..VALUES.len())];
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn hostile_query_strings_on_every_route_leave_every_shard_answering() {
    let s = start(2, |c| c.task_max_wait = Duration::from_millis(200));
    register(s.addr, &cpu_worker("fz-1"));
    let body = serde_json::to_vec(&json!({"worker_id": "fz-1"})).unwrap();
    // A fixed seed: the same 540 requests every run, so a failure repeats.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for (method, path) in routes() {
        for _ in 0..20 {
            let q = hostile_query(&mut rng);
            // Percent-encode what a raw request line cannot carry.
            let q: String = q
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() {
                        c.to_string()
                    } else {
                        format!("%{:02X}", c as u32)
                    }
                })
                .collect();
            let target = format!("{path}?{q}");
            let body = (method != "GET" && method != "DELETE").then_some(body.as_slice());
            let r = Conn::open(s.addr).request(method, &target, &[], body);
            assert!(
                r.status < 500 || r.status == 503 || r.status == 502,
                "{method} {target}: {} {}",
                r.status,
                r.text()
            );
            if r.status >= 400 {
                assert!(!r.detail().is_empty(), "{method} {target}: {}", r.text());
            }
        }
    }
    every_shard_answers(&s);
}

/// A request head of exactly `n` bytes (request line to the blank line).
fn head_of(n: usize) -> Vec<u8> {
    let start = b"GET /health HTTP/1.1\r\nHost: t\r\nx-pad: ".to_vec();
    let end = b"\r\n\r\n";
    let pad = n - start.len() - end.len();
    let mut h = start;
    h.extend(std::iter::repeat_n(b'a', pad));
    h.extend_from_slice(end);
    assert_eq!(h.len(), n);
    h
}

#[test]
fn the_head_limit_is_exact_and_its_431_is_json() {
    let limit = 4096;
    let s = start(2, |c| c.max_header_bytes = limit);
    let mut c = Conn::open(s.addr);
    c.send_raw(&head_of(limit));
    let r = c.read_response().expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());

    let mut c = Conn::open(s.addr);
    c.send_raw(&head_of(limit + 1));
    let r = c.read_response().expect("an answer");
    assert_eq!(r.status, 431);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.detail().contains("too large"), "{}", r.text());
    every_shard_answers(&s);
}

#[test]
fn hyper_400_for_a_malformed_head_is_json() {
    let s = start(2, |_| {});
    let mut c = Conn::open(s.addr);
    c.send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\nbad header line\r\n\r\n");
    let r = c.read_response().expect("an answer");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.detail(), "Malformed HTTP request");
    every_shard_answers(&s);
}

#[test]
fn slow_heads_are_cut_at_the_header_timeout_not_the_idle_timeout() {
    // The idle timeout is far longer than the test may wait: only the
    // header timeout can close these connections in time.
    let s = start(2, |c| {
        c.header_timeout = Duration::from_millis(600);
        c.idle_timeout = Duration::from_secs(120);
    });
    // 50 slowloris clients, each trickling a byte of a head every 150 ms
    // for 3 s (writes to a closed connection just fail).
    let mut clients: Vec<Conn> = (0..50).map(|_| Conn::open(s.addr)).collect();
    let head = b"GET /health HTTP/1.1\r\nHost: t\r\nx-slow: yes\r\n";
    for b in head.iter().take(20) {
        for c in clients.iter_mut() {
            let _ = c.stream().write_all(&[*b]);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "slow client {i} still open"
        );
    }
    // A client that connects and sends nothing is cut off the same way.
    let mut silent = Conn::open(s.addr);
    assert!(silent.closed_within(Duration::from_secs(10)));
    every_shard_answers(&s);
}

#[test]
fn max_workers_bounds_new_ids_and_lets_known_ones_reregister() {
    // 2 shards, --max-workers 4: each shard holds at most 2.
    let s = start(2, |c| c.max_workers = 4);
    let ids: Vec<String> = (0..3)
        .map(|i| id_on_shard(&format!("cap{i}-"), 0, 2))
        .collect();
    register(s.addr, &cpu_worker(&ids[0]));
    register(s.addr, &cpu_worker(&ids[1]));
    let r = post(s.addr, "/api/worker/register", &cpu_worker(&ids[2]));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.detail().contains("capacity"), "{}", r.text());
    // A known id may always come back (agents re-register after restarts).
    register(s.addr, &cpu_worker(&ids[1]));
    // The other shard has room of its own.
    register(s.addr, &cpu_worker(&id_on_shard("other-", 1, 2)));
    // Room again once a worker leaves.
    let r = call(
        s.addr,
        "DELETE",
        &format!("/api/worker/unregister/{}", ids[0]),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    register(s.addr, &cpu_worker(&ids[2]));
    // Generated ids (service shape) are refused the same way when full.
    let s2 = start(1, |c| c.max_workers = 1);
    register(s2.addr, &cpu_worker("only"));
    let r = post(
        s2.addr,
        "/api/worker/register",
        &json!({"capabilities": {"cpu_cores": 4}}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
}

#[test]
fn worker_state_is_bounded_in_size() {
    let s = start(2, |c| {
        c.max_capabilities_bytes = 2048;
        c.max_worker_entries = 8;
    });
    let mut big = cpu_worker("big-caps");
    big["capabilities"]["notes"] = json!("x".repeat(4096));
    let r = post(s.addr, "/api/worker/register", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.detail().contains("capabilities"), "{}", r.text());

    let mut many = cpu_worker("many-services");
    many["services"] = json!((0..9)
        .map(|i| json!({"name": format!("s{i}"), "port": 9000 + i}))
        .collect::<Vec<_>>());
    let r = post(s.addr, "/api/worker/register", &many);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.detail().contains("services"), "{}", r.text());
    let mut many = cpu_worker("many-containers");
    many["containers"] = json!((0..9)
        .map(|i| json!({"name": format!("c{i}")}))
        .collect::<Vec<_>>());
    let r = post(s.addr, "/api/worker/register", &many);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.detail().contains("containers"), "{}", r.text());

    // Within the limits: fine, and a heartbeat over the limit is 413.
    register(s.addr, &cpu_worker("ok-worker"));
    let hb = json!({"worker_id": "ok-worker", "status": "healthy", "loaded_models": vec!["m".repeat(64); 64]});
    let r = heartbeat(s.addr, &hb);
    assert_eq!(r.status, 413, "{}", r.text());
    let r = heartbeat(
        s.addr,
        &json!({"worker_id": "ok-worker", "status": "healthy"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn worker_ids_with_invisible_or_control_characters_are_refused() {
    let s = start(2, |_| {});
    for id in [
        "evil\u{202E}gpj.exe",
        "a\u{200B}b",
        "tab\there",
        "\u{2066}iso",
    ] {
        let r = post(s.addr, "/api/worker/register", &cpu_worker(id));
        assert_eq!(r.status, 422, "{id:?}: {}", r.text());
        assert!(r.detail().starts_with("worker_id"), "{}", r.text());
    }
    register(s.addr, &cpu_worker("plain-ünïcode-ok"));
}

#[test]
fn a_server_refuses_to_start_with_an_invalid_configuration() {
    let cfg = coordinator::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        worker_timeout: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(5),
        ..coordinator::Config::default()
    };
    match coordinator::Server::start(cfg) {
        Err(coordinator::StartError::Config(e)) => assert!(e.contains("--worker-timeout"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with worker_timeout < heartbeat_timeout"),
    }
}
