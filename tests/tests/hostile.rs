//! Hostile requests sent straight to a real `kadalu-server`'s gRPC port: path
//! escapes, malformed and unknown ids, huge sizes, oversize messages and raw
//! garbage on the socket. Each must get an error (with the errno Linux gives)
//! and leave the brick exactly as it was; the server must stay up.

use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::brick::*;
use kadalu_proto::errno::errno_of;
use kadalu_proto::{FileId, MAX_IO_SIZE, MAX_MESSAGE_SIZE, ROOT_ID};
use prost::bytes::Bytes;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::transport::Channel;

const RPC_DEADLINE: Duration = Duration::from_secs(10);

/// A server process on a temporary brick; killed and reaped on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let brick = dir.path().join("brick");
        let mut child = Command::new(kadalu_e2e::binaries::server_bin())
            .arg("--brick-dir")
            .arg(&brick)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kadalu-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Built before the guard exists, so kill by hand if the start fails.
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kadalu-server did not report listening");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("kadalu-server listening on ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line {line:?}");
        };
        Server { child, addr, dir }
    }

    fn brick_dir(&self) -> PathBuf {
        self.dir.path().join("brick")
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "kadalu-server died"
        );
    }

    async fn client(&self) -> BrickClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(RPC_DEADLINE)
            .timeout(RPC_DEADLINE)
            .connect()
            .await
            .expect("connect");
        BrickClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(4 * MAX_MESSAGE_SIZE)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SEQ: AtomicU64 = AtomicU64::new(1);

