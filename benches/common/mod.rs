//! Shared by the benches: the bodies real agents send (the shapes loadgen
//! sends too) and records built the way the register handler builds them.
#![allow(dead_code)]

use serde_json::{json, Value};

use coordinator::model::wire::RegisterRequest;
use coordinator::model::worker::{Registration, WorkerRecord};
use coordinator::model::{classify, Catalog, ServiceSpec};
use coordinator::shard::registry::Registry;

pub fn gpu_register(id: &str) -> Value {
    json!({
        "worker_id": id,
        "tunnel_url": format!("https://{id}.tunnel.example.net"),
        "vpn_ip": "10.8.0.17",
        "capabilities": {
            "hostname": id, "cpu_cores": 16, "has_gpu": true, "gpu_type": "NVIDIA RTX 4090",
            "gpu_memory": "24GB", "worker_type": "gpu", "has_public_ip": false,
            "low_latency": true, "latency_ms": 12, "ram": "64GB"
        },
        "services": [{"name": "llm-inference", "port": 8105}],
        "containers": []
    })
}

pub fn cpu_register(id: &str) -> Value {
    json!({
        "worker_id": id,
        "tunnel_url": format!("https://{id}.tunnel.example.net"),
        "capabilities": {
            "hostname": id, "cpu_cores": 8, "has_gpu": false, "worker_type": "cpu",
            "has_public_ip": false, "ram": "16GB"
        }
    })
}

pub fn service_register() -> Value {
    json!({
        "ip_address": "10.9.0.4",
        "capabilities": {
            "cpu_cores": 32, "ram": "128 GiB", "gpu_memory": "24576MB",
            "gpu_type": "NVIDIA A10", "gpu_driver": "550.54", "storage": "2TB",
            "network_bandwidth": "10Gbps"
        }
    })
}

/// Registration `n` of the mix loadgen sends (`loadgen/src/scenario.rs`):
/// gpu, cpu, cpu, size-only capabilities.
pub fn register_mix(id: &str, n: usize) -> Value {
    match n % 4 {
        0 => gpu_register(id),
        1 | 2 => cpu_register(id),
        _ => {
            let mut v = service_register();
            v["worker_id"] = Value::from(id);
            v
        }
    }
}

pub fn heartbeat(id: &str) -> Value {
    json!({
        "worker_id": id,
        "status": "healthy",
        "current_load": 0.42,
        "available_memory": "12.5GB",
        "loaded_models": ["llama3-8b-instruct", "nomic-embed-text"],
        "active_requests": 3,
        "gpu_utilization": 57.0,
        "services_status": {"llm-inference": "running", "rag-embeddings": "running"},
        "specialization": "general"
    })
}

/// A record as the register handler builds it.
pub fn record(body: &Value, catalog: &'static Catalog) -> WorkerRecord {
    let r: RegisterRequest = serde_json::from_value(body.clone()).expect("valid body");
    let caps = r.capabilities.unwrap_or_default();
    let class = classify(&caps);
    let assigned: Vec<&ServiceSpec> = catalog.assign(class.worker_type, &|_| 1, 3);
    let registration = Registration {
        worker_id: r.worker_id.expect("id"),
        capabilities: caps,
        tunnel_url: r.tunnel_url,
        ip_address: r.ip_address.or_else(|| Some("127.0.0.1".into())),
        services: r.services.unwrap_or_default(),
        containers: r.containers.unwrap_or_default(),
    };
    WorkerRecord::registered(registration, class, &assigned)
}

pub fn registry_of(n: usize) -> Registry {
    let catalog = Catalog::builtin();
    // Fixed hash seeds: random ones move the counts by about 1 % per run.
    let mut reg = Registry::seeded(
        coordinator::model::worker::Liveness {
            heartbeat_timeout: std::time::Duration::from_secs(120),
            worker_timeout: std::time::Duration::from_secs(600),
        },
        7,
    );
    // One heartbeat time for all: their deadlines share one wheel bucket,
    // so the wheel's shape (and what a measured insert costs in it) does
    // not depend on how long this setup took under valgrind.
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let id = format!("w-{i:06}");
        let body = if i % 4 == 0 {
            gpu_register(&id)
        } else {
            cpu_register(&id)
        };
        let mut rec = record(&body, catalog);
        rec.last_seen = t0;
        reg.insert(rec);
    }
    reg
}
