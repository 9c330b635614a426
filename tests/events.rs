//! The change stream over real HTTP: `/api/events` (SSE and NDJSON),
//! resuming, resets, filters, slow subscribers, and the worker lists'
//! blocking queries and deltas.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// An event as a test reads it.
#[derive(Debug, Clone)]
struct Ev {
    id: String,
    kind: String,
    data: Value,
}

/// A read that timed out or was interrupted (the server's threads share
/// this process and their signals): try again.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// A streaming `GET` read incrementally: the head, then the chunked body.
struct Stream {
    s: TcpStream,
    raw: Vec<u8>,
    text: Vec<u8>,
    status: u16,
    headers: Vec<(String, String)>,
    ended: bool,
}

impl Stream {
    fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut st = Stream {
            s,
            raw: Vec::new(),
            text: Vec::new(),
            status: 0,
            headers: Vec::new(),
            ended: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let end = loop {
            if let Some(i) = st.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(Instant::now() < deadline, "no response head for {path}");
            st.fill();
        };
        let head = String::from_utf8_lossy(&st.raw[..end]).to_string();
        st.raw.drain(..end + 4);
        let mut lines = head.lines();
        st.status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        st.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        st
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads what is there (up to the socket timeout); false at EOF.
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        match self.s.read(&mut buf) {
            Ok(0) => {
                self.ended = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if transient(&e) => true,
            Err(_) => {
                self.ended = true;
                false
            }
        }
    }

    /// Moves complete chunks from `raw` to `text`.
    fn dechunk(&mut self) {
        loop {
            let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..i]).unwrap().trim(), 16)
                    .unwrap();
            if size == 0 {
                self.ended = true;
                return;
            }
            if self.raw.len() < i + 2 + size + 2 {
                return;
            }
            self.text.extend_from_slice(&self.raw[i + 2..i + 2 + size]);
            self.raw.drain(..i + 2 + size + 2);
        }
    }

    /// The next SSE event (comments skipped), within `wait`.
    fn next(&mut self, wait: Duration) -> Option<Ev> {
        let deadline = Instant::now() + wait;
        loop {
            self.dechunk();
            if let Some(i) = self.text.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.text[..i].to_vec()).unwrap();
                self.text.drain(..i + 2);
                let (mut id, mut kind, mut data) = (String::new(), String::new(), None);
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("id: ") {
                        id = v.to_string();
                    } else if let Some(v) = l.strip_prefix("event: ") {
                        kind = v.to_string();
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                match data {
                    Some(data) => return Some(Ev { id, kind, data }),
                    None => continue, // a comment (keepalive)
                }
            }
            if self.ended || Instant::now() >= deadline {
                return None;
            }
            self.fill();
        }
    }

    /// The next NDJSON line, within `wait`.
    fn next_line(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            self.dechunk();
            if let Some(i) = self.text.iter().position(|b| *b == b'\n') {
                let line = self.text[..i].to_vec();
                self.text.drain(..=i);
                if line.is_empty() {
                    continue;
                }
                return Some(serde_json::from_slice(&line).unwrap());
            }
            if self.ended || Instant::now() >= deadline {
                return None;
            }
            self.fill();
        }
    }

    /// Events until one satisfies `stop` (included), within `wait`.
    fn until(&mut self, wait: Duration, mut stop: impl FnMut(&Ev) -> bool) -> Vec<Ev> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(e) = self.next(deadline.saturating_duration_since(Instant::now())) {
            let done = stop(&e);
            got.push(e);
            if done {
                return got;
            }
        }
        panic!("stream ended or timed out; got {got:#?}");
    }
}

const WAIT: Duration = Duration::from_secs(20);

fn kinds(evs: &[Ev]) -> Vec<&str> {
    evs.iter().map(|e| e.kind.as_str()).collect()
}

