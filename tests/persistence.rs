//! Durability over real HTTP and real processes: kill -9 mid-load loses
//! nothing acknowledged, restarts with another shard count keep every
//! worker reachable, bad database files stop the start with a clear error,
//! and old schemas are migrated.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The one value `sql` selects from the database file of a stopped server.
fn db_value<T: rusqlite::types::FromSql>(db: &Path, sql: &str) -> T {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coord-persist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// SIGTERM and a clean exit: the WAL is checkpointed into the file.
    fn terminate(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
    }

    /// SIGKILL: no shutdown code runs at all.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn coordinator(db: &Path, shards: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--no-pin", "--db"])
        .arg(db)
        .args(["--shards", &shards.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn");
    cmd
}

/// Starts the binary on `db` and waits until it listens.
fn start_proc(db: &Path, shards: usize, extra: &[&str]) -> Proc {
    let log = db.with_extension(format!("{}.log", fastrand::u32(..)));
    let mut child = coordinator(db, shards, extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn coordinator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(url) = line.split_whitespace().nth(3) else {
        let _ = child.wait();
        panic!(
            "coordinator did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    let addr = url.trim_start_matches("http://").parse().unwrap();
    Proc { child, addr }
}

/// One request on a keep-alive connection; None when the server is gone.
fn try_request(conn: &mut Conn, method: &str, path: &str, body: Option<&Value>) -> Option<Resp> {
    let body = body.map(|b| serde_json::to_vec(b).unwrap());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if let Some(b) = &body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.as_deref().unwrap_or_default());
    conn.send_raw(&bytes);
    conn.read_response()
}

fn try_open(addr: SocketAddr) -> Option<Conn> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    Some(Conn::open(addr))
}

/// Every worker the server knows, by id (admin view: healthy or not).
fn all_workers(addr: SocketAddr) -> HashMap<String, Value> {
    let r = get(addr, "/api/admin/workers");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["worker_id"].as_str().unwrap().to_string(), w.clone()))
        .collect()
}

fn worker_body(id: &str) -> Value {
    let mut b = cpu_worker(id);
    // Every 5th worker can take "special" broadcast jobs, which keeps the
    // number of queued jobs small.
    let special = id.bytes().map(u32::from).sum::<u32>() % 5 == 0;
    b["capabilities"]["special"] = Value::Bool(special);
    b
}

/// What the clients sent and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    reg_attempted: HashSet<String>,
    reg_acked: HashSet<String>,
    unreg_attempted: HashSet<String>,
    unreg_acked: HashSet<String>,
    /// Workers that pull tasks (never unregistered by the load).
    pullers: HashSet<String>,
    /// Task submissions by the marker in their payload (ids are the
    /// server's, known only once acknowledged).
    submit_attempted: HashSet<String>,
    submit_acked: HashMap<String, String>,
    /// Task id -> (puller, attempt) of each acknowledged lease.
    leased: HashMap<String, (String, u64)>,
    complete_attempted: HashSet<String>,
    /// Task id -> result of each acknowledged completion.
    completed: HashMap<String, Value>,
    fail_attempted: HashSet<String>,
    /// Task id -> error of each acknowledged final failure.
    failed: HashMap<String, Value>,
}

const TASK_SERVICE: &str = "svc-k9";

