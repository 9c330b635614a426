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
