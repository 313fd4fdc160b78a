//! Crash recovery of the apply path. Commands go through the applier (journal
//! append, then apply) as the service sends them; a crash is simulated by
//! copying the brick directory while the store holds commits that are not
//! durable: the files as they read at that moment (page cache included) are
//! what a kill -9 of the server leaves behind. Opening the copy must replay
//! the journal to the same namespace, attributes, xattrs and object contents.

use kadalu_proto::brick::{Attr, FileKind};
use kadalu_proto::{FileId, MAX_IO_SIZE, ROOT_ID};
use kadalu_server::applier::{Applier, Recovery};
use kadalu_server::journal::{Stop, JOURNAL_FILE};
use kadalu_server::ops::{Command, Operation, Outcome, RequestId};
use kadalu_server::records::Time;
use kadalu_server::store::Store;
use proptest::prelude::*;
use prost::bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A brick driven through its applier, as the service drives it.
struct Live {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    applier: Applier,
    clock: i64,
    next: u64,
}

impl Live {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 0o755, Time::new(1, 0)).unwrap());
        let applier = Applier::open(store.clone(), Time::new(1, 0), 1).unwrap();
        Live {
            dir,
            store,
            applier,
            clock: 1000,
            next: 100,
        }
    }

    fn id(&mut self) -> FileId {
        self.next += 1;
        FileId::from_parts(0xc0de, self.next)
    }

    fn cmd(&mut self, op: Operation) -> Command {
        self.clock += 1;
        Command {
            request: None,
            now: Time::new(self.clock, 7),
            op,
        }
    }

    fn apply(&mut self, op: Operation) -> Result<Outcome, i32> {
        let cmd = self.cmd(op);
        self.applier.apply(&cmd).map_err(|e| e.errno())
    }

    fn ok(&mut self, op: Operation) -> Outcome {
        let shown = format!("{op:?}");
        self.apply(op)
            .unwrap_or_else(|e| panic!("{shown} failed: {e}"))
    }

    fn create_open(&mut self, parent: FileId, name: &str) -> (FileId, u64) {
        let id = self.id();
        let cmd = self.cmd(Operation::Create {
            parent,
            name: b(name),
            id,
            mode: 0o640,
            uid: 3,
            gid: 4,
            exclusive: true,
            truncate: false,
        });
        let (_, handle) = self.applier.create(&cmd, libc::O_RDWR, 9).unwrap();
        (id, handle)
    }

    fn create(&mut self, parent: FileId, name: &str) -> FileId {
        let id = self.id();
        self.ok(Operation::Create {
            parent,
            name: b(name),
            id,
            mode: 0o644,
            uid: 1,
            gid: 2,
            exclusive: true,
            truncate: false,
        });
        id
    }

    fn write(&mut self, id: FileId, offset: u64, data: &[u8]) {
        self.ok(Operation::Write {
            id,
            offset,
            data: Bytes::copy_from_slice(data),
            append: false,
        });
    }

    fn append(&mut self, id: FileId, data: &[u8]) {
        self.ok(Operation::Write {
            id,
            offset: 0,
            data: Bytes::copy_from_slice(data),
            append: true,
        });
    }

    fn rename(&mut self, parent: FileId, name: &str, np: FileId, nn: &str, flags: u32) {
        let source = self.store.entry_id(parent, name.as_bytes()).unwrap();
        self.ok(Operation::Rename {
            parent,
            name: b(name),
            new_parent: np,
            new_name: b(nn),
            flags,
            source,
        });
    }

    /// What a kill -9 at this moment would leave behind.
    fn crash(&self) -> tempfile::TempDir {
        copy_brick(self.dir.path())
    }
}

