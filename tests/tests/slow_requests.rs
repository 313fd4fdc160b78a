//! One slow request never stalls the mount: while more requests wait (blocking
//! lock waits) than the client has FUSE request loops, other operations on the
//! same mount still complete promptly.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use kadalu_e2e::sys::{self, flock_range};
use kadalu_e2e::{MountOptions, Pool};

const WAITERS: usize = 8;
const LOOPS: u32 = 2;

#[test]
fn blocked_lock_waiters_do_not_stall_other_requests() {
    let pool = Pool::start_with(
        1,
        &MountOptions {
            threads: Some(LOOPS),
            ..MountOptions::default()
        },
    );
    let root = pool.path().to_path_buf();
    sys::write_file(&root.join("other"), b"still served").unwrap();

    // Holders: one OFD write lock per file. Waiters: another open of the same
    // file asking F_OFD_SETLKW for the same range, which blocks until released.
    let mut holders = Vec::new();
    let (tx, rx) = mpsc::channel();
    for i in 0..WAITERS {
        let p = root.join(format!("locked-{i}"));
        sys::write_file(&p, b"x").unwrap();
        let h = sys::open(&p, libc::O_RDWR, 0).unwrap();
        sys::fcntl_setlk(
            std::os::fd::AsRawFd::as_raw_fd(&h),
            libc::F_OFD_SETLK,
            &flock_range(libc::F_WRLCK, 0, 0),
        )
        .unwrap();
        holders.push(h);
        let w = sys::open(&p, libc::O_RDWR, 0).unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let r = sys::fcntl_setlk(
                std::os::fd::AsRawFd::as_raw_fd(&w),
                libc::F_OFD_SETLKW,
                &flock_range(libc::F_WRLCK, 0, 0),
            );
            let _ = tx.send(r);
            drop(w);
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "a waiter did not block");

    // With 8 requests waiting and 2 request loops, the mount must still answer.
    let (done_tx, done_rx) = mpsc::channel();
    let r = root.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        let res = (|| {
            let data = sys::read_file(&r.join("other"))?;
            sys::write_file(&r.join("fresh"), b"new")?;
            sys::mkdir(&r.join("dir"), 0o755)?;
            let n = sys::read_dir(&r)?.len();
            Ok::<_, nix::errno::Errno>((data, n))
        })();
        let _ = done_tx.send((res, start.elapsed()));
    });
    let (res, took) = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ordinary requests stalled behind blocked lock waits");
    let (data, n) = res.expect("ordinary requests failed");
    assert_eq!(data, b"still served");
    assert!(n >= WAITERS + 4, "listing has {n} entries");
    assert!(
        took < Duration::from_secs(3),
        "ordinary requests took {took:?} while locks were awaited"
    );

    // Unlocking lets every waiter through. (Explicitly: release-on-close of OFD
    // locks is ofd_locks_across_mounts' business, not this test's.)
    let unlocked = Instant::now();
    for h in &holders {
        sys::fcntl_setlk(
            std::os::fd::AsRawFd::as_raw_fd(h),
            libc::F_OFD_SETLK,
            &flock_range(libc::F_UNLCK, 0, 0),
        )
        .unwrap();
    }
    for _ in 0..WAITERS {
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a waiter was not granted its lock after the holder unlocked");
        assert_eq!(r, Ok(()));
    }
    eprintln!(
        "all {WAITERS} waiters granted {:?} after the unlocks",
        unlocked.elapsed()
    );
    drop(holders);
}
