//! A pool is one or more replica sets; this module decides which set a
//! request goes to. Pure decisions here, I/O in `connection.rs` and `fs.rs`.
//!
//! - A file or directory lives wholly in one set; its id says which: every
//!   set hands out inode numbers `set << SET_SHIFT | n` (`kadalu-server
//!   --set-index`), so the low 64 bits of ids stay unique across the pool.
//! - The root exists in every set. A name directly under it lives in one
//!   set: a new name goes to the set its hash picks; an existing one is found
//!   by asking the sets (a PV directory may have been placed by free space).
//! - Listing the root walks the sets one after another; the cursor handed
//!   to the kernel carries the set in its top bits.
//! - Rename and link never cross sets (EXDEV, which `mv` and `cp` handle).

use crate::connection::Bricks;
use crate::error::ClientError;
use kadalu_proto::{FileId, ROOT_ID};

pub use kadalu_proto::SET_SHIFT;
/// Bits of a root readdir cursor below the set index: brick cursors are
/// per-directory counters, far below 2^48.
pub const CURSOR_SHIFT: u32 = 48;
/// Most sets a pool may have (the set index must fit above `SET_SHIFT`).
pub const MAX_SETS: usize = 1 << 15;

/// The set that holds `id` in a pool of `sets` sets (the root: set 0).
pub fn set_of(id: FileId, sets: usize) -> Result<usize, ClientError> {
    if id == ROOT_ID {
        return Ok(0);
    }
    let s = (id.ino() >> SET_SHIFT) as usize;
    if s < sets {
        Ok(s)
    } else {
        Err(ClientError::BadReply(format!(
            "file id {id} names replica set {s}; this mount knows {sets}"
        )))
    }
}

/// The set a new name directly under the root goes to (FNV-1a: stable
/// across builds and machines, unlike std's hasher).
pub fn home_set(name: &[u8], sets: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % sets.max(1) as u64) as usize
}

/// A root readdir cursor for brick cursor `c` of set `set`.
pub fn join_cursor(set: usize, c: u64) -> Option<u64> {
    (c < 1 << CURSOR_SHIFT).then_some(((set as u64) << CURSOR_SHIFT) | c)
}

/// The set and brick cursor of a root readdir cursor.
pub fn split_cursor(cursor: u64) -> (usize, u64) {
    (
        (cursor >> CURSOR_SHIFT) as usize,
        cursor & ((1 << CURSOR_SHIFT) - 1),
    )
}

/// The replica sets of a mount, in set-index order.
pub struct Pool {
    sets: Vec<Bricks>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.sets.iter()).finish()
    }
}

impl Pool {
    pub fn new(sets: Vec<Bricks>) -> Result<Pool, ClientError> {
        if sets.is_empty() || sets.len() > MAX_SETS {
            return Err(ClientError::Invalid("a pool has 1 to 32768 replica sets"));
        }
        Ok(Pool { sets })
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Set `i` (an index below `len`).
    pub fn set(&self, i: usize) -> &Bricks {
        &self.sets[i.min(self.sets.len() - 1)]
    }

    /// The set holding `id`.
    pub fn of(&self, id: FileId) -> Result<&Bricks, ClientError> {
        Ok(&self.sets[set_of(id, self.sets.len())?])
    }

    /// Whether names under `parent` are spread over the sets.
    pub fn spreads(&self, parent: FileId) -> bool {
        parent == ROOT_ID && self.sets.len() > 1
    }

    pub fn sets(&self) -> &[Bricks] {
        &self.sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_root_is_in_set_zero_and_ids_name_their_set() {
        assert_eq!(set_of(ROOT_ID, 3).unwrap(), 0);
        assert_eq!(set_of(FileId::from_parts(9, 5), 3).unwrap(), 0);
        assert_eq!(set_of(FileId::from_parts(9, (2 << 48) | 5), 3).unwrap(), 2);
        assert!(set_of(FileId::from_parts(9, (3 << 48) | 5), 3).is_err());
    }

    #[test]
    fn names_spread_over_every_set() {
        let mut seen = [0usize; 3];
        for i in 0..300 {
            seen[home_set(format!("pvc-{i}").as_bytes(), 3)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(home_set(b"anything", 1), 0);
    }

    proptest! {
        #[test]
        fn cursors_round_trip_and_keep_set_order(s in 0usize..1000, c in 0u64..(1 << 48), c2 in 0u64..(1 << 48)) {
            let j = join_cursor(s, c).unwrap();
            prop_assert_eq!(split_cursor(j), (s, c));
            // Every cursor of a later set sorts after every cursor of an earlier one.
            prop_assert!(join_cursor(s + 1, c2).unwrap() > j);
        }

        #[test]
        fn home_set_is_in_range(name in proptest::collection::vec(any::<u8>(), 0..64), n in 1usize..64) {
            prop_assert!(home_set(&name, n) < n);
        }
    }

    #[test]
    fn oversized_cursors_are_refused() {
        assert_eq!(join_cursor(1, 1 << 48), None);
    }
}

/// What a request is about, for routing it to a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A file or directory by id.
    Id(&'a [u8]),
    /// A name in a directory (lookup, create, unlink, ...).
    Name(&'a [u8], &'a [u8]),
    /// Two places that must be in one set: the first decides (rename,
    /// link, copy_file_range); the second is checked.
    Pair(Box<Target<'a>>, Box<Target<'a>>),
}

/// Requests that name what they touch.
pub trait Routed {
    fn target(&self) -> Target<'_>;
}

macro_rules! by_id {
    ($($t:ident),*) => {$(
        impl Routed for kadalu_proto::brick::$t {
            fn target(&self) -> Target<'_> {
                Target::Id(&self.id)
            }
        }
    )*};
}

macro_rules! by_name {
    ($($t:ident),*) => {$(
        impl Routed for kadalu_proto::brick::$t {
            fn target(&self) -> Target<'_> {
                Target::Name(&self.parent, &self.name)
            }
        }
    )*};
}

by_id!(
    GetAttrRequest,
    SetAttrRequest,
    ReadlinkRequest,
    OpenRequest,
    ReadRequest,
    WriteRequest,
    FlushRequest,
    FsyncRequest,
    ReleaseRequest,
    FallocateRequest,
    LseekRequest,
    ReadDirRequest,
    StatFsRequest,
    GetXattrRequest,
    SetXattrRequest,
    ListXattrRequest,
    RemoveXattrRequest,
    GetLockRequest,
    SetLockRequest
);
by_name!(
    LookupRequest,
    CreateRequest,
    MknodRequest,
    MkdirRequest,
    SymlinkRequest,
    UnlinkRequest,
    RmdirRequest
);

impl Routed for kadalu_proto::brick::RenameRequest {
    fn target(&self) -> Target<'_> {
        Target::Pair(
            Box::new(Target::Name(&self.parent, &self.name)),
            Box::new(Target::Name(&self.new_parent, &self.new_name)),
        )
    }
}

impl Routed for kadalu_proto::brick::LinkRequest {
    fn target(&self) -> Target<'_> {
        Target::Pair(
            Box::new(Target::Id(&self.id)),
            Box::new(Target::Name(&self.new_parent, &self.new_name)),
        )
    }
}

impl Routed for kadalu_proto::brick::CopyFileRangeRequest {
    fn target(&self) -> Target<'_> {
        Target::Pair(
            Box::new(Target::Id(&self.id_in)),
            Box::new(Target::Id(&self.id_out)),
        )
    }
}
