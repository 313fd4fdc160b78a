//! Which lock owners placed locks through each open file handle, so that the
//! release of a handle can drop the locks nobody else will.
//!
//! The kernel names the owner of a POSIX record lock (the process's file table)
//! in `flush` at every close, and the brick drops that owner's locks then. An
//! open-file-description lock (`F_OFD_SETLK`) is owned by the open file itself,
//! and the kernel's `release` of that file names no owner (it does only for
//! flock). So the client remembers, per handle, every owner that locked through
//! it, and at release unlocks those the flushes have not already dealt with.
//! Forgetting a flushed owner matters: a process that closed one descriptor
//! and locked again through another must not lose the new lock when the first
//! open file (still held by, say, a child) is finally released.

use kadalu_proto::FileId;
use std::collections::{BTreeSet, HashMap};

/// Lock owners per open handle, grouped by file.
#[derive(Debug, Default)]
pub struct LockOwners {
    files: HashMap<FileId, HashMap<u64, BTreeSet<u64>>>,
}

impl LockOwners {
    pub fn new() -> Self {
        Self::default()
    }

    /// `owner` asked for a lock on `id` through `handle` (recorded before the
    /// answer, so a release racing with the grant still unlocks).
    pub fn took(&mut self, id: FileId, handle: u64, owner: u64) {
        self.files
            .entry(id)
            .or_default()
            .entry(handle)
            .or_default()
            .insert(owner);
    }

    /// The brick dropped every record lock `owner` held on `id` (a flush): no
    /// handle needs to unlock it any more.
    pub fn flushed(&mut self, id: FileId, owner: u64) {
        let Some(handles) = self.files.get_mut(&id) else {
            return;
        };
        handles.retain(|_, owners| {
            owners.remove(&owner);
            !owners.is_empty()
        });
        if handles.is_empty() {
            self.files.remove(&id);
        }
    }

    /// `handle` of `id` is released: the owners whose locks must go with it,
    /// in ascending order. Forgets the handle.
    pub fn released(&mut self, id: FileId, handle: u64) -> Vec<u64> {
        let Some(handles) = self.files.get_mut(&id) else {
            return Vec::new();
        };
        let owners = handles.remove(&handle).unwrap_or_default();
        if handles.is_empty() {
            self.files.remove(&id);
        }
        owners.into_iter().collect()
    }

    /// Number of handles with owners remembered.
    pub fn handles(&self) -> usize {
        self.files.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(n: u64) -> FileId {
        FileId::from_parts(0, n)
    }

    #[test]
    fn an_ofd_owner_is_released_with_its_handle_only() {
        let mut o = LockOwners::new();
        // Two opens of one file, each its own OFD owner.
        o.took(file(1), 10, 1000);
        o.took(file(1), 11, 1100);
        assert_eq!(o.released(file(1), 10), vec![1000]);
        assert_eq!(o.released(file(1), 10), Vec::<u64>::new());
        assert_eq!(o.released(file(1), 11), vec![1100]);
        assert_eq!(o.handles(), 0);
    }

    #[test]
    fn flushed_owners_are_not_unlocked_again_at_release() {
        let mut o = LockOwners::new();
        // A process (owner 7) locks through two handles and an OFD owner locks too.
        o.took(file(1), 10, 7);
        o.took(file(1), 10, 1000);
        o.took(file(1), 11, 7);
        o.took(file(2), 12, 7);
        o.flushed(file(1), 7);
        assert_eq!(o.released(file(1), 10), vec![1000]);
        assert_eq!(o.released(file(1), 11), Vec::<u64>::new());
        // Another file's locks of the same owner are untouched.
        assert_eq!(o.released(file(2), 12), vec![7]);
        assert_eq!(o.handles(), 0);
    }

    #[test]
    fn a_lock_taken_after_a_flush_is_remembered_again() {
        let mut o = LockOwners::new();
        o.took(file(1), 10, 7);
        o.flushed(file(1), 7);
        o.took(file(1), 11, 7);
        assert_eq!(o.released(file(1), 10), Vec::<u64>::new());
        assert_eq!(o.released(file(1), 11), vec![7]);
    }

    proptest! {
        /// Whatever the order of locks and flushes, a release returns exactly the
        /// owners that locked through the handle and were not flushed since, and
        /// once every handle is released nothing is left behind.
        #[test]
        fn release_returns_unflushed_owners(
            ops in proptest::collection::vec((0u64..3, 0u64..4, 0u64..4, any::<bool>()), 0..60)
        ) {
            let mut o = LockOwners::new();
            let mut model: HashMap<(u64, u64), BTreeSet<u64>> = HashMap::new();
            for (f, h, owner, is_flush) in ops {
                if is_flush {
                    o.flushed(file(f), owner);
                    for ((mf, _), owners) in model.iter_mut() {
                        if *mf == f {
                            owners.remove(&owner);
                        }
                    }
                } else {
                    o.took(file(f), h, owner);
                    model.entry((f, h)).or_default().insert(owner);
                }
            }
            for f in 0..3 {
                for h in 0..4 {
                    let want: Vec<u64> = model.remove(&(f, h)).unwrap_or_default().into_iter().collect();
                    prop_assert_eq!(o.released(file(f), h), want);
                }
            }
            prop_assert_eq!(o.handles(), 0);
            prop_assert!(o.files.is_empty());
        }
    }
}
