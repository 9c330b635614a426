//! One shard: a registry slice, its mesh endpoint, and cross-shard calls.
//!
//! A worker belongs to shard `owner_of(worker_id, count)`. Operations on one
//! worker run on its owner: locally when this shard owns it, otherwise the
//! request is forwarded over the mesh and the answer comes back on a
//! oneshot. Operations on all workers fan out to every shard (the local one
//! inline) and the caller merges the replies, as Seastar's `map_reduce` does.
//!
//! Every operation is a synchronous function of the shard's own state
//! (`Shard::handle`), so a forwarded request is answered right in the mesh
//! receive loop without spawning, and no borrow is ever held across an
//! await. This module must not parse HTTP or know about routes.
//!
//! Files: `msg` (requests, replies, typed accessors, mergeable parts),
//! `registry` (the worker slice), `ops` (task and proxy operations joined
//! with the registry), `views` (this shard's part of whole-registry
//! answers), `durable` (what a mutation writes to the store, and waiting
//! for it), `scrape` (metrics snapshot and families).

pub(crate) mod cluster;
mod durable;
mod events;
pub(crate) mod history;
mod hub;
pub(crate) mod msg;
mod ops;
pub mod registry;
pub mod scrape;
mod views;
mod wheel;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::channel::oneshot;
use futures::future::join_all;

use crate::config::Config;
use crate::events::Ring;
use crate::metrics::ShardMetrics;
use crate::model::placement::owner_of;
use crate::model::worker::{Liveness, WorkerRecord};
use crate::proxy::{ProxySetup, ProxyState};
use crate::runtime::{self, Mesh, ShardEnv};
use crate::store::recovery::Boot;
use crate::store::{self, Op, Store};
use crate::tasks::TaskTable;
use durable::committed;
pub(crate) use hub::{Next, Subscription};
use msg::{Envelope, ProxyOp, Reply, Request};
use registry::Registry;
use scrape::MetricsSnapshot;
use views::ListCache;
pub(crate) use views::PAGE_ITEMS;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {0} is unavailable")]
    Unavailable(usize),
    #[error("shard {0} did not answer in time")]
    Timeout(usize),
    #[error("shard answered with an unexpected reply (wanted {0})")]
    Unexpected(&'static str),
    /// The change is applied in memory but could not be made durable.
    #[error("{0}")]
    Store(String),
    /// The owner shard holds its share of `--max-workers` already.
    #[error("Worker capacity reached (--max-workers); try again after workers leave")]
    AtCapacity,
}

