//! Roles, keys, users and login over real HTTP (2 shards): the whole route
//! table with every kind of credential, path spellings that must not get
//! around it, worker-id scopes, login tokens, expiry and the rate limit.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use coordinator::http::access::{need, Need, SAMPLES};
use coordinator::http::Route;
use coordinator::model::credential::{hash_password, ApiKey, Role, Secret, User};
use coordinator::Config;
use serde_json::json;

const ADMIN: &str = "adm-key-0123456789";
const WORKER: &str = "wrk-key-0123456789";
const CLIENT: &str = "cli-key-0123456789";
const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

fn with_role_keys(c: &mut Config) {
    c.keys = vec![
        ApiKey::new(ADMIN, Role::Admin),
        ApiKey::new(WORKER, Role::Worker),
        ApiKey::new(CLIENT, Role::Client),
    ];
}

/// A body the route's handler can read (its answer does not matter here,
/// only whether the guard let the request through).
fn sample_body(route: Route) -> Option<Vec<u8>> {
    let v = match route {
        Route::Register => cpu_worker("w-table"),
        Route::Heartbeat => json!({"worker_id": "w-nobody"}),
        _ => json!({}),
    };
    Some(serde_json::to_vec(&v).unwrap())
}

fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    route: Route,
    auth: &[(&str, &str)],
) -> Resp {
    let body = if method == "POST" {
        sample_body(route)
    } else {
        None
    };
    // A stream never ends: past the credential check, a malformed cursor
    // makes it answer (400) at once.
    let path = match route {
        Route::Events => format!("{path}?since=x"),
        _ => path.to_string(),
    };
    Conn::open(addr).request(method, &path, auth, body.as_deref())
}

/// Every route with no credential, each role's key (as `X-API-Key` and as
/// `Authorization: Bearer`), asserting 401 / 403 / let through per the table.
#[test]
fn whole_route_table_with_every_credential() {
    for protect in [false, true] {
        let s = start(2, |c| {
            with_role_keys(c);
            c.protect_metrics = protect;
        });
        for (route, method, path) in SAMPLES {
            let need = need(route, protect);
            let r = send(s.addr, method, path, route, &[]);
            if route == Route::SessionCreate {
                // Public, but it is the credential check itself: no key, 401.
                assert_eq!(r.status, 401, "{method} {path} without key: {}", r.text());
            } else if need == Need::Public {
                assert!(
                    r.status != 401 && r.status != 403,
                    "{method} {path} public, got {} {}",
                    r.status,
                    r.text()
                );
            } else {
                assert_eq!(r.status, 401, "{method} {path} without key: {}", r.text());
                assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            }
            for (key, role) in [
                (ADMIN, Role::Admin),
                (WORKER, Role::Worker),
                (CLIENT, Role::Client),
            ] {
                let bearer = format!("Bearer {key}");
                for auth in [("X-API-Key", key), ("Authorization", bearer.as_str())] {
                    let r = send(s.addr, method, path, route, &[auth]);
                    if need.allows(role) {
                        assert!(
                            r.status != 401 && r.status != 403,
                            "{method} {path} as {role:?} ({}) refused: {} {}",
                            auth.0,
                            r.status,
                            r.text()
                        );
                    } else {
                        assert_eq!(r.status, 403, "{method} {path} as {role:?}: {}", r.text());
                        assert!(
                            r.detail().contains("Not enough permissions"),
                            "{}",
                            r.text()
                        );
                    }
                }
            }
        }
        // Unknown credentials: a key header as before (403), a bearer
        // credential as the originals' token check (401).
        let r = send(
            s.addr,
            "GET",
            "/api/admin/stats",
            Route::AdminStats,
            &[("X-API-Key", "nope")],
        );
        assert_eq!((r.status, r.detail().as_str()), (403, "Invalid API key"));
        let r = send(
            s.addr,
            "GET",
            "/api/services/list",
            Route::ServicesList,
            &[("Authorization", "Bearer nope")],
        );
        assert_eq!(
            (r.status, r.detail().as_str()),
            (401, "Could not validate credentials")
        );
    }
}