/// The index a worker list reports now.
fn index(addr: SocketAddr) -> String {
    let r = get(addr, "/api/coordinator/workers");
    assert_eq!(r.status, 200);
    r.header("x-coordinator-index").unwrap().to_string()
}

/// Submits a task for `service`; its id.
fn submit(addr: SocketAddr, service: &str) -> String {
    let r = post(
        addr,
        "/api/tasks",
        &json!({"type": "t", "payload": {}, "service": service}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["task_id"].as_str().unwrap().to_string()
}

/// Worker `w` pulls one task.
fn pull(addr: SocketAddr, w: &str) {
    let r = get(addr, &format!("/api/worker/tasks?worker_id={w}&max=1"));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn every_event_type_arrives_with_its_data() {
    let s = start(2, |c| {
        c.task_max_attempts = 2;
        c.task_lease = Duration::from_millis(300);
    });
    let mut es = Stream::open(s.addr, "/api/events?topics=worker,task,pin", &[]);
    assert_eq!(es.status, 200);
    assert_eq!(es.header("content-type"), Some("text/event-stream"));
    let mut cov = Stream::open(s.addr, "/api/events?topics=service&service=svc-ev", &[]);
    let w = id_on_shard("ev", 1, 2);
    register(s.addr, &with_service(cpu_worker(&w), "svc-ev"));
    let reg = es.next(WAIT).unwrap();
    assert_eq!(reg.kind, "worker.registered");
    assert_eq!(reg.data["key"], w.as_str());
    assert_eq!(reg.data["data"]["worker_type"], "cpu");
    assert!(reg.data["data"]["services"]
        .as_array()
        .unwrap()
        .contains(&json!("svc-ev")));
    assert_eq!(reg.data["index"], reg.id.as_str());
    assert!(reg.data["time"].as_str().unwrap().ends_with("+00:00"));
    let c = cov.next(WAIT).unwrap();
    assert_eq!(c.kind, "service.coverage");
    assert_eq!(
        c.data["data"],
        json!({"service": "svc-ev", "healthy": 1, "previous": 0})
    );

    // A status change is an event; the same status again is not.
    heartbeat(s.addr, &json!({"worker_id": w, "status": "busy"}));
    heartbeat(s.addr, &json!({"worker_id": w, "status": "busy"}));
    heartbeat(
        s.addr,
        &json!({"worker_id": w, "status": "busy", "loaded_models": ["m1"]}),
    );
    let got = es.until(WAIT, |e| e.kind == "worker.updated");
    assert_eq!(kinds(&got), ["worker.state", "worker.updated"]);
    assert_eq!(
        got[0].data["data"],
        json!({"from": "healthy", "to": "busy"})
    );
    assert_eq!(got[1].data["data"]["models"], json!(["m1"]));

    // Tasks: submitted, leased, completed; a failure with an attempt left
    // is requeued, then failed; a lease that runs out on the last attempt
    // is dead.
    let t1 = submit(s.addr, "svc-ev");
    let leased = get(s.addr, &format!("/api/worker/tasks?worker_id={w}&max=1")).json();
    assert_eq!(leased["tasks"][0]["task_id"], t1.as_str());
    let done = json!({"worker_id": w, "task_id": t1, "result": {"ok": 1}});
    assert_eq!(post(s.addr, "/api/worker/task-complete", &done).status, 200);
    let got = es.until(WAIT, |e| e.kind == "task.completed");
    assert_eq!(
        kinds(&got),
        ["task.submitted", "task.leased", "task.completed"]
    );
    assert!(got.iter().all(|e| e.data["key"] == t1.as_str()));
    assert_eq!(got[1].data["data"]["worker_id"], w.as_str());
    assert_eq!(got[2].data["data"]["state"], "completed");

    let t2 = submit(s.addr, "svc-ev");
    let fail = json!({"worker_id": w, "task_id": t2, "status": "failed", "error": "oom"});
    for _ in 0..2 {
        pull(s.addr, &w);
        assert_eq!(post(s.addr, "/api/worker/task-complete", &fail).status, 200);
    }
    let got = es.until(WAIT, |e| e.kind == "task.failed");
    assert_eq!(
        kinds(&got),
        [
            "task.submitted",
            "task.leased",
            "task.requeued",
            "task.leased",
            "task.failed"
        ]
    );
    assert_eq!(got[2].data["data"]["reason"], "failed");

    let t3 = submit(s.addr, "svc-ev");
    pull(s.addr, &w);
    let got = es.until(WAIT, |e| e.kind == "task.requeued");
    assert_eq!(got.last().unwrap().data["data"]["reason"], "lease expired");
    pull(s.addr, &w);
    let got = es.until(WAIT, |e| e.kind == "task.dead");
    assert_eq!(got.last().unwrap().data["key"], t3.as_str());

    // Pins.
    let pin = json!({"service": "svc-ev", "workers": [w]});
    let r = call(s.addr, "PUT", "/api/admin/pins", Some(&pin));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(s.addr, "DELETE", "/api/admin/pins?service=svc-ev", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = es.until(WAIT, |e| e.kind == "pin.removed");
    assert_eq!(kinds(&got), ["pin.set", "pin.removed"]);
    assert_eq!(got[0].data["data"]["workers"], json!([w]));

    // Unregistering: removed, and the service loses its last worker.
    let r = call(
        s.addr,
        "DELETE",
        &format!("/api/worker/unregister/{w}"),
        None,
    );
    assert_eq!(r.status, 200);
    let got = es.until(WAIT, |e| e.kind == "worker.removed");
    assert_eq!(got.last().unwrap().data["data"]["reason"], "unregistered");
    let c = cov.next(WAIT).unwrap();
    assert_eq!(
        c.data["data"],
        json!({"service": "svc-ev", "healthy": 0, "previous": 1})
    );
}

#[test]
fn silent_workers_go_stale_then_expire() {
    let s = start(2, |c| {
        c.heartbeat_timeout = Duration::from_millis(300);
        c.worker_timeout = Duration::from_millis(900);
    });
    let mut es = Stream::open(s.addr, "/api/events?topics=worker", &[]);
    register(s.addr, &cpu_worker("quiet"));
    let got = es.until(WAIT, |e| e.kind == "worker.removed");
    assert_eq!(
        kinds(&got),
        ["worker.registered", "worker.state", "worker.removed"]
    );
    assert_eq!(
        got[1].data["data"],
        json!({"from": "healthy", "to": "stale"})
    );
    assert_eq!(got[2].data["data"]["reason"], "expired");
}

#[test]
fn resuming_by_last_event_id_misses_and_repeats_nothing() {
    let s = start(4, |_| {});
    let addr = s.addr;
    let producer = std::thread::spawn(move || {
        for i in 0..400 {
            register(addr, &cpu_worker(&format!("r{i}")));
        }
    });
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last: Option<String> = None;
    let mut round = 0;
    while seen.len() < 400 {
        let headers: Vec<(&str, &str)> = match &last {
            Some(id) => vec![("Last-Event-ID", id.as_str())],
            None => vec![],
        };
        let mut es = Stream::open(addr, "/api/events?topics=worker", &headers);
        // Stop each connection after a few events (the last reads on).
        for _ in 0..(if round < 6 { 37 } else { usize::MAX }) {
            let Some(e) = es.next(WAIT) else { break };
            assert_eq!(e.kind, "worker.registered");
            *seen
                .entry(e.data["key"].as_str().unwrap().to_string())
                .or_default() += 1;
            last = Some(e.id.clone());
            if seen.len() == 400 {
                break;
            }
        }
        round += 1;
        assert!(round < 100, "no progress: {} seen", seen.len());
    }
    producer.join().unwrap();
    assert!(seen.values().all(|&n| n == 1), "repeated: {seen:?}");
    // The first subscription started after some registrations: resuming
    // from its first id on covers the rest exactly.
    assert_eq!(seen.len(), 400);
}

#[test]
fn resets_after_ring_overflow_and_for_cursors_of_another_run() {
    let s = start(2, |c| c.event_ring = 16);
    let old = index(s.addr);
    for i in 0..40 {
        register(s.addr, &cpu_worker(&format!("o{i}")));
    }
    let mut es = Stream::open(s.addr, &format!("/api/events?since={old}"), &[]);
    let e = es.next(WAIT).unwrap();
    assert_eq!(e.kind, "reset");
    assert_eq!(e.data["data"]["reason"], "cursor older than the event ring");
    // The reset's index is now: the list says the same.
    assert_eq!(e.id, index(s.addr));
    assert!(es.next(Duration::from_secs(5)).is_none() && es.ended);
    // A delta from the old cursor says reset too.
    let d = get(s.addr, &format!("/api/coordinator/workers?since={old}")).json();
    assert_eq!(d["reset"], true);
    drop(s);

    // Another run (a restart): the same cursor is foreign.
    let s = start(2, |_| {});
    let mut es = Stream::open(s.addr, "/api/events", &[("Last-Event-ID", &old)]);
    let e = es.next(WAIT).unwrap();
    assert_eq!(e.kind, "reset");
    assert_eq!(e.data["data"]["reason"], "cursor from another server run");
    // Malformed cursors are the client's mistake.
    for bad in ["nope", "1--2", "zz-1-1"] {
        let r = get(s.addr, &format!("/api/events?since={bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let r = get(s.addr, &format!("/api/coordinator/workers?index={bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = get(s.addr, "/api/events?topics=worker,nope");
    assert_eq!(r.status, 400);
    assert!(r.detail().contains("unknown topic"), "{}", r.text());
}

#[test]
fn filters_pick_topics_workers_services_and_tasks() {
    let s = start(2, |_| {});
    let a = id_on_shard("fa", 0, 2);
    let b = id_on_shard("fb", 1, 2);
    let mut by_worker = Stream::open(s.addr, &format!("/api/events?worker_id={b}"), &[]);
    let mut by_service = Stream::open(s.addr, "/api/events?service=svc-b&topics=worker", &[]);
    let mut tasks = Stream::open(s.addr, "/api/events?topics=task", &[]);
    let mut nd = Stream::open(
        s.addr,
        &format!("/api/events?worker_id={a}"),
        &[("Accept", "application/x-ndjson")],
    );
    assert_eq!(nd.header("content-type"), Some("application/x-ndjson"));
    register(s.addr, &with_service(cpu_worker(&a), "svc-a"));
    register(s.addr, &with_service(cpu_worker(&b), "svc-b"));
    let r = post(
        s.addr,
        "/api/tasks",
        &json!({"type": "t", "payload": {}, "worker_id": b}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t = r.json()["task_id"].as_str().unwrap().to_string();
    let mut by_task = Stream::open(s.addr, &format!("/api/events?task_id={t}"), &[]);
    get(s.addr, &format!("/api/worker/tasks?worker_id={b}&max=1"));
    heartbeat(s.addr, &json!({"worker_id": a, "status": "busy"}));
    heartbeat(s.addr, &json!({"worker_id": b, "status": "busy"}));

    let got = by_worker.until(WAIT, |e| e.kind == "worker.state");
    assert_eq!(
        kinds(&got),
        [
            "worker.registered",
            "task.submitted",
            "task.leased",
            "worker.state"
        ]
    );
    assert!(got
        .iter()
        .all(|e| e.data["key"] == b.as_str() || e.data["key"] == t.as_str()));
    let got = by_service.until(WAIT, |e| e.kind == "worker.state");
    assert_eq!(kinds(&got), ["worker.registered", "worker.state"]);
    assert!(got.iter().all(|e| e.data["key"] == b.as_str()));
    let got = tasks.until(WAIT, |e| e.kind == "task.leased");
    assert_eq!(kinds(&got), ["task.submitted", "task.leased"]);
    let got = by_task.until(WAIT, |e| e.kind == "task.leased");
    assert_eq!(kinds(&got), ["task.leased"]);
    let first = nd.next_line(WAIT).unwrap();
    assert_eq!(
        (first["type"].as_str(), first["key"].as_str()),
        (Some("worker.registered"), Some(a.as_str()))
    );
    let second = nd.next_line(WAIT).unwrap();
    assert_eq!(second["type"], "worker.state");
}

#[test]
fn blocking_query_wakes_on_a_change_on_another_shard_and_waits_otherwise() {
    let s = start(2, |_| {});
    let idx = index(s.addr);
    // Nothing changes: the query waits its whole wait, then answers with
    // the same index.
    let started = Instant::now();
    let r =
        conn_on_shard(s.addr, 0).get(&format!("/api/coordinator/workers?index={idx}&wait=700ms"));
    assert!(started.elapsed() >= Duration::from_millis(650));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-coordinator-index"), Some(idx.as_str()));

    // A worker of shard 1 registers while a query waits on shard 0.
    let addr = s.addr;
    let q = idx.clone();
    let waiter = std::thread::spawn(move || {
        conn_on_shard(addr, 0).get(&format!("/api/coordinator/workers?index={q}&wait=5m"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let w = id_on_shard("bq", 1, 2);
    register(s.addr, &cpu_worker(&w));
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["workers"][0]["worker_id"], w.as_str());
    assert_ne!(r.header("x-coordinator-index"), Some(idx.as_str()));
    // A cursor already behind answers at once (no wait needed).
    let r = get(s.addr, &format!("/api/admin/workers?index={idx}&wait=5m"));
    assert_eq!(r.json()["total"], 1);
    assert!(r.header("x-coordinator-index").is_some());
}

/// Applies a delta to a list kept by id.
fn apply(list: &mut BTreeMap<String, Value>, d: &Value) {
    assert_eq!(d["reset"], false, "{d}");
    for w in d["upserts"].as_array().unwrap() {
        list.insert(w["worker_id"].as_str().unwrap().to_string(), w.clone());
    }
    for id in d["removed"].as_array().unwrap() {
        list.remove(id.as_str().unwrap());
    }
}

fn by_id(r: &Value) -> BTreeMap<String, Value> {
    r["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["worker_id"].as_str().unwrap().to_string(), w.clone()))
        .collect()
}

/// What stays the same between two listings of an unchanged worker.
fn stable(w: &Value) -> Value {
    json!([
        w["worker_id"],
        w["services"],
        w["status"],
        w["loaded_models"],
        w["tier"]
    ])
}

#[test]
fn deltas_applied_to_an_old_list_equal_a_fresh_list() {
    let s = start(4, |_| {});
    for i in 0..30 {
        register(s.addr, &with_service(cpu_worker(&format!("d{i}")), "svc-d"));
    }
    for path in ["/api/coordinator/workers", "/api/admin/workers"] {
        let r = get(s.addr, path);
        let mut list = by_id(&r.json());
        let idx = r.header("x-coordinator-index").unwrap().to_string();
        // Changes of every kind, on every shard.
        for i in 30..40 {
            register(s.addr, &cpu_worker(&format!("d{i}")));
        }
        for i in 0..5 {
            call(
                s.addr,
                "DELETE",
                &format!("/api/worker/unregister/d{i}"),
                None,
            );
        }
        for i in 5..10 {
            heartbeat(
                s.addr,
                &json!({"worker_id": format!("d{i}"), "status": "offline"}),
            );
        }
        for i in 10..15 {
            heartbeat(
                s.addr,
                &json!({"worker_id": format!("d{i}"), "loaded_models": ["m"]}),
            );
        }
        let d = get(s.addr, &format!("{path}?since={idx}")).json();
        apply(&mut list, &d);
        let fresh = by_id(&get(s.addr, path).json());
        let ids = |m: &BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(ids(&list), ids(&fresh), "{path}");
        for (id, w) in &fresh {
            assert_eq!(stable(&list[id]), stable(w), "{path} {id}");
        }
        // Nothing since the delta's own index: an empty delta.
        let again = get(
            s.addr,
            &format!("{path}?since={}", d["index"].as_str().unwrap()),
        )
        .json();
        assert_eq!(again["upserts"], json!([]));
        assert_eq!(again["removed"], json!([]));
        // Put the pool back for the next list kind.
        for i in 0..15 {
            register(s.addr, &with_service(cpu_worker(&format!("d{i}")), "svc-d"));
        }
        for i in 30..40 {
            call(
                s.addr,
                "DELETE",
                &format!("/api/worker/unregister/d{i}"),
                None,
            );
        }
    }
}

#[test]
fn a_stalled_subscriber_is_dropped_while_the_others_keep_up() {
    let s = start(2, |c| c.event_subscriber_buffer = 200);
    // The stalled one: asks, then never reads (its socket fills up).
    // A small receive buffer, so the server's writes back up after a few
    // events rather than after megabytes.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut stalled: TcpStream = sock.into();
    stalled
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut good = Stream::open(s.addr, "/api/events?topics=worker", &[]);
    let subscribers = |m: &str| sum_samples(m, "coordinator_event_subscribers{");
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscribers(&get(s.addr, "/metrics").text()) < 2.0 {
        assert!(Instant::now() < deadline, "both subscribers are counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = s.addr;
    let n = 3000;
    let producer = std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        for i in 0..n {
            let r = c.post("/api/worker/register", &cpu_worker(&format!("s{i}")));
            assert_eq!(r.status, 200, "{}", r.text());
        }
    });
    let mut ids = HashSet::new();
    while ids.len() < n {
        let e = good.next(WAIT).expect("the reading subscriber keeps up");
        assert_eq!(e.kind, "worker.registered");
        ids.insert(e.data["key"].as_str().unwrap().to_string());
    }
    producer.join().unwrap();
    // Wait for the server to drop it before touching its socket: reading
    // drains the socket, which would let a not-yet-dropped subscriber catch
    // up. The gauge falls to 1 (the reading one) when the stalled one's
    // connection is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = get(s.addr, "/metrics").text();
        if subscribers(&m) <= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled subscriber was never dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its connection ends.
    stalled
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 1 << 20];
    let closed = loop {
        match stalled.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(_) => break true,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(closed, "the stalled subscriber was never dropped");
    let m = get(s.addr, "/metrics").text();
    assert!(sum_samples(&m, "coordinator_event_subscribers_dropped_total") >= 1.0);
    assert!(sum_samples(&m, "coordinator_events_sent_total") >= n as f64);
    // The server goes on serving.
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn the_stream_needs_a_credential_by_header_or_cookie() {
    let s = start(2, with_keys);
    let r = get(s.addr, "/api/events");
    assert_eq!(r.status, 401);
    // Only worker events: a service.coverage event comes from the service's
    // owner shard and may arrive before or after the registration.
    let path = "/api/events?topics=worker";
    let mut es = Stream::open(s.addr, path, &[("X-API-Key", CLIENT_KEY)]);
    assert_eq!(es.status, 200);
    // A browser: a session cookie, as EventSource cannot send headers.
    let body = json!({"api_key": CLIENT_KEY}).to_string();
    let r = Conn::open(s.addr).request("POST", "/api/session", &[], Some(body.as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut by_cookie = Stream::open(s.addr, path, &[("Cookie", &cookie)]);
    assert_eq!(by_cookie.status, 200);
    register_admin(s.addr, &cpu_worker("authed"));
    assert_eq!(es.next(WAIT).unwrap().kind, "worker.registered");
    assert_eq!(by_cookie.next(WAIT).unwrap().kind, "worker.registered");
}

#[test]
fn re_registering_a_busy_worker_reports_its_state_change() {
    let s = start(2, |_| {});
    let mut es = Stream::open(s.addr, "/api/events?topics=worker", &[]);
    register(s.addr, &cpu_worker("again"));
    heartbeat(s.addr, &json!({"worker_id": "again", "status": "busy"}));
    // A re-registration starts it over as healthy: busy -> healthy.
    register(s.addr, &cpu_worker("again"));
    let got = es.until(WAIT, |e| {
        e.kind == "worker.state" && e.data["data"]["to"] == "healthy"
    });
    assert_eq!(
        kinds(&got),
        ["worker.registered", "worker.state", "worker.state"]
    );
    assert_eq!(
        got[2].data["data"],
        json!({"from": "busy", "to": "healthy"})
    );
}

#[test]
fn subscribers_in_step_each_get_their_own_format_and_filter() {
    // Subscribers reading the same events from the same positions share
    // one framing of them: an SSE, an NDJSON and a filtered subscriber must
    // still each get exactly their own bytes.
    let s = start(2, |_| {});
    let mut sse = Stream::open(s.addr, "/api/events?topics=worker", &[]);
    let mut sse2 = Stream::open(s.addr, "/api/events?topics=worker", &[]);
    let nd_accept = [("Accept", "application/x-ndjson")];
    let mut nd = Stream::open(s.addr, "/api/events?topics=worker", &nd_accept);
    let odd = id_on_shard("step-odd", 1, 2);
    let mut one = Stream::open(s.addr, &format!("/api/events?worker_id={odd}"), &[]);
    let n = 40;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = if i == n / 2 {
            odd.clone()
        } else {
            format!("step-{i}")
        };
        register(s.addr, &cpu_worker(&id));
        ids.push(id);
    }
    let a: Vec<Ev> = (0..n).map(|_| sse.next(WAIT).unwrap()).collect();
    let b: Vec<Ev> = (0..n).map(|_| sse2.next(WAIT).unwrap()).collect();
    let c: Vec<Value> = (0..n).map(|_| nd.next_line(WAIT).unwrap()).collect();
    // Shards interleave differently for each subscriber (only each shard's
    // own order is kept), and the index says where in every shard a
    // subscriber is: so compare by worker, without the index.
    let by_key = |objs: Vec<&Value>| -> BTreeMap<String, Value> {
        objs.into_iter()
            .map(|o| {
                let mut o = o.clone();
                o.as_object_mut().unwrap().remove("index");
                (o["key"].as_str().unwrap().to_string(), o)
            })
            .collect()
    };
    for e in a.iter().chain(&b) {
        assert_eq!(e.kind, "worker.registered");
        // SSE: the `id:` line is the object's index.
        assert_eq!(e.id, e.data["index"].as_str().unwrap());
    }
    let a_objs = by_key(a.iter().map(|e| &e.data).collect());
    assert_eq!(a_objs.len(), n);
    assert_eq!(a_objs, by_key(b.iter().map(|e| &e.data).collect()));
    assert_eq!(a_objs, by_key(c.iter().collect()));
    let mut seen: Vec<&str> = a.iter().map(|e| e.data["key"].as_str().unwrap()).collect();
    seen.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(seen, want);
    let only = one.next(WAIT).unwrap();
    assert_eq!(only.data["key"], odd.as_str());
    // Nothing else reached the filtered one: the next thing it reads is
    // the state change made now.
    heartbeat(s.addr, &json!({"worker_id": odd, "status": "busy"}));
    let again = one.next(WAIT).unwrap();
    assert_eq!(
        (again.kind.as_str(), again.data["key"].as_str()),
        ("worker.state", Some(odd.as_str()))
    );
    assert_ne!(again.id, only.id);
}
