//! Messages between shards.
//!
//! Every operation on a shard is a `Request` answered by a `Reply`. The same
//! enum serves local calls (handled inline) and remote ones (sent over the
//! mesh with a oneshot for the answer), so there is one code path per
//! operation. Replies carry pre-serialised JSON where the merging shard only
//! concatenates, so serialisation work is spread over the owning shards.

use std::collections::HashMap;
use std::sync::Arc;

use futures::channel::oneshot;
use serde_json::Value;

use super::registry::Slot;
use super::scrape::MetricsSnapshot;
use crate::model::filter::WorkerFilter;
use crate::model::wire::HeartbeatRequest;
use crate::model::worker::{WorkerRecord, KNOWN_STATUSES};
use crate::tasks::{CompleteError, Completion, TaskListing, TaskOp, TaskPage, TaskReply};

/// Which records a worker listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// Healthy workers, plain records (`/api/coordinator/workers`).
    Healthy,
    /// Every worker, with `age_seconds` and `is_healthy` (`/api/admin/workers`).
    Admin,
}

/// One step of a worker listing on one shard: which records, from where,
/// how many. Every listing (whole, paged, streamed) is a series of these,
/// each a short synchronous piece of work on the owning shard, walked in
/// (shard, slot) order: a worker keeps its slot while it stays registered,
/// so a walk resumed after a slot sees each such worker exactly once.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    pub kind: ListKind,
    pub filter: WorkerFilter,
    /// Start after this slot (None: from the shard's first worker).
    pub after: Option<Slot>,
    /// Records to list at most (the shard caps it at its page size).
    pub max: usize,
    /// The caller would take this shard's whole part in one piece when it
    /// is small (unpaged lists): the cached healthy part, or a small
    /// service's workers with their per-worker cached JSON.
    pub whole: bool,
    /// Track the least-loaded listed worker (discovery's `recommended`).
    pub best: bool,
}

/// How a shard's walk goes on after a [`Listing`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Rest {
    /// Nothing after what was listed matches on this shard.
    #[default]
    Done,
    /// `max` were listed and another match follows `Listing::last`.
    More,
    /// The shard stopped looking early (piece bytes, time or scan budget
    /// spent): everything up to this slot was looked at; go on after it.
    After(Slot),
}

/// A job fanned out to every shard by broadcast.
#[derive(Debug)]
pub(crate) struct BroadcastJob {
    pub job_type: String,
    pub job_data: Value,
    pub required_capability: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Request {
    Register(Box<WorkerRecord>),
    /// Register under a generated id: refused (`IdTaken`) if it exists.
    RegisterNew(Box<WorkerRecord>),
    Heartbeat(Box<HeartbeatRequest>),
    Unregister(String),
    Task(TaskOp),
    Proxy(ProxyOp),
    CompleteTask(String),
    /// Healthy-coverage counts for assignment, not counting `exclude`.
    Coverage {
        exclude: Option<String>,
    },
    /// A piece of a worker listing (healthy, admin, discovery).
    List(Box<ListQuery>),
    /// One worker's admin JSON, by id (on its owner shard).
    Worker(String),
    /// Drain (or undrain) a worker (on its owner shard).
    Drain {
        id: String,
        drained: bool,
    },
    Summary,
    /// Healthy worker ids per service (admin view; O(workers)).
    ServiceMembers,
    Broadcast(Arc<BroadcastJob>),
    Metrics,
    /// This shard's part of a pool history sample (`shard::history`).
    Sample,
    /// Events of this shard's ring after a position (see [`EventsQuery`]).
    Events(EventsQuery),
    /// Shard `from` now has `level` (0, 1, or 2 for two or more) healthy
    /// workers of `service`: sent to the service's owner shard, which
    /// tracks the whole pool's coverage and emits `service.coverage`.
    CoverageLevel {
        service: String,
        from: usize,
        level: u8,
    },
    /// What changed in a worker list since a position in this shard's ring.
    Delta(Box<DeltaQuery>),
}

/// Asks a shard for the events after `after` (None: none, just the head).
/// With `wait`, an answer that would be empty waits up to that long for
/// the next event (the hubs' long poll).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventsQuery {
    pub after: Option<u64>,
    pub max: usize,
    pub wait: Option<std::time::Duration>,
}

/// A worker list's changes after `after` on one shard.
#[derive(Debug, Clone)]
pub(crate) struct DeltaQuery {
    pub kind: ListKind,
    pub filter: WorkerFilter,
    pub after: u64,
}

