//! The API's description: `/openapi.json` agrees with the router route for
//! route (both ways) and with the role table; `/docs` and `/redoc` load
//! only what the server itself serves; the embedded third-party files are
//! the npm packages' own (ui/vendor/packages.json).

mod common;

use std::collections::BTreeSet;

use common::*;
use coordinator::http::access::{need, SAMPLES};
use coordinator::http::Route;
use serde_json::{json, Value};

/// Methods an OpenAPI path item may hold.
const METHODS: [&str; 6] = ["get", "post", "put", "delete", "patch", "head"];

fn spec(addr: std::net::SocketAddr) -> Value {
    let r = get(addr, "/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// Every (METHOD, templated path) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// A concrete path for a templated one: values the handlers accept in form.
fn concrete(template: &str) -> String {
    template
        .replace("{worker_id}", "w-1")
        .replace("{task_id}", "t-0000000000000000-0000000000000000")
        .replace("{service}", "llm")
        .replace("{name}", "upload")
        .replace("{path}", "v1/x")
        .replace("/ui/{file}", "/ui/app.js")
        .replace("{file}", "swagger-ui.css")
}

/// Whether a concrete path matches a templated one (`{path}` takes one or
/// more segments, any other parameter exactly one).
fn matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('?').next().unwrap().split('/').collect();
    for (i, seg) in t.iter().enumerate() {
        if *seg == "{path}" {
            return p.len() > i;
        }
        let Some(got) = p.get(i) else { return false };
        if !(seg.starts_with('{') && !got.is_empty() || seg == got) {
            return false;
        }
    }
    t.len() == p.len()
}

/// Every operation of the document exists on the router: a request to it
/// (as admin) is never the router's 404 or 405; and every route of the
/// router (but 404, 405 and CORS preflights) is in the document, with the
/// role the access table gives it.
#[test]
fn spec_and_router_agree_route_for_route() {
    let srv = start(2, with_keys);
    let doc = spec(srv.addr);
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = operations(&doc);
    assert!(ops.len() >= 40, "{} operations", ops.len());

    let mut ids = BTreeSet::new();
    let mut conn = Conn::open(srv.addr);
    for (method, template, op) in &ops {
        let id = op["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_string()), "operationId {id} twice");
        let mut path = concrete(template);
        // Streams would not end: a bad cursor answers at once, from the
        // same route.
        if template.starts_with("/api/events") {
            path.push_str("?since=not-a-cursor");
        }
        let body = (method != "GET" && method != "DELETE").then_some(&b"{}"[..]);
        let r = conn.request(method, &path, &[("X-API-Key", ADMIN_KEY)], body);
        assert_ne!(
            r.status, 405,
            "{method} {path}: the router lacks the method"
        );
        let routers_404 = r.status == 404 && r.detail() == "Not Found";
        assert!(!routers_404, "{method} {path}: the router lacks the path");
        if r.header("connection") == Some("close") {
            conn = Conn::open(srv.addr);
        }
    }

    let skip = [Route::NotFound, Route::MethodNotAllowed, Route::Preflight];
    for (route, method, sample) in SAMPLES.iter().filter(|(r, _, _)| !skip.contains(r)) {
        let found: Vec<_> = ops
            .iter()
            .filter(|(m, t, _)| m == method && matches(t, sample))
            .collect();
        assert_eq!(found.len(), 1, "{route:?} ({method} {sample}) in the spec");
        let op = &found[0].2;
        assert_eq!(
            op["x-required-role"],
            need(*route, false).name(),
            "{method} {sample}"
        );
        let id = op["operationId"].as_str().unwrap();
        assert!(
            id == route.name() || id.starts_with(&format!("{}_", route.name())),
            "{id}"
        );
        // Secured operations name the three ways to give a credential.
        if need(*route, false).name() != "public" {
            let schemes: Vec<_> = op["security"]
                .as_array()
                .expect("security")
                .iter()
                .flat_map(|s| s.as_object().unwrap().keys().cloned())
                .collect();
            assert_eq!(schemes, ["api_key", "bearer", "session"], "{sample}");
        } else {
            assert!(op.get("security").is_none(), "{sample}");
        }
    }
    for name in ["api_key", "bearer", "session"] {
        assert!(doc["components"]["securitySchemes"][name].is_object());
    }
}

/// Every `$ref` of the document resolves, and every error reply is the
/// `{"detail"}` shape.
#[test]
fn references_resolve_and_errors_are_detail() {
    let srv = start(2, |_| {});
    let doc = spec(srv.addr);
    let mut refs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&doc, &mut refs);
    assert!(refs.len() > 50);
    for r in refs {
        let pointer = r.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    for (method, path, op) in operations(&doc) {
        for (code, resp) in op["responses"].as_object().unwrap() {
            if code.starts_with('4') || code.starts_with('5') {
                let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/Detail",
                    "{method} {path} {code}"
                );
            }
        }
    }
}

/// The spec's example bodies are accepted by the routes they document.
#[test]
fn the_documented_examples_work() {
    let srv = start(2, |_| {});
    let doc = spec(srv.addr);
    let body = |path: &str, method: &str| -> Value {
        let rb = &doc["paths"][path][method]["requestBody"]["content"]["application/json"];
        match rb.get("example") {
            Some(e) => e.clone(),
            None => rb["examples"]
                .as_object()
                .and_then(|e| e.values().next())
                .map(|e| e["value"].clone())
                .expect("an example"),
        }
    };
    let reg = body("/api/worker/register", "post");
    assert_eq!(post(srv.addr, "/api/worker/register", &reg).status, 200);
    let hb = body("/api/worker/heartbeat", "post");
    assert_eq!(post(srv.addr, "/api/worker/heartbeat", &hb).status, 200);
    let task = doc["components"]["schemas"]["TaskSubmit"]["example"].clone();
    assert_eq!(post(srv.addr, "/api/tasks", &task).status, 201);
    let job = body("/api/coordinator/broadcast-job", "post");
    let r = post(srv.addr, "/api/coordinator/broadcast-job", &job);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["broadcasted_to"], 1);
}