/// Spellings of a protected path: each either is not that route (and then
/// needs a credential anyway, or is a client route) or is refused.
#[test]
fn path_tricks_never_bypass() {
    let s = start(2, with_role_keys);
    let tricks = [
        "//api/admin/stats",
        "/API/admin/stats",
        "/%61pi/admin/stats",
        "/api/%61dmin/stats",
        "/api//admin/stats",
        "/api/admin/./stats",
        "/api/admin/stats/",
        "/service/../api/admin/stats",
        "/service/%2e%2e/api/admin/stats",
        "/health/../api/admin/stats",
        "http://test/api/admin/stats",
        "http://test//api/admin/stats",
    ];
    for path in tricks {
        let r = Conn::open(s.addr).request("GET", path, &[], None);
        assert_eq!(r.status, 401, "{path} without key: {}", r.text());
        // A client key never gets the admin view by spelling.
        let r = Conn::open(s.addr).request("GET", path, &[("X-API-Key", CLIENT)], None);
        assert_ne!(r.status, 200, "{path} as client: {}", r.text());
        assert!(
            r.json().get("total_workers").is_none(),
            "{path}: {}",
            r.text()
        );
        let r = Conn::open(s.addr).request("GET", path, &[("X-API-Key", WORKER)], None);
        assert_ne!(r.status, 200, "{path} as worker: {}", r.text());
    }
    // The absolute form of the real path is that route, with its check.
    let r = Conn::open(s.addr).request(
        "GET",
        "http://test/api/admin/stats",
        &[("X-API-Key", CLIENT)],
        None,
    );
    assert_eq!(r.status, 403);
    let r = Conn::open(s.addr).request(
        "GET",
        "http://test/api/admin/stats",
        &[("X-API-Key", ADMIN)],
        None,
    );
    assert_eq!(r.status, 200);
}

#[test]
fn service_proxy_needs_a_client_key() {
    // `--api-key` alone: it now guards /service/* too.
    let s = start(2, |c| c.api_key = Some("k3y".into()));
    assert_eq!(get(s.addr, "/service/llm/v1/completions").status, 401);
    let r = Conn::open(s.addr).request(
        "GET",
        "/service/llm/v1/completions",
        &[("X-API-Key", "k3y")],
        None,
    );
    assert!(r.status != 401 && r.status != 403, "{}", r.text());

    let s = start(2, with_role_keys);
    let path = "/service/llm/v1/completions";
    assert_eq!(call(s.addr, "POST", path, Some(&json!({}))).status, 401);
    let r = Conn::open(s.addr).request("POST", path, &[("X-API-Key", WORKER)], Some(b"{}"));
    assert_eq!(r.status, 403);
    // Let through: no worker serves llm, so the proxy answers 503.
    let r = Conn::open(s.addr).request("POST", path, &[("X-API-Key", CLIENT)], Some(b"{}"));
    assert_eq!(r.status, 503, "{}", r.text());
}

