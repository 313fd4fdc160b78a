//! The state machine on a real brick directory: every operation, its errnos,
//! idempotent replay, request deduplication, the orphan lifecycle and
//! restarts.

use kadalu_proto::brick::{Attr, FileKind};
use kadalu_proto::{FileId, ROOT_ID};
use kadalu_server::applier::Applier;
use kadalu_server::apply::StateMachine;
use kadalu_server::dedupe;
use kadalu_server::ops::{Command, Operation, Outcome, RequestId};
use kadalu_server::records::Time;
use kadalu_server::store::Store;
use prost::bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

struct Brick {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    sm: StateMachine,
    next: u64,
    clock: i64,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
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

    /// Closes and reopens the brick from disk, as a restart does.
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
        FileId::from_parts(0xfeed, self.next)
    }

    fn cmd(&mut self, op: Operation) -> Command {
        self.clock += 1;
        Command {
            request: None,
            now: Time::new(self.clock, 0),
            op,
        }
    }

    fn apply(&mut self, op: Operation) -> Result<Outcome, i32> {
        let cmd = self.cmd(op);
        self.sm.apply(&cmd).map_err(|e| e.errno())
    }

    fn attr_of(o: Outcome) -> Attr {
        match o {
            Outcome::Attr(a) | Outcome::Created { attr: a, .. } => a,
            other => panic!("no attr in {other:?}"),
        }
    }

    fn id_of(a: &Attr) -> FileId {
        FileId::from_wire(&a.id).unwrap()
    }

    fn create(&mut self, parent: FileId, name: &str) -> FileId {
        let id = self.id();
        let o = self
            .apply(Operation::Create {
                parent,
                name: b(name),
                id,
                mode: 0o644,
                uid: 1,
                gid: 1,
                exclusive: true,
                truncate: false,
            })
            .unwrap();
        Self::id_of(&Self::attr_of(o))
    }

    fn mkdir(&mut self, parent: FileId, name: &str) -> Result<FileId, i32> {
        let id = self.id();
        let o = self.apply(Operation::Mkdir {
            parent,
            name: b(name),
            id,
            mode: 0o755,
            uid: 0,
            gid: 0,
        })?;
        Ok(Self::id_of(&Self::attr_of(o)))
    }

    fn write(&mut self, id: FileId, offset: u64, data: &[u8]) -> Outcome {
        self.apply(Operation::Write {
            id,
            offset,
            data: Bytes::copy_from_slice(data),
            append: false,
        })
        .unwrap()
    }

    fn rename(
        &mut self,
        parent: FileId,
        name: &str,
        np: FileId,
        nn: &str,
        flags: u32,
    ) -> Result<Outcome, i32> {
        let source = self.store.entry_id(parent, name.as_bytes()).unwrap();
        self.apply(Operation::Rename {
            parent,
            name: b(name),
            new_parent: np,
            new_name: b(nn),
            flags,
            source,
        })
    }

    fn lookup(&self, parent: FileId, name: &str) -> Result<Attr, i32> {
        self.store
            .lookup(parent, name.as_bytes())
            .map_err(|e| e.errno())
    }

    fn names(&self, dir: FileId) -> Vec<String> {
        let r = self.store.readdir(dir, 0, 0, false).unwrap();
        assert!(r.eof);
        r.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }

    /// Path -> (kind, perm, nlink, size, data) of the whole namespace.
    fn dump(&self) -> BTreeMap<String, (i32, u32, u32, u64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(String::new(), ROOT_ID)];
        while let Some((path, dir)) = todo.pop() {
            let a = self.store.getattr(dir).unwrap();
            out.insert(format!("{path}/"), (a.kind, a.perm, a.nlink, 0, Vec::new()));
            let mut cursor = 0;
            loop {
                let r = self.store.readdir(dir, cursor, 7, true).unwrap();
                for e in &r.entries {
                    cursor = e.cursor;
                    let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                    let id = FileId::from_wire(&e.id).unwrap();
                    let a = e.attr.clone().unwrap();
                    if a.kind == FileKind::Directory as i32 {
                        todo.push((p, id));
                    } else {
                        let data = if a.kind == FileKind::Regular as i32 {
                            self.store.read(id, 0, 1 << 20).unwrap().to_vec()
                        } else {
                            Vec::new()
                        };
                        out.insert(p, (a.kind, a.perm, a.nlink, a.size, data));
                    }
                }
                if r.eof {
                    break;
                }
            }
        }
        out
    }
}

