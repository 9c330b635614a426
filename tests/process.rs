//! The real binary: flags, environment, start-up errors, signals.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    // These tests are about flags, not persistence: write no database.
    cmd.arg("--in-memory");
    cmd.args(args).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_listening(cmd)
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn env_vars_configure_and_sigterm_exits_cleanly() {
    let (mut child, addr) = spawn(
        &["--shards", "2", "--no-pin"],
        &[
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("API_KEY", "secret"),
            ("HEARTBEAT_INTERVAL_SECONDS", "7"),
        ],
    );
    assert_eq!(get(addr, "/health").json()["shards"], 2);
    assert_eq!(get(addr, "/api/admin/stats").status, 401);
    let body = serde_json::to_vec(&cpu_worker("p1")).unwrap();
    let r = Conn::open(addr).request(
        "POST",
        "/api/worker/register",
        &[("X-API-Key", "secret")],
        Some(&body),
    );
    assert_eq!(r.json()["heartbeat_interval"], 7);
    // SIGTERM: stop accepting, drain, exit 0.
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), Some(0));
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

#[test]
fn flags_win_over_environment() {
    let (mut child, addr) = spawn(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--shards",
            "3",
            "--no-pin",
        ],
        &[("SHARDS", "2"), ("PORT", "1")],
    );
    assert_eq!(get(addr, "/health").json()["shards"], 3);
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), Some(0));
}

#[test]
fn bad_configuration_exits_with_a_message() {
    for (args, needle) in [
        (vec!["--shards", "0"], "shards"),
        (vec!["--catalog", "/nonexistent/catalog.toml"], "catalog"),
        (
            vec!["--heartbeat-timeout", "100", "--worker-timeout", "10"],
            "worker-timeout",
        ),
        (vec!["--config", "/nonexistent.toml"], "config"),
        (
            vec!["--proxy-ca-file", "/nonexistent/ca.pem"],
            "--proxy-ca-file /nonexistent/ca.pem",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .args(&args)
            .args(["--port", "0", "--host", "127.0.0.1", "--in-memory"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // The CA file from the environment, present but holding no certificate.
    let not_pem = std::env::temp_dir().join(format!("coord-not-pem-{}", std::process::id()));
    std::fs::write(&not_pem, "hello\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--port", "0", "--host", "127.0.0.1", "--in-memory"])
        .env("PROXY_CA_FILE", &not_pem)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&not_pem);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no CERTIFICATE"));
    // A busy port is a start-up error naming the address, not a panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--host", "127.0.0.1", "--port", &port, "--in-memory"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}

#[test]
fn config_file_supplies_defaults_under_env_and_flags() {
    let dir = std::env::temp_dir().join(format!("coord-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "host = \"127.0.0.1\"\nport = 0\nshards = 2\nno_pin = true\nenvironment = \"staging\"\n",
    )
    .unwrap();
    let (mut child, addr) = spawn(
        &["--config", path.to_str().unwrap()],
        &[("ENVIRONMENT", "from-env")],
    );
    let h = get(addr, "/health").json();
    assert_eq!(h["shards"], 2);
    assert_eq!(h["environment"], "from-env");
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), Some(0));
    std::fs::write(&path, "bogus_key = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_key"));
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn a_panicking_shard_ends_the_process_with_a_log_line() {
    // Debug builds (what `cargo test` runs) honour the fault-injection
    // variable: shard 1 of 2 panics half a second after start.
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--in-memory")
        .args(LOOPBACK_2_SHARDS)
        .env("COORDINATOR_FAULT_PANIC_SHARD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinator");
    let code = wait_exit(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        code,
        Some(coordinator::runtime::PANIC_EXIT_STATUS),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("a shard panicked") && stderr.contains("shard-1"),
        "stderr: {stderr}"
    );
}

#[test]
fn shutdown_answers_a_pending_long_poll_and_exits_zero() {
    let (mut child, addr) = spawn(
        &[
            &LOOPBACK_2_SHARDS[..],
            &["--shutdown-timeout", "1", "--task-max-wait", "60"],
        ]
        .concat(),
        &[],
    );
    register(addr, &cpu_worker("lp-1"));
    let poller = std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        c.get("/api/worker/tasks?worker_id=lp-1&wait=60")
    });
    // Let the poll park on its shards, then ask the process to stop.
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGTERM);
    let r = poller.join().expect("poller");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tasks"], serde_json::json!([]));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), Some(0));
}

