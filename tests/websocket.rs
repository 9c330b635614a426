//! `GET /api/events/ws` over real TCP on a 2-shard server: the handshake
//! (accept key, 400/426/401 before any upgrade), the session's answers to
//! what a client sends (ping, close, subscribe, binary, too big), shutdown,
//! and HTTP going on as before around sessions. Every read has a timeout,
//! so a hang fails the test instead of blocking it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const PATH: &str = "/api/events/ws";
/// The example key of RFC 6455 and the accept value it must earn.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const WAIT: Duration = Duration::from_secs(10);

fn handshake_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ]
}

/// A client session, with `extra` headers on the handshake.
fn open_with(addr: SocketAddr, extra: &[(&str, &str)]) -> WebSocket<Tcp> {
    open_at(addr, PATH, extra)
}

/// A client session on `path` (the events path with a query).
fn open_at(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> WebSocket<Tcp> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in extra {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, tungstenite::http::HeaderValue::from_str(v).unwrap());
    }
    let (ws, resp) = tungstenite::client(req, Tcp(tcp)).expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

fn open(addr: SocketAddr) -> WebSocket<Tcp> {
    open_with(addr, &[])
}

/// Reads until the server's close frame; its code and reason.
fn close_of(ws: &mut WebSocket<Tcp>) -> (CloseCode, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (f.code, f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// The session is over: after its close, the server closes the socket.
fn ends(ws: &mut WebSocket<Tcp>) {
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Ok(m) => panic!("unexpected after close: {m:?}"),
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return
            }
            Err(tungstenite::Error::Io(e)) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "server kept the socket open: {e}"
                );
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn normal() -> tungstenite::protocol::CloseFrame {
    tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }
}

