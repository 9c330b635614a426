//! Wire types and the pure rules of the domain.
//!
//! Owns: request shapes as agents send them (`wire`), size parsing (`size`),
//! worker type / tier rules (`tier`), the service catalog and assignment
//! (`catalog`), container env templates (`env`), timestamp formatting
//! (`time`), the worker record and its rules (`worker`), the worker-list
//! filters (`filter`) and the hash that places a key on a shard
//! (`placement`). Everything here is plain
//! data and pure functions: no IO (except loading a catalog file), no shard
//! or HTTP knowledge, so it is unit-tested directly.

pub(crate) mod catalog;
pub mod credential;
pub mod env;
pub(crate) mod filter;
pub mod placement;
pub mod size;
pub(crate) mod tier;
pub mod time;
pub mod wire;
pub mod worker;

pub use catalog::{Catalog, ServiceSpec};
pub use tier::{classify, WorkerType};
pub(crate) use tier::{truthy, Classification};
