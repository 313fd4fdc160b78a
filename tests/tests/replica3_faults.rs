//! Replica3 with one brick's disk in trouble: it fills up, or it fails and
//! the kernel turns it read-only. Writers through the FUSE mount see no
//! error (two bricks are a majority), the brick in trouble reports itself
//! faulty in `RaftAdmin.Status` instead of diverging silently, and the other
//! two end with identical trees holding every byte that was written.
//!
//! Every brick gets a file system of its own, so that the brick in trouble
//! can be picked by its role once the set is up: the leader (its failure
//! costs an election, which the writer sees as a pause) or a follower (the
//! writer should not notice at all). Needs root: the tests mount tmpfs and
//! loop-backed ext4. Every wait is bounded.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kadalu_e2e::process::run_bounded;
use kadalu_e2e::{Mount, MountOptions, ReplicaSet};
use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::brick::{GetAttrRequest, MkdirRequest, RequestHeader};
use tempfile::TempDir;

const MIB: usize = 1 << 20;
/// Files the writer makes, a MiB each: more than the full brick holds.
const FILES: usize = 40;
/// How long the brick in trouble may take to say so, once it is.
const FAULT_REPORTED: Duration = Duration::from_secs(30);
/// How long the healthy two may take to agree once the writes are done.
const CONVERGE: Duration = Duration::from_secs(30);
/// Longest one file may take while a brick is in trouble.
const MAX_PAUSE: Duration = Duration::from_secs(20);

fn mount_opts() -> MountOptions {
    MountOptions::replica3()
}

/// A file system made for one brick, mounted for the life of a test and
/// unmounted (lazily if still busy) on drop.
struct Disk {
    at: PathBuf,
}

impl Disk {
    fn run(cmd: &mut Command, what: &str) {
        assert!(run_bounded(cmd, Duration::from_secs(20)), "{what} failed");
    }

    /// A tmpfs of `size` (as `mount -o size=` takes it) at `at`.
    fn tmpfs(at: &Path, size: &str) -> Disk {
        std::fs::create_dir_all(at).unwrap();
        Disk::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(at),
            &format!("mounting a tmpfs at {}", at.display()),
        );
        Disk {
            at: at.to_path_buf(),
        }
    }

    /// An ext4 of `bytes` in the (sparse) image file `image`, loop-mounted
    /// at `at` with `errors=remount-ro`: on an error the kernel turns it
    /// read-only, as it would a failing disk.
    fn ext4(image: &Path, at: &Path, bytes: u64) -> Disk {
        std::fs::create_dir_all(at).unwrap();
        File::create(image).unwrap().set_len(bytes).unwrap();
        Disk::run(
            Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image),
            "mkfs.ext4",
        );
        Disk::run(
            Command::new("mount")
                .args(["-o", "loop,errors=remount-ro"])
                .arg(image)
                .arg(at),
            &format!("loop-mounting {} at {}", image.display(), at.display()),
        );
        Disk {
            at: at.to_path_buf(),
        }
    }

    /// A fresh directory on this file system, for one brick's root.
    fn brick_root(&self) -> TempDir {
        tempfile::Builder::new()
            .prefix("brick-")
            .tempdir_in(&self.at)
            .unwrap()
    }

    /// Gives a tmpfs a new size limit; a smaller one than it uses fails.
    fn resize(&self, size: &str) {
        Disk::run(
            Command::new("mount")
                .arg("-o")
                .arg(format!("remount,size={size}"))
                .arg(&self.at),
            &format!("resizing the tmpfs at {}", self.at.display()),
        );
    }

    /// Makes the ext4 record an error, as a failing disk would; with
    /// `errors=remount-ro` the kernel turns it read-only at once, open files
    /// and all (`mount -o remount,ro` would refuse while the brick holds
    /// files open for writing), and every later write gets EROFS.
    fn fail(&self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let at = self.at.to_str().unwrap();
        let source = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some((f.next()?, f.next()?))
            })
            .find(|(_, mp)| *mp == at)
            .map(|(src, _)| src.to_string())
            .unwrap_or_else(|| panic!("{at} is not in /proc/self/mounts"));
        let dev = Path::new(&source).file_name().unwrap().to_str().unwrap();
        std::fs::write(
            format!("/sys/fs/ext4/{dev}/trigger_fs_error"),
            "e2e: the disk fails\n",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.is_read_only() {
            assert!(Instant::now() < deadline, "{at} did not turn read-only");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether a new file gets EROFS. (Recent kernels mark ext4's
    /// emergency read-only state apart from the mount flags, so statvfs
    /// does not show it.)
    fn is_read_only(&self) -> bool {
        let probe = File::create(self.at.join("probe"));
        probe.is_err_and(|e| e.raw_os_error() == Some(libc::EROFS))
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if !run_bounded(
            Command::new("umount").arg(&self.at),
            Duration::from_secs(10),
        ) {
            run_bounded(
                Command::new("umount").arg("-l").arg(&self.at),
                Duration::from_secs(10),
            );
        }
    }
}

/// Content of file `i`: its number, then a pattern of its own.
fn content(i: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..MIB).map(|j| ((j * 31 + i * 7) % 251) as u8).collect();
    data[..8].copy_from_slice(&(i as u64).to_le_bytes());
    data
}

fn file_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("f{i:03}"))
}