fn copy_brick(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for name in ["meta.redb", JOURNAL_FILE] {
        std::fs::copy(from.join(name), to.path().join(name)).unwrap();
    }
    for shard in std::fs::read_dir(from.join("objects")).unwrap() {
        let shard = shard.unwrap();
        for obj in std::fs::read_dir(shard.path()).unwrap() {
            let obj = obj.unwrap();
            let dst = to.path().join("objects").join(shard.file_name());
            std::fs::create_dir_all(&dst).unwrap();
            std::fs::copy(obj.path(), dst.join(obj.file_name())).unwrap();
        }
    }
    to
}

/// Opens a crashed brick as the server does at start.
fn recover(dir: &Path) -> (Arc<Store>, Applier, Recovery) {
    let store = Arc::new(Store::open(dir, 0o755, Time::new(1, 0)).unwrap());
    let (applier, recovery) =
        Applier::open_reporting(store.clone(), Time::new(999_999, 0), 77).unwrap();
    (store, applier, recovery)
}

/// Everything a client can see of one name.
#[derive(PartialEq)]
struct Seen {
    cursor: u64,
    attr: Attr,
    xattrs: Vec<(Bytes, Bytes)>,
    data: Vec<u8>,
    target: Bytes,
}

impl std::fmt::Debug for Seen {
    // Data is shown by length and a checksum: files here run to megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sum = self
            .data
            .iter()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64));
        f.debug_struct("Seen")
            .field("cursor", &self.cursor)
            .field("attr", &self.attr)
            .field("xattrs", &self.xattrs)
            .field(
                "data",
                &format_args!("{} bytes, sum {sum:x}", self.data.len()),
            )
            .field("target", &self.target)
            .finish()
    }
}

fn read_all(store: &Store, id: FileId) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = store
            .read(id, out.len() as u64, MAX_IO_SIZE as u32)
            .unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

fn seen(store: &Store, id: FileId, cursor: u64) -> Seen {
    let mut attr = store.getattr(id).unwrap();
    // Allocation is left out: copying a brick to simulate the crash fills
    // holes, which a real crash does not; holes themselves are tested apart.
    attr.blocks = 0;
    let xattrs = store
        .listxattr(id)
        .unwrap()
        .into_iter()
        .map(|n| {
            let v = store.getxattr(id, &n).unwrap();
            (n, v)
        })
        .collect();
    let data = match attr.kind == FileKind::Regular as i32 {
        true => read_all(store, id),
        false => Vec::new(),
    };
    let target = match attr.kind == FileKind::Symlink as i32 {
        true => store.readlink(id).unwrap(),
        false => Bytes::new(),
    };
    Seen {
        cursor,
        attr,
        xattrs,
        data,
        target,
    }
}

/// Path -> what a client sees, for the whole namespace, and the next inode
/// number the brick would hand out.
type Dump = (BTreeMap<String, Seen>, u64);

fn dump(store: &Store) -> Dump {
    let mut out = BTreeMap::new();
    out.insert("/".to_string(), seen(store, ROOT_ID, 0));
    let mut todo = vec![(String::new(), ROOT_ID)];
    while let Some((path, dir)) = todo.pop() {
        let mut cursor = 0;
        loop {
            let r = store.readdir(dir, cursor, 5, false).unwrap();
            for e in &r.entries {
                cursor = e.cursor;
                let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                let id = FileId::from_wire(&e.id).unwrap();
                if e.kind == FileKind::Directory as i32 {
                    todo.push((p.clone(), id));
                }
                out.insert(p, seen(store, id, e.cursor));
            }
            if r.eof {
                break;
            }
        }
    }
    (out, store.next_ino().unwrap())
}

/// A short account of how two views of one name differ.
fn difference(live: &Seen, got: &Seen) -> String {
    let mut out = Vec::new();
    if live.attr != got.attr {
        out.push(format!(
            "attr live {:?}\n   recovered {:?}",
            live.attr, got.attr
        ));
    }
    if live.data != got.data {
        let at = live.data.iter().zip(&got.data).position(|(a, b)| a != b);
        out.push(format!(
            "data: {} bytes live, {} recovered, first difference at {at:?}",
            live.data.len(),
            got.data.len()
        ));
    }
    if (live.cursor, &live.xattrs, &live.target) != (got.cursor, &got.xattrs, &got.target) {
        out.push("cursor, xattrs or target".into());
    }
    out.join("; ")
}