#[test]
fn create_write_read_lookup_readdir() {
    let mut t = Brick::new();
    let f = t.create(ROOT_ID, "hello");
    assert_eq!(
        t.write(f, 0, b"world"),
        Outcome::Written {
            written: 5,
            size: 5
        }
    );
    assert_eq!(&t.store.read(f, 0, 100).unwrap()[..], b"world");
    assert_eq!(&t.store.read(f, 2, 2).unwrap()[..], b"rl");
    assert!(t.store.read(f, 100, 10).unwrap().is_empty());
    let a = t.lookup(ROOT_ID, "hello").unwrap();
    assert_eq!((a.size, a.perm, a.nlink, a.uid), (5, 0o644, 1, 1));
    assert_eq!(a.kind, FileKind::Regular as i32);
    assert_eq!(t.names(ROOT_ID), vec!["hello"]);
    assert_eq!(t.lookup(ROOT_ID, "nope").unwrap_err(), libc::ENOENT);
    assert_eq!(t.lookup(ROOT_ID, ".").unwrap().id, ROOT_ID.to_wire());
    assert_eq!(t.lookup(ROOT_ID, "..").unwrap().id, ROOT_ID.to_wire());
    assert_eq!(t.store.lookup(f, b"x").unwrap_err().errno(), libc::ENOTDIR);
    // Writing past the end leaves a hole and the real block count.
    t.write(f, 10 << 30, b"!");
    let a = t.store.getattr(f).unwrap();
    assert_eq!(a.size, (10 << 30) + 1);
    assert!(a.blocks < 64, "sparse file allocates little: {}", a.blocks);
    // Append goes to the end whatever the offset.
    let o = t
        .apply(Operation::Write {
            id: f,
            offset: 0,
            data: b("+"),
            append: true,
        })
        .unwrap();
    assert_eq!(
        o,
        Outcome::Written {
            written: 1,
            size: (10 << 30) + 2
        }
    );
    // Create without O_EXCL opens (and truncates) the existing file.
    let id = t.id();
    let o = t
        .apply(Operation::Create {
            parent: ROOT_ID,
            name: b("hello"),
            id,
            mode: 0o600,
            uid: 0,
            gid: 0,
            exclusive: false,
            truncate: true,
        })
        .unwrap();
    let Outcome::Created { attr, created } = o else {
        panic!()
    };
    assert!(!created);
    assert_eq!((Brick::id_of(&attr), attr.size, attr.perm), (f, 0, 0o644));
    let o = t.apply(Operation::Create {
        parent: ROOT_ID,
        name: b("hello"),
        id,
        mode: 0o600,
        uid: 0,
        gid: 0,
        exclusive: true,
        truncate: false,
    });
    assert_eq!(o.unwrap_err(), libc::EEXIST);
}

