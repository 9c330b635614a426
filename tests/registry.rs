//! Registration, heartbeats, forwarding between shards, liveness and the
//! merged views, over real HTTP with 2 and 4 shards.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn local_shape_registration_answers_both_coordinators_fields() {
    let s = start(2, |_| {});
    let r = register(s.addr, &gpu_worker("gpu-a"));
    assert_eq!(r["status"], "registered");
    assert_eq!(r["worker_id"], "gpu-a");
    assert_eq!(r["worker_type"], "gpu");
    assert_eq!(r["tier"], 1);
    assert_eq!(r["heartbeat_url"], "/api/worker/heartbeat");
    assert_eq!(r["heartbeat_interval"], 30);
    assert_eq!(r["tunnel_url"], "http://gpu-a.example:8000");
    assert_eq!(r["endpoint"], "http://gpu-a.example:8000");
    assert_eq!(r["coordinator_url"], "http://test");
    // A fresh cluster: the first GPU worker takes every GPU and CPU service,
    // by priority, but one per port (`doc-processor` shares 8104 with
    // `vision-ocr`).
    assert_eq!(
        r["assigned_services"],
        json!([
            "llm-inference",
            "vision-ocr",
            "rag-embeddings",
            "ner-extraction",
            "document-processing",
            "notes-coa",
            "client-rag"
        ])
    );
    assert_eq!(
        r["service_configs"][0],
        json!({"name": "llm-inference", "port": 8105, "priority": 1})
    );
    assert_eq!(r["assigned_containers"][0]["name"], "llm-inference");
    assert_eq!(r["assigned_containers"][0]["port"], 8105);
    assert!(r["message"].as_str().unwrap().contains("tier 1"));
}

