//! Cluster mode over real processes on loopback: a 3-member etcd cluster
//! (Debian's `etcd-server`) and coordinator processes joined to it.
//!
//! Agents register and heartbeat through any node, tasks submitted through
//! any node reach the right worker, a coordinator killed with SIGKILL under
//! load has its share served by the others within the lease TTL (nothing
//! acknowledged is lost, and it takes its share back when it returns), and
//! etcd without quorum fences writes (503) while heartbeats and reads go on
//! from memory, until quorum returns.
//!
//! Without /usr/bin/etcd the tests skip, except under CI (`CI` set), where
//! they fail: `.ci/run` installs it.

mod common;
mod sim;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const ETCD: &str = "/usr/bin/etcd";
/// The nodes' lease TTL: short, so failover fits a test.
const LEASE: u64 = 2;

fn have_etcd() -> bool {
    if Path::new(ETCD).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{ETCD} is missing (apt-get install etcd-server); CI must run the cluster tests"
    );
    eprintln!("skipping: {ETCD} not installed");
    false
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coord-cluster-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 3-member etcd cluster on loopback.
struct Etcd {
    dir: PathBuf,
    client: Vec<u16>,
    peer: Vec<u16>,
    procs: Vec<Option<Child>>,
}

impl Etcd {
    fn start(name: &str) -> Etcd {
        let dir = temp_dir(name);
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peer: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut e = Etcd {
            dir,
            client,
            peer,
            procs: vec![None, None, None],
        };
        for i in 0..3 {
            e.start_member(i);
        }
        e
    }

