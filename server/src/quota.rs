//! Per-PV quota: the registry of PVs, the exact accounting of what each one
//! occupies, and the arithmetic that decides EDQUOT.
//!
//! A PV is a directory directly under the brick's root, registered with a
//! byte limit and an optional inode limit. Every inode created beneath it
//! carries the PV's number (`InodeRecord::pv`, the PV directory's inode
//! number), inherited from its parent at creation; rename and link across PVs
//! are refused (EXDEV), so the number never changes.
//!
//! Usage must be identical on every brick of a replica set, because EDQUOT is
//! decided while applying, on every member, in log order. `st_blocks` is not
//! (speculative preallocation, delayed allocation, a rebuilt brick's extents
//! differ), so bytes are counted from the operations themselves: each regular
//! file in a PV keeps the set of 4 KiB blocks it has been given (written,
//! fallocated, copied into) as an extent table in the store; a write adds the
//! blocks it touches that are not there yet, a truncate, punch-hole or reclaim
//! removes them. A sparse file counts what was written; a hard link counts
//! once because the extents belong to the inode. The PV's totals live in its
//! record and change in the same transaction as the extents.
//!
//! | table        | key                    | value                              |
//! |--------------|------------------------|------------------------------------|
//! | `pvs`        | PV number (u64)        | [`PvRecord`]                       |
//! | `pv_names`   | name                   | PV number                          |
//! | `extents`    | (inode id, first block)| end block (exclusive)              |
//!
//! The pure parts (block ranges of an operation, merging and cutting extent
//! lists, the limit check) are functions here and are property-tested; the
//! table helpers below apply them inside an apply transaction.

use crate::error::{FsError, FsResult};
use kadalu_proto::FileId;
use redb::{ReadableTable, Table, TableDefinition};

pub(crate) const PVS: TableDefinition<u64, &[u8]> = TableDefinition::new("pvs");
pub(crate) const PV_NAMES: TableDefinition<&str, u64> = TableDefinition::new("pv_names");
pub(crate) const EXTENTS: TableDefinition<(u128, u64), u64> = TableDefinition::new("extents");

/// Accounting unit: usage is counted in blocks of this many bytes.
pub const BLOCK: u64 = 4096;

/// A registered PV as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PvRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(fixed64, tag = "2")]
    pub dir_hi: u64,
    #[prost(fixed64, tag = "3")]
    pub dir_lo: u64,
    #[prost(uint64, tag = "4")]
    pub byte_limit: u64,
    /// 0 = no inode limit.
    #[prost(uint64, tag = "5")]
    pub inode_limit: u64,
    #[prost(uint64, tag = "6")]
    pub bytes_used: u64,
    #[prost(uint64, tag = "7")]
    pub inodes_used: u64,
}

impl PvRecord {
    pub fn dir(&self) -> FileId {
        FileId::from_parts(self.dir_hi, self.dir_lo)
    }

    pub fn to_wire(&self) -> kadalu_proto::quota::Pv {
        kadalu_proto::quota::Pv {
            name: self.name.clone(),
            byte_limit: self.byte_limit,
            inode_limit: self.inode_limit,
            bytes_used: self.bytes_used,
            inodes_used: self.inodes_used,
            dir_id: self.dir().to_wire(),
        }
    }

    /// What `statfs` reports on a mount of this PV, in `bsize` blocks: the
    /// limit as the size, the usage as used. An inode limit of 0 reports the
    /// brick's own inode counts (`fs_files`, `fs_ffree`).
    pub fn statfs(
        &self,
        bsize: u32,
        fs_files: u64,
        fs_ffree: u64,
    ) -> kadalu_proto::brick::StatFsReply {
        let bs = u64::from(bsize.max(1));
        let free = self.byte_limit.saturating_sub(self.bytes_used);
        let (files, ffree) = if self.inode_limit == 0 {
            (fs_files, fs_ffree)
        } else {
            (
                self.inode_limit,
                self.inode_limit.saturating_sub(self.inodes_used),
            )
        };
        kadalu_proto::brick::StatFsReply {
            blocks: self.byte_limit / bs,
            bfree: free / bs,
            bavail: free / bs,
            files,
            ffree,
            bsize,
            namelen: kadalu_proto::MAX_NAME_LEN as u32,
            frsize: bsize,
        }
    }
}

