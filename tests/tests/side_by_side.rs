//! Every file-system operation through a kadalu mount, run side by side with the
//! same operation on a plain local directory: same results, same errno.
//!
//! Each test is one area of the operation set; its script runs first on a local
//! temp dir (ext4/xfs, whatever /tmp is), then on a fresh pool's mount, and the
//! first op whose outcome differs fails the test with a transcript.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kadalu_e2e::lock_holder::LockHolder;
use kadalu_e2e::script::{bytes, done, listing, lstat_of, stat_of, stat_view, val};
use kadalu_e2e::sys::{self, SysResult};
use kadalu_e2e::{Ctx, MountOptions, Outcome, Script};
use libc::{
    O_APPEND, O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_RDWR, O_TRUNC,
    O_WRONLY,
};

// ------------------------------------------------------------------ helpers

fn put(c: &Ctx, rel: &str, data: &[u8]) -> Outcome {
    done(sys::write_file(&c.a(rel), data))
}

fn content(c: &Ctx, rel: &str) -> Outcome {
    sys::read_file(&c.a(rel)).map(|d| bytes(&d))
}

fn fstat_of(c: &Ctx, key: &str) -> Outcome {
    sys::fstat(c.fd(key)?).map(|s| stat_view(&s))
}

fn pread_of(c: &Ctx, key: &str, len: usize, off: u64) -> Outcome {
    sys::pread(c.fd(key)?, len, off).map(|d| bytes(&d))
}

fn ino(path: &std::path::Path) -> SysResult<u64> {
    sys::lstat(path).map(|s| s.st_ino)
}

