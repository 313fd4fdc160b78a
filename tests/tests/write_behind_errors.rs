//! Errors of writes the mount acknowledged before the brick had them
//! (write-behind): they must not vanish. The file's next write, fsync or close
//! reports the error, once, as NFS and GlusterFS do.
//!
//! A FUSE flush comes with every close of any copy of a descriptor, including
//! the copies a child process inherits and closes at exec, and the first flush
//! takes the report. The tests here therefore run one at a time and start no
//! process while a report is pending.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kadalu_e2e::process::{poll_until, run_bounded};
use kadalu_e2e::sys;
use kadalu_e2e::{Brick, MountOptions, Pool};
use nix::errno::Errno;

const UNAVAILABLE_WAIT: f64 = 2.0;
const RPC_TIMEOUT: f64 = 1.0;
/// A request against a dead server must have failed by then (wait + one RPC + slack).
const FAIL_WITHIN: Duration = Duration::from_secs(12);
/// How long the mount may take to notice the server is back.
const RECOVER_WITHIN: Duration = Duration::from_secs(15);
/// The errnos a client may give while the server is unreachable.
const DOWN_ERRNOS: [Errno; 2] = [Errno::ETIMEDOUT, Errno::EHOSTUNREACH];

/// Held by each test for its whole run: see the module doc.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn options() -> MountOptions {
    MountOptions {
        rpc_timeout: Some(RPC_TIMEOUT),
        unavailable_wait: Some(UNAVAILABLE_WAIT),
        entry_ttl: Some(0.1),
        attr_ttl: Some(0.1),
        ..MountOptions::default()
    }
}

/// Runs `op` in its own thread and reports its result and duration, or `None` if
/// it had not returned within [`FAIL_WITHIN`] (a hung request).
fn bounded<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, Errno> + Send + 'static,
) -> Option<(Result<T, Errno>, Duration)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let r = op();
        let _ = tx.send((r, start.elapsed()));
    });
    rx.recv_timeout(FAIL_WITHIN).ok()
}

/// Waits until the mount answers again (statfs is never cached by the kernel).
fn wait_until_back(root: &Path) {
    let root = root.to_path_buf();
    poll_until(RECOVER_WITHIN, Duration::from_millis(100), || {
        let r = root.clone();
        bounded(move || sys::statvfs(&r)).and_then(|(r, _)| r.ok())
    })
    .unwrap_or_else(|| {
        panic!("mount did not answer within {RECOVER_WITHIN:?} of the server's restart")
    });
}

#[test]
fn writes_acknowledged_while_down_report_their_error_at_fsync_and_close() {
    // Write-behind acknowledges a write before the brick has it. A write that
    // then never reaches the brick must not vanish: the file's next fsync or
    // close (or write) says so, once, as NFS and GlusterFS do.
    let _serial = serial();
    let mut pool = Pool::start_with(1, &options());
    let root = pool.path().to_path_buf();
    sys::write_file(&root.join("f"), b"0123456789").unwrap();
    let closed = sys::open(&root.join("f"), libc::O_WRONLY, 0).unwrap();
    let synced = sys::open(&root.join("f"), libc::O_WRONLY, 0).unwrap();
    pool.brick_mut().kill();

    let (closed_raw, synced_raw) = (
        std::os::fd::IntoRawFd::into_raw_fd(closed),
        std::os::fd::AsRawFd::as_raw_fd(&synced),
    );
    let (r, took) = bounded(move || {
        let fd = unsafe { OwnedFd::from_raw_fd(closed_raw) };
        let written = sys::pwrite(sys::fd_of(&fd), b"AB", 2);
        Ok((written, sys::close(fd)))
    })
    .expect("write + close hung while the server was down");
    let (written, closed) = r.unwrap();
    assert_eq!(written, Ok(2), "write-behind acknowledges the write");
    let e = closed.expect_err("close after a write the brick never got reported success");
    assert!(DOWN_ERRNOS.contains(&e), "close gave {e:?} after {took:?}");

    let (r, took) = bounded(move || {
        let fd = unsafe { BorrowedFd::borrow_raw(synced_raw) };
        let written = sys::pwrite(fd, b"CD", 4);
        Ok((written, sys::fsync(fd)))
    })
    .expect("write + fsync hung while the server was down");
    let (written, synced_result) = r.unwrap();
    assert_eq!(written, Ok(2), "write-behind acknowledges the write");
    let e = synced_result.expect_err("fsync after a write the brick never got reported success");
    assert!(DOWN_ERRNOS.contains(&e), "fsync gave {e:?} after {took:?}");

    pool.brick_mut().restart();
    wait_until_back(&root);
    // Reported once: the same descriptor works again.
    sys::fsync(sys::fd_of(&synced)).expect("the error was reported twice");
    sys::pwrite_all(sys::fd_of(&synced), b"ef", 6).unwrap();
    sys::close(synced).unwrap();
    assert_eq!(
        sys::read_file(&root.join("f")).unwrap(),
        b"012345ef89",
        "the writes that failed must not have landed, the later one must"
    );
}

