//! A worker simulator: a real HTTP/1.1 server on loopback (std threads,
//! keep-alive) that registers with the coordinator, heartbeats with
//! `loaded_models`, and answers the worker APIs the proxy targets:
//! `/v1/completions` (JSON or SSE stream), `/api/generate`, `/query`,
//! `/extract`, and anything else as an echo of what arrived. It can be told
//! to fail (500), answer an error of its own (`Mode::Answer`: a status, a
//! custom header and a JSON `detail`, as agents do), stall, or die (stop
//! accepting and drop its connections).
//! `start_tls` serves the same over TLS (rustls, a certificate the test makes).
//! The client-side readers of those answers through the coordinator
//! ([`worker_of`], [`read_events`]) live here too, next to what they parse.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Resp;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Ok,
    Fail,
    /// Answers every request with this status, the header
    /// `x-agent-error: <worker id>` and
    /// `{"detail": "DHT router not initialized", "worker": <id>}`.
    Answer(u16),
    Stall(Duration),
}

/// The `detail` a simulator in [`Mode::Answer`] sends.
pub const AGENT_DETAIL: &str = "DHT router not initialized";

struct State {
    id: String,
    mode: Mutex<Mode>,
    hits: AtomicU64,
    dead: AtomicBool,
}

pub struct Sim {
    pub id: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    tls: bool,
}

impl Sim {
    pub fn start(id: &str) -> Sim {
        Self::start_with(id, None)
    }

    /// A simulator speaking HTTPS with `tls` (its URL names `localhost`,
    /// which the test's certificate must cover).
    pub fn start_tls(id: &str, tls: Arc<rustls::ServerConfig>) -> Sim {
        Self::start_with(id, Some(tls))
    }

    fn start_with(id: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Sim {
        let is_tls = tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            id: id.to_string(),
            mode: Mutex::new(Mode::Ok),
            hits: AtomicU64::new(0),
            dead: AtomicBool::new(false),
        });
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.dead.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let st = st.clone();
                match &tls {
                    None => thread::spawn(move || serve(conn, st)),
                    Some(cfg) => {
                        let Ok(session) = rustls::ServerConnection::new(cfg.clone()) else {
                            continue;
                        };
                        thread::spawn(move || serve(rustls::StreamOwned::new(session, conn), st))
                    }
                };
            }
            // Listener dropped here: further connects are refused.
        });
        Sim {
            id: id.to_string(),
            addr,
            state,
            tls: is_tls,
        }
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn set(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = m;
    }

    /// Requests answered (or failed on purpose) so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection at its next request.
    pub fn kill(&self) {
        self.state.dead.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
    }

    /// The registration body: a worker serving `services` at our URL. It
    /// registers as a storage machine so the catalog assigns it only
    /// storage services, which no proxy test routes to.
    pub fn registration(&self, services: &[&str]) -> Value {
        self.registration_at(&self.url(), services)
    }

    /// The registration body with `url` as the worker's tunnel_url.
    pub fn registration_at(&self, url: &str, services: &[&str]) -> Value {
        let svcs: Vec<Value> = services
            .iter()
            .map(|s| json!({"name": s, "port": self.addr.port()}))
            .collect();
        json!({
            "worker_id": self.id,
            "tunnel_url": url,
            "capabilities": {"hostname": self.id, "has_storage": true, "worker_type": "storage", "ram": "16GB"},
            "services": svcs,
        })
    }

    pub fn heartbeat(&self, models: &[&str], active: u64) -> Value {
        json!({
            "worker_id": self.id,
            "status": "healthy",
            "loaded_models": models,
            "active_requests": active,
            "current_load": 0.1,
        })
    }
}

struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_req<S: Read>(r: &mut BufReader<S>) -> Option<Req> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        target,
        headers,
        body,
    })
}

fn respond(w: &mut impl Write, status: u16, body: &Value) -> std::io::Result<()> {
    let b = body.to_string();
    let reason = if status == 200 { "OK" } else { "Error" };
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
        b.len()
    )?;
    w.flush()
}

