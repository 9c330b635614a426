//! A blocking one-request-at-a-time connection for everything that is not
//! the measured load: pre-registering workers, scraping `/metrics`, reading
//! `/health`, and the bookkeeping calls of the `proxy` and `tasks`
//! scenarios (registration, heartbeats, task pulls and completions).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{build_request, ResponseReader};

pub struct BlockingConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl BlockingConn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            // Worker lists of 10k workers take well under a second; a
            // server that says nothing for 10 s is stuck.
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    /// Sends a serialised request, returns status and body. Reconnects
    /// once if a kept-alive connection turns out to be closed (never after
    /// a timeout: that would only double the wait on a stuck server).
    pub fn call(&mut self, req: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        match self.call_once(req) {
            Ok(r) => Ok(r),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                self.call_once(req)
            }
        }
    }

    /// `method path` with an optional JSON body; the answer's body parsed
    /// as JSON (`Null` when it is not JSON).
    pub fn json(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<(u16, Value)> {
        let (status, body) = self.call(&build_request(method, host, path, body))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Like `json`, but any status other than `want` is an error that names
    /// the call and quotes the answer.
    pub fn expect(
        &mut self,
        want: u16,
        method: &str,
        host: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Value, String> {
        match self.json(method, host, path, body) {
            Ok((s, v)) if s == want => Ok(v),
            Ok((s, v)) => Err(format!("{method} {path}: status {s}: {v}")),
            Err(e) => Err(format!("{method} {path}: {e}")),
        }
    }

    fn call_once(&mut self, req: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.stream()?.write_all(req)?;
        self.buf.clear();
        let mut reader = ResponseReader::default();
        let mut chunk = [0u8; 16 << 10];
        loop {
            let n = self.stream()?.read(&mut chunk)?;
            self.buf.extend_from_slice(&chunk[..n]);
            let done = reader
                .poll(&self.buf, n == 0)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if let Some(c) = done {
                let body = self.buf[c.body_start..c.len].to_vec();
                if c.close {
                    self.stream = None;
                }
                return Ok((c.status, body));
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Heartbeats a set of workers every `every` until dropped, so the workers
/// a scenario registered stay healthy however long the run is (the
/// coordinator marks a silent worker unhealthy after two minutes).
pub struct Heartbeats {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Heartbeats {
    /// `requests` are serialised heartbeats, sent one after the other.
    pub fn start(addr: SocketAddr, requests: Vec<Vec<u8>>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name("loadgen-heartbeats".into())
            .spawn(move || {
                let mut conn = BlockingConn::new(addr);
                let mut next = Instant::now() + every;
                while !st.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        for r in &requests {
                            // A missed beat is retried at the next tick;
                            // two minutes of them would have to fail.
                            let _ = conn.call(r);
                        }
                        next += every;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .expect("spawn heartbeat thread");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
