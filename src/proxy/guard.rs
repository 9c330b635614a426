//! What the proxy refuses to do, as pure rules: connect to an address the
//! coordinator must not reach (SSRF), forward a request back to itself
//! (loops), let a client's path climb out of a worker's URL prefix, or hand
//! the coordinator's own credentials to a worker.
//!
//! The address rule is applied by `pool` on every resolved address just
//! before it connects (so a hostname cannot resolve around it); the rest
//! are applied when a request is turned into an `Outbound`. Nothing here
//! connects, resolves or allocates per request beyond the path it returns;
//! `interface_addrs` (read once at startup) is the one system call.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION, COOKIE};

/// An IP network `addr/prefix` (the address already masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, normalise(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask4(a, self.prefix) == n,
            (IpAddr::V6(n), IpAddr::V6(a)) => mask6(a, self.prefix) == n,
            _ => false,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask4(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(a);
    let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(bits & m)
}

fn mask6(a: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(a);
    let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(bits & m)
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address it
/// maps: the kernel connects to that, so the rules must judge that.
pub(crate) fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a single host).
/// Host bits set below the prefix are refused rather than silently masked:
/// `10.0.0.1/8` is more likely a typo than a wish for all of 10/8.
pub(crate) fn parse_net(s: &str) -> Result<Net, String> {
    let s = s.trim();
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not an IP network (want e.g. 10.0.0.0/8 or fd00::/8)"))?;
    let ip = normalise(ip);
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
        },
    };
    let masked = match ip {
        IpAddr::V4(a) => IpAddr::V4(mask4(a, prefix)),
        IpAddr::V6(a) => IpAddr::V6(mask6(a, prefix)),
    };
    if masked != ip {
        return Err(format!(
            "{s:?} has host bits set (did you mean {masked}/{prefix}?)"
        ));
    }
    Ok(Net { addr: ip, prefix })
}

/// Parses a comma-separated list of networks (`--worker-networks`).
/// Empty (or only commas/spaces) means "any address".
pub fn parse_networks(s: &str) -> Result<Vec<Net>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_net)
        .collect()
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Unspecified,
    LinkLocal,
    Ours,
    NotAllowed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unspecified => "the unspecified address",
            Refusal::LinkLocal => "a link-local address",
            Refusal::Ours => "the coordinator's own listening address",
            Refusal::NotAllowed => "outside --worker-networks",
        })
    }
}

/// The addresses the proxy may connect to.
#[derive(Debug, Clone)]
pub(crate) struct AddrGuard {
    /// Allowed networks; empty = any (after the fixed refusals).
    allowed: Vec<Net>,
    /// Where we listen (normalised).
    listen: SocketAddr,
    /// This host's interface addresses, consulted when we listen on every
    /// address (0.0.0.0 / ::): any of them at our port reaches us.
    local: Vec<IpAddr>,
}

impl AddrGuard {
    pub(crate) fn new(allowed: Vec<Net>, listen: SocketAddr, local: Vec<IpAddr>) -> Self {
        let listen = SocketAddr::new(normalise(listen.ip()), listen.port());
        let local = local.into_iter().map(normalise).collect();
        Self {
            allowed,
            listen,
            local,
        }
    }

    /// May the proxy connect to `addr`?
    pub(crate) fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let ip = normalise(addr.ip());
        if ip.is_unspecified() {
            return Err(Refusal::Unspecified);
        }
        let link_local = match ip {
            IpAddr::V4(a) => a.is_link_local(),
            // fe80::/10
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        if link_local {
            return Err(Refusal::LinkLocal);
        }
        if self.is_ours(ip, addr.port()) {
            return Err(Refusal::Ours);
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|n| n.contains(ip)) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    fn is_ours(&self, ip: IpAddr, port: u16) -> bool {
        if port != self.listen.port() || port == 0 {
            return false;
        }
        if self.listen.ip().is_unspecified() {
            // Listening everywhere: loopback and every interface address
            // at our port is us (v4 and v6 alike: `::` is usually dual-stack).
            ip.is_loopback() || self.local.contains(&ip)
        } else {
            ip == self.listen.ip()
        }
    }
}

/// This host's interface addresses (`getifaddrs`); empty if unavailable.
/// Called once at startup, never on a shard's request path.
pub(crate) fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then
    // free with freeifaddrs; each ifa_addr is checked for null and its
    // family before it is cast to the matching sockaddr type.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Why a client's path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathError {
    /// `..` would leave the worker's URL prefix.
    Climbs,
    /// An encoded `/` or `\` (or a raw `\`): some servers decode these into
    /// separators after our check, which would undo it.
    EncodedSeparator,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Climbs => "Path climbs above the service root ('..')",
            PathError::EncodedSeparator => {
                "Path contains an encoded '/' or '\\' (%2F, %5C) or a backslash"
            }
        })
    }
}