/// Serves one connection. Replies are written through the reader's inner
/// stream: a TLS session cannot be split into halves like a socket.
fn serve<S: Read + Write>(conn: S, st: Arc<State>) {
    let mut r = BufReader::new(conn);
    while let Some(req) = read_req(&mut r) {
        let w = r.get_mut();
        if st.dead.load(Ordering::SeqCst) {
            return;
        }
        st.hits.fetch_add(1, Ordering::SeqCst);
        let mode = *st.mode.lock().unwrap();
        match mode {
            Mode::Fail => {
                if respond(w, 500, &json!({"detail": "simulated failure"})).is_err() {
                    return;
                }
                continue;
            }
            Mode::Answer(status) => {
                let b = json!({"detail": AGENT_DETAIL, "worker": st.id}).to_string();
                let sent = write!(
                    w,
                    "HTTP/1.1 {status} Agent Error\r\ncontent-type: application/json\r\nx-agent-error: {}\r\ncontent-length: {}\r\n\r\n{b}",
                    st.id,
                    b.len()
                )
                .and_then(|()| w.flush());
                if sent.is_err() {
                    return;
                }
                continue;
            }
            Mode::Stall(d) => thread::sleep(d),
            Mode::Ok => {}
        }
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let ok = match path {
            "/v1/completions" if body["stream"] == json!(true) => stream(w, &st.id),
            "/v1/completions" => respond(
                w,
                200,
                &json!({"worker": st.id, "object": "text_completion", "request": body,
                        "choices": [{"text": "hello"}]}),
            ),
            "/api/generate" => respond(
                w,
                200,
                &json!({"worker": st.id, "response": "a cat", "request": body}),
            ),
            "/query" | "/extract" => respond(
                w,
                200,
                &json!({"worker": st.id, "path": path, "query": query, "method": req.method}),
            ),
            _ => {
                let headers: serde_json::Map<String, Value> = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect();
                respond(
                    w,
                    200,
                    &json!({"worker": st.id, "method": req.method, "path": path, "query": query,
                            "headers": headers, "body": String::from_utf8_lossy(&req.body)}),
                )
            }
        };
        if ok.is_err() {
            return;
        }
    }
}

/// An SSE token stream: three events 150 ms apart, then `[DONE]`.
fn stream<W: Write>(w: &mut W, id: &str) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )?;
    w.flush()?;
    let chunk = |w: &mut W, s: &str| -> std::io::Result<()> {
        write!(w, "{:x}\r\n{s}\r\n", s.len())?;
        w.flush()
    };
    for i in 0..3 {
        chunk(
            w,
            &format!("data: {{\"worker\":\"{id}\",\"token\":{i}}}\n\n"),
        )?;
        thread::sleep(Duration::from_millis(150));
    }
    chunk(w, "data: [DONE]\n\n")?;
    write!(w, "0\r\n\r\n")?;
    w.flush()
}

/// The simulator that answered a proxied request (asserting a 200).
pub fn worker_of(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["worker"].as_str().unwrap().to_string()
}

/// Streams a completion from `worker` through the proxy and checks that it
/// arrived event by event: the worker sleeps 150 ms between its tokens, so
/// had anything buffered the answer, all events would arrive together.
pub fn assert_streamed_from(addr: SocketAddr, worker: &str) {
    let events = read_events(addr, &json!({"model": "m", "prompt": "hi", "stream": true}));
    let names: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names[0].contains(worker) && names[0].contains("\"token\":0"));
    assert_eq!(names[3], "[DONE]");
    assert!(
        events[3].0 - events[0].0 >= Duration::from_millis(300),
        "{events:?}"
    );
}

/// POSTs `body` to `/api/inference/llm` (with `ADMIN_KEY`, which a server
/// without a key ignores) and reads the chunked SSE answer
/// (see [`stream`]), noting when each `data:` event arrived.
pub fn read_events(addr: SocketAddr, body: &Value) -> Vec<(Duration, String)> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let b = serde_json::to_vec(body).unwrap();
    write!(
        s,
        "POST /api/inference/llm HTTP/1.1\r\nHost: t\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        crate::common::ADMIN_KEY,
        b.len()
    )
    .unwrap();
    s.write_all(&b).unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let events: Vec<String> = text
            .split("data: ")
            .skip(1)
            .map(|e| e.split('\n').next().unwrap_or("").to_string())
            .collect();
        while seen.len() < events.len() {
            seen.push((t0.elapsed(), events[seen.len()].clone()));
        }
        if text.contains("[DONE]") && text.ends_with("0\r\n\r\n") {
            break;
        }
    }
    seen
}
