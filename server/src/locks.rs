//! POSIX record locks and flock(2) locks, held in the brick's memory so that
//! they hold across clients. Pure: no I/O, callers serialise access.
//!
//! POSIX locks belong to an owner (client id + the kernel's lock owner) and
//! cover inclusive byte ranges; an owner's new lock replaces its own locks on
//! the range (splitting them), and touching or overlapping locks of the same
//! kind merge, as in Linux. flock locks cover the whole file and belong to an
//! open file (client id + handle). The two kinds never conflict with each
//! other, as on Linux. Setting never blocks: a conflict is EAGAIN and the
//! client retries for F_SETLKW.

use crate::error::{FsError, FsResult};
use kadalu_proto::FileId;
use std::collections::HashMap;

/// Most POSIX locks on one file.
pub const MAX_LOCKS_PER_FILE: usize = 4096;
/// Most locks on the brick.
pub const MAX_LOCKS: usize = 1 << 20;

/// Who holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub client: u128,
    pub owner: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Read,
    Write,
}

/// A held byte-range lock; `end` is inclusive (u64::MAX: to end of file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub owner: Owner,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

fn conflicts(a: LockKind, b: LockKind) -> bool {
    a == LockKind::Write || b == LockKind::Write
}

fn overlaps(l: &Lock, start: u64, end: u64) -> bool {
    l.start <= end && start <= l.end
}

#[derive(Debug, Default)]
struct FileLocks {
    posix: Vec<Lock>,
    flocks: Vec<(Owner, LockKind)>,
}

/// All locks of one brick.
#[derive(Debug, Default)]
pub struct LockTable {
    files: HashMap<FileId, FileLocks>,
    total: usize,
}

impl LockTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// F_GETLK: a lock of another owner that would block this one.
    pub fn test(
        &self,
        id: FileId,
        owner: Owner,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> Option<Lock> {
        self.files
            .get(&id)?
            .posix
            .iter()
            .copied()
            .find(|l| l.owner != owner && overlaps(l, start, end) && conflicts(kind, l.kind))
    }

    /// F_SETLK: EAGAIN on a conflict, ENOLCK when the table is full.
    pub fn lock(
        &mut self,
        id: FileId,
        owner: Owner,
        kind: LockKind,
        start: u64,
        end: u64,
        pid: u32,
    ) -> FsResult<()> {
        if start > end {
            return Err(FsError::Os(libc::EINVAL));
        }
        if self.test(id, owner, kind, start, end).is_some() {
            return Err(FsError::Os(libc::EAGAIN));
        }
        let before = self.count(id);
        let file = self.files.entry(id).or_default();
        let saved = file.posix.clone();
        let mut mine = carve(&mut file.posix, owner, start, end);
        mine.push(Lock {
            owner,
            kind,
            start,
            end,
            pid,
        });
        file.posix.extend(merge(mine));
        let after = file.posix.len() + file.flocks.len();
        if file.posix.len() > MAX_LOCKS_PER_FILE || self.total - before + after > MAX_LOCKS {
            file.posix = saved;
            self.settle(id, before);
            return Err(FsError::Os(libc::ENOLCK));
        }
        self.settle(id, before);
        Ok(())
    }

    /// F_UNLCK on a range.
    pub fn unlock(&mut self, id: FileId, owner: Owner, start: u64, end: u64) -> FsResult<()> {
        if start > end {
            return Err(FsError::Os(libc::EINVAL));
        }
        let before = self.count(id);
        if let Some(file) = self.files.get_mut(&id) {
            let mine = carve(&mut file.posix, owner, start, end);
            file.posix.extend(mine);
        }
        self.settle(id, before);
        Ok(())
    }

    /// close(2) semantics: every POSIX lock of `owner` on the file goes.
    pub fn release_owner(&mut self, id: FileId, owner: Owner) {
        let before = self.count(id);
        if let Some(file) = self.files.get_mut(&id) {
            file.posix.retain(|l| l.owner != owner);
        }
        self.settle(id, before);
    }

    /// flock(2) LOCK_SH / LOCK_EX, never waiting: EAGAIN on a conflict.
    pub fn flock(&mut self, id: FileId, owner: Owner, kind: LockKind) -> FsResult<()> {
        let before = self.count(id);
        let file = self.files.entry(id).or_default();
        let result = if file
            .flocks
            .iter()
            .any(|(o, k)| *o != owner && conflicts(kind, *k))
        {
            Err(FsError::Os(libc::EAGAIN))
        } else if let Some(slot) = file.flocks.iter_mut().find(|(o, _)| *o == owner) {
            slot.1 = kind;
            Ok(())
        } else if self.total >= MAX_LOCKS {
            Err(FsError::Os(libc::ENOLCK))
        } else {
            file.flocks.push((owner, kind));
            Ok(())
        };
        self.settle(id, before);
        result
    }

    /// LOCK_UN, or the release of the open file.
    pub fn funlock(&mut self, id: FileId, owner: Owner) {
        let before = self.count(id);
        if let Some(file) = self.files.get_mut(&id) {
            file.flocks.retain(|(o, _)| *o != owner);
        }
        self.settle(id, before);
    }

    /// The POSIX locks `owner` holds on `id`, sorted by start.
    pub fn owned(&self, id: FileId, owner: Owner) -> Vec<Lock> {
        let mut v: Vec<Lock> = self
            .files
            .get(&id)
            .map(|f| {
                f.posix
                    .iter()
                    .copied()
                    .filter(|l| l.owner == owner)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|l| l.start);
        v
    }

    /// Number of locks held on the brick.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn count(&self, id: FileId) -> usize {
        self.files
            .get(&id)
            .map_or(0, |f| f.posix.len() + f.flocks.len())
    }

    /// Drops an empty entry and brings the total up to date after `id`'s
    /// locks changed from `before` locks.
    fn settle(&mut self, id: FileId, before: usize) {
        let after = self.count(id);
        if after == 0 {
            self.files.remove(&id);
        }
        self.total = self.total - before + after;
    }
}

