//! The CSI driver (`kadalu-csi`): a PV of a kadalu pool is a quota directory
//! of one of its replica sets.
//!
//! - `identity`, `controller`, `node`: the CSI services.
//! - `mounter`: the long-lived process that owns the FUSE mounts of a node.
//! - `placement`, `capability`, `volume_id`: pure decisions.
//! - `pools`: the pool files the operator writes; `set_client`: calls to a
//!   replica set's `Quota` service; `mountinfo`: the kernel's mount table.
//! - `serve`: the unix-socket gRPC server.

pub mod capability;
pub mod controller;
pub mod error;
pub mod identity;
pub mod mounter;
pub mod mountinfo;
pub mod node;
pub mod placement;
pub mod pools;
pub mod serve;
pub mod set_client;
pub mod volume_id;

pub use error::{CsiError, CsiResult};
