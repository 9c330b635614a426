//! Instruction counts of the hot paths, under valgrind (callgrind) with
//! gungraun: the regression gate that does not depend on the machine.
//!
//! Wall-clock throughput on a shared 2-core VM moves by 15 % between runs
//! and differs by CPU; the number of instructions a function executes does
//! not. Each bench below calls the library directly with the bodies real
//! agents send; `.ci/instructions` runs them and compares every count with
//! the committed baseline in `benches/baseline/` (docs/performance.md,
//! "Instruction-count gate").
//!
//! Setup (building a 1,000-worker registry, encoding bodies) runs outside
//! the measured function: only the body of each `#[library_benchmark]`
//! is counted. Each bench returns what it built so that dropping it is not
//! counted either.
//!
//! Run: `cargo bench --bench instructions` (needs valgrind and
//! `gungraun-runner` of the same version as the `gungraun` dev-dependency;
//! `.ci/instructions` installs the runner).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use gungraun::{library_benchmark, library_benchmark_group, main};
use serde_json::Value;

use common::{gpu_register, heartbeat, registry_of};
use coordinator::http::request::parse_object;
use coordinator::metrics::ShardMetrics;
use coordinator::model::wire::{HeartbeatRequest, RegisterRequest};
use coordinator::model::worker::{Registration, WorkerRecord};
use coordinator::model::{classify, Catalog, ServiceSpec};
use coordinator::proxy::route::{choose, Ask, Candidate};
use coordinator::shard::registry::Registry;
use coordinator::shard::scrape::{encode, Gauges, MetricsSnapshot};
use coordinator::tasks::{Outcome, Target, Task, TaskTable};

/// Workers in the registry the heartbeat, register and list benches use.
const WORKERS: usize = 1_000;

// ---- heartbeat: body decode + registry apply --------------------------------

/// The steady state: the worker already sent this heartbeat once, as an
/// agent does every 30 s, so the measured one changes nothing a
/// subscriber hears about (a first heartbeat that loads models also
/// publishes a `worker.updated` event).
fn heartbeat_setup() -> (Registry, Vec<u8>) {
    let body = serde_json::to_vec(&heartbeat("w-000500")).expect("encodes");
    let mut reg = registry_of(WORKERS);
    let hb: HeartbeatRequest = parse_object(&body).expect("valid heartbeat");
    reg.heartbeat(hb, Instant::now(), SystemTime::now());
    (reg, body)
}

// What `POST /api/worker/heartbeat` does with a body once it has it.
#[library_benchmark]
#[bench::agent_body(setup = heartbeat_setup)]
fn heartbeat_decode_apply((mut reg, body): (Registry, Vec<u8>)) -> (Registry, Vec<u8>) {
    let hb: HeartbeatRequest = parse_object(black_box(&body)).expect("valid heartbeat");
    assert!(reg
        .heartbeat(hb, Instant::now(), SystemTime::now())
        .is_some());
    (reg, body)
}

// ---- register: decode, size parsing, tier, catalog assignment, record -------

fn register_setup() -> (Registry, &'static Catalog, Vec<u8>) {
    let body = serde_json::to_vec(&gpu_register("w-new-gpu")).expect("encodes");
    (registry_of(WORKERS), Catalog::builtin(), body)
}

// The register handler's work on one shard: decode, classify (sizes and
// tier), assign services against the coverage the registry reports, build
// the record and insert it.
#[library_benchmark]
#[bench::gpu_agent_body(setup = register_setup)]
fn register(
    (mut reg, catalog, body): (Registry, &'static Catalog, Vec<u8>),
) -> (Registry, &'static Catalog, Vec<u8>) {
    let r: RegisterRequest = parse_object(black_box(&body)).expect("valid register body");
    let worker_id = r.worker_id.expect("has an id");
    let capabilities = r.capabilities.unwrap_or_default();
    let class = classify(&capabilities);
    let (per_service, per_tier) = reg.coverage(Some(&worker_id));
    let in_tier = per_tier.get(class.tier as usize).copied().unwrap_or(0);
    let assigned: Vec<&ServiceSpec> = catalog.assign(
        class.worker_type,
        &|name| per_service.get(name).copied().unwrap_or(0),
        in_tier,
    );
    let rec = WorkerRecord::registered(
        Registration {
            worker_id,
            capabilities,
            tunnel_url: r.tunnel_url,
            ip_address: r.ip_address,
            services: r.services.unwrap_or_default(),
            containers: r.containers.unwrap_or_default(),
        },
        class,
        &assigned,
    );
    assert!(!reg.insert(rec), "a new worker");
    (reg, catalog, body)
}

// ---- worker list: 1,000 healthy workers -------------------------------------

/// The public URL a shard lists with (containers' `COORDINATOR_URL`).
const URL: &str = "http://127.0.0.1:8080";

fn list_setup(warm: bool) -> (Registry, Vec<u8>) {
    let mut reg = registry_of(WORKERS);
    let mut out = Vec::with_capacity(2 << 20);
    if warm {
        reg.write_healthy(None, Instant::now(), URL, &mut out, |_, _| {});
        out.clear();
    }
    (reg, out)
}

// `GET /api/coordinator/workers` on one shard: the healthy records' JSON
// appended to the body. `cold` serialises every record (the first listing
// after they changed); `warm` reuses the per-worker JSON the registry keeps
// (the steady state an edge cache polling the list sees).
#[library_benchmark]
#[bench::cold(args = (false), setup = list_setup)]
#[bench::warm(args = (true), setup = list_setup)]
fn worker_list_1000((mut reg, mut out): (Registry, Vec<u8>)) -> (Registry, Vec<u8>) {
    let (n, _) = reg.write_healthy(None, Instant::now(), URL, &mut out, |_, _| {});
    assert_eq!(n, WORKERS);
    (reg, out)
}

// ---- routing choice over 100 candidates -------------------------------------

fn route_setup() -> (Vec<String>, Vec<Vec<String>>) {
    let ids = (0..100).map(|i| format!("w-{i:06}")).collect();
    let models = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                vec!["llama3-8b-instruct".to_string(), "nomic-embed-text".into()]
            } else {
                vec!["mistral-7b".to_string()]
            }
        })
        .collect();
    (ids, models)
}

