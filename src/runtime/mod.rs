//! The thread-per-core runtime: the ONLY module that names glommio.
//!
//! It owns executors (one pinned thread per shard), listening sockets
//! (SO_REUSEPORT, one per shard on the same port), the cross-shard channel
//! mesh, timers, task spawning, the hyper <-> glommio IO adapter (plain or
//! client TLS), running blocking calls off the shard threads, and how many
//! shards the CPUs and the cgroup CPU quota allow.
//! Everything above it (shards, HTTP, tasks) speaks in terms of the small
//! API re-exported here, so swapping the runtime touches only this folder.
//!
//! It must not know about workers, routes or JSON.

mod blocking;
mod cgroup;
mod executor;
mod failfast;
mod io;
mod mesh;
mod net;
mod notify;
mod preflight;
mod time;

use std::time::Duration;

pub(crate) use blocking::off_shard;
#[cfg(test)]
pub(crate) use executor::block_on;
pub use executor::NotReady;
pub(crate) use executor::{plan_cpus, start_pool, PoolHandle, PoolSpec, ShardEnv, Stopper};
pub use failfast::EXIT_STATUS as PANIC_EXIT_STATUS;
pub(crate) use io::{ConnActivity, HyperIo};
pub(crate) use mesh::Mesh;
pub(crate) use net::{answer_and_close, bind_reuseport, finish, Listener, TcpConn};
pub(crate) use notify::{local_shutdown, LocalShutdown, Shutdown};
pub(crate) use preflight::{preflight, PreflightError};
pub(crate) use time::{breathe, sleep, timeout};

/// Returns freed heap memory to the system where the allocator keeps it
/// (glibc holds freed blocks for reuse; after a bulk load that freed a
/// lot, that is most of the process's memory). Costs a walk of the free
/// lists: call it after such loads, never on a request path.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free;
    // it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Large blocks (128 KiB and up) come from `mmap` and go back to the system
/// when freed, instead of glibc's default of raising that threshold to the
/// largest block freed so far (up to 32 MiB).
///
/// With the default, the multi-megabyte list bodies and their growing
/// buffers move into the shard's heap arena once the first one is freed,
/// and the arena keeps what fragmentation pins: a soak (1 shard, 1,000
/// req/s of heartbeats, lists of 2,000 workers, churn, proxying, tasks)
/// had 11 MB in use in that arena and 38 MB held by it (`malloc_stats`),
/// and RSS still creeping 0.1-0.2 MB a minute after ten minutes. Blocks
/// this large are few (a list reply, a body being read), so the extra
/// `mmap`/`munmap` per block costs nothing measurable next to producing it.
pub(crate) fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, under glibc's own
    // arena lock, so other threads may allocate meanwhile (tests start
    // servers while others run); setting the same value again is a no-op.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// See [`tune_allocator`]: glibc's own initial value, kept fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Runs `fut` on the current shard, detached: it lives until it finishes.
/// glommio may poll it before this returns, so callers must not hold a
/// `RefCell` borrow the future also takes.
pub(crate) fn spawn<F>(fut: F)
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(fut).detach();
}

/// CPU weight of the background queue against the request queue's 1000:
/// when both have work, background tasks get 1/6 of the core.
const BACKGROUND_SHARES: usize = 200;
/// While background tasks run, the reactor is polled at least this often,
/// so a request arriving meanwhile waits at most about this long (the
/// request queue's default is 10 ms, see `executor`).
const BACKGROUND_SLICE: Duration = Duration::from_micros(500);

thread_local! {
    static BACKGROUND: std::cell::OnceCell<glommio::TaskQueueHandle> =
        const { std::cell::OnceCell::new() };
}

/// Runs `fut` in the shard's background queue and waits for its output.
///
/// Long-running bulk work that must never delay request handling (event
/// streams writing to a thousand subscribers) goes here: glommio runs
/// its queues by weight, so under contention requests get 5/6 of the core
/// and background work the rest, and it yields to the reactor every
/// `BACKGROUND_SLICE`. When requests are idle it gets the whole core.
/// Dropping the returned future cancels `fut`.
pub(crate) async fn in_background<F>(fut: F) -> F::Output
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let queue = BACKGROUND.with(|q| {
        *q.get_or_init(|| {
            glommio::executor().create_task_queue(
                glommio::Shares::Static(BACKGROUND_SHARES),
                glommio::Latency::Matters(BACKGROUND_SLICE),
                "background",
            )
        })
    });
    glommio::spawn_local_into(fut, queue)
        .expect("the background queue exists on this executor for its lifetime")
        .await
}

/// Tracks in-flight tasks so shutdown can wait for them.
///
/// Not glommio's `Gate`: its `close()` may not be abandoned (wrapped in a
/// timeout that fires, it drops the channel the last leaving task then
/// `unwrap`s a send into, which panics the shard). Shutdown waits for
/// connections with a deadline, so the wait here must be cancellable: a
/// count and a one-shot wake-up that nobody minds losing.
#[derive(Default)]
pub(crate) struct TaskGroup(std::rc::Rc<GroupState>);

#[derive(Default)]
struct GroupState {
    closing: std::cell::Cell<bool>,
    members: std::cell::Cell<usize>,
    idle: std::cell::RefCell<Option<futures::channel::oneshot::Sender<()>>>,
}

/// A member's place in the group, given back when its task ends or is
/// dropped (e.g. with the executor, after a shutdown deadline).
struct Member(std::rc::Rc<GroupState>);

impl Drop for Member {
    fn drop(&mut self) {
        let g = &self.0;
        g.members.set(g.members.get() - 1);
        if g.members.get() == 0 && g.closing.get() {
            if let Some(tx) = g.idle.borrow_mut().take() {
                // The closer may have stopped waiting: that is fine.
                let _ = tx.send(());
            }
        }
    }
}

impl TaskGroup {
    /// Spawns `fut` as a member of the group; returns false (and drops the
    /// future) when the group is already closing.
    pub(crate) fn spawn<F>(&self, fut: F) -> bool
    where
        F: std::future::Future + 'static,
        F::Output: 'static,
    {
        if self.0.closing.get() {
            return false;
        }
        self.0.members.set(self.0.members.get() + 1);
        let member = Member(self.0.clone());
        spawn(async move {
            let _member = member;
            fut.await;
        });
        true
    }

    /// Closes the group and waits until every member has finished. May be
    /// abandoned (e.g. under a timeout) at any point.
    pub(crate) async fn close(&self) {
        self.0.closing.set(true);
        if self.0.members.get() == 0 {
            return;
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        *self.0.idle.borrow_mut() = Some(tx);
        let _ = rx.await;
    }
}