/// Checks every task against the ledger.
fn verify_tasks(addr: SocketAddr, l: &Ledger, round: usize) {
    let mut conn = Conn::open(addr);
    for (marker, id) in &l.submit_acked {
        let r = conn.get(&format!("/api/tasks/{id}"));
        assert_eq!(r.status, 200, "round {round}: acknowledged task {id} lost");
        let t = r.json();
        assert_eq!(t["payload"]["m"], marker.as_str(), "round {round}: {t}");
        let state = t["state"].as_str().unwrap();
        if let Some(result) = l.completed.get(id) {
            assert_eq!(state, "completed", "round {round}: completion of {id} lost");
            assert_eq!(&t["result"], result);
        } else if let Some(error) = l.failed.get(id) {
            assert_eq!(state, "failed", "round {round}: failure of {id} lost");
            assert_eq!(&t["error"], error);
        } else if l.complete_attempted.contains(id) && state == "completed" {
            // A completion in flight at the kill may have landed.
            assert_eq!(t["result"]["m"], marker.as_str());
        } else if l.fail_attempted.contains(id) && state == "failed" {
            assert_eq!(t["error"]["m"], marker.as_str());
        } else if let Some((worker, attempt)) = l.leased.get(id) {
            assert_eq!(state, "leased", "round {round}: lease of {id} lost: {t}");
            assert_eq!(t["worker_id"], worker.as_str());
            assert_eq!(t["attempts"], *attempt);
        } else {
            // Never leased as far as the clients know; a pull in flight at
            // a kill may have leased it without the answer arriving.
            assert!(
                state == "queued" || state == "leased",
                "round {round}: task {id} is {state}"
            );
        }
    }
    // Nothing that was never sent, and only in-flight submissions unacked.
    let listed = walk_pages(&mut conn, "/api/admin/tasks?limit=1000", "tasks");
    let mut unacked = 0;
    for t in &listed {
        let marker = t["payload"]["m"].as_str().unwrap();
        assert!(
            l.submit_attempted.contains(marker),
            "round {round}: task {marker} was never sent"
        );
        if !l.submit_acked.contains_key(marker) {
            unacked += 1;
        }
    }
    assert!(
        unacked <= round,
        "round {round}: {unacked} unacknowledged tasks present"
    );
    assert_eq!(listed.len() - unacked, l.submit_acked.len());
}

/// Checks a restarted server against the ledger; returns the worker ids
/// present.
fn verify(addr: SocketAddr, l: &Ledger, round: usize) -> HashSet<String> {
    let present = all_workers(addr);
    verify_tasks(addr, l, round);
    for id in l.reg_acked.difference(&l.unreg_attempted) {
        let w = present
            .get(id)
            .unwrap_or_else(|| panic!("round {round}: acknowledged registration {id} lost"));
        assert_eq!(w["tunnel_url"], format!("http://{id}.example:8000"));
        assert_eq!(w["tier"], 2);
        assert_eq!(w["capabilities"], worker_body(id)["capabilities"]);
    }
    for id in present.keys() {
        assert!(
            l.reg_attempted.contains(id),
            "round {round}: {id} was never sent"
        );
        assert!(
            !l.unreg_acked.contains(id),
            "round {round}: acknowledged unregistration of {id} lost"
        );
    }
    // Only requests in flight at the kill may have landed unacknowledged:
    // at most one per client thread per kill.
    let unacked = present
        .keys()
        .filter(|id| !l.reg_acked.contains(*id))
        .count();
    assert!(
        unacked <= 4 * round,
        "round {round}: {unacked} unacknowledged workers present"
    );
    present.into_keys().collect()
}

/// Submits service tasks until the server dies or `stop` is set.
fn submit_tasks(addr: SocketAddr, round: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let Some(mut conn) = try_open(addr) else {
        return;
    };
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let marker = format!("m{round}-{i}");
        ledger
            .lock()
            .unwrap()
            .submit_attempted
            .insert(marker.clone());
        let body = json!({"type": "k9", "payload": {"m": marker}, "service": TASK_SERVICE});
        match try_request(&mut conn, "POST", "/api/tasks", Some(&body)) {
            Some(r) if r.status == 201 => {
                let id = r.json()["task_id"].as_str().unwrap().to_string();
                ledger.lock().unwrap().submit_acked.insert(marker, id);
            }
            Some(r) => panic!("submit {marker}: {} {}", r.status, r.text()),
            None => return,
        }
    }
}

