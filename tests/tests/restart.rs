//! The server dies under a mounted client and comes back: while it is down,
//! requests fail with a clear errno within a bounded time (no hang); once it is
//! back on the same directory and port, the same mount works again, including
//! descriptors opened before the crash, without remounting.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kadalu_e2e::process::poll_until;
use kadalu_e2e::sys;
use kadalu_e2e::{MountOptions, Pool};
use nix::errno::Errno;

const UNAVAILABLE_WAIT: f64 = 2.0;
const RPC_TIMEOUT: f64 = 1.0;
/// A request against a dead server must have failed by then (wait + one RPC + slack).
const FAIL_WITHIN: Duration = Duration::from_secs(12);
/// How long the mount may take to notice the server is back.
const RECOVER_WITHIN: Duration = Duration::from_secs(15);
/// The errnos a client may give while the server is unreachable.
const DOWN_ERRNOS: [Errno; 2] = [Errno::ETIMEDOUT, Errno::EHOSTUNREACH];

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

/// Asserts that each named op, run concurrently against the dead server, fails
/// with one of [`DOWN_ERRNOS`] within [`FAIL_WITHIN`].
/// A named request to try against the dead server.
type DownOp = (&'static str, Box<dyn FnOnce() -> Result<(), Errno> + Send>);

fn all_fail_cleanly(ops: Vec<DownOp>) {
    let (tx, rx) = mpsc::channel();
    let n = ops.len();
    for (name, op) in ops {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = op();
            let _ = tx.send((name, r, start.elapsed()));
        });
    }
    let deadline = Instant::now() + FAIL_WITHIN;
    let mut problems = Vec::new();
    for _ in 0..n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((name, Err(e), took)) if DOWN_ERRNOS.contains(&e) => {
                eprintln!("while down: {name} failed with {e:?} after {took:?}");
            }
            Ok((name, r, took)) => problems.push(format!("{name}: {r:?} after {took:?}")),
            Err(_) => {
                problems.push(format!(
                    "some op had not returned after {FAIL_WITHIN:?} (hung)"
                ));
                break;
            }
        }
    }
    assert!(
        problems.is_empty(),
        "with the server down, every request must fail with one of {DOWN_ERRNOS:?}:\n{}",
        problems.join("\n")
    );
}

/// Waits until the mount answers again (statfs is never cached by the kernel),
/// returning how long that took.
fn wait_until_back(root: &Path) -> Duration {
    let start = Instant::now();
    let root = root.to_path_buf();
    poll_until(RECOVER_WITHIN, Duration::from_millis(100), || {
        let r = root.clone();
        bounded(move || sys::statvfs(&r)).and_then(|(r, _)| r.ok())
    })
    .unwrap_or_else(|| {
        panic!("mount did not answer within {RECOVER_WITHIN:?} of the server's restart")
    });
    start.elapsed()
}

#[test]
fn server_killed_and_restarted_under_a_mount() {
    let mut pool = Pool::start_with(1, &options());
    let root: PathBuf = pool.path().to_path_buf();
    sys::write_file(&root.join("kept"), b"written before the crash").unwrap();
    sys::mkdir(&root.join("dir"), 0o755).unwrap();
    let held = sys::open(&root.join("held"), libc::O_CREAT | libc::O_RDWR, 0o644).unwrap();
    sys::pwrite_all(sys::fd_of(&held), b"before", 0).unwrap();
    let reader = sys::open(&root.join("kept"), libc::O_RDONLY, 0).unwrap();
    // fsync, so that this test is about recovery only; whether changes that were
    // acknowledged but not fsync'd survive is acknowledged_changes_survive_a_crash.
    sys::fsync(sys::fd_of(&held)).unwrap();
    sys::fsync(sys::fd_of(&reader)).unwrap();

    pool.brick_mut().kill();
    assert!(!pool.brick_mut().is_running());

    let r = root.clone();
    all_fail_cleanly(vec![
        ("stat of a name never looked up", {
            let p = r.join("never-seen");
            Box::new(move || sys::stat(&p).map(|_| ()))
        }),
        ("create", {
            let p = r.join("created-while-down");
            Box::new(move || {
                sys::open(&p, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644).map(|_| ())
            })
        }),
        ("mkdir", {
            let p = r.join("dir-while-down");
            Box::new(move || sys::mkdir(&p, 0o755))
        }),
        ("readdir", {
            let p = r.join("dir");
            Box::new(move || sys::read_dir(&p).map(|_| ()))
        }),
        // A write is acknowledged at once (write-behind) and fails later, at
        // fsync or close: see write_behind_errors.rs, where no other test's
        // child process can close an inherited copy of the descriptor (a FUSE
        // flush) and take the report first.
    ]);
    assert!(
        kadalu_e2e::mount::is_mounted(pool.mount(0).path()),
        "the mount went away while the server was down"
    );

    pool.brick_mut().restart();
    let took = wait_until_back(&root);
    eprintln!("mount usable again {took:?} after the server restarted");

    assert_eq!(
        sys::read_file(&root.join("kept")).unwrap(),
        b"written before the crash"
    );
    assert_eq!(
        sys::stat(&root.join("created-while-down")).map(|_| ()),
        Err(Errno::ENOENT),
        "a create that failed left a file behind"
    );
    sys::write_file(&root.join("after"), b"written after the restart").unwrap();
    assert_eq!(
        sys::read_file(&root.join("after")).unwrap(),
        b"written after the restart"
    );
    sys::mkdir(&root.join("dir/sub"), 0o755).unwrap();

    // Descriptors opened before the crash keep working.
    let h = sys::fd_of(&held);
    sys::pwrite_all(h, b"+after", 6).unwrap();
    assert_eq!(
        sys::pread(h, 100, 0).unwrap(),
        b"before+after",
        "a descriptor opened before the crash does not work after the restart"
    );
    assert_eq!(sys::fstat(h).unwrap().st_size, 12);
    sys::fsync(h).unwrap();
    assert_eq!(
        sys::pread(sys::fd_of(&reader), 100, 0).unwrap(),
        b"written before the crash",
        "read-only descriptor opened before the crash"
    );
    sys::close(held).unwrap();
    sys::close(reader).unwrap();
    assert_eq!(sys::read_file(&root.join("held")).unwrap(), b"before+after");

    let names: Vec<Vec<u8>> = sys::read_dir(&root)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for want in [&b"kept"[..], b"held", b"after", b"dir"] {
        assert!(
            names.iter().any(|n| n == want),
            "{} missing from the listing after restart",
            String::from_utf8_lossy(want)
        );
    }
}