#[test]
fn directories_count_links_and_refuse_bad_removals() {
    let mut t = Brick::new();
    let d = t.mkdir(ROOT_ID, "d").unwrap();
    assert_eq!(t.store.getattr(ROOT_ID).unwrap().nlink, 3);
    assert_eq!(t.store.getattr(d).unwrap().nlink, 2);
    assert_eq!(t.mkdir(ROOT_ID, "d").unwrap_err(), libc::EEXIST);
    assert_eq!(t.mkdir(ROOT_ID, ".").unwrap_err(), libc::EEXIST);
    assert_eq!(t.mkdir(ROOT_ID, "..").unwrap_err(), libc::EEXIST);
    let sub = t.mkdir(d, "sub").unwrap();
    assert_eq!(t.lookup(sub, "..").unwrap().id, d.to_wire());
    t.create(d, "f");
    let rmdir = |t: &mut Brick, p, n: &str| {
        t.apply(Operation::Rmdir {
            parent: p,
            name: b(n),
        })
    };
    let unlink = |t: &mut Brick, p, n: &str| {
        t.apply(Operation::Unlink {
            parent: p,
            name: b(n),
        })
    };
    assert_eq!(rmdir(&mut t, ROOT_ID, "d").unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(rmdir(&mut t, d, "f").unwrap_err(), libc::ENOTDIR);
    assert_eq!(rmdir(&mut t, d, ".").unwrap_err(), libc::EINVAL);
    assert_eq!(rmdir(&mut t, d, "..").unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(rmdir(&mut t, d, "gone").unwrap_err(), libc::ENOENT);
    assert_eq!(unlink(&mut t, d, "sub").unwrap_err(), libc::EISDIR);
    assert_eq!(unlink(&mut t, d, ".").unwrap_err(), libc::EISDIR);
    assert_eq!(unlink(&mut t, d, "a/b").unwrap_err(), libc::EINVAL);
    rmdir(&mut t, d, "sub").unwrap();
    assert_eq!(t.store.getattr(d).unwrap().nlink, 2);
    // The removed directory is an orphan (fstat of it while open gives nlink 0)
    // into which nothing can be created, until reclaimed.
    assert_eq!(t.store.getattr(sub).unwrap().nlink, 0);
    assert_eq!(t.mkdir(sub, "x").unwrap_err(), libc::ENOENT);
    assert!(t
        .store
        .readdir(sub, 0, 0, false)
        .unwrap()
        .entries
        .is_empty());
    t.apply(Operation::Reclaim { id: sub }).unwrap();
    assert_eq!(t.store.getattr(sub).unwrap_err().errno(), libc::ESTALE);
    unlink(&mut t, d, "f").unwrap();
    rmdir(&mut t, ROOT_ID, "d").unwrap();
    assert_eq!(t.store.getattr(ROOT_ID).unwrap().nlink, 2);
    assert!(t.names(ROOT_ID).is_empty());
    // Parent that is not a directory / does not exist.
    let f = t.create(ROOT_ID, "file");
    assert_eq!(t.mkdir(f, "x").unwrap_err(), libc::ENOTDIR);
    assert_eq!(t.mkdir(FileId(12345), "x").unwrap_err(), libc::ESTALE);
    assert_eq!(
        t.mkdir(ROOT_ID, &"n".repeat(256)).unwrap_err(),
        libc::ENAMETOOLONG
    );
    assert!(t.mkdir(ROOT_ID, &"n".repeat(255)).is_ok());
}

#[test]
fn mtime_and_ctime_follow_linux() {
    let mut t = Brick::new();
    let f = t.create(ROOT_ID, "f");
    let root_before = t.store.getattr(ROOT_ID).unwrap();
    t.write(f, 0, b"x");
    let a = t.store.getattr(f).unwrap();
    assert_eq!(a.mtime, a.ctime);
    assert_eq!(
        t.store.getattr(ROOT_ID).unwrap().mtime,
        root_before.mtime,
        "writes leave the parent alone"
    );
    // A link changes the file's ctime only.
    let before = t.store.getattr(f).unwrap();
    t.apply(Operation::Link {
        id: f,
        new_parent: ROOT_ID,
        new_name: b("g"),
    })
    .unwrap();
    let after = t.store.getattr(f).unwrap();
    assert_eq!(after.mtime, before.mtime);
    assert_ne!(after.ctime, before.ctime);
    assert_eq!(after.nlink, 2);
    assert_ne!(t.store.getattr(ROOT_ID).unwrap().mtime, root_before.mtime);
}

#[test]
fn setattr_mode_owner_size_times() {
    let mut t = Brick::new();
    let f = t.create(ROOT_ID, "f");
    t.write(f, 0, b"0123456789");
    let set = |t: &mut Brick, mode, uid, size, mtime| {
        t.apply(Operation::SetAttr {
            id: f,
            mode,
            uid,
            gid: None,
            size,
            atime: None,
            mtime,
        })
        .map(Brick::attr_of)
    };
    let a = set(&mut t, Some(0o104755), None, None, None).unwrap();
    assert_eq!(a.perm, 0o4755);
    // chown drops set-user-id, and set-group-id with group execute.
    set(&mut t, Some(0o6755), None, None, None).unwrap();
    let a = set(&mut t, None, Some(5), None, None).unwrap();
    assert_eq!((a.perm, a.uid), (0o755, 5));
    set(&mut t, Some(0o2745), None, None, None).unwrap();
    let a = set(&mut t, None, Some(6), None, None).unwrap();
    assert_eq!(a.perm, 0o2745, "set-group-id without group execute stays");
    let a = set(&mut t, None, None, Some(4), None).unwrap();
    assert_eq!(a.size, 4);
    assert_eq!(&t.store.read(f, 0, 100).unwrap()[..], b"0123");
    let a = set(&mut t, None, None, None, Some(Time::new(-5, 7))).unwrap();
    assert_eq!(a.mtime.unwrap().sec, -5);
    assert_eq!(a.mtime.unwrap().nsec, 7);
    assert_eq!(
        set(&mut t, None, None, Some(u64::MAX), None).unwrap_err(),
        libc::EINVAL
    );
    let d = t.mkdir(ROOT_ID, "d").unwrap();
    let r = t.apply(Operation::SetAttr {
        id: d,
        mode: None,
        uid: None,
        gid: None,
        size: Some(0),
        atime: None,
        mtime: None,
    });
    assert_eq!(r.unwrap_err(), libc::EISDIR);
    let r = t
        .apply(Operation::Truncate { id: f })
        .map(Brick::attr_of)
        .unwrap();
    assert_eq!(r.size, 0);
}

#[test]
fn rename_semantics() {
    let mut t = Brick::new();
    let a = t.mkdir(ROOT_ID, "a").unwrap();
    let b_ = t.mkdir(ROOT_ID, "b").unwrap();
    let asub = t.mkdir(a, "sub").unwrap();
    let f = t.create(ROOT_ID, "f");
    let g = t.create(ROOT_ID, "g");
    t.create(b_, "inside");
    let e = t.mkdir(ROOT_ID, "empty").unwrap();

    assert_eq!(
        t.rename(ROOT_ID, "missing", ROOT_ID, "x", 0).unwrap_err(),
        libc::ENOENT
    );
    assert_eq!(
        t.rename(ROOT_ID, "a", asub, "x", 0).unwrap_err(),
        libc::EINVAL,
        "into own subtree"
    );
    assert_eq!(
        t.rename(ROOT_ID, "a", a, "x", 0).unwrap_err(),
        libc::EINVAL,
        "into itself"
    );
    assert_eq!(
        t.rename(a, "sub", ROOT_ID, "a", 0).unwrap_err(),
        libc::ENOTEMPTY,
        "over an ancestor"
    );
    assert_eq!(
        t.rename(ROOT_ID, "a", ROOT_ID, "f", 0).unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(
        t.rename(ROOT_ID, "f", ROOT_ID, "a", 0).unwrap_err(),
        libc::EISDIR
    );
    assert_eq!(
        t.rename(ROOT_ID, "a", ROOT_ID, "b", 0).unwrap_err(),
        libc::ENOTEMPTY
    );
    assert_eq!(
        t.rename(ROOT_ID, "f", ROOT_ID, "g", 1).unwrap_err(),
        libc::EEXIST
    );
    assert_eq!(
        t.rename(ROOT_ID, "f", ROOT_ID, "nope", 2).unwrap_err(),
        libc::ENOENT
    );
    assert_eq!(
        t.rename(ROOT_ID, "f", ROOT_ID, "g", 3).unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        t.rename(ROOT_ID, "f", ROOT_ID, "g", 8).unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        t.rename(ROOT_ID, ".", ROOT_ID, "g", 0).unwrap_err(),
        libc::EBUSY
    );
    assert_eq!(
        t.rename(ROOT_ID, "f", ROOT_ID, "..", 0).unwrap_err(),
        libc::EBUSY
    );
    assert_eq!(
        t.rename(ROOT_ID, "f", ROOT_ID, "..", 1).unwrap_err(),
        libc::EEXIST
    );
    let unchanged = t.dump();

    // File over file: the target's inode goes.
    t.rename(ROOT_ID, "f", ROOT_ID, "g", 0).unwrap();
    assert_eq!(t.lookup(ROOT_ID, "g").unwrap().id, f.to_wire());
    assert_eq!(t.lookup(ROOT_ID, "f").unwrap_err(), libc::ENOENT);
    assert_ne!(t.dump(), unchanged);
    t.sm.make_durable().unwrap();
    assert_eq!(
        t.store.getattr(g).unwrap().nlink,
        0,
        "target kept as orphan until reclaimed"
    );
    t.apply(Operation::Reclaim { id: g }).unwrap();
    assert_eq!(t.store.getattr(g).unwrap_err().errno(), libc::ESTALE);

    // Dir over empty dir, across parents: nlinks and parent pointers move.
    t.rename(a, "sub", ROOT_ID, "empty", 0).unwrap();
    assert_eq!(
        t.store.getattr(e).unwrap().nlink,
        0,
        "replaced directory is an orphan"
    );
    assert_eq!(t.store.orphans().unwrap(), vec![e]);
    assert_eq!(t.lookup(asub, "..").unwrap().id, ROOT_ID.to_wire());
    assert_eq!(t.store.getattr(a).unwrap().nlink, 2);
    assert_eq!(
        t.store.getattr(ROOT_ID).unwrap().nlink,
        2 + 3,
        "a, b, empty(=sub)"
    );

    // Hard links to the same inode: rename does nothing.
    t.apply(Operation::Link {
        id: f,
        new_parent: ROOT_ID,
        new_name: b("g2"),
    })
    .unwrap();
    t.rename(ROOT_ID, "g", ROOT_ID, "g2", 0).unwrap();
    assert!(t.lookup(ROOT_ID, "g").is_ok() && t.lookup(ROOT_ID, "g2").is_ok());

    // Exchange a directory and a file between parents.
    let before_root = t.store.getattr(ROOT_ID).unwrap().nlink;
    let before_b = t.store.getattr(b_).unwrap().nlink;
    t.rename(ROOT_ID, "empty", b_, "inside", 2).unwrap();
    assert_eq!(t.lookup(b_, "inside").unwrap().id, asub.to_wire());
    assert_eq!(t.lookup(asub, "..").unwrap().id, b_.to_wire());
    assert_eq!(
        t.lookup(ROOT_ID, "empty").unwrap().kind,
        FileKind::Regular as i32
    );
    assert_eq!(t.store.getattr(ROOT_ID).unwrap().nlink, before_root - 1);
    assert_eq!(t.store.getattr(b_).unwrap().nlink, before_b + 1);
    // Exchange into own subtree is refused.
    t.mkdir(asub, "deep").unwrap();
    assert_eq!(
        t.rename(b_, "inside", asub, "deep", 2).unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        t.rename(asub, "deep", b_, "inside", 2).unwrap_err(),
        libc::EINVAL
    );
}

#[test]
fn failed_operations_change_nothing() {
    let mut t = Brick::new();
    let d = t.mkdir(ROOT_ID, "d").unwrap();
    let f = t.create(d, "f");
    t.write(f, 0, b"data");
    t.mkdir(d, "sub").unwrap();
    let before = t.dump();
    let bad: Vec<Operation> = vec![
        Operation::Unlink {
            parent: d,
            name: b("sub"),
        },
        Operation::Rmdir {
            parent: ROOT_ID,
            name: b("d"),
        },
        Operation::Mkdir {
            parent: d,
            name: b("f"),
            id: FileId(999),
            mode: 0o777,
            uid: 0,
            gid: 0,
        },
        Operation::Rename {
            parent: ROOT_ID,
            name: b("d"),
            new_parent: d,
            new_name: b("x"),
            flags: 0,
            source: None,
        },
        Operation::Write {
            id: d,
            offset: 0,
            data: b("x"),
            append: false,
        },
        Operation::Write {
            id: f,
            offset: i64::MAX as u64,
            data: b("x"),
            append: false,
        },
        Operation::Symlink {
            parent: d,
            name: b("s"),
            id: FileId(998),
            target: Bytes::from(vec![b'a'; 4096]),
            uid: 0,
            gid: 0,
        },
        Operation::Mknod {
            parent: d,
            name: b("dir"),
            id: FileId(997),
            mode: libc::S_IFDIR | 0o755,
            rdev: 0,
            uid: 0,
            gid: 0,
        },
        Operation::Link {
            id: d,
            new_parent: ROOT_ID,
            new_name: b("dirlink"),
        },
        Operation::SetXattr {
            id: f,
            name: b("user.x"),
            value: Bytes::from(vec![0u8; 65537]),
            flags: 0,
        },
        Operation::CopyFileRange {
            id_in: f,
            offset_in: 0,
            id_out: d,
            offset_out: 0,
            length: 4,
        },
    ];
    let expect = [
        libc::EISDIR,
        libc::ENOTEMPTY,
        libc::EEXIST,
        libc::EINVAL,
        libc::EISDIR,
        libc::EFBIG,
        libc::ENAMETOOLONG,
        libc::EPERM,
        libc::EPERM,
        libc::E2BIG,
        libc::EISDIR,
    ];
    for (op, errno) in bad.into_iter().zip(expect) {
        let shown = format!("{op:?}").chars().take(80).collect::<String>();
        assert_eq!(t.apply(op).unwrap_err(), errno, "{shown}");
        assert_eq!(t.dump(), before, "{shown} changed the brick");
    }
}

#[test]
fn replayed_commands_are_harmless() {
    let mut t = Brick::new();
    let id = t.id();
    let create = t.cmd(Operation::Create {
        parent: ROOT_ID,
        name: b("f"),
        id,
        mode: 0o600,
        uid: 0,
        gid: 0,
        exclusive: true,
        truncate: false,
    });
    let first = t.sm.apply(&create).unwrap();
    let again = t.sm.apply(&create).unwrap();
    assert_eq!(first, again);
    let dir_id = t.id();
    let mkdir = t.cmd(Operation::Mkdir {
        parent: ROOT_ID,
        name: b("d"),
        id: dir_id,
        mode: 0o755,
        uid: 0,
        gid: 0,
    });
    t.sm.apply(&mkdir).unwrap();
    t.sm.apply(&mkdir).unwrap();
    assert_eq!(
        t.store.getattr(ROOT_ID).unwrap().nlink,
        3,
        "mkdir counted once"
    );
    let link = t.cmd(Operation::Link {
        id,
        new_parent: dir_id,
        new_name: b("l"),
    });
    t.sm.apply(&link).unwrap();
    t.sm.apply(&link).unwrap();
    assert_eq!(t.store.getattr(id).unwrap().nlink, 2, "link counted once");
    let rename = t.cmd(Operation::Rename {
        parent: ROOT_ID,
        name: b("f"),
        new_parent: dir_id,
        new_name: b("g"),
        flags: 0,
        source: Some(id),
    });
    t.sm.apply(&rename).unwrap();
    t.sm.apply(&rename).unwrap();
    assert_eq!(t.names(dir_id), vec!["l", "g"]);
    assert!(t.names(ROOT_ID) == vec!["d"]);
}

fn with_request(mut c: Command, client: u128, seq: u64, ack_below: u64) -> Command {
    c.request = Some(RequestId {
        client,
        seq,
        ack_below,
    });
    c
}

#[test]
fn repeated_requests_get_the_recorded_outcome() {
    let mut t = Brick::new();
    t.create(ROOT_ID, "f");
    let unlink = t.cmd(Operation::Unlink {
        parent: ROOT_ID,
        name: b("f"),
    });
    let unlink = with_request(unlink, 7, 1, 0);
    assert!(matches!(
        t.sm.apply(&unlink).unwrap(),
        Outcome::Removed { .. }
    ));
    // Without deduplication this would be ENOENT.
    assert!(matches!(
        t.sm.apply(&unlink).unwrap(),
        Outcome::Removed { .. }
    ));
    // A failure is recorded too, and stays the answer even once it would succeed.
    let mk = t.cmd(Operation::Mkdir {
        parent: ROOT_ID,
        name: b("x/y"),
        id: FileId(5000),
        mode: 0o755,
        uid: 0,
        gid: 0,
    });
    let mk = with_request(mk, 7, 2, 0);
    assert_eq!(t.sm.apply(&mk).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(t.sm.apply(&mk).unwrap_err().errno(), libc::EINVAL);
    // The same seq for a different operation is refused.
    let other = with_request(t.cmd(Operation::Reclaim { id: FileId(1234) }), 7, 1, 0);
    assert_eq!(t.sm.apply(&other).unwrap_err().errno(), libc::EINVAL);
    // Another client's seq 1 is its own.
    let other_client = with_request(t.cmd(Operation::Reclaim { id: FileId(1234) }), 8, 1, 0);
    assert_eq!(t.sm.apply(&other_client).unwrap(), Outcome::Done);
    // ack_below forgets.
    let store = t.store.clone();
    let count = || dedupe::record_count(&store).unwrap();
    assert_eq!(count(), 3);
    let later = with_request(t.cmd(Operation::Reclaim { id: FileId(1) }), 7, 3, 3);
    t.sm.apply(&later).unwrap();
    assert_eq!(count(), 2, "client 7 keeps only seq 3");
    // The window bounds one client that never acknowledges.
    for seq in 10..10 + dedupe::WINDOW + 50 {
        let c = with_request(t.cmd(Operation::Reclaim { id: FileId(1) }), 9, seq, 0);
        t.sm.apply(&c).unwrap();
    }
    assert!(count() <= 2 + dedupe::WINDOW + 1);
}

#[test]
fn xattrs() {
    let mut t = Brick::new();
    let f = t.create(ROOT_ID, "f");
    let set = |t: &mut Brick, name: &str, value: &[u8], flags| {
        t.apply(Operation::SetXattr {
            id: f,
            name: b(name),
            value: Bytes::copy_from_slice(value),
            flags,
        })
    };
    assert_eq!(set(&mut t, "user.a", b"1", 2).unwrap_err(), libc::ENODATA);
    set(&mut t, "user.a", b"1", 1).unwrap();
    assert_eq!(set(&mut t, "user.a", b"2", 1).unwrap_err(), libc::EEXIST);
    set(&mut t, "user.a", b"2", 2).unwrap();
    set(&mut t, "trusted.b", b"", 0).unwrap();
    assert_eq!(
        set(&mut t, "bogus.b", b"", 0).unwrap_err(),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        set(&mut t, &format!("user.{}", "x".repeat(251)), b"", 0).unwrap_err(),
        libc::ERANGE
    );
    assert_eq!(
        set(&mut t, "user.big", &vec![0; 65537], 0).unwrap_err(),
        libc::E2BIG
    );
    set(&mut t, "user.max", &vec![7; 65536], 0).unwrap();
    assert_eq!(set(&mut t, "user.a", b"", 4).unwrap_err(), libc::EINVAL);
    assert_eq!(&t.store.getxattr(f, b"user.a").unwrap()[..], b"2");
    assert_eq!(
        t.store.getxattr(f, b"user.zz").unwrap_err().errno(),
        libc::ENODATA
    );
    let mut names = t.store.listxattr(f).unwrap();
    names.sort();
    assert_eq!(names, vec![b("trusted.b"), b("user.a"), b("user.max")]);
    t.apply(Operation::RemoveXattr {
        id: f,
        name: b("user.a"),
    })
    .unwrap();
    let r = t.apply(Operation::RemoveXattr {
        id: f,
        name: b("user.a"),
    });
    assert_eq!(r.unwrap_err(), libc::ENODATA);
    // Xattrs go with the inode.
    t.apply(Operation::Unlink {
        parent: ROOT_ID,
        name: b("f"),
    })
    .unwrap();
    t.apply(Operation::Reclaim { id: f }).unwrap();
    assert_eq!(t.store.listxattr(f).unwrap_err().errno(), libc::ESTALE);
    // A neighbour id's xattrs are untouched by that.
    let g = t.create(ROOT_ID, "g");
    t.apply(Operation::SetXattr {
        id: g,
        name: b("user.k"),
        value: b("v"),
        flags: 0,
    })
    .unwrap();
    assert_eq!(t.store.listxattr(g).unwrap(), vec![b("user.k")]);
}

#[test]
fn special_files_symlinks_and_setgid_dirs() {
    let mut t = Brick::new();
    let mk = |t: &mut Brick, name: &str, mode: u32, rdev: u64| {
        let id = t.id();
        t.apply(Operation::Mknod {
            parent: ROOT_ID,
            name: b(name),
            id,
            mode,
            rdev,
            uid: 3,
            gid: 4,
        })
        .map(Brick::attr_of)
    };
    assert_eq!(
        mk(&mut t, "fifo", libc::S_IFIFO | 0o644, 9).unwrap().kind,
        FileKind::Fifo as i32
    );
    let c = mk(&mut t, "chr", libc::S_IFCHR | 0o600, 0x0103).unwrap();
    assert_eq!((c.kind, c.rdev), (FileKind::CharDevice as i32, 0x0103));
    assert_eq!(
        mk(&mut t, "sock", libc::S_IFSOCK | 0o600, 0).unwrap().kind,
        FileKind::Socket as i32
    );
    assert_eq!(
        mk(&mut t, "blk", libc::S_IFBLK | 0o600, 5).unwrap().kind,
        FileKind::BlockDevice as i32
    );
    assert_eq!(
        mk(&mut t, "reg", 0o600, 0).unwrap().kind,
        FileKind::Regular as i32
    );
    assert_eq!(
        mk(&mut t, "dir", libc::S_IFDIR | 0o600, 0).unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        mk(&mut t, "lnk", libc::S_IFLNK | 0o600, 0).unwrap_err(),
        libc::EINVAL
    );
    // No device node ever appears in the brick directory.
    let nodes = walk(t.dir.path());
    assert!(
        nodes.iter().all(|(_, ft)| ft.is_file() || ft.is_dir()),
        "{nodes:?}"
    );

    let id = t.id();
    let s = t
        .apply(Operation::Symlink {
            parent: ROOT_ID,
            name: b("link"),
            id,
            target: b("../../../etc/passwd"),
            uid: 0,
            gid: 0,
        })
        .map(Brick::attr_of)
        .unwrap();
    assert_eq!(
        (s.kind, s.size, s.perm),
        (FileKind::Symlink as i32, 19, 0o777)
    );
    assert_eq!(&t.store.readlink(id).unwrap()[..], b"../../../etc/passwd");
    let f = t.create(ROOT_ID, "plain");
    assert_eq!(t.store.readlink(f).unwrap_err().errno(), libc::EINVAL);
    let r = t.apply(Operation::Symlink {
        parent: ROOT_ID,
        name: b("empty"),
        id: FileId(77777),
        target: Bytes::new(),
        uid: 0,
        gid: 0,
    });
    assert_eq!(r.unwrap_err(), libc::ENOENT);

    let id = t.id();
    t.apply(Operation::Mkdir {
        parent: ROOT_ID,
        name: b("sgid"),
        id,
        mode: 0o2775,
        uid: 0,
        gid: 50,
    })
    .unwrap();
    assert_eq!(
        t.store.getattr(id).unwrap().perm,
        0o775,
        "mkdir ignores set-id bits in its mode"
    );
    t.apply(Operation::SetAttr {
        id,
        mode: Some(0o2775),
        uid: None,
        gid: None,
        size: None,
        atime: None,
        mtime: None,
    })
    .unwrap();
    let sub = t.mkdir(id, "sub").unwrap();
    let a = t.store.getattr(sub).unwrap();
    assert_eq!((a.gid, a.perm & 0o2000), (50, 0o2000));
    let f = t.create(id, "f");
    let a = t.store.getattr(f).unwrap();
    assert_eq!((a.gid, a.perm), (50, 0o644));
}

fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::fs::FileType)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(walk(&e.path()));
        }
        out.push((e.path(), ft));
    }
    out
}