// The proxy's choice for a request naming a model: exclusion, pins,
// cooldown, model filter, then least outstanding with two random draws
// (a fixed sequence here, so the path is the same every run).
#[library_benchmark]
#[bench::model_least_outstanding(setup = route_setup)]
fn route_choice_100((ids, models): (Vec<String>, Vec<Vec<String>>)) -> Option<usize> {
    let cands: Vec<Candidate<'_>> = ids
        .iter()
        .zip(&models)
        .enumerate()
        .map(|(i, (id, m))| Candidate {
            worker_id: id,
            loaded_models: m,
            inflight: (i % 3) as u32,
            active_requests: (i % 5) as u64,
            current_load: (i % 7) as f64 / 7.0,
            cooling: i % 11 == 0,
        })
        .collect();
    let exclude = [ids[2].as_str()];
    let ask = Ask {
        model: Some("llama3-8b-instruct"),
        session: None,
        pinned: &[],
        exclude: &exclude,
    };
    let mut seq = 7usize;
    let mut rand = |n: usize| {
        seq = seq.wrapping_mul(31).wrapping_add(17);
        seq % n
    };
    black_box(choose(black_box(&cands), &ask, &mut rand))
}

// ---- task table: submit + lease + complete ----------------------------------

fn task_setup() -> (TaskTable, Task) {
    let task = Task::new(
        "t-00000000000000aa-00000000000000bb".into(),
        "embed".into(),
        serde_json::json!({"text": "the quick brown fox", "model": "nomic-embed-text"}),
        Target::Service("rag-embeddings".into()),
        3,
    );
    (TaskTable::new(10_000), task)
}

// One task's life on its queue's shard: queued, leased to a worker that
// pulls the service's queue, completed with a result.
#[library_benchmark]
#[bench::service_task(setup = task_setup)]
fn task_cycle((mut table, task): (TaskTable, Task)) -> TaskTable {
    let id = task.id.clone();
    table.submit(task);
    let now = Instant::now();
    let keys = ["service:rag-embeddings".to_string()];
    let got = table.lease("w-000001", &keys, 1, Duration::from_secs(300), now, None);
    assert_eq!(got.len(), 1);
    let done = table
        .complete(
            &id,
            "w-000001",
            Outcome::Done(Value::from("ok")),
            Instant::now(),
        )
        .expect("completes");
    assert!(!done.duplicate);
    table
}

// ---- one /metrics encode -----------------------------------------------------

const ROUTES: [&str; 8] = [
    "register",
    "heartbeat",
    "unregister",
    "worker_tasks",
    "coordinator_workers",
    "health",
    "metrics",
    "service_proxy",
];

fn metrics_setup() -> Vec<MetricsSnapshot> {
    (0..2)
        .map(|shard| {
            let mut metrics = ShardMetrics::new(ROUTES.len());
            for (r, _) in ROUTES.iter().enumerate() {
                for i in 0..200u64 {
                    let status = if i % 50 == 0 { 404 } else { 200 };
                    metrics.record(r, status, Duration::from_micros(20 + i * 37));
                }
            }
            metrics.connections_accepted = 1_000;
            metrics.connections_open = 64;
            MetricsSnapshot {
                shard,
                metrics,
                workers: 500,
                ..Default::default()
            }
        })
        .collect()
}

// The scrape's encode step over two shards' snapshots.
#[library_benchmark]
#[bench::two_shards(setup = metrics_setup)]
fn metrics_encode(shards: Vec<MetricsSnapshot>) -> (Vec<MetricsSnapshot>, String) {
    let gauges = Gauges {
        workers_total: 1_000,
        workers_active: 990,
        services_total: 6,
        tasks_completed: 12_345,
        ..Default::default()
    };
    let text = encode(&ROUTES, black_box(&shards), &gauges);
    (shards, text)
}

library_benchmark_group!(
    name = hot_paths;
    benchmarks =
        heartbeat_decode_apply,
        register,
        worker_list_1000,
        route_choice_100,
        task_cycle,
        metrics_encode
);

main!(library_benchmark_groups = hot_paths);
