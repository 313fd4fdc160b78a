//! Which file id each FUSE inode number stands for. The kernel addresses files by
//! the 64-bit inode numbers we gave it in entry replies; the brick needs the full
//! 128-bit id. Every reply that hands the kernel an entry (lookup, create, mknod,
//! mkdir, symlink, link, readdirplus) adds one lookup reference; `forget` drops
//! them, and the mapping goes when the count reaches zero, as FUSE prescribes.
//!
//! The mount's root is FUSE inode 1 whatever its id (the pool root, or the
//! directory named by `--subdir`).

use kadalu_proto::FileId;
use std::collections::HashMap;

/// FUSE's inode number of the mount root.
pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    id: FileId,
    lookups: u64,
}

/// Inode number to file id, with FUSE lookup counts.
#[derive(Debug)]
pub struct InodeMap {
    root: FileId,
    known: HashMap<u64, Known>,
}

impl InodeMap {
    /// A map whose inode 1 is `root`.
    pub fn new(root: FileId) -> Self {
        InodeMap {
            root,
            known: HashMap::new(),
        }
    }

    /// The id of the mount root.
    pub fn root(&self) -> FileId {
        self.root
    }

    /// The inode number the kernel sees for `id`.
    pub fn ino_of(&self, id: FileId) -> u64 {
        if id == self.root {
            ROOT_INO
        } else {
            id.ino()
        }
    }

    /// The id behind an inode number the kernel sent, if we gave it out.
    pub fn id_of(&self, ino: u64) -> Option<FileId> {
        if ino == ROOT_INO {
            return Some(self.root);
        }
        self.known.get(&ino).map(|k| k.id)
    }

    /// Records that the kernel got an entry for `id` (one lookup reference) and
    /// returns its inode number. The root is never counted: the kernel never
    /// forgets it.
    pub fn remember(&mut self, id: FileId) -> u64 {
        let ino = self.ino_of(id);
        if ino == ROOT_INO {
            return ino;
        }
        let entry = self.known.entry(ino).or_insert(Known { id, lookups: 0 });
        if entry.id != id {
            // Two ids with the same low 64 bits would break the pool's uniqueness
            // promise; the newest one wins so the kernel's current entry works.
            tracing::error!(ino, old = %entry.id, new = %id, "inode number collision");
            *entry = Known { id, lookups: 0 };
        }
        entry.lookups = entry.lookups.saturating_add(1);
        ino
    }

    /// The kernel dropped `n` lookup references to `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(k) = self.known.get_mut(&ino) {
            k.lookups = k.lookups.saturating_sub(n);
            if k.lookups == 0 {
                self.known.remove(&ino);
            }
        }
    }

    /// Number of inodes (besides the root) the kernel holds.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether the kernel holds no inode besides the root.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Lookup references held on `ino` (0 when unknown; tests and diagnostics).
    pub fn lookups(&self, ino: u64) -> u64 {
        self.known.get(&ino).map_or(0, |k| k.lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kadalu_proto::ROOT_ID;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn root_is_inode_one_and_never_forgotten() {
        let mut m = InodeMap::new(ROOT_ID);
        assert_eq!(m.id_of(1), Some(ROOT_ID));
        assert_eq!(m.remember(ROOT_ID), 1);
        m.forget(1, 100);
        assert_eq!(m.id_of(1), Some(ROOT_ID));
        assert!(m.is_empty());
    }

    #[test]
    fn subdir_root_maps_to_one_and_back() {
        let sub = FileId::from_parts(0xabcd, 42);
        let mut m = InodeMap::new(sub);
        assert_eq!(m.ino_of(sub), 1);
        assert_eq!(m.id_of(1), Some(sub));
        assert_eq!(m.remember(sub), 1);
        assert_eq!(m.id_of(42), None);
    }

    #[test]
    fn entries_live_until_forgotten_as_often_as_looked_up() {
        let mut m = InodeMap::new(ROOT_ID);
        let f = FileId::from_parts(9, 77);
        assert_eq!(m.remember(f), 77);
        assert_eq!(m.remember(f), 77);
        m.forget(77, 1);
        assert_eq!(m.id_of(77), Some(f));
        m.forget(77, 1);
        assert_eq!(m.id_of(77), None);
        // Forgetting what is unknown is harmless.
        m.forget(77, 5);
        assert!(m.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Remember(u8),
        Forget(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16).prop_map(Op::Remember),
            (0u8..16, 1u8..4).prop_map(|(i, n)| Op::Forget(i, n)),
        ]
    }

    proptest! {
        /// Against a simple model: an id resolves exactly while its outstanding
        /// lookup count (remembers minus forgets, never below zero) is positive.
        #[test]
        fn matches_the_reference_model(ops in proptest::collection::vec(op(), 0..300)) {
            let ids: Vec<FileId> = (0..16u64).map(|i| FileId::from_parts(i * 31 + 5, i + 2)).collect();
            let mut m = InodeMap::new(ROOT_ID);
            let mut model: HashMap<u64, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Remember(i) => {
                        let id = ids[i as usize];
                        let ino = m.remember(id);
                        prop_assert_eq!(ino, id.ino());
                        *model.entry(ino).or_default() += 1;
                    }
                    Op::Forget(i, n) => {
                        let ino = ids[i as usize].ino();
                        m.forget(ino, n as u64);
                        if let Some(c) = model.get_mut(&ino) {
                            *c = c.saturating_sub(n as u64);
                            if *c == 0 { model.remove(&ino); }
                        }
                    }
                }
                for (i, id) in ids.iter().enumerate() {
                    let expect = model.get(&id.ino()).copied().unwrap_or(0);
                    prop_assert_eq!(m.lookups(id.ino()), expect, "id {}", i);
                    prop_assert_eq!(m.id_of(id.ino()).is_some(), expect > 0);
                }
                prop_assert_eq!(m.id_of(1), Some(ROOT_ID));
                prop_assert_eq!(m.len(), model.len());
            }
        }
    }
}
