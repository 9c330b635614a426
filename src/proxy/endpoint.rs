//! Worker endpoints as the proxy sees them: a registered `tunnel_url` /
//! `endpoint` string parsed into scheme, host, port and path prefix.
//!
//! Parsing happens once per worker list fetch (in [`super::Upstream::of`]),
//! not per request. This file is pure: it must not resolve names, open
//! sockets or know about TLS settings; it only says where to go and how
//! (`http` or `https`, an IP literal that needs no DNS, or a name that does).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Scheme, host and port: what makes two connections interchangeable, so
/// it keys the keep-alive pool. The host is lowercase, without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// Where to send a worker's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub origin: Origin,
    /// The host is an IP literal: connect to it directly, no DNS.
    pub ip: Option<IpAddr>,
    /// `Host` header value: host, plus `:port` unless it is the scheme's default.
    pub authority: String,
    /// Path the worker's API lives under (no trailing slash), prepended to
    /// every forwarded path.
    pub prefix: String,
}

/// Parses a worker endpoint: `http://host[:port][/prefix]`,
/// `https://host[:port][/prefix]`, or a bare `host[:port]` (plain HTTP on
/// `default_port`, the service's port, else 80). Hosts may be names, IPv4
/// or bracketed IPv6 literals (a bare unbracketed IPv6 address works too).
pub(crate) fn parse_endpoint(
    endpoint: &str,
    default_port: Option<u16>,
) -> Result<Endpoint, String> {
    let endpoint = endpoint.trim();
    // Only a bare address takes the caller's port; a URL's is its scheme's.
    let (scheme, rest, given) = match endpoint.split_once("://") {
        Some((s, r)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, r, None),
        Some((s, r)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, r, None),
        Some((s, _)) => return Err(format!("unsupported endpoint scheme {s:?} in {endpoint:?}")),
        None => (Scheme::Http, endpoint, default_port),
    };
    let port_default = given.unwrap_or(scheme.default_port());
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // Only a path travels on; a query or fragment in a registered URL
    // has no meaning for the forwarded request.
    let path = path.split(['?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "credentials in endpoint {endpoint:?} are not supported"
        ));
    }
    let bad_port = || format!("bad port in endpoint {endpoint:?}");
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, tail) = h
            .split_once(']')
            .ok_or_else(|| format!("bad IPv6 literal in endpoint {endpoint:?}"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port())?,
            None if tail.is_empty() => port_default,
            None => return Err(bad_port()),
        };
        (h, port)
    } else if authority.parse::<Ipv6Addr>().is_ok() {
        (authority, port_default)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad_port())?),
            None => (authority, port_default),
        }
    };
    if port == 0 {
        return Err(bad_port());
    }
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) if authority.starts_with('[') => {
            return Err(format!("bad IPv6 literal in endpoint {endpoint:?}"))
        }
        Err(_) if valid_hostname(host) => None,
        Err(_) => return Err(format!("bad host {host:?} in endpoint {endpoint:?}")),
    };
    let host = host.to_ascii_lowercase();
    let bracketed = matches!(ip, Some(IpAddr::V6(_)));
    let authority = match (bracketed, port == scheme.default_port()) {
        (false, true) => host.clone(),
        (false, false) => format!("{host}:{port}"),
        (true, true) => format!("[{host}]"),
        (true, false) => format!("[{host}]:{port}"),
    };
    Ok(Endpoint {
        origin: Origin { scheme, host, port },
        ip,
        authority,
        prefix: path.trim_end_matches('/').to_string(),
    })
}

