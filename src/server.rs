//! Starting and stopping a whole coordinator: preflight checks, sockets,
//! one shard per executor. Used by `main.rs` and by the tests, which run
//! real servers on ephemeral loopback ports.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cluster::{self, Cluster, Update};
use crate::config::Config;
use crate::history;
use crate::http;
use crate::proxy::ProxySetup;
use crate::runtime::{self, PoolHandle, PoolSpec, ShardEnv, Stopper};
use crate::shard::{self, msg::Envelope};
use crate::store::recovery::Boot;
use crate::store::{Store, StoreError, Writer};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Preflight(#[from] runtime::PreflightError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start shard threads: {0}")]
    Spawn(std::io::Error),
    #[error("cannot start the shards: {0}")]
    NotReady(#[from] runtime::NotReady),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    History(#[from] history::HistoryError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    ProxyTls(#[from] crate::proxy::tls::TlsSetupError),
}

/// A running coordinator. Dropping it shuts it down and waits.
pub struct Server {
    addr: SocketAddr,
    shards: usize,
    pool: Option<PoolHandle>,
    /// How long `stop` waits for the shards: their drain time plus slack.
    stop_limit: std::time::Duration,
    /// The database writer, closed and joined after the shards have
    /// stopped so it writes everything they queued.
    writer: Option<(Store, Writer)>,
    /// The history thread, closed and joined with the writer.
    history: Option<(history::Handle, history::Thread)>,
    /// Cluster mode: the etcd threads and the store they write, closed and
    /// left after the shards have stopped.
    cluster: Option<(Store, Cluster)>,
}

impl Server {
    pub fn start(mut cfg: Config) -> Result<Server, StartError> {
        cfg.validate().map_err(StartError::Config)?;
        runtime::preflight()?;
        runtime::tune_allocator();
        // Built once for all shards; a bad CA file fails the start here.
        let proxy_tls = crate::proxy::tls::client_config(cfg.proxy_ca_file.as_deref())?;
        let cpus = runtime::plan_cpus(cfg.shards, cfg.pin);
        let n = cpus.len();
        let (listeners, addr) =
            runtime::bind_reuseport(cfg.listen, n, 1024).map_err(|source| StartError::Bind {
                addr: cfg.listen,
                source,
            })?;
        // From here `listen` names the port actually bound (for port 0), so
        // the default public URL (`Config::coordinator_url`) does too.
        cfg.listen = addr;
        // The proxy's address guard knows where we listen (the bound port,
        // for port 0), so a worker URL pointing back at us is refused.
        let local = if addr.ip().is_unspecified() {
            crate::proxy::guard::interface_addrs()
        } else {
            Vec::new()
        };
        let proxy = crate::proxy::ProxySetup {
            tls: proxy_tls,
            guard: crate::proxy::guard::AddrGuard::new(cfg.worker_networks.clone(), addr, local),
            via_token: crate::proxy::guard::via_token(),
        };
        let stop_limit = cfg.shutdown_timeout + std::time::Duration::from_secs(5);
        // Bound before the store is opened so a busy port fails fast; the
        // shards only accept once they hold their recovered state.
        let mut cluster = None;
        let (boot, writer) = match (&cfg.cluster, &cfg.database_path) {
            // Cluster mode: etcd is the truth; shards start empty and
            // adopt their share once the node has joined.
            (Some(settings), _) => {
                let (c, store) = cluster::start(settings.clone(), n)?;
                let boot = Boot::with_store(store.clone());
                cluster = Some((store, c));
                (boot, None)
            }
            (None, Some(path)) => {
                let (store, writer, recovered) = Store::open(path, cfg.sync)?;
                match Boot::recover(store.clone(), recovered, n, cfg.worker_timeout, cfg.catalog) {
                    Ok(boot) => (boot, Some((store, writer))),
                    Err(e) => {
                        store.close();
                        writer.join();
                        return Err(e.into());
                    }
                }
            }
            (None, None) => (Boot::in_memory(), None),
        };
        let history = if cfg.history {
            let settings = history::Settings {
                path: cfg.database_path.as_deref().map(history::path_for),
                interval_s: cfg.history_interval.as_secs() as i64,
                retention: cfg.history_retention,
            };
            match history::start(settings) {
                Ok(h) => Some(h),
                Err(e) => {
                    if let Some((store, writer)) = writer {
                        store.close();
                        writer.join();
                    }
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let handle = history.as_ref().map(|(h, _)| h.clone());
        let inboxes = cluster.as_ref().map(|(_, c)| c.inboxes());
        let lease_ttl = cfg.cluster.as_ref().map(|c| c.lease_ttl);
        let cfg = Arc::new(cfg);
        let spec = PoolSpec {
            cpus: cpus.clone(),
            listeners,
            mesh_capacity: cfg.mesh_capacity,
            name: "shard".into(),
        };
        let pool = runtime::start_pool(spec, move |env| {
            let inbox = inboxes.as_ref().and_then(|i| {
                let mut g = i.lock().ok()?;
                g.get_mut(env.id)?.take()
            });
            shard_main(
                env,
                cfg.clone(),
                boot.clone(),
                proxy.clone(),
                handle.clone(),
                inbox,
            )
        })
        .map_err(StartError::Spawn)?;
        // Dropping the pool on failure stops the shards that did start.
        pool.wait_ready(|missing, waited| {
            let ids: Vec<String> = missing.iter().map(usize::to_string).collect();
            tracing::warn!(shards = %ids.join(","), waited_s = waited.as_secs(), "shards still starting");
        })?;
        if let (Some((_, c)), Some(ttl)) = (&cluster, lease_ttl) {
            // Serve only once this node's share is in memory, if etcd lets
            // it join in time; otherwise start fenced and keep trying.
            if !c.wait_joined(ttl * 2) {
                tracing::warn!("not joined to the cluster yet: refusing writes until it has");
            }
        }
        let pinned: Vec<String> = cpus.iter().flatten().map(usize::to_string).collect();
        tracing::info!(
            %addr,
            shards = n,
            cpus = %if pinned.is_empty() { "unpinned".to_string() } else { pinned.join(",") },
            "coordinator listening"
        );
        Ok(Server {
            addr,
            shards: n,
            pool: Some(pool),
            stop_limit,
            writer,
            history,
            cluster,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Stops accepting, lets in-flight requests finish (bounded), returns
    /// when every shard has stopped. Returns the number of shards that failed.
    pub fn stop(mut self) -> usize {
        self.stop_inner()
    }

    /// Blocks until the shards stop (after [`Server::trigger_shutdown`] from
    /// another thread, e.g. a signal handler).
    pub fn wait(mut self) -> usize {
        let failed = self.pool.take().map_or(0, |p| p.join());
        self.join_writer();
        failed
    }

    fn join_writer(&mut self) {
        if let Some((store, writer)) = self.writer.take() {
            store.close();
            writer.join();
        }
        if let Some((handle, thread)) = self.history.take() {
            handle.close();
            thread.join();
        }
        if let Some((store, cluster)) = self.cluster.take() {
            store.close();
            cluster.stop();
        }
    }

    /// A handle another thread (a signal handler) can use to request shutdown.
    pub fn stopper(&self) -> Option<Stopper> {
        self.pool.as_ref().map(PoolHandle::stopper)
    }

    fn stop_inner(&mut self) -> usize {
        match self.pool.take() {
            Some(mut p) => {
                p.shutdown();
                let failed = p.join_within(self.stop_limit);
                self.join_writer();
                failed
            }
            None => {
                self.join_writer();
                0
            }
        }
    }
}

/// One shard thread's main: start the shard, serve HTTP on its listener
/// until shutdown, then let the shard finish. The shard counts requests
/// by the index of their route in the HTTP route table.
async fn shard_main(
    env: ShardEnv<Envelope>,
    cfg: Arc<Config>,
    boot: Arc<Boot>,
    proxy: ProxySetup,
    history: Option<history::Handle>,
    cluster: Option<futures::channel::mpsc::UnboundedReceiver<Update>>,
) {
    let (shard, listener, shutdown) =
        shard::start(env, cfg, boot, proxy, &http::ROUTE_NAMES, history, cluster);
    http::serve(shard.clone(), listener, shutdown).await;
    shard.finish().await;
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
