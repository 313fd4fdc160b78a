//! A kadalu brick: one directory exported over gRPC.
//!
//! Layout of the crate, along the path of a request:
//! - `service`: the gRPC `Brick` service.
//! - `prepare`: turns a mutating request into a [`ops::Command`] (ids, time chosen).
//! - `applier`: the single, ordered entry point for commands; owns open handles
//!   and the write-ahead journal (`journal`, commands encoded by `ops_codec`).
//! - `apply`: the deterministic state machine, the only code that changes a brick.
//! - `store`: the on-disk layout (metadata store + object files) and all reads;
//!   `object_fds` keeps object files open.
//! - `raft`: Replica3, the Raft log in front of the applier (openraft).
//! - `dedupe`, `records`, `names`, `locks`, `handles`, `error`: their parts.

pub mod applier;
pub mod apply;
pub mod apply_thread;
pub mod dedupe;
pub mod digest;
pub mod error;
pub mod fast_write;
pub mod handles;
pub mod journal;
pub mod locks;
pub mod metrics;
pub mod names;
mod object_fds;
pub mod ops;
pub mod ops_codec;
pub mod prepare;
pub mod quota;
pub mod quota_service;
pub mod raft;
pub mod records;
pub mod server;
pub mod service;
pub mod store;

pub use error::{FsError, FsResult};
