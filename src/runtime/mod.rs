//! The thread-per-core runtime: the ONLY module that names glommio.
//!
//! It owns executors (one pinned thread per shard), listening sockets
//! (SO_REUSEPORT, one per shard on the same port), the cross-shard channel
//! mesh, timers, task spawning, the hyper <-> glommio IO adapter (plain or
//! client TLS), and running blocking calls off the shard threads.
//! Everything above it (shards, HTTP, tasks) speaks in terms of the small
//! API re-exported here, so swapping the runtime touches only this folder.
//!
//! It must not know about workers, routes or JSON.

mod blocking;
mod executor;
mod failfast;
mod io;
mod mesh;
mod net;
mod notify;
mod preflight;
mod time;

pub use blocking::off_shard;
pub use executor::{
    allowed_cpus, block_on, plan_cpus, start_pool, PoolHandle, PoolSpec, ShardEnv, Stopper,
};
pub use failfast::EXIT_STATUS as PANIC_EXIT_STATUS;
pub use io::{ConnActivity, EmptyErrorBody, HyperIo};
pub use mesh::{Inbox, Mesh, MeshError};
pub use net::{answer_and_close, bind_reuseport, Accepted, Listener, TcpConn};
pub use notify::{local_shutdown, LocalShutdown, LocalTrigger, Shutdown, ShutdownTrigger};
pub use preflight::{preflight, PreflightError};
pub use time::{sleep, timeout, Elapsed};

/// Runs `fut` on the current shard, detached: it lives until it finishes.
/// glommio may poll it before this returns, so callers must not hold a
/// `RefCell` borrow the future also takes.
pub fn spawn<F>(fut: F)
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(fut).detach();
}

/// Lets other tasks on this shard run if this one has used its time slice.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// Tracks in-flight tasks so shutdown can wait for them.
pub struct TaskGroup(glommio::sync::Gate);

impl Default for TaskGroup {
    fn default() -> Self {
        Self(glommio::sync::Gate::new())
    }
}

impl TaskGroup {
    /// Spawns `fut` as a member of the group; returns false (and drops the
    /// future) when the group is already closing.
    pub fn spawn<F>(&self, fut: F) -> bool
    where
        F: std::future::Future + 'static,
        F::Output: 'static,
    {
        self.0.spawn(fut).map(|t| t.detach()).is_ok()
    }

    /// Closes the group and waits until every member has finished.
    pub async fn close(&self) {
        let _ = self.0.close().await;
    }
}