    fn start_member(&mut self, i: usize) {
        let initial: Vec<String> = (0..3)
            .map(|j| format!("e{j}=http://127.0.0.1:{}", self.peer[j]))
            .collect();
        let log = std::fs::File::create(self.dir.join(format!("e{i}.log"))).unwrap();
        let child = Command::new(ETCD)
            .args(["--name", &format!("e{i}")])
            .args([
                "--data-dir",
                self.dir.join(format!("e{i}")).to_str().unwrap(),
            ])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", self.client[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", self.client[i]),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer[i]),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "coordinator-test"])
            // Loopback is fast: elect quickly after a member goes.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.procs[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoints(&self) -> String {
        self.client
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One coordinator process of the cluster.
struct Node {
    id: String,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn start(id: &str, port: u16, etcd: &Etcd) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--shards", "2", "--no-pin", "--in-memory"])
            .args(["--history-interval", "1"])
            .args(["--cluster-etcd", &etcd.endpoints()])
            .args(["--node-id", id])
            .args(["--cluster-lease-seconds", &LEASE.to_string()])
            .args(["--cluster-name", "test"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start coordinator");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "{id}: {line}");
        Node {
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Some(child),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 exchange on a fresh connection; None when the node cannot
/// be reached or does not answer within 15 s (it may have been killed).
fn try_call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Option<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let node = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-coordinator-node")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some(Answer {
        status,
        node,
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[derive(Debug)]
struct Answer {
    status: u16,
    /// `X-Coordinator-Node`: the node that answered (the owner for a
    /// relayed request).
    node: String,
    json: Value,
}

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Answer {
    try_call(addr, method, path, body)
        .unwrap_or_else(|| panic!("{method} {path} on {addr}: no answer"))
}

fn register(addr: SocketAddr, id: &str) -> Answer {
    let body = json!({
        "worker_id": id,
        "tunnel_url": "http://127.0.0.1:9",
        "capabilities": {"hostname": id, "cpu_cores": 16, "has_gpu": true, "gpu_type": "RTX 4090",
                         "gpu_memory": "24GB", "worker_type": "gpu", "ram": "64GB"},
    });
    call(addr, "POST", "/api/worker/register", Some(&body))
}

fn heartbeat(addr: SocketAddr, id: &str) -> Option<Answer> {
    try_call(
        addr,
        "POST",
        "/api/worker/heartbeat",
        Some(&json!({"worker_id": id, "status": "healthy"})),
    )
}

fn members(addr: SocketAddr) -> usize {
    try_call(addr, "GET", "/health", None)
        .and_then(|a| a.json["cluster"]["members"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The healthy workers a node lists for the whole cluster.
fn listed(addr: SocketAddr) -> BTreeSet<String> {
    let a = call(addr, "GET", "/api/coordinator/workers", None);
    assert_eq!(a.status, 200, "{a:?}");
    a.json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap().to_string())
        .collect()
}

/// An SSE subscription to `/api/events` on `addr`, resuming after
/// `last_id` when given.
struct Sse {
    s: TcpStream,
    text: String,
}

impl Sse {
    fn open(addr: SocketAddr, last_id: Option<&str>) -> Sse {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let resume = last_id
            .map(|c| format!("Last-Event-ID: {c}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut sse = Sse {
            s,
            text: String::new(),
        };
        sse.read_until("\r\n\r\n", Duration::from_secs(10));
        assert!(sse.text.starts_with("HTTP/1.1 200"), "{}", sse.text);
        sse
    }

    /// Reads until `needle` has arrived; panics after `within`.
    fn read_until(&mut self, needle: &str, within: Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 8192];
        while !self.text.contains(needle) {
            assert!(
                start.elapsed() < within,
                "{needle:?} not in the stream: {}",
                self.text
            );
            match self.s.read(&mut buf) {
                Ok(0) => panic!("stream closed: {}", self.text),
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// The id of the last event read whose data names `needle`.
    fn id_of(&self, needle: &str) -> String {
        let at = self.text.find(needle).unwrap();
        let before = &self.text[..at];
        let line = before.rfind("id: ").unwrap();
        before[line + 4..].lines().next().unwrap().to_string()
    }
}

/// A WebSocket subscription to `/api/events/ws` on `addr`.
fn ws_open(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}/api/events/ws"), tcp).unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The first text message holding `needle` (each is one event).
fn ws_read_until(ws: &mut tungstenite::WebSocket<TcpStream>, needle: &str) -> String {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{needle:?} not on the WebSocket"
        );
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) if t.contains(needle) => return t.to_string(),
            Ok(tungstenite::Message::Close(c)) => panic!("closed: {c:?}"),
            Ok(_) => {}
            Err(e) => panic!("WebSocket: {e}"),
        }
    }
}

/// `(coordinator_cluster_members, coordinator_cluster_fenced)` of a node's
/// `/metrics` (a valid exposition, or the test fails). Members may dip
/// while nodes rejoin one after the other, so callers wait for a pair.
fn cluster_gauges(addr: SocketAddr) -> (f64, f64) {
    let text = common::get(addr, "/metrics").text();
    let scrape = common::parse_metrics(&text);
    let gauge = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => -1.0,
            })
            .unwrap()
    };
    (
        gauge("coordinator_cluster_members"),
        gauge("coordinator_cluster_fenced"),
    )
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {within:?}");
}

#[test]
fn any_node_serves_every_worker_and_a_killed_node_loses_nothing() {
    if !have_etcd() {
        return;
    }
    let etcd = Etcd::start("failover");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&format!("n{i}"), ports[i], &etcd))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    wait_for("3 members", Duration::from_secs(20), || {
        addrs.iter().all(|a| members(*a) == 3)
    });

