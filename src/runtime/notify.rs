//! Shutdown signal from a plain OS thread (signal handler, test) to a shard.

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

/// Fired once by the owner of the pool.
pub struct ShutdownTrigger(Option<oneshot::Sender<()>>);

impl ShutdownTrigger {
    pub fn fire(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Awaitable on a shard, cloneable so every connection can watch it.
#[derive(Clone)]
pub struct Shutdown(Shared<oneshot::Receiver<()>>);

impl Shutdown {
    /// Resolves when shutdown is requested (or the trigger is dropped).
    pub async fn wait(&self) {
        let _ = self.0.clone().await;
    }

    pub fn is_requested(&self) -> bool {
        self.0.peek().is_some()
    }
}

pub(crate) fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = oneshot::channel();
    (ShutdownTrigger(Some(tx)), Shutdown(rx.shared()))
}
