//! History samplers: what each shard hands the history thread.
//!
//! Shard 0 samples the pool every `--history-interval`: one `Sample`
//! fan-out (O(routes + services + task states) per shard, never O(workers),
//! the same aggregates `/metrics` reads), merged and turned into rates and
//! percentiles against the previous sample. Every shard samples its own
//! workers' reported load and active requests every
//! `--history-worker-interval`, walking its registry slice in batches with
//! the reactor polled between them, like the sweeper.
//!
//! Must not: wait on the history thread (the handle never blocks) or hold a
//! registry borrow across an await.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::history::rollup::bucket;
use crate::history::series::id;
use crate::history::{self, Handle, Point};
use crate::metrics::Histogram;
use crate::runtime;
use crate::tasks::{TaskCounters, TaskState};

use super::msg::{Reply, Request, Summary};
use super::Shard;

/// Workers sampled per step before the reactor gets the core back.
const WORKER_BATCH: usize = 1024;

/// Routes whose answer waits by design (a task pull's long-poll, the
/// change stream, its WebSocket): counted in the `all` request rate, left
/// out of the `all` latency, where a one-second long-poll would read as a
/// slow server.
const WAITING_ROUTES: [&str; 3] = ["tasks", "events", "events_ws"];

/// What one shard reports for a pool sample.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    /// Latency histogram of each route (index = route), every answer.
    pub routes: Vec<Histogram>,
    pub tasks: TaskCounters,
    pub upstream: Histogram,
    pub summary: Summary,
}

impl Sample {
    fn merge(&mut self, o: Sample) {
        if self.routes.len() < o.routes.len() {
            self.routes.resize_with(o.routes.len(), Histogram::default);
        }
        for (a, b) in self.routes.iter_mut().zip(&o.routes) {
            a.merge(b);
        }
        let (t, u) = (&mut self.tasks, &o.tasks);
        t.completed += u.completed;
        t.failed += u.failed;
        for (a, b) in t.by_state.iter_mut().zip(u.by_state) {
            *a += b;
        }
        self.upstream.merge(&o.upstream);
        self.summary = std::mem::take(&mut self.summary).merge(o.summary);
    }
}

impl Shard {
    pub(super) fn sample(&self) -> Sample {
        Sample {
            routes: self
                .metrics
                .borrow()
                .routes
                .iter()
                .map(|r| r.latency.clone())
                .collect(),
            tasks: self.tasks.borrow().counters(),
            upstream: self.proxy.upstream_latency(),
            summary: self.registry.borrow().aggregates(),
        }
    }
}

/// Sleeps until the next multiple of `every` on the wall clock, so samples
/// of all nodes and restarts fall on the same bucket starts; returns it.
async fn next_tick(every: Duration) -> i64 {
    let every_s = every.as_secs().max(1) as f64;
    let now = history::unix_time().as_secs_f64();
    let next = (now / every_s).floor() * every_s + every_s;
    runtime::sleep(Duration::from_secs_f64((next - now).max(0.0))).await;
    next as i64
}

/// Starts this shard's samplers (shard 0 also samples the pool).
pub(crate) fn spawn(shard: Rc<Shard>, history: Handle, shutdown: runtime::Shutdown) {
    if shard.id == 0 {
        let (shard, history, shutdown) = (shard.clone(), history.clone(), shutdown.clone());
        runtime::spawn(async move {
            let sample = || {
                shard.map_reduce(
                    || Request::Sample,
                    Reply::sample,
                    Sample::default(),
                    |mut acc, s| {
                        acc.merge(*s);
                        acc
                    },
                )
            };
            // The baseline the first interval's rates are measured from.
            let mut prev: Option<(Sample, Instant)> =
                sample().await.ok().map(|s| (s, Instant::now()));
            while !shutdown.is_requested() {
                let ts = next_tick(shard.cfg.history_interval).await;
                let merged = sample().await;
                let now = Instant::now();
                match merged {
                    Ok(s) => {
                        let points = pool_points(&shard, ts, &s, prev.as_ref(), now);
                        history.write(points);
                        prev = Some((s, now));
                    }
                    Err(e) => tracing::debug!(error = %e, "history sample skipped"),
                }
            }
        });
    }
    runtime::spawn(async move {
        while !shutdown.is_requested() {
            let ts = bucket(
                next_tick(shard.cfg.history_worker_interval).await,
                shard.cfg.history_worker_interval.as_secs().max(1) as i64,
            );
            let mut from = 0;
            loop {
                let (points, next) = worker_points(&shard, ts, from);
                history.write(points);
                match next {
                    Some(n) if !shutdown.is_requested() => from = n,
                    _ => break,
                }
                runtime::breathe().await;
            }
        }
    });
}

