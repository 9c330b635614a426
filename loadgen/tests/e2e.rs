//! loadgen against a real coordinator (unpinned, 127.0.0.1:0):
//! the schedule is kept, results add up, bounds and refusals exit as
//! documented. Rates are low so the tests pass on a busy machine; they
//! check behaviour, not speed.

use std::path::{Path, PathBuf};
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

/// Where a test's `--json` report goes (one directory per test process).
fn json_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("json written")).expect("valid json")
}

#[test]
fn open_loop_heartbeats_keep_the_schedule_and_reach_the_server() {
    let srv = server();
    let target = srv.addr().to_string();
    let json = json_path("hb.json");
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

/// A GET on a fresh connection, read with std only (not loadgen's client),
/// so the server's own view checks loadgen's report independently: the
/// body of a 200.
fn get_raw(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    serde_json::from_str(&get_raw(addr, path)).unwrap()
}

#[test]
fn proxy_scenario_measures_the_same_requests_direct_and_through_the_coordinator() {
    let srv = server();
    let target = srv.addr().to_string();
    let json = json_path("proxy.json");
    let (code, stdout, stderr) = loadgen(&[
        "proxy",
        "--target",
        &target,
        "--rate",
        "200",
        "--connections",
        "4",
        "--threads",
        "2",
        "--warmup",
        "0s",
        "--duration",
        "1s",
        "--compare-metrics",
        "--check",
        "errors=0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("proxy overhead (proxied - direct)"),
        "{stdout}"
    );
    let r = report(&json);
    for phase in ["direct", "proxied"] {
        assert_eq!(r[phase]["planned"], 200, "{phase}: {r}");
        assert_eq!(r[phase]["ok"], 200, "{phase}: {r}");
        assert!(r[phase]["errors"].as_object().unwrap().is_empty(), "{r}");
        assert!(r[phase]["latency"]["p50_us"].as_u64().unwrap() > 0);
    }
    // Every request of each phase reached the simulated worker, once (no
    // warm-up, so the phase's hits are exactly its measured requests).
    assert_eq!(r["sim_hits"]["direct"], 200, "{r}");
    assert_eq!(r["sim_hits"]["proxied"], 200, "{r}");
    assert!(r["overhead"]["p99_ratio"].as_f64().unwrap() > 0.0, "{r}");
    // The coordinator's own histogram for the llm route saw the window.
    let seen = r["proxied"]["server"]["count"]
        .as_u64()
        .expect("server histogram");
    assert!((195..=205).contains(&seen), "server counted {seen}");
    // And it routed them all to a worker: the window plus the one
    // readiness probe that found the worker routable.
    let m = get_raw(srv.addr(), "/metrics");
    let ok = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "coordinator_routed_requests_total{service=\"llm-inference\",outcome=\"ok\"} ",
            )
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("routed counter");
    assert_eq!(ok, 201.0, "{m}");
    // The simulated worker was unregistered at the end.
    assert_eq!(get_json(srv.addr(), "/health")["workers"]["total"], 0);
}

#[test]
fn tasks_scenario_completes_every_task_it_submits() {
    let srv = server();
    let target = srv.addr().to_string();
    // One service queue, then one queue per worker (spread over shards).
    for (n, (prefix, target_kind)) in [("svc", "service"), ("wrk", "worker")]
        .into_iter()
        .enumerate()
    {
        let json = json_path(&format!("{prefix}.json"));
        let (code, stdout, stderr) = loadgen(&[
            "tasks",
            "--target",
            &target,
            "--prefix",
            prefix,
            "--task-target",
            target_kind,
            "--rate",
            "200",
            "--connections",
            "2",
            "--task-workers",
            "3",
            "--task-batch",
            "5",
            "--warmup",
            "0s",
            "--duration",
            "1s",
            "--check",
            "errors=0,rate>=0.9",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.contains("verified:"), "{stdout}");
        let r = report(&json);
        assert_eq!(r["submitted"], 200, "{r}");
        assert_eq!(r["completed"], 200, "{r}");
        assert_eq!(r["tasks"]["planned"], 200, "{r}");
        assert_eq!(r["tasks"]["ok"], 200, "{r}");
        assert_eq!(r["verification"]["ok"], true, "{r}");
        assert!(r["submit_ack"]["p99_us"].as_u64().unwrap() > 0, "{r}");
        assert!(r["pulls"].as_u64().unwrap() > 0, "{r}");
        // The server's own counts, read independently of loadgen.
        let a = get_json(srv.addr(), "/api/admin/tasks?limit=0");
        let done = 200 * (n as u64 + 1);
        assert_eq!(a["counts"]["completed"], done, "{a}");
        for state in ["queued", "leased", "failed", "dead"] {
            assert_eq!(a["counts"][state], 0, "{state}: {a}");
        }
    }
}

#[test]
fn population_registers_background_workers_apart_from_the_scenarios() {
    let srv = server();
    let target = srv.addr().to_string();
    let json = json_path("population.json");
    let (code, stdout, stderr) = loadgen(&[
        "heartbeat",
        "--target",
        &target,
        "--population",
        "2000",
        "--population-connections",
        "16",
        "--workers",
        "20",
        "--rate",
        "100",
        "--connections",
        "2",
        "--warmup",
        "0s",
        "--duration",
        "300ms",
        "--check",
        "errors=0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("population:  2000 of 2000 workers registered (lg-pop-000000..)"),
        "{stdout}"
    );
    let r = report(&json);
    let p = &r["population"];
    assert_eq!(p["requested"], 2000, "{r}");
    assert_eq!(p["registered"], 2000, "{r}");
    assert_eq!(p["errors_total"], 0, "{r}");
    assert_eq!(p["connections"], 16, "{r}");
    assert!(p["per_second"].as_f64().unwrap() > 0.0, "{r}");
    // The scenario itself ran as usual, over its own workers.
    assert_eq!(r["ok"], 30, "{r}");
    // The server, read independently: the population and the scenario's
    // 20 workers, all healthy, none of them the same.
    let h = get_json(srv.addr(), "/health");
    assert_eq!(h["workers"]["total"], 2020, "{h}");
    let list = get_json(srv.addr(), "/api/coordinator/workers");
    assert_eq!(list["count"], 2020);
    let workers = list["workers"].as_array().unwrap();
    let pop: Vec<&Value> = workers
        .iter()
        .filter(|w| w["worker_id"].as_str().unwrap().starts_with("lg-pop-"))
        .collect();
    assert_eq!(pop.len(), 2000);
    assert!(pop.iter().any(|w| w["worker_id"] == "lg-pop-001999"));
    // The agents' body mix: one in four a gpu agent with an llm service.
    let gpu = pop
        .iter()
        .filter(|w| w["capabilities"]["worker_type"] == "gpu")
        .count();
    assert_eq!(gpu, 500);
}

#[test]
fn population_failures_are_counted_and_the_run_ends() {
    // A server that holds 1,000 workers: the rest of 1,500 get 503.
    let srv = Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: Some(2),
        pin: false,
        max_workers: 1000,
        ..Config::default()
    })
    .expect("server starts");
    let target = srv.addr().to_string();
    let json = json_path("population-full.json");
    let (code, stdout, stderr) = loadgen(&[
        "get",
        "--path",
        "/health",
        "--target",
        &target,
        "--population",
        "1500",
        "--rate",
        "50",
        "--connections",
        "1",
        "--warmup",
        "0s",
        "--duration",
        "200ms",
        "--check",
        "errors=0",
        "--json",
        json.to_str().unwrap(),
    ]);
    // The scenario had no error; the population's shortfall fails the check.
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let p = &report(&json)["population"];
    let registered = p["registered"].as_u64().unwrap();
    let refused = p["errors"]["status_503"].as_u64().unwrap_or(0);
    assert!(refused > 0, "{p}");
    assert_eq!(registered + refused, 1500, "{p}");
    assert_eq!(p["errors_total"], refused, "{p}");
    assert!(
        stdout.contains(&format!(
            "CHECK FAILED: population: {registered} of 1500 workers registered ({refused} errors)"
        )),
        "{stdout}"
    );
    // What loadgen counted as registered is what the server holds.
    assert_eq!(
        get_json(srv.addr(), "/health")["workers"]["total"],
        registered
    );

    // Nobody listening: every registration fails to connect, is counted,
    // and the run still ends by itself.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let json = json_path("population-dead.json");
    let (code, stdout, _) = loadgen(&[
        "get",
        "--target",
        &dead,
        "--population",
        "100",
        "--population-connections",
        "4",
        "--rate",
        "20",
        "--connections",
        "1",
        "--warmup",
        "0s",
        "--duration",
        "200ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}");
    let p = &report(&json)["population"];
    assert_eq!(p["registered"], 0, "{p}");
    assert_eq!(p["errors"]["connect"], 100, "{p}");
    assert!(stdout.contains("0 of 100 workers registered"), "{stdout}");
}

/// `--subscribers` with a known event rate: 200 heartbeats/s whose status
/// flips every 2nd heartbeat of a worker make 100 `worker.state` events/s,
/// and every subscription receives all of them.
fn subscribers_receive_the_flips(format: &str) {
    let srv = server();
    let target = srv.addr().to_string();
    let json = json_path(&format!("events-{format}.json"));
    let (code, stdout, stderr) = loadgen(&[
        "heartbeat",
        "--target",
        &target,
        "--rate",
        "200",
        "--connections",
        "4",
        "--workers",
        "20",
        "--warmup",
        "500ms",
        "--duration",
        "2s",
        "--status-flip-every",
        "2",
        "--subscribers",
        "3",
        "--subscriber-query",
        "topics=worker",
        "--subscriber-format",
        format,
        "--check",
        "errors=0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("3 subscribers streaming"), "{stderr}");
    assert!(stdout.contains("events:      3 subscribers"), "{stdout}");
    let r = report(&json);
    let e = &r["events"];
    assert_eq!(e["subscribers"], 3, "{e}");
    assert_eq!(e["format"], format);
    assert_eq!(e["resets"], 0, "{e}");
    assert_eq!(e["disconnected"], 0, "{e}");
    // 400 heartbeats in the window, one status change per two, seen by 3
    // subscribers: 600, give or take the window's edges.
    let received = e["received"].as_u64().unwrap();
    assert!((480..=720).contains(&received), "{e}");
    let per_sec = e["per_sec"].as_f64().unwrap();
    assert!((per_sec - received as f64 / 2.0).abs() < 1e-6, "{e}");
    let p50 = e["delivery_p50_us"].as_u64().unwrap();
    let p99 = e["delivery_p99_us"].as_u64().unwrap();
    let p999 = e["delivery_p999_us"].as_u64().unwrap();
    let max = e["delivery_max_us"].as_u64().unwrap();
    assert!(p50 > 0 && p50 <= p99 && p99 <= p999 && p999 <= max, "{e}");
}

#[test]
fn sse_subscribers_receive_every_status_change() {
    subscribers_receive_the_flips("sse");
}

#[test]
fn ndjson_subscribers_receive_every_status_change() {
    subscribers_receive_the_flips("ndjson");
}

#[test]
fn subscribers_and_flips_refuse_what_they_cannot_do() {
    let (code, _, stderr) = loadgen(&["workers", "--rate", "10", "--status-flip-every", "2"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--status-flip-every needs heartbeats"),
        "{stderr}"
    );
    let (code, _, stderr) = loadgen(&["tasks", "--rate", "10", "--subscribers", "1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--subscribers works with"), "{stderr}");
}

#[test]
fn a_short_soak_runs_everything_at_once_and_passes_with_its_samples() {
    let srv = server();
    let target = srv.addr().to_string();
    let json = json_path("soak.json");
    let (code, stdout, stderr) = loadgen(&[
        "soak",
        "--target",
        &target,
        "--rate",
        "200",
        "--task-rate",
        "20",
        "--connections",
        "4",
        "--workers",
        "100",
        "--warmup",
        "1s",
        "--duration",
        "6s",
        "--report-every",
        "5s",
        // A test server is small and fresh: what matters here is that the
        // samples and the verdict are there, not the growth of a warm-up
        // this short (CI's soak judges that, .ci/soak).
        "--max-rss-growth",
        "1000",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("soak passed"), "{stdout}");
    let r = report(&json);
    let intervals = r["intervals"].as_array().expect("intervals");
    // The warm-up, then intervals of 5 s and 1 s.
    assert_eq!(intervals.len(), 3, "{r}");
    assert_eq!(intervals[0]["warmup"], true);
    for iv in intervals {
        assert_eq!(iv["errors"], 0, "{iv}");
        assert!(
            iv["server"]["rss_bytes"].as_u64().unwrap() > 1 << 20,
            "{iv}"
        );
        // loadgen's connections (4) and the task threads' are open while
        // the sample is taken.
        assert!(
            iv["server"]["connections_open"].as_u64().unwrap() >= 4,
            "{iv}"
        );
        // 2 x 100 workers, half of the 256 churn ids, the simulated worker
        // and the task workers.
        let workers = iv["server"]["workers"].as_u64().unwrap();
        assert!((200 + 128..=200 + 256 + 16).contains(&workers), "{iv}");
    }
    // Every kind of work reached the server.
    assert!(r["proxied_completions"].as_u64().unwrap() > 0, "{r}");
    // 20 tasks/s for 7 s.
    assert!(r["tasks_submitted"].as_u64().unwrap() >= 100, "{r}");
    assert_eq!(r["tasks_submitted"], r["tasks_completed"], "{r}");
    let text = get_raw(srv.addr(), "/metrics");
    for route in [
        "heartbeat",
        "register",
        "unregister",
        "coordinator_workers",
        "service_proxy",
    ] {
        assert!(
            text.contains(&format!("route=\"{route}\"")),
            "no {route} requests in /metrics"
        );
    }
}
