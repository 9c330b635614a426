//! Signals that cross threads: shutdown from a plain OS thread (signal
//! handler, test) to the shards, and replies from another thread.
//!
//! A cross-thread wake-up of a glommio task goes through the runtime's
//! foreign-wake queue and an eventfd. glommio 0.9 is unmaintained upstream
//! and its sleep/wake path has open hang reports, so nothing here relies on
//! such a wake-up alone: each wait also re-checks on a timer of its own,
//! and the wake-up, when it arrives, only makes the answer faster. (The
//! hangs first blamed on this path turned out to be glommio's mesh join,
//! now replaced; see `mesh`.) Wake-ups within one shard are used as they
//! are.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either, FutureExt, Shared};

/// How often a shard re-checks the shutdown flag on its own.
const SHUTDOWN_RECHECK: Duration = Duration::from_millis(50);

/// Fired once by the owner of the pool.
pub struct ShutdownTrigger {
    tx: Option<oneshot::Sender<()>>,
    flag: Arc<AtomicBool>,
}

impl ShutdownTrigger {
    pub fn fire(mut self) {
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
pub struct Shutdown {
    rx: Shared<oneshot::Receiver<()>>,
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    /// Resolves when shutdown is requested (or the trigger is dropped).
    pub async fn wait(&self) {
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

    pub fn is_requested(&self) -> bool {
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
pub struct LocalTrigger(oneshot::Sender<()>);

impl LocalTrigger {
    pub fn fire(self) {
        let _ = self.0.send(());
    }
}

/// A shutdown signal that never leaves its shard, for many waiters (every
/// connection) at no cost while idle.
#[derive(Clone)]
pub struct LocalShutdown(Shared<oneshot::Receiver<()>>);

impl LocalShutdown {
    pub async fn wait(&self) {
        let _ = self.0.clone().await;
    }
}

pub fn local_shutdown() -> (LocalTrigger, LocalShutdown) {
    let (tx, rx) = oneshot::channel();
    (LocalTrigger(tx), LocalShutdown(rx.shared()))
}

/// How often a wait for another thread's reply re-checks on its own.
const REPLY_RECHECK: Duration = Duration::from_millis(2);

/// Awaits a reply sent from another thread (another shard, the store's
/// writer thread). The sender's wake-up normally ends the wait; if it is
/// lost (see the module docs) the reply is picked up within
/// [`REPLY_RECHECK`] instead of never.
pub async fn reply_from_thread<T>(mut rx: oneshot::Receiver<T>) -> Result<T, oneshot::Canceled> {
    loop {
        match rx.try_recv() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        let tick = pin!(super::sleep(REPLY_RECHECK));
        match select(&mut rx, tick).await {
            Either::Left((r, _)) => return r,
            Either::Right(_) => continue,
        }
    }
}
