//! Starting one executor thread per shard and wiring them together.
//!
//! Each shard gets: its own listening socket (all bound to the same port with
//! SO_REUSEPORT, so the kernel spreads connections), its ends of the channel
//! mesh, a shutdown signal, and its shard id. The shard id is the executor's
//! index in the mesh, so "shard i" and "mesh peer i" are the same thing.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use super::mesh::{self, Inbox, Mesh};
use super::net::Listener;
use super::notify::{shutdown_pair, Shutdown, ShutdownTrigger};

/// What a pool of shards needs to start.
pub(crate) struct PoolSpec {
    /// One entry per shard: the CPU it is pinned to, or `None` for unpinned.
    pub cpus: Vec<Option<usize>>,
    /// Listening sockets, one per shard (see [`super::bind_reuseport`]).
    pub listeners: Vec<std::net::TcpListener>,
    /// Depth of each directed mesh channel.
    pub mesh_capacity: usize,
    /// Thread name prefix.
    pub name: String,
}

/// Everything a shard's main future receives.
pub(crate) struct ShardEnv<M: Send + 'static> {
    pub id: usize,
    pub count: usize,
    pub mesh: Mesh<M>,
    pub inbox: Inbox<M>,
    pub listener: Listener,
    pub shutdown: Shutdown,
    /// Sent once the shard serves its mesh and is about to accept; see
    /// [`PoolHandle::wait_ready`].
    pub ready: Ready,
}

/// A shard's "started" signal to the thread that started the pool. Dropped
/// unsent (the shard's thread failed first), it tells that thread so at once.
pub(crate) struct Ready {
    id: usize,
    tx: crossbeam_channel::Sender<usize>,
}

impl Ready {
    pub(crate) fn signal(self) {
        let _ = self.tx.send(self.id);
    }
}

/// The pool did not come up: these shards' threads ended before they
/// started serving (their own error is logged as they are joined).
#[derive(Debug, thiserror::Error)]
#[error("shard(s) {missing:?} stopped before they started")]
pub struct NotReady {
    pub missing: Vec<usize>,
}

/// How often [`PoolHandle::wait_ready`] reports shards still starting.
const READY_NOTICE: Duration = Duration::from_secs(10);

/// Handle on a running pool: trigger shutdown, wait for the threads.
pub(crate) struct PoolHandle {
    threads: Vec<ExecutorJoinHandle<()>>,
    stopper: Stopper,
    ready: crossbeam_channel::Receiver<usize>,
}

/// Requests shutdown of every shard; cloneable and usable from any thread
/// (a signal-handling thread, a test). Touched only at shutdown.
#[derive(Clone)]
pub struct Stopper(Arc<Mutex<Vec<ShutdownTrigger>>>);

impl Stopper {
    pub fn stop(&self) {
        let triggers = match self.0.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in triggers {
            t.fire();
        }
    }
}

