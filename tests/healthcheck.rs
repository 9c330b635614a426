//! `coordinator --healthcheck` against the real binary: exit 0 while a
//! server answers 200 on /health, 1 when it refuses (401 under
//! --protect-metrics without a key) or nothing listens.

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::spawn_listening;

/// Starts the binary on 127.0.0.1 with an ephemeral port and 2 unpinned
/// shards, in memory; returns it with the address it printed.
fn spawn_server(args: &[&str], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.args([
        "--in-memory",
        "--shards",
        "2",
        "--no-pin",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ])
    .args(args)
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_listening(cmd)
}

/// Runs `coordinator --healthcheck --port PORT` with a clean environment
/// (no HOST, PORT or keys inherited from the test runner).
fn healthcheck(port: u16, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.args(["--healthcheck", "--port", &port.to_string()]);
    for k in [
        "HOST",
        "PORT",
        "API_KEY",
        "ADMIN_API_KEY",
        "COORDINATOR_CONFIG",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run coordinator --healthcheck")
}

fn one_line(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(s.lines().count(), 1, "one line: {s:?}");
    s
}

fn stop(mut child: Child) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn healthcheck_exits_0_for_a_healthy_server_and_1_otherwise() {
    let (server, addr) = spawn_server(&[], &[]);
    let out = healthcheck(addr.port(), &[]);
    let line = one_line(&out);
    assert_eq!(out.status.code(), Some(0), "{line}");
    assert!(line.contains("200"), "{line}");
    // The port also comes from the environment, as for the server.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    let by_env = cmd
        .arg("--healthcheck")
        .env("PORT", addr.port().to_string())
        .env_remove("HOST")
        .output()
        .unwrap();
    assert_eq!(by_env.status.code(), Some(0), "{}", one_line(&by_env));
    stop(server);

    // The server is gone: nothing listens on its port any more.
    let out = healthcheck(addr.port(), &[]);
    let line = one_line(&out);
    assert_eq!(out.status.code(), Some(1), "{line}");
}

#[test]
fn healthcheck_exits_1_where_nothing_listens() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = healthcheck(port, &[]);
    let line = one_line(&out);
    assert_eq!(out.status.code(), Some(1), "{line}");
}

#[test]
fn healthcheck_sends_the_api_key_to_a_protected_health_route() {
    let (server, addr) = spawn_server(&["--protect-metrics"], &[("API_KEY", "hc-secret")]);
    // No key: the server answers 401, which is not healthy.
    let out = healthcheck(addr.port(), &[]);
    let line = one_line(&out);
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(line.contains("401"), "{line}");
    // The same environment as the server (as in a container): healthy.
    let out = healthcheck(addr.port(), &[("API_KEY", "hc-secret")]);
    assert_eq!(out.status.code(), Some(0), "{}", one_line(&out));
    stop(server);
}