fn times(path: &std::path::Path) -> SysResult<String> {
    sys::lstat(path).map(|s| {
        format!(
            "atime={}.{:09} mtime={}.{:09}",
            s.st_atime, s.st_atime_nsec, s.st_mtime, s.st_mtime_nsec
        )
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Deterministic, non-repeating-looking bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

/// The filesystems' own timestamp granularity can be a jiffy; sleep past it
/// before an op whose effect on a timestamp is checked.
fn tick() {
    std::thread::sleep(Duration::from_millis(30));
}

// ------------------------------------------------------------------ create & open

#[test]
fn create_and_open_flags() {
    let mut s = Script::new("create/open flags");
    s.op("O_CREAT|O_EXCL|O_RDWR 0640 on a new name", |c| {
        c.open("f", &c.a("f"), O_CREAT | O_EXCL | O_RDWR, 0o640)
    })
    .op("fstat the new file", |c| fstat_of(c, "f"))
    .op("write 'hello'", |c| val(sys::write(c.fd("f")?, b"hello")))
    .op("close", |c| c.close("f"))
    .op("O_CREAT|O_EXCL on an existing file", |c| {
        c.open("x", &c.a("f"), O_CREAT | O_EXCL | O_RDWR, 0o644)
    })
    .op("O_CREAT without O_EXCL opens the existing file", |c| {
        c.open("g", &c.a("f"), O_CREAT | O_RDWR, 0o600)
    })
    .op("existing content and mode kept", |c| {
        Ok(format!(
            "{} {}",
            pread_of(c, "g", 100, 0)?,
            fstat_of(c, "g")?
        ))
    })
    .op("close", |c| c.close("g"))
    .op("mkdir d", |c| done(sys::mkdir(&c.a("d"), 0o755)))
    .op("O_CREAT|O_EXCL on an existing directory", |c| {
        c.open("x", &c.a("d"), O_CREAT | O_EXCL | O_RDWR, 0o644)
    })
    .op("O_CREAT on an existing directory", |c| {
        c.open("x", &c.a("d"), O_CREAT | O_RDWR, 0o644)
    })
    .op("O_TRUNC empties the file", |c| {
        c.open("t", &c.a("f"), O_WRONLY | O_TRUNC, 0)?;
        fstat_of(c, "t")
    })
    .op("close", |c| c.close("t"))
    .op("content after O_TRUNC", |c| content(c, "f"))
    .op("O_TRUNC on a read-only open still truncates", |c| {
        put(c, "ro", b"12345")?;
        c.open("ro", &c.a("ro"), O_RDONLY | O_TRUNC, 0)?;
        fstat_of(c, "ro")
    })
    .op("close", |c| c.close("ro"))
    .op("O_APPEND: write appends", |c| {
        put(c, "ap", b"abc")?;
        c.open("ap", &c.a("ap"), O_WRONLY | O_APPEND, 0)?;
        val(sys::write(c.fd("ap")?, b"def"))
    })
    .op("O_APPEND: pwrite at 0 appends too (Linux)", |c| {
        val(sys::pwrite(c.fd("ap")?, b"XY", 0))
    })
    .op("close", |c| c.close("ap"))
    .op("content after appends", |c| content(c, "ap"))
    .op("O_RDONLY on a missing name", |c| {
        c.open("x", &c.a("missing"), O_RDONLY, 0)
    })
    .op("O_DIRECTORY on a file", |c| {
        c.open("x", &c.a("f"), O_RDONLY | O_DIRECTORY, 0)
    })
    .op("O_WRONLY on a directory", |c| {
        c.open("x", &c.a("d"), O_WRONLY, 0)
    })
    .op("O_RDONLY|O_DIRECTORY on a directory", |c| {
        c.open("dir", &c.a("d"), O_RDONLY | O_DIRECTORY, 0)
    })
    .op("close dir", |c| c.close("dir"))
    .op("O_CREAT under a file", |c| {
        c.open("x", &c.a("f/x"), O_CREAT | O_RDWR, 0o644)
    })
    .op("O_CREAT under a missing directory", |c| {
        c.open("x", &c.a("nodir/x"), O_CREAT | O_RDWR, 0o644)
    })
    .op("write on an O_RDONLY descriptor", |c| {
        c.open("r", &c.a("ap"), O_RDONLY, 0)?;
        val(sys::write(c.fd("r")?, b"no"))
    })
    .op("read on an O_WRONLY descriptor", |c| {
        c.open("w", &c.a("ap"), O_WRONLY, 0)?;
        val(sys::read(c.fd("w")?, 10))
    })
    .op("close both", |c| {
        c.close("r")?;
        c.close("w")
    })
    .op("O_CREAT with mode 0", |c| {
        c.open("z", &c.a("zero"), O_CREAT | O_EXCL | O_WRONLY, 0)?;
        fstat_of(c, "z")
    })
    .op("close", |c| c.close("z"))
    .op("root opens a mode-0 file read-write", |c| {
        c.open("z", &c.a("zero"), O_RDWR, 0)?;
        c.close("z")
    })
    .op("O_CREAT with setuid/setgid/sticky bits", |c| {
        c.open("s", &c.a("suid"), O_CREAT | O_EXCL | O_WRONLY, 0o7755)?;
        fstat_of(c, "s")
    })
    .op("close", |c| c.close("s"))
    .op("dangling symlink", |c| {
        done(sys::symlink(b"target", &c.a("dl")))
    })
    .op("O_CREAT|O_EXCL on a dangling symlink", |c| {
        c.open("x", &c.a("dl"), O_CREAT | O_EXCL | O_WRONLY, 0o644)
    })
    .op(
        "O_CREAT through a dangling symlink creates its target",
        |c| {
            c.open("dl", &c.a("dl"), O_CREAT | O_WRONLY, 0o644)?;
            c.close("dl")?;
            lstat_of(&c.a("target"))
        },
    )
    .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

// ------------------------------------------------------------------ read & write

#[test]
fn read_write_at_offsets() {
    let big = pattern(3 * 1024 * 1024 + 17, 7);
    let big2 = big.clone();
    let mut s = Script::new("read/write at offsets");
    s.op("create f", |c| {
        c.open("f", &c.a("f"), O_CREAT | O_RDWR, 0o644)
    })
    .op("pwrite 'abc' at 0", |c| {
        val(sys::pwrite(c.fd("f")?, b"abc", 0))
    })
    .op("pwrite 'xyz' at 10 (leaves a gap)", |c| {
        val(sys::pwrite(c.fd("f")?, b"xyz", 10))
    })
    .op("fstat", |c| fstat_of(c, "f"))
    .op("pread everything", |c| pread_of(c, "f", 100, 0))
    .op("pread inside the gap", |c| pread_of(c, "f", 4, 4))
    .op("pread across the end", |c| pread_of(c, "f", 5, 11))
    .op("pread at EOF", |c| pread_of(c, "f", 5, 13))
    .op("pread far beyond EOF", |c| pread_of(c, "f", 5, 1 << 30))
    .op("overwrite the middle", |c| {
        val(sys::pwrite(c.fd("f")?, b"MID", 2))
    })
    .op("pread everything again", |c| pread_of(c, "f", 100, 0))
    .op("lseek SEEK_SET 1 then read 3", |c| {
        sys::lseek(c.fd("f")?, 1, libc::SEEK_SET)?;
        val(sys::read(c.fd("f")?, 3).map(|d| bytes(&d)))
    })
    .op("lseek SEEK_CUR +2", |c| {
        val(sys::lseek(c.fd("f")?, 2, libc::SEEK_CUR))
    })
    .op("lseek SEEK_END -1", |c| {
        val(sys::lseek(c.fd("f")?, -1, libc::SEEK_END))
    })
    .op("write at the file position", |c| {
        val(sys::write(c.fd("f")?, b"END"))
    })
    .op("lseek to a negative offset", |c| {
        val(sys::lseek(c.fd("f")?, -100, libc::SEEK_SET))
    })
    .op("pread everything again", |c| pread_of(c, "f", 100, 0))
    .op("close", |c| c.close("f"))
    .op("content after reopen", |c| content(c, "f"))
    .op("write 3 MiB + 17 at offset 4095 in one call", move |c| {
        c.open("b", &c.a("big"), O_CREAT | O_RDWR, 0o644)?;
        val(sys::pwrite_all(c.fd("b")?, &big, 4095))
    })
    .op("fstat big", |c| fstat_of(c, "b"))
    .op("read 2 MiB across the 1 MiB boundaries", |c| {
        sys::pread_full(c.fd("b")?, 2 << 20, (1 << 20) - 3).map(|d| bytes(&d))
    })
    .op("close big", |c| c.close("b"))
    .op("read big back whole after reopen", move |c| {
        let got = sys::read_file(&c.a("big"))?;
        Ok(format!(
            "{} leading zeros ok={} data ok={}",
            bytes(&got),
            got[..4095].iter().all(|b| *b == 0),
            got[4095..] == big2[..]
        ))
    })
    .op("one 1 MiB read at an unaligned offset", |c| {
        c.open("b", &c.a("big"), O_RDONLY, 0)?;
        let d = sys::pread(c.fd("b")?, 1 << 20, 12345)?;
        Ok(bytes(&d))
    })
    .op("close", |c| c.close("b"));
    s.run_side_by_side();
}

// ------------------------------------------------------------------ attributes

#[test]
fn stat_chmod_chown() {
    let mut s = Script::new("stat, chmod, chown");
    s.op("create f", |c| put(c, "f", b"data"))
        .op("stat f", |c| stat_of(&c.a("f")))
        .op("chmod 0755", |c| done(sys::chmod(&c.a("f"), 0o755)))
        .op("stat", |c| stat_of(&c.a("f")))
        .op("chmod 04755 (setuid)", |c| {
            done(sys::chmod(&c.a("f"), 0o4755))
        })
        .op("stat", |c| stat_of(&c.a("f")))
        .op("chmod 02710 (setgid)", |c| {
            done(sys::chmod(&c.a("f"), 0o2710))
        })
        .op("stat", |c| stat_of(&c.a("f")))
        .op("chmod 0 ", |c| done(sys::chmod(&c.a("f"), 0)))
        .op("stat", |c| stat_of(&c.a("f")))
        .op("fchmod 0600", |c| {
            c.open("f", &c.a("f"), O_RDONLY, 0)?;
            done(sys::fchmod(c.fd("f")?, 0o600))
        })
        .op("fstat", |c| fstat_of(c, "f"))
        .op("close", |c| c.close("f"))
        .op("chmod a missing name", |c| {
            done(sys::chmod(&c.a("missing"), 0o644))
        })
        .op("mkdir d", |c| done(sys::mkdir(&c.a("d"), 0o755)))
        .op("chmod dir 01777 (sticky)", |c| {
            done(sys::chmod(&c.a("d"), 0o1777))
        })
        .op("stat d", |c| stat_of(&c.a("d")))
        .op("chown 1234:5678", |c| {
            done(sys::chown(&c.a("f"), 1234, 5678))
        })
        .op("stat", |c| stat_of(&c.a("f")))
        .op("chown -1:42 keeps the uid", |c| {
            done(sys::chown(&c.a("f"), u32::MAX, 42))
        })
        .op("stat", |c| stat_of(&c.a("f")))
        .op("chown 7:-1 keeps the gid", |c| {
            done(sys::chown(&c.a("f"), 7, u32::MAX))
        })
        .op("stat", |c| stat_of(&c.a("f")))
        .op("chmod 06755 then chown clears setuid/setgid", |c| {
            sys::chmod(&c.a("f"), 0o6755)?;
            sys::chown(&c.a("f"), 0, 0)?;
            stat_of(&c.a("f"))
        })
        .op("symlink l -> f", |c| done(sys::symlink(b"f", &c.a("l"))))
        .op("lchown the symlink itself", |c| {
            done(sys::lchown(&c.a("l"), 99, 98))
        })
        .op("lstat l", |c| lstat_of(&c.a("l")))
        .op("stat through l (target untouched)", |c| stat_of(&c.a("l")))
        .op("chown through the symlink changes the target", |c| {
            sys::chown(&c.a("l"), 55, 56)?;
            Ok(format!(
                "{} / {}",
                lstat_of(&c.a("l"))?,
                stat_of(&c.a("f"))?
            ))
        })
        .op("chown dir", |c| done(sys::chown(&c.a("d"), 3, 4)))
        .op("stat d", |c| stat_of(&c.a("d")))
        .op("write advances mtime and ctime", |c| {
            let before = sys::stat(&c.a("f"))?;
            tick();
            c.open("w", &c.a("f"), O_WRONLY, 0)?;
            sys::pwrite(c.fd("w")?, b"more", 4)?;
            c.close("w")?;
            let after = sys::stat(&c.a("f"))?;
            Ok(format!(
                "mtime advanced={} ctime advanced={}",
                (after.st_mtime, after.st_mtime_nsec) > (before.st_mtime, before.st_mtime_nsec),
                (after.st_ctime, after.st_ctime_nsec) > (before.st_ctime, before.st_ctime_nsec)
            ))
        })
        .op("chmod advances ctime but not mtime", |c| {
            let before = sys::stat(&c.a("f"))?;
            tick();
            sys::chmod(&c.a("f"), 0o644)?;
            let after = sys::stat(&c.a("f"))?;
            Ok(format!(
                "mtime same={} ctime advanced={}",
                (after.st_mtime, after.st_mtime_nsec) == (before.st_mtime, before.st_mtime_nsec),
                (after.st_ctime, after.st_ctime_nsec) > (before.st_ctime, before.st_ctime_nsec)
            ))
        })
        .op("creating an entry advances the directory's mtime", |c| {
            let before = sys::stat(&c.a("d"))?;
            tick();
            sys::write_file(&c.a("d/new"), b"")?;
            let after = sys::stat(&c.a("d"))?;
            Ok(format!(
                "dir mtime advanced={}",
                (after.st_mtime, after.st_mtime_nsec) > (before.st_mtime, before.st_mtime_nsec)
            ))
        })
        .op("stat d after creating an entry", |c| stat_of(&c.a("d")));
    s.run_side_by_side();
}

#[test]
fn truncate_up_and_down() {
    let mut s = Script::new("truncate");
    s.op("create f with 10 bytes", |c| put(c, "f", b"helloworld"))
        .op("truncate to 5", |c| done(sys::truncate(&c.a("f"), 5)))
        .op("stat", |c| stat_of(&c.a("f")))
        .op("content", |c| content(c, "f"))
        .op("truncate up to 100", |c| {
            done(sys::truncate(&c.a("f"), 100))
        })
        .op("stat", |c| stat_of(&c.a("f")))
        .op("content (zeros after 5)", |c| content(c, "f"))
        .op("ftruncate to 3", |c| {
            c.open("f", &c.a("f"), O_RDWR, 0)?;
            done(sys::ftruncate(c.fd("f")?, 3))
        })
        .op("fstat", |c| fstat_of(c, "f"))
        .op("read after ftruncate", |c| pread_of(c, "f", 200, 0))
        .op("write past the end after shrinking", |c| {
            val(sys::pwrite(c.fd("f")?, b"Z", 8))
        })
        .op("read", |c| pread_of(c, "f", 200, 0))
        .op("close", |c| c.close("f"))
        .op("truncate to 0", |c| done(sys::truncate(&c.a("f"), 0)))
        .op("content", |c| content(c, "f"))
        .op("ftruncate on an O_RDONLY descriptor", |c| {
            c.open("r", &c.a("f"), O_RDONLY, 0)?;
            done(sys::ftruncate(c.fd("r")?, 1))
        })
        .op("close", |c| c.close("r"))
        .op("truncate a directory", |c| {
            sys::mkdir(&c.a("d"), 0o755)?;
            done(sys::truncate(&c.a("d"), 0))
        })
        .op("truncate a missing name", |c| {
            done(sys::truncate(&c.a("missing"), 0))
        })
        .op("truncate to a negative length", |c| {
            done(sys::truncate(&c.a("f"), u64::MAX))
        })
        .op("truncate beyond the largest file size", |c| {
            done(sys::truncate(&c.a("f"), 1 << 62))
        })
        .op("stat", |c| stat_of(&c.a("f")));
    s.run_side_by_side();
}

#[test]
fn utimensat_times() {
    use sys::timespec;
    let mut s = Script::new("utimensat");
    s.op("create f", |c| put(c, "f", b"x"))
        .op("set explicit atime and mtime", |c| {
            done(sys::utimensat(
                &c.a("f"),
                [
                    timespec(1_000_000_000, 123_456_789),
                    timespec(1_100_000_000, 987_654_321),
                ],
                0,
            ))
        })
        .op("times", |c| val(times(&c.a("f"))))
        .op("UTIME_OMIT atime, explicit mtime", |c| {
            done(sys::utimensat(
                &c.a("f"),
                [timespec(0, libc::UTIME_OMIT), timespec(1_200_000_000, 5)],
                0,
            ))
        })
        .op("times", |c| val(times(&c.a("f"))))
        .op("UTIME_NOW mtime, UTIME_OMIT atime", |c| {
            sys::utimensat(
                &c.a("f"),
                [timespec(0, libc::UTIME_OMIT), timespec(0, libc::UTIME_NOW)],
                0,
            )?;
            let st = sys::stat(&c.a("f"))?;
            Ok(format!(
                "atime={}.{:09} mtime recent={}",
                st.st_atime,
                st.st_atime_nsec,
                (now_secs() - st.st_mtime).abs() <= 5
            ))
        })
        .op("both UTIME_NOW", |c| {
            sys::utimensat(
                &c.a("f"),
                [timespec(0, libc::UTIME_NOW), timespec(0, libc::UTIME_NOW)],
                0,
            )?;
            let st = sys::stat(&c.a("f"))?;
            Ok(format!(
                "atime recent={} mtime recent={}",
                (now_secs() - st.st_atime).abs() <= 5,
                (now_secs() - st.st_mtime).abs() <= 5
            ))
        })
        .op("both UTIME_OMIT changes nothing", |c| {
            sys::utimensat(&c.a("f"), [timespec(1, 1), timespec(2, 2)], 0)?;
            sys::utimensat(
                &c.a("f"),
                [timespec(0, libc::UTIME_OMIT), timespec(0, libc::UTIME_OMIT)],
                0,
            )?;
            val(times(&c.a("f")))
        })
        .op("times before 1970", |c| {
            sys::utimensat(&c.a("f"), [timespec(-100, 0), timespec(-1, 999_999_999)], 0)?;
            val(times(&c.a("f")))
        })
        .op("invalid nanoseconds", |c| {
            done(sys::utimensat(
                &c.a("f"),
                [timespec(0, 1_000_000_000), timespec(0, 0)],
                0,
            ))
        })
        .op("futimens through a descriptor", |c| {
            c.open("f", &c.a("f"), O_RDWR, 0)?;
            sys::futimens(
                c.fd("f")?,
                [timespec(1_300_000_000, 1), timespec(1_300_000_001, 2)],
            )?;
            c.close("f")?;
            val(times(&c.a("f")))
        })
        .op("symlink l -> f", |c| done(sys::symlink(b"f", &c.a("l"))))
        .op("AT_SYMLINK_NOFOLLOW sets the link's own times", |c| {
            sys::utimensat(
                &c.a("l"),
                [timespec(1_400_000_000, 0), timespec(1_400_000_000, 7)],
                libc::AT_SYMLINK_NOFOLLOW,
            )?;
            Ok(format!(
                "link {} / target {}",
                times(&c.a("l"))?,
                times(&c.a("f"))?
            ))
        })
        .op("utimensat on a missing name", |c| {
            done(sys::utimensat(
                &c.a("missing"),
                [timespec(1, 0), timespec(1, 0)],
                0,
            ))
        })
        .op("mkdir d and set its times", |c| {
            sys::mkdir(&c.a("d"), 0o755)?;
            sys::utimensat(
                &c.a("d"),
                [timespec(1_500_000_000, 1), timespec(1_500_000_000, 2)],
                0,
            )?;
            val(times(&c.a("d")))
        });
    s.run_side_by_side();
}

// ------------------------------------------------------------------ special files

#[test]
fn mknod_special_files() {
    let mut s = Script::new("mknod");
    s.op("mknod fifo 0644", |c| {
        done(sys::mknod(&c.a("fifo"), libc::S_IFIFO | 0o644, 0))
    })
    .op("stat fifo", |c| stat_of(&c.a("fifo")))
    .op("mknod socket 0600", |c| {
        done(sys::mknod(&c.a("sock"), libc::S_IFSOCK | 0o600, 0))
    })
    .op("stat socket", |c| stat_of(&c.a("sock")))
    .op("mknod char device 1:3", |c| {
        done(sys::mknod(
            &c.a("chr"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        ))
    })
    .op("stat char device", |c| stat_of(&c.a("chr")))
    .op("mknod block device 7:200", |c| {
        done(sys::mknod(
            &c.a("blk"),
            libc::S_IFBLK | 0o660,
            libc::makedev(7, 200),
        ))
    })
    .op("stat block device", |c| stat_of(&c.a("blk")))
    .op("mknod a device with a large major:minor", |c| {
        sys::mknod(
            &c.a("chr2"),
            libc::S_IFCHR | 0o600,
            libc::makedev(4000, 100_000),
        )?;
        stat_of(&c.a("chr2"))
    })
    .op("mknod regular file", |c| {
        sys::mknod(&c.a("reg"), libc::S_IFREG | 0o640, 0)?;
        stat_of(&c.a("reg"))
    })
    .op("mknod with type 0 makes a regular file", |c| {
        sys::mknod(&c.a("reg0"), 0o600, 0)?;
        stat_of(&c.a("reg0"))
    })
    .op("mknod over an existing name", |c| {
        done(sys::mknod(&c.a("fifo"), libc::S_IFIFO | 0o644, 0))
    })
    .op("mknod S_IFDIR", |c| {
        done(sys::mknod(&c.a("dir"), libc::S_IFDIR | 0o755, 0))
    })
    .op("mknod in a missing directory", |c| {
        done(sys::mknod(&c.a("nodir/x"), libc::S_IFIFO | 0o644, 0))
    })
    .op("the fifo works as a pipe (kernel-side)", |c| {
        c.open("p", &c.a("fifo"), O_RDWR | O_NONBLOCK, 0)?;
        sys::write(c.fd("p")?, b"through")?;
        val(sys::read(c.fd("p")?, 100).map(|d| bytes(&d)))
    })
    .op("close", |c| c.close("p"))
    .op("the char device 1:3 is /dev/null", |c| {
        c.open("n", &c.a("chr"), O_RDWR, 0)?;
        let w = sys::write(c.fd("n")?, b"gone")?;
        let r = sys::read(c.fd("n")?, 10)?;
        c.close("n")?;
        Ok(format!("wrote {w} read {}", r.len()))
    })
    .op("listing with types", |c| listing(&c.a("")))
    .op("unlink the specials", |c| {
        for n in ["fifo", "sock", "chr", "blk"] {
            sys::unlink(&c.a(n))?;
        }
        listing(&c.a(""))
    });
    // A FUSE mount is `nodev` unless asked otherwise (a sane default for pods);
    // ask, so that the device node made through the mount can be opened.
    s.run_side_by_side_with(&MountOptions {
        options: vec!["dev".into()],
        ..MountOptions::default()
    });
}

// ------------------------------------------------------------------ directories

#[test]
fn mkdir_rmdir_unlink() {
    let mut s = Script::new("mkdir/rmdir/unlink");
    s.op("mkdir d 0755", |c| done(sys::mkdir(&c.a("d"), 0o755)))
        .op("stat d", |c| stat_of(&c.a("d")))
        .op("mkdir d again", |c| done(sys::mkdir(&c.a("d"), 0o755)))
        .op("mkdir d/sub raises d's link count", |c| {
            sys::mkdir(&c.a("d/sub"), 0o700)?;
            Ok(format!(
                "{} / {}",
                stat_of(&c.a("d"))?,
                stat_of(&c.a("d/sub"))?
            ))
        })
        .op("mkdir with the sticky bit", |c| {
            sys::mkdir(&c.a("sticky"), 0o1777)?;
            stat_of(&c.a("sticky"))
        })
        .op("mkdir under a missing directory", |c| {
            done(sys::mkdir(&c.a("nodir/x"), 0o755))
        })
        .op("create file f", |c| put(c, "f", b"f"))
        .op("mkdir under a file", |c| {
            done(sys::mkdir(&c.a("f/x"), 0o755))
        })
        .op("mkdir over a file", |c| done(sys::mkdir(&c.a("f"), 0o755)))
        .op("rmdir a non-empty directory", |c| {
            done(sys::rmdir(&c.a("d")))
        })
        .op("rmdir d/sub lowers d's link count", |c| {
            sys::rmdir(&c.a("d/sub"))?;
            stat_of(&c.a("d"))
        })
        .op("rmdir a file", |c| done(sys::rmdir(&c.a("f"))))
        .op("rmdir a missing name", |c| {
            done(sys::rmdir(&c.a("missing")))
        })
        .op("rmdir d/.", |c| done(sys::rmdir(&c.a("d/."))))
        .op("rmdir d/..", |c| done(sys::rmdir(&c.a("d/.."))))
        .op("unlink a directory", |c| done(sys::unlink(&c.a("d"))))
        .op("unlink a missing name", |c| {
            done(sys::unlink(&c.a("missing")))
        })
        .op("unlink under a file", |c| done(sys::unlink(&c.a("f/x"))))
        .op("unlink f", |c| done(sys::unlink(&c.a("f"))))
        .op("stat f after unlink", |c| stat_of(&c.a("f")))
        .op("rmdir d (now empty)", |c| done(sys::rmdir(&c.a("d"))))
        .op("stat d after rmdir", |c| stat_of(&c.a("d")))
        .op("a directory with a file in it is not empty", |c| {
            sys::mkdir(&c.a("e"), 0o755)?;
            sys::write_file(&c.a("e/file"), b"")?;
            done(sys::rmdir(&c.a("e")))
        })
        .op("setgid directory: children inherit its group", |c| {
            sys::mkdir(&c.a("g"), 0o755)?;
            sys::chown(&c.a("g"), 0, 4242)?;
            sys::chmod(&c.a("g"), 0o2775)?;
            sys::mkdir(&c.a("g/child"), 0o755)?;
            sys::write_file(&c.a("g/file"), b"")?;
            Ok(format!(
                "{} / {} / {}",
                stat_of(&c.a("g"))?,
                stat_of(&c.a("g/child"))?,
                stat_of(&c.a("g/file"))?
            ))
        })
        .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

#[test]
fn symlink_readlink() {
    let long_target = vec![b'x'; 4095];
    let too_long = vec![b'y'; 4096];
    let mut s = Script::new("symlink/readlink");
    s.op("symlink l -> target", |c| {
        done(sys::symlink(b"target", &c.a("l")))
    })
    .op("readlink l", |c| {
        val(sys::readlink(&c.a("l")).map(|d| bytes(&d)))
    })
    .op("lstat l", |c| lstat_of(&c.a("l")))
    .op("stat l (dangling)", |c| stat_of(&c.a("l")))
    .op("create the target", |c| put(c, "target", b"T"))
    .op("stat l follows", |c| stat_of(&c.a("l")))
    .op("read through l", |c| content(c, "l"))
    .op("symlink over an existing name", |c| {
        done(sys::symlink(b"other", &c.a("target")))
    })
    .op("readlink a regular file", |c| {
        val(sys::readlink(&c.a("target")))
    })
    .op("readlink a missing name", |c| {
        val(sys::readlink(&c.a("missing")))
    })
    .op("4095-byte target", move |c| {
        sys::symlink(&long_target, &c.a("long"))?;
        Ok(format!(
            "{} readlink len={}",
            lstat_of(&c.a("long"))?,
            sys::readlink(&c.a("long"))?.len()
        ))
    })
    .op("4096-byte target", move |c| {
        done(sys::symlink(&too_long, &c.a("toolong")))
    })
    .op("absolute target", |c| {
        sys::symlink(b"/proc/self", &c.a("abs"))?;
        val(sys::readlink(&c.a("abs")).map(|d| bytes(&d)))
    })
    .op("a chain of links", |c| {
        sys::symlink(b"l", &c.a("l2"))?;
        Ok(format!("{} {}", stat_of(&c.a("l2"))?, content(c, "l2")?))
    })
    .op("a loop of links", |c| {
        sys::symlink(b"loop2", &c.a("loop1"))?;
        sys::symlink(b"loop1", &c.a("loop2"))?;
        stat_of(&c.a("loop1"))
    })
    .op("O_NOFOLLOW on a symlink", |c| {
        c.open("x", &c.a("l"), O_RDONLY | O_NOFOLLOW, 0)
    })
    .op("symlink to a directory, path through it", |c| {
        sys::mkdir(&c.a("d"), 0o755)?;
        sys::write_file(&c.a("d/inner"), b"inside")?;
        sys::symlink(b"d", &c.a("ld"))?;
        content(c, "ld/inner")
    })
    .op("target with .. components", |c| {
        sys::symlink(b"../target", &c.a("d/up"))?;
        content(c, "d/up")
    })
    .op("empty target", |c| done(sys::symlink(b"", &c.a("empty"))))
    .op("unlink a symlink leaves its target", |c| {
        sys::unlink(&c.a("l"))?;
        Ok(format!(
            "{} {}",
            lstat_of(&c.a("l")).unwrap_or_else(|e| format!("{e:?}")),
            stat_of(&c.a("target"))?
        ))
    })
    .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

#[test]
fn hard_links() {
    let mut s = Script::new("link");
    s.op("create f", |c| put(c, "f", b"data"))
        .op("link f g", |c| done(sys::link(&c.a("f"), &c.a("g"))))
        .op("stat f and g", |c| {
            Ok(format!("{} / {}", stat_of(&c.a("f"))?, stat_of(&c.a("g"))?))
        })
        .op("same inode", |c| {
            val(Ok(ino(&c.a("f"))? == ino(&c.a("g"))?))
        })
        .op("write through g, read through f", |c| {
            c.open("g", &c.a("g"), O_WRONLY, 0)?;
            sys::pwrite(c.fd("g")?, b"DA", 0)?;
            c.close("g")?;
            content(c, "f")
        })
        .op("link onto an existing name", |c| {
            done(sys::link(&c.a("f"), &c.a("g")))
        })
        .op("link a directory", |c| {
            sys::mkdir(&c.a("d"), 0o755)?;
            done(sys::link(&c.a("d"), &c.a("d2")))
        })
        .op("link a missing name", |c| {
            done(sys::link(&c.a("missing"), &c.a("m2")))
        })
        .op("link into a missing directory", |c| {
            done(sys::link(&c.a("f"), &c.a("nodir/f")))
        })
        .op("link into a subdirectory", |c| {
            sys::link(&c.a("g"), &c.a("d/h"))?;
            stat_of(&c.a("d/h"))
        })
        .op("unlink f: the others remain", |c| {
            sys::unlink(&c.a("f"))?;
            Ok(format!("{} {}", stat_of(&c.a("g"))?, content(c, "d/h")?))
        })
        .op("link a symlink links the symlink itself", |c| {
            sys::symlink(b"g", &c.a("s"))?;
            sys::link(&c.a("s"), &c.a("s2"))?;
            Ok(format!(
                "{} / {}",
                lstat_of(&c.a("s2"))?,
                stat_of(&c.a("g"))?
            ))
        })
        .op("link a fifo", |c| {
            sys::mknod(&c.a("p"), libc::S_IFIFO | 0o600, 0)?;
            sys::link(&c.a("p"), &c.a("p2"))?;
            stat_of(&c.a("p2"))
        })
        .op("many links", |c| {
            for i in 0..20 {
                sys::link(&c.a("g"), &c.a(&format!("many{i}")))?;
            }
            stat_of(&c.a("g"))
        })
        .op("fstat through an fd sees the link count", |c| {
            c.open("g", &c.a("g"), O_RDONLY, 0)?;
            sys::unlink(&c.a("many0"))?;
            fstat_of(c, "g")
        })
        .op("close", |c| c.close("g"))
        .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

// ------------------------------------------------------------------ rename

#[test]
fn rename_plain() {
    let mut s = Script::new("rename");
    s.op("setup", |c| {
        sys::write_file(&c.a("a"), b"A")?;
        sys::write_file(&c.a("b"), b"B")?;
        sys::mkdir(&c.a("d"), 0o755)?;
        sys::mkdir(&c.a("e"), 0o755)?;
        sys::mkdir(&c.a("full"), 0o755)?;
        sys::write_file(&c.a("full/x"), b"x")?;
        Ok("ok".into())
    })
    .op("rename to a new name keeps the inode", |c| {
        let before = ino(&c.a("a"))?;
        sys::rename(&c.a("a"), &c.a("a1"))?;
        Ok(format!(
            "same ino={} old={:?} new={}",
            ino(&c.a("a1"))? == before,
            sys::stat(&c.a("a")).map(|_| ()),
            content(c, "a1")?
        ))
    })
    .op("rename a missing name", |c| {
        done(sys::rename(&c.a("a"), &c.a("zz")))
    })
    .op("rename over an existing file", |c| {
        sys::rename(&c.a("a1"), &c.a("b"))?;
        Ok(format!(
            "{} {:?}",
            content(c, "b")?,
            sys::stat(&c.a("a1")).map(|_| ())
        ))
    })
    .op("rename to itself", |c| {
        sys::rename(&c.a("b"), &c.a("b"))?;
        content(c, "b")
    })
    .op("rename onto a hard link of itself does nothing", |c| {
        sys::link(&c.a("b"), &c.a("b2"))?;
        sys::rename(&c.a("b"), &c.a("b2"))?;
        Ok(format!("{} {}", stat_of(&c.a("b"))?, stat_of(&c.a("b2"))?))
    })
    .op("rename a dir over an empty dir", |c| {
        sys::rename(&c.a("d"), &c.a("e"))?;
        Ok(format!(
            "{} {:?}",
            stat_of(&c.a("e"))?,
            sys::stat(&c.a("d")).map(|_| ())
        ))
    })
    .op("rename a dir over a non-empty dir", |c| {
        done(sys::rename(&c.a("e"), &c.a("full")))
    })
    .op("rename a dir over a file", |c| {
        done(sys::rename(&c.a("e"), &c.a("b")))
    })
    .op("rename a file over a dir", |c| {
        done(sys::rename(&c.a("b"), &c.a("e")))
    })
    .op("rename a dir into its own subtree", |c| {
        sys::mkdir(&c.a("e/sub"), 0o755)?;
        done(sys::rename(&c.a("e"), &c.a("e/sub/inside")))
    })
    .op("rename a dir onto its own child", |c| {
        done(sys::rename(&c.a("e"), &c.a("e/sub")))
    })
    .op("rename into a missing directory", |c| {
        done(sys::rename(&c.a("b"), &c.a("nodir/b")))
    })
    .op("rename under a file", |c| {
        done(sys::rename(&c.a("b"), &c.a("b2/x")))
    })
    .op("rename d/. ", |c| {
        done(sys::rename(&c.a("e/."), &c.a("dot")))
    })
    .op("move a dir between parents updates link counts", |c| {
        sys::rename(&c.a("e/sub"), &c.a("full/sub"))?;
        Ok(format!(
            "e: {} / full: {} / sub: {}",
            stat_of(&c.a("e"))?,
            stat_of(&c.a("full"))?,
            stat_of(&c.a("full/sub"))?
        ))
    })
    .op("moved dir's .. is the new parent", |c| {
        Ok(format!(
            "{}",
            ino(&c.a("full/sub/.."))? == ino(&c.a("full"))?
        ))
    })
    .op("a file moved between directories keeps its content", |c| {
        sys::rename(&c.a("full/x"), &c.a("e/x"))?;
        Ok(format!("{} {}", content(c, "e/x")?, listing(&c.a("full"))?))
    })
    .op("an open descriptor follows the renamed file", |c| {
        c.open("o", &c.a("e/x"), O_RDWR, 0)?;
        sys::rename(&c.a("e/x"), &c.a("moved"))?;
        sys::pwrite(c.fd("o")?, b"Y", 1)?;
        c.close("o")?;
        content(c, "moved")
    })
    .op(
        "rename over a file that is open: the old one stays readable",
        |c| {
            sys::write_file(&c.a("victim"), b"victim data")?;
            c.open("v", &c.a("victim"), O_RDONLY, 0)?;
            sys::rename(&c.a("moved"), &c.a("victim"))?;
            Ok(format!(
                "{} nlink={} / {}",
                pread_of(c, "v", 100, 0)?,
                sys::fstat(c.fd("v")?)?.st_nlink,
                content(c, "victim")?
            ))
        },
    )
    .op("close", |c| c.close("v"))
    .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

#[test]
fn rename_noreplace_and_exchange() {
    let noreplace = libc::RENAME_NOREPLACE as libc::c_uint;
    let exchange = libc::RENAME_EXCHANGE as libc::c_uint;
    let mut s = Script::new("renameat2 flags");
    s.op("setup", |c| {
        sys::write_file(&c.a("a"), b"A")?;
        sys::write_file(&c.a("b"), b"BB")?;
        sys::mkdir(&c.a("d"), 0o755)?;
        sys::write_file(&c.a("d/in"), b"in")?;
        Ok("ok".into())
    })
    .op("RENAME_NOREPLACE onto an existing name", move |c| {
        done(sys::renameat2(&c.a("a"), &c.a("b"), noreplace))
    })
    .op("contents unchanged", |c| {
        Ok(format!("{} {}", content(c, "a")?, content(c, "b")?))
    })
    .op("RENAME_NOREPLACE onto an existing dir", move |c| {
        done(sys::renameat2(&c.a("a"), &c.a("d"), noreplace))
    })
    .op("RENAME_NOREPLACE onto a new name", move |c| {
        sys::renameat2(&c.a("a"), &c.a("a2"), noreplace)?;
        content(c, "a2")
    })
    .op("RENAME_EXCHANGE two files", move |c| {
        let (ia, ib) = (ino(&c.a("a2"))?, ino(&c.a("b"))?);
        sys::renameat2(&c.a("a2"), &c.a("b"), exchange)?;
        Ok(format!(
            "a2={} b={} inodes swapped={}",
            content(c, "a2")?,
            content(c, "b")?,
            ino(&c.a("a2"))? == ib && ino(&c.a("b"))? == ia
        ))
    })
    .op("RENAME_EXCHANGE a file and a directory", move |c| {
        sys::renameat2(&c.a("b"), &c.a("d"), exchange)?;
        Ok(format!(
            "{} / {} / {}",
            stat_of(&c.a("b"))?,
            stat_of(&c.a("d"))?,
            content(c, "b/in")?
        ))
    })
    .op("exchanged directory's .. and link counts", |c| {
        Ok(format!(
            "{} {}",
            ino(&c.a("b/.."))? == ino(&c.a(""))?,
            stat_of(&c.a(""))?
        ))
    })
    .op("RENAME_EXCHANGE across directories", move |c| {
        sys::mkdir(&c.a("x"), 0o755)?;
        sys::write_file(&c.a("x/f"), b"xf")?;
        sys::renameat2(&c.a("x/f"), &c.a("d"), exchange)?;
        Ok(format!("{} / {}", stat_of(&c.a("x/f"))?, content(c, "d")?))
    })
    .op("RENAME_EXCHANGE with a missing target", move |c| {
        done(sys::renameat2(&c.a("d"), &c.a("nothing"), exchange))
    })
    .op("RENAME_EXCHANGE with a missing source", move |c| {
        done(sys::renameat2(&c.a("nothing"), &c.a("d"), exchange))
    })
    .op("RENAME_EXCHANGE|RENAME_NOREPLACE", move |c| {
        done(sys::renameat2(&c.a("d"), &c.a("b"), exchange | noreplace))
    })
    .op("RENAME_EXCHANGE a dir with its own descendant", move |c| {
        sys::mkdir(&c.a("b/deep"), 0o755)?;
        done(sys::renameat2(&c.a("b"), &c.a("b/deep"), exchange))
    })
    .op("unknown rename flag", |c| {
        done(sys::renameat2(&c.a("d"), &c.a("q"), 1 << 10))
    })
    .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

// ------------------------------------------------------------------ names

#[test]
fn name_length_limits() {
    let n255 = "a".repeat(255);
    let n256 = "b".repeat(256);
    // 85 three-byte characters = 255 bytes.
    let utf8_255 = "€".repeat(85);
    let mut s = Script::new("name lengths");
    let (a, b, u) = (n255.clone(), n256.clone(), utf8_255.clone());
    s.op("create a 255-byte name", move |c| {
        sys::write_file(&c.a(&a), b"max")?;
        content(c, &a)
    });
    let b1 = b.clone();
    s.op("create a 256-byte name", move |c| {
        c.open("x", &c.a(&b1), O_CREAT | O_WRONLY, 0o644)
    });
    let b1 = b.clone();
    s.op("stat a 256-byte name", move |c| stat_of(&c.a(&b1)));
    let b1 = b.clone();
    s.op("mkdir a 256-byte name", move |c| {
        done(sys::mkdir(&c.a(&b1), 0o755))
    });
    let b1 = b.clone();
    s.op("symlink named 256 bytes", move |c| {
        done(sys::symlink(b"t", &c.a(&b1)))
    });
    let b1 = b.clone();
    s.op("mknod named 256 bytes", move |c| {
        done(sys::mknod(&c.a(&b1), libc::S_IFIFO | 0o644, 0))
    });
    let (a1, b1) = (n255.clone(), b.clone());
    s.op("link to a 256-byte name", move |c| {
        done(sys::link(&c.a(&a1), &c.a(&b1)))
    });
    let (a1, b1) = (n255.clone(), b.clone());
    s.op("rename to a 256-byte name", move |c| {
        done(sys::rename(&c.a(&a1), &c.a(&b1)))
    });
    let b1 = b.clone();
    s.op("unlink a 256-byte name", move |c| {
        done(sys::unlink(&c.a(&b1)))
    });
    let b1 = b.clone();
    s.op("rmdir a 256-byte name", move |c| {
        done(sys::rmdir(&c.a(&b1)))
    });
    s.op("mkdir a 255-byte name of multi-byte characters", move |c| {
        sys::mkdir(&c.a(&u), 0o755)?;
        stat_of(&c.a(&u))
    });
    s.op("a 4096-byte path", |c| {
        let long = format!("{}/{}", c.a("").display(), "c/".repeat(2100));
        stat_of(std::path::Path::new(&long))
    });
    s.op("non-UTF-8 and control bytes in names", |c| {
        for name in [
            &b"\xff\xfe"[..],
            b"new\nline",
            b" lead space",
            b"tab\there",
            b"-dash",
        ] {
            sys::write_file(&c.a_bytes(name), name)?;
        }
        let back = sys::read_file(&c.a_bytes(b"new\nline"))?;
        Ok(format!("{} {}", bytes(&back), listing(&c.a(""))?))
    });
    s.op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

// ------------------------------------------------------------------ readdir & statfs

#[test]
fn readdir_listing() {
    let mut s = Script::new("readdir");
    s.op("empty directory", |c| listing(&c.a("")))
        .op("one of each kind", |c| {
            sys::write_file(&c.a("file"), b"")?;
            sys::mkdir(&c.a("dir"), 0o755)?;
            sys::symlink(b"file", &c.a("link"))?;
            sys::mknod(&c.a("fifo"), libc::S_IFIFO | 0o644, 0)?;
            sys::mknod(&c.a("sock"), libc::S_IFSOCK | 0o644, 0)?;
            sys::mknod(&c.a("chr"), libc::S_IFCHR | 0o644, libc::makedev(1, 5))?;
            listing(&c.a(""))
        })
        .op("300 files (several kernel readdir requests)", |c| {
            for i in 0..300 {
                sys::write_file(&c.a(&format!("dir/entry-with-a-longish-name-{i:04}")), b"")?;
            }
            listing(&c.a("dir"))
        })
        .op("after removing every other one", |c| {
            for i in (0..300).step_by(2) {
                sys::unlink(&c.a(&format!("dir/entry-with-a-longish-name-{i:04}")))?;
            }
            listing(&c.a("dir"))
        })
        .op("count of names returned (no duplicates)", |c| {
            let names = sys::read_dir(&c.a("dir"))?;
            let mut sorted: Vec<_> = names.iter().map(|(n, _)| n.clone()).collect();
            sorted.sort();
            sorted.dedup();
            Ok(format!(
                "{} entries, {} distinct",
                names.len(),
                sorted.len()
            ))
        })
        .op("readdir on a file", |c| listing(&c.a("file")))
        .op("readdir on a missing name", |c| listing(&c.a("missing")))
        .op("readdir through a symlink to a directory", |c| {
            sys::symlink(b"dir", &c.a("dirlink"))?;
            let n = sys::read_dir(&c.a("dirlink"))?.len();
            Ok(format!("{n}"))
        })
        .op("readdir of a directory emptied again", |c| {
            for i in (1..300).step_by(2) {
                sys::unlink(&c.a(&format!("dir/entry-with-a-longish-name-{i:04}")))?;
            }
            listing(&c.a("dir"))
        });
    s.run_side_by_side();
}

#[test]
fn statfs_is_sane() {
    fn sane(st: &libc::statvfs) -> String {
        format!(
            "bsize>0:{} frsize>0:{} blocks>0:{} bfree<=blocks:{} bavail<=bfree:{} files>0:{} ffree<=files:{} namemax={}",
            st.f_bsize > 0,
            st.f_frsize > 0,
            st.f_blocks > 0,
            st.f_bfree <= st.f_blocks,
            st.f_bavail <= st.f_bfree,
            st.f_files > 0,
            st.f_ffree <= st.f_files,
            st.f_namemax
        )
    }
    let mut s = Script::new("statfs");
    s.op("statfs on the directory", |c| {
        sys::statvfs(&c.a("")).map(|s| sane(&s))
    })
    .op("statfs on a file", |c| {
        sys::write_file(&c.a("f"), b"x")?;
        sys::statvfs(&c.a("f")).map(|s| sane(&s))
    })
    .op("statfs on a missing name", |c| {
        sys::statvfs(&c.a("missing")).map(|s| sane(&s))
    })
    .op("writing 4 MiB does not raise free space", |c| {
        let before = sys::statvfs(&c.a(""))?;
        sys::write_file(&c.a("big"), &vec![1u8; 4 << 20])?;
        c.open("big", &c.a("big"), O_RDONLY, 0)?;
        sys::fsync(c.fd("big")?)?;
        c.close("big")?;
        let after = sys::statvfs(&c.a(""))?;
        let free = |s: &libc::statvfs| s.f_bfree * s.f_frsize;
        Ok(format!(
            "free did not grow by 4MiB: {}",
            free(&after) < free(&before) + (4 << 20)
        ))
    });
    s.run_side_by_side();
}

// ------------------------------------------------------------------ xattrs

#[test]
fn xattrs() {
    let mut s = Script::new("xattrs");
    s.op("create f", |c| put(c, "f", b"x"))
        .op("list on a fresh file", |c| {
            val(sys::listxattr(&c.a("f"), 4096).map(|v| names(&v)))
        })
        .op("get a missing attribute", |c| {
            val(sys::getxattr(&c.a("f"), b"user.a", 100))
        })
        .op("set user.a", |c| {
            done(sys::setxattr(&c.a("f"), b"user.a", b"value-1", 0))
        })
        .op("get user.a", |c| {
            val(sys::getxattr(&c.a("f"), b"user.a", 100).map(|d| bytes(&d)))
        })
        .op("size query", |c| {
            val(sys::getxattr_len(&c.a("f"), b"user.a"))
        })
        .op("get with a too-small buffer", |c| {
            val(sys::getxattr(&c.a("f"), b"user.a", 3))
        })
        .op("XATTR_CREATE on an existing attribute", |c| {
            done(sys::setxattr(
                &c.a("f"),
                b"user.a",
                b"v",
                libc::XATTR_CREATE,
            ))
        })
        .op("XATTR_REPLACE on a missing attribute", |c| {
            done(sys::setxattr(
                &c.a("f"),
                b"user.b",
                b"v",
                libc::XATTR_REPLACE,
            ))
        })
        .op("XATTR_REPLACE on an existing attribute", |c| {
            sys::setxattr(&c.a("f"), b"user.a", b"value-2", libc::XATTR_REPLACE)?;
            val(sys::getxattr(&c.a("f"), b"user.a", 100).map(|d| bytes(&d)))
        })
        .op("XATTR_CREATE on a new attribute", |c| {
            done(sys::setxattr(&c.a("f"), b"user.b", b"", libc::XATTR_CREATE))
        })
        .op("empty value", |c| {
            Ok(format!(
                "{:?} len={:?}",
                sys::getxattr(&c.a("f"), b"user.b", 10),
                sys::getxattr_len(&c.a("f"), b"user.b")
            ))
        })
        .op("binary value with NULs, 1000 bytes", |c| {
            let v: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8).collect();
            sys::setxattr(&c.a("f"), b"user.bin", &v, 0)?;
            Ok(format!(
                "{}",
                sys::getxattr(&c.a("f"), b"user.bin", 2000)? == v
            ))
        })
        .op("list", |c| {
            val(sys::listxattr(&c.a("f"), 4096).map(|v| names(&v)))
        })
        .op("list size query", |c| val(sys::listxattr_len(&c.a("f"))))
        .op("list with a too-small buffer", |c| {
            val(sys::listxattr(&c.a("f"), 4))
        })
        .op("remove user.a", |c| {
            done(sys::removexattr(&c.a("f"), b"user.a"))
        })
        .op("remove it again", |c| {
            done(sys::removexattr(&c.a("f"), b"user.a"))
        })
        .op("get after remove", |c| {
            val(sys::getxattr(&c.a("f"), b"user.a", 100))
        })
        .op("list after remove", |c| {
            val(sys::listxattr(&c.a("f"), 4096).map(|v| names(&v)))
        })
        .op("name of 255 bytes after the prefix is too long", |c| {
            let mut n = b"user.".to_vec();
            n.extend(std::iter::repeat_n(b'n', 251));
            done(sys::setxattr(&c.a("f"), &n, b"v", 0))
        })
        .op("name of exactly 255 bytes", |c| {
            let mut n = b"user.".to_vec();
            n.extend(std::iter::repeat_n(b'n', 250));
            sys::setxattr(&c.a("f"), &n, b"v", 0)?;
            val(sys::getxattr(&c.a("f"), &n, 10).map(|d| bytes(&d)))
        })
        .op("unknown namespace", |c| {
            done(sys::setxattr(&c.a("f"), b"bogus.x", b"v", 0))
        })
        .op("trusted.* as root", |c| {
            sys::setxattr(&c.a("f"), b"trusted.t", b"tv", 0)?;
            val(sys::getxattr(&c.a("f"), b"trusted.t", 10).map(|d| bytes(&d)))
        })
        .op("list shows every namespace set", |c| {
            val(sys::listxattr(&c.a("f"), 4096).map(|v| names(&v)))
        })
        .op("xattr on a directory", |c| {
            sys::mkdir(&c.a("d"), 0o755)?;
            sys::setxattr(&c.a("d"), b"user.dir", b"dv", 0)?;
            Ok(format!(
                "{} {}",
                bytes(&sys::getxattr(&c.a("d"), b"user.dir", 10)?),
                names(&sys::listxattr(&c.a("d"), 4096)?)
            ))
        })
        .op("user.* on a symlink itself", |c| {
            sys::symlink(b"f", &c.a("l"))?;
            done(sys::lsetxattr(&c.a("l"), b"user.s", b"v", 0))
        })
        .op("user.* through a symlink lands on the target", |c| {
            sys::setxattr(&c.a("l"), b"user.via", b"link", 0)?;
            val(sys::getxattr(&c.a("f"), b"user.via", 10).map(|d| bytes(&d)))
        })
        .op("user.* on a fifo", |c| {
            sys::mknod(&c.a("p"), libc::S_IFIFO | 0o644, 0)?;
            done(sys::setxattr(&c.a("p"), b"user.p", b"v", 0))
        })
        .op("get on a missing file", |c| {
            val(sys::getxattr(&c.a("missing"), b"user.a", 10))
        })
        .op("xattrs survive a rename and a hard link", |c| {
            sys::rename(&c.a("f"), &c.a("f2"))?;
            sys::link(&c.a("f2"), &c.a("f3"))?;
            Ok(format!(
                "{} {}",
                bytes(&sys::getxattr(&c.a("f3"), b"user.via", 10)?),
                names(&sys::listxattr(&c.a("f3"), 4096)?)
            ))
        });
    s.run_side_by_side();
}

fn names(v: &[Vec<u8>]) -> String {
    let mut n: Vec<String> = v
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    n.sort();
    n.join(",")
}

// ------------------------------------------------------------------ fallocate, seek, copy

#[test]
fn fallocate_modes() {
    const MIB: u64 = 1 << 20;
    let mut s = Script::new("fallocate");
    s.op("create f", |c| {
        c.open("f", &c.a("f"), O_CREAT | O_RDWR, 0o644)
    })
    .op("fallocate 0..1MiB", |c| {
        done(sys::fallocate(c.fd("f")?, 0, 0, MIB))
    })
    .op("size grew, reads zeros", |c| {
        let st = sys::fstat(c.fd("f")?)?;
        let d = sys::pread_full(c.fd("f")?, MIB as usize, 0)?;
        Ok(format!(
            "size={} zeros={} blocks>=2048:{}",
            st.st_size,
            d.iter().all(|b| *b == 0),
            st.st_blocks >= 2048
        ))
    })
    .op("KEEP_SIZE beyond EOF keeps the size", |c| {
        sys::fallocate(c.fd("f")?, libc::FALLOC_FL_KEEP_SIZE, MIB, MIB)?;
        let st = sys::fstat(c.fd("f")?)?;
        Ok(format!(
            "size={} blocks>=4096:{}",
            st.st_size,
            st.st_blocks >= 4096
        ))
    })
    .op("write data 0..64KiB", |c| {
        val(sys::pwrite(c.fd("f")?, &vec![b'x'; 65536], 0))
    })
    .op("PUNCH_HOLE|KEEP_SIZE 4096..12288", |c| {
        done(sys::fallocate(
            c.fd("f")?,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            8192,
        ))
    })
    .op("punched range reads zeros, the rest is data", |c| {
        let d = sys::pread_full(c.fd("f")?, 65536, 0)?;
        let st = sys::fstat(c.fd("f")?)?;
        Ok(format!(
            "size={} before={} hole={} after={}",
            st.st_size,
            d[..4096].iter().all(|b| *b == b'x'),
            d[4096..12288].iter().all(|b| *b == 0),
            d[12288..].iter().all(|b| *b == b'x')
        ))
    })
    .op("PUNCH_HOLE without KEEP_SIZE", |c| {
        done(sys::fallocate(
            c.fd("f")?,
            libc::FALLOC_FL_PUNCH_HOLE,
            0,
            4096,
        ))
    })
    .op("fallocate extending with an unaligned length", |c| {
        sys::fallocate(c.fd("f")?, 0, MIB, 12345)?;
        val(sys::fstat(c.fd("f")?).map(|s| s.st_size))
    })
    .op("zero length", |c| done(sys::fallocate(c.fd("f")?, 0, 0, 0)))
    .op("unknown mode bits", |c| {
        done(sys::fallocate(c.fd("f")?, 0x4000, 0, 10))
    })
    .op("close", |c| c.close("f"))
    .op("fallocate on an O_RDONLY descriptor", |c| {
        c.open("r", &c.a("f"), O_RDONLY, 0)?;
        done(sys::fallocate(c.fd("r")?, 0, 0, 10))
    })
    .op("close", |c| c.close("r"))
    .op("fallocate on an O_APPEND descriptor", |c| {
        c.open("ap", &c.a("f"), O_WRONLY | O_APPEND, 0)?;
        done(sys::fallocate(c.fd("ap")?, 0, 0, 10))
    })
    .op("close", |c| c.close("ap"))
    .op("final content", |c| content(c, "f"));
    s.run_side_by_side();
}

#[test]
fn seek_data_and_hole() {
    const MIB: u64 = 1 << 20;
    let mut s = Script::new("SEEK_DATA/SEEK_HOLE");
    s.op("sparse file: data at 0..4K and 1M..1M+4K, size 2M", |c| {
        c.open("f", &c.a("f"), O_CREAT | O_RDWR, 0o644)?;
        sys::pwrite(c.fd("f")?, &[b'a'; 4096], 0)?;
        sys::pwrite(c.fd("f")?, &[b'b'; 4096], MIB)?;
        sys::ftruncate(c.fd("f")?, 2 * MIB)?;
        sys::fsync(c.fd("f")?)?;
        fstat_of(c, "f")
    });
    let probes: [(i64, libc::c_int, &str); 9] = [
        (0, libc::SEEK_DATA, "SEEK_DATA from 0"),
        (0, libc::SEEK_HOLE, "SEEK_HOLE from 0"),
        (4096, libc::SEEK_DATA, "SEEK_DATA from 4K"),
        (100_000, libc::SEEK_DATA, "SEEK_DATA from inside the hole"),
        (
            MIB as i64,
            libc::SEEK_HOLE,
            "SEEK_HOLE from the second extent",
        ),
        (
            MIB as i64 + 8192,
            libc::SEEK_DATA,
            "SEEK_DATA in the trailing hole",
        ),
        (
            MIB as i64 + 8192,
            libc::SEEK_HOLE,
            "SEEK_HOLE in the trailing hole",
        ),
        (2 * MIB as i64, libc::SEEK_DATA, "SEEK_DATA at EOF"),
        (3 * MIB as i64, libc::SEEK_HOLE, "SEEK_HOLE past EOF"),
    ];
    for (off, whence, desc) in probes {
        s.op(desc, move |c| val(sys::lseek(c.fd("f")?, off, whence)));
    }
    s.op("SEEK_DATA from a negative offset", |c| {
        val(sys::lseek(c.fd("f")?, -1, libc::SEEK_DATA))
    })
    .op("file position after SEEK_DATA", |c| {
        sys::lseek(c.fd("f")?, 4096, libc::SEEK_DATA)?;
        val(sys::lseek(c.fd("f")?, 0, libc::SEEK_CUR))
    })
    .op("empty file: SEEK_DATA / SEEK_HOLE", |c| {
        c.open("e", &c.a("empty"), O_CREAT | O_RDWR, 0o644)?;
        Ok(format!(
            "{:?} {:?}",
            sys::lseek(c.fd("e")?, 0, libc::SEEK_DATA),
            sys::lseek(c.fd("e")?, 0, libc::SEEK_HOLE)
        ))
    })
    .op("close", |c| {
        c.close("e")?;
        c.close("f")
    });
    s.run_side_by_side();
}

#[test]
fn copy_file_range_between_files() {
    let src = pattern(100 * 1024, 3);
    let src2 = src.clone();
    let mut s = Script::new("copy_file_range");
    s.op("source with 100 KiB", move |c| {
        sys::write_file(&c.a("src"), &src)?;
        c.open("in", &c.a("src"), O_RDONLY, 0)?;
        c.open("out", &c.a("dst"), O_CREAT | O_RDWR, 0o644)
    })
    .op("copy 50 KiB from 10 to 5", |c| {
        val(sys::copy_file_range(
            c.fd("in")?,
            10,
            c.fd("out")?,
            5,
            50 * 1024,
        ))
    })
    .op("destination content", move |c| {
        let d = sys::read_file(&c.a("dst"))?;
        Ok(format!(
            "{} head zero={} body ok={}",
            bytes(&d),
            d[..5].iter().all(|b| *b == 0),
            d[5..] == src2[10..10 + 50 * 1024]
        ))
    })
    .op("copy across the source's EOF is short", |c| {
        val(sys::copy_file_range(
            c.fd("in")?,
            100 * 1024 - 100,
            c.fd("out")?,
            0,
            4096,
        ))
    })
    .op("copy at the source's EOF copies nothing", |c| {
        val(sys::copy_file_range(
            c.fd("in")?,
            100 * 1024,
            c.fd("out")?,
            0,
            4096,
        ))
    })
    .op("copy beyond the destination's end extends it", |c| {
        sys::copy_file_range(c.fd("in")?, 0, c.fd("out")?, 200 * 1024, 1000)?;
        fstat_of(c, "out")
    })
    .op("overlapping copy within one file", |c| {
        c.open("self", &c.a("src"), O_RDWR, 0)?;
        val(sys::copy_file_range(
            c.fd("self")?,
            0,
            c.fd("self")?,
            100,
            1000,
        ))
    })
    .op("copy from a write-only descriptor", |c| {
        c.open("wo", &c.a("src"), O_WRONLY, 0)?;
        val(sys::copy_file_range(c.fd("wo")?, 0, c.fd("out")?, 0, 10))
    })
    .op("copy into a read-only descriptor", |c| {
        val(sys::copy_file_range(
            c.fd("in")?,
            0,
            c.fd("in")?,
            200_000,
            10,
        ))
    })
    .op("copy into an O_APPEND descriptor", |c| {
        c.open("ap", &c.a("dst"), O_WRONLY | O_APPEND, 0)?;
        val(sys::copy_file_range(c.fd("in")?, 0, c.fd("ap")?, 0, 10))
    })
    .op("close all", |c| {
        for k in ["in", "out", "self", "wo", "ap"] {
            c.close(k)?;
        }
        Ok("ok".into())
    })
    .op("destination content", |c| content(c, "dst"));
    s.run_side_by_side();
}

#[test]
fn fsync_and_fdatasync() {
    let mut s = Script::new("fsync");
    s.op("create and write", |c| {
        c.open("f", &c.a("f"), O_CREAT | O_RDWR, 0o644)?;
        val(sys::pwrite(c.fd("f")?, b"durable", 0))
    })
    .op("fsync", |c| done(sys::fsync(c.fd("f")?)))
    .op("fdatasync", |c| done(sys::fdatasync(c.fd("f")?)))
    .op("fsync with nothing dirty", |c| done(sys::fsync(c.fd("f")?)))
    .op("fsync an O_RDONLY descriptor", |c| {
        c.open("r", &c.a("f"), O_RDONLY, 0)?;
        done(sys::fsync(c.fd("r")?))
    })
    .op("fsync a directory", |c| {
        c.open("d", &c.a(""), O_RDONLY | O_DIRECTORY, 0)?;
        done(sys::fsync(c.fd("d")?))
    })
    .op("fdatasync a directory", |c| {
        done(sys::fdatasync(c.fd("d")?))
    })
    .op("close all", |c| {
        c.close("f")?;
        c.close("r")?;
        c.close("d")
    })
    .op("content", |c| content(c, "f"));
    s.run_side_by_side();
}

#[test]
fn unlinked_while_open() {
    let mut s = Script::new("unlinked while open");
    s.op("create, write, keep open", |c| {
        c.open("f", &c.a("f"), O_CREAT | O_RDWR, 0o644)?;
        val(sys::pwrite(c.fd("f")?, b"hello", 0))
    })
    .op("second descriptor, read-only", |c| {
        c.open("r", &c.a("f"), O_RDONLY, 0)
    })
    .op("unlink", |c| done(sys::unlink(&c.a("f"))))
    .op("the name is gone", |c| stat_of(&c.a("f")))
    .op("fstat: nlink 0", |c| fstat_of(c, "f"))
    .op("read through the fd", |c| pread_of(c, "f", 100, 0))
    .op("write through the fd", |c| {
        val(sys::pwrite(c.fd("f")?, b" world", 5))
    })
    .op("the other fd sees the write", |c| pread_of(c, "r", 100, 0))
    .op("ftruncate through the fd", |c| {
        sys::ftruncate(c.fd("f")?, 8)?;
        fstat_of(c, "f")
    })
    .op("fchmod through the fd", |c| {
        sys::fchmod(c.fd("f")?, 0o600)?;
        fstat_of(c, "f")
    })
    .op("fsync through the fd", |c| done(sys::fsync(c.fd("f")?)))
    .op("a new file with the same name is independent", |c| {
        sys::write_file(&c.a("f"), b"new")?;
        Ok(format!(
            "{} / {}",
            content(c, "f")?,
            pread_of(c, "r", 100, 0)?
        ))
    })
    .op("close the writer", |c| c.close("f"))
    .op("the reader still reads", |c| pread_of(c, "r", 100, 0))
    .op("close the reader", |c| c.close("r"))
    .op("the new file is intact", |c| content(c, "f"))
    .op("a 2 MiB unlinked file stays whole", |c| {
        let data = pattern(2 << 20, 9);
        c.open("big", &c.a("big"), O_CREAT | O_RDWR, 0o644)?;
        sys::pwrite_all(c.fd("big")?, &data, 0)?;
        sys::unlink(&c.a("big"))?;
        let back = sys::pread_full(c.fd("big")?, 3 << 20, 0)?;
        c.close("big")?;
        Ok(format!("{}", back == data))
    })
    .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

#[test]
fn directory_removed_while_open() {
    let mut s = Script::new("directory removed while open");
    s.op("mkdir d with an entry, open it", |c| {
        sys::mkdir(&c.a("d"), 0o755)?;
        sys::write_file(&c.a("d/f"), b"")?;
        c.open("d", &c.a("d"), O_RDONLY | O_DIRECTORY, 0)
    })
    .op("empty and remove it", |c| {
        sys::unlink(&c.a("d/f"))?;
        done(sys::rmdir(&c.a("d")))
    })
    .op("fstat the open directory", |c| fstat_of(c, "d"))
    .op(
        "create inside the removed directory (via /proc/self/fd)",
        |c| {
            let p = format!("/proc/self/fd/{}/new", c.raw_fd("d")?);
            c.open("x", std::path::Path::new(&p), O_CREAT | O_WRONLY, 0o644)
        },
    )
    .op("close", |c| c.close("d"))
    .op("listing", |c| listing(&c.a("")));
    s.run_side_by_side();
}

// ------------------------------------------------------------------ locks across two mounts

fn flock_view(fl: &libc::flock) -> String {
    let t = match fl.l_type as libc::c_int {
        libc::F_RDLCK => "rd",
        libc::F_WRLCK => "wr",
        libc::F_UNLCK => "unlocked",
        _ => "?",
    };
    format!("{t} start={} len={}", fl.l_start, fl.l_len)
}

/// Starts a thread that takes a blocking lock with `take`, checks that it is still
/// blocked after 300 ms, runs `release`, and reports whether the lock then came
/// within 10 s.
fn blocks_until(
    c: &mut Ctx,
    take: impl FnOnce() -> SysResult<()> + Send + 'static,
    release: impl FnOnce(&mut Ctx) -> Outcome,
) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(take());
    });
    let blocked = match rx.recv_timeout(Duration::from_millis(300)) {
        Err(_) => "blocked".to_string(),
        Ok(r) => format!("did not block: {r:?}"),
    };
    release(c)?;
    let after = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => format!("{r:?}"),
        Err(_) => "still blocked 10s after release".into(),
    };
    Ok(format!("{blocked}, then {after}"))
}

/// Retries `f` while it fails with EAGAIN, for up to 2 s. Through FUSE, the
/// locks an open file holds are dropped by the kernel's RELEASE request, which
/// it sends asynchronously after close(2) has returned; a lock freed by a close
/// may therefore become available a moment later than on a local file system.
fn soon<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match f() {
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

#[test]
fn posix_locks_across_mounts() {
    use libc::{F_GETLK, F_RDLCK, F_SETLK, F_SETLKW, F_UNLCK, F_WRLCK};
    use sys::flock_range as fl;
    let mut s = Script::new("POSIX record locks across two mounts").with_two_mounts();
    s.op("create lk via A", |c| put(c, "lk", &[0u8; 1000]))
        .op("child process locks [0,100) for writing via A", |c| {
            let h = LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_WRLCK, 0, 100))?;
            c.hold("w", h);
            Ok("held".into())
        })
        .op("open lk via B", |c| c.open("b", &c.b("lk"), O_RDWR, 0))
        .op("write lock [50,60) via B conflicts", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_SETLK,
                &fl(F_WRLCK, 50, 10),
            ))
        })
        .op("read lock [99,100) via B conflicts", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_SETLK,
                &fl(F_RDLCK, 99, 1),
            ))
        })
        .op("F_GETLK via B reports the holder", |c| {
            let got = sys::fcntl_getlk(c.raw_fd("b")?, F_GETLK, &fl(F_WRLCK, 50, 10))?;
            Ok(format!(
                "{} pid is the holder={}",
                flock_view(&got),
                got.l_pid == c.holder("w")?.pid()
            ))
        })
        .op("F_GETLK on a free range", |c| {
            val(
                sys::fcntl_getlk(c.raw_fd("b")?, F_GETLK, &fl(F_WRLCK, 100, 50))
                    .map(|f| flock_view(&f)),
            )
        })
        .op("write lock [100,200) via B (adjacent) succeeds", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_SETLK,
                &fl(F_WRLCK, 100, 100),
            ))
        })
        .op(
            "a second child via A conflicts with B's lock",
            |c| match LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_WRLCK, 150, 10)) {
                Ok(_) => Ok("got the lock".into()),
                Err(e) => Err(e),
            },
        )
        .op("a child's read lock coexists with another read lock", |c| {
            let h = LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_RDLCK, 300, 10))?;
            c.hold("r", h);
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_SETLK,
                &fl(F_RDLCK, 300, 10),
            ))
        })
        .op("but not with a write lock", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_SETLK,
                &fl(F_WRLCK, 305, 1),
            ))
        })
        .op("the holder exits: its locks go", |c| {
            c.release_holder("w")?;
            c.release_holder("r")?;
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_SETLK,
                &fl(F_WRLCK, 0, 400),
            ))
        })
        .op("F_GETLK from a child's view: B holds [0,400)", |c| {
            // The child's fcntl fails with EAGAIN because we hold it; proves B's lock is
            // visible to A's side.
            match LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_RDLCK, 399, 1)) {
                Ok(_) => Ok("got the lock".into()),
                Err(e) => Err(e),
            }
        })
        .op("unlock a middle piece via B", |c| {
            sys::fcntl_setlk(c.raw_fd("b")?, F_SETLK, &fl(F_UNLCK, 100, 100))?;
            match LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_WRLCK, 100, 100)) {
                Ok(_) => Ok("child got the freed middle".into()),
                Err(e) => Err(e),
            }
        })
        .op(
            "closing ANY descriptor of the file drops the process's locks",
            |c| {
                c.open("b2", &c.b("lk"), O_RDONLY, 0)?;
                c.close("b2")?;
                match LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_WRLCK, 0, 400)) {
                    Ok(_) => Ok("child got the whole range".into()),
                    Err(e) => Err(e),
                }
            },
        )
        .op("F_SETLKW via B waits for A's holder to go", |c| {
            let h = LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_WRLCK, 500, 100))?;
            c.hold("w2", h);
            let fd = c.raw_fd("b")?;
            blocks_until(
                c,
                move || sys::fcntl_setlk(fd, F_SETLKW, &fl(F_WRLCK, 500, 10)),
                |c| c.release_holder("w2"),
            )
        })
        .op("lock to EOF (len 0) conflicts far out", |c| {
            sys::fcntl_setlk(c.raw_fd("b")?, F_SETLK, &fl(F_WRLCK, 10_000, 0))?;
            match LockHolder::spawn(&c.a("lk"), F_SETLK, fl(F_RDLCK, 1 << 40, 1)) {
                Ok(_) => Ok("got the lock".into()),
                Err(e) => Err(e),
            }
        })
        .op("write lock on a read-only descriptor", |c| {
            c.open("ro", &c.b("lk"), O_RDONLY, 0)?;
            done(sys::fcntl_setlk(
                c.raw_fd("ro")?,
                F_SETLK,
                &fl(F_WRLCK, 0, 1),
            ))
        })
        .op("close", |c| {
            c.close("ro")?;
            c.close("b")
        });
    s.run_side_by_side();
}

