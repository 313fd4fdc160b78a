//! The `kadalu-server` binary as a process: it announces its address, stops
//! cleanly on SIGTERM with everything durable, and after a kill -9 reopens
//! with a consistent namespace and every change it had acknowledged, fsync'd
//! or not.

use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::brick::*;
use kadalu_proto::{FileId, ROOT_ID};
use prost::bytes::Bytes;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(brick: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kadalu-server"))
            .arg("--brick-dir")
            .arg(brick)
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
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("kadalu-server listening on ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kadalu-server did not report listening: {line:?}");
        };
        Server { child, addr }
    }

    async fn client(&self) -> BrickClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        BrickClient::new(ch)
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn create_with(
    c: &mut BrickClient<Channel>,
    parent: FileId,
    name: &str,
    data: &str,
) -> FileId {
    let r = c
        .create(CreateRequest {
            header: None,
            parent: parent.to_wire(),
            name: b(name),
            mode: 0o644,
            uid: 0,
            gid: 0,
            flags: libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        })
        .await
        .unwrap()
        .into_inner();
    let id = FileId::from_wire(&r.attr.unwrap().id).unwrap();
    c.write(WriteRequest {
        header: None,
        id: id.to_wire(),
        handle: r.handle,
        offset: 0,
        data: b(data),
        append: false,
    })
    .await
    .unwrap();
    id
}

async fn read_all(c: &mut BrickClient<Channel>, parent: FileId, name: &str) -> Option<String> {
    let a = c
        .lookup(LookupRequest {
            parent: parent.to_wire(),
            name: b(name),
        })
        .await
        .ok()?
        .into_inner()
        .attr?;
    let data = c
        .read(ReadRequest {
            id: a.id,
            handle: 0,
            offset: 0,
            size: 1 << 20,
        })
        .await
        .unwrap()
        .into_inner()
        .data;
    Some(String::from_utf8_lossy(&data).into_owned())
}

