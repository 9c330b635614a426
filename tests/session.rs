//! Browser sessions over real HTTP (2 shards): `POST /api/session` trades a
//! key for a signed `HttpOnly` cookie that every shard accepts on every
//! route its role may call; tampered, expired or foreign cookies are 401;
//! state-changing requests by cookie need a same-site `Origin` or
//! `X-Requested-With`; `DELETE /api/session` clears the cookie. Nothing
//! here waits on a clock: expired cookies are minted with a past `exp`.

mod common;

use common::*;
use coordinator::model::credential::{ApiKey, Role};
use coordinator::Config;
use serde_json::{json, Value};

const ADMIN: &str = "adm-key-0123456789";
const CLIENT: &str = "cli-key-0123456789";

fn with_role_keys(c: &mut Config) {
    c.keys = vec![
        ApiKey::new(ADMIN, Role::Admin),
        ApiKey::new(CLIENT, Role::Client),
    ];
    c.allowed_origins = vec!["https://dash.example".into()];
}

/// `POST /api/session` with `{"api_key": key}` on `conn`; asserts 200 and
/// returns the `Cookie` header value and the answer.
fn open_on(conn: &mut Conn, key: &str) -> (String, Resp) {
    let body = serde_json::to_vec(&json!({ "api_key": key })).unwrap();
    let r = conn.request("POST", "/api/session", &[], Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r.header("set-cookie").expect("Set-Cookie").to_string();
    let pair = set.split(';').next().unwrap().trim().to_string();
    assert!(pair.starts_with("coordinator_session="), "{set}");
    (pair, r)
}

fn open(addr: std::net::SocketAddr, key: &str) -> String {
    open_on(&mut Conn::open(addr), key).0
}

/// A session token signed with `secret`, as the server signs them.
fn mint(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// `s` with its first character changed (so it surely differs).
fn flip_first(s: &str) -> String {
    let first = if s.starts_with('A') { 'B' } else { 'A' };
    format!("{first}{}", &s[1..])
}

fn with_cookie(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    let mut h = vec![("Cookie", cookie)];
    h.extend_from_slice(extra);
    let b = body.map(|v| serde_json::to_vec(v).unwrap());
    Conn::open(addr).request(method, path, &h, b.as_deref())
}

#[test]
fn cookie_from_a_key_works_on_every_shard() {
    let s = start(2, with_role_keys);
    for issuer in 0..s.shards {
        let (cookie, r) = open_on(&mut conn_on_shard(s.addr, issuer), ADMIN);
        assert_eq!(r.shard(), issuer);
        let v = r.json();
        assert_eq!(v["role"], "admin");
        let exp = v["expires_at"].as_str().expect("expires_at");
        assert!(chrono::DateTime::parse_from_rfc3339(exp).is_ok(), "{exp}");
        let set = r.header("set-cookie").unwrap();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(set.split("; ").any(|a| a == attr), "{attr} in {set}");
        }
        assert!(!set.contains("Secure"), "plain http: {set}");
        // Every shard validates what `issuer` signed.
        for shard in 0..s.shards {
            let mut c = conn_on_shard(s.addr, shard);
            let r = c.request("GET", "/api/admin/stats", &[("Cookie", &cookie)], None);
            assert_eq!(
                r.status,
                200,
                "issued on {issuer}, used on {shard}: {}",
                r.text()
            );
            assert_eq!(r.shard(), shard);
        }
    }
    // The key may also come as X-API-Key with an empty body.
    let r = Conn::open(s.addr).request("POST", "/api/session", &[("X-API-Key", CLIENT)], None);
    assert_eq!((r.status, r.json()["role"].as_str()), (200, Some("client")));
    assert!(r.header("set-cookie").is_some());
}

#[test]
fn cookie_carries_the_role() {
    let s = start(2, with_role_keys);
    let cookie = open(s.addr, CLIENT);
    let r = with_cookie(s.addr, "GET", "/api/admin/stats", &cookie, &[], None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.detail().contains("Not enough permissions"),
        "{}",
        r.text()
    );
    let r = with_cookie(s.addr, "GET", "/api/services/list", &cookie, &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = with_cookie(s.addr, "GET", "/api/auth/verify", &cookie, &[], None);
    assert_eq!(
        r.json(),
        json!({"valid": true, "username": null, "role": "client"})
    );
    // Header credentials win over the cookie, either way.
    let r = with_cookie(
        s.addr,
        "GET",
        "/api/admin/stats",
        &cookie,
        &[("X-API-Key", ADMIN)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let admin = open(s.addr, ADMIN);
    let r = with_cookie(
        s.addr,
        "GET",
        "/api/admin/stats",
        &admin,
        &[("X-API-Key", CLIENT)],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn missing_bad_tampered_and_expired_credentials() {
    let s = start(2, with_role_keys);
    // No credential at all.
    let r = get(s.addr, "/api/admin/stats");
    assert_eq!(r.status, 401);
    let r = Conn::open(s.addr).request("POST", "/api/session", &[], None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post(s.addr, "/api/session", &json!({}));
    assert_eq!(r.status, 401, "{}", r.text());
    // Unknown key: 403 like other unknown keys, and no cookie.
    let r = post(s.addr, "/api/session", &json!({"api_key": "nope"}));
    assert_eq!((r.status, r.detail().as_str()), (403, "Invalid API key"));
    assert!(r.header("set-cookie").is_none());
    // Not a JSON object: 422 naming the body.
    let r = Conn::open(s.addr).request("POST", "/api/session", &[], Some(b"[1]"));
    assert_eq!(r.status, 422, "{}", r.text());

    // Tampered: the payload re-encoded with another role, the signature
    // kept; a cut signature; garbage.
    let cookie = open(s.addr, CLIENT);
    let token = cookie.strip_prefix("coordinator_session=").unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["role"], "client");
    claims["role"] = json!("admin");
    let forged_payload = b64.encode(serde_json::to_vec(&claims).unwrap());
    let tampered = [
        format!(
            "coordinator_session={}.{}.{}",
            parts[0], forged_payload, parts[2]
        ),
        format!(
            "coordinator_session={}.{}.{}",
            parts[0],
            parts[1],
            flip_first(parts[2])
        ),
        "coordinator_session=garbage".to_string(),
        "coordinator_session=".to_string(),
    ];
    for bad in &tampered {
        let r = with_cookie(s.addr, "GET", "/api/services/list", bad, &[], None);
        assert_eq!(r.status, 401, "{bad}: {}", r.text());
        assert_eq!(r.detail(), "Could not validate credentials");
    }

    // Minted with the server's own session key: a live token passes (so
    // the minting is right), the same token expired does not. Key 0 is
    // ADMIN (this config has no --api-key).
    let mut cfg = Config::default();
    with_role_keys(&mut cfg);
    let secret = cfg.session_secret();
    let now = jsonwebtoken::get_current_timestamp();
    let live = mint(
        &secret,
        &json!({"who": {"key": 0}, "role": "admin", "iat": now, "exp": now + 600}),
    );
    let r = with_cookie(
        s.addr,
        "GET",
        "/api/admin/stats",
        &format!("coordinator_session={live}"),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let expired = mint(
        &secret,
        &json!({"who": {"key": 0}, "role": "admin", "iat": now - 600, "exp": now - 60}),
    );
    // A role the key does not have, and a key index that does not exist.
    let wrong_role = mint(
        &secret,
        &json!({"who": {"key": 1}, "role": "admin", "iat": now, "exp": now + 600}),
    );
    let no_such_key = mint(
        &secret,
        &json!({"who": {"key": 7}, "role": "admin", "iat": now, "exp": now + 600}),
    );
    // Signed with another key (another config's), otherwise valid.
    let foreign = mint(
        &[7u8; 32],
        &json!({"who": {"key": 0}, "role": "admin", "iat": now, "exp": now + 600}),
    );
    for bad in [expired, wrong_role, no_such_key, foreign] {
        let r = with_cookie(
            s.addr,
            "GET",
            "/api/admin/stats",
            &format!("coordinator_session={bad}"),
            &[],
            None,
        );
        assert_eq!(r.status, 401, "{bad}: {}", r.text());
    }
}

#[test]
fn state_changing_requests_by_cookie_must_be_same_site() {
    let s = start(2, with_role_keys);
    let cookie = open(s.addr, ADMIN);
    let refused = |r: &Resp| {
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(
            r.detail().starts_with("Cross-site request refused: "),
            "{}",
            r.text()
        );
    };
    let reg = |id: &str| cpu_worker(id);
    let path = "/api/worker/register";
    // Neither Origin nor X-Requested-With.
    refused(&with_cookie(
        s.addr,
        "POST",
        path,
        &cookie,
        &[],
        Some(&reg("w-a")),
    ));
    // Another site's Origin; `null`.
    for o in ["http://evil.example", "null", "https://test.evil.example"] {
        refused(&with_cookie(
            s.addr,
            "POST",
            path,
            &cookie,
            &[("Origin", o)],
            Some(&reg("w-a")),
        ));
    }
    // DELETE is state-changing too.
    refused(&with_cookie(
        s.addr,
        "DELETE",
        "/api/worker/unregister/w-a",
        &cookie,
        &[],
        None,
    ));
    // This site's Origin (the request's Host is `test`), an allowed CORS
    // origin, or X-Requested-With: let through.
    for (i, h) in [
        ("Origin", "http://test"),
        ("Origin", "https://dash.example"),
        ("X-Requested-With", "XMLHttpRequest"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = with_cookie(
            s.addr,
            "POST",
            path,
            &cookie,
            &[h],
            Some(&reg(&format!("w-{i}"))),
        );
        assert_eq!(r.status, 200, "{h:?}: {}", r.text());
    }
    // By header: no Origin needed, and a foreign one changes nothing.
    let b = serde_json::to_vec(&reg("w-h")).unwrap();
    for extra in [None, Some(("Origin", "http://evil.example"))] {
        let mut h = vec![("X-API-Key", ADMIN)];
        h.extend(extra);
        let r = Conn::open(s.addr).request("POST", path, &h, Some(&b));
        assert_eq!(r.status, 200, "{extra:?}: {}", r.text());
    }
    // GET by cookie needs nothing.
    let r = with_cookie(s.addr, "GET", "/api/admin/workers", &cookie, &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn delete_clears_the_cookie() {
    let s = start(2, with_role_keys);
    let r = Conn::open(s.addr).request("DELETE", "/api/session", &[], None);
    assert_eq!(r.status, 204, "{}", r.text());
    let set = r.header("set-cookie").expect("Set-Cookie");
    assert!(set.starts_with("coordinator_session=;"), "{set}");
    for attr in ["Max-Age=0", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} in {set}");
    }
    // Other methods on the path: 405 with Allow (for a caller with a key).
    let r = Conn::open(s.addr).request("GET", "/api/session", &[("X-API-Key", ADMIN)], None);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, DELETE")));
}

#[test]
fn secure_behind_an_https_public_url() {
    let s = start(2, |c| {
        with_role_keys(c);
        c.public_url = Some("https://coord.example".into());
    });
    let r = post(s.addr, "/api/session", &json!({"api_key": CLIENT}));
    let set = r.header("set-cookie").unwrap();
    assert!(set.split("; ").any(|a| a == "Secure"), "{set}");
    let r = Conn::open(s.addr).request("DELETE", "/api/session", &[], None);
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));
}

#[test]
fn open_coordinator_needs_no_session() {
    let s = start(2, |_| {});
    let r = post(s.addr, "/api/session", &json!({"api_key": "anything"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"role": "admin", "expires_at": null, "open": true})
    );
    assert!(r.header("set-cookie").is_none());
}

#[test]
fn failed_attempts_are_rate_limited() {
    let s = start(2, |c| {
        with_role_keys(c);
        c.login_max_failures = 2;
    });
    // One connection: one shard, one limiter.
    let mut c = Conn::open(s.addr);
    let bad = serde_json::to_vec(&json!({"api_key": "nope"})).unwrap();
    for _ in 0..2 {
        assert_eq!(
            c.request("POST", "/api/session", &[], Some(&bad)).status,
            403
        );
    }
    let good = serde_json::to_vec(&json!({"api_key": ADMIN})).unwrap();
    let r = c.request("POST", "/api/session", &[], Some(&good));
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
}