#[test]
fn ofd_locks_across_mounts() {
    use libc::{F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW, F_RDLCK, F_UNLCK, F_WRLCK};
    use sys::flock_range as fl;
    let mut s = Script::new("OFD locks across two mounts").with_two_mounts();
    s.op("create lk via A", |c| put(c, "lk", &[0u8; 1000]))
        .op("open via A and via B", |c| {
            c.open("a", &c.a("lk"), O_RDWR, 0)?;
            c.open("b", &c.b("lk"), O_RDWR, 0)
        })
        .op("A: write lock [0,100)", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("a")?,
                F_OFD_SETLK,
                &fl(F_WRLCK, 0, 100),
            ))
        })
        .op("B: write lock [50,60) conflicts", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_OFD_SETLK,
                &fl(F_WRLCK, 50, 10),
            ))
        })
        .op("B: read lock [0,1) conflicts", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_OFD_SETLK,
                &fl(F_RDLCK, 0, 1),
            ))
        })
        .op("B: F_OFD_GETLK reports A's lock", |c| {
            val(
                sys::fcntl_getlk(c.raw_fd("b")?, F_OFD_GETLK, &fl(F_WRLCK, 50, 10))
                    .map(|f| flock_view(&f)),
            )
        })
        .op("B: read lock [100,200) succeeds", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("b")?,
                F_OFD_SETLK,
                &fl(F_RDLCK, 100, 100),
            ))
        })
        .op(
            "A: write lock [150,160) conflicts with B's read lock",
            |c| {
                done(sys::fcntl_setlk(
                    c.raw_fd("a")?,
                    F_OFD_SETLK,
                    &fl(F_WRLCK, 150, 10),
                ))
            },
        )
        .op("A: read lock [150,160) shares", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("a")?,
                F_OFD_SETLK,
                &fl(F_RDLCK, 150, 10),
            ))
        })
        .op("A: F_OFD_GETLK sees B's read lock", |c| {
            val(
                sys::fcntl_getlk(c.raw_fd("a")?, F_OFD_GETLK, &fl(F_WRLCK, 120, 10))
                    .map(|f| flock_view(&f)),
            )
        })
        .op("B: F_OFD_SETLKW waits until A unlocks", |c| {
            let fd = c.raw_fd("b")?;
            let afd = c.raw_fd("a")?;
            blocks_until(
                c,
                move || sys::fcntl_setlk(fd, F_OFD_SETLKW, &fl(F_WRLCK, 0, 10)),
                move |_| done(sys::fcntl_setlk(afd, F_OFD_SETLK, &fl(F_UNLCK, 0, 100))),
            )
        })
        .op("A: now conflicts with B's new lock", |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("a")?,
                F_OFD_SETLK,
                &fl(F_WRLCK, 5, 1),
            ))
        })
        .op("a second open via A is a different owner", |c| {
            c.open("a2", &c.a("lk"), O_RDWR, 0)?;
            sys::fcntl_setlk(c.raw_fd("a2")?, F_OFD_SETLK, &fl(F_WRLCK, 700, 10))?;
            done(sys::fcntl_setlk(
                c.raw_fd("a")?,
                F_OFD_SETLK,
                &fl(F_WRLCK, 705, 1),
            ))
        })
        .op("closing the owner releases its locks", |c| {
            c.close("a2")?;
            done(soon(|| {
                sys::fcntl_setlk(c.raw_fd("b")?, F_OFD_SETLK, &fl(F_WRLCK, 700, 10))
            }))
        })
        .op("close all", |c| {
            c.close("a")?;
            c.close("b")
        });
    s.run_side_by_side();
}