/// What the writer did: files written and fsync'd, errors seen, the
/// longest a single file took.
struct WriterReport {
    written: usize,
    errors: Vec<String>,
    longest: Duration,
}

/// Writes `FILES` files of a MiB, each fsync'd and closed, counting them in
/// `done` as it goes.
fn writer(dir: PathBuf, done: Arc<AtomicUsize>) -> JoinHandle<WriterReport> {
    std::thread::spawn(move || {
        let mut report = WriterReport {
            written: 0,
            errors: Vec::new(),
            longest: Duration::ZERO,
        };
        // Bounded: give up after 2 minutes, whatever happened.
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in 0..FILES {
            if Instant::now() >= deadline {
                report.errors.push(format!("out of time at file {i}"));
                break;
            }
            let started = Instant::now();
            let r = File::create(file_path(&dir, i)).and_then(|mut f| {
                f.write_all(&content(i))?;
                f.sync_all()
            });
            report.longest = report.longest.max(started.elapsed());
            match r {
                Ok(()) => report.written += 1,
                Err(e) => report.errors.push(format!("file {i}: {e}")),
            }
            done.store(i + 1, Ordering::Release);
        }
        report
    })
}

/// Which brick gets the trouble.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Leader,
    Follower,
}

impl Victim {
    fn pick(self, set: &ReplicaSet) -> usize {
        let leader = set.wait_leader(Duration::from_secs(20)).expect("leader");
        match self {
            Victim::Leader => leader,
            Victim::Follower => (0..set.bricks.len()).find(|&i| i != leader).unwrap(),
        }
    }
}