/// One shard's part of a list delta.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    /// Comma-separated JSON of the changed workers now in the list.
    pub upserts: Vec<u8>,
    pub upserted: usize,
    /// Changed workers no longer in the list.
    pub removed: Vec<String>,
    /// The ring's head when answered: this shard's position in the reply.
    pub head: u64,
    /// Events after `after` are gone (or too many changed): re-list.
    pub reset: bool,
}

/// An operation on a shard's part of the inference proxy.
#[derive(Debug)]
pub(crate) enum ProxyOp {
    /// Healthy workers of a service on this shard, and whether any worker
    /// here (healthy or not) declares the service.
    Candidates(String),
    /// Workers removed from the registry: drop the proxy's per-worker
    /// state for them on this shard (attempt series, cooldowns).
    Forget(Vec<String>),
    /// A worker registered: drop this shard's cached worker lists.
    Refresh,
    /// Set (Some) or clear (None) a pin on this shard's replica.
    SetPin {
        key: String,
        workers: Option<Vec<String>>,
    },
}

#[derive(Debug)]
pub(crate) enum ProxyReply {
    /// Healthy workers, and whether any registered worker declares the service.
    Upstreams(Vec<crate::proxy::Upstream>, bool),
    Done,
}

/// Healthy coverage on one shard.
#[derive(Debug, Default, Clone)]
pub(crate) struct Coverage {
    pub per_service: HashMap<String, u32>,
    /// Healthy workers per tier (index = tier, 0 unused).
    pub per_tier: [u32; 5],
}

impl Coverage {
    /// Adds another shard's coverage (a fold step for `map_reduce`).
    pub(crate) fn merge(mut self, o: Coverage) -> Self {
        for (k, v) in o.per_service {
            *self.per_service.entry(k).or_default() += v;
        }
        for (a, b) in self.per_tier.iter_mut().zip(o.per_tier) {
            *a += b;
        }
        self
    }
}

/// A piece of one shard's worker listing: `items` is a comma-separated
/// run of JSON objects (no brackets), ready to be spliced into an array.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub items: bytes::Bytes,
    pub count: usize,
    /// Healthy workers among those listed.
    pub healthy: usize,
    /// For discovery: the least-loaded healthy worker's (load, record JSON).
    pub best: Option<(f64, Vec<u8>)>,
    /// Slot of the last worker listed (a cursor's key).
    pub last: Option<Slot>,
    /// Where the walk over this shard goes on.
    pub rest: Rest,
}

/// Aggregates for stats / health / services / gaps, mergeable by addition
/// (in cluster mode also across nodes, as JSON).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Summary {
    pub total: u64,
    pub healthy: u64,
    pub stale: u64,
    /// Index = tier (0 unused): worker count and summed load, healthy only.
    pub tier_count: [u64; 5],
    pub tier_load: [f64; 5],
    /// Reported status of fresh workers, "stale" for the rest.
    pub by_status: HashMap<String, u64>,
    /// Service -> healthy worker count.
    pub services: HashMap<String, u64>,
    pub tasks_completed: u64,
}

impl Summary {
    /// Workers by status with the label values bounded: agents may report
    /// any string, so statuses outside the known set are summed as "other"
    /// (one series each would let agents grow a scrape or the history
    /// without limit); `stale` and `drained`, which the registry itself
    /// gives, are kept. Sorted by status.
    pub(crate) fn bounded_statuses(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for (status, n) in &self.by_status {
            let s = status.as_str();
            let name = if s == "stale" || s == "drained" || KNOWN_STATUSES.contains(&s) {
                s
            } else {
                "other"
            };
            match out.iter_mut().find(|(s, _)| s == name) {
                Some((_, m)) => *m += n,
                None => out.push((name.to_string(), *n)),
            }
        }
        out.sort_unstable();
        out
    }

    /// Adds another shard's summary (a fold step for `map_reduce`).
    pub(crate) fn merge(mut self, o: Summary) -> Self {
        self.total += o.total;
        self.healthy += o.healthy;
        self.stale += o.stale;
        for t in 0..5 {
            self.tier_count[t] += o.tier_count[t];
            self.tier_load[t] += o.tier_load[t];
        }
        for (k, v) in o.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in o.services {
            *self.services.entry(k).or_default() += v;
        }
        self.tasks_completed += o.tasks_completed;
        self
    }
}