#[test]
fn flock_across_mounts() {
    use libc::{LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN};
    let mut s = Script::new("flock across two mounts").with_two_mounts();
    s.op("create lk, open via A and via B", |c| {
        put(c, "lk", b"lock")?;
        c.open("a", &c.a("lk"), O_RDWR, 0)?;
        c.open("b", &c.b("lk"), O_RDWR, 0)
    })
    .op("A: LOCK_EX", |c| {
        done(sys::flock(c.fd("a")?, LOCK_EX | LOCK_NB))
    })
    .op("B: LOCK_EX conflicts", |c| {
        done(sys::flock(c.fd("b")?, LOCK_EX | LOCK_NB))
    })
    .op("B: LOCK_SH conflicts", |c| {
        done(sys::flock(c.fd("b")?, LOCK_SH | LOCK_NB))
    })
    .op("A: LOCK_UN", |c| done(sys::flock(c.fd("a")?, LOCK_UN)))
    .op("B: LOCK_SH", |c| {
        done(sys::flock(c.fd("b")?, LOCK_SH | LOCK_NB))
    })
    .op("A: LOCK_SH shares", |c| {
        done(sys::flock(c.fd("a")?, LOCK_SH | LOCK_NB))
    })
    .op("A: upgrade to LOCK_EX conflicts with B's share", |c| {
        done(sys::flock(c.fd("a")?, LOCK_EX | LOCK_NB))
    })
    .op("closing B drops its flock", |c| {
        c.close("b")?;
        done(soon(|| sys::flock(c.fd("a")?, LOCK_EX | LOCK_NB)))
    })
    .op("B: a blocking LOCK_EX waits until A unlocks", |c| {
        c.open("b2", &c.b("lk"), O_RDWR, 0)?;
        let b2 = c
            .fd("b2")?
            .try_clone_to_owned()
            .map_err(|_| nix::errno::Errno::EMFILE)?;
        blocks_until(
            c,
            move || sys::flock(sys::fd_of(&b2), LOCK_EX),
            |c| done(sys::flock(c.fd("a")?, LOCK_UN)),
        )
    })
    .op("A: now conflicts", |c| {
        done(sys::flock(c.fd("a")?, LOCK_SH | LOCK_NB))
    })
    .op("a second open via the same mount is another owner", |c| {
        c.open("b3", &c.b("lk"), O_RDONLY, 0)?;
        done(sys::flock(c.fd("b3")?, LOCK_SH | LOCK_NB))
    })
    .op("close all", |c| {
        c.close("a")?;
        c.close("b2")?;
        c.close("b3")
    });
    s.run_side_by_side();
}