    // Registrations through node 0 land on their owners, all over.
    let ids: Vec<String> = (0..30).map(|i| format!("gpu-{i:02}")).collect();
    let mut owner: HashMap<String, String> = HashMap::new();
    for id in &ids {
        let a = register(addrs[0], id);
        assert_eq!(a.status, 200, "{a:?}");
        owner.insert(id.clone(), a.node);
    }
    let owners: BTreeSet<&String> = owner.values().collect();
    assert_eq!(
        owners.len(),
        3,
        "rendezvous spreads 30 workers over 3 nodes: {owner:?}"
    );
    // Heartbeats through any node reach the owner.
    for (i, id) in ids.iter().enumerate() {
        let a = heartbeat(addrs[i % 3], id).unwrap();
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.node, owner[id], "{id} answered by its owner");
    }
    // Every node lists the whole cluster.
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    for a in &addrs {
        assert_eq!(listed(*a), all);
    }
    let stats = call(addrs[2], "GET", "/api/admin/stats", None);
    assert_eq!(stats.json["total_workers"], 30, "{stats:?}");
    assert_eq!(
        stats.json["workers_by_tier"]["gpu_workers"], 30,
        "{stats:?}"
    );
    // History: each node samples only its own share (about 10); any node
    // answers for the whole cluster, so once every node has sampled the
    // 30 in one bucket, that bucket counts all of them.
    let from = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 120;
    wait_for(
        "history of the whole cluster",
        Duration::from_secs(20),
        || {
            let h = call(
                addrs[1],
                "GET",
                &format!("/api/history?series=workers&from={from}&step=1"),
                None,
            );
            assert_eq!(h.status, 200, "{h:?}");
            assert_eq!(h.json["nodes"], 3, "{h:?}");
            let lines = h.json["lines"].as_array().unwrap();
            let buckets = h.json["timestamps"].as_array().unwrap().len();
            (0..buckets).any(|i| {
                lines
                    .iter()
                    .map(|l| l["last"][i].as_f64().unwrap_or(0.0))
                    .sum::<f64>()
                    == 30.0
            })
        },
    );

    // One change stream for the whole cluster: a subscriber on node 0
    // sees a registration another node owns, and resumes on another node
    // from the composite cursor without a reset.
    let mut sse = Sse::open(addrs[0], None);
    let far_id = (0..100)
        .map(|i| format!("ev-{i}"))
        .find(|id| {
            let a = register(addrs[2], id);
            assert_eq!(a.status, 200);
            a.node != "n0"
        })
        .unwrap();
    sse.read_until(&format!("\"{far_id}\""), Duration::from_secs(10));
    let cursor = sse.id_of(&format!("\"{far_id}\""));
    assert!(
        cursor.contains("n0~") && cursor.contains('~'),
        "composite cursor: {cursor}"
    );
    drop(sse);
    let mut resumed = Sse::open(addrs[1], Some(&cursor));
    assert_eq!(
        call(
            addrs[0],
            "DELETE",
            &format!("/api/worker/unregister/{far_id}"),
            None
        )
        .status,
        200
    );
    resumed.read_until("worker.removed", Duration::from_secs(10));
    assert!(!resumed.text.contains("event: reset"), "{}", resumed.text);
    drop(resumed);

    // The WebSocket stream is the whole cluster's as well, and a new
    // filter applies to every node's part.
    let mut ws = ws_open(addrs[1]);
    let others: Vec<String> = (0..100)
        .map(|i| format!("ws-{i}"))
        .filter(|id| {
            let a = register(addrs[1], id);
            assert_eq!(a.status, 200);
            a.node != "n1"
        })
        .take(2)
        .collect();
    let text = ws_read_until(&mut ws, &format!("\"{}\"", others[1]));
    let event: Value = serde_json::from_str(&text).unwrap();
    let index = event["index"].as_str().unwrap();
    assert!(
        ["n0~", "n1~", "n2~"].iter().all(|n| index.contains(n)),
        "composite index: {index}"
    );
    let sub = json!({"subscribe": {"worker_id": others[1]}});
    ws.send(tungstenite::Message::text(sub.to_string()))
        .unwrap();
    // Its part re-opened, the stream skips the other worker's removal.
    std::thread::sleep(Duration::from_millis(300));
    for id in &others {
        let path = format!("/api/worker/unregister/{id}");
        assert_eq!(call(addrs[0], "DELETE", &path, None).status, 200);
    }
    let text = ws_read_until(&mut ws, "worker.removed");
    assert!(text.contains(&others[1]), "{text}");
    drop(ws);

    // Tasks submitted through node 1 are pulled through node 2 by the
    // right worker; one is leased and left unanswered.
    let mut task_of: HashMap<String, String> = HashMap::new();
    for id in &ids[..9] {
        let body = json!({"type": "echo", "worker_id": id, "payload": {"for": id}});
        let a = call(addrs[1], "POST", "/api/tasks", Some(&body));
        assert_eq!(a.status, 201, "{a:?}");
        task_of.insert(id.clone(), a.json["task_id"].as_str().unwrap().to_string());
    }
    let leased_by = &ids[0];
    let pulled = call(
        addrs[2],
        "GET",
        &format!("/api/worker/tasks?worker_id={leased_by}&wait=1"),
        None,
    );
    assert_eq!(
        pulled.json["tasks"][0]["task_id"],
        task_of[leased_by].as_str()
    );
    assert_eq!(
        pulled.json["tasks"][0]["payload"]["for"],
        leased_by.as_str()
    );

    // A worker declaring services of its own (a real HTTP server), owned
    // by one node: every node proxies to it (the others relay to its
    // owner), and service tasks queued on other nodes reach it.
    let sim = sim::Sim::start("sim-echo");
    let services: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let reg = call(
        addrs[0],
        "POST",
        "/api/worker/register",
        Some(&sim.registration(&names)),
    );
    assert_eq!(reg.status, 200, "{reg:?}");
    let sim_node = reg.node.clone();
    for a in &addrs {
        let r = call(
            *a,
            "POST",
            "/service/svc-0/echo",
            Some(&json!({"via": a.to_string()})),
        );
        assert_eq!(r.status, 200, "proxy through {a}: {r:?}");
    }
    assert_eq!(sim.hits(), 3);
    let mut far = None;
    for svc in &services {
        let body = json!({"type": "job", "service": svc, "payload": {"svc": svc}});
        let a = call(addrs[1], "POST", "/api/tasks", Some(&body));
        assert_eq!(a.status, 201, "{a:?}");
        if a.node != sim_node {
            far = Some(a.json["task_id"].as_str().unwrap().to_string());
        }
    }
    let far = far.expect("a service queue on another node than the worker's");
    let mut pulled_far = false;
    for _ in 0..8 {
        let p = call(
            addrs[2],
            "GET",
            "/api/worker/tasks?worker_id=sim-echo&wait=1&max=3",
            None,
        );
        assert_eq!(p.status, 200, "{p:?}");
        for t in p.json["tasks"].as_array().unwrap() {
            let id = t["task_id"].as_str().unwrap();
            pulled_far |= id == far;
            // Progress through any node reaches the node holding the task.
            let hb = json!({"worker_id": "sim-echo", "task_ids": [id]});
            assert_eq!(
                call(addrs[0], "POST", "/api/worker/heartbeat", Some(&hb)).status,
                200
            );
            let done = json!({"worker_id": "sim-echo", "task_id": id, "result": {"ok": 1}});
            let c = call(addrs[0], "POST", "/api/worker/task-complete", Some(&done));
            assert_eq!(c.status, 200, "{c:?}");
        }
    }
    assert!(pulled_far, "the task queued on another node was pulled");
    let got = call(addrs[1], "GET", &format!("/api/tasks/{far}"), None);
    assert_eq!(got.json["state"], "completed", "{got:?}");
    let hb = sim.heartbeat(&[], 0);
    assert_eq!(
        call(addrs[1], "POST", "/api/worker/heartbeat", Some(&hb)).status,
        200
    );

    // Load: every worker heartbeats through the survivors while the node
    // owning the most workers is killed with SIGKILL.
    let victim = (0..3)
        .max_by_key(|i| owner.values().filter(|o| **o == format!("n{i}")).count())
        .unwrap();
    let survivors: Vec<SocketAddr> = (0..3).filter(|i| *i != victim).map(|i| addrs[i]).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, failures, ids, survivors) = (
            stop.clone(),
            failures.clone(),
            ids.clone(),
            survivors.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for id in &ids {
                    n += 1;
                    match heartbeat(survivors[n % 2], id) {
                        Some(a) if a.status == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    nodes[victim].kill9();
    // Every worker is served again by a live node: heartbeats 200 and the
    // list complete, without any worker registering again.
    let took = wait_for("failover", Duration::from_secs(30), || {
        ids.iter().all(|id| {
            survivors
                .iter()
                .all(|a| heartbeat(*a, id).is_some_and(|r| r.status == 200))
        }) && survivors.iter().all(|a| listed(*a).is_superset(&all))
    });
    eprintln!(
        "failover: every worker served again {:?} after kill -9 (lease {LEASE} s)",
        killed_at.elapsed().max(took)
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    eprintln!(
        "heartbeats refused during the failover: {}",
        failures.load(Ordering::Relaxed)
    );
    for a in &survivors {
        assert_eq!(members(*a), 2);
    }
    // A stream resumed from a position that names the dead node starts
    // with a reset: what that node had not sent yet is gone.
    let mut after = Sse::open(survivors[0], Some(&cursor));
    after.read_until("event: reset", Duration::from_secs(10));
    drop(after);

    // Every acknowledged task is still there and completes; the one the
    // dead node had leased completes too (its worker still holds it).
    for (id, task) in &task_of {
        let got = call(survivors[0], "GET", &format!("/api/tasks/{task}"), None);
        assert_eq!(got.status, 200, "task {task} of {id}: {got:?}");
        if id != leased_by {
            let p = call(
                survivors[1],
                "GET",
                &format!("/api/worker/tasks?worker_id={id}&wait=1"),
                None,
            );
            assert_eq!(p.json["tasks"][0]["task_id"], task.as_str(), "{id}: {p:?}");
        }
        let done = json!({"worker_id": id, "task_id": task, "result": {"ok": true}});
        let c = call(
            survivors[1],
            "POST",
            "/api/worker/task-complete",
            Some(&done),
        );
        assert_eq!(c.status, 200, "{id}: {c:?}");
        let got = call(survivors[0], "GET", &format!("/api/tasks/{task}"), None);
        assert_eq!(got.json["state"], "completed", "{got:?}");
    }

    // The killed node comes back under its id: it rejoins and takes its
    // share back; every worker is still served and listed once.
    let back = Node::start(&format!("n{victim}"), ports[victim], &etcd);
    wait_for("rejoin", Duration::from_secs(20), || {
        addrs.iter().all(|a| members(*a) == 3)
    });
    wait_for("share taken back", Duration::from_secs(20), || {
        ids.iter().filter(|id| owner[*id] == back.id).all(|id| {
            heartbeat(addrs[(victim + 1) % 3], id)
                .is_some_and(|a| a.status == 200 && a.node == back.id)
        })
    });
    for a in &addrs {
        assert!(listed(*a).is_superset(&all));
    }
    nodes[victim] = back;
    // A broadcast through one node reaches every capable worker.
    let job = json!({"job_type": "reload", "job_data": {"m": 1}});
    let b = call(
        addrs[1],
        "POST",
        "/api/coordinator/broadcast-job",
        Some(&job),
    );
    assert_eq!(b.json["broadcasted_to"], ids.len(), "{b:?}");
}

#[test]
fn without_etcd_quorum_writes_are_refused_and_heartbeats_go_on() {
    if !have_etcd() {
        return;
    }
    let mut etcd = Etcd::start("quorum");
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let nodes: Vec<Node> = (0..2)
        .map(|i| Node::start(&format!("q{i}"), ports[i], &etcd))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    wait_for("2 members", Duration::from_secs(20), || {
        addrs.iter().all(|a| members(*a) == 2)
    });
    let ids: Vec<String> = (0..10).map(|i| format!("w-{i}")).collect();
    for id in &ids {
        assert_eq!(register(addrs[0], id).status, 200);
    }

    // One etcd member down: the cluster keeps its quorum and serves.
    etcd.kill(0);
    wait_for(
        "writes with 2 of 3 etcd members",
        Duration::from_secs(20),
        || register(addrs[1], "after-one-down").status == 200,
    );
    let task = json!({"type": "t", "worker_id": "w-1"});
    wait_for("submit with 2 of 3", Duration::from_secs(20), || {
        call(addrs[0], "POST", "/api/tasks", Some(&task)).status == 201
    });

    // Two down: no quorum. Writes are refused with 503 and a detail;
    // heartbeats and reads are answered from memory.
    etcd.kill(1);
    wait_for("registrations refused", Duration::from_secs(30), || {
        let a = register(addrs[0], "no-quorum");
        a.status == 503 && a.json["detail"].as_str().is_some_and(|d| !d.is_empty())
    });
    wait_for("submits refused", Duration::from_secs(30), || {
        call(addrs[1], "POST", "/api/tasks", Some(&task)).status == 503
    });
    for (i, id) in ids.iter().enumerate() {
        let a = heartbeat(addrs[i % 2], id).unwrap();
        assert_eq!(a.status, 200, "heartbeat of {id} without quorum: {a:?}");
    }
    wait_for("fenced in /metrics", Duration::from_secs(30), || {
        cluster_gauges(addrs[0]).1 == 1.0
    });
    let listed_now = listed(addrs[1]);
    for id in &ids {
        assert!(listed_now.contains(id), "{id} listed without quorum");
    }

    // Quorum returns: the nodes rejoin by themselves and take writes.
    etcd.start_member(0);
    etcd.start_member(1);
    wait_for(
        "writes after quorum returns",
        Duration::from_secs(60),
        || {
            register(addrs[0], "after-recovery").status == 200
                && call(addrs[1], "POST", "/api/tasks", Some(&task)).status == 201
        },
    );
    for id in &ids {
        assert_eq!(heartbeat(addrs[1], id).unwrap().status, 200, "{id}");
    }
    wait_for("unfenced in /metrics", Duration::from_secs(30), || {
        cluster_gauges(addrs[0]) == (2.0, 0.0)
    });
    drop(nodes);
}
