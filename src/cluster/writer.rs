//! The store in cluster mode: batches of store operations written to etcd.
//!
//! Group commit as the SQLite writer does it: block for the first batch,
//! take whatever else is queued (up to `MAX_BATCH_OPS` operations),
//! coalesce it into key writes (`keys`), and write those in transactions of
//! at most [`TXN_OPS`] operations, all sent at once (etcd pipelines them
//! through one raft log). Every ack of the batch is answered when all of
//! them are done.
//!
//! Each transaction only succeeds while this node's key still holds this
//! node's lease (`Compare::lease`): a node whose lease expired, and whose
//! share another node may already own, can never overwrite the new owner's
//! writes. A batch is sent again while its failure is one of the way
//! (a member down, an election) and the lease compare holds; one that
//! still fails is answered with an error (the client gets 503).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::keys::{Layout, Write};
use super::Settings;
use crate::store::{Msg, StoreError, WriterStats, MAX_BATCH_OPS};

/// Operations per etcd transaction: etcd's default `--max-txn-ops` is 128.
pub(crate) const TXN_OPS: usize = 128;

pub(super) fn run(
    settings: Settings,
    layout: Layout,
    lease: Arc<AtomicI64>,
    rx: Receiver<Msg>,
    stats: Arc<Mutex<WriterStats>>,
) {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cluster writer cannot start a runtime; writes will fail");
            // Answer every ack with an error instead of leaving it pending.
            while let Ok(m) = rx.recv() {
                if let Some(ack) = m.ack {
                    let _ = ack.send(Err(StoreError::Closed));
                }
                if m.close {
                    return;
                }
            }
            return;
        }
    };
    let mut client: Option<Client> = None;
    let node_key = layout.node(&settings.node_id);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut n = batch[0].ops.len();
        while n < MAX_BATCH_OPS && !batch.iter().any(|m| m.close) {
            match rx.try_recv() {
                Ok(m) => {
                    n += m.ops.len();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let closing = batch.iter().any(|m| m.close);
        let writes = layout.writes(batch.iter_mut().flat_map(|m| std::mem::take(&mut m.ops)));
        let started = Instant::now();
        let result = if writes.is_empty() {
            Ok(())
        } else {
            let lease_id = lease.load(Ordering::Acquire);
            rt.block_on(commit(&mut client, &settings, &node_key, lease_id, &writes))
        };
        if !writes.is_empty() {
            if let Ok(mut s) = stats.lock() {
                match &result {
                    Ok(()) => {
                        s.commits += writes.len().div_ceil(TXN_OPS) as u64;
                        s.ops += writes.len() as u64;
                        s.batch_size.observe(writes.len() as f64);
                        s.commit_latency(started.elapsed());
                    }
                    Err(_) => s.commit_errors += 1,
                }
            }
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, writes = writes.len(), "cluster write failed");
        }
        for m in batch {
            if let Some(ack) = m.ack {
                let _ = ack.send(result.clone());
            }
        }
        if closing {
            return;
        }
    }
}

/// Writes `writes` in fenced transactions; any failure fails the whole.
/// A batch whose call failed on the way (the etcd member this client
/// talked to went away, a leader election) is sent again until `limit`:
/// every write here is idempotent (puts of whole values, deletes), the
/// writer sends nothing else meanwhile, and the lease compare still fences
/// every attempt.
async fn commit(
    client: &mut Option<Client>,
    settings: &Settings,
    node_key: &str,
    lease_id: i64,
    writes: &[Write],
) -> Result<(), StoreError> {
    if lease_id == 0 {
        return Err(StoreError::Write(
            "this node holds no cluster lease (not joined, or fenced); try again shortly".into(),
        ));
    }
    let limit = settings.lease_ttl.max(Duration::from_secs(2));
    if client.is_none() {
        let c = super::retrying(limit, "cannot reach etcd", || {
            Client::connect(&settings.endpoints, None)
        })
        .await
        .map_err(StoreError::Write)?;
        *client = Some(c);
    }
    let c = client.as_ref().expect("connected above");
    let committed = super::retrying(limit, "etcd did not commit", || {
        let txns: Vec<_> = writes
            .chunks(TXN_OPS)
            .map(|chunk| {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|w| match w {
                        Write::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
                        Write::Delete(k) => TxnOp::delete(k.as_str(), None),
                    })
                    .collect();
                let txn = Txn::new()
                    .when([Compare::lease(node_key, CompareOp::Equal, lease_id)])
                    .and_then(ops);
                let mut c = c.clone();
                async move { c.txn(txn).await }
            })
            .collect();
        async move {
            let mut all = true;
            for r in futures::future::join_all(txns).await {
                all &= r?.succeeded();
            }
            Ok(all)
        }
    })
    .await
    .map_err(|e| StoreError::Write(format!("{e} (no quorum?); try again")))?;
    if committed {
        Ok(())
    } else {
        Err(StoreError::Write(
            "this node's cluster lease is gone (fenced); try again shortly".into(),
        ))
    }
}
