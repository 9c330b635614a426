//! Signals that cross threads: shutdown from a plain OS thread (signal
//! handler, test) to the shards, and replies from another thread.
//!
//! The shutdown request comes from a plain OS thread and is seen by one
//! waiter per shard (its accept loop), which re-checks a flag on a timer
//! as well as waiting for the wake-up: shutdown must happen even if that
//! one wake-up is late, and the check costs nothing on the request path.
//! Connections hear of it from their own shard through [`LocalShutdown`].

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either, FutureExt, Shared};

/// How often a shard re-checks the shutdown flag on its own.
const SHUTDOWN_RECHECK: Duration = Duration::from_millis(50);

/// Fired once by the owner of the pool.
pub(crate) struct ShutdownTrigger {
    tx: Option<oneshot::Sender<()>>,
    flag: Arc<AtomicBool>,
}

impl ShutdownTrigger {
    pub(crate) fn fire(mut self) {
        self.flag.store(true, Ordering::Release);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Awaitable on a shard. One waiter per shard (its accept loop) is
/// expected; that loop then tells its own connections with a
/// [`LocalShutdown`], whose wake-ups stay on the shard.
#[derive(Clone)]
pub(crate) struct Shutdown {
    rx: Shared<oneshot::Receiver<()>>,
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    /// Resolves when shutdown is requested (or the trigger is dropped).
    pub(crate) async fn wait(&self) {
        loop {
            if self.is_requested() {
                return;
            }
            let woke = pin!(self.rx.clone());
            let tick = pin!(super::sleep(SHUTDOWN_RECHECK));
            if let Either::Left(_) = select(woke, tick).await {
                return;
            }
        }
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

pub(crate) fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = oneshot::channel();
    let flag = Arc::new(AtomicBool::new(false));
    (
        ShutdownTrigger {
            tx: Some(tx),
            flag: flag.clone(),
        },
        Shutdown {
            rx: rx.shared(),
            flag,
        },
    )
}

/// Fires a [`LocalShutdown`]; used on the shard that created it.
pub(crate) struct LocalTrigger(oneshot::Sender<()>);

impl LocalTrigger {
    pub(crate) fn fire(self) {
        let _ = self.0.send(());
    }
}

/// A shutdown signal that never leaves its shard, for many waiters (every
/// connection) at no cost while idle.
#[derive(Clone)]
pub(crate) struct LocalShutdown(Shared<oneshot::Receiver<()>>);

impl LocalShutdown {
    pub(crate) async fn wait(&self) {
        let _ = self.0.clone().await;
    }
}

pub(crate) fn local_shutdown() -> (LocalTrigger, LocalShutdown) {
    let (tx, rx) = oneshot::channel();
    (LocalTrigger(tx), LocalShutdown(rx.shared()))
}