/// Removes `owner`'s locks from `locks` and returns them with [start, end]
/// cut out (a lock straddling the range is split in two).
fn carve(locks: &mut Vec<Lock>, owner: Owner, start: u64, end: u64) -> Vec<Lock> {
    let mut mine = Vec::new();
    let mut i = 0;
    while i < locks.len() {
        if locks[i].owner == owner {
            mine.push(locks.swap_remove(i));
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(mine.len() + 1);
    for l in mine {
        if !overlaps(&l, start, end) {
            out.push(l);
            continue;
        }
        if l.start < start {
            out.push(Lock {
                end: start - 1,
                ..l
            });
        }
        if l.end > end {
            out.push(Lock {
                start: end + 1,
                ..l
            });
        }
    }
    out
}

/// Merges one owner's locks of the same kind that overlap or touch (after
/// `carve`, locks of different kinds never overlap).
fn merge(mut mine: Vec<Lock>) -> Vec<Lock> {
    mine.sort_by_key(|l| (l.start, l.end));
    let mut out: Vec<Lock> = Vec::with_capacity(mine.len());
    for l in mine {
        if let Some(last) = out.iter_mut().rev().find(|o| o.kind == l.kind) {
            // saturating: a lock to u64::MAX absorbs everything after it.
            if l.start <= last.end.saturating_add(1) {
                last.end = last.end.max(l.end);
                last.pid = l.pid;
                continue;
            }
        }
        out.push(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: FileId = FileId(9);

    fn owner(n: u64) -> Owner {
        Owner {
            client: 7,
            owner: n,
        }
    }

    #[test]
    fn split_on_unlock_and_merge_on_relock() {
        let mut t = LockTable::new();
        t.lock(F, owner(1), LockKind::Write, 0, 99, 1).unwrap();
        t.unlock(F, owner(1), 10, 19).unwrap();
        let l = t.owned(F, owner(1));
        assert_eq!(
            l.iter().map(|l| (l.start, l.end)).collect::<Vec<_>>(),
            vec![(0, 9), (20, 99)]
        );
        t.lock(F, owner(1), LockKind::Write, 10, 19, 1).unwrap();
        let l = t.owned(F, owner(1));
        assert_eq!(
            l.iter().map(|l| (l.start, l.end)).collect::<Vec<_>>(),
            vec![(0, 99)]
        );
    }

    #[test]
    fn downgrade_part_of_a_range() {
        let mut t = LockTable::new();
        t.lock(F, owner(1), LockKind::Write, 0, u64::MAX, 1)
            .unwrap();
        t.lock(F, owner(1), LockKind::Read, 100, 199, 1).unwrap();
        let l = t.owned(F, owner(1));
        let shape: Vec<_> = l.iter().map(|l| (l.kind, l.start, l.end)).collect();
        assert_eq!(
            shape,
            vec![
                (LockKind::Write, 0, 99),
                (LockKind::Read, 100, 199),
                (LockKind::Write, 200, u64::MAX)
            ]
        );
        // Another owner may read-lock the read part only.
        assert!(t.lock(F, owner(2), LockKind::Read, 150, 160, 2).is_ok());
        assert_eq!(
            t.lock(F, owner(2), LockKind::Read, 150, 250, 2)
                .unwrap_err()
                .errno(),
            libc::EAGAIN
        );
        let c = t.test(F, owner(2), LockKind::Write, 0, 10).unwrap();
        assert_eq!((c.owner, c.kind, c.pid), (owner(1), LockKind::Write, 1));
    }

    #[test]
    fn owners_are_per_client() {
        let mut t = LockTable::new();
        let a = Owner {
            client: 1,
            owner: 5,
        };
        let b = Owner {
            client: 2,
            owner: 5,
        };
        t.lock(F, a, LockKind::Write, 0, 0, 1).unwrap();
        assert_eq!(
            t.lock(F, b, LockKind::Read, 0, 0, 1).unwrap_err().errno(),
            libc::EAGAIN
        );
        t.release_owner(F, a);
        assert!(t.lock(F, b, LockKind::Read, 0, 0, 1).is_ok());
    }

    #[test]
    fn flock_shared_and_exclusive() {
        let mut t = LockTable::new();
        t.flock(F, owner(1), LockKind::Read).unwrap();
        t.flock(F, owner(2), LockKind::Read).unwrap();
        assert_eq!(
            t.flock(F, owner(3), LockKind::Write).unwrap_err().errno(),
            libc::EAGAIN
        );
        assert_eq!(
            t.flock(F, owner(1), LockKind::Write).unwrap_err().errno(),
            libc::EAGAIN
        );
        t.funlock(F, owner(2));
        t.flock(F, owner(1), LockKind::Write).unwrap();
        // POSIX and flock locks are independent.
        t.lock(F, owner(2), LockKind::Write, 0, 10, 2).unwrap();
        t.funlock(F, owner(1));
        t.release_owner(F, owner(2));
        assert!(t.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let mut t = LockTable::new();
        for i in 0..MAX_LOCKS_PER_FILE as u64 {
            t.lock(F, owner(1), LockKind::Read, i * 2, i * 2, 1)
                .unwrap();
        }
        let err = t
            .lock(F, owner(1), LockKind::Read, u64::MAX - 1, u64::MAX - 1, 1)
            .unwrap_err();
        assert_eq!(err.errno(), libc::ENOLCK);
        assert_eq!(t.owned(F, owner(1)).len(), MAX_LOCKS_PER_FILE);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Lock(u64, bool, u64, u64),
        Unlock(u64, u64, u64),
        Release(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let range = (0u64..48, 0u64..16).prop_map(|(s, l)| (s, (s + l).min(63)));
        prop_oneof![
            (0u64..3, any::<bool>(), range.clone())
                .prop_map(|(o, w, (s, e))| Step::Lock(o, w, s, e)),
            (0u64..3, range).prop_map(|(o, (s, e))| Step::Unlock(o, s, e)),
            (0u64..3).prop_map(Step::Release),
        ]
    }

    type Model = [[Option<LockKind>; 64]; 3];

    proptest! {
        /// The lock table agrees byte for byte with a naive model, and each
        /// owner's locks stay disjoint and maximally merged.
        #[test]
        fn matches_byte_model(steps in proptest::collection::vec(step(), 1..60)) {
            let mut t = LockTable::new();
            let mut m: Model = [[None; 64]; 3];
            for s in steps {
                match s {
                    Step::Lock(o, w, start, end) => {
                        let kind = if w { LockKind::Write } else { LockKind::Read };
                        let blocked = (0..3u64).filter(|x| *x != o).any(|x| {
                            (start..=end).any(|b| m[x as usize][b as usize].is_some_and(|k| conflicts(kind, k)))
                        });
                        let tested = t.test(F, owner(o), kind, start, end);
                        prop_assert_eq!(tested.is_some(), blocked);
                        if let Some(c) = tested {
                            prop_assert!(c.owner != owner(o) && overlaps(&c, start, end) && conflicts(kind, c.kind));
                        }
                        let r = t.lock(F, owner(o), kind, start, end, o as u32);
                        prop_assert_eq!(r.is_err(), blocked);
                        if !blocked {
                            for b in start..=end { m[o as usize][b as usize] = Some(kind); }
                        }
                    }
                    Step::Unlock(o, start, end) => {
                        t.unlock(F, owner(o), start, end).unwrap();
                        for b in start..=end { m[o as usize][b as usize] = None; }
                    }
                    Step::Release(o) => {
                        t.release_owner(F, owner(o));
                        m[o as usize] = [None; 64];
                    }
                }
                for o in 0..3u64 {
                    let locks = t.owned(F, owner(o));
                    let mut bytes = [None; 64];
                    for l in &locks {
                        prop_assert!(l.start <= l.end && l.end < 64);
                        for b in l.start..=l.end {
                            prop_assert!(bytes[b as usize].is_none(), "overlapping locks of one owner");
                            bytes[b as usize] = Some(l.kind);
                        }
                    }
                    prop_assert_eq!(bytes, m[o as usize]);
                    for w in locks.windows(2) {
                        prop_assert!(!(w[0].kind == w[1].kind && w[0].end + 1 == w[1].start), "unmerged neighbours");
                    }
                }
            }
        }
    }
}