#[test]
fn worker_keys_limited_to_id_patterns() {
    let s = start(2, |c| {
        let mut gpu = ApiKey::new("gpu-fleet", Role::Worker);
        gpu.workers = vec!["gpu-*".into()];
        c.keys = vec![gpu, ApiKey::new(ADMIN, Role::Admin)];
    });
    let k = [("X-API-Key", "gpu-fleet")];
    let a = [("X-API-Key", ADMIN)];
    let body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let mut c = Conn::open(s.addr);
    let r = c.request(
        "POST",
        "/api/worker/register",
        &k,
        Some(&body(gpu_worker("gpu-1"))),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(
        "POST",
        "/api/worker/register",
        &k,
        Some(&body(cpu_worker("cpu-1"))),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.detail().contains("cpu-1"), "{}", r.text());
    // No id: the generated `worker-...` id does not match `gpu-*`.
    let r = c.request("POST", "/api/worker/register", &k, Some(b"{}"));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c.request(
        "POST",
        "/api/worker/register",
        &a,
        Some(&body(cpu_worker("cpu-1"))),
    );
    assert_eq!(r.status, 200);

    let hb = |id: &str| body(json!({"worker_id": id}));
    assert_eq!(
        c.request("POST", "/api/worker/heartbeat", &k, Some(&hb("gpu-1")))
            .status,
        200
    );
    assert_eq!(
        c.request("POST", "/api/worker/heartbeat", &k, Some(&hb("cpu-1")))
            .status,
        403
    );
    assert_eq!(
        c.request("GET", "/api/worker/tasks?worker_id=gpu-1", &k, None)
            .status,
        200
    );
    assert_eq!(
        c.request("GET", "/api/worker/tasks?worker_id=cpu-1", &k, None)
            .status,
        403
    );
    let done = |id: &str| body(json!({"worker_id": id, "task_id": "t-x", "result": {}}));
    assert_eq!(
        c.request(
            "POST",
            "/api/worker/task-complete",
            &k,
            Some(&done("cpu-1"))
        )
        .status,
        403
    );
    // Allowed through the scope; the task does not exist.
    assert_eq!(
        c.request(
            "POST",
            "/api/worker/task-complete",
            &k,
            Some(&done("gpu-1"))
        )
        .status,
        404
    );
    assert_eq!(
        c.request("DELETE", "/api/worker/unregister/cpu-1", &k, None)
            .status,
        403
    );
    assert_eq!(
        c.request("DELETE", "/api/worker/unregister/gpu-1", &k, None)
            .status,
        200
    );
    // cpu-1 is still there.
    assert_eq!(
        c.request("POST", "/api/worker/heartbeat", &a, Some(&hb("cpu-1")))
            .status,
        200
    );
}

fn user(name: &str, password: &str, role: Role) -> User {
    User {
        username: name.into(),
        password_hash: Secret(hash_password(password).unwrap()),
        role,
    }
}

fn with_users(c: &mut Config) {
    c.users = vec![
        user("carol", "carol-pw", Role::Client),
        user("root", "root-pw", Role::Admin),
    ];
    c.jwt_secret = Some(SECRET.into());
}

fn login(c: &mut Conn, username: &str, password: &str) -> Resp {
    let b = serde_json::to_vec(&json!({"username": username, "password": password})).unwrap();
    c.request("POST", "/api/auth/login", &[], Some(&b))
}

#[test]
fn login_tokens_work_by_role_and_expire() {
    let s = start(2, with_users);
    let mut c = Conn::open(s.addr);
    let r = login(&mut c, "carol", "carol-pw");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_type"], "bearer");
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    // Every shard accepts it (fresh connections land on either).
    for _ in 0..6 {
        let r = Conn::open(s.addr).request("GET", "/api/services/list", &auth, None);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = c.request("GET", "/api/admin/stats", &auth, None);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c.request("GET", "/api/auth/verify", &auth, None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"valid": true, "username": "carol", "role": "client"})
    );
    assert_eq!(c.get("/api/auth/verify").status, 401);

    let r = login(&mut c, "root", "root-pw");
    let admin = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    assert_eq!(
        c.request(
            "GET",
            "/api/admin/stats",
            &[("Authorization", admin.as_str())],
            None
        )
        .status,
        200
    );

    // Wrong password and unknown user: the originals' answer.
    for (u, p) in [("carol", "nope"), ("mallory", "carol-pw")] {
        let r = login(&mut c, u, p);
        assert_eq!(r.status, 401);
        assert_eq!(r.detail(), "Incorrect username or password");
    }

    // A token past its expiry, signed with the same secret.
    let now = jsonwebtoken::get_current_timestamp();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "carol", "role": "client", "iat": now - 100, "exp": now - 10}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bearer = format!("Bearer {expired}");
    for path in ["/api/auth/verify", "/api/services/list"] {
        let r = c.request("GET", path, &[("Authorization", bearer.as_str())], None);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.detail(), "Could not validate credentials");
    }
    // Signed with another secret, or unsigned: refused.
    for forged in [
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "root", "role": "admin", "exp": now + 1000}),
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap(),
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sub":"root","role":"admin","exp":{}}}"#,
                now + 1000
            ))
        ),
    ] {
        let b = format!("Bearer {forged}");
        let r = c.request(
            "GET",
            "/api/admin/stats",
            &[("Authorization", b.as_str())],
            None,
        );
        assert_eq!(r.status, 401, "{forged}");
    }
}

