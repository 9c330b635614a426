//! Blocking calls kept off the shard threads (today: `getaddrinfo` for the
//! proxy's DNS lookups).
//!
//! Each job runs on its own short-lived OS thread and answers on a futures
//! oneshot, which wakes the shard task that awaits it (cross-thread wake-ups
//! work on glommio). Why not glommio's `spawn_blocking`: its pool has one
//! thread per executor by default, so one lookup stuck on an unreachable
//! name server (glibc waits seconds per attempt) would hold up every other
//! lookup of that shard; and dropping its future before the job ends is not
//! documented to be safe, while a timed-out lookup is exactly that case.
//! Callers bound how many jobs they start (see `resolve`).
//!
//! Must not be used for anything on the request fast path: a thread start
//! costs tens of microseconds.

use std::future::Future;

use futures::channel::oneshot;

/// Stack for job threads: enough for `getaddrinfo` and its NSS modules.
const STACK: usize = 256 << 10;

/// Runs `job` on a new OS thread named `name`. The future yields its result,
/// or `None` if the thread could not be started or died. Dropping the
/// future does not stop the job; its result is then discarded.
pub(crate) fn off_shard<F, R>(name: &str, job: F) -> impl Future<Output = Option<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(STACK)
        .spawn(move || {
            let _ = tx.send(job());
        });
    async move {
        match started {
            Ok(_) => rx.await.ok(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread for blocking work");
                None
            }
        }
    }
}
