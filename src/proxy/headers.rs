//! Which headers cross the proxy: hop-by-hop headers (RFC 9110 7.6.1) never
//! do, in either direction; upstream, the client's headers lose our own
//! credentials (`guard::strip_credentials`) and gain `X-Forwarded-For`.
//!
//! Pure functions over a `HeaderMap`: the HTTP handlers call them when they
//! build an `Outbound`, and `forward` strips the worker's answer. This file
//! must not pick workers, connect or know about the request's body; the
//! `Host` and `Via` a forwarded request carries are set in `forward`, where
//! the worker is known.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};

use super::guard;

/// Hop-by-hop headers (RFC 9110 7.6.1) plus what we set ourselves.
const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for n in HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        h.remove(n);
    }
}

/// Request headers to send upstream: the client's minus hop-by-hop and
/// minus our own credentials (`guard::strip_credentials`: `X-API-Key`,
/// `Cookie`, and `Authorization` when it is ours), plus
/// `X-Forwarded-For` (appended to any the client sent).
pub(crate) fn upstream_headers(
    mut h: HeaderMap,
    peer: Option<IpAddr>,
    authorization_is_ours: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    guard::strip_credentials(&mut h, authorization_is_ours);
    // Set per attempt from the chosen worker's endpoint and the body.
    h.remove(HOST);
    h.remove(hyper::header::CONTENT_LENGTH);
    append_forwarded_for(&mut h, peer);
    h
}

/// Appends the client's address to `X-Forwarded-For` (or starts it).
pub(crate) fn append_forwarded_for(h: &mut HeaderMap, peer: Option<IpAddr>) {
    let Some(ip) = peer else { return };
    let xff = HeaderName::from_static("x-forwarded-for");
    let v = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(xff, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_xff_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("host", HeaderValue::from_static("coordinator"));
        let out = upstream_headers(h, Some("10.0.0.9".parse().unwrap()), false);
        assert!(out.get("connection").is_none() && out.get("x-secret").is_none());
        assert!(out.get("transfer-encoding").is_none() && out.get("host").is_none());
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(out["authorization"], "Bearer t");
    }
}
