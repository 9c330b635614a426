//! The change stream's data: events, the per-shard rings that hold them,
//! cursors, subscriber filters and how an event is written on the wire.
//!
//! Every shard appends the events of what it owns (its workers, its tasks,
//! the pins and service coverage it is the owner of) to its own bounded
//! [`Ring`], numbered by its own sequence: there is no global sequencer and
//! nothing is shared between cores. A [`Cursor`] is the start epoch of the
//! process plus one position per shard, so a client resumes exactly where
//! it stopped on every shard at once; a cursor from another process (a
//! restart) or older than a ring's oldest event means events were lost,
//! and the client is told to `reset` (re-list) instead.
//!
//! Must not: know about shards, the mesh or HTTP, or do any IO. The shard
//! (`shard::hub`) moves events between cores and the HTTP handlers frame
//! them for SSE, NDJSON or WebSocket with [`frame`].

mod cursor;
mod filter;
pub(crate) mod frame;
mod ring;

use std::time::SystemTime;

use serde::Serialize;

pub(crate) use cursor::{push_hex, Cursor, CursorError};
pub(crate) use filter::Filter;
pub(crate) use ring::{Batch, Ring};

/// What an event is about: subscribers pick topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    Worker = 1,
    Task = 2,
    Pin = 4,
    Service = 8,
}

impl Topic {
    pub(crate) const ALL: u8 = 15;

    pub(crate) fn parse(s: &str) -> Option<Topic> {
        Some(match s {
            "worker" => Topic::Worker,
            "task" => Topic::Task,
            "pin" => Topic::Pin,
            "service" => Topic::Service,
            _ => return None,
        })
    }
}

/// Every event type. The names are the wire's `type` (and SSE `event:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    WorkerRegistered,
    /// Services, models or endpoint changed.
    WorkerUpdated,
    /// Reported status or staleness changed (not every heartbeat).
    WorkerState,
    WorkerRemoved,
    TaskSubmitted,
    TaskLeased,
    TaskCompleted,
    TaskFailed,
    TaskRequeued,
    TaskDead,
    PinSet,
    PinRemoved,
    /// A service's healthy worker count crossed 0 or 1.
    ServiceCoverage,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::WorkerRegistered => "worker.registered",
            Kind::WorkerUpdated => "worker.updated",
            Kind::WorkerState => "worker.state",
            Kind::WorkerRemoved => "worker.removed",
            Kind::TaskSubmitted => "task.submitted",
            Kind::TaskLeased => "task.leased",
            Kind::TaskCompleted => "task.completed",
            Kind::TaskFailed => "task.failed",
            Kind::TaskRequeued => "task.requeued",
            Kind::TaskDead => "task.dead",
            Kind::PinSet => "pin.set",
            Kind::PinRemoved => "pin.removed",
            Kind::ServiceCoverage => "service.coverage",
        }
    }

    pub(crate) fn topic(self) -> Topic {
        match self {
            Kind::WorkerRegistered
            | Kind::WorkerUpdated
            | Kind::WorkerState
            | Kind::WorkerRemoved => Topic::Worker,
            Kind::TaskSubmitted
            | Kind::TaskLeased
            | Kind::TaskCompleted
            | Kind::TaskFailed
            | Kind::TaskRequeued
            | Kind::TaskDead => Topic::Task,
            Kind::PinSet | Kind::PinRemoved => Topic::Pin,
            Kind::ServiceCoverage => Topic::Service,
        }
    }
}

/// An event not yet in a ring (it has no sequence number yet).
#[derive(Debug)]
pub(crate) struct Draft {
    pub kind: Kind,
    pub key: Box<str>,
    /// The worker it concerns, for the `worker_id` filter: the key of a
    /// worker event, the holder of a task.
    pub worker: Option<Box<str>>,
    /// The services it concerns, for the `service` filter.
    pub services: Box<[Box<str>]>,
    /// The event object without its `index`: `{"type":..,"key":..,
    /// "time":..,"data":..}`. Written once here; every subscriber copies
    /// it (see [`Draft::tail`]).
    object: Box<str>,
}

impl Draft {
    /// An event of `kind` about `key` happening now, carrying `data`.
    pub(crate) fn new(
        kind: Kind,
        key: &str,
        worker: Option<&str>,
        services: Box<[Box<str>]>,
        data: &impl Serialize,
    ) -> Draft {
        #[derive(Serialize)]
        struct Tail<'a, D> {
            #[serde(rename = "type")]
            kind: &'static str,
            key: &'a str,
            time: String,
            data: &'a D,
        }
        let tail = Tail {
            kind: kind.as_str(),
            key,
            time: crate::model::time::iso8601(SystemTime::now()),
            data,
        };
        // Cannot fail (every part came from JSON or is a string); should
        // it, the event still says what it is.
        let text = serde_json::to_string(&tail)
            .unwrap_or_else(|_| format!("{{\"type\":\"{}\"}}", kind.as_str()));
        Draft {
            kind,
            key: key.into(),
            worker: worker.map(Into::into),
            services,
            object: text.into_boxed_str(),
        }
    }

    /// The event object after its opening brace, so a subscriber writes
    /// `{"index":"..",` and then this.
    pub(crate) fn tail(&self) -> &str {
        &self.object[1..]
    }
}

/// An event in a ring: a draft numbered by its shard's sequence (the
/// first event of a process is 1).
#[derive(Debug)]
pub(crate) struct Event {
    pub seq: u64,
    pub draft: Draft,
}

impl std::ops::Deref for Event {
    type Target = Draft;
    fn deref(&self) -> &Draft {
        &self.draft
    }
}
