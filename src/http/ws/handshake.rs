//! The server side of the WebSocket opening handshake (RFC 6455 4.2) as
//! pure checks on a request head.
//!
//! Owns: what a valid handshake request is, which browser origins may open
//! one, and the `Sec-WebSocket-Accept` a valid one earns. Must not: do IO,
//! read state, or decide who may connect (the guard has, before this runs).

use base64::Engine as _;
use hyper::header::{HeaderValue, CONNECTION, HOST, ORIGIN, UPGRADE};
use hyper::{HeaderMap, Method, Version};

use crate::http::error::ApiError;

/// The one protocol version there is (RFC 6455 4.1).
pub(crate) const VERSION: &str = "13";

/// Appended to the client's key before hashing (RFC 6455 1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Checks a handshake request; on success, the `Sec-WebSocket-Accept`
/// value to answer with. `has_body` is whether the request announced a
/// body: a handshake has none, and bytes after its head must be the
/// client's first frames, not HTTP.
pub(crate) fn check(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    has_body: bool,
) -> Result<HeaderValue, ApiError> {
    if method != Method::GET {
        // The router lets HEAD through to GET routes; a handshake is GET only.
        return Err(ApiError::MethodNotAllowed { allow: "GET" });
    }
    // hyper hands over the connection after a 101 only on HTTP/1.1; on
    // 1.0 it would close it instead.
    if version != Version::HTTP_11 {
        return Err(bad("WebSocket handshake needs HTTP/1.1"));
    }
    if !has_token(headers, UPGRADE.as_str(), "websocket") {
        return Err(bad("WebSocket handshake needs 'Upgrade: websocket'"));
    }
    if !has_token(headers, CONNECTION.as_str(), "upgrade") {
        return Err(bad("WebSocket handshake needs 'Connection: Upgrade'"));
    }
    let mut versions = headers.get_all("sec-websocket-version").iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == VERSION.as_bytes() => {}
        _ => return Err(ApiError::WebSocketVersion),
    }
    let mut keys = headers.get_all("sec-websocket-key").iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.as_bytes().trim_ascii(),
        _ => return Err(bad("WebSocket handshake needs one Sec-WebSocket-Key")),
    };
    // A nonce of 16 bytes, base64 (RFC 6455 4.1, item 7).
    let nonce = base64::engine::general_purpose::STANDARD.decode(key);
    if nonce.map(|n| n.len()) != Ok(16) {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    if has_body {
        return Err(bad("WebSocket handshake must not have a body"));
    }
    Ok(accept_key(key))
}

/// Whether a browser page from the request's `Origin` may open a socket.
/// A browser sends its cookies with any WebSocket handshake, whatever page
/// opened it, and no CORS check applies: without this, any site a user
/// visits could open a session with the user's cookie. Allowed: no
/// `Origin` (not a browser), the coordinator's own origin (its `Host`), or
/// one `ALLOWED_ORIGINS` lists (`*` lists all).
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (authority, headers.get(HOST).and_then(|h| h.to_str().ok())) {
        (Some(a), Some(host)) => !a.is_empty() && a.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// `base64(SHA-1(key + GUID))` (RFC 6455 4.2.2, item 5.4).
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    HeaderValue::try_from(b64).expect("base64 is a valid header value")
}

/// Whether any `name` header holds `token` in its comma-separated list
/// (case-insensitive, as both `Connection` and `Upgrade` are).
fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn bad(detail: &str) -> ApiError {
    ApiError::BadRequest(detail.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 6455 1.3.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("host", "coord:8080"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", KEY),
        ]
    }

    fn run(pairs: &[(&'static str, &'static str)]) -> Result<HeaderValue, ApiError> {
        check(&Method::GET, Version::HTTP_11, &head(pairs), false)
    }

    fn status(r: Result<HeaderValue, ApiError>) -> u16 {
        r.err().map_or(200, |e| e.status().as_u16())
    }

    fn with(change: (&'static str, &'static str)) -> Vec<(&'static str, &'static str)> {
        let mut h: Vec<_> = good().into_iter().filter(|(k, _)| *k != change.0).collect();
        if !change.1.is_empty() {
            h.push(change);
        }
        h
    }

    #[test]
    fn accepts_the_rfc_example_with_its_accept_key() {
        assert_eq!(run(&good()).unwrap(), ACCEPT);
    }

    #[test]
    fn token_lists_and_case_are_accepted() {
        let h = with(("connection", "keep-alive, UPGRADE"));
        assert_eq!(status(run(&h)), 200);
        let h = with(("upgrade", "WebSocket"));
        assert_eq!(status(run(&h)), 200);
        // Several Connection headers: the token may be in any of them.
        let mut h = with(("connection", "keep-alive"));
        h.push(("connection", "upgrade"));
        assert_eq!(status(run(&h)), 200);
    }

    #[test]
    fn missing_or_wrong_upgrade_headers_are_400() {
        assert_eq!(status(run(&with(("upgrade", "")))), 400);
        assert_eq!(status(run(&with(("upgrade", "h2c")))), 400);
        assert_eq!(status(run(&with(("connection", "")))), 400);
        assert_eq!(status(run(&with(("connection", "keep-alive")))), 400);
        // "upgraded" is not the token "upgrade".
        assert_eq!(status(run(&with(("connection", "upgraded")))), 400);
    }

    #[test]
    fn other_versions_are_426_naming_13() {
        for v in ["8", "", "13, 8"] {
            let e = run(&with(("sec-websocket-version", v))).unwrap_err();
            assert_eq!(e.status().as_u16(), 426, "version {v:?}");
            let (name, value) = e.header().unwrap();
            assert_eq!(
                (name.as_str(), value.to_str().unwrap()),
                ("sec-websocket-version", "13")
            );
        }
    }

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        for k in [
            "",
            "not base64!",
            "AAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        ] {
            assert_eq!(
                status(run(&with(("sec-websocket-key", k)))),
                400,
                "key {k:?}"
            );
        }
        let mut two = good();
        two.push(("sec-websocket-key", KEY));
        assert_eq!(status(run(&two)), 400);
    }

    #[test]
    fn method_version_and_body() {
        let h = head(&good());
        let r = check(&Method::HEAD, Version::HTTP_11, &h, false);
        assert_eq!(status(r), 405);
        let r = check(&Method::GET, Version::HTTP_10, &h, false);
        assert_eq!(status(r), 400);
        let r = check(&Method::GET, Version::HTTP_11, &h, true);
        assert_eq!(status(r), 400);
    }

    #[test]
    fn origins() {
        let none: &[String] = &[];
        assert!(
            origin_allowed(&head(&good()), none),
            "no Origin: not a browser"
        );
        let mut h = good();
        h.push(("origin", "http://coord:8080"));
        assert!(origin_allowed(&head(&h), none), "same origin");
        let mut h = good();
        h.push(("origin", "https://evil.example"));
        assert!(!origin_allowed(&head(&h), none));
        assert!(origin_allowed(&head(&h), &["https://evil.example".into()]));
        assert!(origin_allowed(&head(&h), &["*".into()]));
        let mut h = good();
        h.push(("origin", "null"));
        assert!(!origin_allowed(&head(&h), none));
    }
}