fn b64(s: &str) -> String {
    // URL-safe base64 without padding, enough for a forged test token.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (c as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn configured_expiry_is_honoured() {
    let s = start(2, |c| {
        with_users(c);
        c.token_expiry = Duration::from_secs(1);
    });
    let mut c = Conn::open(s.addr);
    let r = login(&mut c, "carol", "carol-pw");
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    let auth = [("Authorization", bearer.as_str())];
    // Expires within 1 s of issue (whole seconds): gone well after 2 s.
    assert!(eventually(Duration::from_secs(5), || {
        Conn::open(s.addr)
            .request("GET", "/api/auth/verify", &auth, None)
            .status
            == 401
    }));
}

#[test]
fn failed_logins_are_rate_limited_per_address() {
    let s = start(2, |c| {
        with_users(c);
        c.login_max_failures = 3;
    });
    // One connection = one shard, whose limiter counts this address.
    let mut c = Conn::open(s.addr);
    for _ in 0..3 {
        assert_eq!(login(&mut c, "carol", "wrong").status, 401);
    }
    for password in ["wrong", "carol-pw"] {
        let r = login(&mut c, "carol", password);
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(r.detail().contains("Too many failed login attempts"));
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&after), "{after}");
    }
}

#[test]
fn a_successful_login_does_not_count_against_the_limit() {
    let s = start(2, |c| {
        with_users(c);
        c.login_max_failures = 2;
    });
    let mut c = Conn::open(s.addr);
    for _ in 0..4 {
        assert_eq!(login(&mut c, "carol", "carol-pw").status, 200);
    }
    assert_eq!(login(&mut c, "carol", "x").status, 401);
}

fn run_binary(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn coordinator");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    // Bounded: a binary that would start serving is killed.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Extra flags, environment, and what the error must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn weak_configurations_refuse_to_start() {
    let base = [&["--in-memory"][..], &LOOPBACK_2_SHARDS[..]].concat();
    let dir = std::env::temp_dir().join(format!("coord-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[users]]\nusername = \"carol\"\npassword_hash = \"{}\"\nrole = \"client\"\n",
            hash_password("pw").unwrap()
        ),
    )
    .unwrap();
    let users = users.to_str().unwrap();
    let keys = dir.join("keys.toml");
    std::fs::write(&keys, "[[keys]]\nkey = \"\"\nrole = \"worker\"\n").unwrap();
    let keys = keys.to_str().unwrap();
    let cases: [Case; 5] = [
        (&[], &[("API_KEY", "")], "--api-key must not be empty"),
        (&["--client-key", ""], &[], "--client-key must not be empty"),
        (&["--keys-file", keys], &[], "empty API key"),
        (&["--users-file", users], &[], "JWT_SECRET"),
        (
            &["--users-file", users],
            &[("JWT_SECRET", "short")],
            "at least 32 bytes",
        ),
    ];
    for (args, env, says) in cases {
        let all: Vec<&str> = base.iter().copied().chain(args.iter().copied()).collect();
        let (code, _, err) = run_binary(&all, env, "");
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hash_password_subcommand_makes_a_usable_hash() {
    let (code, out, err) = run_binary(&["hash-password"], &[], "s3cret pw\n");
    assert_eq!(code, Some(0), "{err}");
    let phc = out.trim();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    assert!(coordinator::model::credential::verify_password(
        phc,
        "s3cret pw"
    ));
    let (code, _, _) = run_binary(&["hash-password"], &[], "\n");
    assert_eq!(code, Some(2));
}