fn health_ok(addr: SocketAddr) {
    let r = get(addr, "/health");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn handshake_answers_101_with_the_accept_key() {
    let s = start(2, |_| {});
    let mut c = Conn::open(s.addr);
    let r = c.request("GET", PATH, &handshake_headers(), None);
    assert_eq!(r.status, 101, "{}", r.text());
    assert_eq!(r.header("sec-websocket-accept"), Some(ACCEPT));
    assert!(r
        .header("upgrade")
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
    assert!(r
        .header("connection")
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    assert!(r.header("x-coordinator-shard").is_some());
    // The connection now speaks WebSocket: a close frame (masked, as a
    // client's must be) gets the close echo, not HTTP.
    c.send_raw(&masked(0x8, &[0x03, 0xe8]));
    let mut frame = [0u8; 4];
    c.stream().read_exact(&mut frame).unwrap();
    assert_eq!(frame, [0x88, 0x02, 0x03, 0xe8]);
    health_ok(s.addr);
}

/// A client frame: FIN, `opcode`, masked with a zero key.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[test]
fn frames_sent_with_the_handshake_are_not_lost() {
    // The ping travels in the same write as the handshake, so HTTP reads
    // it along with the head: the session must start from those bytes.
    let s = start(2, |_| {});
    let tcp = TcpStream::connect(s.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut tcp = Tcp(tcp);
    let mut out = format!("GET {PATH} HTTP/1.1\r\nHost: t\r\n");
    for (k, v) in handshake_headers() {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&masked(0x9, b"hi"));
    tcp.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let pong = [0x8a, 0x02, b'h', b'i'];
    while !got.windows(4).any(|w| w == pong) {
        let n = tcp.read(&mut buf).expect("pong before the timeout");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    // A 101 has no body, so no length either (RFC 9110 8.6).
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head.contains("content-length"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[test]
fn an_unmasked_client_frame_closes_1002() {
    let s = start(2, |_| {});
    let mut c = Conn::open(s.addr);
    let r = c.request("GET", PATH, &handshake_headers(), None);
    assert_eq!(r.status, 101, "{}", r.text());
    // A text frame "hi" without the mask a client's frames must carry.
    c.send_raw(&[0x81, 0x02, b'h', b'i']);
    let mut head = [0u8; 4];
    c.stream().read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x88, "a close frame: {head:?}");
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1002);
    assert!(c.closed_within(WAIT), "server kept the socket open");
}

#[test]
fn refused_handshakes_are_json_errors_and_the_connection_stays_http() {
    let s = start(2, |_| {});
    let mut c = Conn::open(s.addr);
    let r = c.get(PATH);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.detail().contains("Upgrade: websocket"), "{}", r.text());

    let mut h = handshake_headers();
    h[2] = ("Sec-WebSocket-Version", "8");
    let r = c.request("GET", PATH, &h, None);
    assert_eq!(r.status, 426, "{}", r.text());
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    assert!(r.detail().contains("13"), "{}", r.text());

    let mut h = handshake_headers();
    h[3] = ("Sec-WebSocket-Key", "short");
    let r = c.request("GET", PATH, &h, None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.detail().contains("Sec-WebSocket-Key"), "{}", r.text());

    let r = c.request("POST", PATH, &handshake_headers(), Some(b"{}"));
    assert_eq!(r.status, 405, "{}", r.text());

    // A page from another site may not open a session.
    let mut h = handshake_headers();
    h.push(("Origin", "https://elsewhere.example"));
    let r = c.request("GET", PATH, &h, None);
    assert_eq!(r.status, 403, "{}", r.text());

    // All on one keep-alive connection, which still serves HTTP.
    assert_eq!(c.get("/health").status, 200);
}

#[test]
fn client_ping_gets_a_pong() {
    let s = start(2, |_| {});
    let mut ws = open(s.addr);
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    loop {
        match ws.read().expect("pong") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Message::Ping(_) => continue,
            m => panic!("expected a pong, got {m:?}"),
        }
    }
    ws.close(Some(normal())).unwrap();
    assert_eq!(close_of(&mut ws).0, CloseCode::Normal);
}

#[test]
fn client_close_is_echoed_with_1000_and_the_server_goes_on() {
    let s = start(2, |_| {});
    let mut ws = open(s.addr);
    ws.close(Some(normal())).unwrap();
    assert_eq!(close_of(&mut ws).0, CloseCode::Normal);
    ends(&mut ws);
    health_ok(s.addr);
}

#[test]
fn subscribe_is_accepted_and_anything_else_closes_1008() {
    let s = start(2, |_| {});
    let mut ws = open(s.addr);
    ws.send(Message::text(r#"{"subscribe": {"topics": ["worker"]}}"#))
        .unwrap();
    // Still open: a ping after it is answered.
    ws.send(Message::Ping(b"1".to_vec().into())).unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Pong(_)));

    for bad in [
        "{not json",
        r#"{"subscribe": []}"#,
        r#"{"hello": 1}"#,
        r#"{"subscribe": {"kinds": ["worker"]}}"#,
        r#"{"subscribe": {"topics": ["nope"]}}"#,
    ] {
        let mut ws = open(s.addr);
        ws.send(Message::text(bad)).unwrap();
        let (code, reason) = close_of(&mut ws);
        assert_eq!(code, CloseCode::Policy, "{bad}");
        assert!(!reason.is_empty(), "{bad}");
        ends(&mut ws);
    }
    health_ok(s.addr);
}

#[test]
fn binary_closes_1003() {
    let s = start(2, |_| {});
    let mut ws = open(s.addr);
    ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(close_of(&mut ws).0, CloseCode::Unsupported);
    ends(&mut ws);
}

#[test]
fn a_message_over_64_kib_closes_1009() {
    let s = start(2, |_| {});
    let mut ws = open(s.addr);
    let big = format!(r#"{{"subscribe": {{"x": "{}"}}}}"#, "a".repeat(70 << 10));
    ws.send(Message::text(big)).unwrap();
    assert_eq!(close_of(&mut ws).0, CloseCode::Size);
    ends(&mut ws);
    health_ok(s.addr);
}

#[test]
fn keys_are_checked_before_any_upgrade() {
    let s = start(2, with_keys);
    let mut c = Conn::open(s.addr);
    let r = c.request("GET", PATH, &handshake_headers(), None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.header("sec-websocket-accept").is_none());

    let mut ws = open_with(s.addr, &[("X-API-Key", CLIENT_KEY)]);
    ws.send(Message::Ping(b"k".to_vec().into())).unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Pong(_)));
    let _admin = open_with(s.addr, &[("X-API-Key", ADMIN_KEY)]);
    let bearer = format!("Bearer {CLIENT_KEY}");
    let _bearer = open_with(s.addr, &[("Authorization", &bearer)]);
}

/// The sum over shards of a connection gauge.
fn gauge(addr: SocketAddr, name: &str) -> f64 {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    sum_samples(&r.text(), &format!("{name}{{"))
}

#[test]
fn sessions_count_as_open_connections_until_they_end() {
    let s = start(2, |_| {});
    let mut sessions: Vec<_> = (0..4).map(|_| open(s.addr)).collect();
    assert_eq!(gauge(s.addr, "coordinator_websocket_sessions"), 4.0);
    // The 4 sessions and the scrape's own connection.
    assert!(gauge(s.addr, "coordinator_connections_open") >= 5.0);
    for ws in &mut sessions {
        ws.close(Some(normal())).unwrap();
        close_of(ws);
        ends(ws);
    }
    assert!(
        eventually(WAIT, || gauge(s.addr, "coordinator_websocket_sessions")
            == 0.0
            && gauge(s.addr, "coordinator_connections_open") == 1.0),
        "sessions still counted"
    );
    let text = get(s.addr, "/metrics").text();
    assert!(
        text.contains(r#"coordinator_http_requests_total{route="events_ws",status="101"} 4"#),
        "{text}"
    );
}

#[test]
fn idle_sessions_outlive_the_idle_timeout() {
    // The session keeps itself alive with pings; the HTTP idle watchdog
    // (here 300 ms) must not cut it.
    let s = start(2, |c| {
        c.idle_timeout = Duration::from_millis(300);
        c.header_timeout = Duration::from_millis(300);
    });
    let mut ws = open(s.addr);
    std::thread::sleep(Duration::from_millis(1000));
    ws.send(Message::Ping(b"still".to_vec().into())).unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Pong(_)));
}

#[test]
fn shutdown_closes_sessions_with_1001() {
    let s = start(2, |_| {});
    let mut sessions: Vec<_> = (0..4).map(|_| open(s.addr)).collect();
    let stopper = std::thread::spawn(move || s.server.stop());
    for ws in &mut sessions {
        let (code, _) = close_of(ws);
        assert_eq!(code, CloseCode::Away);
    }
    assert_eq!(stopper.join().unwrap(), 0, "a shard failed");
}

/// The next event (text frame) as JSON; pings and pongs are skipped.
fn event(ws: &mut WebSocket<Tcp>) -> serde_json::Value {
    loop {
        match ws.read().expect("an event") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("not an event: {other:?}"),
        }
    }
}

