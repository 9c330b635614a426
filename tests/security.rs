//! API key and CORS.

mod common;

use common::*;
use serde_json::json;

#[test]
fn api_key_guards_api_routes_only() {
    let s = start(2, |c| c.api_key = Some("k3y".into()));
    let mut c = Conn::open(s.addr);
    let r = c.get("/api/admin/stats");
    assert_eq!(r.status, 401);
    assert!(r.detail().contains("X-API-Key"));
    let r = c.request("GET", "/api/admin/stats", &[("X-API-Key", "nope")], None);
    assert_eq!(r.status, 403);
    assert_eq!(r.detail(), "Invalid API key");
    let r = c.request("GET", "/api/admin/stats", &[("X-API-Key", "k3y")], None);
    assert_eq!(r.status, 200);
    let body = serde_json::to_vec(&cpu_worker("w")).unwrap();
    let r = c.request(
        "POST",
        "/api/worker/register",
        &[("x-api-key", "k3y")],
        Some(&body),
    );
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/health").status, 200);
    assert_eq!(c.get("/metrics").status, 200);

    let p = start(2, |c| {
        c.api_key = Some("k3y".into());
        c.protect_metrics = true;
    });
    assert_eq!(get(p.addr, "/metrics").status, 401);
    assert_eq!(get(p.addr, "/health").status, 401);
    let r = Conn::open(p.addr).request("GET", "/metrics", &[("X-API-Key", "k3y")], None);
    assert_eq!(r.status, 200);
}

#[test]
fn cors_preflight_and_simple_requests() {
    let s = start(2, |c| {
        c.allowed_origins = vec!["https://rmatool.org.uk".into()];
        c.api_key = Some("k".into());
    });
    let mut c = Conn::open(s.addr);
    let r = c.request(
        "OPTIONS",
        "/api/worker/register",
        &[
            ("Origin", "https://rmatool.org.uk"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type, x-api-key"),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://rmatool.org.uk")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, x-api-key")
    );
    let r = c.request(
        "OPTIONS",
        "/api/worker/register",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = c.request(
        "GET",
        "/health",
        &[("Origin", "https://rmatool.org.uk")],
        None,
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://rmatool.org.uk")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = c.request(
        "GET",
        "/health",
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(r.header("access-control-allow-origin"), None);

    let any = start(2, |c| c.allowed_origins = vec!["*".into()]);
    let r =
        Conn::open(any.addr).request("GET", "/health", &[("Origin", "https://x.example")], None);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let _ = json!({});
}
