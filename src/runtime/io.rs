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
pub(crate) struct ConnActivity {
    last_io: Cell<Instant>,
    /// When the first byte of a not-yet-dispatched request arrived.
    request_started: Cell<Option<Instant>>,
    /// Requests dispatched to the service and not yet answered.
    in_flight: Cell<u32>,
    /// Set by [`ConnActivity::abort`]: close the connection now.
    aborted: Cell<bool>,
    /// The connection's socket, for socket options.
    fd: Cell<Option<std::os::fd::RawFd>>,
    abort_waker: std::cell::RefCell<Option<std::task::Waker>>,
    /// Set by [`ConnActivity::to_background`]: serve the rest of this
    /// connection from the background queue.
    background: Cell<bool>,
}

impl ConnActivity {
    /// A fresh connection: its first request head is timed from now.
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            last_io: Cell::new(now),
            request_started: Cell::new(Some(now)),
            in_flight: Cell::new(0),
            aborted: Cell::new(false),
            fd: Cell::new(None),
            abort_waker: std::cell::RefCell::new(None),
            background: Cell::new(false),
        }
    }

    /// Caps the kernel's send buffer of connection `fd` at about `bytes`
    /// (the kernel doubles it for bookkeeping) instead of letting it grow
    /// to megabytes: a long-lived stream to a client that stops reading
    /// then backs up, and is noticed, after a bounded amount.
    pub(crate) fn limit_send_buffer(&self, bytes: usize) {
        let Some(fd) = self.fd.get() else { return };
        let v = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live
        // local; a bad fd only makes it fail, which is harmless here.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// Records the connection's socket (see [`ConnActivity::limit_send_buffer`]).
    pub(crate) fn set_fd(&self, fd: std::os::fd::RawFd) {
        self.fd.set(Some(fd));
    }

    /// Asks for the connection to be closed at once, whatever it is doing
    /// (a stalled event subscriber whose socket never drains).
    pub(crate) fn abort(&self) {
        self.aborted.set(true);
        if let Some(w) = self.abort_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once [`ConnActivity::abort`] was called.
    pub(crate) fn aborted(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.aborted.get() {
                std::task::Poll::Ready(())
            } else {
                *self.abort_waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
    }

    /// Asks for the rest of the connection to be served in the shard's
    /// background queue (see [`super::in_background`]): a response that
    /// streams for as long as the client stays (an event stream) must not
    /// compete with requests on equal terms.
    pub(crate) fn to_background(&self) {
        self.background.set(true);
    }

    /// Resolves once [`ConnActivity::to_background`] was called. It needs
    /// no waker: only a handler calls it, inside the connection's poll, so
    /// a future polled after the connection in the same pass sees it.
    pub(crate) fn moved_to_background(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |_| {
            if self.background.get() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    pub(crate) fn last_io(&self) -> Instant {
        self.last_io.get()
    }

    pub(crate) fn request_started(&self) -> Option<Instant> {
        self.request_started.get()
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    /// The service got a complete request head: header timing is over.
    pub(crate) fn begin_request(&self) {
        self.request_started.set(None);
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub(crate) fn end_request(&self) {
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
pub(crate) struct HyperIo {
    stream: Stream,
    activity: std::rc::Rc<ConnActivity>,
    scratch: Box<[u8]>,
    /// Bodies for the answers hyper writes by itself (see [`EmptyErrorBody`]).
    error_bodies: Option<EmptyErrorBody>,
    /// A rewritten answer being written: the bytes and how many went out.
    rewritten: Option<(Vec<u8>, usize)>,
}

/// hyper answers a request head it cannot parse (400), one too large (431)
/// or a URI too long (414) on its own, with an empty body, before any
/// service sees it. The server's caller may supply a body for those:
/// `f(status)` gives `(content type, body)`, and the adapter rewrites
/// hyper's empty answer to carry it. The runtime stays format-agnostic:
/// what the body says is the caller's business.
pub(crate) type EmptyErrorBody = fn(u16) -> Option<(&'static str, &'static [u8])>;

/// If `buf` is a whole response head with `content-length: 0` and a status
/// `bodies` has a body for, the same head with that body.
fn rewrite_empty_error(buf: &[u8], bodies: EmptyErrorBody) -> Option<Vec<u8>> {
    let status = buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let status: u16 = std::str::from_utf8(status).ok()?.parse().ok()?;
    let (content_type, body) = bodies(status)?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut out = Vec::with_capacity(end + body.len() + 64);
    let mut saw_empty = false;
    for line in head.split_terminator("\r\n") {
        if line.eq_ignore_ascii_case("content-length: 0") {
            saw_empty = true;
            continue;
        }
        if line.to_ascii_lowercase().starts_with("content-type:") {
            return None;
        }
        if !line.is_empty() {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !saw_empty {
        return None;
    }
    out.extend_from_slice(
        format!(
            "content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    Some(out)
}

impl HyperIo {
    pub(crate) fn new(stream: TcpStream, activity: std::rc::Rc<ConnActivity>) -> Self {
        Self {
            stream: Stream::Plain(stream),
            activity,
            // Reading into our own buffer and copying avoids zero-filling
            // hyper's (much larger) read buffer on every read.
            scratch: vec![0u8; 16 << 10].into_boxed_slice(),
            error_bodies: None,
            rewritten: None,
        }
    }

    /// Gives hyper's own empty error answers a body (server side).
    pub(crate) fn with_error_bodies(mut self, bodies: EmptyErrorBody) -> Self {
        self.error_bodies = Some(bodies);
        self
    }

    /// The plain socket back, once the HTTP on it is over and the caller
    /// speaks another protocol on it (a WebSocket after `101`). Activity
    /// tracking ends here: that protocol keeps its own liveness. None for a
    /// TLS session (only outbound connections have one).
    pub(crate) fn into_plain(self) -> Option<TcpStream> {
        match self.stream {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }

    /// Connects to `addr` (for the outbound proxy client).
    pub(crate) async fn connect(
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
    pub(crate) async fn start_tls(
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
            error_bodies: self.error_bodies,
            rewritten: None,
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

impl HyperIo {
    /// Writes (part of) `buf`: every write goes through here.
    fn write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // hyper's own error answer is written in one call before the
        // connection closes (a request head it could not take was never
        // dispatched); anything else passes through untouched.
        if self.rewritten.is_none() && self.activity.request_started().is_some() {
            if let Some(out) = self.error_bodies.and_then(|f| rewrite_empty_error(buf, f)) {
                self.rewritten = Some((out, 0));
            }
        }
        if let Some((out, sent)) = &mut self.rewritten {
            // Report `buf` written only once all of the replacement is.
            while *sent < out.len() {
                match self.stream.poll_write(cx, &out[*sent..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => *sent += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.rewritten = None;
            self.activity.on_write();
            return Poll::Ready(Ok(buf.len()));
        }
        let r = self.stream.poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = r {
            self.activity.on_write();
        }
        r
    }
}

/// Vectored, so that hyper queues body buffers instead of copying them.
///
/// A non-vectored IO makes hyper "flatten": it copies every body into one
/// per-connection buffer, and that buffer keeps its largest size for the
/// connection's life. A keep-alive client polling a 2 MB worker list then
/// pins 2 MB (measured: RSS 9 MB -> 64 MB with 16 such connections, 46 MB
/// of it in hyper's write buffers, heaptrack). Queued, the body is the
/// response's own `Bytes` (often the shard's cached list, shared).
impl hyper::rt::Write for HyperIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Small parts (a head and a short body) go out in one write through
    /// the read scratch buffer (unused between reads), so a small response
    /// still costs one syscall; a large part is written from where it is.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = parts.next() else {
            return Poll::Ready(Ok(0));
        };
        if parts.next().is_none() || first.len() >= this.scratch.len() {
            return this.write(cx, first);
        }
        let mut scratch = std::mem::take(&mut this.scratch);
        let mut filled = 0;
        for part in bufs {
            let take = part.len().min(scratch.len() - filled);
            scratch[filled..filled + take].copy_from_slice(&part[..take]);
            filled += take;
            if filled == scratch.len() {
                break;
            }
        }
        let r = this.write(cx, &scratch[..filled]);
        this.scratch = scratch;
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream.poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(status: u16) -> Option<(&'static str, &'static [u8])> {
        (status == 431).then_some(("application/json", br#"{"detail":"big"}"#.as_slice()))
    }

    #[test]
    fn hyper_empty_error_answers_get_the_callers_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 05:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_empty_error(head, bodies).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(out.contains("\r\ndate: Wed"), "{out}");
        assert!(!out.contains("content-length: 0"), "{out}");
        assert!(
            out.ends_with(
                "content-type: application/json\r\ncontent-length: 16\r\n\r\n{\"detail\":\"big\"}"
            ),
            "{out}"
        );
    }

    #[test]
    fn other_writes_pass_untouched() {
        // A status without a body from the caller.
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_empty_error(head, bodies).is_none());
        // A response that already has a body or a type, or is not a whole head.
        let typed = b"HTTP/1.1 431 X\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_empty_error(typed, bodies).is_none());
        let sized = b"HTTP/1.1 431 X\r\ncontent-length: 5\r\n\r\n";
        assert!(rewrite_empty_error(sized, bodies).is_none());
        let with_body = b"HTTP/1.1 431 X\r\ncontent-length: 0\r\n\r\nabc";
        assert!(rewrite_empty_error(with_body, bodies).is_none());
        assert!(rewrite_empty_error(b"hello", bodies).is_none());
    }
}
