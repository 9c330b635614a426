//! Criterion benches of the request-path building blocks (docs/performance.md
//! has the figures and how to run them):
//!
//! - JSON decode/encode of real register and heartbeat bodies: the server's
//!   parser (serde_json) against simd-json's serde path, which needs a
//!   mutable copy of the body and reusable buffers;
//! - a registry heartbeat update;
//! - building and serialising the worker list for 100 / 1k / 10k workers;
//! - the size parser, the tier rules and catalog assignment.
//!
//! Bodies are what real agents send (`docs/api.md`, register and heartbeat), the same
//! shapes loadgen sends.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use common::{cpu_register, gpu_register, heartbeat, registry_of, service_register};
use coordinator::http::request::parse_object;
use coordinator::model::size::parse_size;
use coordinator::model::time::now_iso8601;
use coordinator::model::wire::{HeartbeatRequest, RegisterRequest};
use coordinator::model::worker::Liveness;
use coordinator::model::{classify, Catalog, WorkerType};
use coordinator::shard::registry::Registry;

const LIVE: Liveness = Liveness {
    heartbeat_timeout: Duration::from_secs(120),
    worker_timeout: Duration::from_secs(600),
};

/// What GET /api/coordinator/workers does for one shard's registry: the
/// healthy records serialised into one body.
fn worker_list(reg: &Registry) -> Vec<u8> {
    let url = "http://127.0.0.1:8080";
    let now = Instant::now();
    let mut items = Vec::with_capacity(1024 * reg.len() + 64);
    let mut count = 0usize;
    items.extend_from_slice(b"{\"workers\":[");
    for w in reg.workers() {
        if !w.is_healthy(now, &LIVE) {
            continue;
        }
        if count > 0 {
            items.push(b',');
        }
        w.write_json(&mut items, now, &LIVE, false, url);
        count += 1;
    }
    items.extend_from_slice(b"],\"count\":");
    items.extend_from_slice(count.to_string().as_bytes());
    items.extend_from_slice(b",\"timestamp\":");
    items.extend_from_slice(
        serde_json::to_string(&now_iso8601())
            .expect("string")
            .as_bytes(),
    );
    items.push(b'}');
    items
}

/// Decodes `body` as a `T` with the server's parser (serde_json) and with
/// simd-json's serde path.
fn decode_both<T: DeserializeOwned>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, body: &[u8]) {
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_with_input(BenchmarkId::new("serde_json", name), body, |b, body| {
        b.iter(|| parse_object::<T>(black_box(body)).unwrap())
    });
    g.bench_with_input(BenchmarkId::new("simd_json", name), body, |b, body| {
        // The server would need a mutable copy of the (immutable) body
        // and per-shard reusable buffers: both are part of the cost.
        let mut scratch = Vec::with_capacity(body.len());
        let mut buffers = simd_json::Buffers::new(body.len());
        b.iter(|| {
            scratch.clear();
            scratch.extend_from_slice(black_box(body));
            simd_json::serde::from_slice_with_buffers::<T>(&mut scratch, &mut buffers).unwrap()
        })
    });
}

fn json_codecs(c: &mut Criterion) {
    let bodies = [
        (
            "register_gpu",
            serde_json::to_vec(&gpu_register("w-000001")).unwrap(),
        ),
        (
            "register_cpu",
            serde_json::to_vec(&cpu_register("w-000002")).unwrap(),
        ),
        (
            "register_service",
            serde_json::to_vec(&service_register()).unwrap(),
        ),
    ];
    let hb = serde_json::to_vec(&heartbeat("w-000001")).unwrap();

    let mut g = c.benchmark_group("decode");
    for (name, body) in &bodies {
        decode_both::<RegisterRequest>(&mut g, name, body);
    }
    decode_both::<HeartbeatRequest>(&mut g, "heartbeat", &hb);
    g.finish();

    // Encoding: the same documents from a serde value tree.
    let mut g = c.benchmark_group("encode");
    let docs = [
        ("register_gpu", gpu_register("w-000001")),
        ("heartbeat", heartbeat("w-000001")),
    ];
    for (name, v) in &docs {
        g.bench_with_input(BenchmarkId::new("serde_json", name), v, |b, v| {
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                out.clear();
                serde_json::to_writer(&mut out, black_box(v)).unwrap();
            })
        });
        g.bench_with_input(BenchmarkId::new("simd_json", name), v, |b, v| {
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                out.clear();
                simd_json::serde::to_writer(&mut out, black_box(v)).unwrap();
            })
        });
    }
    g.finish();
}

fn registry_ops(c: &mut Criterion) {
    let mut reg = registry_of(1000);
    let hb: HeartbeatRequest =
        serde_json::from_value(heartbeat("w-000500")).expect("valid heartbeat");
    c.bench_function("registry/heartbeat_update_1k", |b| {
        b.iter_batched(
            || hb.clone(),
            |hb| {
                assert!(reg
                    .heartbeat(hb, Instant::now(), SystemTime::now())
                    .is_some())
            },
            BatchSize::SmallInput,
        )
    });
    // Decode + update, as the heartbeat handler does per request.
    let body = serde_json::to_vec(&heartbeat("w-000500")).unwrap();
    c.bench_function("registry/heartbeat_decode_and_update_1k", |b| {
        b.iter(|| {
            let hb: HeartbeatRequest = parse_object(black_box(&body)).unwrap();
            assert!(reg
                .heartbeat(hb, Instant::now(), SystemTime::now())
                .is_some());
        })
    });

    let mut g = c.benchmark_group("worker_list");
    for n in [100usize, 1_000, 10_000] {
        let reg = registry_of(n);
        let size = worker_list(&reg).len();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("build_and_serialise", n),
            &reg,
            |b, reg| b.iter(|| black_box(worker_list(reg))),
        );
        eprintln!("worker_list/{n}: body {size} bytes");
    }
    g.finish();
}

fn model_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("size_parse");
    for s in ["64GB", "24576MB", "7.5 GiB", "Unknown (AMD)"] {
        g.bench_with_input(BenchmarkId::from_parameter(s), s, |b, s| {
            b.iter(|| parse_size(black_box(s)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("classify");
    let caps = |v: Value| -> Map<String, Value> {
        v["capabilities"].as_object().cloned().expect("object")
    };
    for (name, m) in [
        ("flags_gpu", caps(gpu_register("w"))),
        ("flags_cpu", caps(cpu_register("w"))),
        ("sizes", caps(service_register())),
        ("empty", Map::new()),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(name), &m, |b, m| {
            b.iter(|| classify(black_box(m)))
        });
    }
    g.finish();

    let catalog = Catalog::builtin();
    let mut g = c.benchmark_group("catalog_assign");
    for (name, t, in_tier) in [
        ("gpu_first", WorkerType::Gpu, 0u32),
        ("gpu_covered", WorkerType::Gpu, 50),
        ("cpu_10_in_tier", WorkerType::Cpu, 10),
        ("storage_first", WorkerType::Storage, 0),
    ] {
        let covered = move |s: &str| if in_tier == 0 { 0 } else { s.len() as u32 % 3 };
        g.bench_function(name, |b| {
            b.iter(|| {
                catalog
                    .assign(black_box(t), &covered, black_box(in_tier))
                    .len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, json_codecs, registry_ops, model_rules);
criterion_main!(benches);
