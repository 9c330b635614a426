//! The channel mesh between shards: one bounded channel per ordered pair.
//!
//! Built whole on the starting thread before any shard runs, then each
//! shard is handed its sending and receiving ends, so no shard ever waits
//! for another to start. (glommio's own `MeshBuilder::join` did wait, and
//! on this machine it left 3 of 4 shards of a test server waiting for good
//! in about one start in ten under load: those shards never accepted a
//! connection. That is why this mesh is ours.)
//!
//! There is no channel to self: callers handle the local shard inline.
//! Receiving runs one loop per peer that hands each message to a
//! synchronous callback; the callback must not await a mesh send itself
//! (two full queues pointing at each other would deadlock), so it spawns a
//! task per message when it needs to wait.
//!
//! Channels are `futures` channels: the sender's wake-up reaches the
//! receiving shard through glommio's foreign-wake queue.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::Poll;

use futures::channel::mpsc;
use futures::{Sink, StreamExt};

#[derive(Debug, thiserror::Error)]
pub(crate) enum MeshError {
    #[error("shard {0} does not exist")]
    NoSuchShard(usize),
    #[error("shard {0} is not accepting messages")]
    Closed(usize),
}

/// The sending side: held by the shard for its whole life.
pub(crate) struct Mesh<M: Send + 'static> {
    /// Index = destination shard; `None` at our own index.
    peers: Vec<Option<RefCell<mpsc::Sender<M>>>>,
}

/// The receiving side: consumed once by [`Inbox::serve`].
pub(crate) struct Inbox<M: Send + 'static> {
    receivers: Vec<mpsc::Receiver<M>>,
}

/// Builds the full mesh for `n` shards; element `i` is shard `i`'s ends.
pub(crate) fn build<M: Send + 'static>(n: usize, capacity: usize) -> Vec<(Mesh<M>, Inbox<M>)> {
    let mut senders: Vec<Vec<Option<RefCell<mpsc::Sender<M>>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<mpsc::Receiver<M>>> = (0..n).map(|_| Vec::new()).collect();
    for (from, row) in senders.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (tx, rx) = mpsc::channel(capacity);
                *slot = Some(RefCell::new(tx));
                receivers[to].push(rx);
            }
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .map(|(peers, receivers)| (Mesh { peers }, Inbox { receivers }))
        .collect()
}

impl<M: Send + 'static> Mesh<M> {
    /// Sends `msg` to shard `to`, waiting while that channel is full.
    pub(crate) async fn send(&self, to: usize, msg: M) -> Result<(), MeshError> {
        let tx = self
            .peers
            .get(to)
            .and_then(Option::as_ref)
            .ok_or(MeshError::NoSuchShard(to))?;
        let mut msg = Some(msg);
        // The borrow lives only inside one poll: tasks of this shard may
        // send to the same peer concurrently.
        let sent = poll_fn(|cx| {
            let mut tx = tx.borrow_mut();
            match Sink::poll_ready(std::pin::Pin::new(&mut *tx), cx) {
                Poll::Ready(Ok(())) => match msg.take() {
                    Some(m) => Poll::Ready(
                        Sink::start_send(std::pin::Pin::new(&mut *tx), m)
                            .map_err(|_| MeshError::Closed(to)),
                    ),
                    None => Poll::Ready(Ok(())),
                },
                Poll::Ready(Err(_)) => Poll::Ready(Err(MeshError::Closed(to))),
                Poll::Pending => Poll::Pending,
            }
        });
        sent.await
    }
}

impl<M: Send + 'static> Inbox<M> {
    /// Starts one receive loop per peer; each message goes to `on_msg`.
    pub(crate) fn serve<F>(self, on_msg: F)
    where
        F: Fn(M) + Clone + 'static,
    {
        for mut rx in self.receivers {
            let on_msg = on_msg.clone();
            super::spawn(async move {
                while let Some(msg) = rx.next().await {
                    on_msg(msg);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ordered_pair_has_one_channel() {
        let mesh = build::<usize>(3, 4);
        assert_eq!(mesh.len(), 3);
        for (i, (m, inbox)) in mesh.iter().enumerate() {
            assert!(m.peers[i].is_none());
            assert_eq!(m.peers.iter().flatten().count(), 2);
            assert_eq!(inbox.receivers.len(), 2);
        }
    }
}
