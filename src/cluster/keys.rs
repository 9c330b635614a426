//! The key layout in etcd and the value encoding. Pure.
//!
//! ```text
//! /<cluster>/nodes/<node-id>   {"node_id","url","shards"}, on the node's lease
//! /<cluster>/workers/<id>      {"record","state","heartbeat_us"} (a store worker row)
//! /<cluster>/tasks/<id>        {"owner_key","body"} (a store task row)
//! /<cluster>/pins/<key>        JSON list of worker ids
//! ```
//! Tasks come back in the order they were first written: etcd keeps each
//! key's `create_revision`, which an update does not change.

use std::collections::HashMap;

use crate::store::{Op, RecoveredTask, RecoveredWorker};

/// The key names of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: String,
}

/// One key write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    Put(String, String),
    Delete(String),
}

impl Write {
    pub(crate) fn key(&self) -> &str {
        match self {
            Write::Put(k, _) | Write::Delete(k) => k,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WorkerValue {
    record: String,
    state: String,
    heartbeat_us: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TaskValue {
    owner_key: String,
    body: String,
}

impl Layout {
    pub(crate) fn new(cluster: &str) -> Layout {
        Layout {
            root: format!("/{cluster}/"),
        }
    }

    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.root)
    }
    pub(crate) fn workers(&self) -> String {
        format!("{}workers/", self.root)
    }
    pub(crate) fn tasks(&self) -> String {
        format!("{}tasks/", self.root)
    }
    pub(crate) fn pins(&self) -> String {
        format!("{}pins/", self.root)
    }

    /// The store operations of a batch as key writes: heartbeats left out
    /// (they stay in the owner's memory), several writes of one key
    /// coalesced into the last (an etcd transaction may name a key once),
    /// in the order each key was first written.
    pub(crate) fn writes(&self, ops: impl IntoIterator<Item = Op>) -> Vec<Write> {
        let mut out: Vec<Write> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for op in ops {
            let w = match op {
                Op::Heartbeat { .. } => continue,
                Op::PutWorker {
                    id,
                    record,
                    heartbeat_us,
                    state,
                } => Write::Put(
                    format!("{}{id}", self.workers()),
                    json(&WorkerValue {
                        record,
                        state,
                        heartbeat_us,
                    }),
                ),
                Op::DeleteWorker { id } => Write::Delete(format!("{}{id}", self.workers())),
                Op::PutTask {
                    id,
                    owner_key,
                    body,
                } => Write::Put(
                    format!("{}{id}", self.tasks()),
                    json(&TaskValue { owner_key, body }),
                ),
                Op::DeleteTask { id } => Write::Delete(format!("{}{id}", self.tasks())),
                Op::PutPin { key, workers } => Write::Put(format!("{}{key}", self.pins()), workers),
                Op::DeletePin { key } => Write::Delete(format!("{}{key}", self.pins())),
            };
            match at.get(w.key()) {
                Some(&i) => out[i] = w,
                None => {
                    at.insert(w.key().to_string(), out.len());
                    out.push(w);
                }
            }
        }
        out
    }

    /// A worker key and value back as a recovered row, its heartbeat set
    /// to `now_us` (heartbeat state is not in etcd: an adopted worker
    /// counts as seen when its new owner takes it).
    pub(crate) fn worker(&self, key: &[u8], value: &[u8], now_us: i64) -> Option<RecoveredWorker> {
        let id = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(&self.workers())?;
        let v: WorkerValue = serde_json::from_slice(value).ok()?;
        Some(RecoveredWorker {
            id: id.to_string(),
            record: v.record,
            heartbeat_us: Some(now_us.max(v.heartbeat_us)),
            state: Some(v.state),
        })
    }

    pub(crate) fn task(&self, key: &[u8], value: &[u8]) -> Option<RecoveredTask> {
        let id = std::str::from_utf8(key).ok()?.strip_prefix(&self.tasks())?;
        let v: TaskValue = serde_json::from_slice(value).ok()?;
        Some(RecoveredTask {
            id: id.to_string(),
            owner_key: v.owner_key,
            body: v.body,
        })
    }

    /// A pin key's pin name.
    pub(crate) fn pin<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.pins().as_str())
    }

    /// A node key's node id.
    pub(crate) fn node_id<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.nodes().as_str())
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The first key after every key starting with `prefix` (etcd's range end
/// for a prefix).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_coalesce_per_key_and_skip_heartbeats() {
        let l = Layout::new("pool");
        let w = l.writes(vec![
            Op::PutTask {
                id: "t1".into(),
                owner_key: "worker:a".into(),
                body: "1".into(),
            },
            Op::Heartbeat {
                id: "a".into(),
                heartbeat_us: 1,
                state: "{}".into(),
            },
            Op::PutPin {
                key: "model:m".into(),
                workers: "[\"a\"]".into(),
            },
            Op::PutTask {
                id: "t1".into(),
                owner_key: "worker:a".into(),
                body: "2".into(),
            },
            Op::DeletePin {
                key: "model:m".into(),
            },
        ]);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].key(), "/pool/tasks/t1");
        let Write::Put(_, v) = &w[0] else { panic!() };
        let back = l.task(b"/pool/tasks/t1", v.as_bytes()).unwrap();
        assert_eq!(
            (back.owner_key.as_str(), back.body.as_str()),
            ("worker:a", "2")
        );
        assert_eq!(w[1], Write::Delete("/pool/pins/model:m".into()));
    }

    #[test]
    fn worker_round_trip_takes_the_newer_heartbeat() {
        let l = Layout::new("c");
        let w = l.writes(vec![Op::PutWorker {
            id: "gpu-1".into(),
            record: "{\"worker_id\":\"gpu-1\"}".into(),
            heartbeat_us: 50,
            state: "{}".into(),
        }]);
        let Write::Put(k, v) = &w[0] else { panic!() };
        let r = l.worker(k.as_bytes(), v.as_bytes(), 100).unwrap();
        assert_eq!(r.id, "gpu-1");
        assert_eq!(r.heartbeat_us, Some(100));
        assert_eq!(r.state.as_deref(), Some("{}"));
        assert!(l.worker(b"/c/tasks/x", v.as_bytes(), 1).is_none());
        assert!(l.worker(k.as_bytes(), b"not json", 1).is_none());
        assert_eq!(l.node_id(b"/c/nodes/n1"), Some("n1"));
        assert_eq!(l.pin(b"/c/pins/service:x"), Some("service:x"));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
