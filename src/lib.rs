//! A thread-per-core coordinator for pools of AI worker machines: a drop-in
//! replacement for the two Python RMA coordinators (see `docs/api.md`).
//!
//! # Layout
//!
//! Layers, lowest first; a module uses only modules below it, never a
//! neighbour in its own layer (`tests/layers.rs` checks this, and
//! `docs/architecture.md` has the file-by-file map):
//!
//! - [`runtime`] | [`model`]: the only module that names glommio
//!   (executors pinned one per core, SO_REUSEPORT listeners, the channel
//!   mesh, timers, the hyper IO adapter, blocking calls off the shards) |
//!   wire types, the worker record, placement, tier/size/catalog rules and
//!   credentials as data: pure.
//! - [`metrics`]: per-shard counters, the one histogram type, and the
//!   builders of Prometheus families; each owner turns its own snapshot
//!   into families (`shard::scrape`, `tasks::scrape`, `proxy::scrape`,
//!   `store::stats`) and the `prometheus` crate's text encoder writes them.
//! - [`tasks`] | [`proxy`] | `events` | [`history`]: task queues and
//!   leases (no shards, no HTTP) | the inference proxy: worker choice,
//!   connection pool, forwarding | the change stream's events, per-shard
//!   rings, cursors, filters and wire framing | historical metrics: series,
//!   rollups, the history thread and its SQLite file or bounded ring.
//! - [`store`]: durable state in SQLite: one writer thread fed over a
//!   channel, group commit, migrations, startup recovery.
//! - [`cluster`]: cluster mode on etcd: the membership thread (lease,
//!   member watch, fencing, adoption of this node's share) and the writer
//!   thread that makes store operations durable in etcd instead of SQLite;
//!   rendezvous ownership of keys across nodes.
//! - [`config`]: the validated configuration.
//! - [`shard`]: one core's slice of the registry, requests to the owner
//!   shard (inline or over the mesh), typed `map_reduce` over all shards,
//!   and the joins between registry, tasks and proxy.
//! - [`http`]: accept loop, limits, the route table with a role per route,
//!   handlers per API area, credentials, errors as JSON.
//! - [`server`] | [`probe`]: start and stop a whole coordinator (used by
//!   `main.rs` and the tests) | the `--healthcheck` client: one `GET
//!   /health` over `std::net`.
//!
//! A request's life: the kernel hands a connection to one shard's listener;
//! that shard parses the request; if it concerns one worker it runs on the
//! worker's owner shard (inline or over the mesh); if it concerns all
//! workers every shard answers its part and the receiving shard merges.
//! No lock or shared atomic sits on that path. In cluster mode a request
//! for a worker another node owns is first relayed to that node over HTTP
//! (`http::peer`), and whole-pool views ask every node for its part.

pub mod cluster;
pub mod config;
pub(crate) mod events;
pub mod history;
pub mod http;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod store;
pub mod tasks;

pub use config::Config;
pub use server::{Server, StartError};