impl PoolHandle {
    /// Waits until every shard has signalled [`Ready`]; fails only when a
    /// shard's thread ended first. While some are still starting (a large
    /// registry to restore, a loaded machine) it calls `slow` with their ids
    /// and the time waited so far, every [`READY_NOTICE`].
    ///
    /// The listening sockets exist before any shard runs, so the kernel
    /// queues connections from the start; a caller that went on before the
    /// shards run could have a request reach a shard whose peers have not
    /// started yet, and wait on them (or time out) on a loaded machine.
    pub(crate) fn wait_ready(
        &self,
        mut slow: impl FnMut(&[usize], Duration),
    ) -> Result<(), NotReady> {
        let since = std::time::Instant::now();
        let mut started = vec![false; self.threads.len()];
        let missing = |started: &[bool]| -> Vec<usize> {
            (0..started.len()).filter(|&i| !started[i]).collect()
        };
        while started.iter().any(|s| !s) {
            match self.ready.recv_timeout(READY_NOTICE) {
                Ok(id) => started[id] = true,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    slow(&missing(&started), since.elapsed());
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(NotReady {
                        missing: missing(&started),
                    })
                }
            }
        }
        Ok(())
    }

    /// Asks every shard to stop accepting and drain.
    pub(crate) fn shutdown(&mut self) {
        self.stopper.stop();
    }

    pub(crate) fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Waits for every shard thread; returns the number that failed.
    pub(crate) fn join(mut self) -> usize {
        let mut failed = 0;
        for t in self.threads.drain(..) {
            if let Err(e) = t.join() {
                tracing::error!(error = %e, "shard executor failed");
                failed += 1;
            }
        }
        failed
    }

    /// Like [`PoolHandle::join`], but gives up after `limit`: returns the
    /// number of shards that failed or had not stopped by then (their
    /// threads are left to the process's exit). Shutdown is bounded this
    /// way because a glommio 0.9 shard has been seen to miss its shutdown
    /// for good (see `notify`); a stop must not hang its caller.
    pub(crate) fn join_within(mut self, limit: Duration) -> usize {
        self.wait_within(limit)
    }

    /// [`PoolHandle::join_within`] by reference, so `Drop` can use it.
    fn wait_within(&mut self, limit: Duration) -> usize {
        let threads = std::mem::take(&mut self.threads);
        let n = threads.len();
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::spawn(move || {
            for t in threads {
                let _ = tx.send(t.join().is_ok());
            }
        });
        let deadline = std::time::Instant::now() + limit;
        let mut failed = 0;
        let mut done = 0;
        while done < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(ok) => {
                    done += 1;
                    if !ok {
                        failed += 1;
                    }
                }
                Err(_) => {
                    tracing::error!(
                        stuck = n - done,
                        "shard(s) did not stop within {limit:?}; leaving them to process exit"
                    );
                    return failed + (n - done);
                }
            }
        }
        let _ = joiner.join();
        failed
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shutdown();
        self.wait_within(Duration::from_secs(30));
    }
}

/// CPUs this process may run on (sched_getaffinity, which respects cgroup
/// cpusets and `taskset`; /sys "online" does not).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Shard count and pinning: `shards` defaults to [`default_shards`] of the
/// CPUs we may run on and the cgroup CPU quota; with more shards than CPUs
/// the CPUs are reused round-robin (useful in tests), with fewer the first
/// ones are used.
pub(crate) fn plan_cpus(shards: Option<usize>, pin: bool) -> Vec<Option<usize>> {
    let cpus = allowed_cpus();
    let n = match shards {
        Some(n) => {
            tracing::info!(shards = n, "shard count from --shards");
            if n > cpus.len() {
                tracing::warn!(
                    shards = n,
                    cpus = cpus.len(),
                    "more shards (--shards / SHARDS) than CPUs this process may run on: \
                     shards share cores and latency suffers"
                );
            }
            n
        }
        None => {
            let quota = super::cgroup::cpu_quota();
            let (n, by) = default_shards(cpus.len(), quota.map(|(q, _)| q));
            match (by, quota) {
                (ShardLimit::Quota, Some((q, source))) => tracing::info!(
                    shards = n,
                    allowed_cpus = cpus.len(),
                    quota_cpus = q.as_f64(),
                    "shard count from the CPU quota ({source})"
                ),
                _ => tracing::info!(
                    shards = n,
                    quota_cpus = quota.map(|(q, _)| q.as_f64()),
                    "shard count from the CPUs this process may use (sched_getaffinity)"
                ),
            }
            n
        }
    }
    .max(1);
    (0..n)
        .map(|i| {
            if pin && !cpus.is_empty() {
                Some(cpus[i % cpus.len()])
            } else {
                None
            }
        })
        .collect()
}

/// Which limit decided the default shard count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShardLimit {
    /// The CPUs the process may run on (affinity, cpusets).
    Affinity,
    /// The cgroup's CPU time quota, rounded up to whole CPUs.
    Quota,
}

/// The default shard count: min(allowed CPUs, ceil(quota)), at least 1.
///
/// A quota of 1.5 CPUs on an 8-CPU machine would otherwise give 8 shards
/// that the kernel throttles in turn: each shard's latency then includes
/// the others' share of every period. `allowed` of 0 means the affinity
/// could not be read.
pub(crate) fn default_shards(
    allowed: usize,
    quota: Option<super::cgroup::CpuQuota>,
) -> (usize, ShardLimit) {
    match quota.map(|q| q.cpus()) {
        Some(q) if allowed == 0 || q < allowed => (q.max(1), ShardLimit::Quota),
        _ => (allowed.max(1), ShardLimit::Affinity),
    }
}

