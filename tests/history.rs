//! Historical metrics over real HTTP: pool and per-worker series sampled
//! on 2 shards, the SQLite file kept across a restart, the in-memory ring,
//! bad queries, roles, and the dashboard's files.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn fast(c: &mut coordinator::Config) {
    c.history_interval = Duration::from_secs(1);
    c.history_worker_interval = Duration::from_secs(1);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn history(addr: std::net::SocketAddr, query: &str) -> Value {
    let r = get(addr, &format!("/api/history?{query}"));
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r.json()
}

/// The non-null `avg` values of the line labelled `label`.
fn values(answer: &Value, label: Option<(&str, &str)>) -> Vec<f64> {
    let lines = answer["lines"].as_array().unwrap();
    let line = lines.iter().find(|l| match label {
        Some((k, v)) => l["labels"][k] == v,
        None => l["labels"].as_object().unwrap().is_empty(),
    });
    let Some(line) = line else { return Vec::new() };
    let n = answer["timestamps"].as_array().unwrap().len();
    let avg = line["avg"].as_array().unwrap();
    assert_eq!(avg.len(), n, "arrays align with timestamps");
    avg.iter().filter_map(Value::as_f64).collect()
}

#[test]
fn pool_and_worker_series_are_sampled_across_shards() {
    let s = start(2, fast);
    let ids = [id_on_shard("hs", 0, 2), id_on_shard("hs", 1, 2)];
    for id in &ids {
        register(s.addr, &gpu_worker(id));
    }
    let beat =
        json!({"worker_id": ids[1], "status": "busy", "current_load": 0.75, "active_requests": 3});
    assert_eq!(heartbeat(s.addr, &beat).status, 200);
    for _ in 0..50 {
        assert_eq!(get(s.addr, "/health").status, 200);
    }
    let recent = |series: &str| format!("series={series}&from={}&step=1", now() - 60);
    // Workers by status, summed over both shards.
    assert!(eventually(WAIT, || {
        let a = history(s.addr, &recent("workers"));
        values(&a, Some(("status", "busy"))).last() == Some(&1.0)
            && values(&a, Some(("status", "healthy"))).last() == Some(&1.0)
    }));
    // Request rates: every route together and the one we called.
    assert!(eventually(WAIT, || {
        let a = history(s.addr, &recent("requests"));
        values(&a, Some(("route", "health"))).iter().sum::<f64>() > 0.0
            && values(&a, Some(("route", "all"))).iter().any(|v| *v > 0.0)
    }));
    let p99 = history(s.addr, &recent("latency_p99_ms"));
    assert!(values(&p99, Some(("route", "health")))
        .iter()
        .all(|v| *v > 0.0 && *v < 2500.0));
    // A task pull's long-poll counts as a request but not in the `all`
    // latency: 2 s waits on an otherwise idle server leave it far below.
    let w = &ids[0];
    for _ in 0..3 {
        let r = get(s.addr, &format!("/api/worker/tasks?worker_id={w}&wait=2"));
        assert_eq!(r.status, 200);
    }
    let q = format!("series=latency_p99_ms&from={}&step=1", now() - 8);
    assert!(eventually(WAIT, || {
        let a = history(s.addr, &q);
        values(&a, Some(("route", "tasks")))
            .iter()
            .any(|v| *v >= 1000.0)
    }));
    let all = values(&history(s.addr, &q), Some(("route", "all")));
    assert!(all.iter().all(|v| *v < 1000.0), "{all:?}");
    // Healthy per tier and per catalog service, gaps as zero.
    let tiers = history(s.addr, &recent("workers_healthy_by_tier"));
    assert_eq!(tiers["lines"].as_array().unwrap().len(), 4);
    let svc = history(s.addr, &recent("service_healthy"));
    assert!(svc["lines"].as_array().unwrap().len() > 3);
    // The load the worker on shard 1 reported, sampled by its owner.
    assert!(eventually(WAIT, || {
        let q = format!(
            "series=worker_load&worker_id={}&from={}",
            ids[1],
            now() - 120
        );
        let a = history(s.addr, &q);
        a["tier"] == "1m" && values(&a, None).contains(&0.75)
    }));
    let q = format!(
        "series=worker_active&worker_id={}&from={}",
        ids[1],
        now() - 120
    );
    assert!(values(&history(s.addr, &q), None).contains(&3.0));
    // Tasks by state and completions.
    let tasks = history(s.addr, &recent("tasks"));
    let states: Vec<&str> = tasks["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["labels"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["completed", "dead", "failed", "leased", "queued"]);
    let catalogue = get(s.addr, "/api/history/series").json();
    assert_eq!(catalogue["interval_seconds"], 1);
    assert!(catalogue["series"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["name"] == "worker_load" && d["per_worker"] == true));
}

#[test]
fn a_range_picks_its_tier_and_step() {
    let s = start(2, fast);
    let t = now();
    let a = history(s.addr, &format!("series=requests&from={}&to={t}", t - 3600));
    assert_eq!(
        (a["tier"].as_str(), a["step"].as_i64()),
        (Some("raw"), Some(10))
    );
    assert_eq!(a["timestamps"].as_array().unwrap().len(), 361);
    // Two days back: raw data is kept one day, so minutes.
    let a = history(
        s.addr,
        &format!("series=requests&from={}&to={t}", t - 2 * 86_400),
    );
    assert_eq!(a["tier"], "1m");
    // A year, a 1-second step asked: hours, at most 2000 buckets.
    let a = history(
        s.addr,
        &format!("series=requests&from={}&to={t}&step=1", t - 365 * 86_400),
    );
    assert_eq!(a["tier"], "1h");
    assert!(a["timestamps"].as_array().unwrap().len() <= 2001);
}

#[test]
fn bad_queries_get_clear_400s_and_roles_apply() {
    let s = start(2, fast);
    for (q, needle) in [
        ("", "series: is required"),
        ("series=nope", "unknown series"),
        ("series=worker_load", "worker_id: is required"),
        ("series=requests&worker_id=w", "not per worker"),
        ("series=requests&from=10&to=5", "from: must be before to"),
        ("series=requests&step=1.5", "step: must be a whole number"),
        ("series=requests&to=abc", "to: must be a whole number"),
        ("series=requests&from=%FF", "invalid percent-encoding"),
        ("series=worker_load&worker_id=%E2%80%AE", "invisible"),
    ] {
        let r = get(s.addr, &format!("/api/history?{q}"));
        assert!(r.status == 400 || r.status == 422, "{q}: {}", r.status);
        assert!(r.detail().contains(needle), "{q}: {}", r.detail());
    }
    // Out-of-range numbers are clamped, not refused.
    let huge = "series=requests&from=0&to=999999999999999999999999&step=99999999999999999999";
    assert_eq!(get(s.addr, &format!("/api/history?{huge}")).status, 200);

    let k = start(2, |c| {
        fast(c);
        with_keys(c);
    });
    let mut conn = Conn::open(k.addr);
    let r = get_with_key(&mut conn, "/api/history?series=requests", CLIENT_KEY);
    assert_eq!(r.status, 403);
    let r = get_with_key(&mut conn, "/api/history?series=requests", ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(k.addr, "/api/history/series").status, 401);
}

#[test]
fn history_off_answers_503() {
    let s = start(2, |c| c.history = false);
    let r = get(s.addr, "/api/history?series=requests");
    assert_eq!(r.status, 503);
    assert!(r.detail().contains("--no-history"));
    assert_eq!(get(s.addr, "/api/history/series").json()["enabled"], false);
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coord-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("c.db")
}

#[test]
fn samples_in_sqlite_survive_a_restart() {
    let db = temp_db("restart");
    let cfg = |c: &mut coordinator::Config| {
        fast(c);
        c.database_path = Some(db.clone());
    };
    let from = now() - 5;
    let s = start(2, cfg);
    register(s.addr, &gpu_worker(&id_on_shard("hr", 1, 2)));
    let query = format!("series=workers&from={from}&step=1");
    assert!(eventually(WAIT, || {
        values(&history(s.addr, &query), Some(("status", "healthy"))).len() >= 2
    }));
    let before = history(s.addr, &format!("{query}&to={}", now()));
    // The history thread's figures are on /metrics.
    assert!(eventually(WAIT, || {
        let text = get(s.addr, "/metrics").text();
        sum_samples(&text, "coordinator_history_samples_total") > 0.0
            && sum_samples(&text, "coordinator_history_bytes") > 0.0
    }));
    let text = get(s.addr, "/metrics").text();
    assert_eq!(
        sum_samples(&text, "coordinator_history_write_errors_total"),
        0.0
    );
    assert_eq!(
        sum_samples(&text, "coordinator_history_dropped_batches_total"),
        0.0
    );
    drop(s);
    assert!(db.with_file_name("c-history.db").exists());
    let s = start(2, cfg);
    let to = before["to"].as_u64().unwrap();
    let after = history(s.addr, &format!("{query}&to={to}"));
    let kept = values(&after, Some(("status", "healthy")));
    assert_eq!(kept, values(&before, Some(("status", "healthy"))));
    assert!(kept.len() >= 2);
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

#[test]
fn the_dashboard_is_served_from_the_binary() {
    let s = start(2, with_keys);
    let r = call(s.addr, "GET", "/ui", None);
    assert_eq!((r.status, r.header("location")), (308, Some("/ui/")));
    let r = get(s.addr, "/ui/");
    assert_eq!(r.status, 200, "public: the page holds no data");
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    for f in [
        "app.js",
        "app.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
        "uplot.LICENSE.txt",
    ] {
        let r = get(s.addr, &format!("/ui/{f}"));
        assert_eq!(r.status, 200, "{f}");
        assert!(!r.text().is_empty());
    }
    assert_eq!(get(s.addr, "/ui/nope.js").status, 404);
    // The data behind it is not public.
    assert_eq!(get(s.addr, "/api/admin/stats").status, 401);
}
