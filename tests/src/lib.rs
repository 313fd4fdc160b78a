//! Shared harness for end-to-end tests: starts real `kadalu-server` processes and
//! real `kadalu-mount` FUSE mounts, and tears them down in drop guards, so that
//! no process and no mount outlives a test, even one that panics.
//!
//! Run with `cargo test -p kadalu-e2e` (as root, with /dev/fuse and fusermount3).
//! The binaries under test are built on first use (see [`binaries`]) unless
//! `KADALU_BIN_DIR` points at prebuilt ones.
//!
//! Knobs (environment):
//! - `KADALU_BIN_DIR`: use the binaries in this directory, build nothing.
//! - `KADALU_E2E_WATCHDOG_SECS` (default 300): a mount older than this is
//!   aborted, so a hung FUSE request fails its test instead of hanging the suite.
//! - `KADALU_E2E_LOCAL_ONLY`: run side-by-side scripts against two local
//!   directories, no binaries (checks that the scripts themselves are deterministic).
//! - `KADALU_E2E_TRANSCRIPT`: print each side-by-side script's local transcript.

pub mod binaries;
pub mod brick;
pub mod csi;
pub mod lock_holder;
pub mod mount;
pub mod pool;
pub mod process;
pub mod quota;
pub mod replica;
pub mod script;
pub mod sys;

pub use brick::Brick;
pub use mount::{Mount, MountOptions};
pub use pool::Pool;
pub use quota::QuotaAdmin;
pub use replica::ReplicaSet;
pub use script::{Ctx, Outcome, Script};