/// Every entry of every directory resolves to an inode with a sane link count.
async fn assert_consistent(c: &mut BrickClient<Channel>) -> usize {
    let mut count = 0;
    let mut todo = vec![ROOT_ID];
    while let Some(dir) = todo.pop() {
        let r = c
            .read_dir(ReadDirRequest {
                id: dir.to_wire(),
                cursor: 0,
                max_entries: 0,
                plus: true,
            })
            .await
            .unwrap()
            .into_inner();
        for e in r.entries {
            count += 1;
            let a = e.attr.expect("entry with attributes");
            assert!(a.nlink >= 1);
            if a.kind == FileKind::Directory as i32 {
                todo.push(FileId::from_wire(&e.id).unwrap());
            }
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let brick = dir.path().join("brick");
    let mut s = Server::start(&brick);
    let mut c = s.client().await;
    create_with(&mut c, ROOT_ID, "a", "alpha").await;
    drop(c);
    let status = s.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let s = Server::start(&brick);
    let mut c = s.client().await;
    assert_eq!(
        read_all(&mut c, ROOT_ID, "a").await.as_deref(),
        Some("alpha")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_a_consistent_brick() {
    let dir = tempfile::tempdir().unwrap();
    let brick = dir.path().join("brick");
    let mut s = Server::start(&brick);
    let mut c = s.client().await;
    let d = c
        .mkdir(MkdirRequest {
            header: None,
            parent: ROOT_ID.to_wire(),
            name: b("d"),
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
    let synced = create_with(&mut c, d, "synced", "durable").await;
    c.fsync(FsyncRequest {
        id: synced.to_wire(),
        handle: 0,
        datasync: false,
    })
    .await
    .unwrap();
    // Acknowledged a moment before the kill, never fsync'd.
    create_with(&mut c, d, "unsynced", "acknowledged").await;
    // Keep changing the namespace while the process dies.
    let mut busy = c.clone();
    let writer = tokio::spawn(async move {
        let mut acknowledged = 0;
        for i in 0.. {
            let r = busy
                .mknod(MknodRequest {
                    header: None,
                    parent: d.to_wire(),
                    name: Bytes::from(format!("n{i}")),
                    mode: libc::S_IFREG | 0o644,
                    rdev: 0,
                    uid: 0,
                    gid: 0,
                })
                .await;
            if r.is_err() {
                break;
            }
            acknowledged = i + 1;
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.signal(libc::SIGKILL);
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged > 10,
        "only {acknowledged} mknods before the kill"
    );
    drop(c);

    let s = Server::start(&brick);
    let mut c = s.client().await;
    assert_eq!(
        read_all(&mut c, d, "synced").await.as_deref(),
        Some("durable")
    );
    assert_eq!(
        read_all(&mut c, d, "unsynced").await.as_deref(),
        Some("acknowledged")
    );
    let entries = assert_consistent(&mut c).await;
    assert!(entries >= 3, "at least /d, /d/synced and /d/unsynced");
    for i in 0..acknowledged {
        c.lookup(LookupRequest {
            parent: d.to_wire(),
            name: Bytes::from(format!("n{i}")),
        })
        .await
        .unwrap_or_else(|e| panic!("acknowledged mknod n{i} of {acknowledged} lost: {e}"));
    }
    // The brick still takes changes.
    create_with(&mut c, d, "after", "x").await;
    assert_eq!(read_all(&mut c, d, "after").await.as_deref(), Some("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_hold_across_clients_and_restarts_never_reuse_inodes() {
    let dir = tempfile::tempdir().unwrap();
    let brick = dir.path().join("brick");
    let mut s = Server::start(&brick);
    let mut c = s.client().await;
    let f = create_with(&mut c, ROOT_ID, "f", "0123456789").await;
    let a = Bytes::from_static(&[0xa; 16]);
    let bb = Bytes::from_static(&[0xb; 16]);
    let range = |typ: LockType, start, end| {
        Some(LockRange {
            typ: typ as i32,
            start,
            end,
            pid: 42,
        })
    };
    let set = |client: &Bytes, owner, lock, flock| SetLockRequest {
        id: f.to_wire(),
        handle: 1,
        lock_owner: owner,
        lock,
        flock,
        client_id: client.clone(),
    };
    c.set_lock(set(&a, 1, range(LockType::Write, 0, 4), false))
        .await
        .unwrap();
    // The same lock owner number from another client is another owner.
    let err = c
        .set_lock(set(&bb, 1, range(LockType::Read, 4, 9), false))
        .await
        .unwrap_err();
    assert_eq!(kadalu_proto::errno::errno_of(&err), Some(libc::EAGAIN));
    c.set_lock(set(&bb, 1, range(LockType::Read, 5, 9), false))
        .await
        .unwrap();
    let held = c
        .get_lock(GetLockRequest {
            id: f.to_wire(),
            handle: 1,
            lock_owner: 1,
            lock: range(LockType::Write, 0, u64::MAX),
            client_id: bb.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    assert_eq!(
        (held.typ, held.start, held.end, held.pid),
        (LockType::Write as i32, 0, 4, 42)
    );
    // close(2) by client a releases its POSIX locks.
    c.flush(FlushRequest {
        id: f.to_wire(),
        handle: 1,
        lock_owner: 1,
        header: Some(RequestHeader {
            client_id: a.clone(),
            seq: 0,
            ack_below: 0,
        }),
    })
    .await
    .unwrap();
    c.set_lock(set(&bb, 1, range(LockType::Write, 0, 4), false))
        .await
        .unwrap();
    // flock is whole-file and independent of POSIX locks.
    c.set_lock(set(&a, 9, range(LockType::Write, 0, 0), true))
        .await
        .unwrap();
    let err = c
        .set_lock(set(&bb, 9, range(LockType::Read, 0, 0), true))
        .await
        .unwrap_err();
    assert_eq!(kadalu_proto::errno::errno_of(&err), Some(libc::EAGAIN));
    let st = c
        .stat_fs(StatFsRequest {
            id: ROOT_ID.to_wire(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.blocks > 0 && st.bsize > 0 && st.namelen == 255);

    drop(c);
    s.signal(libc::SIGKILL);
    let s = Server::start(&brick);
    let mut c = s.client().await;
    let g = create_with(&mut c, ROOT_ID, "g", "x").await;
    assert!(
        g.ino() > f.ino() + 1000,
        "a restart skips ahead: {} after {}",
        g.ino(),
        f.ino()
    );
}

/// Replies to changes of names carry the directories as the change left them:
/// the same attributes a GetAttr right after returns.
#[tokio::test]
async fn name_changes_answer_with_their_directories() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.client().await;
    let getattr = |c: &mut BrickClient<Channel>, id: Bytes| {
        let mut c = c.clone();
        async move {
            c.get_attr(GetAttrRequest { id })
                .await
                .unwrap()
                .into_inner()
                .attr
                .unwrap()
        }
    };
    let made = c
        .mkdir(MkdirRequest {
            header: None,
            parent: ROOT_ID.to_wire(),
            name: b("d"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let d = made.attr.unwrap().id;
    let root_after_mkdir = made.parent.expect("mkdir answers with the parent");
    assert_eq!(root_after_mkdir, getattr(&mut c, ROOT_ID.to_wire()).await);
    assert_eq!(
        root_after_mkdir.nlink, 3,
        "the new subdirectory's '..' counts"
    );

    let created = c
        .create(CreateRequest {
            header: None,
            parent: d.clone(),
            name: b("f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
            flags: libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        })
        .await
        .unwrap()
        .into_inner();
    let d_after_create = created.parent.expect("create answers with the parent");
    assert_eq!(d_after_create, getattr(&mut c, d.clone()).await);

    let renamed = c
        .rename(RenameRequest {
            header: None,
            parent: d.clone(),
            name: b("f"),
            new_parent: ROOT_ID.to_wire(),
            new_name: b("g"),
            flags: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.parent.unwrap(), getattr(&mut c, d.clone()).await);
    assert_eq!(
        renamed.new_parent.unwrap(),
        getattr(&mut c, ROOT_ID.to_wire()).await
    );

    let removed = c
        .unlink(UnlinkRequest {
            header: None,
            parent: ROOT_ID.to_wire(),
            name: b("g"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        removed.parent.unwrap(),
        getattr(&mut c, ROOT_ID.to_wire()).await
    );
    let removed = c
        .rmdir(RmdirRequest {
            header: None,
            parent: ROOT_ID.to_wire(),
            name: b("d"),
        })
        .await
        .unwrap()
        .into_inner();
    let root = removed.parent.unwrap();
    assert_eq!(root, getattr(&mut c, ROOT_ID.to_wire()).await);
    assert_eq!(root.nlink, 2);
    // A failed change answers with its error, not with a directory.
    let gone = c
        .rmdir(RmdirRequest {
            header: None,
            parent: ROOT_ID.to_wire(),
            name: b("d"),
        })
        .await
        .unwrap_err();
    assert_eq!(kadalu_proto::errno::errno_of(&gone), Some(libc::ENOENT));
}

/// An open that asks for a prefetch gets the file's first bytes, exactly as a
/// read right after would, and only where reading is allowed.
#[tokio::test]
async fn open_returns_the_first_bytes_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = server.client().await;
    let small = create_with(&mut c, ROOT_ID, "small", "hello").await;
    let big_text = "x".repeat(300 * 1024);
    let big = create_with(&mut c, ROOT_ID, "big", &big_text).await;
    let open = |c: &mut BrickClient<Channel>, id: FileId, flags: i32, prefetch: u32| {
        let mut c = c.clone();
        async move {
            c.open(OpenRequest {
                id: id.to_wire(),
                flags,
                header: None,
                prefetch,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let r = open(&mut c, small, libc::O_RDONLY, 4096).await;
    assert_eq!(
        r.data.as_deref(),
        Some(&b"hello"[..]),
        "short: the whole file"
    );
    let r = open(&mut c, big, libc::O_RDWR, u32::MAX).await;
    let data = r.data.unwrap();
    assert_eq!(data.len() as u32, kadalu_proto::MAX_PREFETCH, "capped");
    assert!(data.iter().all(|b| *b == b'x'));
    assert_eq!(open(&mut c, small, libc::O_RDONLY, 0).await.data, None);
    assert_eq!(
        open(&mut c, small, libc::O_WRONLY, 4096).await.data,
        None,
        "not readable through this open"
    );
    assert_eq!(
        open(&mut c, ROOT_ID, libc::O_RDONLY | libc::O_DIRECTORY, 4096)
            .await
            .data,
        None,
        "not a regular file"
    );
    let r = open(&mut c, small, libc::O_RDWR | libc::O_TRUNC, 4096).await;
    assert_eq!(r.data.as_deref(), Some(&b""[..]), "read after the truncate");
}
