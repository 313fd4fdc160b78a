//! The kadalu FUSE client: mounts a pool (or one directory of it) served by
//! bricks over gRPC.
//!
//! - [`connection`]: the brick set, per-RPC deadlines, retry while unreachable.
//! - [`request_seq`]: request headers that let a brick deduplicate retried mutations.
//! - [`inode_map`]: FUSE inode numbers ↔ 128-bit file ids, with lookup counts.
//! - [`attr`], [`dir_cursor`], [`locks`]: pure conversions between kernel and wire.
//! - [`xattr_cache`]: short-lived answers for the xattrs the kernel asks on its own.
//! - [`fs`]: the fuser `Filesystem` implementation.
//! - [`mount`]: resolving the mount root and running a mount session.

pub mod attr;
pub mod connection;
pub mod dir_cursor;
pub mod error;
pub mod fs;
pub mod inode_map;
pub mod locks;
pub mod mount;
pub mod request_seq;
pub mod xattr_cache;