/// Starts one executor thread per shard and runs `shard_main` on each.
///
/// Returns once every thread is spawned (see [`PoolHandle::wait_ready`]
/// for when they run); each shard gets its mesh ends
/// ready-made, so none waits for another to start. An executor that cannot start (io_uring refused) surfaces
/// as an error from its thread; call [`super::preflight`] first to turn the
/// common causes into clear messages.
pub(crate) fn start_pool<M, F, Fut>(spec: PoolSpec, shard_main: F) -> std::io::Result<PoolHandle>
where
    M: Send + 'static,
    F: Fn(ShardEnv<M>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let count = spec.cpus.len();
    assert_eq!(count, spec.listeners.len(), "one listener per shard");
    let mut ends = mesh::build::<M>(count, spec.mesh_capacity).into_iter();
    let mut threads = Vec::with_capacity(count);
    let mut triggers = Vec::with_capacity(count);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(count);
    for (i, (cpu, listener)) in spec.cpus.into_iter().zip(spec.listeners).enumerate() {
        let placement = match cpu {
            Some(c) => Placement::Fixed(c),
            None => Placement::Unbound,
        };
        let (trigger, shutdown) = shutdown_pair();
        triggers.push(trigger);
        let (mesh, inbox) = ends.next().expect("one mesh end per shard");
        let shard_main = shard_main.clone();
        let ready = Ready {
            id: i,
            tx: ready_tx.clone(),
        };
        let ex = LocalExecutorBuilder::new(placement)
            .name(&format!("{}-{i}", spec.name))
            // glommio registers 10 MiB of io memory by default; we do no
            // file IO on shards, and smaller registrations fit common
            // RLIMIT_MEMLOCK settings (8 MiB) without warnings.
            .io_memory(512 << 10)
            .preempt_timer(Duration::from_millis(10))
            .spawn(move || async move {
                super::failfast::arm();
                let env = ShardEnv {
                    id: i,
                    count,
                    mesh,
                    inbox,
                    listener: Listener::from_std(listener),
                    shutdown,
                    ready,
                };
                shard_main(env).await;
            })
            .map_err(std::io::Error::from)?;
        threads.push(ex);
    }
    Ok(PoolHandle {
        threads,
        stopper: Stopper(Arc::new(Mutex::new(triggers))),
        ready: ready_rx,
    })
}

/// Runs `fut` to completion on a one-off executor on the calling thread and
/// returns its output. For tests of code that needs the runtime (sockets,
/// timers) without a whole server; the server itself never uses it.
#[cfg(test)]
pub(crate) fn block_on<F: Future>(fut: F) -> std::io::Result<F::Output> {
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .map_err(std::io::Error::from)?;
    Ok(ex.run(fut))
}

#[cfg(test)]
mod tests {
    use super::super::cgroup::parse_cpu_max;
    use super::*;

    #[test]
    fn default_shards_take_the_smaller_of_affinity_and_quota() {
        use ShardLimit::{Affinity, Quota};
        for (allowed, cpu_max, want) in [
            (8, None, (8, Affinity)),
            (8, Some("max 100000"), (8, Affinity)),
            (8, Some("150000 100000"), (2, Quota)),
            (8, Some("50000 100000"), (1, Quota)),
            // A quota above the CPUs we may use changes nothing.
            (2, Some("400000 100000"), (2, Affinity)),
            (2, Some("200000 100000"), (2, Affinity)),
            // Affinity unknown: the quota alone, else one shard.
            (0, Some("300000 100000"), (3, Quota)),
            (0, None, (1, Affinity)),
        ] {
            let quota = cpu_max.and_then(parse_cpu_max);
            assert_eq!(
                default_shards(allowed, quota),
                want,
                "{allowed} {cpu_max:?}"
            );
        }
    }
}