/// A small tmpfs mounted for the life of a test; unmounted (lazily if busy) on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        assert!(
            run_bounded(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={size}"))
                    .arg("tmpfs")
                    .arg(at),
                Duration::from_secs(10),
            ),
            "mounting a tmpfs at {}",
            at.display()
        );
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if !run_bounded(Command::new("umount").arg(&self.0), Duration::from_secs(10)) {
            run_bounded(
                Command::new("umount").arg("-l").arg(&self.0),
                Duration::from_secs(10),
            );
        }
    }
}

#[test]
fn a_brick_out_of_space_fails_acknowledged_writes_and_fsync_and_close_say_so() {
    let _serial = serial();
    // Drops run in reverse: the pool (brick, mounts) goes before the tmpfs.
    let outer = tempfile::Builder::new()
        .prefix("kadalu-small-brick-")
        .tempdir()
        .unwrap();
    let _fs = SmallFs::mount(&outer.path().join("fs"), "24m");
    let root = tempfile::Builder::new()
        .prefix("brick-")
        .tempdir_in(outer.path().join("fs"))
        .unwrap();
    let pool = Pool::with_brick(Brick::start_in(root), 1, &MountOptions::default());
    let block = vec![0x5au8; 1 << 20];
    // Both made while there is room; each then gets more than the brick holds.
    let by_close = sys::open(
        &pool.path().join("by-close"),
        libc::O_CREAT | libc::O_WRONLY,
        0o644,
    )
    .unwrap();
    let by_fsync = sys::open(
        &pool.path().join("by-fsync"),
        libc::O_CREAT | libc::O_WRONLY,
        0o644,
    )
    .unwrap();

    // Write-behind acknowledges the writes; the brick refuses some afterwards.
    // (A later write may itself carry the error of an earlier one.)
    let fill = |fd: BorrowedFd<'_>, n: u64| -> Option<Errno> {
        (0..n).find_map(|i| sys::pwrite_all(fd, &block, i << 20).err())
    };
    let at_write = fill(sys::fd_of(&by_close), 48);
    let closed = sys::close(by_close);
    assert_eq!(
        at_write.or(closed.err()),
        Some(Errno::ENOSPC),
        "a full brick must surface as ENOSPC at the latest at close"
    );

    let at_write = fill(sys::fd_of(&by_fsync), 8);
    let synced = sys::fsync(sys::fd_of(&by_fsync));
    assert_eq!(
        at_write.or(synced.err()),
        Some(Errno::ENOSPC),
        "a full brick must surface as ENOSPC at the latest at fsync"
    );
    // Reported once: the close after it has nothing more to say. (A second
    // fsync would reach the brick, whose store is out of space too.)
    sys::close(by_fsync).unwrap();
}