#[test]
fn fallocate_lseek_copy_file_range() {
    let mut t = Brick::new();
    let f = t.create(ROOT_ID, "f");
    t.apply(Operation::Fallocate {
        id: f,
        offset: 0,
        length: 1 << 20,
        mode: 0,
    })
    .unwrap();
    let a = t.store.getattr(f).unwrap();
    assert_eq!(a.size, 1 << 20);
    assert!(a.blocks >= 2048);
    // Real data (fallocated extents count as holes on tmpfs), then a hole in the middle.
    t.write(f, 0, &vec![1u8; 1 << 20]);
    t.apply(Operation::Fallocate {
        id: f,
        offset: 256 << 10,
        length: 256 << 10,
        mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    })
    .unwrap();
    assert_eq!(t.store.lseek(f, 0, libc::SEEK_HOLE).unwrap(), 256 << 10);
    assert_eq!(
        t.store.lseek(f, 256 << 10, libc::SEEK_DATA).unwrap(),
        512 << 10
    );
    assert_eq!(
        t.store
            .lseek(f, 2 << 20, libc::SEEK_DATA)
            .unwrap_err()
            .errno(),
        libc::ENXIO
    );
    assert_eq!(
        t.store.lseek(f, 0, libc::SEEK_SET).unwrap_err().errno(),
        libc::EINVAL
    );
    let r = t.apply(Operation::Fallocate {
        id: f,
        offset: 0,
        length: 0,
        mode: 0,
    });
    assert_eq!(r.unwrap_err(), libc::EINVAL);
    // Modes that shift data are refused (FUSE never sends them; a journal
    // replay could not repeat them safely).
    for mode in [
        libc::FALLOC_FL_COLLAPSE_RANGE,
        libc::FALLOC_FL_INSERT_RANGE,
        libc::FALLOC_FL_UNSHARE_RANGE,
    ] {
        let r = t.apply(Operation::Fallocate {
            id: f,
            offset: 0,
            length: 4096,
            mode,
        });
        assert_eq!(r.unwrap_err(), libc::EOPNOTSUPP);
    }

    let g = t.create(ROOT_ID, "g");
    t.write(f, 0, b"abcdef");
    let o = t
        .apply(Operation::CopyFileRange {
            id_in: f,
            offset_in: 1,
            id_out: g,
            offset_out: 10,
            length: 3,
        })
        .unwrap();
    assert_eq!(o, Outcome::Copied(3));
    let data = t.store.read(g, 0, 100).unwrap();
    assert_eq!(&data[..], b"\0\0\0\0\0\0\0\0\0\0bcd");
    let r = t.apply(Operation::CopyFileRange {
        id_in: f,
        offset_in: 0,
        id_out: f,
        offset_out: 2,
        length: 4,
    });
    assert_eq!(
        r.unwrap_err(),
        libc::EINVAL,
        "overlapping copy within one file"
    );
}

