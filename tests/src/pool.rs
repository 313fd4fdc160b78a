//! A pool for tests: one brick and any number of mounts of it.

use std::path::Path;

use crate::brick::Brick;
use crate::mount::{Mount, MountOptions};

/// One brick plus mounts of it. Mounts are declared first so that they are
/// unmounted before the brick goes away.
pub struct Pool {
    mounts: Vec<Mount>,
    brick: Brick,
}

impl Pool {
    /// One brick, one mount with the client's default options.
    pub fn start() -> Pool {
        Pool::start_with(1, &MountOptions::default())
    }

    /// One brick and `n_mounts` independent mounts of it (separate client processes).
    pub fn start_with(n_mounts: usize, opts: &MountOptions) -> Pool {
        Pool::with_brick(Brick::start(), n_mounts, opts)
    }

    /// `n_mounts` mounts of a brick the test started itself.
    pub fn with_brick(brick: Brick, n_mounts: usize, opts: &MountOptions) -> Pool {
        let mut pool = Pool {
            mounts: Vec::new(),
            brick,
        };
        for _ in 0..n_mounts {
            pool.add_mount(opts);
        }
        pool
    }

    /// Adds another client process mounting the same brick.
    pub fn add_mount(&mut self, opts: &MountOptions) -> &Mount {
        let m = Mount::start(&[self.brick.addr()], opts);
        self.mounts.push(m);
        self.mounts.last().expect("just pushed")
    }

    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    pub fn mounts_mut(&mut self) -> &mut [Mount] {
        &mut self.mounts
    }

    pub fn mount(&self, i: usize) -> &Mount {
        &self.mounts[i]
    }

    /// Mount point of the first mount.
    pub fn path(&self) -> &Path {
        self.mounts[0].path()
    }

    pub fn brick(&self) -> &Brick {
        &self.brick
    }

    pub fn brick_mut(&mut self) -> &mut Brick {
        &mut self.brick
    }
}
