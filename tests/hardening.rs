//! Bad input, limits and timeouts: clear 4xx JSON errors, and the server
//! keeps serving on the same and on new connections.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn bad_bodies_get_4xx_with_detail_and_the_server_keeps_serving() {
    let s = start(2, |_| {});
    register(s.addr, &cpu_worker("w"));
    let mut c = Conn::open(s.addr);
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 422, "body: invalid JSON"),
        (b"", 422, "body"),
        (b"[1,2]", 422, "body"),
        (br#"{"status":"healthy"}"#, 422, "worker_id"),
        (
            br#"{"worker_id":"w","current_load":"high"}"#,
            422,
            "current_load",
        ),
        (
            br#"{"worker_id":"w","active_requests":-2}"#,
            422,
            "active_requests",
        ),
        (
            br#"{"worker_id":"w","loaded_models":"llama"}"#,
            422,
            "loaded_models",
        ),
        (br#"{"worker_id":""}"#, 422, "worker_id"),
    ];
    for (body, status, needle) in cases {
        let r = c.request("POST", "/api/worker/heartbeat", &[], Some(body));
        assert_eq!(
            r.status,
            status,
            "{}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        assert!(
            r.detail().contains(needle),
            "{} -> {}",
            String::from_utf8_lossy(body),
            r.detail()
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let r = c.request(
        "POST",
        "/api/worker/register",
        &[],
        Some(br#"{"worker_id":"x","capabilities":"gpu"}"#),
    );
    assert_eq!(r.status, 422);
    assert!(r.detail().starts_with("capabilities"), "{}", r.detail());
    let r = c.request(
        "POST",
        "/api/coordinator/broadcast-job",
        &[],
        Some(br#"{"job_data":{}}"#),
    );
    assert_eq!(r.status, 422);
    assert!(r.detail().contains("job_type"), "{}", r.detail());
    // The same keep-alive connection still works.
    let r = c.post("/api/worker/heartbeat", &json!({"worker_id": "w"}));
    assert_eq!(r.status, 200);
}

#[test]
fn oversized_body_is_413_and_server_survives() {
    let s = start(2, |_| {});
    let big = vec![b'x'; 2 << 20];
    let mut c = Conn::open(s.addr);
    let r = c.request("POST", "/api/worker/register", &[], Some(&big));
    assert_eq!(r.status, 413);
    assert!(r.detail().contains("too large"), "{}", r.detail());
    // Chunked upload with no length announced: cut off at the limit too.
    let mut c = Conn::open(s.addr);
    c.send_raw(
        b"POST /api/worker/heartbeat HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let chunk = vec![b' '; 256 << 10];
    let mut status = None;
    for _ in 0..8 {
        let mut msg = format!("{:x}\r\n", chunk.len()).into_bytes();
        msg.extend_from_slice(&chunk);
        msg.extend_from_slice(b"\r\n");
        if c.stream().write_all(&msg).is_err() {
            break;
        }
    }
    let _ = c.stream().write_all(b"0\r\n\r\n");
    if let Some(r) = c.read_response() {
        status = Some(r.status);
    }
    assert_eq!(status, Some(413));
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn unknown_route_404_wrong_method_405() {
    let s = start(2, |_| {});
    let r = get(s.addr, "/api/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.detail(), "Not Found");
    let r = get(s.addr, "/api/worker/register");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.detail(), "Method Not Allowed");
    let r = call(s.addr, "POST", "/api/worker/unregister/x", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("DELETE"));
}

#[test]
fn malformed_request_line_does_not_hurt_others() {
    let s = start(2, |_| {});
    let mut bad = Conn::open(s.addr);
    bad.send_raw(b"\x00\x01garbage\r\n\r\n");
    assert!(bad.closed_within(Duration::from_secs(5)));
    let mut huge = Conn::open(s.addr);
    let mut head = b"GET /health HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..3000 {
        head.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(40)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let _ = huge.stream().write_all(&head);
    // hyper answers 431 for an oversized head.
    let r = huge.read_response().expect("a response before close");
    assert_eq!(r.status, 431);
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn slow_headers_and_idle_connections_are_closed() {
    let s = start(2, |c| {
        c.header_timeout = Duration::from_millis(400);
        c.idle_timeout = Duration::from_millis(900);
    });
    // A client that starts a request and stalls is cut off at the header
    // timeout, well before the idle timeout.
    let mut slow = Conn::open(s.addr);
    slow.send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n");
    let t = std::time::Instant::now();
    assert!(slow.closed_within(Duration::from_secs(5)));
    let took = t.elapsed();
    assert!(took < Duration::from_millis(850), "closed after {took:?}");
    // Meanwhile others are served.
    assert_eq!(get(s.addr, "/health").status, 200);
    // An idle keep-alive connection is closed after the idle timeout.
    let mut idle = Conn::open(s.addr);
    assert_eq!(idle.get("/health").status, 200);
    assert!(idle.closed_within(Duration::from_secs(5)));
    let text = get(s.addr, "/metrics").text();
    let timed_out: u64 = text
        .lines()
        .filter(|l| l.starts_with("coordinator_connections_timed_out_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(timed_out >= 2, "{timed_out}");
}

#[test]
fn connection_cap_per_shard_answers_503_beyond_it() {
    let s = start(2, |c| c.max_connections_per_shard = 2);
    let mut conns: Vec<Conn> = (0..10).map(|_| Conn::open(s.addr)).collect();
    let mut ok = 0;
    let mut refused = 0;
    for c in conns.iter_mut() {
        c.send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        match c.read_response() {
            Some(r) if r.status == 200 => ok += 1,
            Some(r) if r.status == 503 => {
                assert_eq!(r.detail(), "Too many connections");
                refused += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((1..=4).contains(&ok), "ok={ok}");
    assert_eq!(ok + refused, 10);
    drop(conns);
    // Once those close, new connections are accepted again.
    assert!(eventually(Duration::from_secs(3), || get(
        s.addr, "/health"
    )
    .status
        == 200));
}
