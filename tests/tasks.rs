//! Task lifecycle over real HTTP with several shards: submit, pull (and
//! long-poll), complete, leases expiring, retries, dead letters, conflicts.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn worker_with_service(id: &str, service: &str) -> Value {
    with_service(cpu_worker(id), service)
}

fn submit(addr: SocketAddr, body: Value) -> String {
    let r = post(addr, "/api/tasks", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["task_id"].as_str().unwrap().to_string()
}

fn pull(addr: SocketAddr, worker: &str, extra: &str) -> Vec<Value> {
    let r = get(
        addr,
        &format!("/api/worker/tasks?worker_id={worker}{extra}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["tasks"].as_array().unwrap().clone()
}

fn task(addr: SocketAddr, id: &str) -> Value {
    let r = get(addr, &format!("/api/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn complete(addr: SocketAddr, worker: &str, id: &str, result: Value) -> common::Resp {
    post(
        addr,
        "/api/worker/task-complete",
        &json!({"worker_id": worker, "task_id": id, "result": result}),
    )
}

#[test]
fn service_task_submitted_on_one_shard_is_pulled_and_completed_via_another() {
    let s = start(2, |_| {});
    let w = id_on_shard("sw", 1, 2);
    register(s.addr, &worker_with_service(&w, "svc-a"));
    let mut c0 = conn_on_shard(s.addr, 0);
    let mut c1 = conn_on_shard(s.addr, 1);
    let r = c0.post(
        "/api/tasks",
        &json!({"type": "embed", "payload": {"text": "hi"}, "service": "svc-a"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["task_id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["state"], "queued");
    let got = c1
        .get(&format!("/api/worker/tasks?worker_id={w}&max=5"))
        .json();
    let t = &got["tasks"][0];
    assert_eq!(t["task_id"], id.as_str());
    assert_eq!(t["type"], "embed");
    assert_eq!(t["payload"], json!({"text": "hi"}));
    assert_eq!(t["attempt"], 1);
    assert!(t["lease_expires_at"].is_string());
    let r = c0.post(
        "/api/worker/task-complete",
        &json!({"worker_id": w, "task_id": id, "result": {"v": [1, 2]}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "completed");
    for c in [&mut c0, &mut c1] {
        let t = c.get(&format!("/api/tasks/{id}")).json();
        assert_eq!(t["state"], "completed");
        assert_eq!(t["result"], json!({"v": [1, 2]}));
        assert_eq!(t["finished_by"], w.as_str());
        assert_eq!(t["target"], json!({"kind": "service", "name": "svc-a"}));
    }
    let a = get(s.addr, "/api/admin/tasks?service=svc-a").json();
    assert_eq!(a["count"], 1);
    assert_eq!(a["counts"]["completed"], 1);
    assert_eq!(a["tasks"][0]["task_id"], id.as_str());
}

#[test]
fn capability_tasks_go_to_workers_with_that_capability() {
    let s = start(2, |_| {});
    let g = id_on_shard("cg", 0, 2);
    let c = id_on_shard("cc", 1, 2);
    register(s.addr, &gpu_worker(&g));
    register(s.addr, &cpu_worker(&c));
    let id = submit(s.addr, json!({"type": "train", "capability": "has_gpu"}));
    assert!(pull(s.addr, &c, "").is_empty());
    let got = pull(s.addr, &g, "");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["task_id"], id.as_str());
}

#[test]
fn long_poll_wakes_on_submit_from_another_shard() {
    let s = start(2, |_| {});
    // Worker owned by shard 1, polling through shard 0, task submitted
    // through shard 1: the wake-up crosses shards both ways.
    let w = id_on_shard("lp", 1, 2);
    register(s.addr, &worker_with_service(&w, "svc-lp"));
    let addr = s.addr;
    let wid = w.clone();
    let poller = std::thread::spawn(move || {
        let mut c = conn_on_shard(addr, 0);
        let t0 = Instant::now();
        let r = c.get(&format!("/api/worker/tasks?worker_id={wid}&wait=8"));
        (t0.elapsed(), r.json())
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut c1 = conn_on_shard(s.addr, 1);
    let r = c1.post(
        "/api/tasks",
        &json!({"type": "x", "payload": 1, "service": "svc-lp"}),
    );
    assert_eq!(r.status, 201);
    let id = r.json()["task_id"].as_str().unwrap().to_string();
    let (took, got) = poller.join().unwrap();
    assert_eq!(got["tasks"][0]["task_id"], id.as_str(), "{got}");
    // Answered on the submit, far from the 8 s deadline.
    assert!(took < Duration::from_secs(6), "took {took:?}");

    // A worker-targeted task wakes a poll too (own queue, other shard).
    let wid = w.clone();
    let poller = std::thread::spawn(move || {
        let mut c = conn_on_shard(addr, 0);
        c.get(&format!("/api/worker/tasks?worker_id={wid}&wait=8"))
            .json()
    });
    std::thread::sleep(Duration::from_millis(300));
    let id = submit(s.addr, json!({"type": "y", "worker_id": w}));
    assert_eq!(poller.join().unwrap()["tasks"][0]["task_id"], id.as_str());
}

#[test]
fn long_poll_answers_empty_at_the_deadline_and_is_bounded() {
    let s = start(2, |c| c.task_max_wait = Duration::from_millis(600));
    let w = id_on_shard("le", 0, 2);
    register(s.addr, &worker_with_service(&w, "svc-le"));
    let t0 = Instant::now();
    assert!(pull(s.addr, &w, "&wait=0.3").is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Asking for an hour is served up to the configured bound.
    let t0 = Instant::now();
    assert!(pull(s.addr, &w, "&wait=3600").is_empty());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn abandoned_long_poll_leases_nothing() {
    let s = start(2, |_| {});
    let w = id_on_shard("ab", 1, 2);
    register(s.addr, &worker_with_service(&w, "svc-ab"));
    {
        let mut c = conn_on_shard(s.addr, 0);
        let req =
            format!("GET /api/worker/tasks?worker_id={w}&wait=10 HTTP/1.1\r\nHost: t\r\n\r\n");
        c.stream().write_all(req.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The client goes away mid-poll.
    }
    std::thread::sleep(Duration::from_millis(200));
    let id = submit(s.addr, json!({"type": "x", "service": "svc-ab"}));
    // Give a (wrongly) surviving poller time to wake and lease it.
    std::thread::sleep(Duration::from_millis(300));
    // The task was not handed to the vanished poller.
    assert_eq!(task(s.addr, &id)["state"], "queued");
    let got = pull(s.addr, &w, "");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["task_id"], id.as_str());
}

#[test]
fn expired_leases_requeue_and_the_last_attempt_dead_letters() {
    let s = start(2, |c| {
        c.task_lease = Duration::from_millis(300);
        c.task_max_attempts = 2;
    });
    let w = id_on_shard("ex", 0, 2);
    register(s.addr, &worker_with_service(&w, "svc-ex"));
    let id = submit(s.addr, json!({"type": "x", "service": "svc-ex"}));
    assert_eq!(pull(s.addr, &w, "")[0]["attempt"], 1);
    assert!(pull(s.addr, &w, "").is_empty(), "leased, not visible");
    // Long-poll picks it up again when the lease expires.
    let again = pull(s.addr, &w, "&wait=3");
    assert_eq!(again[0]["task_id"], id.as_str());
    assert_eq!(again[0]["attempt"], 2);
    assert!(eventually(Duration::from_secs(3), || task(s.addr, &id)
        ["state"]
        == "dead"));
    let t = task(s.addr, &id);
    assert_eq!(t["attempts"], 2);
    assert!(t["error"].as_str().unwrap().contains("lease expired"));
    assert!(pull(s.addr, &w, "").is_empty());
    let dead = get(s.addr, "/api/admin/tasks?state=dead").json();
    assert_eq!(dead["count"], 1);
    assert_eq!(dead["tasks"][0]["task_id"], id.as_str());
    assert_eq!(dead["counts"]["dead"], 1);
}

#[test]
fn an_operator_requeues_a_dead_letter_and_only_a_dead_or_failed_one() {
    let s = start(2, |c| {
        c.task_lease = Duration::from_millis(300);
        c.task_max_attempts = 1;
    });
    let w = id_on_shard("rq", 1, 2);
    register(s.addr, &worker_with_service(&w, "svc-rq"));
    let id = submit(s.addr, json!({"type": "x", "service": "svc-rq"}));
    assert_eq!(pull(s.addr, &w, "")[0]["task_id"], id.as_str());
    assert!(eventually(Duration::from_secs(3), || task(s.addr, &id)
        ["state"]
        == "dead"));
    // Requeued through either shard's listener: back in its queue with
    // every attempt available, no error, and pulled again.
    let path = format!("/api/admin/tasks/{id}/requeue");
    let r = call(s.addr, "POST", &path, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["state"], "queued");
    assert_eq!(t["attempts"], 0);
    assert!(t["error"].is_null());
    assert_eq!(task(s.addr, &id)["state"], "queued");
    let counts = get(s.addr, "/api/admin/tasks").json()["counts"].clone();
    assert_eq!(
        (counts["dead"].as_u64(), counts["queued"].as_u64()),
        (Some(0), Some(1))
    );
    let again = pull(s.addr, &w, "");
    assert_eq!(again[0]["task_id"], id.as_str());
    assert_eq!(again[0]["attempt"], 1);
    // Leased now: not a dead letter.
    let r = call(s.addr, "POST", &path, None);
    assert_eq!(r.status, 409);
    assert!(r.detail().contains("leased"), "{}", r.detail());
    // A reported failure on the last attempt can be requeued too.
    let fail = json!({"worker_id": w, "task_id": id, "status": "failed", "error": "boom"});
    let r = post(s.addr, "/api/worker/task-complete", &fail);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(task(s.addr, &id)["state"], "failed");
    assert_eq!(call(s.addr, "POST", &path, None).status, 200);
    // Unknown and malformed ids.
    let r = call(s.addr, "POST", "/api/admin/tasks/t-nope/requeue", None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call(s.addr, "POST", "/api/admin/tasks/%FF/requeue", None);
    assert!(r.status == 422 || r.status == 400, "{}", r.status);
    assert_eq!(call(s.addr, "GET", &path, None).status, 405);
}

#[test]
fn completion_is_idempotent_and_a_stale_lease_gets_409() {
    let s = start(2, |c| c.task_lease = Duration::from_millis(300));
    let w1 = id_on_shard("st", 0, 2);
    let w2 = id_on_shard("st", 1, 2);
    register(s.addr, &worker_with_service(&w1, "svc-st"));
    register(s.addr, &worker_with_service(&w2, "svc-st"));
    let id = submit(s.addr, json!({"type": "x", "service": "svc-st"}));
    assert_eq!(pull(s.addr, &w1, "").len(), 1);
    // w1 goes quiet; the lease expires and w2 gets the task.
    let got = pull(s.addr, &w2, "&wait=3");
    assert_eq!(got[0]["task_id"], id.as_str());
    let r = complete(s.addr, &w1, &id, json!("late"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.detail().contains("another worker"), "{}", r.detail());
    let r = complete(s.addr, &w2, &id, json!("fresh"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = complete(s.addr, &w2, &id, json!("fresh"));
    assert_eq!(r.status, 200, "repeat is fine: {}", r.text());
    assert_eq!(r.json()["state"], "completed");
    assert_eq!(complete(s.addr, &w1, &id, json!("late")).status, 409);
    let t = task(s.addr, &id);
    assert_eq!(t["result"], "fresh");
    // Counted once.
    assert_eq!(
        get(s.addr, "/api/admin/stats").json()["total_tasks_completed"],
        1
    );
}

#[test]
fn reported_failure_retries_then_fails() {
    let s = start(2, |c| c.task_max_attempts = 2);
    let w = id_on_shard("fl", 1, 2);
    register(s.addr, &worker_with_service(&w, "svc-fl"));
    let id = submit(s.addr, json!({"type": "x", "service": "svc-fl"}));
    let fail = json!({"worker_id": w, "task_id": id, "status": "failed", "error": "oom"});
    pull(s.addr, &w, "");
    let r = post(s.addr, "/api/worker/task-complete", &fail);
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("queued"))
    );
    assert_eq!(pull(s.addr, &w, "")[0]["attempt"], 2);
    let r = post(s.addr, "/api/worker/task-complete", &fail);
    assert_eq!(r.json()["state"], "failed");
    let t = task(s.addr, &id);
    assert_eq!(
        (t["state"].clone(), t["error"].clone()),
        (json!("failed"), json!("oom"))
    );
    // retry:false ends it at once.
    let id = submit(
        s.addr,
        json!({"type": "x", "service": "svc-fl", "max_attempts": 5}),
    );
    pull(s.addr, &w, "");
    let r = post(
        s.addr,
        "/api/worker/task-complete",
        &json!({"worker_id": w, "task_id": id, "status": "failed", "error": "bad input", "retry": false}),
    );
    assert_eq!(r.json()["state"], "failed");
}

#[test]
fn heartbeat_progress_extends_the_lease() {
    let s = start(2, |c| c.task_lease = Duration::from_millis(400));
    let w = id_on_shard("hb", 0, 2);
    let other = id_on_shard("hb", 1, 2);
    register(s.addr, &worker_with_service(&w, "svc-hb"));
    register(s.addr, &worker_with_service(&other, "svc-hb"));
    let id = submit(s.addr, json!({"type": "x", "service": "svc-hb"}));
    pull(s.addr, &w, "");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        let r = heartbeat(s.addr, &json!({"worker_id": w, "task_ids": [id]}));
        assert_eq!(r.status, 200);
    }
    // 750 ms in, past the 400 ms lease: still ours.
    assert_eq!(task(s.addr, &id)["state"], "leased");
    assert!(pull(s.addr, &other, "").is_empty());
    // Without progress it expires and the other worker gets it.
    assert_eq!(pull(s.addr, &other, "&wait=3")[0]["task_id"], id.as_str());
}

#[test]
fn bad_task_requests_get_clear_4xx() {
    let s = start(2, |_| {});
    register(s.addr, &cpu_worker("bw"));
    let cases = [
        (json!({"payload": 1, "service": "s"}), 422, "type"),
        (json!({"type": "x"}), 422, "target"),
        (
            json!({"type": "x", "service": "s", "worker_id": "bw"}),
            422,
            "target",
        ),
        (
            json!({"type": "x", "worker_id": "ghost"}),
            404,
            "Worker not found",
        ),
        (
            json!({"type": "x", "service": "s", "max_attempts": 0}),
            422,
            "max_attempts",
        ),
        (json!({"type": ["x"], "service": "s"}), 422, "type"),
    ];
    for (body, status, needle) in cases {
        let r = post(s.addr, "/api/tasks", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.detail().contains(needle), "{body}: {}", r.detail());
    }
    assert_eq!(get(s.addr, "/api/tasks/nope").status, 404);
    assert_eq!(
        get(s.addr, "/api/tasks/t-0000000000000001-0000000000000002").status,
        404
    );
    assert_eq!(
        get(s.addr, "/api/worker/tasks?worker_id=bw&wait=-1").status,
        422
    );
    assert_eq!(
        get(s.addr, "/api/worker/tasks?worker_id=bw&max=ten").status,
        422
    );
    // Out-of-range counts are clamped (to 1..=1000), not refused.
    for max in ["0", "-5", "99999999999999999999999"] {
        let r = get(s.addr, &format!("/api/worker/tasks?worker_id=bw&max={max}"));
        assert_eq!(r.status, 200, "max={max}: {}", r.text());
    }
    assert_eq!(get(s.addr, "/api/admin/tasks?state=zombie").status, 400);
    assert_eq!(call(s.addr, "DELETE", "/api/tasks", None).status, 405);
    // Still serving.
    assert_eq!(get(s.addr, "/health").status, 200);
}

fn metric_sum(addr: SocketAddr, prefix: &str) -> f64 {
    sum_samples(&get(addr, "/metrics").text(), prefix)
}

#[test]
fn task_metrics_show_states_events_queues_and_waiters() {
    let s = start(2, |c| {
        c.task_lease = Duration::from_millis(200);
        c.task_max_attempts = 1;
    });
    let w = id_on_shard("mt", 1, 2);
    register(s.addr, &worker_with_service(&w, "svc-mt"));
    for _ in 0..3 {
        submit(s.addr, json!({"type": "x", "service": "svc-mt"}));
    }
    assert_eq!(
        metric_sum(s.addr, "coordinator_tasks{state=\"queued\"}"),
        3.0
    );
    assert_eq!(
        metric_sum(
            s.addr,
            "coordinator_task_queue_depth{queue=\"service:svc-mt\"}"
        ),
        3.0
    );
    assert_eq!(pull(s.addr, &w, "&max=3").len(), 3);
    // Unanswered on their only attempt: dead-lettered.
    assert!(eventually(Duration::from_secs(3), || metric_sum(
        s.addr,
        "coordinator_tasks{state=\"dead\"}"
    ) == 3.0));
    assert_eq!(
        metric_sum(
            s.addr,
            "coordinator_task_events_total{event=\"dead_lettered\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_sum(
            s.addr,
            "coordinator_task_events_total{event=\"lease_expired\"}"
        ),
        3.0
    );
    // A parked long-poll is visible as a waiter until it is answered.
    let addr = s.addr;
    let wid = w.clone();
    let poller = std::thread::spawn(move || pull(addr, &wid, "&wait=5"));
    assert!(eventually(Duration::from_secs(3), || metric_sum(
        s.addr,
        "coordinator_task_waiters{"
    ) >= 1.0));
    submit(s.addr, json!({"type": "x", "service": "svc-mt"}));
    assert_eq!(poller.join().unwrap().len(), 1);
    assert!(eventually(Duration::from_secs(3), || metric_sum(
        s.addr,
        "coordinator_task_waiters{"
    ) == 0.0));
}

#[test]
fn a_pull_over_several_shards_delivers_at_most_max_in_priority_order_and_gives_the_rest_back() {
    use coordinator::tasks::task::{service_key, shard_of_key, worker_key};
    let s = start(2, |_| {});
    let w = id_on_shard("multi", 0, 2);
    // A service whose queue lives on the other shard than the worker's own.
    let own = shard_of_key(&worker_key(&w), 2);
    let svc = (0..)
        .map(|i| format!("svc-{i}"))
        .find(|n| shard_of_key(&service_key(n), 2) != own)
        .unwrap();
    register(s.addr, &worker_with_service(&w, &svc));
    let svc_task = submit(s.addr, json!({"type": "b", "service": svc}));
    let own_task = submit(s.addr, json!({"type": "a", "worker_id": w}));
    // Both shards lease at once; only the worker's own task (first in
    // priority) is delivered, and the service task goes back undelivered.
    let got = pull(s.addr, &w, "&max=1");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["task_id"], own_task.as_str());
    let back = task(s.addr, &svc_task);
    assert_eq!(back["state"], "queued", "{back}");
    assert_eq!(back["attempts"], 0, "{back}");
    // It is pulled next, as its first attempt.
    let got = pull(s.addr, &w, "&max=5");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["task_id"], svc_task.as_str());
    assert_eq!(got[0]["attempt"], 1);
}