#[test]
fn readdir_cursors_survive_changes() {
    let mut t = Brick::new();
    let d = t.mkdir(ROOT_ID, "d").unwrap();
    for i in 0..100 {
        t.create(d, &format!("f{i:03}"));
    }
    let first = t.store.readdir(d, 0, 40, false).unwrap();
    assert_eq!(first.entries.len(), 40);
    assert!(!first.eof);
    assert_eq!(
        first.entries[0].cursor, 3,
        "cursors start after the client's . and .."
    );
    let cursor = first.entries.last().unwrap().cursor;
    // Remove some seen and unseen entries, add new ones.
    for i in (0..100).step_by(3) {
        t.apply(Operation::Unlink {
            parent: d,
            name: b(&format!("f{i:03}")),
        })
        .unwrap();
    }
    for i in 0..10 {
        t.create(d, &format!("new{i}"));
    }
    let mut seen: Vec<String> = first
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into())
        .collect();
    let mut c = cursor;
    loop {
        let r = t.store.readdir(d, c, 7, true).unwrap();
        for e in &r.entries {
            assert!(e.cursor > c);
            c = e.cursor;
            assert!(e.attr.is_some());
            seen.push(String::from_utf8_lossy(&e.name).into());
        }
        if r.eof {
            break;
        }
    }
    let unique: std::collections::BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no entry twice");
    for i in 0..100 {
        let name = format!("f{i:03}");
        if i % 3 != 0 {
            assert!(unique.contains(&name), "{name} survived but was not listed");
        }
    }
    for i in 0..10 {
        assert!(unique.contains(&format!("new{i}")));
    }
    // A cursor past the end, or of u64::MAX, is just the end.
    assert!(t.store.readdir(d, u64::MAX, 10, false).unwrap().eof);
    assert_eq!(
        t.store
            .readdir(d, 0, 1_000_000, false)
            .unwrap()
            .entries
            .len(),
        66 + 10
    );
    let f = t.lookup(d, "new0").unwrap();
    let fid = FileId::from_wire(&f.id).unwrap();
    assert_eq!(
        t.store.readdir(fid, 0, 1, false).unwrap_err().errno(),
        libc::ENOTDIR
    );
}