/// Registers a puller of the task service, then leases tasks; of every
/// three it completes one, reports one failed (no retry) and keeps one
/// leased across the kill.
fn pull_tasks(addr: SocketAddr, round: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let Some(mut conn) = try_open(addr) else {
        return;
    };
    let me = format!("kp{round}");
    let body = with_service(worker_body(&me), TASK_SERVICE);
    {
        let mut l = ledger.lock().unwrap();
        l.pullers.insert(me.clone());
        l.reg_attempted.insert(me.clone());
    }
    match try_request(&mut conn, "POST", "/api/worker/register", Some(&body)) {
        Some(r) if r.status == 200 => ledger.lock().unwrap().reg_acked.insert(me.clone()),
        Some(r) => panic!("register {me}: {} {}", r.status, r.text()),
        None => return,
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let path = format!("/api/worker/tasks?worker_id={me}&max=4&wait=1");
        let tasks = match try_request(&mut conn, "GET", &path, None) {
            Some(r) if r.status == 200 => r.json()["tasks"].as_array().unwrap().clone(),
            Some(r) => panic!("pull: {} {}", r.status, r.text()),
            None => return,
        };
        for t in tasks {
            let id = t["task_id"].as_str().unwrap().to_string();
            let attempt = t["attempt"].as_u64().unwrap();
            ledger
                .lock()
                .unwrap()
                .leased
                .insert(id.clone(), (me.clone(), attempt));
            n += 1;
            let outcome = json!({"m": t["payload"]["m"], "by": me});
            let (body, fail) = match n % 3 {
                0 => continue,
                1 => (
                    json!({"worker_id": me, "task_id": id, "result": outcome}),
                    false,
                ),
                _ => (
                    json!({"worker_id": me, "task_id": id, "status": "failed",
                           "error": outcome, "retry": false}),
                    true,
                ),
            };
            {
                let mut l = ledger.lock().unwrap();
                let attempted = if fail {
                    &mut l.fail_attempted
                } else {
                    &mut l.complete_attempted
                };
                attempted.insert(id.clone());
            }
            match try_request(&mut conn, "POST", "/api/worker/task-complete", Some(&body)) {
                Some(r) if r.status == 200 => {
                    let mut l = ledger.lock().unwrap();
                    let acked = if fail {
                        &mut l.failed
                    } else {
                        &mut l.completed
                    };
                    acked.insert(id, outcome);
                }
                Some(r) => panic!("report on {id}: {} {}", r.status, r.text()),
                None => return,
            }
        }
    }
}