pub(crate) struct Shard {
    pub id: usize,
    pub count: usize,
    pub cfg: Arc<Config>,
    live: Liveness,
    /// `cfg.coordinator_url()`, made once: worker listings expand every
    /// container's env with it.
    coordinator_url: String,
    registry: RefCell<Registry>,
    pub tasks: RefCell<TaskTable>,
    pub proxy: Rc<ProxyState>,
    pub metrics: RefCell<ShardMetrics>,
    mesh: Mesh<Envelope>,
    /// Where mutations are made durable; `None` runs in memory only.
    store: Option<Store>,
    /// Where history samples go and `GET /api/history` asks (None with
    /// `--no-history`).
    history: Option<crate::history::Handle>,
    /// Route labels of history samples, by metrics index.
    route_names: &'static [&'static str],
    /// Workers heartbeated since the last flush to the store.
    dirty: RefCell<HashSet<String, ahash::RandomState>>,
    /// Store operations for task changes not yet handed to the store: the
    /// task table's sink fills it, and whoever caused the changes drains it
    /// in the same synchronous step (see [`Shard::apply`]).
    task_ops: Rc<RefCell<Vec<Op>>>,
    list_cache: RefCell<ListCache>,
    /// This run's start (cursors of other runs are told apart by it).
    pub epoch: u64,
    /// This shard's events; shared with the task table's sink.
    ring: Rc<RefCell<Ring>>,
    /// Subscribers on this shard and the mirrors they read.
    hub: hub::Hub,
    /// As the owner of services: every shard's level for each (coverage).
    levels: RefCell<events::Levels>,
    /// The level this shard last reported for each service it has.
    reported: RefCell<HashMap<String, u8, ahash::RandomState>>,
    /// Levels to send to other owners (the sending task drains it).
    levels_out: RefCell<Option<futures::channel::mpsc::UnboundedSender<(usize, String, u8)>>>,
    /// Cluster mode: the view, handover and connections to other nodes.
    cluster: Option<cluster::Node>,
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        count: usize,
        cfg: Arc<Config>,
        mesh: Mesh<Envelope>,
        route_names: &'static [&'static str],
        proxy: ProxySetup,
    ) -> Self {
        let retention = cfg.task_retention;
        let event_ring = cfg.event_ring;
        let live = Liveness {
            heartbeat_timeout: cfg.heartbeat_timeout,
            worker_timeout: cfg.worker_timeout,
        };
        let cluster = cfg
            .cluster
            .as_ref()
            .map(|c| cluster::Node::new(&c.node_id, proxy.tls.clone(), cfg.listen));
        Self {
            cluster,
            id,
            count,
            live,
            coordinator_url: cfg.coordinator_url(),
            cfg,
            registry: RefCell::new(Registry::new(live)),
            tasks: RefCell::new(TaskTable::new(retention)),
            proxy: Rc::new(ProxyState::new(proxy)),
            metrics: RefCell::new(ShardMetrics::new(route_names.len())),
            mesh,
            list_cache: RefCell::new(ListCache::default()),
            epoch: 0,
            ring: Rc::new(RefCell::new(Ring::new(event_ring))),
            hub: hub::Hub::default(),
            levels: RefCell::default(),
            reported: RefCell::default(),
            levels_out: RefCell::new(None),
            store: None,
            history: None,
            route_names,
            dirty: RefCell::default(),
            task_ops: Rc::default(),
        }
    }

    /// Makes this shard persist its mutations in `store`.
    pub(crate) fn with_store(mut self, store: Option<Store>) -> Self {
        let pending = store.is_some().then(|| self.task_ops.clone());
        let ring = self.ring.clone();
        self.tasks.get_mut().set_sink(Box::new(move |ev| {
            if let Some(pending) = &pending {
                pending.borrow_mut().push(store::task::event_op(ev));
            }
            if let Some(d) = events::task_event(ev) {
                ring.borrow_mut().push(d);
            }
        }));
        self.store = store;
        self
    }

    pub(crate) fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub(crate) fn history(&self) -> Option<&crate::history::Handle> {
        self.history.as_ref()
    }

    /// This shard holds its share of `--max-workers` already: a new id is
    /// refused (a known one may still re-register).
    fn is_full(&self) -> bool {
        let share = self.cfg.max_workers.div_ceil(self.count.max(1));
        self.registry.borrow().len() >= share
    }

    pub(crate) fn owner_of(&self, worker_id: &str) -> usize {
        owner_of(worker_id, self.count)
    }

    pub(crate) fn is_healthy(&self, w: &WorkerRecord, now: Instant) -> bool {
        w.is_healthy(now, &self.live)
    }

    /// Read access for other modules' synchronous operations (tasks).
    pub(crate) fn registry(&self) -> std::cell::Ref<'_, Registry> {
        self.registry.borrow()
    }

    /// Runs `req` on shard `to`: inline when it is us, else over the mesh.
    pub(crate) async fn call(&self, to: usize, req: Request) -> Result<Reply, ShardError> {
        if to == self.id {
            let (reply, ack) = self.apply(req);
            self.durable(ack).await?;
            return Ok(reply);
        }
        let (tx, rx) = oneshot::channel();
        let env = Envelope {
            request: req,
            reply: tx,
        };
        self.metrics.borrow_mut().mesh_sent += 1;
        let exchange = async {
            self.mesh
                .send(to, env)
                .await
                .map_err(|_| ShardError::Unavailable(to))?;
            rx.await.map_err(|_| ShardError::Unavailable(to))
        };
        match runtime::timeout(self.cfg.gather_timeout, exchange)
            .await
            .map_err(|_| ShardError::Timeout(to))??
        {
            Reply::StoreFailed(e) => Err(ShardError::Store(e)),
            reply => Ok(reply),
        }
    }

    /// Seastar's `map_reduce0`: runs the request built by `make` on every
    /// shard at once (this one inline), takes each answer apart with
    /// `unpack` (a typed accessor such as [`Reply::summary`]) and folds
    /// them into `init` in shard order, so the result does not depend on
    /// which shard answered first. The first failing shard fails the whole.
    pub(crate) async fn map_reduce<T, A>(
        &self,
        make: impl Fn() -> Request,
        unpack: fn(Reply) -> Result<T, ShardError>,
        init: A,
        mut fold: impl FnMut(A, T) -> A,
    ) -> Result<A, ShardError> {
        let calls = (0..self.count).map(|to| self.call(to, make()));
        let mut acc = init;
        for reply in join_all(calls).await {
            acc = fold(acc, unpack(reply?)?);
        }
        Ok(acc)
    }

    /// Answers a request from another shard (called by the mesh loop).
    pub(crate) fn serve_remote(self: &Rc<Self>, env: Envelope) {
        self.metrics.borrow_mut().mesh_received += 1;
        if let Request::Events(q) = env.request {
            return self.serve_events_remote(q, env.reply);
        }
        let (reply, ack) = self.apply(env.request);
        match ack {
            // The requester may have timed out and gone; nothing to do then.
            None => {
                let _ = env.reply.send(reply);
            }
            // Answer only once durable, without holding up the mesh loop.
            Some(ack) => {
                let timeout = self.cfg.gather_timeout;
                runtime::spawn(async move {
                    let reply = match committed(ack, timeout).await {
                        Ok(()) => reply,
                        Err(e) => Reply::StoreFailed(e),
                    };
                    let _ = env.reply.send(reply);
                });
            }
        }
    }

    /// Installs the state recovered from the database for this shard.
    fn restore(&self, slice: store::recovery::ShardSlice) {
        let (workers, tasks, pins) = (slice.workers.len(), slice.tasks.len(), slice.pins.len());
        {
            let mut reg = self.registry.borrow_mut();
            for w in slice.workers {
                reg.restore(w);
            }
        }
        for (key, workers) in slice.pins {
            self.proxy.set_pin(key, Some(workers));
        }
        let expired = self.tasks.borrow_mut().restore(slice.tasks, Instant::now());
        self.persist_task_changes();
        if workers + tasks + pins > 0 {
            // Recovery held every row's text next to the records built from
            // it; hand that back, or RSS after a restart stays about twice
            // what the same registry costs when registered live.
            runtime::release_free_memory();
            tracing::info!(
                shard = self.id,
                workers,
                tasks,
                pins,
                expired_leases = expired,
                "shard restored"
            );
        }
    }

    /// Executes one operation against this shard's state, then publishes
    /// the events of what it changed.
    pub(crate) fn handle(&self, req: Request) -> Reply {
        let reply = self.execute(req);
        self.publish();
        reply
    }

    fn execute(&self, req: Request) -> Reply {
        let now = Instant::now();
        match req {
            Request::RegisterNew(rec) => {
                if self.registry.borrow().get(&rec.worker_id).is_some() {
                    Reply::IdTaken(rec)
                } else if self.is_full() {
                    Reply::AtCapacity
                } else {
                    Reply::Registered {
                        replaced: self.registry.borrow_mut().insert(*rec),
                    }
                }
            }
            Request::Register(rec) => {
                let known = self.registry.borrow().get(&rec.worker_id).is_some();
                if !known && self.is_full() {
                    Reply::AtCapacity
                } else {
                    Reply::Registered {
                        replaced: self.registry.borrow_mut().insert(*rec),
                    }
                }
            }
            Request::Heartbeat(hb) => {
                match self
                    .registry
                    .borrow_mut()
                    .heartbeat(*hb, now, SystemTime::now())
                {
                    Some(routing) => Reply::Beat(routing),
                    None => Reply::Found(false),
                }
            }
            Request::Unregister(id) => {
                Reply::Found(self.registry.borrow_mut().remove(&id).is_some())
            }
            Request::Task(op) => Reply::Task(ops::task(self, op)),
            Request::Proxy(op) => Reply::Proxy(ops::proxy(self, op)),
            Request::CompleteTask(id) => {
                Reply::Found(self.registry.borrow_mut().complete_task(&id))
            }
            Request::Coverage { exclude } => Reply::Coverage(self.coverage(exclude.as_deref())),
            Request::List(q) => Reply::Listing(self.listing(now, &q)),
            Request::Worker(id) => Reply::Worker(self.worker_json(now, &id)),
            Request::Drain { id, drained } => {
                let refresh = self.registry.borrow_mut().set_drained(&id, drained);
                Reply::Drained(refresh.zip(self.worker_json(now, &id)))
            }
            Request::Summary => Reply::Summary(Box::new(self.summary())),
            Request::ServiceMembers => Reply::Members(self.members(now)),
            Request::Broadcast(job) => Reply::Delivered(self.broadcast(now, &job)),
            Request::Events(q) => Reply::Events(Box::new(self.events_now(&q))),
            Request::CoverageLevel {
                service,
                from,
                level,
            } => {
                self.coverage_level(service, from, level);
                Reply::Found(true)
            }
            Request::Delta(q) => Reply::Delta(Box::new(self.delta(&q))),
            Request::Sample => Reply::Sample(Box::new(self.sample())),
            Request::Metrics => Reply::Metrics(Box::new(MetricsSnapshot {
                shard: self.id,
                metrics: {
                    let mut m = self.metrics.borrow().clone();
                    m.events_published = self.ring.borrow().head();
                    m.event_subscribers = self.subscribers() as u64;
                    m
                },
                workers: self.registry.borrow().len() as u64,
                tasks: self.tasks.borrow().counters(),
                queues: self.tasks.borrow().queue_depths(),
                proxy: self.proxy.counters(),
            })),
        }
    }

    /// Judges the workers whose deadline came due (stale, or silent long
    /// enough to be removed), at most `SWEEP_BATCH` of them; returns the
    /// ids removed and whether more are due. Never walks the registry.
    fn sweep(&self) -> (Vec<String>, bool) {
        let now = Instant::now();
        let ex = self.registry.borrow_mut().expire(now, SWEEP_BATCH);
        self.publish();
        let removed = ex.removed;
        if !removed.is_empty() {
            if let Some(store) = &self.store {
                let mut dirty = self.dirty.borrow_mut();
                for id in &removed {
                    dirty.remove(id);
                }
                store.submit_nowait(
                    removed
                        .iter()
                        .map(|id| Op::DeleteWorker { id: id.clone() })
                        .collect(),
                );
            }
            self.metrics.borrow_mut().workers_removed += removed.len() as u64;
            tracing::info!(
                shard = self.id,
                count = removed.len(),
                workers = %capped(&removed),
                "removed silent workers"
            );
        }
        if ex.went_stale > 0 {
            tracing::info!(
                shard = self.id,
                count = ex.went_stale,
                workers = %capped(&ex.stale_ids),
                "workers went stale (missed their heartbeat)"
            );
        }
        (removed, ex.more)
    }

    /// Tells every shard's proxy that `workers` are gone (their attempt
    /// series and cooldowns are dropped). Best effort: a shard that does
    /// not answer keeps a few stale series until the next removal.
    pub(crate) async fn forget_workers(&self, workers: Vec<String>) {
        let r = self
            .map_reduce(
                || Request::Proxy(ProxyOp::Forget(workers.clone())),
                Reply::done,
                (),
                |(), ()| (),
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(shard = self.id, error = %e, "forgetting removed workers");
        }
    }
}