#[test]
fn open_unlinked_files_live_until_released() {
    let t = Brick::new();
    let Brick { dir, store, sm, .. } = t;
    drop(sm);
    let now = Time::new(5, 0);
    let applier = Applier::open(store.clone(), now, 1).unwrap();
    let cmd = |op| Command {
        request: None,
        now,
        op,
    };
    let id = FileId::from_parts(1, 500);
    let (o, h) = applier
        .create(
            &cmd(Operation::Create {
                parent: ROOT_ID,
                name: b("f"),
                id,
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive: true,
                truncate: false,
            }),
            libc::O_RDWR,
            9,
        )
        .unwrap();
    assert!(matches!(o, Outcome::Created { created: true, .. }));
    let (h2, _) = applier.open_file(id, libc::O_RDONLY, 9, None).unwrap();
    applier
        .apply(&cmd(Operation::Write {
            id,
            offset: 0,
            data: b("kept"),
            append: false,
        }))
        .unwrap();
    applier
        .apply(&cmd(Operation::Unlink {
            parent: ROOT_ID,
            name: b("f"),
        }))
        .unwrap();
    assert_eq!(
        store.lookup(ROOT_ID, b"f").unwrap_err().errno(),
        libc::ENOENT
    );
    let a = store.getattr(id).unwrap();
    assert_eq!((a.nlink, a.size), (0, 4));
    applier
        .apply(&cmd(Operation::Write {
            id,
            offset: 4,
            data: b("!"),
            append: false,
        }))
        .unwrap();
    assert_eq!(&store.read(id, 0, 10).unwrap()[..], b"kept!");
    applier.release(id, h, now).unwrap();
    assert!(store.getattr(id).is_ok(), "still held by h2");
    applier.release(id, h2, now).unwrap();
    assert_eq!(store.getattr(id).unwrap_err().errno(), libc::ESTALE);
    applier.make_durable().unwrap();
    assert!(
        !store.object_path(id).exists(),
        "object deleted once durable"
    );
    // Not opened: reclaimed at once.
    let id2 = FileId::from_parts(1, 501);
    applier
        .apply(&cmd(Operation::Create {
            parent: ROOT_ID,
            name: b("g"),
            id: id2,
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            truncate: false,
        }))
        .unwrap();
    applier
        .apply(&cmd(Operation::Unlink {
            parent: ROOT_ID,
            name: b("g"),
        }))
        .unwrap();
    assert_eq!(store.getattr(id2).unwrap_err().errno(), libc::ESTALE);
    assert_eq!(applier.open_handles(), 0);
    // A directory removed while open lives on, empty, until released.
    let dir_id = FileId::from_parts(1, 502);
    applier
        .apply(&cmd(Operation::Mkdir {
            parent: ROOT_ID,
            name: b("d"),
            id: dir_id,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }))
        .unwrap();
    let (hd, _) = applier
        .open_file(dir_id, libc::O_RDONLY | libc::O_DIRECTORY, 9, None)
        .unwrap();
    applier
        .apply(&cmd(Operation::Rmdir {
            parent: ROOT_ID,
            name: b("d"),
        }))
        .unwrap();
    assert_eq!(store.getattr(dir_id).unwrap().nlink, 0);
    assert_eq!(store.getattr(ROOT_ID).unwrap().nlink, 2);
    applier.release(dir_id, hd, now).unwrap();
    assert_eq!(store.getattr(dir_id).unwrap_err().errno(), libc::ESTALE);
    drop(dir);
}