#[test]
fn events_arrive_one_per_text_frame_and_subscribe_changes_the_filter() {
    let s = start(2, |_| {});
    let mut ws = open_at(s.addr, "/api/events/ws?topics=worker", &[]);
    let a = id_on_shard("wa", 0, 2);
    let b = id_on_shard("wb", 1, 2);
    register(s.addr, &cpu_worker(&a));
    let e = event(&mut ws);
    assert_eq!(
        (e["type"].as_str(), e["key"].as_str()),
        (Some("worker.registered"), Some(a.as_str()))
    );
    assert!(e["index"].is_string());
    // From here on only worker b's events; the stream goes on from where
    // it was.
    let sub = format!(r#"{{"subscribe": {{"worker_id": "{b}"}}}}"#);
    ws.send(Message::text(sub)).unwrap();
    ws.send(Message::Ping(b"sync".to_vec().into())).unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Pong(_)));
    heartbeat(
        s.addr,
        &serde_json::json!({"worker_id": a, "status": "busy"}),
    );
    register(s.addr, &cpu_worker(&b));
    let e = event(&mut ws);
    assert_eq!(
        (e["type"].as_str(), e["key"].as_str()),
        (Some("worker.registered"), Some(b.as_str()))
    );
    // Bad filters and cursors are refused before the upgrade.
    let r = get(s.addr, "/api/events/ws?topics=nope");
    assert_eq!(r.status, 400, "{}", r.text());
    health_ok(s.addr);
}

#[test]
fn an_old_cursor_gets_a_reset_frame_then_close_4000() {
    let s = start(2, |c| c.event_ring = 16);
    let old = get(s.addr, "/api/coordinator/workers")
        .header("x-coordinator-index")
        .unwrap()
        .to_string();
    for i in 0..40 {
        register(s.addr, &cpu_worker(&format!("x{i}")));
    }
    let mut ws = open_at(s.addr, &format!("/api/events/ws?since={old}"), &[]);
    let e = event(&mut ws);
    assert_eq!(e["type"], "reset");
    assert_eq!(close_of(&mut ws).0, CloseCode::from(4000));
}