/// Is this raw segment `.` or `..` once `%2e` is decoded?
fn dots(seg: &str) -> Option<usize> {
    let b = seg.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b.len() >= i + 3 && b[i] == b'%' && b[i + 1] == b'2' && (b[i + 2] | 0x20) == b'e'
        {
            i += 3;
        } else {
            return None;
        }
        n += 1;
        if n > 2 {
            return None;
        }
    }
    (n > 0).then_some(n)
}

/// Normalises the raw (still percent-encoded) path after
/// `/service/<svc>/` into `/...`, the path appended to the worker's URL
/// prefix: `.` and `..` segments are resolved (also when written `%2e`,
/// any case), and a `..` that would climb above the start is refused.
/// Other segments pass through with their encoding unchanged. Encoded
/// `/` and `\` are refused outright. The query is not part of `raw`.
pub(crate) fn normalise_path(raw: &str) -> Result<String, PathError> {
    if raw.contains('\\') {
        return Err(PathError::EncodedSeparator);
    }
    let lower = |i: usize| raw.as_bytes().get(i).map(u8::to_ascii_lowercase);
    for (i, _) in raw.match_indices('%') {
        match (lower(i + 1), lower(i + 2)) {
            (Some(b'2'), Some(b'f')) | (Some(b'5'), Some(b'c')) => {
                return Err(PathError::EncodedSeparator)
            }
            _ => {}
        }
    }
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in raw.split('/') {
        trailing = false;
        match dots(seg) {
            Some(1) => trailing = true,
            Some(_) => {
                out.pop().ok_or(PathError::Climbs)?;
                trailing = true;
            }
            None => out.push(seg),
        }
    }
    let mut s = String::with_capacity(raw.len() + 1);
    s.push('/');
    s.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        s.push('/');
    }
    Ok(s)
}

/// Removes the coordinator's own credentials before a request goes to a
/// worker: `X-API-Key` always (it is only ever ours), `Cookie` always (a
/// cookie sent to us is ours, the worker is another party), and
/// `Authorization` when the HTTP layer recognised it as one of our keys or
/// login tokens (`authorization_is_ours`). Any other `Authorization` is the
/// client's business with the worker and passes.
pub(crate) fn strip_credentials(h: &mut HeaderMap, authorization_is_ours: bool) {
    h.remove(HeaderName::from_static("x-api-key"));
    h.remove(COOKIE);
    if authorization_is_ours {
        h.remove(AUTHORIZATION);
    }
}

/// A `Via` received-by token naming this coordinator process (RFC 9110
/// 7.6.3): random per server start, so two coordinators chained on purpose
/// do not mistake each other for themselves.
pub(crate) fn via_token() -> String {
    format!("coordinator-{:016x}", fastrand::u64(..))
}