#[test]
fn restart_keeps_everything_and_reclaims_orphans() {
    let mut t = Brick::new();
    let d = t.mkdir(ROOT_ID, "d").unwrap();
    let f = t.create(d, "f");
    t.write(f, 0, b"persisted");
    t.apply(Operation::SetXattr {
        id: f,
        name: b("user.k"),
        value: b("v"),
        flags: 0,
    })
    .unwrap();
    let o = t.create(ROOT_ID, "orphan");
    t.write(o, 0, b"x");
    // Unlinked while (as far as the state machine knows) open: an orphan.
    t.apply(Operation::Unlink {
        parent: ROOT_ID,
        name: b("orphan"),
    })
    .unwrap();
    assert_eq!(t.store.orphans().unwrap(), vec![o]);
    // A stray object with no inode (as a crash can leave).
    std::fs::write(t.store.object_path(FileId(0xdead)), b"junk").unwrap();
    let before = t.dump();
    let next_ino = t.store.next_ino().unwrap();
    let t = t.restart();
    assert_eq!(t.dump(), before);
    assert_eq!(&t.store.getxattr(f, b"user.k").unwrap()[..], b"v");
    assert!(t.store.orphans().unwrap().is_empty());
    assert_eq!(t.store.getattr(o).unwrap_err().errno(), libc::ESTALE);
    assert!(!t.store.object_path(o).exists());
    assert!(!t.store.object_path(FileId(0xdead)).exists());
    assert_eq!(t.store.next_ino().unwrap(), next_ino);
    assert!(next_ino > f.ino());
}
