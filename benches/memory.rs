//! Heap bytes per registered worker, counted exactly by a counting global
//! allocator (no allocator slack or page rounding, unlike VmRSS), and split
//! into the parts of a registration. Complements `loadgen rss`, which
//! measures the real server's RSS. Run: `cargo bench --bench memory`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use coordinator::model::wire::RegisterRequest;
use coordinator::model::worker::WorkerRecord;
use coordinator::model::Catalog;
use coordinator::shard::registry::Registry;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Relaxed);
        BLOCKS.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        BLOCKS.fetch_sub(1, Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Relaxed);
        LIVE.fetch_sub(l.size(), Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed)
}

fn main() {
    // `cargo bench` passes --bench; a filter that is not ours means skip.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"memory".contains(a.as_str()))
    {
        return;
    }
    let n = 100_000;
    let catalog = Catalog::builtin();
    let bodies: Vec<serde_json::Value> = (0..n)
        .map(|i| common::register_mix(&format!("w-{i:06}"), i))
        .collect();

    // 1. Capabilities maps alone (serde_json::Map = BTreeMap<String, Value>).
    let before = live();
    let caps: Vec<serde_json::Map<String, serde_json::Value>> = bodies
        .iter()
        .map(|b| {
            let r: RegisterRequest = serde_json::from_value(b.clone()).expect("valid");
            r.capabilities.unwrap_or_default()
        })
        .collect();
    let caps_bytes = live() - before - caps.capacity() * std::mem::size_of_val(&caps[0]);
    drop(caps);

    // 2. Whole records (inline struct + everything they own).
    let before = live();
    let records: Vec<WorkerRecord> = bodies.iter().map(|b| common::record(b, catalog)).collect();
    let record_bytes = live() - before;
    drop(records);

    // 3. In the registry: records + id map + service index.
    let before = live();
    let blocks_before = BLOCKS.load(Relaxed);
    let mut reg = Registry::default();
    for b in &bodies {
        reg.insert(common::record(b, catalog));
    }
    let registry_bytes = live() - before;
    let registry_blocks = BLOCKS.load(Relaxed) - blocks_before;
    assert_eq!(reg.len(), n);

    let per = |b: usize| b as f64 / n as f64;
    println!("memory per registered worker, {n} workers (gpu, cpu, cpu, size-only mix):");
    println!(
        "  WorkerRecord inline size          {:>6} bytes",
        std::mem::size_of::<WorkerRecord>()
    );
    println!(
        "  capabilities map (heap)           {:>8.0} bytes",
        per(caps_bytes)
    );
    println!(
        "  whole record (inline + heap)      {:>8.0} bytes",
        per(record_bytes)
    );
    println!(
        "  registry maps + service index     {:>8.0} bytes",
        per(registry_bytes.saturating_sub(record_bytes))
    );
    println!(
        "  total in the registry             {:>8.0} bytes",
        per(registry_bytes)
    );
    println!(
        "  live heap blocks                  {:>8.1} per worker",
        per(registry_blocks)
    );
}
