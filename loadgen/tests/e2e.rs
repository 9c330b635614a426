//! loadgen against a real coordinator (unpinned, 127.0.0.1:0):
//! the schedule is kept, results add up, bounds and refusals exit as
//! documented. Rates are low so the tests pass on a busy machine; they
//! check behaviour, not speed.

use std::process::Command;

use coordinator::{Config, Server};
use serde_json::Value;

/// A two-shard server on an ephemeral loopback port, so heartbeats are
/// forwarded between shards as in production; stopped when dropped.
fn server() -> Server {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: Some(2),
        pin: false,
        ..Config::default()
    };
    Server::start(cfg).expect("server starts")
}

fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("loadgen runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn report(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("json written")).expect("valid json")
}

#[test]
fn open_loop_heartbeats_keep_the_schedule_and_reach_the_server() {
    let srv = server();
    let target = srv.addr().to_string();
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("hb.json");
    let (code, stdout, stderr) = loadgen(&[
        "heartbeat",
        "--target",
        &target,
        "--rate",
        "400",
        "--connections",
        "4",
        "--threads",
        "2",
        "--workers",
        "50",
        "--warmup",
        "500ms",
        "--duration",
        "1s",
        "--compare-metrics",
        "--check",
        "errors=0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("OPEN LOOP"), "{stdout}");
    let r = report(&json);
    assert_eq!(r["mode"], "open-loop");
    // 400 req/s for 1 s, split over 4 staggered connections.
    assert_eq!(r["planned"], 400);
    assert_eq!(r["requests"], 400, "{r}");
    assert_eq!(r["ok"], 400);
    assert!(r["errors"].as_object().unwrap().is_empty());
    assert!(r["latency"]["p50_us"].as_u64().unwrap() > 0);
    // The server saw the window's heartbeats too (give or take requests in
    // flight at the window's edges).
    let seen = r["server"]["count"].as_u64().expect("server histogram");
    assert!((380..=420).contains(&seen), "server counted {seen}");
}

#[test]
fn status_errors_are_counted_and_checks_fail_by_name() {
    let srv = server();
    let target = srv.addr().to_string();
    // Heartbeats for workers that were never registered: every one is a 404.
    let (code, stdout, _) = loadgen(&[
        "heartbeat",
        "--no-setup",
        "--prefix",
        "ghost",
        "--target",
        &target,
        "--rate",
        "200",
        "--connections",
        "2",
        "--warmup",
        "0s",
        "--duration",
        "500ms",
        "--check",
        "errors=0,p99<10s",
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("status_404=100"), "{stdout}");
    assert!(
        stdout.contains("CHECK FAILED: errors=0 failed: measured 100"),
        "{stdout}"
    );
    assert!(!stdout.contains("p99<10s failed"), "{stdout}");
}

#[test]
fn closed_loop_is_labelled_and_connect_errors_are_counted() {
    let srv = server();
    let target = srv.addr().to_string();
    let (code, stdout, _) = loadgen(&[
        "get",
        "--path",
        "/health",
        "--target",
        &target,
        "--max",
        "--connections",
        "2",
        "--warmup",
        "0s",
        "--duration",
        "300ms",
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("CLOSED LOOP"), "{stdout}");
    // A port nobody listens on: connects fail, are counted, and the run
    // still ends by itself.
    let target = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (code, stdout, _) = loadgen(&[
        "get",
        "--target",
        &target,
        "--rate",
        "100",
        "--connections",
        "1",
        "--warmup",
        "0s",
        "--duration",
        "300ms",
        "--check",
        "errors=0",
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("connect="), "{stdout}");
}

#[test]
fn refuses_remote_targets_and_bad_usage() {
    let (code, _, stderr) = loadgen(&["get", "--target", "192.0.2.1:80", "--rate", "1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    let (code, _, stderr) = loadgen(&["get", "--rate", "1", "--check", "p99<1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unit"), "{stderr}");
    let (code, _, stderr) = loadgen(&["heartbeat"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--rate"), "{stderr}");
}
