//! Broadcast fan-out (one task per capable worker), task pull and
//! completion in both request shapes, over real HTTP.

mod common;

use common::*;
use serde_json::json;

#[test]
fn broadcast_reaches_every_capable_worker_on_every_shard_exactly_once() {
    let s = start(4, |_| {});
    let mut capable = Vec::new();
    let mut incapable = Vec::new();
    for shard in 0..4 {
        let g = id_on_shard(&format!("bg{shard}"), shard, 4);
        let c = id_on_shard(&format!("bc{shard}"), shard, 4);
        let st = id_on_shard(&format!("bs{shard}"), shard, 4);
        register(s.addr, &gpu_worker(&g));
        register(s.addr, &cpu_worker(&c));
        register(s.addr, &storage_worker(&st));
        capable.extend([g, c]);
        incapable.push(st);
    }
    let r = post(
        s.addr,
        "/api/coordinator/broadcast-job",
        &json!({"job_type": "reload", "job_data": {"model": "m"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(b["job_type"], "reload");
    assert_eq!(b["broadcasted_to"], 8);
    assert_eq!(b["successful"], 8);
    let mut got: Vec<String> = b["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = capable.clone();
    want.sort();
    assert_eq!(got, want);
    for w in b["workers"].as_array().unwrap() {
        let id = w["worker_id"].as_str().unwrap();
        let tasks = get(s.addr, &format!("/api/worker/tasks?worker_id={id}")).json();
        let tasks = tasks["tasks"].as_array().unwrap().clone();
        assert_eq!(tasks.len(), 1, "{id}: {tasks:?}");
        assert_eq!(tasks[0]["task_id"], w["task_id"]);
        assert_eq!(tasks[0]["job_type"], "reload");
        assert_eq!(tasks[0]["job_data"], json!({"model": "m"}));
        // Leased: the next pull is empty.
        assert_eq!(
            get(s.addr, &format!("/api/worker/tasks?worker_id={id}")).json(),
            json!({"tasks": []})
        );
        // The reply's id can be followed, from any shard.
        let tid = w["task_id"].as_str().unwrap();
        let t = get(s.addr, &format!("/api/tasks/{tid}")).json();
        assert_eq!(
            (t["state"].as_str(), t["worker_id"].as_str()),
            (Some("leased"), Some(id))
        );
        let r = post(
            s.addr,
            "/api/worker/task-complete",
            &json!({"worker_id": id, "task_id": tid, "result": {"reloaded": true}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let t = get(s.addr, &format!("/api/tasks/{tid}")).json();
        assert_eq!(t["state"], "completed");
        assert_eq!(t["result"], json!({"reloaded": true}));
    }
    let a = get(s.addr, "/api/admin/tasks").json();
    assert_eq!(a["counts"]["completed"], 8, "{a}");
    for id in &incapable {
        assert_eq!(
            get(s.addr, &format!("/api/worker/tasks?worker_id={id}")).json(),
            json!({"tasks": []})
        );
    }
}

#[test]
fn broadcast_filters_on_required_capability_and_503s_when_none() {
    let s = start(2, |_| {});
    register(s.addr, &storage_worker("only-storage"));
    let r = post(
        s.addr,
        "/api/coordinator/broadcast-job",
        &json!({"job_type": "train"}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(
        r.detail(),
        "No capable workers available for job type: train"
    );
    register(s.addr, &gpu_worker("g"));
    register(s.addr, &cpu_worker("c"));
    let r = post(
        s.addr,
        "/api/coordinator/broadcast-job",
        &json!({"job_type": "train", "job_data": {}, "required_capability": "has_gpu"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["broadcasted_to"], 1);
    assert_eq!(r.json()["workers"][0]["worker_id"], "g");
    let r = post(
        s.addr,
        "/api/coordinator/broadcast-job",
        &json!({"job_type": "x", "required_capability": "has_tpu"}),
    );
    assert_eq!(r.status, 503);
}

#[test]
fn task_pull_and_completion_in_both_shapes() {
    let s = start(2, |_| {});
    let id = id_on_shard("tw", 1, 2);
    register(s.addr, &cpu_worker(&id));
    assert_eq!(
        get(s.addr, &format!("/api/worker/tasks?worker_id={id}")).json(),
        json!({"tasks": []})
    );
    let r = get(s.addr, "/api/worker/tasks");
    assert_eq!(r.status, 422);
    assert!(r.detail().contains("worker_id"), "{}", r.detail());
    assert_eq!(get(s.addr, "/api/worker/tasks?worker_id=ghost").status, 404);
    let mut ids = Vec::new();
    for n in 0..2 {
        let r = post(
            s.addr,
            "/api/tasks",
            &json!({"type": "echo", "payload": {"n": n}, "worker_id": id}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["task_id"].as_str().unwrap().to_string());
    }
    let pulled = get(s.addr, &format!("/api/worker/tasks?worker_id={id}")).json();
    let got: Vec<&str> = pulled["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids, "FIFO order");
    // Client shape: everything in the body.
    let r = post(
        s.addr,
        "/api/worker/task-complete",
        &json!({"worker_id": id, "task_id": ids[0], "result": {"ok": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Service shape: ids in the query, the body is the result.
    let r = post(
        s.addr,
        &format!(
            "/api/worker/task-complete?worker_id={id}&task_id={}",
            ids[1]
        ),
        &json!({"answer": 42}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["task_id"], ids[1].as_str());
    assert_eq!(
        get(s.addr, &format!("/api/tasks/{}", ids[1])).json()["result"],
        json!({"answer": 42})
    );
    let r = post(
        s.addr,
        "/api/worker/task-complete",
        &json!({"worker_id": id}),
    );
    assert_eq!(r.status, 422);
    assert!(r.detail().contains("task_id"));
    let r = post(
        s.addr,
        "/api/worker/task-complete",
        &json!({"worker_id": id, "task_id": "t1"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.detail(), "Task not found");
    assert_eq!(
        get(s.addr, "/api/admin/stats").json()["total_tasks_completed"],
        2
    );
    let w = get(s.addr, "/api/admin/workers").json()["workers"][0].clone();
    assert_eq!(w["tasks_completed"], 2);
}