/// Blocks `[first, end)` touched by `len` bytes at `offset` (empty when `len` is 0).
pub fn blocks_touched(offset: u64, len: u64) -> (u64, u64) {
    if len == 0 {
        return (0, 0);
    }
    let end = offset.saturating_add(len);
    (offset / BLOCK, end.div_ceil(BLOCK))
}

/// Blocks lying wholly inside `len` bytes at `offset`: what a punched hole frees.
pub fn blocks_inside(offset: u64, len: u64) -> (u64, u64) {
    let first = offset.div_ceil(BLOCK);
    let end = offset.saturating_add(len) / BLOCK;
    if end <= first {
        (0, 0)
    } else {
        (first, end)
    }
}

/// Blocks a file of `size` bytes can still hold data in: the first block not
/// needed by `size` (a truncate frees every block from there on).
pub fn first_block_past(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

/// Whether adding `bytes` to a PV using `used` of `limit` stays within it.
/// Zero more bytes always passes: rewriting blocks already counted is allowed
/// at the limit.
pub fn bytes_fit(used: u64, limit: u64, bytes: u64) -> bool {
    bytes == 0 || used.checked_add(bytes).is_some_and(|n| n <= limit)
}

/// Whether one more inode fits (`limit` 0: no limit).
pub fn inode_fits(used: u64, limit: u64) -> bool {
    limit == 0 || used < limit
}

/// Blocks of `[s, e)` not covered by the sorted, disjoint `extents`.
pub fn uncovered(extents: &[(u64, u64)], s: u64, e: u64) -> u64 {
    let mut covered = 0;
    for &(a, b) in extents {
        let lo = a.max(s);
        let hi = b.min(e);
        if hi > lo {
            covered += hi - lo;
        }
    }
    (e - s).saturating_sub(covered)
}

/// The extents `[s, e)` merges with (overlapping or adjacent), merged into one.
pub fn merged(extents: &[(u64, u64)], s: u64, e: u64) -> (u64, u64) {
    extents
        .iter()
        .filter(|&&(a, b)| a <= e && b >= s)
        .fold((s, e), |(lo, hi), &(a, b)| (lo.min(a), hi.max(b)))
}

/// What is left of the sorted, disjoint `extents` after cutting `[s, e)` out,
/// and how many blocks went.
pub fn cut(extents: &[(u64, u64)], s: u64, e: u64) -> (Vec<(u64, u64)>, u64) {
    let mut left = Vec::with_capacity(extents.len() + 1);
    let mut removed = 0;
    for &(a, b) in extents {
        let lo = a.max(s);
        let hi = b.min(e);
        if hi <= lo {
            left.push((a, b));
            continue;
        }
        removed += hi - lo;
        if a < lo {
            left.push((a, lo));
        }
        if hi < b {
            left.push((hi, b));
        }
    }
    (left, removed)
}

/// The extents of `id` that overlap or touch `[s, e)`, in order.
fn near(
    t: &impl ReadableTable<(u128, u64), u64>,
    id: FileId,
    s: u64,
    e: u64,
) -> FsResult<Vec<(u64, u64)>> {
    let mut found = Vec::new();
    // Extents are disjoint and sorted by start: walk back from the last one
    // starting at or before `e` until one ends before `s`.
    for item in t.range((id.0, 0)..=(id.0, e))?.rev() {
        let (k, v) = item?;
        let (a, b) = (k.value().1, v.value());
        if b < s {
            break;
        }
        found.push((a, b));
    }
    found.reverse();
    Ok(found)
}

/// Blocks of `[s, e)` that `id` does not hold yet.
pub(crate) fn new_blocks(
    t: &impl ReadableTable<(u128, u64), u64>,
    id: FileId,
    (s, e): (u64, u64),
) -> FsResult<u64> {
    if e <= s {
        return Ok(0);
    }
    Ok(uncovered(&near(t, id, s, e)?, s, e))
}

/// Gives `id` the blocks `[s, e)`; returns how many it did not hold before.
pub(crate) fn add_blocks(
    t: &mut Table<'_, (u128, u64), u64>,
    id: FileId,
    (s, e): (u64, u64),
) -> FsResult<u64> {
    if e <= s {
        return Ok(0);
    }
    let found = near(t, id, s, e)?;
    let added = uncovered(&found, s, e);
    if added == 0 {
        return Ok(0);
    }
    let (lo, hi) = merged(&found, s, e);
    for (a, _) in &found {
        t.remove((id.0, *a))?;
    }
    t.insert((id.0, lo), hi)?;
    Ok(added)
}

/// Takes the blocks `[s, e)` from `id`; returns how many it held.
pub(crate) fn remove_blocks(
    t: &mut Table<'_, (u128, u64), u64>,
    id: FileId,
    (s, e): (u64, u64),
) -> FsResult<u64> {
    if e <= s {
        return Ok(0);
    }
    let found: Vec<(u64, u64)> = near(t, id, s, e)?
        .into_iter()
        .filter(|&(a, b)| a < e && b > s)
        .collect();
    if found.is_empty() {
        return Ok(0);
    }
    let (left, removed) = cut(&found, s, e);
    for (a, _) in &found {
        t.remove((id.0, *a))?;
    }
    for (a, b) in left {
        t.insert((id.0, a), b)?;
    }
    Ok(removed)
}

/// Every block `id` holds, counted.
pub(crate) fn held_blocks(t: &impl ReadableTable<(u128, u64), u64>, id: FileId) -> FsResult<u64> {
    let mut n = 0;
    for item in t.range((id.0, 0)..=(id.0, u64::MAX))? {
        let (k, v) = item?;
        n += v.value().saturating_sub(k.value().1);
    }
    Ok(n)
}

/// The PV record of number `pv`, if it is registered.
pub(crate) fn get_pv(
    t: &impl ReadableTable<u64, &'static [u8]>,
    pv: u64,
) -> FsResult<Option<PvRecord>> {
    match t.get(pv)? {
        Some(v) => Ok(Some(<PvRecord as prost::Message>::decode(v.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn put_pv(
    t: &mut Table<'_, u64, &'static [u8]>,
    pv: u64,
    rec: &PvRecord,
) -> FsResult<()> {
    t.insert(pv, prost::Message::encode_to_vec(rec).as_slice())?;
    Ok(())
}

/// EDQUOT, the answer when a PV's limit would be passed.
pub fn over_quota() -> FsError {
    FsError::Os(libc::EDQUOT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn to_set(ext: &[(u64, u64)]) -> BTreeSet<u64> {
        ext.iter().flat_map(|&(a, b)| a..b).collect()
    }

    /// Extents as the table keeps them: sorted, disjoint, never touching.
    fn normalise(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &b in set {
            match out.last_mut() {
                Some((_, e)) if *e == b => *e += 1,
                _ => out.push((b, b + 1)),
            }
        }
        out
    }

    #[test]
    fn block_ranges_of_operations() {
        assert_eq!(blocks_touched(0, 0), (0, 0));
        assert_eq!(blocks_touched(0, 1), (0, 1));
        assert_eq!(blocks_touched(4095, 2), (0, 2));
        assert_eq!(blocks_touched(4096, 4096), (1, 2));
        assert_eq!(blocks_inside(1, 8190), (0, 0));
        assert_eq!(blocks_inside(0, 8192), (0, 2));
        assert_eq!(blocks_inside(100, 4096), (0, 0));
        assert_eq!(first_block_past(0), 0);
        assert_eq!(first_block_past(1), 1);
        assert_eq!(first_block_past(4096), 1);
    }

    #[test]
    fn limits() {
        assert!(bytes_fit(10, 10, 0));
        assert!(!bytes_fit(10, 10, 1));
        assert!(bytes_fit(0, 4096, 4096));
        assert!(!bytes_fit(u64::MAX, u64::MAX, 1));
        assert!(inode_fits(5, 0));
        assert!(inode_fits(4, 5));
        assert!(!inode_fits(5, 5));
    }

    #[test]
    fn statfs_reports_the_limit() {
        let pv = PvRecord {
            byte_limit: 10 << 20,
            bytes_used: 4 << 20,
            inode_limit: 100,
            inodes_used: 7,
            ..Default::default()
        };
        let s = pv.statfs(4096, 1000, 900);
        assert_eq!(s.blocks * 4096, 10 << 20);
        assert_eq!(s.bfree * 4096, 6 << 20);
        assert_eq!((s.files, s.ffree), (100, 93));
        let unlimited = PvRecord {
            inode_limit: 0,
            ..pv
        };
        assert_eq!(unlimited.statfs(4096, 1000, 900).files, 1000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_extent_table_matches_a_set_of_blocks(
            ops in proptest::collection::vec((any::<bool>(), 0u64..80, 0u64..24), 1..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            let mut model = BTreeSet::new();
            {
                let mut t = txn.open_table(EXTENTS).unwrap();
                let id = FileId(7);
                // A neighbour's extents must never be touched.
                t.insert((8, 0), 1000).unwrap();
                for (add, s, len) in ops {
                    let range = (s, s + len);
                    if add {
                        let fresh = new_blocks(&t, id, range).unwrap();
                        let got = add_blocks(&mut t, id, range).unwrap();
                        let before = model.len();
                        model.extend(s..s + len);
                        prop_assert_eq!(fresh, got);
                        prop_assert_eq!(got as usize, model.len() - before);
                    } else {
                        let got = remove_blocks(&mut t, id, range).unwrap();
                        let before = model.len();
                        for b in s..s + len { model.remove(&b); }
                        prop_assert_eq!(got as usize, before - model.len());
                    }
                    let stored: Vec<(u64, u64)> = t
                        .range((id.0, 0)..=(id.0, u64::MAX)).unwrap()
                        .map(|r| { let (k, v) = r.unwrap(); (k.value().1, v.value()) })
                        .collect();
                    prop_assert_eq!(&stored, &normalise(&model));
                    prop_assert_eq!(held_blocks(&t, id).unwrap() as usize, model.len());
                }
                prop_assert_eq!(t.get((8, 0)).unwrap().map(|v| v.value()), Some(1000));
            }
        }

        #[test]
        fn merge_and_cut_match_a_set_of_blocks(
            blocks in proptest::collection::btree_set(0u64..64, 0..40),
            s in 0u64..70, len in 0u64..20, cut_it in any::<bool>(),
        ) {
            let ext = normalise(&blocks);
            let e = s + len;
            let range: BTreeSet<u64> = (s..e).collect();
            if cut_it {
                let (left, removed) = cut(&ext, s, e);
                let want: BTreeSet<u64> = blocks.difference(&range).copied().collect();
                prop_assert_eq!(to_set(&left), want);
                prop_assert_eq!(removed as usize, blocks.intersection(&range).count());
            } else {
                prop_assert_eq!(uncovered(&ext, s, e) as usize, range.difference(&blocks).count());
                if len > 0 {
                    let near: Vec<(u64, u64)> =
                        ext.iter().copied().filter(|&(a, b)| a <= e && b >= s).collect();
                    let (lo, hi) = merged(&near, s, e);
                    let mut all = blocks.clone();
                    all.extend(s..e);
                    // The merged extent plus the untouched ones is the union.
                    let mut rebuilt: BTreeSet<u64> = (lo..hi).collect();
                    for &(a, b) in ext.iter().filter(|&&(a, b)| !(a <= e && b >= s)) {
                        rebuilt.extend(a..b);
                    }
                    prop_assert_eq!(rebuilt, all);
                }
            }
        }
    }
}
