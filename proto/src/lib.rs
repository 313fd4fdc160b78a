//! Wire types of the brick protocol (`proto/brick.proto`) and the small pieces of
//! meaning every peer must agree on: how a file id is encoded and how a Linux
//! errno travels inside a gRPC status.

pub mod errno;
pub mod file_id;
pub mod pool_config;
pub mod pv_name;
pub mod transport;
pub mod wire;

pub use file_id::{FileId, ROOT_ID};

/// Generated code for `kadalu.brick.v1`.
pub mod brick {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kadalu.brick.v1");
}

/// Generated code for `kadalu.raft.v1`: traffic between the bricks of a replica set.
pub mod raft {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kadalu.raft.v1");
}

/// Generated code for `csi.v1`: the Container Storage Interface (the subset
/// the CSI driver implements, `proto/csi.proto`).
pub mod csi {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}

/// Generated code for `kadalu.quota.v1`: per-PV quota directories.
pub use quota_package::quota::v1 as quota;

// prost refers from `kadalu.quota.v1` to `kadalu.brick.v1` as
// `super::super::brick::v1`; this nesting makes that path name `crate::brick`.
mod quota_package {
    pub mod quota {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("kadalu.quota.v1");
        }
    }
    pub mod brick {
        pub use crate::brick as v1;
    }
}

/// Bits of an inode number below its replica set's index: set `k` of a pool
/// hands out inode numbers `k << SET_SHIFT | n`, so ids are unique across a
/// pool's sets and a client knows a file's set from its id.
pub const SET_SHIFT: u32 = 48;

/// Largest Raft message a brick sends or accepts: a batch of commands with their
/// payloads, or one snapshot chunk.
pub const MAX_RAFT_MESSAGE_SIZE: usize = 16 << 20;
/// Metadata key of a "not leader" answer naming the leader's address (empty when
/// no leader is known yet).
pub const LEADER_HINT_KEY: &str = "x-kadalu-leader";

/// Largest read or write payload a peer sends or accepts (1 MiB).
pub const MAX_IO_SIZE: usize = 1 << 20;
/// Largest gRPC message either side decodes: the biggest payload plus framing slack.
pub const MAX_MESSAGE_SIZE: usize = MAX_IO_SIZE + 64 * 1024;
/// Longest file name (bytes), as Linux's NAME_MAX.
pub const MAX_NAME_LEN: usize = 255;
/// Most bytes an Open returns with its reply (`OpenRequest.prefetch`).
pub const MAX_PREFETCH: u32 = 128 * 1024;
/// Longest symlink target (bytes), as Linux's PATH_MAX.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest extended attribute value, as Linux's XATTR_SIZE_MAX.
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Longest extended attribute name, as Linux's XATTR_NAME_MAX.
pub const MAX_XATTR_NAME: usize = 255;
/// Most entries one readdir reply carries.
pub const MAX_READDIR_ENTRIES: u32 = 4096;