#[test]
fn a_request_outliving_the_shutdown_timeout_does_not_crash_the_exit() {
    // A worker that accepts and never answers: the proxied request is still
    // in flight when --shutdown-timeout (1 s) runs out. The drain must give
    // up on it and the process exit 0 (it used to panic in the runtime's
    // connection group and exit 1).
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        if let Ok((c, _)) = hung.accept() {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(8));
    });
    let (mut child, addr) = spawn(
        &[&LOOPBACK_2_SHARDS[..], &["--shutdown-timeout", "1"]].concat(),
        &[],
    );
    register(
        addr,
        &serde_json::json!({
            "worker_id": "hung-1",
            "tunnel_url": format!("http://127.0.0.1:{port}"),
            "capabilities": {"has_gpu": true, "gpu_memory": "24GB"},
            "services": [{"name": "llm-inference", "port": port}],
        }),
    );
    let client = std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        c.send_raw(b"GET /service/llm-inference/x HTTP/1.1\r\nHost: t\r\n\r\n");
        c.read_response()
    });
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), Some(0));
    // The client is cut off (no answer) rather than left hanging.
    assert!(client.join().unwrap().is_none());
    held.join().unwrap();
}

#[test]
fn silent_misconfiguration_is_refused_naming_its_source() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
        cmd.args(["--port", "0", "--host", "127.0.0.1"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, env, needle) in [
        // A bare word is a target name to tracing: it would switch every
        // other line off.
        (
            vec!["--in-memory", "--log-level", "nonsense"],
            vec![],
            "--log-level",
        ),
        (vec!["--in-memory"], vec![("RUST_LOG", "inf")], "RUST_LOG"),
        (vec!["--in-memory", "--db", "x.db"], vec![], "--db"),
        (
            vec!["--in-memory"],
            vec![("DATABASE_PATH", "x.db")],
            "DATABASE_PATH",
        ),
        (
            vec!["--baseline-hello", "--in-memory", "--api-key", "k"],
            vec![],
            "--api-key",
        ),
        (
            vec!["--in-memory", "--public-url", "not a url"],
            vec![],
            "--public-url",
        ),
        (
            vec!["--in-memory"],
            vec![("SHARDS", "two")],
            "environment variable SHARDS",
        ),
    ] {
        let (code, err) = run(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(needle), "{args:?} {env:?}: {err}");
    }
    // What is valid still starts: levels and target=level directives.
    let (mut child, addr) = spawn(
        &[
            "--shards",
            "2",
            "--no-pin",
            "--log-level",
            "warn,coordinator=info",
        ],
        &[("HOST", "127.0.0.1"), ("PORT", "0")],
    );
    assert_eq!(get(addr, "/health").status, 200);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), Some(0));
}

#[test]
fn sighup_drains_like_sigterm_and_log_json_keeps_stdout_json() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--in-memory", "--shards", "2", "--no-pin", "--log-json"])
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The address comes from the JSON record on stderr.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "no listening record");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines only");
        if v["fields"]["message"] == "coordinator listening" {
            addr = v["fields"]["addr"].as_str().map(|a| {
                let port = a.rsplit(':').next().unwrap();
                format!("127.0.0.1:{port}").parse::<SocketAddr>().unwrap()
            });
        }
    }
    let addr = addr.unwrap();
    let r = get(addr, "/health");
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    signal(&child, libc::SIGHUP);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(out, "", "stdout carries nothing but JSON (here: nothing)");
    // The rest of stderr: JSON lines, among them the access line of the
    // request above with its id, and the drain.
    let rest: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("JSON log lines only"))
        .collect();
    let access = rest
        .iter()
        .find(|v| v["target"] == "access" && v["fields"]["request_id"] == id.as_str())
        .expect("an access line for the request");
    assert_eq!(access["fields"]["route"], "health");
    assert_eq!(access["fields"]["status"], 200);
    assert!(access["fields"]["duration_us"].is_u64());
    assert!(rest.iter().any(|v| v["fields"]["message"] == "stopped"));
}
