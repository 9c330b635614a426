//! hyper 1 IO over glommio sockets, with activity tracking for timeouts.
//!
//! hyper's own header-read timeout needs a `Send + Sync` timer, which glommio
//! does not have; without one hyper silently drops the timeout. So the adapter
//! records when bytes last moved and whether a request is being read, and the
//! HTTP layer's watchdog (driven by glommio timers) closes connections that
//! are idle or slow. The clock is read only when bytes actually move.
//!
//! Outbound (proxy) connections may be upgraded to TLS (rustls through
//! futures-rustls, over the same glommio socket) before hyper sees them.
//! Which roots to trust and which name to check are the caller's choice;
//! this file only moves bytes and must not decide either.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::rt::ReadBufCursor;

/// Per-connection timing state shared by the adapter, the request handler
/// and the watchdog (all on one shard, hence `Cell`).
#[derive(Debug)]
pub struct ConnActivity {
    last_io: Cell<Instant>,
    /// When the first byte of a not-yet-dispatched request arrived.
    request_started: Cell<Option<Instant>>,
    /// Requests dispatched to the service and not yet answered.
    in_flight: Cell<u32>,
}

impl ConnActivity {
    pub fn new() -> Self {
        Self {
            last_io: Cell::new(Instant::now()),
            request_started: Cell::new(None),
            in_flight: Cell::new(0),
        }
    }

    pub fn last_io(&self) -> Instant {
        self.last_io.get()
    }

    pub fn request_started(&self) -> Option<Instant> {
        self.request_started.get()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    /// The service got a complete request head: header timing is over.
    pub fn begin_request(&self) {
        self.request_started.set(None);
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub fn end_request(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        self.last_io.set(now);
        if self.in_flight.get() == 0 && self.request_started.get().is_none() {
            self.request_started.set(Some(now));
        }
    }

    fn on_write(&self) {
        self.last_io.set(Instant::now());
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self::new()
    }
}

/// The socket under a [`HyperIo`]: plain, or a client TLS session on it.
enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session carries ~1 KiB of state that plain connections
    /// (every inbound one) should not pay for.
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            // Sends close_notify, then closes the socket.
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// A glommio `TcpStream` (optionally under client TLS) seen through hyper's
/// IO traits.
pub struct HyperIo {
    stream: Stream,
    activity: std::rc::Rc<ConnActivity>,
    scratch: Box<[u8]>,
}

impl HyperIo {
    pub fn new(stream: TcpStream, activity: std::rc::Rc<ConnActivity>) -> Self {
        Self {
            stream: Stream::Plain(stream),
            activity,
            // Reading into our own buffer and copying avoids zero-filling
            // hyper's (much larger) read buffer on every read.
            scratch: vec![0u8; 16 << 10].into_boxed_slice(),
        }
    }

    /// Connects to `addr` (for the outbound proxy client).
    pub async fn connect(
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(io::Error::from)?;
        let _ = stream.set_nodelay(true);
        Ok(Self::new(stream, std::rc::Rc::new(ConnActivity::new())))
    }

    /// Runs a TLS client handshake on this (plain, just connected) socket,
    /// checking the peer's certificate for `name` against `tls`'s roots.
    /// Certificate problems come back as the error's text (rustls says
    /// e.g. "invalid peer certificate: UnknownIssuer").
    pub async fn start_tls(
        self,
        tls: &futures_rustls::TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<Self> {
        let Stream::Plain(tcp) = self.stream else {
            return Err(io::Error::other("connection is already TLS"));
        };
        let session = tls.connect(name, tcp).await?;
        Ok(Self {
            stream: Stream::Tls(Box::new(session)),
            activity: self.activity,
            scratch: self.scratch,
        })
    }
}

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.scratch.len());
        match this.stream.poll_read(cx, &mut this.scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                this.activity.on_read(n);
                buf.put_slice(&this.scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.stream.poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = r {
            this.activity.on_write();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream.poll_close(cx)
    }
}