#[test]
fn quick_restart_is_transparent() {
    // A graceful stop and an immediate restart, faster than the unavailable
    // wait: requests in the gap should simply succeed once it is back.
    let mut pool = Pool::start_with(1, &options());
    let root = pool.path().to_path_buf();
    sys::write_file(&root.join("kept"), b"k").unwrap();
    let fd = sys::open(&root.join("kept"), libc::O_RDWR, 0).unwrap();
    assert!(
        pool.brick_mut().terminate(Duration::from_secs(5)),
        "server ignored SIGTERM"
    );
    pool.brick_mut().restart();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let (r, took) = bounded(move || {
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        sys::pwrite(fd, b"K2", 0)
    })
    .expect("write after a quick restart hung");
    assert_eq!(r, Ok(2), "write right after a quick restart ({took:?})");
    assert_eq!(sys::read_file(&root.join("kept")).unwrap(), b"K2");
    let (r, _) = bounded({
        let p = root.join("new");
        move || sys::write_file(&p, b"n")
    })
    .expect("create after a quick restart hung");
    assert_eq!(r, Ok(()));
    sys::close(fd).unwrap();
}

#[test]
fn mount_outlives_a_long_outage() {
    // Down for several unavailable-waits: every request in that time fails, and
    // the mount still recovers afterwards by itself.
    let mut pool = Pool::start_with(1, &options());
    let root = pool.path().to_path_buf();
    sys::write_file(&root.join("kept"), b"k").unwrap();
    pool.brick_mut().kill();
    let outage = Instant::now();
    let mut failures = 0;
    while outage.elapsed() < Duration::from_secs_f64(UNAVAILABLE_WAIT * 3.0) {
        let p = root.join(format!("probe-{failures}"));
        let (r, took) = bounded(move || sys::stat(&p)).expect("request hung during the outage");
        let e = r.expect_err("stat succeeded against a dead server");
        assert!(DOWN_ERRNOS.contains(&e), "errno {e:?} while down");
        assert!(took <= FAIL_WITHIN);
        failures += 1;
    }
    assert!(failures >= 2);
    pool.brick_mut().restart();
    wait_until_back(&root);
    sys::write_file(&root.join("after"), b"a").unwrap();
    assert_eq!(sys::read_file(&root.join("after")).unwrap(), b"a");
}

#[test]
fn acknowledged_changes_survive_a_server_crash() {
    // A local file system keeps every completed write(2)/close(2)/rename(2) when
    // the process that made them is killed; only a power loss may take what was
    // not fsync'd. A brick server process crash is the former, not the latter.
    let mut pool = Pool::start_with(1, &options());
    let root = pool.path().to_path_buf();
    sys::write_file(&root.join("old"), b"synced long ago").unwrap();
    let fd = sys::open(&root.join("old"), libc::O_RDONLY, 0).unwrap();
    sys::fsync(sys::fd_of(&fd)).unwrap();
    sys::close(fd).unwrap();

    sys::write_file(&root.join("fresh"), b"closed just before the crash").unwrap();
    sys::mkdir(&root.join("fresh-dir"), 0o755).unwrap();
    sys::rename(&root.join("old"), &root.join("old-renamed")).unwrap();
    pool.brick_mut().kill();
    pool.brick_mut().restart();
    wait_until_back(&root);

    let mut lost = Vec::new();
    if sys::read_file(&root.join("fresh")).ok().as_deref()
        != Some(&b"closed just before the crash"[..])
    {
        lost.push("file written and closed");
    }
    if sys::stat(&root.join("fresh-dir")).is_err() {
        lost.push("mkdir");
    }
    if sys::stat(&root.join("old-renamed")).is_err() || sys::stat(&root.join("old")).is_ok() {
        lost.push("rename");
    }
    assert!(
        lost.is_empty(),
        "acknowledged changes lost in a server crash: {lost:?}"
    );
}

#[test]
fn sigterm_unmounts_cleanly() {
    let mut pool = Pool::start();
    sys::write_file(&pool.path().join("f"), b"x").unwrap();
    let path = pool.path().to_path_buf();
    let mount = &mut pool.mounts_mut()[0];
    assert!(
        mount.terminate(Duration::from_secs(5)),
        "kadalu-mount did not exit and unmount within 5 s of SIGTERM"
    );
    assert!(!kadalu_e2e::mount::is_mounted(&path));
}