fn header() -> Option<RequestHeader> {
    Some(RequestHeader {
        client_id: Bytes::from_static(&[0x42; 16]),
        seq: SEQ.fetch_add(1, Ordering::Relaxed),
        ack_below: 0,
    })
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn root() -> Bytes {
    ROOT_ID.to_wire()
}

/// The errno of a failed call; panics if the call succeeded or carried none.
fn errno<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> i32 {
    match r {
        Ok(v) => panic!("hostile request succeeded: {:?}", v.into_inner()),
        Err(s) => errno_of(&s).unwrap_or_else(|| panic!("status without errno: {s:?}")),
    }
}

/// Everything a client can see of the brick, walked through the API, plus the
/// object files on disk: path -> description.
async fn snapshot(c: &mut BrickClient<Channel>, brick: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![("".to_string(), ROOT_ID)];
    while let Some((path, dir)) = todo.pop() {
        let a = c
            .get_attr(GetAttrRequest { id: dir.to_wire() })
            .await
            .unwrap()
            .into_inner()
            .attr
            .unwrap();
        out.insert(format!("{path}/"), describe(&a));
        let mut cursor = 0;
        loop {
            let r = c
                .read_dir(ReadDirRequest {
                    id: dir.to_wire(),
                    cursor,
                    max_entries: 100,
                    plus: true,
                })
                .await
                .unwrap()
                .into_inner();
            for e in &r.entries {
                cursor = e.cursor;
                let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                let a = e.attr.clone().unwrap();
                if a.kind == FileKind::Directory as i32 {
                    todo.push((p, FileId::from_wire(&e.id).unwrap()));
                } else {
                    out.insert(p, describe(&a));
                }
            }
            if r.eof {
                break;
            }
        }
    }
    let mut stack = vec![brick.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let rel = e.path().strip_prefix(brick).unwrap().display().to_string();
            if ft.is_dir() {
                stack.push(e.path());
            } else if rel != "meta.redb" && rel != "journal" {
                // meta.redb also holds deduplication records of failed
                // requests, and the journal every request until the next
                // checkpoint; the namespace itself is covered by the walk above.
                out.insert(
                    format!("disk:{rel}"),
                    format!("{:?} {}", ft, e.metadata().unwrap().len()),
                );
            }
        }
    }
    // Nothing may appear beside the brick directory either.
    let parent: Vec<_> = std::fs::read_dir(brick.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.insert("outside".into(), format!("{parent:?}"));
    out
}

fn describe(a: &Attr) -> String {
    format!(
        "kind={} perm={:o} nlink={} uid={} gid={} size={} mtime={:?} ctime={:?}",
        a.kind, a.perm, a.nlink, a.uid, a.gid, a.size, a.mtime, a.ctime
    )
}

/// A small tree to attack: /d/f (with data), /d/sub/, /link -> ../../etc/passwd
async fn populate(c: &mut BrickClient<Channel>) -> (FileId, FileId) {
    let d = c
        .mkdir(MkdirRequest {
            header: header(),
            parent: root(),
            name: b(b"d"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let d = FileId::from_wire(&d.id).unwrap();
    let f = c
        .create(CreateRequest {
            header: header(),
            parent: d.to_wire(),
            name: b(b"f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
            flags: libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        })
        .await
        .unwrap()
        .into_inner();
    let f_id = FileId::from_wire(&f.attr.unwrap().id).unwrap();
    c.write(WriteRequest {
        header: header(),
        id: f_id.to_wire(),
        handle: f.handle,
        offset: 0,
        data: b(b"precious"),
        append: false,
    })
    .await
    .unwrap();
    c.mkdir(MkdirRequest {
        header: header(),
        parent: d.to_wire(),
        name: b(b"sub"),
        mode: 0o700,
        uid: 0,
        gid: 0,
    })
    .await
    .unwrap();
    c.symlink(SymlinkRequest {
        header: header(),
        parent: root(),
        name: b(b"link"),
        target: b(b"../../etc/passwd"),
        uid: 0,
        gid: 0,
    })
    .await
    .unwrap();
    (d, f_id)
}

const ESCAPES: &[&[u8]] = &[
    b"a/b",
    b"../x",
    b"/etc/passwd",
    b"..",
    b".",
    b"",
    b"a\0b",
    b"x/../../..",
];

fn long_name() -> Vec<u8> {
    vec![b'n'; 256]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escapes_are_refused_and_change_nothing() {
    let mut server = Server::start();
    let mut c = server.client().await;
    let (d, f) = populate(&mut c).await;
    let before = snapshot(&mut c, &server.brick_dir()).await;

    let expect = |name: &[u8], dots: i32| -> i32 {
        match name {
            b"." | b".." => dots,
            n if n.len() > 255 => libc::ENAMETOOLONG,
            _ => libc::EINVAL,
        }
    };
    let mut names: Vec<Vec<u8>> = ESCAPES.iter().map(|n| n.to_vec()).collect();
    names.push(long_name());
    for name in &names {
        let n = Bytes::from(name.clone());
        let shown = String::from_utf8_lossy(name).into_owned();
        let e = errno(
            c.mkdir(MkdirRequest {
                header: header(),
                parent: d.to_wire(),
                name: n.clone(),
                mode: 0o777,
                uid: 0,
                gid: 0,
            })
            .await,
        );
        assert_eq!(e, expect(name, libc::EEXIST), "mkdir {shown:?}");
        let e = errno(
            c.create(CreateRequest {
                header: header(),
                parent: d.to_wire(),
                name: n.clone(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                flags: libc::O_CREAT | libc::O_RDWR,
            })
            .await,
        );
        assert_eq!(e, expect(name, libc::EISDIR), "create {shown:?}");
        let e = errno(
            c.symlink(SymlinkRequest {
                header: header(),
                parent: d.to_wire(),
                name: n.clone(),
                target: b(b"/"),
                uid: 0,
                gid: 0,
            })
            .await,
        );
        assert_eq!(e, expect(name, libc::EEXIST), "symlink {shown:?}");
        let e = errno(
            c.mknod(MknodRequest {
                header: header(),
                parent: d.to_wire(),
                name: n.clone(),
                mode: libc::S_IFCHR | 0o666,
                rdev: 0x0103,
                uid: 0,
                gid: 0,
            })
            .await,
        );
        assert_eq!(e, expect(name, libc::EEXIST), "mknod {shown:?}");
        let e = errno(
            c.link(LinkRequest {
                header: header(),
                id: f.to_wire(),
                new_parent: d.to_wire(),
                new_name: n.clone(),
            })
            .await,
        );
        assert_eq!(e, expect(name, libc::EEXIST), "link {shown:?}");
        let e = errno(
            c.unlink(UnlinkRequest {
                header: header(),
                parent: d.to_wire(),
                name: n.clone(),
            })
            .await,
        );
        assert_eq!(e, expect(name, libc::EISDIR), "unlink {shown:?}");
        let e = errno(
            c.rmdir(RmdirRequest {
                header: header(),
                parent: d.to_wire(),
                name: n.clone(),
            })
            .await,
        );
        let rmdir_dots = if name == b"." {
            libc::EINVAL
        } else {
            libc::ENOTEMPTY
        };
        assert_eq!(e, expect(name, rmdir_dots), "rmdir {shown:?}");
        for (from, to) in [(b(b"f"), n.clone()), (n.clone(), b(b"new"))] {
            let e = errno(
                c.rename(RenameRequest {
                    header: header(),
                    parent: d.to_wire(),
                    name: from,
                    new_parent: ROOT_ID.to_wire(),
                    new_name: to,
                    flags: 0,
                })
                .await,
            );
            assert_eq!(e, expect(name, libc::EBUSY), "rename {shown:?}");
        }
        if name != b"." && name != b".." {
            let e = errno(
                c.lookup(LookupRequest {
                    parent: d.to_wire(),
                    name: n.clone(),
                })
                .await,
            );
            assert_eq!(e, expect(name, 0), "lookup {shown:?}");
        }
    }
    // Lookups of "." and ".." stay inside: ".." of the root is the root.
    let up = c
        .lookup(LookupRequest {
            parent: root(),
            name: b(b".."),
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(up.id, root());
    // The symlink is data, never followed.
    let link = c
        .lookup(LookupRequest {
            parent: root(),
            name: b(b"link"),
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(link.kind, FileKind::Symlink as i32);
    let e = errno(
        c.create(CreateRequest {
            header: header(),
            parent: link.id.clone(),
            name: b(b"pwn"),
            mode: 0o644,
            uid: 0,
            gid: 0,
            flags: libc::O_CREAT,
        })
        .await,
    );
    assert_eq!(e, libc::ENOTDIR);
    let e = errno(
        c.read(ReadRequest {
            id: link.id.clone(),
            handle: 0,
            offset: 0,
            size: 100,
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    // Moving a directory into its own subtree.
    let sub = c
        .lookup(LookupRequest {
            parent: d.to_wire(),
            name: b(b"sub"),
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let e = errno(
        c.rename(RenameRequest {
            header: header(),
            parent: root(),
            name: b(b"d"),
            new_parent: sub.id,
            new_name: b(b"loop"),
            flags: 0,
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);

    assert_eq!(snapshot(&mut c, &server.brick_dir()).await, before);
    server.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_ids() {
    let mut server = Server::start();
    let mut c = server.client().await;
    let (_, f) = populate(&mut c).await;
    let before = snapshot(&mut c, &server.brick_dir()).await;
    let unknown = FileId::from_parts(0xdead_beef, 0x7777_7777).to_wire();
    let malformed = [Bytes::new(), b(&[1; 15]), b(&[1; 17]), b(&[0xff; 1000])];
    for (id, want) in malformed
        .iter()
        .map(|m| (m.clone(), libc::EINVAL))
        .chain([(unknown.clone(), libc::ESTALE)])
    {
        let e = errno(c.get_attr(GetAttrRequest { id: id.clone() }).await);
        assert_eq!(e, want, "getattr {id:?}");
        let e = errno(
            c.lookup(LookupRequest {
                parent: id.clone(),
                name: b(b"x"),
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.read_dir(ReadDirRequest {
                id: id.clone(),
                cursor: 0,
                max_entries: 10,
                plus: true,
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.write(WriteRequest {
                header: header(),
                id: id.clone(),
                handle: 0,
                offset: 0,
                data: b(b"x"),
                append: false,
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.mkdir(MkdirRequest {
                header: header(),
                parent: id.clone(),
                name: b(b"x"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.set_attr(SetAttrRequest {
                header: header(),
                id: id.clone(),
                mode: Some(0o777),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.link(LinkRequest {
                header: header(),
                id: id.clone(),
                new_parent: root(),
                new_name: b(b"x"),
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.rename(RenameRequest {
                header: header(),
                parent: root(),
                name: b(b"d"),
                new_parent: id.clone(),
                new_name: b(b"x"),
                flags: 0,
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.open(OpenRequest {
                id: id.clone(),
                flags: libc::O_RDWR | libc::O_TRUNC,
                header: header(),
                prefetch: u32::MAX,
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.set_xattr(SetXattrRequest {
                header: header(),
                id: id.clone(),
                name: b(b"user.x"),
                value: b(b"v"),
                flags: 0,
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.set_lock(SetLockRequest {
                id: id.clone(),
                handle: 0,
                lock_owner: 1,
                lock: Some(LockRange {
                    typ: LockType::Write as i32,
                    start: 0,
                    end: 10,
                    pid: 1,
                }),
                flock: false,
                client_id: b(&[1; 16]),
            })
            .await,
        );
        assert_eq!(e, want);
        let e = errno(
            c.copy_file_range(CopyFileRangeRequest {
                header: header(),
                id_in: f.to_wire(),
                handle_in: 0,
                offset_in: 0,
                id_out: id.clone(),
                handle_out: 0,
                offset_out: 0,
                length: 8,
            })
            .await,
        );
        assert_eq!(e, want);
    }
    // A client id that is not 16 bytes.
    let e = errno(
        c.mkdir(MkdirRequest {
            header: Some(RequestHeader {
                client_id: b(b"short"),
                seq: 5,
                ack_below: 0,
            }),
            parent: root(),
            name: b(b"x"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    let e = errno(
        c.get_lock(GetLockRequest {
            id: f.to_wire(),
            handle: 0,
            lock_owner: 1,
            lock: Some(LockRange {
                typ: LockType::Read as i32,
                start: 0,
                end: 1,
                pid: 1,
            }),
            client_id: b(b"x"),
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    // Releasing handles that never existed is harmless.
    c.release(ReleaseRequest {
        id: f.to_wire(),
        handle: 987_654_321,
        flock_release: true,
        lock_owner: 3,
        header: header(),
    })
    .await
    .unwrap();

    assert_eq!(snapshot(&mut c, &server.brick_dir()).await, before);
    server.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_sizes_are_bounded() {
    let mut server = Server::start();
    let mut c = server.client().await;
    let (d, f) = populate(&mut c).await;
    // A huge copy is cut to what exists.
    let g = c
        .create(CreateRequest {
            header: header(),
            parent: d.to_wire(),
            name: b(b"copy"),
            mode: 0o644,
            uid: 0,
            gid: 0,
            flags: libc::O_CREAT | libc::O_EXCL,
        })
        .await
        .unwrap()
        .into_inner();
    let g_id = g.attr.unwrap().id;
    assert_ne!(g.handle, 0);
    let copied = c
        .copy_file_range(CopyFileRangeRequest {
            header: header(),
            id_in: f.to_wire(),
            handle_in: 0,
            offset_in: 0,
            id_out: g_id.clone(),
            handle_out: 0,
            offset_out: 0,
            length: u64::MAX,
        })
        .await
        .unwrap()
        .into_inner()
        .copied;
    assert_eq!(copied, 8);
    let before = snapshot(&mut c, &server.brick_dir()).await;

    let e = errno(
        c.read(ReadRequest {
            id: f.to_wire(),
            handle: 0,
            offset: 0,
            size: u32::MAX,
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    let e = errno(
        c.read(ReadRequest {
            id: f.to_wire(),
            handle: 0,
            offset: u64::MAX,
            size: 10,
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    let e = errno(
        c.write(WriteRequest {
            header: header(),
            id: f.to_wire(),
            handle: 0,
            offset: 0,
            data: Bytes::from(vec![0u8; MAX_IO_SIZE + 1]),
            append: false,
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    for offset in [u64::MAX, i64::MAX as u64] {
        let e = errno(
            c.write(WriteRequest {
                header: header(),
                id: f.to_wire(),
                handle: 0,
                offset,
                data: b(b"xy"),
                append: false,
            })
            .await,
        );
        assert!(
            e == libc::EINVAL || e == libc::EFBIG,
            "write at {offset}: {e}"
        );
    }
    let e = errno(
        c.set_attr(SetAttrRequest {
            header: header(),
            id: f.to_wire(),
            size: Some(u64::MAX),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    let e = errno(
        c.fallocate(FallocateRequest {
            header: header(),
            id: f.to_wire(),
            handle: 0,
            offset: u64::MAX,
            length: u64::MAX,
            mode: 0,
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    let e = errno(
        c.set_xattr(SetXattrRequest {
            header: header(),
            id: f.to_wire(),
            name: b(b"user.big"),
            value: Bytes::from(vec![1u8; 64 * 1024 + 1]),
            flags: 0,
        })
        .await,
    );
    assert_eq!(e, libc::E2BIG);
    let mut long_xattr = b"user.".to_vec();
    long_xattr.resize(256, b'x');
    let e = errno(
        c.set_xattr(SetXattrRequest {
            header: header(),
            id: f.to_wire(),
            name: Bytes::from(long_xattr.clone()),
            value: b(b"v"),
            flags: 0,
        })
        .await,
    );
    assert_eq!(e, libc::ERANGE);
    let e = errno(
        c.get_xattr(GetXattrRequest {
            id: f.to_wire(),
            name: Bytes::from(long_xattr),
        })
        .await,
    );
    assert_eq!(e, libc::ERANGE);
    let e = errno(
        c.symlink(SymlinkRequest {
            header: header(),
            parent: d.to_wire(),
            name: b(b"s"),
            target: Bytes::from(vec![b'a'; 4096]),
            uid: 0,
            gid: 0,
        })
        .await,
    );
    assert_eq!(e, libc::ENAMETOOLONG);
    let e = errno(
        c.lseek(LseekRequest {
            id: f.to_wire(),
            handle: 0,
            offset: i64::MAX,
            whence: libc::SEEK_DATA,
        })
        .await,
    );
    assert_eq!(e, libc::ENXIO);
    let e = errno(
        c.set_lock(SetLockRequest {
            id: f.to_wire(),
            handle: 0,
            lock_owner: 1,
            lock: Some(LockRange {
                typ: LockType::Write as i32,
                start: 10,
                end: 5,
                pid: 1,
            }),
            flock: false,
            client_id: b(&[1; 16]),
        })
        .await,
    );
    assert_eq!(e, libc::EINVAL);
    // A huge readdir batch is clamped, not honoured.
    let r = c
        .read_dir(ReadDirRequest {
            id: root(),
            cursor: 0,
            max_entries: u32::MAX,
            plus: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.eof && r.entries.len() == 2);
    assert_eq!(snapshot(&mut c, &server.brick_dir()).await, before);
    server.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_batches_are_clamped() {
    let mut server = Server::start();
    let c = server.client().await;
    let (d, _) = {
        let mut c = c.clone();
        populate(&mut c).await
    };
    let n = kadalu_proto::MAX_READDIR_ENTRIES as usize + 50;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                c.mknod(MknodRequest {
                    header: header(),
                    parent: d.to_wire(),
                    name: Bytes::from(format!("e{i}")),
                    mode: libc::S_IFIFO | 0o644,
                    rdev: 0,
                    uid: 0,
                    gid: 0,
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = c;
    let r = c
        .read_dir(ReadDirRequest {
            id: d.to_wire(),
            cursor: 0,
            max_entries: u32::MAX,
            plus: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.entries.len(), kadalu_proto::MAX_READDIR_ENTRIES as usize);
    assert!(!r.eof);
    server.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_and_garbage_bytes() {
    let mut server = Server::start();
    let mut c = server.client().await;
    let (_, f) = populate(&mut c).await;
    let before = snapshot(&mut c, &server.brick_dir()).await;

    // A message beyond the server's decode limit is refused by gRPC itself.
    let r = c
        .write(WriteRequest {
            header: header(),
            id: f.to_wire(),
            handle: 0,
            offset: 0,
            data: Bytes::from(vec![7u8; MAX_MESSAGE_SIZE + 1024]),
            append: false,
        })
        .await;
    let status = r.expect_err("oversize write accepted");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "{status:?}"
    );

    // Raw garbage on the socket: random bytes, an HTTP/1 request, an HTTP/2
    // preface followed by junk frames, and a connection that just hangs up.
    let mut payloads: Vec<Vec<u8>> = vec![
        (0..4096).map(|_| rand::random::<u8>()).collect(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &[0xff; 512]].concat(),
        // A frame header claiming a 16 MiB frame.
        [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            &[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1],
        ]
        .concat(),
        Vec::new(),
    ];
    payloads.push(vec![0u8; 1 << 20]);
    for p in &payloads {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(p);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    server.assert_alive();

    // The server still serves, on a fresh connection too, and nothing changed.
    let mut fresh = server.client().await;
    let data = fresh
        .read(ReadRequest {
            id: f.to_wire(),
            handle: 0,
            offset: 0,
            size: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .data;
    assert_eq!(&data[..], b"precious");
    assert_eq!(snapshot(&mut fresh, &server.brick_dir()).await, before);
    server.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_requests_apply_once() {
    let mut server = Server::start();
    let mut c = server.client().await;
    let h = header();
    let mk = |h: Option<RequestHeader>| MkdirRequest {
        header: h,
        parent: root(),
        name: b(b"once"),
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    let first = c.mkdir(mk(h.clone())).await.unwrap().into_inner();
    let retry = c.mkdir(mk(h)).await.unwrap().into_inner();
    assert_eq!(first, retry, "a retried mkdir gets the first answer");
    // A new request for the same name is a new mkdir.
    assert_eq!(errno(c.mkdir(mk(header())).await), libc::EEXIST);
    let root_attr = c
        .get_attr(GetAttrRequest { id: root() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(root_attr.attr.unwrap().nlink, 3);
    server.assert_alive();
}