#[derive(Debug)]
pub(crate) enum Reply {
    /// Register: whether it replaced an existing record.
    Registered {
        replaced: bool,
    },
    /// RegisterNew: the id is in use; the record comes back for a retry.
    IdTaken(Box<WorkerRecord>),
    /// Register of a new id on a shard holding its share of `--max-workers`.
    AtCapacity,
    /// Heartbeat / unregister / complete: whether the worker was known.
    Found(bool),
    /// Heartbeat applied: whether it changed what routing sees (the worker
    /// became or stopped being routable, or changed its loaded models).
    Beat(bool),
    /// Service -> ids of its healthy workers (this shard's).
    Members(HashMap<String, Vec<String>>),
    Task(TaskReply),
    Proxy(ProxyReply),
    Coverage(Coverage),
    Listing(Listing),
    /// [`Request::Worker`]: the admin JSON of the worker, if registered.
    Worker(Option<Vec<u8>>),
    /// [`Request::Drain`]: None for an unknown worker, else whether
    /// routing must be refreshed and the worker's admin JSON after it.
    Drained(Option<(bool, Vec<u8>)>),
    Summary(Box<Summary>),
    /// Broadcast: (worker id, task id) of each worker that got the job.
    Delivered(Vec<(String, String)>),
    Metrics(Box<MetricsSnapshot>),
    Sample(Box<super::history::Sample>),
    Events(Box<crate::events::Batch>),
    Delta(Box<Delta>),
    /// The owner applied a mutation but could not make it durable.
    StoreFailed(String),
}

/// A request travelling to another shard.
pub(crate) struct Envelope {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// Typed accessors: a shard answers each request with one reply variant; a
/// different one is a bug, reported as an error rather than a panic.
macro_rules! accessor {
    ($name:ident, $variant:ident, $ty:ty) => {
        pub(crate) fn $name(self) -> Result<$ty, super::ShardError> {
            match self {
                Reply::$variant(v) => Ok(v),
                _ => Err(super::ShardError::Unexpected(stringify!($variant))),
            }
        }
    };
}

/// The same for the task replies, one accessor per variant, so a caller
/// names the answer it expects and never matches on a reply itself.
macro_rules! task_accessor {
    ($name:ident, $variant:ident, $ty:ty) => {
        pub(crate) fn $name(self) -> Result<$ty, super::ShardError> {
            match self {
                Reply::Task(TaskReply::$variant(v)) => Ok(v),
                _ => Err(super::ShardError::Unexpected(stringify!($variant))),
            }
        }
    };
}

impl Reply {
    accessor!(found, Found, bool);
    task_accessor!(submitted, Submitted, bool);
    task_accessor!(keys, Keys, Option<Vec<String>>);
    task_accessor!(leased, Leased, Vec<Value>);
    task_accessor!(completed, Completed, Result<Completion, CompleteError>);
    task_accessor!(extended, Extended, usize);
    task_accessor!(task, Task, Option<Value>);
    task_accessor!(requeued, Requeued, Option<Result<Value, &'static str>>);
    task_accessor!(task_listing, Listing, Box<TaskListing>);
    task_accessor!(task_page, Page, Box<TaskPage>);
    accessor!(coverage, Coverage, Coverage);
    accessor!(listing, Listing, Listing);
    accessor!(worker, Worker, Option<Vec<u8>>);
    accessor!(drained, Drained, Option<(bool, Vec<u8>)>);
    accessor!(summary, Summary, Box<Summary>);
    accessor!(delivered, Delivered, Vec<(String, String)>);
    accessor!(metrics, Metrics, Box<MetricsSnapshot>);
    accessor!(sample, Sample, Box<super::history::Sample>);
    accessor!(members, Members, HashMap<String, Vec<String>>);
    accessor!(events, Events, Box<crate::events::Batch>);
    accessor!(delta, Delta, Box<Delta>);

    /// Heartbeat: `None` for an unknown worker, else whether routing
    /// changed.
    pub(crate) fn beat(self) -> Result<Option<bool>, super::ShardError> {
        match self {
            Reply::Beat(routing) => Ok(Some(routing)),
            Reply::Found(false) => Ok(None),
            _ => Err(super::ShardError::Unexpected("Beat")),
        }
    }

    /// Candidates: the healthy upstreams and whether the service is declared.
    pub(crate) fn upstreams(
        self,
    ) -> Result<(Vec<crate::proxy::Upstream>, bool), super::ShardError> {
        match self {
            Reply::Proxy(ProxyReply::Upstreams(u, declared)) => Ok((u, declared)),
            _ => Err(super::ShardError::Unexpected("Upstreams")),
        }
    }

    /// A proxy state change was applied.
    pub(crate) fn done(self) -> Result<(), super::ShardError> {
        match self {
            Reply::Proxy(ProxyReply::Done) => Ok(()),
            _ => Err(super::ShardError::Unexpected("Done")),
        }
    }

    pub(crate) fn registered(self) -> Result<bool, super::ShardError> {
        match self {
            Reply::Registered { replaced } => Ok(replaced),
            Reply::AtCapacity => Err(super::ShardError::AtCapacity),
            _ => Err(super::ShardError::Unexpected("Registered")),
        }
    }
}
