//! `coordinator --healthcheck`: one `GET /health` to a running coordinator
//! over plain `std::net`, for container health checks where no curl is
//! installed (the image is `debian:*-slim`) and for scripts.
//!
//! It owns that one request and its verdict (healthy only on status 200).
//! It must not start a runtime, open a database or read any configuration
//! beyond the address and key it is handed: it runs next to a live server
//! every few seconds and has to stay cheap and side-effect free.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The most of the response read before giving up on finding the status
/// line (it is the first line; nothing sane sends more before it).
const MAX_HEAD: usize = 8 << 10;

/// The address to probe for a server configured to listen on `host:port`:
/// loopback when it listens on every address (IPv4 `0.0.0.0`: 127.0.0.1,
/// IPv6 `::`: ::1), else the address itself.
pub fn probe_addr(host: Option<IpAddr>, port: u16) -> SocketAddr {
    let ip = match host {
        None | Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Some(ip) => ip,
    };
    SocketAddr::new(ip, port)
}

/// GETs `http://addr/health` within `timeout` (connect, send and read
/// together). `Ok` with a one-line summary on status 200; `Err` with the
/// reason otherwise (refused, timed out, another status, not HTTP).
/// `api_key` is sent as `X-API-Key`, for servers run with
/// `--protect-metrics`.
pub fn check_health(
    addr: SocketAddr,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("http://{addr}/health: no answer within {timeout:?}"))
    };
    let fail = |e: std::io::Error| format!("http://{addr}/health: {e}");
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    conn.set_write_timeout(Some(left()?)).map_err(fail)?;
    let mut req = format!(
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: coordinator-healthcheck\r\n\
         Accept: application/json\r\nConnection: close\r\n"
    );
    if let Some(k) = api_key.filter(|k| !k.is_empty()) {
        req.push_str(&format!("X-API-Key: {k}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).map_err(fail)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let line_end = loop {
        if let Some(i) = head.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if head.len() > MAX_HEAD {
            return Err(format!("http://{addr}/health: no status line"));
        }
        conn.set_read_timeout(Some(left()?)).map_err(fail)?;
        match conn.read(&mut buf) {
            Ok(0) => return Err(format!("http://{addr}/health: closed before a status line")),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    };
    let line = String::from_utf8_lossy(&head[..line_end]);
    let status = parse_status(&line)
        .ok_or_else(|| format!("http://{addr}/health: not an HTTP response: {line:?}"))?;
    if status == 200 {
        Ok(format!("healthy: http://{addr}/health answered 200"))
    } else {
        Err(format!("unhealthy: http://{addr}/health answered {status}"))
    }
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("HTTP/1.1 401"), Some(401));
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn probes_loopback_for_wildcard_listeners() {
        assert_eq!(probe_addr(None, 8080), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            probe_addr(Some("0.0.0.0".parse().unwrap()), 9000),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            probe_addr(Some("::".parse().unwrap()), 9000),
            "[::1]:9000".parse().unwrap()
        );
        assert_eq!(
            probe_addr(Some("10.1.2.3".parse().unwrap()), 80),
            "10.1.2.3:80".parse().unwrap()
        );
    }
}