/// Up to [`WORKER_BATCH`] workers' points from registry slot `from` on,
/// and the slot to resume from when there are more.
fn worker_points(shard: &Shard, ts: i64, from: u32) -> (Vec<Point>, Option<u32>) {
    let reg = shard.registry.borrow();
    let mut points = Vec::with_capacity(2 * WORKER_BATCH);
    let mut next = None;
    for (i, (slot, w)) in reg.workers_from(from).enumerate() {
        if i == WORKER_BATCH {
            next = Some(slot);
            break;
        }
        let p = |series, value| Point {
            series,
            label: String::new(),
            worker: w.worker_id.clone(),
            ts,
            value,
        };
        points.push(p(id::WORKER_LOAD, w.state.current_load));
        points.push(p(id::WORKER_ACTIVE, w.state.active_requests as f64));
    }
    (points, next)
}

fn pool_points(
    shard: &Shard,
    ts: i64,
    s: &Sample,
    prev: Option<&(Sample, Instant)>,
    now: Instant,
) -> Vec<Point> {
    let mut out = Vec::new();
    let mut put = |series: u8, label: &str, value: f64| {
        if value.is_finite() {
            out.push(Point {
                series,
                label: label.to_string(),
                worker: String::new(),
                ts,
                value,
            });
        }
    };
    for (l, v) in s.summary.bounded_statuses() {
        put(id::WORKERS, &l, v as f64);
    }
    for tier in 1..=4 {
        put(
            id::HEALTHY_BY_TIER,
            &tier.to_string(),
            s.summary.tier_count[tier] as f64,
        );
    }
    for svc in shard.cfg.catalog.services() {
        let n = s.summary.services.get(&svc.name).copied().unwrap_or(0);
        put(id::SERVICE_HEALTHY, &svc.name, n as f64);
    }
    for st in TaskState::ALL {
        put(id::TASKS, st.as_str(), s.tasks.by_state[st.index()] as f64);
    }
    // Rates and percentiles need the previous sample.
    let Some((p, then)) = prev else {
        return out;
    };
    let secs = now.duration_since(*then).as_secs_f64().max(0.001);
    let ms = |h: &Histogram, q| h.quantile(q).map(|v| v * 1000.0);
    let mut all = Histogram::default();
    let mut total = 0;
    for (i, h) in s.routes.iter().enumerate() {
        let d = match p.routes.get(i) {
            Some(before) => h.since(before),
            None => h.clone(),
        };
        let route = shard.route_names.get(i).copied().unwrap_or("other");
        total += d.count();
        if !WAITING_ROUTES.contains(&route) {
            all.merge(&d);
        }
        if d.count() == 0 {
            continue;
        }
        put(id::REQUESTS, route, d.count() as f64 / secs);
        if let Some(v) = ms(&d, 0.5) {
            put(id::LATENCY_P50, route, v);
        }
        if let Some(v) = ms(&d, 0.99) {
            put(id::LATENCY_P99, route, v);
        }
    }
    put(id::REQUESTS, "all", total as f64 / secs);
    if let Some(v) = ms(&all, 0.5) {
        put(id::LATENCY_P50, "all", v);
    }
    if let Some(v) = ms(&all, 0.99) {
        put(id::LATENCY_P99, "all", v);
    }
    let up = s.upstream.since(&p.upstream);
    put(id::UPSTREAM_REQUESTS, "", up.count() as f64 / secs);
    if let Some(v) = ms(&up, 0.5) {
        put(id::UPSTREAM_P50, "", v);
    }
    if let Some(v) = ms(&up, 0.99) {
        put(id::UPSTREAM_P99, "", v);
    }
    let done = |t: &TaskCounters| t.completed + t.failed;
    put(
        id::TASK_COMPLETIONS,
        "",
        done(&s.tasks).saturating_sub(done(&p.tasks)) as f64 / secs,
    );
    out
}
