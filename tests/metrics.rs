//! /metrics as a Prometheus server would read it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use prometheus_parse::{Scrape, Value};
use serde_json::json;

fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_metrics(&r.text())
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected {other:?}"),
        })
}

#[test]
fn metrics_parse_and_merge_across_shards() {
    let s = start(2, |_| {});
    let ids: Vec<String> = (0..2).map(|sh| id_on_shard("m", sh, 2)).collect();
    for id in &ids {
        register(s.addr, &gpu_worker(id));
    }
    // 10 heartbeats spread over fresh connections, so both shards answer some.
    let mut answered_by = std::collections::HashSet::new();
    for i in 0..10 {
        let r = heartbeat(s.addr, &json!({"worker_id": ids[i % 2]}));
        assert_eq!(r.status, 200);
        answered_by.insert(r.shard());
    }
    heartbeat(s.addr, &json!({"worker_id": "ghost"}));
    let m = scrape(s.addr);
    assert_eq!(value(&m, "coordinator_workers_total", &[]), Some(2.0));
    assert_eq!(value(&m, "coordinator_workers_active", &[]), Some(2.0));
    // The first gpu worker runs 7 services, the second the one left over
    // (doc-processor, which shares vision-ocr's port): 8 covered.
    assert_eq!(value(&m, "coordinator_services_total", &[]), Some(8.0));
    assert_eq!(
        value(
            &m,
            "coordinator_http_requests_total",
            &[("route", "heartbeat"), ("status", "200")]
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            &m,
            "coordinator_http_requests_total",
            &[("route", "heartbeat"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "coordinator_shard_workers", &[("shard", "0")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "coordinator_shard_workers", &[("shard", "1")]),
        Some(1.0)
    );
    // The latency histogram: sub-millisecond buckets, count = 11 heartbeats.
    let hist = m
        .samples
        .iter()
        .find(|x| {
            x.metric == "coordinator_http_request_duration_seconds"
                && x.labels.get("route") == Some("heartbeat")
        })
        .expect("heartbeat histogram");
    match &hist.value {
        Value::Histogram(buckets) => {
            assert!(
                buckets
                    .iter()
                    .any(|b| (b.less_than - 0.00001).abs() < 1e-12),
                "10us bucket"
            );
            assert!(
                buckets.iter().any(|b| (b.less_than - 0.001).abs() < 1e-12),
                "1ms bucket"
            );
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            assert_eq!(inf.count, 11.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let accepted: f64 = (0..2)
        .map(|sh| {
            value(
                &m,
                "coordinator_connections_accepted_total",
                &[("shard", &sh.to_string())],
            )
            .unwrap()
        })
        .sum();
    assert!(accepted >= 13.0, "{accepted}");
}

/// The value of the one series of `name` whose labels are exactly `labels`.
fn exact(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            x.metric == name
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected {other:?}"),
        })
}

/// Every series of `name` as (value of label `by`, value).
fn series_by(s: &Scrape, name: &str, by: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .map(|x| {
            let v = match &x.value {
                Value::Gauge(v) => *v,
                other => panic!("{name}: not a gauge: {other:?}"),
            };
            (x.labels.get(by).expect(by).to_string(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn new_registry_gauges_match_the_compat_ones_and_the_admin_views() {
    let s = start(2, |c| c.heartbeat_timeout = Duration::from_millis(600));
    // A gpu worker that goes quiet (stale), and cpu workers on both shards
    // reporting a known status, a status outside the known set, and none.
    let quiet = id_on_shard("g-quiet", 0, 2);
    let busy = id_on_shard("c-busy", 1, 2);
    let odd = id_on_shard("c-odd", 0, 2);
    let plain = id_on_shard("c-plain", 1, 2);
    register(s.addr, &gpu_worker(&quiet));
    for id in [&busy, &odd, &plain] {
        register(s.addr, &cpu_worker(id));
    }
    let m = scrape(s.addr);
    // Right after registration everything is fresh: the gpu services are
    // covered now and go uncovered once the gpu worker is stale.
    assert_eq!(
        exact(&m, "coordinator_healthy_workers_by_tier", &[("tier", "1")]),
        Some(1.0)
    );
    let covered_before = exact(&m, "coordinator_services", &[]).unwrap();
    let beat = || {
        for (id, status) in [(&busy, "busy"), (&odd, "warming-up"), (&plain, "healthy")] {
            let r = heartbeat(s.addr, &json!({"worker_id": id, "status": status}));
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    let stale = |m: &Scrape| exact(m, "coordinator_workers_by_status", &[("status", "stale")]);
    let mut m = scrape(s.addr);
    assert!(eventually(Duration::from_secs(5), || {
        beat();
        m = scrape(s.addr);
        stale(&m) == Some(1.0)
    }));

    // Same values under the compat and the new names, unlabelled both.
    assert_eq!(exact(&m, "coordinator_workers_total", &[]), Some(4.0));
    assert_eq!(exact(&m, "coordinator_workers", &[]), Some(4.0));
    let covered = exact(&m, "coordinator_services_total", &[]).unwrap();
    assert_eq!(exact(&m, "coordinator_services", &[]), Some(covered));
    assert!(covered < covered_before, "{covered} < {covered_before}");
    assert_eq!(
        series_by(&m, "coordinator_workers_by_status", "status"),
        [
            ("busy".to_string(), 1.0),
            ("healthy".to_string(), 1.0),
            ("other".to_string(), 1.0),
            ("stale".to_string(), 1.0),
        ]
    );
    assert_eq!(
        series_by(&m, "coordinator_healthy_workers_by_tier", "tier"),
        [
            ("1".to_string(), 0.0),
            ("2".to_string(), 3.0),
            ("3".to_string(), 0.0),
            ("4".to_string(), 0.0),
        ]
    );

    // One series per catalog service, equal to what /api/admin/gaps says;
    // gaps (0) and covered services both present.
    let gaps = get(s.addr, "/api/admin/gaps").json();
    let gaps = gaps["gaps"].as_array().unwrap();
    let per_service = series_by(&m, "coordinator_service_healthy_workers", "service");
    assert_eq!(per_service.len(), gaps.len());
    for g in gaps {
        let name = g["service"].as_str().unwrap();
        let tier = g["tier"].to_string();
        assert_eq!(
            exact(
                &m,
                "coordinator_service_healthy_workers",
                &[("service", name), ("tier", &tier)]
            ),
            g["healthy_workers"].as_f64(),
            "{name}"
        );
    }
    let zero = per_service.iter().filter(|(_, n)| *n == 0.0).count();
    assert!(zero > 0 && zero < per_service.len(), "{per_service:?}");
    assert_eq!(
        (per_service.len() - zero) as f64,
        covered,
        "covered services are the catalog's with a healthy worker"
    );
}

/// Starts the real binary with 2 shards on a free loopback port.
fn spawn(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--in-memory")
        .args(LOOPBACK_2_SHARDS)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coordinator");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "coordinator listening on http://127.0.0.1:PORT with N shard(s)"
    let url = line.split_whitespace().nth(3).expect("address line");
    let addr = url.trim_start_matches("http://").parse().expect("address");
    (child, addr)
}

/// Kills the child when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn protected_metrics_take_x_api_key_or_bearer_and_show_the_process() {
    let before = unix_now();
    let (child, addr) = spawn(&[
        "--api-key",
        ADMIN_KEY,
        "--client-key",
        CLIENT_KEY,
        "--protect-metrics",
    ]);
    let child = Killed(child);
    let after = unix_now();
    let pid = child.0.id();
    let mut c = Conn::open(addr);
    let mut metrics = |headers: &[(&str, &str)]| c.request("GET", "/metrics", headers, None);
    assert_eq!(metrics(&[]).status, 401);
    assert_eq!(metrics(&[("X-API-Key", "nope")]).status, 403);
    assert_eq!(metrics(&[("Authorization", "Bearer nope")]).status, 401);
    // A valid key of a role below admin: authenticated, not allowed.
    let bearer_client = format!("Bearer {CLIENT_KEY}");
    assert_eq!(metrics(&[("Authorization", &bearer_client)]).status, 403);
    assert_eq!(metrics(&[("X-API-Key", ADMIN_KEY)]).status, 200);
    // What Prometheus' `authorization:` block sends.
    let bearer = format!("Bearer {ADMIN_KEY}");
    let r = metrics(&[("Authorization", &bearer)]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = parse_metrics(&r.text());

    // The build: this package's version, and the commit build.rs found.
    let commit = env!("COORDINATOR_GIT_COMMIT");
    assert_eq!(
        exact(
            &m,
            "coordinator_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("commit", commit)]
        ),
        Some(1.0)
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        // A checkout with git: the build saw this same commit.
        Some(h) if std::path::Path::new(root).join(".git").exists() => assert_eq!(commit, h),
        _ => assert_eq!(commit, "unknown"),
    }

    // The process figures are the child's, read at scrape time.
    let v = |name: &str| exact(&m, name, &[]).unwrap_or_else(|| panic!("{name}"));
    let start = v("process_start_time_seconds");
    assert!(
        start >= before.floor() - 1.0 && start <= after + 1.0,
        "{before} <= {start} <= {after}"
    );
    // A fresh process has used well under a second of CPU: whole seconds
    // (what the crate's collector counts) would show 0.
    let cpu = v("process_cpu_seconds_total");
    assert!(cpu > 0.0 && cpu < 60.0, "{cpu}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .expect("Max open files");
    assert_eq!(v("process_max_fds"), soft);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let open = v("process_open_fds");
    // Idle apart from this one connection: the same descriptors, give or
    // take a few the runtime opens or closes on its own.
    assert!((open - fds).abs() <= 4.0, "{open} vs {fds}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmRSS");
    let rss = v("process_resident_memory_bytes");
    assert!(
        rss > rss_kib * 1024.0 / 2.0 && rss < rss_kib * 1024.0 * 2.0,
        "{rss} vs {rss_kib} KiB"
    );
    assert!(v("process_virtual_memory_bytes") >= rss);
}
