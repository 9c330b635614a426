//! The channel mesh between shards: one bounded channel per ordered pair.
//!
//! There is no channel to self: callers handle the local shard inline.
//! Receiving spawns one loop per peer that hands each message to a
//! synchronous callback; the callback must not await a mesh send itself
//! (two full queues pointing at each other would deadlock), so it spawns a
//! task per message instead.

use glommio::channels::channel_mesh::{Receivers, Senders};

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("shard {0} does not exist")]
    NoSuchShard(usize),
    #[error("shard {0} is not accepting messages")]
    Closed(usize),
}

/// The sending side: held by the shard for its whole life.
pub struct Mesh<M: Send + 'static> {
    senders: Senders<M>,
}

/// The receiving side: consumed once by [`Inbox::serve`].
pub struct Inbox<M: Send + 'static> {
    receivers: Receivers<M>,
}

pub(crate) fn split<M: Send + 'static>(
    senders: Senders<M>,
    receivers: Receivers<M>,
) -> (Mesh<M>, Inbox<M>) {
    (Mesh { senders }, Inbox { receivers })
}

impl<M: Send + 'static> Mesh<M> {
    /// Sends `msg` to shard `to`, waiting while that channel is full.
    pub async fn send(&self, to: usize, msg: M) -> Result<(), MeshError> {
        if to >= self.senders.nr_consumers() || to == self.senders.peer_id() {
            return Err(MeshError::NoSuchShard(to));
        }
        self.senders
            .send_to(to, msg)
            .await
            .map_err(|_| MeshError::Closed(to))
    }

    /// Stops our senders: peers' receive loops end once drained.
    pub fn close(&self) {
        self.senders.close();
    }
}

impl<M: Send + 'static> Inbox<M> {
    /// Starts one receive loop per peer; each message goes to `on_msg`.
    pub fn serve<F>(mut self, on_msg: F)
    where
        F: Fn(M) + Clone + 'static,
    {
        for (_peer, rx) in self.receivers.streams() {
            let on_msg = on_msg.clone();
            super::spawn(async move {
                // No timer re-poll here: each pending poll of a glommio
                // channel queues one more waker until data arrives, and a
                // task's waker count is an i16 that asserts on overflow.
                while let Some(msg) = rx.recv().await {
                    on_msg(msg);
                }
            });
        }
    }
}
