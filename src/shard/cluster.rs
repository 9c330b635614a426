//! A shard's side of cluster mode: the current view, what this shard holds
//! when ownership moves, and connections to the other nodes.
//!
//! The cluster threads send each shard its [`Update`]s over a channel that
//! one spawned task reads; the view is then a plain `RefCell` read on the
//! request path (no lock, no atomic). On a new view the shard hands over
//! (drops, without events) the workers and tasks another node now owns, in
//! batches with the reactor polled between them; adopted state arrives
//! next and is installed only where the shard holds nothing already (its
//! own memory is at least as new as etcd for what it kept owning). The
//! HTTP layer decides where a request goes ([`Shard::remote_node`]) and
//! waits for adoption before it calls a worker unknown
//! ([`Shard::settled`]). This file must not send HTTP requests itself.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::channel::mpsc::UnboundedReceiver;
use futures::channel::oneshot;
use futures::StreamExt;

use super::Shard;
use crate::cluster::{Member, Update, View};
use crate::model::placement::placement_hash;
use crate::proxy::guard::AddrGuard;
use crate::proxy::{parse_endpoint, Endpoint, Pool};
use crate::runtime;
use crate::tasks::task::key_hash;

/// Items handed over per step before requests get the core back.
const HANDOVER_BATCH: usize = 512;

/// Another node, as a request is relayed to it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub node_id: String,
    pub endpoint: Rc<Endpoint>,
}

pub(crate) struct Node {
    view: RefCell<Arc<View>>,
    /// The last epoch whose adoption finished.
    settled: Cell<u64>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Keep-alive connections to the other nodes (their advertise URLs are
    /// trusted configuration, so no worker-network policy applies).
    pub pool: Pool,
    endpoints: RefCell<HashMap<String, Rc<Endpoint>, ahash::RandomState>>,
}

impl Node {
    pub(crate) fn new(
        node_id: &str,
        tls: Arc<rustls::ClientConfig>,
        listen: std::net::SocketAddr,
    ) -> Node {
        Node {
            view: RefCell::new(Arc::new(View::joining(node_id))),
            settled: Cell::new(0),
            waiters: RefCell::default(),
            pool: Pool::new(tls, AddrGuard::new(Vec::new(), listen, Vec::new())),
            endpoints: RefCell::default(),
        }
    }

    fn peer(&self, m: &Member) -> Option<Peer> {
        if let Some(e) = self.endpoints.borrow().get(&m.node_id) {
            return Some(Peer {
                node_id: m.node_id.clone(),
                endpoint: e.clone(),
            });
        }
        match parse_endpoint(&m.url, None) {
            Ok(e) => {
                let e = Rc::new(e);
                self.endpoints
                    .borrow_mut()
                    .insert(m.node_id.clone(), e.clone());
                Some(Peer {
                    node_id: m.node_id.clone(),
                    endpoint: e,
                })
            }
            Err(why) => {
                tracing::warn!(node = %m.node_id, url = %m.url, error = %why, "unusable advertise URL");
                None
            }
        }
    }
}

impl Shard {
    pub(crate) fn node(&self) -> Option<&Node> {
        self.cluster.as_ref()
    }

    /// This node's id in cluster mode.
    pub(crate) fn node_id(&self) -> Option<&str> {
        self.cfg.cluster.as_ref().map(|c| c.node_id.as_str())
    }

    /// The other node owning the key whose placement hash is `key_hash`;
    /// None when this node owns it (or runs alone).
    pub(crate) fn remote_node(&self, key_hash: u64) -> Option<Peer> {
        let node = self.cluster.as_ref()?;
        let view = node.view.borrow();
        match view.owner(key_hash) {
            Some(m) if m.node_id != view.self_id => node.peer(m),
            _ => None,
        }
    }

    /// The node owning worker `id`, when it is another one.
    pub(crate) fn remote_worker(&self, id: &str) -> Option<Peer> {
        self.cluster.as_ref()?;
        self.remote_node(placement_hash(id))
    }

    /// The node owning queue `key` (`worker:<id>`, `service:<name>`…).
    pub(crate) fn remote_queue(&self, key: &str) -> Option<Peer> {
        self.cluster.as_ref()?;
        self.remote_node(key_hash(key))
    }

    /// Every other live node.
    pub(crate) fn peers(&self) -> Vec<Peer> {
        let Some(node) = &self.cluster else {
            return Vec::new();
        };
        let view = node.view.borrow();
        view.peers().filter_map(|m| node.peer(m)).collect()
    }

    /// Cluster mode and this node holds no lease: writes are refused.
    pub(crate) fn fenced(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|n| n.view.borrow().fenced)
    }

