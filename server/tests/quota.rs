//! Per-PV quota on the state machine of a real brick directory: exact
//! accounting of blocks and inodes for every operation that changes them,
//! EDQUOT at the limit with nothing written past it, EXDEV across PVs, the
//! PV operations (create/expand/delete/archive/retain/recount) and their
//! idempotency, and usage that survives a restart.

use kadalu_proto::{FileId, ROOT_ID};
use kadalu_server::apply::StateMachine;
use kadalu_server::ops::{Command, Operation, Outcome, ReclaimPolicy};
use kadalu_server::quota::PvRecord;
use kadalu_server::records::Time;
use kadalu_server::store::Store;
use prost::bytes::Bytes;
use std::sync::Arc;

const K: u64 = 4096;

struct Brick {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    sm: StateMachine,
    next: u64,
    clock: i64,
}

impl Brick {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 0o755, Time::new(1, 0)).unwrap());
        let sm = StateMachine::new(store.clone()).unwrap();
        Brick {
            dir,
            store,
            sm,
            next: 100,
            clock: 1000,
        }
    }

    fn restart(self) -> Self {
        let Brick {
            dir,
            store,
            mut sm,
            next,
            clock,
        } = self;
        sm.make_durable().unwrap();
        drop(sm);
        drop(store);
        let store = Arc::new(Store::open(dir.path(), 0o755, Time::new(1, 0)).unwrap());
        let mut sm = StateMachine::new(store.clone()).unwrap();
        sm.recover(Time::new(clock, 0)).unwrap();
        Brick {
            dir,
            store,
            sm,
            next,
            clock,
        }
    }

    fn id(&mut self) -> FileId {
        self.next += 1;
        FileId::from_parts(0, self.next)
    }

    fn apply(&mut self, op: Operation) -> Result<Outcome, i32> {
        self.clock += 1;
        let cmd = Command {
            request: None,
            now: Time::new(self.clock, 0),
            op,
        };
        self.sm.apply(&cmd).map_err(|e| e.errno())
    }

    fn create_pv(&mut self, name: &str, bytes: u64, inodes: u64) -> Result<Outcome, i32> {
        let id = self.id();
        self.apply(Operation::CreatePv {
            name: name.into(),
            id,
            byte_limit: bytes,
            inode_limit: inodes,
        })
    }

    fn pv(&self, name: &str) -> PvRecord {
        self.store.pv(name).unwrap().expect("PV registered")
    }

    fn usage(&self, name: &str) -> (u64, u64) {
        let p = self.pv(name);
        (p.bytes_used, p.inodes_used)
    }

    fn file(&mut self, parent: FileId, name: &str) -> Result<FileId, i32> {
        let id = self.id();
        self.apply(Operation::Create {
            parent,
            name: Bytes::copy_from_slice(name.as_bytes()),
            id,
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            truncate: false,
        })?;
        Ok(id)
    }

    fn mkdir(&mut self, parent: FileId, name: &str) -> Result<FileId, i32> {
        let id = self.id();
        self.apply(Operation::Mkdir {
            parent,
            name: Bytes::copy_from_slice(name.as_bytes()),
            id,
            mode: 0o755,
            uid: 0,
            gid: 0,
        })?;
        Ok(id)
    }

    fn write(&mut self, id: FileId, offset: u64, len: usize) -> Result<Outcome, i32> {
        self.apply(Operation::Write {
            id,
            offset,
            data: Bytes::from(vec![7u8; len]),
            append: false,
        })
    }

    fn unlink(&mut self, parent: FileId, name: &str) -> Result<Outcome, i32> {
        let out = self.apply(Operation::Unlink {
            parent,
            name: Bytes::copy_from_slice(name.as_bytes()),
        })?;
        if let Outcome::Removed { orphan: Some(id) } = &out {
            self.apply(Operation::Reclaim { id: *id })?;
        }
        Ok(out)
    }

    fn object_len(&self, id: FileId) -> u64 {
        std::fs::metadata(self.store.object_path(id))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

#[test]
fn writes_truncates_and_holes_count_blocks_exactly() {
    let mut br = Brick::new();
    br.create_pv("pv1", 1 << 30, 0).unwrap();
    let dir = br.pv("pv1").dir();
    assert_eq!(br.usage("pv1"), (0, 0));
    let f = br.file(dir, "f").unwrap();
    assert_eq!(br.usage("pv1"), (0, 1));
    br.write(f, 0, 10).unwrap();
    assert_eq!(br.usage("pv1").0, K);
    // Rewriting counted blocks costs nothing; one byte into the next block costs one.
    br.write(f, 0, 4096).unwrap();
    assert_eq!(br.usage("pv1").0, K);
    br.write(f, 4095, 2).unwrap();
    assert_eq!(br.usage("pv1").0, 2 * K);
    // A sparse write 5 GiB out counts its own block, not the hole.
    br.write(f, 5 << 30, 1).unwrap();
    assert_eq!(br.usage("pv1").0, 3 * K);
    // Shrinking frees what lies past the new end.
    br.apply(Operation::SetAttr {
        id: f,
        mode: None,
        uid: None,
        gid: None,
        size: Some(4097),
        atime: None,
        mtime: None,
    })
    .unwrap();
    assert_eq!(br.usage("pv1").0, 2 * K);
    // fallocate gives blocks; punching a hole takes back only whole blocks.
    br.apply(Operation::Fallocate {
        id: f,
        offset: 8 * K,
        length: 4 * K,
        mode: 0,
    })
    .unwrap();
    assert_eq!(br.usage("pv1").0, 6 * K);
    br.apply(Operation::Fallocate {
        id: f,
        offset: 8 * K + 1,
        length: 2 * K - 2,
        mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    })
    .unwrap();
    assert_eq!(br.usage("pv1").0, 6 * K);
    br.apply(Operation::Fallocate {
        id: f,
        offset: 8 * K,
        length: 2 * K,
        mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    })
    .unwrap();
    assert_eq!(br.usage("pv1").0, 4 * K);
    br.apply(Operation::Truncate { id: f }).unwrap();
    assert_eq!(br.usage("pv1"), (0, 1));
    // copy_file_range charges the destination.
    br.write(f, 0, 3 * K as usize).unwrap();
    let g = br.file(dir, "g").unwrap();
    br.apply(Operation::CopyFileRange {
        id_in: f,
        offset_in: 0,
        id_out: g,
        offset_out: 0,
        length: 3 * K,
    })
    .unwrap();
    assert_eq!(br.usage("pv1"), (6 * K, 2));
    // Files outside any PV count against nothing.
    let outside = br.file(ROOT_ID, "outside").unwrap();
    br.write(outside, 0, 100_000).unwrap();
    assert_eq!(br.usage("pv1"), (6 * K, 2));
}

#[test]
fn hard_links_count_once_and_the_last_reclaim_frees() {
    let mut br = Brick::new();
    br.create_pv("pv1", 1 << 20, 0).unwrap();
    let dir = br.pv("pv1").dir();
    let sub = br.mkdir(dir, "sub").unwrap();
    let f = br.file(sub, "f").unwrap();
    br.write(f, 0, 3 * K as usize).unwrap();
    br.apply(Operation::Link {
        id: f,
        new_parent: dir,
        new_name: Bytes::from_static(b"link"),
    })
    .unwrap();
    assert_eq!(br.usage("pv1"), (3 * K, 2));
    br.unlink(sub, "f").unwrap();
    assert_eq!(br.usage("pv1"), (3 * K, 2));
    br.unlink(dir, "link").unwrap();
    assert_eq!(br.usage("pv1"), (0, 1));
    // Renames inside the PV keep usage.
    let h = br.file(sub, "h").unwrap();
    br.write(h, 0, 1).unwrap();
    br.apply(Operation::Rename {
        parent: sub,
        name: Bytes::from_static(b"h"),
        new_parent: dir,
        new_name: Bytes::from_static(b"h2"),
        flags: 0,
        source: Some(h),
    })
    .unwrap();
    assert_eq!(br.usage("pv1"), (K, 2));
}

#[test]
fn the_limit_is_exact_and_a_refused_write_changes_nothing() {
    let mut br = Brick::new();
    br.create_pv("small", 10 * K, 3).unwrap();
    let dir = br.pv("small").dir();
    let f = br.file(dir, "f").unwrap();
    br.write(f, 0, (8 * K) as usize).unwrap();
    // Three blocks do not fit in the two left: refused whole, file unchanged.
    assert_eq!(br.write(f, 8 * K, (3 * K) as usize), Err(libc::EDQUOT));
    assert_eq!(br.object_len(f), 8 * K);
    assert_eq!(br.usage("small").0, 8 * K);
    br.write(f, 8 * K, (2 * K) as usize).unwrap();
    assert_eq!(br.usage("small").0, 10 * K);
    // At the limit: rewriting is allowed, one new block is not.
    br.write(f, 0, 100).unwrap();
    assert_eq!(br.write(f, 10 * K, 1), Err(libc::EDQUOT));
    assert_eq!(
        br.apply(Operation::Fallocate {
            id: f,
            offset: 20 * K,
            length: K,
            mode: 0,
        }),
        Err(libc::EDQUOT)
    );
    // The inode limit: the PV's own directory is not counted.
    br.file(dir, "g").unwrap();
    br.mkdir(dir, "d").unwrap();
    assert_eq!(br.file(dir, "h"), Err(libc::EDQUOT));
    assert_eq!(br.mkdir(dir, "e"), Err(libc::EDQUOT));
    assert_eq!(br.usage("small"), (10 * K, 3));
    // Expanding lets it continue.
    br.apply(Operation::ExpandPv {
        name: "small".into(),
        byte_limit: 20 * K,
        inode_limit: 4,
    })
    .unwrap();
    br.write(f, 10 * K, 1).unwrap();
    br.file(dir, "h").unwrap();
    assert_eq!(br.usage("small"), (11 * K, 4));
    // Never shrinks.
    assert_eq!(
        br.apply(Operation::ExpandPv {
            name: "small".into(),
            byte_limit: 19 * K,
            inode_limit: 0,
        }),
        Err(libc::EINVAL)
    );
    let s = br.store.statfs_of(dir).unwrap();
    assert_eq!(s.blocks * u64::from(s.bsize), 20 * K);
    assert_eq!(s.bfree * u64::from(s.bsize), 9 * K);
    assert_eq!((s.files, s.ffree), (4, 0));
}

#[test]
fn pvs_are_separate_file_systems() {
    let mut br = Brick::new();
    br.create_pv("a", 1 << 20, 0).unwrap();
    br.create_pv("b", 1 << 20, 0).unwrap();
    let (a, b) = (br.pv("a").dir(), br.pv("b").dir());
    let f = br.file(a, "f").unwrap();
    let rename = |from: FileId, to: FileId, name: &str| Operation::Rename {
        parent: from,
        name: Bytes::copy_from_slice(name.as_bytes()),
        new_parent: to,
        new_name: Bytes::from_static(b"moved"),
        flags: 0,
        source: None,
    };
    assert_eq!(br.apply(rename(a, b, "f")), Err(libc::EXDEV));
    assert_eq!(br.apply(rename(a, ROOT_ID, "f")), Err(libc::EXDEV));
    let g = br.file(ROOT_ID, "g").unwrap();
    assert_eq!(br.apply(rename(ROOT_ID, a, "g")), Err(libc::EXDEV));
    assert_eq!(
        br.apply(Operation::Link {
            id: f,
            new_parent: b,
            new_name: Bytes::from_static(b"l"),
        }),
        Err(libc::EXDEV)
    );
    assert_eq!(
        br.apply(Operation::Link {
            id: g,
            new_parent: a,
            new_name: Bytes::from_static(b"l"),
        }),
        Err(libc::EXDEV)
    );
    // A PV's directory is neither renamed nor removed by file-system calls.
    assert_eq!(br.apply(rename(ROOT_ID, ROOT_ID, "a")), Err(libc::EBUSY));
    br.mkdir(ROOT_ID, "empty").unwrap();
    assert_eq!(
        br.apply(Operation::Rmdir {
            parent: ROOT_ID,
            name: Bytes::from_static(b"b"),
        }),
        Err(libc::EBUSY)
    );
}

#[test]
fn create_is_idempotent_and_names_are_checked() {
    let mut br = Brick::new();
    assert_eq!(br.create_pv("pv", 1 << 20, 0), Ok(Outcome::Done));
    let dir = br.pv("pv").dir();
    // The same name and limits again: done, the same PV.
    assert_eq!(br.create_pv("pv", 1 << 20, 0), Ok(Outcome::Done));
    assert_eq!(br.pv("pv").dir(), dir);
    assert_eq!(br.create_pv("pv", 2 << 20, 0), Err(libc::EEXIST));
    br.mkdir(ROOT_ID, "plain").unwrap();
    assert_eq!(br.create_pv("plain", 1 << 20, 0), Err(libc::EEXIST));
    for bad in ["", "..", "a/b", "Big", "archived-x"] {
        assert_eq!(br.create_pv(bad, 1 << 20, 0), Err(libc::EINVAL), "{bad:?}");
    }
    assert_eq!(br.create_pv("zero", 0, 0), Err(libc::EINVAL));
}

#[test]
fn delete_archive_and_retain() {
    let mut br = Brick::new();
    for name in ["del", "arc", "ret"] {
        br.create_pv(name, 1 << 20, 0).unwrap();
        let dir = br.pv(name).dir();
        let sub = br.mkdir(dir, "sub").unwrap();
        let f = br.file(sub, "f").unwrap();
        br.write(f, 0, 5000).unwrap();
    }
    let del_file = {
        let dir = br.pv("del").dir();
        br.store.entry_id(dir, b"sub").unwrap().unwrap()
    };
    let del = |br: &mut Brick, name: &str, policy| {
        br.apply(Operation::DeletePv {
            name: name.into(),
            policy,
        })
    };
    assert_eq!(
        del(&mut br, "del", ReclaimPolicy::Delete),
        Ok(Outcome::PvDeleted {
            existed: true,
            archived_as: String::new()
        })
    );
    assert!(br.store.pv("del").unwrap().is_none());
    assert!(br.store.entry_id(ROOT_ID, b"del").unwrap().is_none());
    assert!(!br.store.exists(del_file).unwrap());
    // Deleting again is done, and says the PV was not there.
    assert_eq!(
        del(&mut br, "del", ReclaimPolicy::Delete),
        Ok(Outcome::PvDeleted {
            existed: false,
            archived_as: String::new()
        })
    );
    assert_eq!(
        del(&mut br, "arc", ReclaimPolicy::Archive),
        Ok(Outcome::PvDeleted {
            existed: true,
            archived_as: "archived-arc".into()
        })
    );
    let archived = br
        .store
        .entry_id(ROOT_ID, b"archived-arc")
        .unwrap()
        .unwrap();
    assert!(br.store.entry_id(archived, b"sub").unwrap().is_some());
    // A second PV of the same name archives next to the first.
    br.create_pv("arc", 1 << 20, 0).unwrap();
    assert_eq!(
        del(&mut br, "arc", ReclaimPolicy::Archive),
        Ok(Outcome::PvDeleted {
            existed: true,
            archived_as: "archived-arc-1".into()
        })
    );
    assert_eq!(
        del(&mut br, "ret", ReclaimPolicy::Retain),
        Ok(Outcome::PvDeleted {
            existed: true,
            archived_as: String::new()
        })
    );
    assert_eq!(br.usage("ret"), (2 * K, 2));
    // After a restart, objects of deleted files are gone from disk.
    let br = br.restart();
    assert!(!br.store.object_path(del_file).exists());
}

#[test]
fn usage_survives_restart_and_recount_repairs_drift() {
    let mut br = Brick::new();
    br.create_pv("pv", 1 << 30, 0).unwrap();
    br.create_pv("other", 1 << 30, 0).unwrap();
    let dir = br.pv("pv").dir();
    for i in 0..5 {
        let f = br.file(dir, &format!("f{i}")).unwrap();
        br.write(f, 0, 10_000).unwrap();
    }
    let want = (5 * 3 * K, 5);
    assert_eq!(br.usage("pv"), want);
    let mut br = br.restart();
    assert_eq!(br.usage("pv"), want);
    let out = br
        .apply(Operation::RecountPv {
            name: String::new(),
        })
        .unwrap();
    let Outcome::Recounted(drifts) = out else {
        panic!("{out:?}")
    };
    assert_eq!(drifts.len(), 2);
    assert!(drifts
        .iter()
        .all(|d| d.bytes_before == d.bytes_after && d.inodes_before == d.inodes_after));
    br.store.debug_set_pv_usage("pv", 1, 99).unwrap();
    let Outcome::Recounted(drifts) = br
        .apply(Operation::RecountPv { name: "pv".into() })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(drifts.len(), 1);
    assert_eq!((drifts[0].bytes_before, drifts[0].inodes_before), (1, 99));
    assert_eq!((drifts[0].bytes_after, drifts[0].inodes_after), want);
    assert_eq!(br.usage("pv"), want);
    assert_eq!(
        br.apply(Operation::RecountPv {
            name: "nope".into()
        }),
        Err(libc::ENOENT)
    );
}
