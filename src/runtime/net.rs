//! Listening sockets: bound up front on the calling thread, handed to shards.
//!
//! Binding before the executors start gives a clear error for a busy port
//! and resolves port 0 once, so every shard listens on the same ephemeral port.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `n` listening sockets to `addr` with SO_REUSEPORT; returns them and
/// the address actually bound (port 0 resolved).
pub(crate) fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n.max(1) {
        let domain = if bound.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let sk = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        sk.set_reuse_address(true)?;
        sk.set_reuse_port(true)?;
        sk.bind(&bound.into())?;
        sk.listen(backlog)?;
        if bound.port() == 0 {
            bound = sk
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        }
        out.push(std::net::TcpListener::from(sk));
    }
    Ok((out, bound))
}

/// An accepted TCP connection (futures-io `AsyncRead + AsyncWrite`).
pub(crate) type TcpConn = glommio::net::TcpStream;

/// A shard's listening socket.
pub(crate) struct Listener(glommio::net::TcpListener);

/// An accepted connection: the IO half for hyper plus its peer address.
pub(crate) struct Accepted {
    pub stream: TcpConn,
    pub peer: Option<SocketAddr>,
}

impl Listener {
    pub(crate) fn from_std(l: std::net::TcpListener) -> Self {
        // SAFETY: the fd comes from a listening std socket we own and give up.
        Self(unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) })
    }

    pub(crate) async fn accept(&self) -> io::Result<Accepted> {
        let stream = self.0.accept().await.map_err(io::Error::from)?;
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        Ok(Accepted { stream, peer })
    }
}

/// Answers one request with `bytes` and closes, without a reset: reads the
/// request head first (the client expects an answer to what it sent, and
/// closing a socket with unread input makes the kernel send RST, which can
/// destroy our answer in flight), writes, shuts the write half, and drains
/// until the client closes. All of it within `within`; a client that sends
/// nothing is closed without an answer when that passes.
pub(crate) async fn answer_and_close(
    mut stream: TcpConn,
    bytes: &[u8],
    within: std::time::Duration,
) {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let _ = super::timeout(within, async {
        let mut buf = [0u8; 4096];
        let mut seen: Vec<u8> = Vec::new();
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() > 16 << 10 {
                        break;
                    }
                }
            }
        }
        if stream.write_all(bytes).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        shut_and_drain(&mut stream, 64 << 10).await;
    })
    .await;
}

/// Closes a connection whose last bytes the caller has written and
/// flushed, without a reset: shuts the write half (the peer sees the end)
/// and reads until the peer closes too, discarding at most `max_drain`
/// bytes, all within `within`. Dropping a socket with unread input instead
/// makes the kernel send RST, which can destroy those last bytes in flight.
pub(crate) async fn finish(mut stream: TcpConn, within: std::time::Duration, max_drain: usize) {
    let _ = super::timeout(within, shut_and_drain(&mut stream, max_drain)).await;
}

async fn shut_and_drain(stream: &mut TcpConn, max_drain: usize) {
    use futures::AsyncReadExt;
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < max_drain {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}