    /// The members and this node's state, for `/health` and `/api/cluster`.
    pub(crate) fn view(&self) -> Option<Arc<View>> {
        self.cluster.as_ref().map(|n| n.view.borrow().clone())
    }

    /// Resolves once the current view's adoption has finished (at once
    /// outside cluster mode), or after `limit`.
    pub(crate) async fn settled(&self, limit: Duration) {
        let Some(node) = &self.cluster else { return };
        if self.is_settled() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        node.waiters.borrow_mut().push(tx);
        let _ = runtime::timeout(limit, rx).await;
    }

    /// Whether the current view's adoption has finished (never before
    /// the node's first join).
    pub(crate) fn is_settled(&self) -> bool {
        self.cluster.as_ref().is_none_or(|n| {
            let epoch = n.view.borrow().epoch;
            epoch > 0 && n.settled.get() >= epoch
        })
    }
}

/// Reads the cluster threads' updates until they stop.
pub(super) fn spawn(shard: Rc<Shard>, mut inbox: UnboundedReceiver<Update>) {
    runtime::spawn(async move {
        while let Some(u) = inbox.next().await {
            match u {
                Update::View(v) => install_view(&shard, v).await,
                Update::Adopt {
                    epoch,
                    workers,
                    tasks,
                } => adopt(&shard, epoch, workers, tasks),
                Update::Pins(pins) => {
                    for (key, workers) in pins {
                        let list = workers.and_then(|w| serde_json::from_str(&w).ok());
                        shard.proxy.set_pin(key, list);
                    }
                }
                Update::Settled(epoch) => {
                    if let Some(node) = &shard.cluster {
                        settle(node, epoch);
                    }
                }
            }
        }
    });
}

/// Marks `epoch` adopted when it is the current view's, and wakes whoever
/// waited for it.
fn settle(node: &Node, epoch: u64) {
    if epoch >= node.view.borrow().epoch {
        node.settled.set(epoch);
        for w in node.waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }
}

async fn install_view(shard: &Rc<Shard>, view: Arc<View>) {
    let Some(node) = &shard.cluster else { return };
    let was_settled = shard.is_settled();
    *node.view.borrow_mut() = view.clone();
    if view.fenced {
        // Fenced views keep the members: nothing moves, and nothing can
        // be adopted until the node rejoins. What was adopted stays so;
        // an adoption cut off stays unfinished (503s, not 404s, for the
        // workers it had not brought yet).
        if was_settled {
            settle(node, view.epoch);
        }
        return;
    }
    // Workers another node owns now.
    let gone: Vec<String> = shard
        .registry
        .borrow()
        .workers()
        .filter(|w| !view.owns(placement_hash(&w.worker_id)))
        .map(|w| w.worker_id.clone())
        .collect();
    for batch in gone.chunks(HANDOVER_BATCH) {
        {
            let mut reg = shard.registry.borrow_mut();
            let mut dirty = shard.dirty.borrow_mut();
            for id in batch {
                reg.hand_over(id);
                dirty.remove(id);
            }
        }
        runtime::breathe().await;
    }
    let tasks = shard
        .tasks
        .borrow_mut()
        .hand_over(|key| view.owns(key_hash(key)));
    if !gone.is_empty() || tasks > 0 {
        tracing::info!(
            shard = shard.id,
            epoch = view.epoch,
            workers = gone.len(),
            tasks,
            "handed over to their new owner nodes"
        );
    }
}

fn adopt(
    shard: &Rc<Shard>,
    epoch: u64,
    workers: Vec<crate::store::RecoveredWorker>,
    tasks: Vec<crate::store::RecoveredTask>,
) {
    let Some(node) = &shard.cluster else { return };
    if epoch < node.view.borrow().epoch {
        // A newer view's adoption follows.
        return;
    }
    let (now, wall) = (Instant::now(), SystemTime::now());
    let catalog = shard.cfg.catalog;
    {
        let mut reg = shard.registry.borrow_mut();
        for row in &workers {
            if reg.get(&row.id).is_some() {
                continue;
            }
            match crate::store::worker::restore(row, now, wall, catalog) {
                Ok(w) => reg.restore(w),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable worker from etcd"),
            }
        }
    }
    let fresh: Vec<crate::tasks::Task> = {
        let table = shard.tasks.borrow();
        tasks
            .iter()
            .filter(|t| table.get(&t.id).is_none())
            .filter_map(|row| match crate::store::task::restore(row, now, wall) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable task from etcd");
                    None
                }
            })
            .collect()
    };
    if !fresh.is_empty() {
        shard.tasks.borrow_mut().restore(fresh, now);
        shard.persist_task_changes();
    }
    shard.publish();
}