#[test]
fn flock_and_record_locks_are_independent() {
    use libc::{LOCK_EX, LOCK_NB, LOCK_SH};
    let mut s = Script::new("flock vs record locks").with_two_mounts();
    s.op("create lk, open via A and via B", |c| {
        put(c, "lk", b"lock")?;
        c.open("a", &c.a("lk"), O_RDWR, 0)?;
        c.open("b", &c.b("lk"), O_RDWR, 0)
    })
    .op("B: LOCK_SH", |c| {
        done(sys::flock(c.fd("b")?, LOCK_SH | LOCK_NB))
    })
    .op(
        "A: OFD write lock on the whole file ignores B's flock",
        |c| {
            done(sys::fcntl_setlk(
                c.raw_fd("a")?,
                libc::F_OFD_SETLK,
                &sys::flock_range(libc::F_WRLCK, 0, 0),
            ))
        },
    )
    .op(
        "A: LOCK_EX on the open file that holds the record lock",
        |c| {
            sys::flock(c.fd("b")?, libc::LOCK_UN)?;
            done(sys::flock(c.fd("a")?, LOCK_EX | LOCK_NB))
        },
    )
    .op("B: record read lock ignores A's flock", |c| {
        done(sys::fcntl_setlk(
            c.raw_fd("b")?,
            libc::F_OFD_SETLK,
            &sys::flock_range(libc::F_RDLCK, 20, 10),
        ))
    })
    .op("close all", |c| {
        c.close("a")?;
        c.close("b")
    });
    s.run_side_by_side();
}
