//! Two mounts of the same pool (two client processes) see each other's changes.
//!
//! Data follows close-to-open consistency: once a writer has closed a file, a
//! reader that opens it afterwards sees the new content, whatever its kernel
//! cached before. Names and attributes follow the mounts' entry/attribute TTLs
//! (0.1 s here): a change on one mount shows on the other within a bound.

use std::path::Path;
use std::time::{Duration, Instant};

use kadalu_e2e::sys;
use kadalu_e2e::{MountOptions, Pool};
use nix::errno::Errno;

const TTL: f64 = 0.1;
/// A change must show on the other mount well within this (TTL is 0.1 s).
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);

fn two_mounts() -> Pool {
    Pool::start_with(2, &MountOptions::short_ttl(TTL))
}

/// Polls `check` until it holds; panics with `what` if it does not within
/// [`VISIBLE_WITHIN`]. Returns how long it took.
fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > VISIBLE_WITHIN {
            panic!("{what}: not visible on the other mount after {VISIBLE_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Overwrites `path` in place (no O_TRUNC) so the size does not change.
fn overwrite(path: &Path, data: &[u8]) {
    let fd = sys::open(path, libc::O_WRONLY, 0).expect("open for overwrite");
    sys::pwrite_all(sys::fd_of(&fd), data, 0).expect("overwrite");
    sys::close(fd).expect("close after overwrite");
}

#[test]
fn close_to_open_sees_same_size_overwrite() {
    let pool = two_mounts();
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    sys::write_file(&a.join("f"), b"version-1").unwrap();
    assert_eq!(sys::read_file(&b.join("f")).unwrap(), b"version-1");
    // Same size on purpose: B's kernel has version-1 cached and the size alone
    // cannot tell it the cache is stale; only open-time revalidation can.
    for v in 2..6 {
        let data = format!("version-{v}");
        overwrite(&a.join("f"), data.as_bytes());
        assert_eq!(
            sys::read_file(&b.join("f")).unwrap(),
            data.as_bytes(),
            "B opened after A closed, yet read stale data"
        );
    }
    // And back the other way.
    overwrite(&b.join("f"), b"version-B");
    assert_eq!(sys::read_file(&a.join("f")).unwrap(), b"version-B");
}

#[test]
fn close_to_open_sees_growth_and_shrink() {
    let pool = two_mounts();
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    sys::write_file(&a.join("g"), b"short").unwrap();
    assert_eq!(sys::read_file(&b.join("g")).unwrap(), b"short");

    // Grow through an append on A: B's cached size (5) is now wrong.
    let fd = sys::open(&a.join("g"), libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
    sys::write(sys::fd_of(&fd), b" and then longer").unwrap();
    sys::close(fd).unwrap();
    assert_eq!(
        sys::read_file(&b.join("g")).unwrap(),
        b"short and then longer",
        "B's open after A's close must see the grown file"
    );

    // Shrink on A.
    sys::truncate(&a.join("g"), 3).unwrap();
    assert_eq!(sys::read_file(&b.join("g")).unwrap(), b"sho");

    // A large write from A, read whole on B.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    sys::write_file(&a.join("g"), &big).unwrap();
    assert!(
        sys::read_file(&b.join("g")).unwrap() == big,
        "3 MB file differs on B"
    );
}

#[test]
fn fstat_after_reopen_sees_the_new_size() {
    let pool = two_mounts();
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    sys::write_file(&a.join("s"), b"1234").unwrap();
    assert_eq!(sys::stat(&b.join("s")).unwrap().st_size, 4);
    sys::write_file(&a.join("s"), b"123456789").unwrap();
    let fd = sys::open(&b.join("s"), libc::O_RDONLY, 0).unwrap();
    let st = sys::fstat(sys::fd_of(&fd)).unwrap();
    // Tolerate the attribute TTL for fstat, but not beyond it.
    if st.st_size != 9 {
        std::thread::sleep(Duration::from_secs_f64(TTL * 3.0));
        let st = sys::fstat(sys::fd_of(&fd)).unwrap();
        assert_eq!(st.st_size, 9, "size on B still stale after 3x the attr TTL");
    }
}

#[test]
fn names_created_renamed_unlinked_on_a_show_on_b() {
    let pool = two_mounts();
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());

    // B looks first, so its kernel may cache the negative answer.
    assert_eq!(sys::stat(&b.join("new")).map(|_| ()), Err(Errno::ENOENT));
    sys::write_file(&a.join("new"), b"n").unwrap();
    eventually("file created on A", || sys::stat(&b.join("new")).is_ok());
    assert_eq!(sys::read_file(&b.join("new")).unwrap(), b"n");

    sys::rename(&a.join("new"), &a.join("renamed")).unwrap();
    eventually("rename on A (old name gone)", || {
        matches!(sys::stat(&b.join("new")), Err(Errno::ENOENT))
    });
    eventually("rename on A (new name present)", || {
        sys::stat(&b.join("renamed")).is_ok()
    });
    assert_eq!(sys::read_file(&b.join("renamed")).unwrap(), b"n");

    sys::unlink(&a.join("renamed")).unwrap();
    eventually("unlink on A", || {
        matches!(sys::stat(&b.join("renamed")), Err(Errno::ENOENT))
    });

    // A name replaced by a different file: B must not keep the old inode.
    sys::write_file(&a.join("swap"), b"first").unwrap();
    assert_eq!(sys::read_file(&b.join("swap")).unwrap(), b"first");
    sys::write_file(&a.join("swap.tmp"), b"second!").unwrap();
    sys::rename(&a.join("swap.tmp"), &a.join("swap")).unwrap();
    eventually("rename over an existing name on A", || {
        sys::read_file(&b.join("swap")).ok().as_deref() == Some(b"second!")
    });

    // Directories and their listings.
    sys::mkdir(&a.join("d"), 0o755).unwrap();
    for i in 0..20 {
        sys::write_file(&a.join(format!("d/f{i}")), b"").unwrap();
    }
    eventually("mkdir on A", || sys::stat(&b.join("d")).is_ok());
    let names: std::collections::BTreeSet<Vec<u8>> = sys::read_dir(&b.join("d"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != b"." && n != b"..")
        .collect();
    assert_eq!(
        names.len(),
        20,
        "B lists {} of the 20 files A created",
        names.len()
    );

    for i in 0..10 {
        sys::unlink(&a.join(format!("d/f{i}"))).unwrap();
    }
    let listed = sys::read_dir(&b.join("d")).unwrap().len() - 2;
    assert_eq!(listed, 10, "B's readdir after A removed 10 of 20");

    // Created on B, seen on A (the other direction).
    sys::mkdir(&b.join("fromb"), 0o700).unwrap();
    eventually("mkdir on B seen on A", || {
        sys::stat(&a.join("fromb")).is_ok()
    });
}

#[test]
fn attribute_changes_on_a_show_on_b() {
    let pool = two_mounts();
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    sys::write_file(&a.join("f"), b"abc").unwrap();
    let st = sys::stat(&b.join("f")).unwrap();
    assert_eq!(st.st_mode, sys::stat(&a.join("f")).unwrap().st_mode);

    sys::chmod(&a.join("f"), 0o600).unwrap();
    eventually("chmod on A", || {
        sys::stat(&b.join("f")).is_ok_and(|s| s.st_mode & 0o7777 == 0o600)
    });

    sys::chown(&a.join("f"), 1001, 1002).unwrap();
    eventually("chown on A", || {
        sys::stat(&b.join("f")).is_ok_and(|s| s.st_uid == 1001 && s.st_gid == 1002)
    });

    sys::utimensat(
        &a.join("f"),
        [
            sys::timespec(1_000_000_000, 0),
            sys::timespec(1_234_567_890, 5),
        ],
        0,
    )
    .unwrap();
    eventually("utimensat on A", || {
        sys::stat(&b.join("f")).is_ok_and(|s| s.st_mtime == 1_234_567_890 && s.st_mtime_nsec == 5)
    });

    // Size changes without B opening the file.
    let fd = sys::open(&a.join("f"), libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
    sys::write(sys::fd_of(&fd), b"defg").unwrap();
    sys::close(fd).unwrap();
    eventually("append on A changes the size", || {
        sys::stat(&b.join("f")).is_ok_and(|s| s.st_size == 7)
    });

    sys::link(&a.join("f"), &a.join("f2")).unwrap();
    eventually("link on A raises nlink", || {
        sys::stat(&b.join("f")).is_ok_and(|s| s.st_nlink == 2)
    });

    // xattrs are not cached by the kernel at all: immediate.
    sys::setxattr(&a.join("f"), b"user.k", b"v1", 0).unwrap();
    assert_eq!(sys::getxattr(&b.join("f"), b"user.k", 10).unwrap(), b"v1");
    sys::removexattr(&a.join("f"), b"user.k").unwrap();
    assert_eq!(
        sys::getxattr(&b.join("f"), b"user.k", 10),
        Err(Errno::ENODATA)
    );
}

#[test]
fn an_fd_on_b_survives_unlink_and_rename_on_a() {
    let pool = two_mounts();
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    sys::write_file(&a.join("held"), b"kept alive").unwrap();
    let fd = sys::open(&b.join("held"), libc::O_RDWR, 0).unwrap();

    sys::rename(&a.join("held"), &a.join("moved")).unwrap();
    assert_eq!(sys::pread(sys::fd_of(&fd), 100, 0).unwrap(), b"kept alive");

    sys::unlink(&a.join("moved")).unwrap();
    // The other client's handle keeps the file: read, write, and fstat work.
    assert_eq!(
        sys::pread(sys::fd_of(&fd), 100, 0).unwrap(),
        b"kept alive",
        "B's open file vanished when A unlinked it"
    );
    sys::pwrite(sys::fd_of(&fd), b" still", 10).unwrap();
    assert_eq!(
        sys::pread(sys::fd_of(&fd), 100, 0).unwrap(),
        b"kept alive still"
    );
    let st = sys::fstat(sys::fd_of(&fd)).unwrap();
    assert_eq!(st.st_size, 16);
    sys::close(fd).unwrap();

    // A file with the same name created afterwards is a different file.
    sys::write_file(&a.join("moved"), b"new").unwrap();
    eventually("new file on A", || {
        sys::read_file(&b.join("moved")).ok().as_deref() == Some(b"new")
    });
}

#[test]
fn same_inode_number_on_both_mounts() {
    // File ids, not per-client counters, define inode numbers.
    let pool = two_mounts();
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    sys::mkdir(&a.join("d"), 0o755).unwrap();
    sys::write_file(&a.join("d/f"), b"").unwrap();
    eventually("file on A", || sys::stat(&b.join("d/f")).is_ok());
    for p in ["d", "d/f"] {
        assert_eq!(
            sys::stat(&a.join(p)).unwrap().st_ino,
            sys::stat(&b.join(p)).unwrap().st_ino,
            "inode numbers of {p} differ between mounts"
        );
    }
    let before = sys::stat(&a.join("d/f")).unwrap().st_ino;
    sys::rename(&a.join("d/f"), &a.join("g")).unwrap();
    eventually("rename on A", || sys::stat(&b.join("g")).is_ok());
    assert_eq!(
        sys::stat(&b.join("g")).unwrap().st_ino,
        before,
        "rename changed the inode"
    );
}

#[test]
fn a_subdir_mount_shows_one_directory_of_the_pool() {
    let mut pool = Pool::start_with(1, &MountOptions::short_ttl(TTL));
    let whole = pool.mount(0).path().to_path_buf();
    sys::mkdir(&whole.join("pv1"), 0o755).unwrap();
    sys::write_file(&whole.join("pv1/inside"), b"in pv1").unwrap();
    sys::write_file(&whole.join("outside"), b"not in pv1").unwrap();

    let sub = pool
        .add_mount(&MountOptions {
            subdir: Some("pv1".into()),
            ..MountOptions::short_ttl(TTL)
        })
        .path()
        .to_path_buf();
    assert_eq!(sys::read_file(&sub.join("inside")).unwrap(), b"in pv1");
    let names: Vec<Vec<u8>> = sys::read_dir(&sub)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        !names.iter().any(|n| n == b"outside"),
        "the subdir mount lists the pool root"
    );
    // `..` of the mount's root is the mount's parent directory on this host,
    // resolved by the kernel; nothing of the pool above pv1 is reachable.
    assert!(sys::stat(&sub.join("../outside")).is_err());

    sys::write_file(&sub.join("from-sub"), b"s").unwrap();
    eventually("a file created through the subdir mount", || {
        sys::read_file(&whole.join("pv1/from-sub")).ok().as_deref() == Some(b"s")
    });
    assert!(sys::statvfs(&sub).is_ok());
}