/// Drives registrations, unregistrations, task submissions, pulls and
/// completions until the server dies or `stop` is set, recording every
/// attempt before it is sent and every acknowledgement after it arrives.
fn load(addr: SocketAddr, round: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut threads = Vec::new();
    for f in [submit_tasks, pull_tasks] {
        let (ledger, stop) = (ledger.clone(), stop.clone());
        threads.push(std::thread::spawn(move || f(addr, round, ledger, stop)));
    }
    for t in 0..3 {
        let (ledger, stop) = (ledger.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let Some(mut conn) = try_open(addr) else {
                return;
            };
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let id = format!("k{round}-{t}-{i}");
                ledger.lock().unwrap().reg_attempted.insert(id.clone());
                match try_request(
                    &mut conn,
                    "POST",
                    "/api/worker/register",
                    Some(&worker_body(&id)),
                ) {
                    Some(r) if r.status == 200 => {
                        ledger.lock().unwrap().reg_acked.insert(id);
                    }
                    Some(r) => panic!("register {id}: {} {}", r.status, r.text()),
                    None => return,
                }
            }
        }));
    }
    {
        let (ledger, stop) = (ledger.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let Some(mut conn) = try_open(addr) else {
                return;
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(15));
                // Unregister one acknowledged worker (not a puller).
                let victim = {
                    let l = ledger.lock().unwrap();
                    l.reg_acked
                        .difference(&l.unreg_attempted)
                        .find(|id| !l.pullers.contains(*id))
                        .cloned()
                };
                if let Some(id) = victim {
                    ledger.lock().unwrap().unreg_attempted.insert(id.clone());
                    match try_request(
                        &mut conn,
                        "DELETE",
                        &format!("/api/worker/unregister/{id}"),
                        None,
                    ) {
                        Some(r) if r.status == 200 => {
                            ledger.lock().unwrap().unreg_acked.insert(id);
                        }
                        Some(r) => panic!("unregister {id}: {} {}", r.status, r.text()),
                        None => return,
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn kill_9_mid_load_loses_nothing_acknowledged() {
    let dir = temp_dir("kill9");
    let db = dir.join("coordinator.db");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..3 {
        let p = start_proc(&db, 2, &[]);
        if round > 0 {
            verify(p.addr, &ledger.lock().unwrap(), round);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            let addr = p.addr;
            std::thread::spawn(move || load(addr, round, ledger, stop))
        };
        std::thread::sleep(Duration::from_millis(400 + fastrand::u64(..300)));
        p.kill9();
        stop.store(true, Ordering::Relaxed);
        driver.join().unwrap();
    }
    // Restart with a different shard count: every worker must be found by
    // the shard that now owns it.
    let p = start_proc(&db, 3, &[]);
    let l = ledger.lock().unwrap();
    let present = verify(p.addr, &l, 3);
    assert!(
        l.reg_acked.len() >= 30,
        "too little load to prove anything: {} registrations",
        l.reg_acked.len()
    );
    assert!(!l.unreg_acked.is_empty(), "no unregistration acknowledged");
    assert!(
        l.submit_acked.len() >= 20
            && l.completed.len() >= 5
            && l.failed.len() >= 5
            && l.leased.len() > l.completed.len() + l.failed.len(),
        "too little task load to prove anything: {} submitted, {} leased, {} completed, {} failed",
        l.submit_acked.len(),
        l.leased.len(),
        l.completed.len(),
        l.failed.len()
    );
    let mut conn = Conn::open(p.addr);
    for id in &present {
        let r = conn.post("/api/worker/heartbeat", &json!({"worker_id": id}));
        assert_eq!(r.status, 200, "heartbeat {id} after reshard: {}", r.text());
    }
    // Every queued task sits in a queue its new shard serves: a fresh
    // worker of the service drains exactly those.
    let queued: HashSet<String> = walk_pages(
        &mut conn,
        "/api/admin/tasks?state=queued&limit=1000",
        "tasks",
    )
    .iter()
    .map(|t| t["task_id"].as_str().unwrap().to_string())
    .collect();
    assert!(!queued.is_empty(), "no queued task survived to re-place");
    register(p.addr, &with_service(worker_body("kp-final"), TASK_SERVICE));
    let mut pulled = HashSet::new();
    loop {
        let r = conn.get("/api/worker/tasks?worker_id=kp-final&max=100");
        let tasks = r.json()["tasks"].as_array().unwrap().clone();
        if tasks.is_empty() {
            break;
        }
        pulled.extend(
            tasks
                .iter()
                .map(|t| t["task_id"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(pulled, queued);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn heartbeat_state_is_flushed_within_the_window_and_age_carries_on() {
    let dir = temp_dir("hbflush");
    let db = dir.join("c.db");
    let p = start_proc(&db, 2, &["--heartbeat-flush-ms", "100"]);
    register(p.addr, &gpu_worker("hb-1"));
    let r = heartbeat(
        p.addr,
        &json!({"worker_id": "hb-1", "status": "busy", "current_load": 0.42,
                "loaded_models": ["m1"]}),
    );
    assert_eq!(r.status, 200);
    let before = all_workers(p.addr)["hb-1"].clone();
    // Three flush windows, then no chance for a clean shutdown.
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    p.kill9();
    std::thread::sleep(Duration::from_millis(200));
    let p = start_proc(&db, 2, &[]);
    let after = all_workers(p.addr)["hb-1"].clone();
    assert_eq!(after["status"], "busy");
    assert_eq!(after["current_load"], 0.42);
    assert_eq!(after["loaded_models"], json!(["m1"]));
    assert_eq!(after["last_heartbeat"], before["last_heartbeat"]);
    // The last heartbeat is as old as it really is, not reset by the restart.
    let age = after["age_seconds"].as_f64().unwrap();
    assert!(
        age >= 0.5 && age < 0.5 + killed.elapsed().as_secs_f64() + 5.0,
        "{age}"
    );
    assert_eq!(after["is_healthy"], true);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the binary on `db` expecting a start-up failure; returns stderr.
fn start_fails(db: &Path) -> String {
    let out = coordinator(db, 2, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&db.display().to_string()),
        "error must name the file: {err}"
    );
    err
}

#[test]
fn bad_database_files_stop_the_start_with_a_clear_error() {
    let dir = temp_dir("badfiles");
    // Not a database at all.
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 16384]).unwrap();
    let err = start_fails(&garbage);
    assert!(err.contains("corrupt"), "{err}");
    // The file is left alone for the operator.
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x42u8; 16384]);

    // A real database damaged in the middle.
    let damaged = dir.join("damaged.db");
    {
        let p = start_proc(&damaged, 2, &[]);
        for i in 0..300 {
            register(p.addr, &cpu_worker(&format!("d-{i}")));
        }
        p.terminate();
    }
    let mut bytes = std::fs::read(&damaged).unwrap();
    assert!(bytes.len() > 4 * 4096, "{}", bytes.len());
    for b in &mut bytes[4096 + 100..3 * 4096] {
        *b = 0xff;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    let err = start_fails(&damaged);
    assert!(err.contains("corrupt"), "{err}");

    // A path that cannot be a database file.
    let err = start_fails(&dir);
    assert!(err.contains("cannot open database"), "{err}");

    // A database another coordinator is using.
    let shared = dir.join("shared.db");
    let first = start_proc(&shared, 2, &[]);
    let err = start_fails(&shared);
    assert!(err.contains("locked"), "{err}");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_version_1_database_is_migrated_and_served() {
    let dir = temp_dir("migrate");
    let db = dir.join("v1.db");
    {
        // What the first schema looked like on disk.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE workers (worker_id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL);
             PRAGMA user_version = 1;
             PRAGMA application_id = 1380794691;",
        )
        .unwrap();
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let record = json!({
            "worker_id": "old-1", "worker_type": "gpu", "tier": 1,
            "tunnel_url": "http://old-1:8000", "ip_address": null,
            "capabilities": {"has_gpu": true, "gpu_type": "A100"},
            "services": [], "containers": [],
            "assigned_services": ["llm-inference"],
            "service_configs": [{"name": "llm-inference", "port": 8105, "priority": 1}],
            "assigned_containers": [],
            "registered_at_us": now_us - 5_000_000, "last_heartbeat_us": now_us - 2_000_000,
            "state": {"status": "healthy", "current_load": 0.25}, "tasks_completed": 4,
        });
        conn.execute(
            "INSERT INTO workers (worker_id, record) VALUES (?1, ?2)",
            ("old-1", record.to_string()),
        )
        .unwrap();
    }
    let s = start(2, |c| c.database_path = Some(db.clone()));
    let w = all_workers(s.addr)["old-1"].clone();
    assert_eq!(w["tier"], 1);
    assert_eq!(w["current_load"], 0.25);
    assert_eq!(w["tasks_completed"], 4);
    assert_eq!(w["is_healthy"], true);
    let d = get(s.addr, "/api/services/discover/llm-inference");
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(
        heartbeat(s.addr, &json!({"worker_id": "old-1"})).status,
        200
    );
    s.server.stop();
    let v: i64 = db_value(&db, "PRAGMA user_version");
    assert_eq!(v, coordinator::store::SCHEMA_VERSION);
    let hb: Option<i64> = db_value(
        &db,
        "SELECT last_heartbeat_us FROM workers WHERE worker_id = 'old-1'",
    );
    assert!(
        hb.is_some(),
        "the heartbeat was flushed into the new column"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn store_metrics_are_exported() {
    let dir = temp_dir("metrics");
    let s = start(2, |c| c.database_path = Some(dir.join("m.db")));
    for i in 0..5 {
        register(s.addr, &cpu_worker(&format!("m-{i}")));
    }
    let scrape_now = || parse_metrics(&get(s.addr, "/metrics").text());
    let mut scrape = scrape_now();
    // The writer acknowledges before it updates its figures.
    eventually(Duration::from_secs(5), || {
        scrape = scrape_now();
        scrape.samples.iter().any(|x| {
            x.metric == "coordinator_store_ops_total"
                && x.value == prometheus_parse::Value::Counter(5.0)
        })
    });
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|x| x.metric == name)
            .map(|x| match x.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => -1.0,
            })
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(value("coordinator_store_commits_total") >= 1.0);
    assert!(value("coordinator_store_ops_total") >= 5.0);
    assert!(value("coordinator_store_bytes") > 0.0);
    assert!(value("coordinator_store_queue_depth") >= 0.0);
    for h in [
        "coordinator_store_batch_size",
        "coordinator_store_commit_duration_seconds",
    ] {
        let found = scrape.samples.iter().any(|x| {
            x.metric == h
                && matches!(&x.value, prometheus_parse::Value::Histogram(b)
                    if b.iter().any(|c| c.count >= 1.0))
        });
        assert!(found, "{h} has no observations");
    }
    s.server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets the file-size limit of a running process (as a full disk would
/// refuse writes past a point).
fn set_fsize_limit(pid: u32, bytes: Option<u64>) {
    let v = bytes.unwrap_or(libc::RLIM_INFINITY);
    let lim = libc::rlimit {
        rlim_cur: v,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on our own child with a valid struct.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn write_failures_answer_503_keep_reads_and_catch_up_when_space_returns() {
    let dir = temp_dir("diskfull");
    let db = dir.join("c.db");
    let p = start_proc(&db, 2, &[]);
    register(p.addr, &cpu_worker("df-0"));
    // No file may grow past its current end any more.
    set_fsize_limit(p.child.id(), Some(1));
    let mut refused = None;
    for i in 1..400 {
        let id = format!("df-{i}");
        let r = post(p.addr, "/api/worker/register", &cpu_worker(&id));
        if r.status == 503 {
            assert!(r.detail().contains("Storage unavailable"), "{}", r.text());
            refused = Some(id);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let refused = refused.expect("a write past the limit is refused with 503");
    // Reads and heartbeats keep working.
    assert_eq!(get(p.addr, "/api/admin/workers").status, 200);
    assert_eq!(get(p.addr, "/health").status, 200);
    assert_eq!(heartbeat(p.addr, &json!({"worker_id": "df-0"})).status, 200);
    // Space returns: the refused change (kept in memory) is written by the
    // writer's retry, and new writes succeed again.
    set_fsize_limit(p.child.id(), None);
    assert!(eventually(Duration::from_secs(5), || {
        post(p.addr, "/api/worker/register", &cpu_worker("df-after")).status == 200
    }));
    p.kill9();
    let p = start_proc(&db, 2, &[]);
    let present = all_workers(p.addr);
    for id in ["df-0", "df-after", refused.as_str()] {
        assert!(present.contains_key(id), "{id} missing after restart");
    }
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_silent_past_the_removal_timeout_are_not_restored() {
    let dir = temp_dir("expiry");
    let db = dir.join("e.db");
    let s = start(2, |c| c.database_path = Some(db.clone()));
    register(s.addr, &cpu_worker("stale-1"));
    let r = post(
        s.addr,
        "/api/coordinator/broadcast-job",
        &json!({"job_type": "j", "job_data": {}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    s.server.stop();
    std::thread::sleep(Duration::from_millis(1200));
    let s = start(2, |c| {
        c.database_path = Some(db.clone());
        c.heartbeat_timeout = Duration::from_millis(500);
        c.worker_timeout = Duration::from_secs(1);
    });
    assert!(all_workers(s.addr).is_empty());
    // The acknowledged task addressed to it is kept, as it would be in
    // memory: a worker coming back under that id still gets it.
    let tasks = get(s.addr, "/api/admin/tasks").json();
    assert_eq!(
        tasks["tasks"][0]["target"],
        json!({"kind": "worker", "name": "stale-1"})
    );
    assert_eq!(tasks["tasks"][0]["state"], "queued");
    s.server.stop();
    // Its row is gone from the file too.
    let rows: (i64, i64) = (
        db_value(&db, "SELECT count(*) FROM workers"),
        db_value(&db, "SELECT count(*) FROM tasks"),
    );
    assert_eq!(rows, (0, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn leases_that_ran_out_while_down_requeue_and_pins_survive_a_reshard() {
    let dir = temp_dir("leases");
    let db = dir.join("c.db");
    let lease = ["--task-lease-seconds", "2"];
    let p = start_proc(&db, 2, &lease);
    register(p.addr, &with_service(cpu_worker("lw-1"), "svc-l"));
    let mut ids = Vec::new();
    for (i, max_attempts) in [(0, 3), (1, 1)] {
        let r = post(
            p.addr,
            "/api/tasks",
            &json!({"type": "t", "payload": {"i": i}, "service": "svc-l",
                    "max_attempts": max_attempts}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["task_id"].as_str().unwrap().to_string());
    }
    let r = get(p.addr, "/api/worker/tasks?worker_id=lw-1&max=2");
    assert_eq!(r.json()["tasks"].as_array().unwrap().len(), 2);
    let r = call(
        p.addr,
        "PUT",
        "/api/admin/pins",
        Some(&json!({"service": "svc-l", "workers": ["lw-1", "lw-2"]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    p.kill9();
    // Both leases run out while the process is down.
    std::thread::sleep(Duration::from_millis(2300));
    let p = start_proc(&db, 3, &lease);
    let t0 = get(p.addr, &format!("/api/tasks/{}", ids[0])).json();
    assert_eq!(
        (t0["state"].as_str(), t0["attempts"].as_u64()),
        (Some("queued"), Some(1))
    );
    let t1 = get(p.addr, &format!("/api/tasks/{}", ids[1])).json();
    assert_eq!(t1["state"], "dead", "{t1}");
    let pins = get(p.addr, "/api/admin/pins").json();
    assert_eq!(
        pins["pins"],
        json!([{"kind": "service", "name": "svc-l", "workers": ["lw-1", "lw-2"]}])
    );
    // The requeued task is delivered again, as attempt 2.
    let r = get(p.addr, "/api/worker/tasks?worker_id=lw-1&max=5");
    let got = r.json()["tasks"].as_array().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["task_id"], ids[0].as_str());
    assert_eq!(got[0]["attempt"], 2);
    // A removed pin stays removed.
    let r = call(p.addr, "DELETE", "/api/admin/pins?service=svc-l", None);
    assert_eq!(r.status, 200, "{}", r.text());
    p.terminate();
    let p = start_proc(&db, 2, &lease);
    assert_eq!(get(p.addr, "/api/admin/pins").json()["count"], 0);
    // The second delivery was durable too.
    assert_eq!(
        get(p.addr, &format!("/api/tasks/{}", ids[0])).json()["attempts"],
        2
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retention_drops_the_oldest_finished_tasks_from_memory_and_file() {
    let dir = temp_dir("retention");
    let db = dir.join("c.db");
    let args = ["--task-retention", "2"];
    let p = start_proc(&db, 2, &args);
    register(p.addr, &cpu_worker("rw-1"));
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = post(
            p.addr,
            "/api/tasks",
            &json!({"type": "t", "payload": {"i": i}, "worker_id": "rw-1"}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["task_id"].as_str().unwrap().to_string();
        let got = get(p.addr, "/api/worker/tasks?worker_id=rw-1&max=1").json();
        assert_eq!(got["tasks"][0]["task_id"], id.as_str());
        let r = post(
            p.addr,
            "/api/worker/task-complete",
            &json!({"worker_id": "rw-1", "task_id": id, "result": i}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(id);
    }
    // The worker's queue is on one shard, so its retention of 2 applies.
    let states = |addr| -> Vec<u16> {
        ids.iter()
            .map(|id| get(addr, &format!("/api/tasks/{id}")).status)
            .collect()
    };
    assert_eq!(states(p.addr), [404, 200, 200]);
    p.kill9();
    let p = start_proc(&db, 2, &args);
    assert_eq!(states(p.addr), [404, 200, 200]);
    drop(p);
    let rows: i64 = db_value(&db, "SELECT count(*) FROM tasks");
    assert_eq!(rows, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
