//! Cluster mode: several coordinators as one, on etcd.
//!
//! Owns: the etcd side of a node. Two OS threads, each with its own
//! current-thread tokio runtime and etcd client (a tonic channel belongs
//! to the runtime that made it), so no shard ever runs or waits on etcd
//! code:
//! - `member` keeps this node's lease and its key under
//!   `/<cluster>/nodes/`, watches that prefix, and tells every shard the
//!   current [`View`] over a channel; when ownership moves it reads the
//!   state this node now owns from etcd and hands it to the shards
//!   ([`Update::Adopt`]). It fences the node (a view with `fenced`) when
//!   the lease cannot be kept, and rejoins by itself.
//! - `writer` is the store in cluster mode: it takes the same batches of
//!   [`crate::store::Op`]s the SQLite writer takes, coalesces them, and
//!   writes them in etcd transactions that only succeed while this node's
//!   key still holds this node's lease (fencing in etcd itself), then
//!   answers the acks. Heartbeat state is not written: it stays in the
//!   owner's memory.
//!
//! Ownership (`ring`): a key goes to the live member with the highest
//! rendezvous weight, then to a shard as in a single node. `keys` is the
//! key layout and the value encoding, pure.
//!
//! This module must not know about HTTP or shards: what a shard does with
//! an [`Update`] is `shard::cluster`'s business, forwarding requests to
//! another node is `http::peer`'s.

mod keys;
mod member;
pub(crate) mod ring;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};

use crate::model::placement::placement_hash;
use crate::store::{RecoveredTask, RecoveredWorker, Store};

pub(crate) use keys::Layout;

/// Shortest and longest `--cluster-lease-seconds`.
pub const LEASE_SECONDS: std::ops::RangeInclusive<u64> = 2..=60;

/// What a node needs to join a cluster (all from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// etcd client URLs (`--cluster-etcd`).
    pub endpoints: Vec<String>,
    /// This node's name, unique in the cluster (`--node-id`).
    pub node_id: String,
    /// The URL other nodes reach this one at (`--advertise-url`).
    pub advertise_url: String,
    /// Prefix of every key (`--cluster-name`), so clusters can share an etcd.
    pub name: String,
    /// TTL of the node's lease (`--cluster-lease-seconds`).
    pub lease_ttl: Duration,
}

impl Settings {
    /// Refuses settings a node cannot run with; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("--cluster-etcd needs at least one URL".into());
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!("--cluster-etcd {e:?}: expected http://host:port"));
            }
        }
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !id_ok(&self.node_id) {
            return Err("--node-id must be 1-64 characters of A-Z a-z 0-9 - _ .".into());
        }
        if !id_ok(&self.name) {
            return Err("--cluster-name must be 1-64 characters of A-Z a-z 0-9 - _ .".into());
        }
        if !self.advertise_url.starts_with("http://") {
            return Err(format!(
                "--advertise-url {:?}: expected http://host:port (nodes talk plain HTTP on a private network)",
                self.advertise_url
            ));
        }
        let secs = self.lease_ttl.as_secs();
        if !LEASE_SECONDS.contains(&secs) || self.lease_ttl.subsec_nanos() != 0 {
            return Err(format!(
                "--cluster-lease-seconds must be whole seconds in {}..={}",
                LEASE_SECONDS.start(),
                LEASE_SECONDS.end()
            ));
        }
        Ok(())
    }
}

/// A live node, as its key in etcd describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Member {
    pub node_id: String,
    /// Its advertise URL, without a trailing `/`.
    pub url: String,
    pub shards: usize,
}

/// The cluster as one node sees it: the members (sorted by id) and
/// whether this node may write.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// Grows with every view this node publishes.
    pub epoch: u64,
    pub members: Vec<Member>,
    /// `placement_hash(node_id)` of each member, the rendezvous seeds.
    seeds: Vec<u64>,
    /// This node's id.
    pub self_id: String,
    /// The node has no valid lease: it answers reads and heartbeats from
    /// memory but refuses writes (503) until it has rejoined.
    pub fenced: bool,
}

impl View {
    pub(crate) fn new(epoch: u64, mut members: Vec<Member>, self_id: &str, fenced: bool) -> View {
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        members.dedup_by(|a, b| a.node_id == b.node_id);
        let seeds = members.iter().map(|m| placement_hash(&m.node_id)).collect();
        View {
            epoch,
            members,
            seeds,
            self_id: self_id.to_string(),
            fenced,
        }
    }

    /// Before the first join: no members, fenced.
    pub(crate) fn joining(self_id: &str) -> View {
        View::new(0, Vec::new(), self_id, true)
    }

    /// The member owning the key whose placement hash is `key_hash`; None
    /// when there are no members.
    pub(crate) fn owner(&self, key_hash: u64) -> Option<&Member> {
        ring::owner(key_hash, &self.seeds).map(|i| &self.members[i])
    }

    /// This node owns the key: it is the owner, or nobody is (no members
    /// known yet; the node is fenced then, so it takes no writes).
    pub(crate) fn owns(&self, key_hash: u64) -> bool {
        self.owner(key_hash)
            .is_none_or(|m| m.node_id == self.self_id)
    }

    /// Every member but this node.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.node_id != self.self_id)
    }
}