#[test]
fn service_shape_gets_generated_id_and_peer_address() {
    let s = start(2, |_| {});
    let body = json!({"capabilities": {"cpu_cores": 16, "ram": "64GB", "gpu_memory": "24576MB", "gpu_type": "RTX 4090"}});
    let r = register(s.addr, &body);
    let id = r["worker_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("worker-") && id.len() == 15, "{id}");
    assert!(id[7..].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(r["tier"], 1);
    assert_eq!(r["endpoint"], "127.0.0.1");
    let admin = get(s.addr, "/api/admin/workers").json();
    assert_eq!(admin["workers"][0]["ip_address"], "127.0.0.1");
    assert_eq!(admin["workers"][0]["worker_id"], id.as_str());
    // "7.5GB" is 7.5 GB, not 75: no GPU tier; "Unknown (AMD)" is not an error.
    let r = register(
        s.addr,
        &json!({"capabilities": {"cpu_cores": 4, "ram": "16GB", "gpu_memory": "7.5GB", "gpu_type": "X"}}),
    );
    assert_eq!(
        (r["tier"].as_u64(), r["worker_type"].as_str()),
        (Some(2), Some("cpu"))
    );
    let r = register(
        s.addr,
        &json!({"capabilities": {"cpu_cores": 8, "ram": "32GB", "gpu_memory": "Unknown (AMD)", "gpu_type": "AMD"}}),
    );
    assert_eq!(r["tier"], 2);
    // `{}` capabilities: type and tier agree.
    let r = register(s.addr, &json!({"worker_id": "empty", "capabilities": {}}));
    assert_eq!(
        (r["tier"].as_u64(), r["worker_type"].as_str()),
        (Some(2), Some("cpu"))
    );
    let r = register(s.addr, &json!({"worker_id": "nocaps"}));
    assert_eq!(r["tier"], 2);
}

#[test]
fn workers_spread_over_all_four_shards_and_views_merge() {
    let s = start(4, |_| {});
    let mut ids = Vec::new();
    for shard in 0..4 {
        for k in 0..3 {
            let id = id_on_shard(&format!("w{shard}x{k}"), shard, 4);
            register(s.addr, &cpu_worker(&id));
            ids.push(id);
        }
    }
    // Per-shard counts prove the registry really is split by owner.
    let text = get(s.addr, "/metrics").text();
    for shard in 0..4 {
        let line = format!("coordinator_shard_workers{{shard=\"{shard}\"}} 3");
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    // Whichever shard answers, the lists hold everyone.
    for _ in 0..8 {
        let r = get(s.addr, "/api/coordinator/workers");
        let j = r.json();
        assert_eq!(j["count"], 12);
        let got: HashSet<String> = j["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["worker_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, ids.iter().cloned().collect::<HashSet<_>>());
    }
    let stats = get(s.addr, "/api/admin/stats").json();
    assert_eq!(stats["total_workers"], 12);
    assert_eq!(stats["healthy_workers"], 12);
    assert_eq!(stats["workers_by_tier"]["service_workers"], 12);
    let admin = get(s.addr, "/api/admin/workers").json();
    assert_eq!(
        (admin["total"].as_u64(), admin["healthy"].as_u64()),
        (Some(12), Some(12))
    );
    assert!(admin["workers"][0]["age_seconds"].is_number());
    assert_eq!(admin["workers"][0]["is_healthy"], true);
    // Every CPU service is covered by someone; the index is merged too.
    let services = get(s.addr, "/api/admin/services").json();
    let total: u64 = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["worker_count"].as_u64().unwrap())
        .sum();
    assert!(total >= 12, "{services}");
    let list = get(s.addr, "/api/services/list").json();
    assert_eq!(list["services"]["ner-extraction"]["requires"], "cpu");
    assert!(
        list["services"]["ner-extraction"]["healthy_workers"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(list["services"]["llm-inference"]["healthy_workers"], 0);
}

#[test]
fn assignment_sees_coverage_on_other_shards() {
    let s = start(2, |_| {});
    let a = id_on_shard("gpu", 0, 2);
    let b = id_on_shard("gpu", 1, 2);
    let first = register(s.addr, &gpu_worker(&a));
    assert_eq!(first["assigned_services"].as_array().unwrap().len(), 7);
    // Everything but doc-processor is covered once now (by a worker on the
    // other shard), so the second GPU worker takes only that.
    let second = register(s.addr, &gpu_worker(&b));
    assert_eq!(second["assigned_services"], json!(["doc-processor"]));
    // All covered: a third takes only the first service in priority order.
    let third = register(s.addr, &gpu_worker(&id_on_shard("gpu-c", 0, 2)));
    assert_eq!(third["assigned_services"], json!(["llm-inference"]));
    // Re-registering the first worker does not count itself as coverage:
    // only llm-inference and doc-processor are covered without it.
    let again = register(s.addr, &gpu_worker(&a));
    assert_eq!(
        again["assigned_services"],
        json!([
            "vision-ocr",
            "rag-embeddings",
            "ner-extraction",
            "document-processing",
            "notes-coa",
            "client-rag"
        ]),
        "{again}"
    );
}

#[test]
fn heartbeat_at_a_non_owner_shard_updates_the_owner() {
    let s = start(2, |_| {});
    let id = id_on_shard("fwd", 1, 2);
    register(s.addr, &cpu_worker(&id));
    let mut c0 = conn_on_shard(s.addr, 0);
    let hb = json!({"worker_id": id, "status": "healthy", "current_load": 0.7, "loaded_models": ["llama3:8b"],
                    "active_requests": 3, "gpu_utilization": null, "available_memory": "12GB",
                    "services_status": {"ner-extraction": "running"}, "specialization": "ner"});
    let r = c0.post("/api/worker/heartbeat", &hb);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.shard(), 0);
    assert_eq!(
        r.json(),
        json!({"status": "ok", "message": "Heartbeat received"})
    );
    let w = get(s.addr, "/api/admin/workers").json()["workers"][0].clone();
    assert_eq!(w["current_load"], 0.7);
    assert_eq!(w["loaded_models"], json!(["llama3:8b"]));
    assert_eq!(w["active_requests"], 3);
    assert_eq!(w["available_memory"], "12GB");
    assert_eq!(w["specialization"], "ner");
    // A null or missing field keeps its value; status defaults to healthy.
    let r = c0.post(
        "/api/worker/heartbeat",
        &json!({"worker_id": id, "current_load": null}),
    );
    assert_eq!(r.status, 200);
    let w = get(s.addr, "/api/admin/workers").json()["workers"][0].clone();
    assert_eq!(w["current_load"], 0.7);
    assert_eq!(w["status"], "healthy");
    // The forward went over the mesh from shard 0.
    let text = get(s.addr, "/metrics").text();
    let sent = text
        .lines()
        .find(|l| l.starts_with("coordinator_mesh_sent_total{shard=\"0\"}"))
        .unwrap();
    assert!(!sent.ends_with(" 0"), "{sent}");
}

#[test]
fn unknown_worker_heartbeat_is_404_with_detail() {
    let s = start(2, |_| {});
    let r = heartbeat(s.addr, &json!({"worker_id": "ghost"}));
    assert_eq!(r.status, 404);
    assert_eq!(r.detail(), "Worker not found");
}

#[test]
fn busy_status_keeps_admin_health_working() {
    let s = start(2, |_| {});
    register(s.addr, &gpu_worker("g1"));
    register(s.addr, &cpu_worker("c1"));
    assert_eq!(
        heartbeat(s.addr, &json!({"worker_id": "g1", "status": "busy"})).status,
        200
    );
    assert_eq!(
        heartbeat(s.addr, &json!({"worker_id": "c1", "status": "warming-up"})).status,
        200
    );
    let r = get(s.addr, "/api/admin/health");
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["workers_by_status"]["busy"], 1);
    assert_eq!(h["workers_by_status"]["warming-up"], 1);
    assert_eq!(h["overall_status"], "healthy");
    assert_eq!(
        h["has_minimum_workers"],
        json!({"gpu_workers": true, "service_workers": true})
    );
    // Busy workers are still listed as available to the edge.
    assert_eq!(get(s.addr, "/api/coordinator/workers").json()["count"], 2);
    // A worker reporting itself offline is not.
    heartbeat(s.addr, &json!({"worker_id": "c1", "status": "offline"}));
    assert_eq!(get(s.addr, "/api/coordinator/workers").json()["count"], 1);
    assert_eq!(
        get(s.addr, "/api/admin/health").json()["overall_status"],
        "degraded"
    );
}

#[test]
fn stale_then_unhealthy_then_removed() {
    let s = start(2, |c| {
        c.heartbeat_timeout = Duration::from_millis(600);
        c.worker_timeout = Duration::from_millis(1500);
    });
    let quiet = id_on_shard("quiet", 0, 2);
    let chatty = id_on_shard("chatty", 1, 2);
    register(s.addr, &cpu_worker(&quiet));
    register(s.addr, &cpu_worker(&chatty));
    assert_eq!(
        get(s.addr, "/health").json()["workers"],
        json!({"total": 2, "active": 2, "stale": 0})
    );
    // Served once while healthy: the quiet worker's shard must not keep
    // serving that answer after the worker goes stale.
    assert_eq!(get(s.addr, "/api/coordinator/workers").json()["count"], 2);
    let beat = || assert_eq!(heartbeat(s.addr, &json!({"worker_id": chatty})).status, 200);
    // Past the heartbeat timeout: listed as unhealthy, not served to the edge.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        beat();
    }
    let h = get(s.addr, "/health").json();
    assert_eq!(h["workers"], json!({"total": 2, "active": 1, "stale": 1}));
    let edge = get(s.addr, "/api/coordinator/workers").json();
    assert_eq!(edge["count"], 1);
    assert_eq!(edge["workers"][0]["worker_id"], chatty.as_str());
    let admin = get(s.addr, "/api/admin/workers").json();
    let q = admin["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == quiet.as_str())
        .unwrap()
        .clone();
    assert_eq!(q["is_healthy"], false);
    // Past the worker timeout: removed by its shard's sweeper, index too.
    assert!(eventually(Duration::from_secs(3), || {
        beat();
        get(s.addr, "/api/admin/workers").json()["total"] == 1
    }));
    let services = get(s.addr, "/api/admin/services").json();
    for svc in services["services"].as_array().unwrap() {
        assert!(
            !svc["workers"].as_array().unwrap().contains(&json!(quiet)),
            "{services}"
        );
    }
    // A removed worker's heartbeat gets 404, so its agent re-registers.
    assert_eq!(heartbeat(s.addr, &json!({"worker_id": quiet})).status, 404);
}

#[test]
fn reregister_and_unregister_leave_no_stale_index_entries() {
    let s = start(2, |_| {});
    let id = id_on_shard("rr", 1, 2);
    let mut w = storage_worker(&id);
    w["services"] = json!([{"name": "custom-a", "port": 1}, {"name": "custom-b", "port": 2}]);
    register(s.addr, &w);
    w["services"] = json!([{"name": "custom-c", "port": 3}]);
    register(s.addr, &w);
    let services = get(s.addr, "/api/admin/services").json();
    let names: Vec<&str> = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"custom-c"), "{services}");
    assert!(
        !names.contains(&"custom-a") && !names.contains(&"custom-b"),
        "{services}"
    );
    assert_eq!(get(s.addr, "/api/admin/workers").json()["total"], 1);
    let r = call(
        s.addr,
        "DELETE",
        &format!("/api/worker/unregister/{id}"),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let services = get(s.addr, "/api/admin/services").json();
    assert_eq!(services["total_services"], 0, "{services}");
    assert_eq!(
        call(
            s.addr,
            "DELETE",
            &format!("/api/worker/unregister/{id}"),
            None
        )
        .status,
        404
    );
}

#[test]
fn discover_and_gaps() {
    let s = start(2, |_| {});
    assert_eq!(get(s.addr, "/api/services/discover/llm").status, 503);
    let a = id_on_shard("g", 0, 2);
    let b = id_on_shard("g", 1, 2);
    register(s.addr, &gpu_worker(&a));
    // The second is assigned doc-processor only (the rest is covered) and
    // declares llm-inference.
    register(s.addr, &with_service(gpu_worker(&b), "llm-inference"));
    heartbeat(s.addr, &json!({"worker_id": a, "current_load": 0.9}));
    heartbeat(s.addr, &json!({"worker_id": b, "current_load": 0.1}));
    // Both run llm-inference (alias "llm"); the least loaded is recommended.
    let d = get(s.addr, "/api/services/discover/llm").json();
    assert_eq!(d["service"], "llm-inference");
    assert_eq!(d["count"], 2);
    assert_eq!(d["recommended"]["worker_id"], b.as_str());
    let gaps = get(s.addr, "/api/admin/gaps").json();
    let find = |n: &str| {
        gaps["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["service"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(find("llm-inference")["status"], "ok");
    assert_eq!(find("vision-ocr")["status"], "warning");
    assert_eq!(find("redis")["status"], "critical");
    assert!(gaps["critical"]
        .as_array()
        .unwrap()
        .contains(&json!("redis")));
}

#[test]
fn worker_list_reflects_every_change_since_it_was_last_served() {
    // Listings reuse each worker's JSON until the worker changes; prove
    // that heartbeats, re-registration and unregistration all
    // show up in the very next list, whichever shard answers.
    let s = start(2, |_| {});
    let ids: Vec<String> = (0..2).map(|sh| id_on_shard("cache", sh, 2)).collect();
    for id in &ids {
        register(s.addr, &with_service(gpu_worker(id), "llm-inference"));
    }
    let find = |id: &str| -> serde_json::Value {
        let j = get(s.addr, "/api/coordinator/workers").json();
        j["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker_id"] == id)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    for id in &ids {
        assert_eq!(find(id)["current_load"], 0.0);
        for (i, load) in [0.25, 0.5, 0.75].iter().enumerate() {
            let hb = json!({"worker_id": id, "status": "busy", "current_load": load,
                            "loaded_models": [format!("m{i}")]});
            assert_eq!(heartbeat(s.addr, &hb).status, 200);
            let w = find(id);
            assert_eq!(w["current_load"], *load);
            assert_eq!(w["status"], "busy");
            assert_eq!(w["loaded_models"], json!([format!("m{i}")]));
        }
        let d = get(s.addr, "/api/services/discover/llm").json();
        assert!(d["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["worker_id"] == id.as_str()));
    }
    let mut cpu = cpu_worker(&ids[0]);
    cpu["tunnel_url"] = json!("http://moved.example:9000");
    register(s.addr, &cpu);
    assert_eq!(find(&ids[0])["tunnel_url"], "http://moved.example:9000");
    assert_eq!(find(&ids[0])["worker_type"], "cpu");
    let r = call(
        s.addr,
        "DELETE",
        &format!("/api/worker/unregister/{}", ids[1]),
        None,
    );
    assert_eq!(r.status, 200);
    assert!(find(&ids[1]).is_null());
    assert_eq!(get(s.addr, "/api/coordinator/workers").json()["count"], 1);
}

/// Every built-in catalog service's image, as the service original gave
/// them where it had the service.
const IMAGES: [(&str, &str); 16] = [
    ("llm-inference", "ghcr.io/rma/vllm-worker:latest"),
    ("vision-ocr", "ghcr.io/rma/ollama-vision-worker:latest"),
    ("rag-embeddings", "ghcr.io/rma/rag-worker:latest"),
    ("ner-extraction", "ghcr.io/rma/ner-worker:latest"),
    ("document-processing", "ghcr.io/rma/upload-worker:latest"),
    ("notes-coa", "ghcr.io/rma/notes-worker:latest"),
    ("client-rag", "ghcr.io/rma/client-rag-worker:latest"),
    ("doc-processor", "ghcr.io/rma/doc-processor-worker:latest"),
    ("chromadb", "chromadb/chroma:latest"),
    ("redis", "redis:7-alpine"),
    ("postgres", "postgres:16-alpine"),
    ("minio", "minio/minio:latest"),
    ("neo4j", "neo4j:5.15"),
    ("coordinator", "ghcr.io/rma/coordinator:latest"),
    ("edge-proxy", "ghcr.io/rma/edge-proxy:latest"),
    ("load-balancer", "ghcr.io/rma/load-balancer:latest"),
];

fn edge_worker(id: &str) -> serde_json::Value {
    json!({"worker_id": id, "tunnel_url": format!("http://{id}.example:8000"),
           "capabilities": {"hostname": id, "has_edge": true, "ram": "8GB"}})
}

/// `assigned_containers` of `worker` checked against [`IMAGES`], with
/// `WORKER_ID` and `COORDINATOR_URL` filled in; returns the service names.
fn check_containers(worker: &serde_json::Value, id: &str, url: &str) -> Vec<String> {
    let containers = worker["assigned_containers"].as_array().unwrap();
    assert!(!containers.is_empty(), "{worker}");
    containers
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap();
            let (_, image) = IMAGES.iter().find(|(n, _)| *n == name).unwrap();
            assert_eq!(c["image"], *image, "{name}");
            assert_eq!(c["env"]["WORKER_ID"], id, "{name}");
            assert_eq!(c["env"]["COORDINATOR_URL"], url, "{name}");
            name.to_string()
        })
        .collect()
}

#[test]
fn every_catalog_service_gets_its_image_and_an_env_for_the_worker() {
    let url = "https://coord.example";
    let s = start(2, |c| c.public_url = Some(format!("{url}/")));
    // A gpu, a cpu, two storage and an edge worker cover the whole
    // built-in catalog between them, on both shards.
    let bodies = [
        gpu_worker(&id_on_shard("img-gpu", 0, 2)),
        cpu_worker(&id_on_shard("img-cpu", 1, 2)),
        storage_worker(&id_on_shard("img-st", 0, 2)),
        storage_worker(&id_on_shard("img-st2", 1, 2)),
        edge_worker(&id_on_shard("img-edge", 0, 2)),
    ];
    let mut replies = Vec::new();
    for b in &bodies {
        let r = register(s.addr, b);
        assert_eq!(r["coordinator_url"], url, "no trailing slash");
        replies.push(r);
    }
    let mut seen = HashSet::new();
    for r in &replies {
        let id = r["worker_id"].as_str().unwrap();
        seen.extend(check_containers(r, id, url));
    }
    let all: HashSet<String> = IMAGES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(seen, all);
    // Per-image extras, expanded too.
    let gpu = &replies[0]["assigned_containers"];
    let ocr = gpu
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vision-ocr")
        .unwrap();
    assert_eq!(ocr["env"]["OLLAMA_HOST"], "0.0.0.0:8104");
    assert_eq!(gpu[0]["env"]["GPU_MEMORY_UTILIZATION"], "0.9");
    // The worker list (served by either shard) shows the same containers,
    // expanded the same way.
    for shard in 0..2 {
        let list = conn_on_shard(s.addr, shard)
            .get("/api/coordinator/workers")
            .json();
        let workers = list["workers"].as_array().unwrap();
        assert_eq!(workers.len(), replies.len());
        for r in &replies {
            let id = r["worker_id"].as_str().unwrap();
            let w = workers.iter().find(|w| w["worker_id"] == id).unwrap();
            check_containers(w, id, url);
            assert_eq!(w["assigned_containers"], r["assigned_containers"], "{id}");
        }
        let admin = conn_on_shard(s.addr, shard)
            .get("/api/admin/workers")
            .json();
        for w in admin["workers"].as_array().unwrap() {
            check_containers(w, w["worker_id"].as_str().unwrap(), url);
        }
    }
}

#[test]
fn without_a_public_url_agents_get_the_host_they_used_and_lists_the_listen_address() {
    let s = start(2, |_| {});
    let r = register(s.addr, &cpu_worker("no-url"));
    // The reply names the Host the agent came in by, in its containers too.
    assert_eq!(r["coordinator_url"], "http://test");
    check_containers(&r, "no-url", "http://test");
    // A listing has no agent's Host: it names our listen address.
    let list = get(s.addr, "/api/coordinator/workers").json();
    check_containers(
        &list["workers"][0],
        "no-url",
        &format!("http://127.0.0.1:{}", s.addr.port()),
    );
}