/// Recovers a crash copy and checks it shows exactly `want`.
fn check_recovers_to(crash: &tempfile::TempDir, want: &Dump, step: &str) {
    let (store, applier, _) = recover(crash.path());
    let got = dump(&store);
    if got != *want {
        for (k, v) in &want.0 {
            match got.0.get(k) {
                Some(g) if g == v => {}
                Some(g) => eprintln!("{k}: {}", difference(v, g)),
                None => eprintln!("{k}: missing after recovery"),
            }
        }
        for k in got.0.keys().filter(|k| !want.0.contains_key(*k)) {
            eprintln!("{k}: only after recovery");
        }
        panic!(
            "crash after {step}: recovered brick differs (next_ino {} vs {})",
            got.1, want.1
        );
    }
    assert!(
        store.orphans().unwrap().is_empty(),
        "orphans reclaimed at start"
    );
    drop(applier);
}

#[test]
fn every_crash_point_recovers_the_same_brick() {
    let mut t = Live::new();
    let mut points: Vec<(String, tempfile::TempDir, Dump)> = Vec::new();
    let mut step = |t: &mut Live, what: &str, f: &mut dyn FnMut(&mut Live)| {
        f(t);
        points.push((what.to_string(), t.crash(), dump(&t.store)));
    };

    let mut d = ROOT_ID;
    let mut f = ROOT_ID;
    let mut hf = 0;
    step(&mut t, "mkdir", &mut |t| {
        let id = t.id();
        d = id;
        t.ok(Operation::Mkdir {
            parent: ROOT_ID,
            name: b("d"),
            id,
            mode: 0o2755,
            uid: 5,
            gid: 6,
        });
    });
    step(&mut t, "create (open)", &mut |t| {
        (f, hf) = t.create_open(d, "f")
    });
    step(&mut t, "write", &mut |t| t.write(f, 0, b"hello"));
    step(&mut t, "append", &mut |t| t.append(f, b" world"));
    step(&mut t, "sparse write past 1 MiB", &mut |t| {
        t.write(f, (1 << 20) + 5, b"X")
    });
    step(&mut t, "setattr size", &mut |t| {
        t.ok(Operation::SetAttr {
            id: f,
            mode: Some(0o600),
            uid: None,
            gid: Some(9),
            size: Some(8),
            atime: Some(Time::new(-3, 5)),
            mtime: None,
        });
    });
    step(&mut t, "append after truncate", &mut |t| t.append(f, b"!!"));
    step(&mut t, "rename into root", &mut |t| {
        t.rename(d, "f", ROOT_ID, "g", 0)
    });
    step(&mut t, "link", &mut |t| {
        t.ok(Operation::Link {
            id: f,
            new_parent: d,
            new_name: b("g2"),
        });
    });
    step(&mut t, "symlink and fifo", &mut |t| {
        let s = t.id();
        t.ok(Operation::Symlink {
            parent: ROOT_ID,
            name: b("s"),
            id: s,
            target: b("g"),
            uid: 0,
            gid: 0,
        });
        let p = t.id();
        t.ok(Operation::Mknod {
            parent: d,
            name: b("p"),
            id: p,
            mode: libc::S_IFIFO | 0o600,
            rdev: 0,
            uid: 0,
            gid: 0,
        });
    });
    step(&mut t, "xattrs", &mut |t| {
        for (n, v) in [("user.a", "1"), ("user.b", "two")] {
            t.ok(Operation::SetXattr {
                id: f,
                name: b(n),
                value: b(v),
                flags: 0,
            });
        }
        t.ok(Operation::RemoveXattr {
            id: f,
            name: b("user.a"),
        });
    });
    step(&mut t, "fallocate extends", &mut |t| {
        t.ok(Operation::Fallocate {
            id: f,
            offset: 0,
            length: 64 << 10,
            mode: 0,
        });
    });
    step(&mut t, "write then punch a hole", &mut |t| {
        t.write(f, 0, &[7u8; 8192]);
        t.ok(Operation::Fallocate {
            id: f,
            offset: 4096,
            length: 4096,
            mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        });
    });
    step(&mut t, "zero a range", &mut |t| {
        t.ok(Operation::Fallocate {
            id: f,
            offset: 100,
            length: 100,
            mode: libc::FALLOC_FL_ZERO_RANGE,
        });
    });
    let mut h = ROOT_ID;
    let mut hh = 0;
    step(&mut t, "unlink an open file and write to it", &mut |t| {
        (h, hh) = t.create_open(ROOT_ID, "h");
        t.write(h, 0, b"open");
        t.ok(Operation::Unlink {
            parent: ROOT_ID,
            name: b("h"),
        });
        t.write(h, 4, b"ed");
    });
    let mut c = ROOT_ID;
    step(&mut t, "copy between files", &mut |t| {
        c = t.create(ROOT_ID, "c");
        let o = t.ok(Operation::CopyFileRange {
            id_in: f,
            offset_in: 0,
            id_out: c,
            offset_out: 3,
            length: 1 << 30,
        });
        assert!(matches!(o, Outcome::Copied(n) if n == 64 << 10), "{o:?}");
    });
    step(&mut t, "change a copy's source", &mut |t| {
        t.write(f, 0, b"changed after the copy");
        t.ok(Operation::SetAttr {
            id: f,
            mode: None,
            uid: None,
            gid: None,
            size: Some(10),
            atime: None,
            mtime: None,
        });
    });
    step(&mut t, "copy within one file", &mut |t| {
        t.write(c, 0, b"abc");
        t.ok(Operation::CopyFileRange {
            id_in: c,
            offset_in: 0,
            id_out: c,
            offset_out: 100_000,
            length: 1000,
        });
        t.write(c, 1, b"Z");
    });
    step(&mut t, "checkpoint", &mut |t| {
        t.applier.make_durable().unwrap()
    });
    step(&mut t, "rename over a file with another link", &mut |t| {
        let e = t.create(ROOT_ID, "e");
        t.write(e, 0, b"eee");
        t.rename(ROOT_ID, "e", ROOT_ID, "g", 0);
    });
    step(&mut t, "rename over a file's last link", &mut |t| {
        let r = t.create(ROOT_ID, "r");
        t.write(r, 0, b"rrr");
        t.rename(ROOT_ID, "r", ROOT_ID, "c", 0);
    });
    step(&mut t, "exchange", &mut |t| {
        t.rename(ROOT_ID, "d", ROOT_ID, "s", 2);
    });
    step(&mut t, "failed commands", &mut |t| {
        let id = t.id();
        let mut cmd = t.cmd(Operation::Mkdir {
            parent: ROOT_ID,
            name: b("d"),
            id,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        cmd.request = Some(RequestId {
            client: 3,
            seq: 1,
            ack_below: 0,
        });
        assert_eq!(t.applier.apply(&cmd).unwrap_err().errno(), libc::EEXIST);
        assert_eq!(
            t.apply(Operation::Unlink {
                parent: ROOT_ID,
                name: b("nothing"),
            })
            .unwrap_err(),
            libc::ENOENT
        );
        assert_eq!(
            t.apply(Operation::Fallocate {
                id: f,
                offset: 0,
                length: 4096,
                mode: libc::FALLOC_FL_INSERT_RANGE,
            })
            .unwrap_err(),
            libc::EOPNOTSUPP
        );
    });
    step(&mut t, "truncate and create-truncate", &mut |t| {
        t.ok(Operation::Truncate { id: f });
        t.write(f, 0, b"again");
        let id = t.id();
        let o = t.ok(Operation::Create {
            parent: ROOT_ID,
            name: b("g"),
            id,
            mode: 0o600,
            uid: 0,
            gid: 0,
            exclusive: false,
            truncate: true,
        });
        assert!(matches!(o, Outcome::Created { created: false, .. }));
        t.append(f, b"tail");
    });
    step(&mut t, "rmdir", &mut |t| {
        let id = t.id();
        t.ok(Operation::Mkdir {
            parent: ROOT_ID,
            name: b("gone"),
            id,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        t.ok(Operation::Rmdir {
            parent: ROOT_ID,
            name: b("gone"),
        });
    });
    step(&mut t, "release the unlinked file", &mut |t| {
        t.applier.release(h, hh, Time::new(5000, 0)).unwrap();
        t.applier.release(f, hf, Time::new(5000, 0)).unwrap();
    });

    for (what, crash, want) in &points {
        check_recovers_to(crash, want, what);
    }
    // The orphan's object went with it; every live file's object stayed.
    let (what, crash, _) = &points[points.len() - 2];
    let (store, _, _) = recover(crash.path());
    assert!(!store.object_path(h).exists(), "{what}: orphan object left");
    assert!(store.object_path(f).exists());
}

#[test]
fn a_torn_last_entry_is_dropped_and_recovery_is_repeatable() {
    let mut t = Live::new();
    let f = t.create(ROOT_ID, "f");
    t.write(f, 0, b"kept");
    let before = dump(&t.store);
    let id = t.id();
    t.ok(Operation::Mkdir {
        parent: ROOT_ID,
        name: b("late"),
        id,
        mode: 0o755,
        uid: 0,
        gid: 0,
    });
    let crash = t.crash();
    let journal = crash.path().join(JOURNAL_FILE);
    let len = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let (store, applier, recovery) = recover(crash.path());
    assert_eq!(recovery.scan.stopped, Some(Stop::Torn));
    assert_eq!(recovery.replayed, 2, "{recovery:?}");
    assert_eq!(dump(&store), before);
    // The recovered brick carries on, and a crash straight after recovery
    // (nothing new in the journal) recovers the same again.
    let again = copy_brick(crash.path());
    let (store2, _, recovery2) = recover(again.path());
    assert_eq!(recovery2.replayed, 0);
    assert_eq!(dump(&store2), before);
    drop((store, applier));
}

#[test]
fn a_retried_request_after_a_crash_is_not_applied_again() {
    let mut t = Live::new();
    let f = t.create(ROOT_ID, "f");
    t.write(f, 0, b"start");
    let with = |t: &mut Live, seq, op| {
        let mut cmd = t.cmd(op);
        cmd.request = Some(RequestId {
            client: 42,
            seq,
            ack_below: 0,
        });
        cmd
    };
    let append = with(
        &mut t,
        1,
        Operation::Write {
            id: f,
            offset: 0,
            data: b("+more"),
            append: true,
        },
    );
    let first = t.applier.apply(&append).unwrap();
    let unlink = with(
        &mut t,
        2,
        Operation::Unlink {
            parent: ROOT_ID,
            name: b("x"),
        },
    );
    assert_eq!(t.applier.apply(&unlink).unwrap_err().errno(), libc::ENOENT);
    t.create(ROOT_ID, "x");
    let crash = t.crash();

    let (store, applier, recovery) = recover(crash.path());
    assert_eq!(recovery.failed, 1, "{recovery:?}");
    assert_eq!(applier.apply(&append).unwrap(), first);
    assert_eq!(read_all(&store, f), b"start+more");
    // The unlink failed the first time: its retry answers the same, even
    // though the name exists now.
    assert_eq!(applier.apply(&unlink).unwrap_err().errno(), libc::ENOENT);
    assert!(store.lookup(ROOT_ID, b"x").is_ok());
}

#[test]
fn the_journal_stays_bounded() {
    let mut t = Live::new();
    let limit = 256 << 10;
    t.applier.set_journal_limit(limit);
    let f = t.create(ROOT_ID, "f");
    let mut max = 0;
    for i in 0..400u64 {
        t.write(f, i * 4096, &[i as u8; 4096]);
        max = max.max(t.applier.journal_len());
    }
    assert!(max >= limit / 2, "the journal was used: {max}");
    assert!(max < limit + 8192, "journal grew to {max}");
    let want = dump(&t.store);
    let crash = t.crash();
    let on_disk = std::fs::metadata(crash.path().join(JOURNAL_FILE))
        .unwrap()
        .len();
    assert!(on_disk < limit + 8192);
    check_recovers_to(&crash, &want, "many writes");
    t.applier.make_durable().unwrap();
    assert_eq!(
        t.applier.journal_len(),
        8,
        "a checkpoint empties the journal"
    );
    let file = t.dir.path().join(JOURNAL_FILE);
    assert!(std::fs::metadata(&file).unwrap().len() < limit + 8192);
    t.applier.close().unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        8,
        "shutdown cuts the journal back to its header"
    );
}

/// One change to the data of file 0 or 1.
#[derive(Debug, Clone)]
enum DataOp {
    Write {
        file: usize,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Append {
        file: usize,
        len: usize,
        byte: u8,
    },
    Size {
        file: usize,
        size: u64,
    },
    Truncate {
        file: usize,
    },
    Fallocate {
        file: usize,
        offset: u64,
        len: u64,
        mode: i32,
    },
    Copy {
        from: usize,
        to: usize,
        offset_in: u64,
        offset_out: u64,
        len: u64,
    },
    Checkpoint,
    Crash,
}

fn arb_data_op() -> impl Strategy<Value = DataOp> {
    let file = 0usize..2;
    let off = 0u64..40_000;
    prop_oneof![
        4 => (file.clone(), off.clone(), 1usize..9000, any::<u8>())
            .prop_map(|(file, offset, len, byte)| DataOp::Write { file, offset, len, byte }),
        2 => (file.clone(), 1usize..5000, any::<u8>())
            .prop_map(|(file, len, byte)| DataOp::Append { file, len, byte }),
        2 => (file.clone(), 0u64..50_000).prop_map(|(file, size)| DataOp::Size { file, size }),
        1 => file.clone().prop_map(|file| DataOp::Truncate { file }),
        2 => (
            file.clone(),
            off.clone(),
            1u64..20_000,
            prop::sample::select(vec![
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ])
        )
            .prop_map(|(file, offset, len, mode)| DataOp::Fallocate { file, offset, len, mode }),
        3 => (file.clone(), file, off.clone(), off, 1u64..30_000).prop_map(
            |(from, to, offset_in, offset_out, len)| DataOp::Copy { from, to, offset_in, offset_out, len }
        ),
        1 => Just(DataOp::Checkpoint),
        2 => Just(DataOp::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever mix of writes, size changes, fallocates and copies (between
    /// files and within one) comes before a crash, recovery gives the same
    /// bytes and attributes.
    #[test]
    fn data_changes_replay_to_the_same_bytes(ops in proptest::collection::vec(arb_data_op(), 1..40)) {
        let mut t = Live::new();
        let files = [t.create(ROOT_ID, "a"), t.create(ROOT_ID, "b")];
        let mut crashes = Vec::new();
        for op in &ops {
            let op = match *op {
                DataOp::Write { file, offset, len, byte } => Operation::Write {
                    id: files[file], offset, data: Bytes::from(vec![byte; len]), append: false,
                },
                DataOp::Append { file, len, byte } => Operation::Write {
                    id: files[file], offset: 0, data: Bytes::from(vec![byte; len]), append: true,
                },
                DataOp::Size { file, size } => Operation::SetAttr {
                    id: files[file], mode: None, uid: None, gid: None, size: Some(size), atime: None, mtime: None,
                },
                DataOp::Truncate { file } => Operation::Truncate { id: files[file] },
                DataOp::Fallocate { file, offset, len, mode } => Operation::Fallocate {
                    id: files[file], offset, length: len, mode,
                },
                DataOp::Copy { from, to, offset_in, offset_out, len } => Operation::CopyFileRange {
                    id_in: files[from], offset_in, id_out: files[to], offset_out, length: len,
                },
                DataOp::Checkpoint => {
                    t.applier.make_durable().unwrap();
                    continue;
                }
                DataOp::Crash => {
                    crashes.push((t.crash(), dump(&t.store)));
                    continue;
                }
            };
            // Overlapping copies within a file fail (EINVAL), as in the kernel.
            let _ = t.apply(op);
        }
        crashes.push((t.crash(), dump(&t.store)));
        for (i, (crash, want)) in crashes.iter().enumerate() {
            check_recovers_to(crash, want, &format!("crash point {i}"));
        }
    }
}

#[test]
fn fsync_syncs_a_small_journal_and_checkpoints_a_large_one() {
    let mut t = Live::new();
    let f = t.create(ROOT_ID, "f");
    t.write(f, 0, b"small");
    let before = t.applier.journal_len();
    t.applier.fsync(f, false).unwrap();
    assert_eq!(
        t.applier.journal_len(),
        before,
        "a small journal is synced, kept"
    );
    let g = t.create(ROOT_ID, "g");
    // Writes are at most 1 MiB each; two of them pass the 1 MiB threshold.
    t.write(g, 0, &vec![1u8; 1 << 20]);
    t.write(g, 1 << 20, &vec![2u8; 1 << 20]);
    t.applier.fsync(f, true).unwrap();
    assert_eq!(t.applier.journal_len(), 8, "a large one is checkpointed");
    // Either way nothing is lost.
    let want = dump(&t.store);
    check_recovers_to(&t.crash(), &want, "fsync");
}

/// Which fsyncs sync the object file: only those the journal cannot stand in
/// for (changes from before the last checkpoint, copies), and the checkpoint
/// that empties the journal syncs what an fsync left to it.
#[test]
fn fsync_syncs_the_object_only_when_the_journal_cannot_redo_it() {
    let mut t = Live::new();
    let f = t.create(ROOT_ID, "f");
    t.write(f, 0, b"in the journal");
    t.applier.fsync(f, false).unwrap();
    assert_eq!(t.applier.object_syncs(), 0, "the journal holds the write");
    // Nothing changed since: nothing to sync, also after the checkpoint.
    t.applier.make_durable().unwrap();
    assert_eq!(
        t.applier.object_syncs(),
        1,
        "the checkpoint syncs the file whose fsync the journal carried"
    );
    t.applier.fsync(f, false).unwrap();
    assert_eq!(t.applier.object_syncs(), 1, "nothing unsynced is left");

    // A change from before a checkpoint is no longer in the journal.
    t.write(f, 0, b"before the checkpoint");
    let g = t.create(ROOT_ID, "g");
    t.write(g, 0, b"g");
    t.applier.make_durable().unwrap();
    assert_eq!(t.applier.object_syncs(), 1, "no fsync asked for these");
    t.applier.fsync(f, true).unwrap();
    assert_eq!(
        t.applier.object_syncs(),
        2,
        "f's change predates the journal"
    );

    // A copy's bytes are not in the journal at all.
    let h = t.create(ROOT_ID, "h");
    t.ok(Operation::CopyFileRange {
        id_in: f,
        offset_in: 0,
        id_out: h,
        offset_out: 0,
        length: 6,
    });
    t.applier.fsync(h, false).unwrap();
    assert_eq!(t.applier.object_syncs(), 3, "a copy destination is synced");

    // And whatever the path, a crash now loses nothing.
    let want = dump(&t.store);
    check_recovers_to(&t.crash(), &want, "fsync paths");
}