/// Waits, while the writer runs, until brick `victim` reports a fault;
/// the fault and how long after `since` it was first seen.
fn wait_fault(
    set: &ReplicaSet,
    victim: usize,
    since: Instant,
    done: &AtomicUsize,
) -> (String, Duration) {
    let deadline = Instant::now() + FAULT_REPORTED;
    loop {
        match set.status(victim) {
            Ok(s) if !s.fault.is_empty() => return (s.fault, since.elapsed()),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "brick {victim} reported no fault within {FAULT_REPORTED:?} (writer at file {}): {:?}",
            done.load(Ordering::Acquire),
            (0..set.bricks.len())
                .map(|i| set.status(i))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asked directly, the faulty brick neither writes nor reads: it must not
/// serve a tree it no longer keeps up to date.
fn assert_refuses(set: &ReplicaSet, victim: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = format!("http://{}", set.bricks[victim].addr());
    rt.block_on(async move {
        let mut c = BrickClient::connect(addr).await.unwrap();
        let read = tokio::time::timeout(
            Duration::from_secs(15),
            c.get_attr(GetAttrRequest {
                id: kadalu_proto::ROOT_ID.to_wire(),
            }),
        )
        .await
        .expect("the faulty brick did not answer a read");
        assert!(read.is_err(), "the faulty brick answered a read: {read:?}");
        let write = tokio::time::timeout(
            Duration::from_secs(15),
            c.mkdir(MkdirRequest {
                header: Some(RequestHeader {
                    client_id: vec![5u8; 16].into(),
                    seq: 1,
                    ack_below: 0,
                }),
                parent: kadalu_proto::ROOT_ID.to_wire(),
                name: "on-the-faulty-brick".into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            }),
        )
        .await
        .expect("the faulty brick did not answer a write");
        assert!(write.is_err(), "the faulty brick took a write: {write:?}");
    });
}

/// The common part of the tests, once brick `victim`'s disk is in trouble
/// (or is about to be, `inject` runs after `inject_after` files): runs the
/// writer, and checks the writes, the fault report, the other two bricks'
/// agreement and the data.
fn write_through_fault(
    set: &ReplicaSet,
    m: &Mount,
    victim: usize,
    inject_after: usize,
    inject: impl FnOnce(),
) {
    let dir = m.path().to_path_buf();
    let done = Arc::new(AtomicUsize::new(0));
    let w = writer(dir.clone(), done.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Acquire) < inject_after && !w.is_finished() {
        assert!(Instant::now() < deadline, "the writer made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let injected = Instant::now();
    inject();
    let (fault, took) = wait_fault(set, victim, injected, &done);
    let at_file = done.load(Ordering::Acquire);
    let r = w.join().unwrap();
    eprintln!(
        "brick {victim} faulty {took:?} after the trouble began (writer at file {at_file}): {fault}"
    );
    eprintln!(
        "writer: {} of {FILES} files, longest {:?}",
        r.written, r.longest
    );
    assert!(r.errors.is_empty(), "the writer saw errors: {:?}", r.errors);
    assert_eq!(r.written, FILES);
    // A leader in trouble costs an election and the mount's retry after one
    // RPC deadline (3 s): a pause of seconds, well within its 30 s of waiting.
    assert!(
        r.longest < MAX_PAUSE,
        "a write took {:?} while one brick was in trouble",
        r.longest
    );

    let status = set.status(victim);
    eprintln!("faulty brick's status: {status:?}");
    assert!(
        status.as_ref().is_ok_and(|s| !s.fault.is_empty()),
        "the fault must stay reported: {status:?}"
    );
    assert_refuses(set, victim);

    let healthy: Vec<usize> = (0..set.bricks.len()).filter(|&i| i != victim).collect();
    let digest = set
        .wait_converged(&healthy, CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, majority_index) = set.digest(healthy[0]).unwrap();
    let leader = healthy
        .iter()
        .copied()
        .find(|&i| matches!(set.status(i), Ok(s) if s.state == "leader"))
        .expect("no leader among the healthy bricks");
    // The set knows too: the leader sees the faulty brick falling behind.
    let victim_id = status.as_ref().unwrap().node_id;
    let heal = set.heal_info(leader).unwrap_or_else(|e| panic!("{e}"));
    let lag = heal.members.iter().find(|mm| mm.node_id == victim_id);
    assert!(
        lag.is_some_and(|mm| mm.entries_pending > 0),
        "the leader does not see the faulty brick behind: {heal:?}"
    );
    // The faulty brick stopped somewhere behind; if it ever claims the
    // majority's position, it must hold the majority's tree.
    match set.digest(victim) {
        Ok((d, idx)) => {
            eprintln!("faulty brick stopped at index {idx}, the others are at {majority_index}");
            assert!(
                idx != majority_index || d == digest,
                "the faulty brick diverged at index {idx}"
            );
        }
        Err(e) => eprintln!("faulty brick gives no digest: {e}"),
    }

    for i in 0..FILES {
        let mut got = Vec::new();
        File::open(file_path(&dir, i))
            .and_then(|mut f| f.read_to_end(&mut got))
            .unwrap_or_else(|e| panic!("reading file {i} back: {e}"));
        assert!(got == content(i), "file {i} read back wrong");
    }
}

/// The healthy set, the mount, and the writer's warm-up files, before the
/// trouble: all three bricks agree.
fn warm_up(set: &ReplicaSet, m: &Mount) {
    for i in 0..4 {
        std::fs::write(m.path().join(format!("warm-{i}")), content(1000 + i)).unwrap();
    }
    set.wait_converged(&[0, 1, 2], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn full_disk(victim_role: Victim) {
    // Drops run in reverse: mount, set (bricks), disks, then their mount points.
    let outer = tempfile::Builder::new()
        .prefix("kadalu-r3-full-")
        .tempdir()
        .unwrap();
    let disks: Vec<Disk> = (0..3)
        .map(|i| Disk::tmpfs(&outer.path().join(format!("fs{i}")), "512m"))
        .collect();
    let set = ReplicaSet::start_with_roots(3, &[], |i| disks[i].brick_root());
    let m = Mount::start(&set.addrs(), &mount_opts());
    warm_up(&set, &m);
    let victim = victim_role.pick(&set);
    eprintln!("the {victim_role:?} (brick {victim}) gets a disk of 24 MiB");
    // Its log and its store each hold every file: it fills after ~10 of them.
    disks[victim].resize("24m");
    write_through_fault(&set, &m, victim, 0, || {});
}

fn failed_disk(victim_role: Victim) {
    let outer = tempfile::Builder::new()
        .prefix("kadalu-r3-failed-")
        .tempdir()
        .unwrap();
    let disks: Vec<Disk> = (0..3)
        .map(|i| {
            Disk::ext4(
                &outer.path().join(format!("img{i}")),
                &outer.path().join(format!("fs{i}")),
                256 << 20,
            )
        })
        .collect();
    let set = ReplicaSet::start_with_roots(3, &[], |i| disks[i].brick_root());
    let m = Mount::start(&set.addrs(), &mount_opts());
    warm_up(&set, &m);
    let victim = victim_role.pick(&set);
    eprintln!(
        "the {victim_role:?} (brick {victim} at {})'s disk fails after 10 files",
        set.bricks[victim].addr()
    );
    write_through_fault(&set, &m, victim, 10, || disks[victim].fail());
}

/// The case, on the leader: its disk fills while it leads, so the
/// set must also elect another leader; the writer sees a pause, no error.
#[test]
fn a_full_brick_disk_is_reported_faulty() {
    full_disk(Victim::Leader);
}

/// The same on a follower: the writer should not notice.
#[test]
fn a_full_follower_disk_is_reported_faulty() {
    full_disk(Victim::Follower);
}

/// The other case, on a follower: its disk fails (read-only) while
/// writes go on.
#[test]
fn a_failed_brick_disk_is_reported_faulty() {
    failed_disk(Victim::Follower);
}

/// The same on the leader.
#[test]
fn a_failed_leader_disk_is_reported_faulty() {
    failed_disk(Victim::Leader);
}