/// `/docs` and `/redoc` need no network: every script and style they name
/// is relative and served here with its type; the spec and the pages are
/// public even on a keyed coordinator (as in the FastAPI originals),
/// while the API itself is not.
#[test]
fn the_docs_pages_load_only_what_the_server_serves() {
    let srv = start(2, with_keys);
    let mut conn = Conn::open(srv.addr);
    for page in ["/docs", "/redoc", "/graphql"] {
        // A browser asks for HTML (GraphiQL is what it gets at /graphql).
        // /graphql needs a credential as every GraphQL request does (a
        // browser has its session cookie).
        let key = [("Accept", "text/html"), ("X-API-Key", ADMIN_KEY)];
        let headers = if page == "/graphql" {
            &key[..]
        } else {
            &key[..1]
        };
        let r = conn.request("GET", page, headers, None);
        assert_eq!(r.status, 200, "{page}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        let html = r.text();
        assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
        let mut refs = Vec::new();
        for attr in ["src=\"", "href=\"", "spec-url=\""] {
            for part in html.split(attr).skip(1) {
                refs.push(part.split('"').next().unwrap().to_string());
            }
        }
        // The spec is named by the page (ReDoc) or by its init script
        // (Swagger UI, which must not call out to a validator either).
        let init = get(srv.addr, "/docs/assets/swagger-init.js").text();
        let graphiql = get(srv.addr, "/docs/assets/graphiql-init.js").text();
        let names_spec = refs.iter().any(|r| r == "openapi.json")
            || (refs.iter().any(|r| r.ends_with("swagger-init.js"))
                && init.contains("url: \"openapi.json\"")
                && init.contains("validatorUrl: null"))
            || (refs.iter().any(|r| r.ends_with("graphiql-init.js"))
                && graphiql.contains("url: \"graphql\""));
        assert!(names_spec, "{page}: {refs:?}");
        // `data:,` is the empty favicon (no request at all).
        for r in refs.into_iter().filter(|r| !r.starts_with("data:")) {
            let a = get(srv.addr, &format!("/{r}"));
            assert_eq!(a.status, 200, "{page} -> {r}");
            assert!(!a.body.is_empty());
            let ty = a.header("content-type").unwrap();
            let want = match r.rsplit('.').next().unwrap() {
                "js" => "text/javascript",
                "css" => "text/css",
                _ => "application/json",
            };
            assert!(ty.starts_with(want), "{r}: {ty}");
        }
    }
    // The licences ship with the assets.
    for l in [
        "swagger-ui-dist.LICENSE.txt",
        "redoc.LICENSE.txt",
        "graphiql.LICENSE.txt",
        "react.LICENSE.txt",
        "react-dom.LICENSE.txt",
    ] {
        let r = get(srv.addr, &format!("/docs/assets/{l}"));
        assert_eq!(r.status, 200);
        assert!(r.text().contains("License") || r.text().contains("LICENSE"));
    }
    assert_eq!(get(srv.addr, "/docs/assets/nope.js").status, 404);
    assert_eq!(get(srv.addr, "/api/admin/stats").status, 401);
}

/// The embedded files are the recorded npm files, byte for byte.
#[test]
fn vendored_assets_are_the_recorded_npm_files() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/ui/vendor/packages.json")).unwrap(),
    )
    .unwrap();
    let srv = start(2, |_| {});
    // The dashboard's chart library is served with the dashboard.
    let served = |pkg: &str, name: &str| match pkg {
        "uplot" => get(srv.addr, &format!("/ui/{name}")).body,
        _ => get(srv.addr, &format!("/docs/assets/{name}")).body,
    };
    let mut checked = 0;
    for (pkg, p) in manifest["packages"].as_object().unwrap() {
        assert!(
            p["license"].is_string() && p["integrity"].as_str().unwrap().starts_with("sha512-")
        );
        for (file, f) in p["files"].as_object().unwrap() {
            let bytes = std::fs::read(format!("{root}/ui/vendor/{pkg}/{file}")).unwrap();
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(json!(hex), f["sha256"], "{pkg}/{file}");
            if file.ends_with(".js") || file.ends_with(".css") {
                assert_eq!(served(pkg, file), bytes, "{file} as served");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}
