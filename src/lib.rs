//! A thread-per-core coordinator for pools of AI worker machines: a drop-in
//! replacement for the two Python RMA coordinators (see `docs/api.md`).
//!
//! # Layout
//!
//! - [`runtime`]: the only module that names glommio. Executors pinned one
//!   per core, SO_REUSEPORT listeners, the cross-shard channel mesh, timers,
//!   the hyper IO adapter (plain or client TLS), and blocking calls run off
//!   the shards. Swap the runtime here and nowhere else.
//! - [`shard`]: one shard = one core's slice of the registry (workers whose
//!   id hashes to it). Forwards single-worker operations to the owner shard
//!   and fans whole-registry operations out to all shards, then merges.
//! - [`http`]: accept loop, connection limits and timeouts, routing,
//!   handlers (one file per API area), CORS, roles and credentials (API
//!   keys, users, login tokens), errors as JSON.
//! - [`model`]: wire types and the pure domain rules: size parsing, worker
//!   type and tier, the service catalog and assignment.
//! - [`tasks`]: task queues (one shard per queue), leases, long-poll, and
//!   routing/proxying of inference requests to workers (over HTTP or HTTPS,
//!   to IP addresses or hostnames resolved off the shards).
//! - [`metrics`]: per-shard counters and histograms, and the builders of
//!   Prometheus families; each owner turns its own snapshot into families
//!   (`shard::scrape`, `tasks::scrape`, `tasks::proxy_scrape`,
//!   `store::stats`) and the `prometheus` crate's text encoder writes them.
//! - [`store`]: durable state in SQLite: one writer thread fed by the
//!   shards over a channel, group commit, migrations, startup recovery.
//! - [`config`]: the validated configuration the library runs with.
//! - [`server`]: start a whole coordinator (used by `main.rs` and tests).
//!
//! A request's life: the kernel hands a connection to one shard's listener;
//! that shard parses the request; if it concerns one worker it runs on the
//! worker's owner shard (inline or over the mesh); if it concerns all
//! workers every shard answers its part and the receiving shard merges.
//! No lock or shared atomic sits on that path.

pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod store;
pub mod tasks;

pub use config::Config;
pub use server::{Server, StartError};