/// How often each shard sweeps: often enough that staleness and removal
/// lag their timeouts by a small fraction, and that the workers due per
/// sweep stay few (a sweep costs what came due, not what exists).
fn sweep_interval(cfg: &Config) -> Duration {
    (cfg.worker_timeout.min(cfg.heartbeat_timeout) / 8)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Workers judged per sweep step before requests get the core back: a
/// step costs well under a millisecond even with every one removed.
const SWEEP_BATCH: usize = 256;

/// Debug builds only: `COORDINATOR_FAULT_PANIC_SHARD=<id>` makes that shard
/// panic half a second after it starts, so a test can check that a dead
/// shard ends the process (`runtime` arms that for every shard thread).
/// Release builds contain none of this.
fn inject_fault(id: usize) {
    #[cfg(debug_assertions)]
    {
        let target = std::env::var("COORDINATOR_FAULT_PANIC_SHARD").ok();
        if target.and_then(|v| v.parse::<usize>().ok()) == Some(id) {
            runtime::spawn(async move {
                runtime::sleep(Duration::from_millis(500)).await;
                panic!("injected fault: COORDINATOR_FAULT_PANIC_SHARD={id}");
            });
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = id;
}

/// A started shard: its state restored, its mesh inbox served and its
/// background loops (sweep, lease expiry, heartbeat flush) running until
/// `shutdown`. The caller serves clients with it and then calls
/// [`Shard::finish`].
///
/// `route_names` are the request kinds the front end counts, by index
/// (`ShardMetrics` keeps one slot per index); the shard only uses them as
/// labels of history samples. With `history`, the shard samples into it.
pub(crate) fn start(
    env: ShardEnv<Envelope>,
    cfg: Arc<Config>,
    boot: Arc<Boot>,
    proxy: ProxySetup,
    route_names: &'static [&'static str],
    history: Option<crate::history::Handle>,
    cluster_inbox: Option<futures::channel::mpsc::UnboundedReceiver<crate::cluster::Update>>,
) -> (Rc<Shard>, runtime::Listener, runtime::Shutdown) {
    let ShardEnv {
        id,
        count,
        mesh,
        inbox,
        listener,
        shutdown,
        ready,
    } = env;
    let mut shard =
        Shard::new(id, count, cfg.clone(), mesh, route_names, proxy).with_store(boot.store.clone());
    shard.history = history.clone();
    shard.epoch = boot.epoch;
    shard.restore(boot.take(id));
    drop(boot);
    let shard = Rc::new(shard);
    {
        // Coverage levels for other owners go out from one task, in order.
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<(usize, String, u8)>();
        *shard.levels_out.borrow_mut() = Some(tx);
        let s = shard.clone();
        runtime::spawn(async move {
            use futures::StreamExt;
            while let Some((owner, service, level)) = rx.next().await {
                let req = Request::CoverageLevel {
                    service,
                    from: s.id,
                    level,
                };
                if let Err(e) = s.call(owner, req).await {
                    tracing::debug!(shard = s.id, error = %e, "coverage level not delivered");
                }
            }
        });
        shard.report_all_levels();
    }
    {
        let shard = shard.clone();
        inbox.serve(move |env| shard.serve_remote(env));
    }
    {
        let shard = shard.clone();
        let shutdown = shutdown.clone();
        let every = sweep_interval(&cfg);
        runtime::spawn(async move {
            while !shutdown.is_requested() {
                runtime::sleep(every).await;
                loop {
                    let (removed, more) = shard.sweep();
                    if !removed.is_empty() {
                        shard.forget_workers(removed).await;
                    }
                    if !more || shutdown.is_requested() {
                        break;
                    }
                    // Let the reactor poll: requests that arrived meanwhile
                    // are served before the next batch.
                    runtime::breathe().await;
                }
            }
        });
    }
    ops::spawn_housekeeping(shard.clone(), shutdown.clone());
    if let Some(inbox) = cluster_inbox {
        cluster::spawn(shard.clone(), inbox);
    }
    if let Some(h) = history {
        history::spawn(shard.clone(), h, shutdown.clone());
    }
    if shard.store.is_some() {
        let shard = shard.clone();
        let shutdown = shutdown.clone();
        let every = cfg.heartbeat_flush;
        runtime::spawn(async move {
            while !shutdown.is_requested() {
                runtime::sleep(every).await;
                // Not awaited: heartbeat replies never wait for the disk.
                drop(shard.flush_heartbeats());
            }
        });
    }
    inject_fault(id);
    ready.signal();
    tracing::debug!(shard = id, shards = count, "shard started");
    (shard, listener, shutdown)
}

impl Shard {
    /// After the front end has stopped: a clean stop loses no heartbeat
    /// state at all.
    pub(crate) async fn finish(&self) {
        if let Err(e) = self.durable(self.flush_heartbeats()).await {
            tracing::warn!(shard = self.id, error = %e, "final heartbeat flush failed");
        }
        tracing::debug!(shard = self.id, "shard stopped");
    }
}

/// At most `LOG_IDS` ids, comma-separated, and how many more there were:
/// one log line stays short however many workers it is about.
fn capped(ids: &[String]) -> String {
    let shown = ids.len().min(registry::LOG_IDS);
    let mut s = ids[..shown].join(",");
    if ids.len() > shown {
        s.push_str(&format!(" (+{} more)", ids.len() - shown));
    }
    s
}
