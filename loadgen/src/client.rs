//! A blocking one-request-at-a-time connection for everything that is not
//! the measured load: pre-registering workers, scraping `/metrics`, reading
//! `/health`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::ResponseReader;

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
                let head = crate::http::parse_head(&self.buf)
                    .ok()
                    .flatten()
                    .map_or(0, |h| h.len);
                let body = self.buf[head.min(c.len)..c.len].to_vec();
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