/// Did the request already pass through the coordinator named `token`?
pub(crate) fn has_via(h: &HeaderMap, token: &str) -> bool {
    h.get_all(hyper::header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.split_whitespace().nth(1) == Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain() {
        let n = parse_net("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.3.4".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        // IPv4-mapped IPv6 is judged as the IPv4 address.
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        let h = parse_net("192.168.1.7").unwrap();
        assert_eq!(h.to_string(), "192.168.1.7/32");
        assert!(h.contains("192.168.1.7".parse().unwrap()));
        assert!(!h.contains("192.168.1.8".parse().unwrap()));
        let v6 = parse_net("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all = parse_net("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(parse_net("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0.1/8", "x", "10.0.0.0/", "::/129", ""] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        let l = parse_networks(" 10.0.0.0/8, fd00::/8 ,").unwrap();
        assert_eq!(l.len(), 2);
        assert!(parse_networks("").unwrap().is_empty());
        assert!(parse_networks("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn fixed_refusals_apply_whatever_is_allowed() {
        let g = AddrGuard::new(
            parse_networks("0.0.0.0/0,::/0").unwrap(),
            sa("127.0.0.1:8080"),
            vec![],
        );
        assert_eq!(g.check(sa("169.254.169.254:80")), Err(Refusal::LinkLocal));
        assert_eq!(g.check(sa("[fe80::1]:80")), Err(Refusal::LinkLocal));
        assert_eq!(
            g.check(sa("[::ffff:169.254.169.254]:80")),
            Err(Refusal::LinkLocal)
        );
        assert_eq!(g.check(sa("0.0.0.0:80")), Err(Refusal::Unspecified));
        assert_eq!(g.check(sa("[::]:80")), Err(Refusal::Unspecified));
        assert_eq!(g.check(sa("127.0.0.1:8080")), Err(Refusal::Ours));
        assert_eq!(g.check(sa("[::ffff:127.0.0.1]:8080")), Err(Refusal::Ours));
        // Same host, another port; another loopback address: not us.
        assert_eq!(g.check(sa("127.0.0.1:8081")), Ok(()));
        assert_eq!(g.check(sa("127.0.0.2:8080")), Ok(()));
        assert_eq!(g.check(sa("10.1.1.1:8080")), Ok(()));
    }

    #[test]
    fn listening_everywhere_makes_every_local_address_ours() {
        let g = AddrGuard::new(
            vec![],
            sa("0.0.0.0:9000"),
            vec!["192.168.5.5".parse().unwrap()],
        );
        for us in [
            "127.0.0.1:9000",
            "127.8.9.1:9000",
            "[::1]:9000",
            "192.168.5.5:9000",
        ] {
            assert_eq!(g.check(sa(us)), Err(Refusal::Ours), "{us}");
        }
        assert_eq!(g.check(sa("192.168.5.6:9000")), Ok(()));
        assert_eq!(g.check(sa("127.0.0.1:9001")), Ok(()));
        let g6 = AddrGuard::new(vec![], sa("[::]:9000"), vec![]);
        assert_eq!(g6.check(sa("127.0.0.1:9000")), Err(Refusal::Ours));
    }

    #[test]
    fn worker_networks_restrict() {
        let g = AddrGuard::new(
            parse_networks("10.0.0.0/8").unwrap(),
            sa("0.0.0.0:9000"),
            vec![],
        );
        assert_eq!(g.check(sa("10.0.0.7:8000")), Ok(()));
        assert_eq!(g.check(sa("127.0.0.1:8000")), Err(Refusal::NotAllowed));
        assert_eq!(g.check(sa("[::1]:8000")), Err(Refusal::NotAllowed));
        assert_eq!(g.check(sa("[::ffff:10.0.0.7]:8000")), Ok(()));
    }

    #[test]
    fn paths_normalise_and_never_climb() {
        let ok = |raw: &str, want: &str| assert_eq!(normalise_path(raw).as_deref(), Ok(want));
        ok("", "/");
        ok("v1/items/7", "/v1/items/7");
        ok("a/./b", "/a/b");
        ok("a/b/../c", "/a/c");
        ok("a/", "/a/");
        ok("a/.", "/a/");
        ok("a/b/..", "/a/");
        ok("a/..", "/");
        ok("a/%2e%2E/b", "/b");
        ok("a/.%2e/b", "/b");
        ok("%2e/x", "/x");
        ok("a%20b/c%3Fd", "/a%20b/c%3Fd");
        ok("...", "/...");
        ok("a..b/.x", "/a..b/.x");
        for bad in [
            "..",
            "../x",
            "a/../../x",
            "%2e%2e/x",
            "a/%2E%2e/%2e./b",
            "./..",
        ] {
            assert_eq!(normalise_path(bad), Err(PathError::Climbs), "{bad}");
        }
        for bad in ["a%2f..%2f..%2fx", "a%2F", "a%5cb", "a\\..\\x"] {
            assert_eq!(
                normalise_path(bad),
                Err(PathError::EncodedSeparator),
                "{bad}"
            );
        }
    }

    #[test]
    fn our_credentials_are_stripped_and_others_pass() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert("cookie", HeaderValue::from_static("session=1"));
        h.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        h.insert("x-custom", HeaderValue::from_static("yes"));
        strip_credentials(&mut h, true);
        assert!(h.get("x-api-key").is_none() && h.get("cookie").is_none());
        assert!(h.get("authorization").is_none());
        assert_eq!(h["x-custom"], "yes");
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer theirs"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        strip_credentials(&mut h, false);
        assert_eq!(h["authorization"], "Bearer theirs");
        assert!(h.get("x-api-key").is_none());
    }

    #[test]
    fn via_tokens_are_recognised_among_hops() {
        let me = via_token();
        assert!(me.starts_with("coordinator-") && me != via_token());
        let mut h = HeaderMap::new();
        assert!(!has_via(&h, &me));
        h.insert(
            "via",
            HeaderValue::from_str(&format!("1.0 fred, 1.1 {me}")).unwrap(),
        );
        assert!(has_via(&h, &me));
        assert!(!has_via(&h, "coordinator-0"));
        h.insert("via", HeaderValue::from_str(&format!("1.1 {me}x")).unwrap());
        assert!(!has_via(&h, &me));
    }
}