/// Letters, digits, `-`, `_` and dots between non-empty labels (RFC 1123,
/// plus `_`, which real DHCP/mDNS names carry). Catches typos such as a
/// space or a stray scheme before a lookup is attempted.
fn valid_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(e: &str) -> Endpoint {
        parse_endpoint(e, None).unwrap_or_else(|err| panic!("{e}: {err}"))
    }

    #[test]
    fn ip_literals_need_no_dns() {
        let t = p("http://127.0.0.1:8105");
        assert_eq!(t.origin.scheme, Scheme::Http);
        assert_eq!((t.origin.host.as_str(), t.origin.port), ("127.0.0.1", 8105));
        assert_eq!(t.ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (t.authority.as_str(), t.prefix.as_str()),
            ("127.0.0.1:8105", "")
        );
        let t = p("http://10.0.0.2/api/");
        assert_eq!(t.origin.port, 80);
        assert_eq!(t.authority, "10.0.0.2");
        assert_eq!(t.prefix, "/api");
        let t = parse_endpoint("10.0.0.3", Some(8104)).unwrap();
        assert_eq!((t.origin.scheme, t.origin.port), (Scheme::Http, 8104));
        assert_eq!(t.authority, "10.0.0.3:8104");
    }

    #[test]
    fn ipv6_literals_bracketed_or_bare() {
        let t = p("http://[::1]:81");
        assert_eq!(t.ip, Some("::1".parse().unwrap()));
        assert_eq!((t.origin.host.as_str(), t.origin.port), ("::1", 81));
        assert_eq!(t.authority, "[::1]:81");
        assert_eq!(t.origin.to_string(), "http://[::1]:81");
        let t = p("https://[fd00::7]/v1");
        assert_eq!((t.origin.port, t.authority.as_str()), (443, "[fd00::7]"));
        assert_eq!(t.prefix, "/v1");
        let t = parse_endpoint("fd00::8", Some(8102)).unwrap();
        assert_eq!(t.ip, Some("fd00::8".parse().unwrap()));
        assert_eq!(t.origin.port, 8102);
        assert!(parse_endpoint("http://[::1", None).is_err());
        assert!(parse_endpoint("http://[not-v6]:80", None).is_err());
        assert!(parse_endpoint("http://[::1]x", None).is_err());
    }

    #[test]
    fn hostnames_and_https_with_default_ports() {
        let t = p("https://abc.trycloudflare.com");
        assert_eq!(t.origin.scheme, Scheme::Https);
        assert_eq!(t.origin.host, "abc.trycloudflare.com");
        assert_eq!((t.origin.port, t.ip), (443, None));
        assert_eq!(t.authority, "abc.trycloudflare.com");
        let t = p("HTTP://GPU-Box.lan:8000/");
        assert_eq!(t.origin.scheme, Scheme::Http);
        assert_eq!(
            (t.origin.host.as_str(), t.origin.port),
            ("gpu-box.lan", 8000)
        );
        assert_eq!(
            (t.authority.as_str(), t.prefix.as_str()),
            ("gpu-box.lan:8000", "")
        );
        let t = p("https://w.example:8443/base/path?ignored=1");
        assert_eq!(t.origin.to_string(), "https://w.example:8443");
        assert_eq!(t.prefix, "/base/path");
        let t = p("http://localhost");
        assert_eq!((t.origin.port, t.ip), (80, None));
        let t = parse_endpoint("gpu_box.local", Some(8105)).unwrap();
        assert_eq!(
            (t.origin.host.as_str(), t.origin.port),
            ("gpu_box.local", 8105)
        );
        // The scheme's default port is left out of the Host header.
        assert_eq!(p("https://h.example:443").authority, "h.example");
        assert_eq!(p("http://h.example:443").authority, "h.example:443");
    }

    #[test]
    fn bad_endpoints_are_refused_with_a_reason() {
        for (e, why) in [
            ("ftp://x.example", "scheme"),
            ("http://1.2.3.4:notaport", "port"),
            ("http://h.example:0", "port"),
            ("http://h.example:70000", "port"),
            ("http://user:pw@h.example", "credentials"),
            ("http://bad host", "host"),
            ("http://", "host"),
            ("http://a..b", "host"),
        ] {
            let err = parse_endpoint(e, None).unwrap_err();
            assert!(err.contains(why), "{e}: {err}");
        }
    }
}
