//! The simulated inference worker of the `proxy` scenario: a small HTTP/1.1
//! keep-alive server on 127.0.0.1 that answers `POST /v1/completions` with
//! one fixed, small JSON completion and counts what it answered. It owns
//! its listener and its connection threads, and nothing else: registering
//! it with the coordinator is the scenario's job (`proxy.rs`).
//!
//! Plain std threads, one per connection, blocking reads: the coordinator's
//! pool and loadgen's own connections are a few dozen at most, and a worker
//! that does no work per request must not be what the figures measure. The
//! answer is serialised once; a request costs a parse of its head and one
//! write.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{chunked_end, split_head, ParseError};
use crate::scenario::LLM_MODEL;

/// The completion every `/v1/completions` request gets (OpenAI shape).
fn completion_body() -> String {
    serde_json::json!({
        "id": "cmpl-loadgen", "object": "text_completion", "model": LLM_MODEL,
        "choices": [{"index": 0, "text": "Hello", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}
    })
    .to_string()
}
const NOT_FOUND: &str = r#"{"detail":"Not Found"}"#;

struct Shared {
    /// Completions answered (200s on `/v1/completions`).
    hits: AtomicU64,
    stop: AtomicBool,
}

/// A running simulated worker; stops accepting when dropped.
pub struct SimWorker {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SimWorker {
    /// Binds an ephemeral loopback port and starts serving.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            hits: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("sim-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sh.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let sh = sh.clone();
                    let _ = std::thread::Builder::new()
                        .name("sim-conn".into())
                        .spawn(move || serve(conn, &sh));
                }
            })?;
        Ok(Self { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the endpoint the coordinator proxies to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Completions answered so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::Relaxed)
    }
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve(mut conn: TcpStream, shared: &Shared) {
    let _ = conn.set_nodelay(true);
    // Wakes a blocked read now and then so a dropped worker's threads end.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let ok = response("200 OK", &completion_body());
    let not_found = response("404 Not Found", NOT_FOUND);
    let mut buf: Vec<u8> = Vec::with_capacity(8 << 10);
    let mut scratch = vec![0u8; 16 << 10];
    let mut out: Vec<u8> = Vec::with_capacity(4 << 10);
    loop {
        let n = match conn.read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        buf.extend_from_slice(&scratch[..n]);
        // Answer every complete request in the buffer with one write.
        out.clear();
        let mut close = false;
        let mut used = 0;
        loop {
            match parse_request(&buf[used..]) {
                Ok(Some(r)) => {
                    if r.is_completion {
                        shared.hits.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(&ok);
                    } else {
                        out.extend_from_slice(&not_found);
                    }
                    used += r.len;
                    if r.close {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                // Garbage: nothing sensible to answer; drop the connection.
                Err(_) => return,
            }
        }
        buf.drain(..used);
        if !out.is_empty() && conn.write_all(&out).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// A complete request found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `POST /v1/completions` (query ignored).
    pub is_completion: bool,
    /// Bytes the request occupies (head and body).
    pub len: usize,
    /// The client asked to close after the answer.
    pub close: bool,
}

/// Finds the first request in `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, ParseError> {
    let Some(raw) = split_head(buf)? else {
        return Ok(None);
    };
    let mut parts = raw.start_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m, t, v),
        _ => return Err(ParseError("bad request line")),
    };
    let body = &buf[raw.len..];
    let body_len = if raw.chunked {
        chunked_end(body)?
    } else {
        let length = raw.content_length.unwrap_or(0);
        (body.len() >= length).then_some(length)
    };
    let path = target.split('?').next().unwrap_or_default();
    Ok(body_len.map(|n| Request {
        is_completion: method == "POST" && path == "/v1/completions",
        len: raw.len + n,
        close: raw.connection_close.unwrap_or(version == "HTTP/1.0"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::BlockingConn;
    use crate::http::build_request;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = build_request("POST", "h", "/v1/completions?x=1", Some(b"{\"a\":1}"));
        for cut in 0..r.len() {
            assert_eq!(parse_request(&r[..cut]), Ok(None), "cut at {cut}");
        }
        let got = parse_request(&r).unwrap().unwrap();
        assert_eq!(
            got,
            Request {
                is_completion: true,
                len: r.len(),
                close: false
            }
        );
        let chunked = b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET";
        let got = parse_request(chunked).unwrap().unwrap();
        assert_eq!(got.len, chunked.len() - 3);
        assert!(got.close && got.is_completion);
        let get = build_request("GET", "h", "/v1/completions", None);
        assert!(!parse_request(&get).unwrap().unwrap().is_completion);
        assert!(parse_request(b"nonsense\r\n\r\n").is_err());
        assert!(parse_request(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn answers_completions_over_keep_alive_and_counts_them() {
        let sim = SimWorker::start().unwrap();
        let host = sim.addr().to_string();
        let mut c = BlockingConn::new(sim.addr());
        let req = build_request("POST", &host, "/v1/completions", Some(b"{}"));
        for _ in 0..3 {
            let (status, body) = c.call(&req).unwrap();
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["choices"][0]["text"], "Hello");
            assert_eq!(v["model"], LLM_MODEL);
        }
        let (status, _) = c.call(&build_request("GET", &host, "/nope", None)).unwrap();
        assert_eq!(status, 404);
        assert_eq!(sim.hits(), 3);
    }
}