/// What the cluster threads tell a shard, in order.
#[derive(Debug)]
pub(crate) enum Update {
    /// A new view: the shard drops what it no longer owns.
    View(Arc<View>),
    /// State this node owns under view `epoch`, read from etcd; the shard
    /// installs what it does not hold already.
    Adopt {
        epoch: u64,
        workers: Vec<RecoveredWorker>,
        tasks: Vec<RecoveredTask>,
    },
    /// Pins (key, JSON list of worker ids, or None when deleted); every
    /// shard of every node keeps them all.
    Pins(Vec<(String, Option<String>)>),
    /// Everything of view `epoch` was adopted.
    Settled(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start the cluster threads: {0}")]
    Spawn(std::io::Error),
    #[error("cannot start a tokio runtime for etcd: {0}")]
    Runtime(std::io::Error),
}

/// The running cluster threads; [`Cluster::stop`] leaves the cluster (the
/// lease is revoked, so the others take this node's share at once).
pub struct Cluster {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    inboxes: Arc<Mutex<Vec<Option<UnboundedReceiver<Update>>>>>,
    joined: crossbeam_channel::Receiver<()>,
}

impl Cluster {
    /// Each shard's update channel, taken by the shard at its start.
    pub(crate) fn inboxes(&self) -> Arc<Mutex<Vec<Option<UnboundedReceiver<Update>>>>> {
        self.inboxes.clone()
    }

    /// Waits up to `limit` for the first join (lease, key, view, adoption).
    /// False when it did not happen in time: the node starts fenced and
    /// keeps trying.
    pub(crate) fn wait_joined(&self, limit: Duration) -> bool {
        self.joined.recv_timeout(limit).is_ok()
    }

    /// Leaves the cluster and joins the threads. Call it after the shards
    /// have stopped and the store is closed.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a cluster thread panicked");
            }
        }
    }
}

/// Starts the membership and writer threads for a node of `shards` shards.
/// Returns the cluster and the store the shards write through.
pub(crate) fn start(settings: Settings, shards: usize) -> Result<(Cluster, Store), ClusterError> {
    let layout = Layout::new(&settings.name);
    let lease = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (senders, receivers): (Vec<UnboundedSender<Update>>, Vec<_>) =
        (0..shards).map(|_| unbounded()).unzip();
    let (joined_tx, joined) = crossbeam_channel::bounded(1);
    let label = format!("etcd:{}", settings.endpoints.join(","));
    let (store, rx, stats) = Store::remote(std::path::Path::new(&label));
    let writer = {
        let (settings, layout, lease) = (settings.clone(), layout.clone(), lease.clone());
        std::thread::Builder::new()
            .name("cluster-writer".into())
            .spawn(move || writer::run(settings, layout, lease, rx, stats))
            .map_err(ClusterError::Spawn)?
    };
    let member = {
        let stop = stop.clone();
        let ctx = member::Ctx {
            settings,
            layout,
            shards,
            out: senders,
            lease,
            stop,
            joined: joined_tx,
        };
        std::thread::Builder::new()
            .name("cluster-member".into())
            .spawn(move || member::run(ctx))
            .map_err(ClusterError::Spawn)?
    };
    let cluster = Cluster {
        stop,
        threads: vec![member, writer],
        inboxes: Arc::new(Mutex::new(receivers.into_iter().map(Some).collect())),
        joined,
    };
    Ok((cluster, store))
}

/// Whether an etcd call may succeed when made again: the member it went to
/// is down or restarting, or lost its leader. The client balances over
/// every endpoint but may pick a dead member again until it notices, so a
/// call that failed this way is simply made again.
fn transient(e: &etcd_client::Error) -> bool {
    // gRPC codes: CANCELLED 1, UNKNOWN 2 (a broken HTTP/2 stream),
    // DEADLINE_EXCEEDED 4, ABORTED 10, UNAVAILABLE 14 ("leader changed",
    // "tcp connect error").
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 10 | 14),
        _ => false,
    }
}

/// Makes the call `op` makes until it succeeds, fails for a reason that
/// will not pass ([`transient`]), or `limit` has gone by. Only for calls
/// that are safe to repeat: reads, and writes of whole values.
async fn retrying<T, F, Fut>(limit: Duration, what: &str, mut op: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(25);
    loop {
        let last = match tokio::time::timeout_at(deadline, op()).await {
            Err(_) => return Err(format!("{what}: no answer within {limit:?}")),
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if transient(&e) => e,
            Ok(Err(e)) => return Err(format!("{what}: {e}")),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(format!("{what}: {last}"));
        }
        tracing::debug!(error = %last, "{what}: retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(400));
    }
}

/// A current-thread tokio runtime for one cluster thread.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> Member {
        Member {
            node_id: id.into(),
            url: format!("http://{id}"),
            shards: 2,
        }
    }

    #[test]
    fn view_owner_is_one_member_and_self_owns_its_share() {
        let v = View::new(1, vec![m("c"), m("a"), m("b"), m("a")], "b", false);
        assert_eq!(v.members.len(), 3);
        assert_eq!(v.peers().count(), 2);
        let mut own = 0;
        for k in 0..3000u64 {
            let h = placement_hash(&k.to_string());
            let o = v.owner(h).unwrap();
            assert_eq!(v.owns(h), o.node_id == "b");
            own += v.owns(h) as usize;
        }
        assert!((800..1200).contains(&own), "{own}");
        let j = View::joining("b");
        assert!(j.fenced && j.owns(7) && j.owner(7).is_none());
    }

    #[test]
    fn settings_are_checked() {
        let ok = Settings {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            node_id: "node-1".into(),
            advertise_url: "http://127.0.0.1:8000".into(),
            name: "pool".into(),
            lease_ttl: Duration::from_secs(5),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            Settings {
                endpoints: vec![],
                ..ok.clone()
            },
            Settings {
                node_id: "a/b".into(),
                ..ok.clone()
            },
            Settings {
                advertise_url: "127.0.0.1:8000".into(),
                ..ok.clone()
            },
            Settings {
                lease_ttl: Duration::from_secs(1),
                ..ok.clone()
            },
            Settings {
                name: String::new(),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
