//! Conversions between the brick's attribute messages and what fuser hands the
//! kernel: file kinds, timestamps, and device numbers.

use crate::error::ClientError;
use fuser::{FileAttr, FileType, INodeNo};
use kadalu_proto::brick::{self, FileKind};
use kadalu_proto::FileId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `st_blksize` when a brick reports none.
const DEFAULT_BLKSIZE: u32 = 4096;

/// The fuser file type of a brick file kind.
pub fn file_type(kind: i32) -> Result<FileType, ClientError> {
    match FileKind::try_from(kind) {
        Ok(FileKind::Regular) => Ok(FileType::RegularFile),
        Ok(FileKind::Directory) => Ok(FileType::Directory),
        Ok(FileKind::Symlink) => Ok(FileType::Symlink),
        Ok(FileKind::Fifo) => Ok(FileType::NamedPipe),
        Ok(FileKind::Socket) => Ok(FileType::Socket),
        Ok(FileKind::CharDevice) => Ok(FileType::CharDevice),
        Ok(FileKind::BlockDevice) => Ok(FileType::BlockDevice),
        Ok(FileKind::Unspecified) | Err(_) => {
            Err(ClientError::BadReply(format!("unknown file kind {kind}")))
        }
    }
}

/// Wire timestamp to `SystemTime`; times before 1970 are kept.
pub fn system_time(ts: Option<&brick::Timestamp>) -> SystemTime {
    let Some(ts) = ts else {
        return UNIX_EPOCH;
    };
    let nsec = ts.nsec.min(999_999_999);
    if ts.sec >= 0 {
        UNIX_EPOCH + Duration::new(ts.sec as u64, nsec)
    } else {
        // sec is negative and nsec counts forward from it.
        let back = Duration::new(ts.sec.unsigned_abs(), 0);
        UNIX_EPOCH
            .checked_sub(back)
            .and_then(|t| t.checked_add(Duration::new(0, nsec)))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// `SystemTime` to a wire timestamp (floor semantics for times before 1970).
pub fn timestamp(t: SystemTime) -> brick::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => brick::Timestamp {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec = sec.saturating_sub(1);
                nsec = 1_000_000_000 - nsec;
            }
            brick::Timestamp { sec, nsec }
        }
    }
}

/// The wire timestamp of a time the kernel asked `setattr` to set.
///
/// fuser 0.18 builds that `SystemTime` wrongly for times before 1970: for the
/// kernel's `(sec < 0, nsec)` (Linux convention: nsec counts forward from sec) it
/// gives `UNIX_EPOCH - (|sec| + nsec)` instead of `UNIX_EPOCH - |sec| + nsec`
/// (`system_time_from_time` in fuser's `time.rs`), so −0.000000001 arrives as
/// −1.999999999. This undoes that: a time at least a second before 1970 can only
/// have come from a negative `sec`, and its whole seconds and fraction are `|sec|`
/// and `nsec` themselves. Times after 1970 fuser converts correctly. (Replies are
/// converted correctly by fuser, so [`system_time`] needs no counterpart.)
pub fn kernel_set_time(t: SystemTime) -> brick::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(_) => timestamp(t),
        Err(e) => {
            let back = e.duration();
            match i64::try_from(back.as_secs()) {
                Ok(sec) if sec > 0 => brick::Timestamp {
                    sec: -sec,
                    nsec: back.subsec_nanos(),
                },
                // Less than a second before 1970 fuser never produces (it would
                // be a `sec` of −0); such a time is taken at face value.
                Ok(_) => timestamp(t),
                Err(_) => brick::Timestamp {
                    sec: i64::MIN,
                    nsec: 0,
                },
            }
        }
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev`, as FUSE carries it) to
/// the userspace `dev_t` the wire uses.
pub fn dev_from_kernel(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// Userspace `dev_t` to the kernel's 32-bit encoding (`new_encode_dev`). Majors
/// and minors beyond what it can carry (12 and 20 bits) are truncated, as the
/// kernel itself would.
pub fn dev_to_kernel(dev: u64) -> u32 {
    let major = libc::major(dev) & 0xfff;
    let minor = libc::minor(dev) & 0xfffff;
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// A brick attribute message as fuser's `FileAttr`, with the inode number the
/// kernel knows the file by.
pub fn file_attr(attr: &brick::Attr, ino: u64) -> Result<FileAttr, ClientError> {
    Ok(FileAttr {
        ino: INodeNo(ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: system_time(attr.atime.as_ref()),
        mtime: system_time(attr.mtime.as_ref()),
        ctime: system_time(attr.ctime.as_ref()),
        crtime: UNIX_EPOCH,
        kind: file_type(attr.kind)?,
        perm: (attr.perm & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: dev_to_kernel(attr.rdev),
        blksize: if attr.blksize == 0 {
            DEFAULT_BLKSIZE
        } else {
            attr.blksize
        },
        flags: 0,
    })
}

/// What identifies a version of a file's contents as the kernel sees it: if any of
/// these changed since the kernel got attributes, its cached size may be stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrStamp {
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl AttrStamp {
    /// The stamp of a brick attribute message.
    pub fn of(a: &brick::Attr) -> Self {
        let t = |ts: Option<&brick::Timestamp>| ts.map_or((0, 0), |t| (t.sec, t.nsec));
        AttrStamp {
            size: a.size,
            mtime: t(a.mtime.as_ref()),
            ctime: t(a.ctime.as_ref()),
        }
    }
}

/// The file id inside a reply's attributes.
pub fn attr_id(attr: &brick::Attr) -> Result<FileId, ClientError> {
    FileId::from_wire(&attr.id).map_err(|e| ClientError::BadReply(e.to_string()))
}

/// The attributes a reply must carry.
pub fn required(attr: Option<brick::Attr>) -> Result<brick::Attr, ClientError> {
    attr.ok_or_else(|| ClientError::BadReply("reply without attributes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> brick::Attr {
        brick::Attr {
            id: FileId::from_parts(3, 99).to_wire(),
            kind: FileKind::Regular as i32,
            perm: 0o104755,
            nlink: 2,
            uid: 1000,
            gid: 100,
            size: 12345,
            blocks: 32,
            atime: Some(brick::Timestamp { sec: 10, nsec: 5 }),
            mtime: Some(brick::Timestamp {
                sec: 1_700_000_000,
                nsec: 999_999_999,
            }),
            ctime: None,
            rdev: 0,
            blksize: 0,
        }
    }

    /// fuser 0.18's `system_time_from_time` (private to fuser), which turns the
    /// kernel's setattr `timespec` into the `SystemTime` our callback receives.
    fn fuser_request_time(secs: i64, nsecs: u32) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nsecs)
        } else {
            UNIX_EPOCH - Duration::new((-secs) as u64, nsecs)
        }
    }

    #[test]
    fn times_before_1970_use_the_linux_convention() {
        // −0.000000001 s is (−1, 999999999) on Linux, not (−2, 1) or (0, ...).
        let t = UNIX_EPOCH - Duration::new(0, 1);
        let ts = brick::Timestamp {
            sec: -1,
            nsec: 999_999_999,
        };
        assert_eq!(timestamp(t), ts);
        assert_eq!(system_time(Some(&ts)), t);
        assert_eq!(kernel_set_time(fuser_request_time(-1, 999_999_999)), ts);
        let whole = brick::Timestamp { sec: -100, nsec: 0 };
        assert_eq!(kernel_set_time(fuser_request_time(-100, 0)), whole);
        assert_eq!(timestamp(UNIX_EPOCH - Duration::new(100, 0)), whole);
    }

    #[test]
    fn attributes_convert() {
        let a = file_attr(&sample(), 99).unwrap();
        assert_eq!(a.ino, INodeNo(99));
        assert_eq!(a.kind, FileType::RegularFile);
        assert_eq!(a.perm, 0o4755);
        assert_eq!(a.size, 12345);
        assert_eq!(a.blocks, 32);
        assert_eq!(a.nlink, 2);
        assert_eq!((a.uid, a.gid), (1000, 100));
        assert_eq!(a.blksize, DEFAULT_BLKSIZE);
        assert_eq!(a.atime, UNIX_EPOCH + Duration::new(10, 5));
        assert_eq!(a.ctime, UNIX_EPOCH);
        assert_eq!(attr_id(&sample()).unwrap(), FileId::from_parts(3, 99));
    }

    #[test]
    fn stamps_change_with_size_and_times_only() {
        let a = sample();
        let mut b = sample();
        b.perm = 0o600;
        b.nlink = 7;
        assert_eq!(AttrStamp::of(&a), AttrStamp::of(&b));
        b.size += 1;
        assert_ne!(AttrStamp::of(&a), AttrStamp::of(&b));
        let mut c = sample();
        c.ctime = Some(brick::Timestamp { sec: 1, nsec: 0 });
        assert_ne!(AttrStamp::of(&a), AttrStamp::of(&c));
    }

    #[test]
    fn unknown_kinds_and_bad_ids_are_refused() {
        let mut a = sample();
        a.kind = 0;
        assert!(file_attr(&a, 1).is_err());
        a.kind = 77;
        assert!(file_attr(&a, 1).is_err());
        a.id = prost::bytes::Bytes::from_static(b"short");
        assert!(attr_id(&a).is_err());
        assert!(required(None).is_err());
    }

    #[test]
    fn every_kind_maps() {
        let kinds = [
            (FileKind::Regular, FileType::RegularFile),
            (FileKind::Directory, FileType::Directory),
            (FileKind::Symlink, FileType::Symlink),
            (FileKind::Fifo, FileType::NamedPipe),
            (FileKind::Socket, FileType::Socket),
            (FileKind::CharDevice, FileType::CharDevice),
            (FileKind::BlockDevice, FileType::BlockDevice),
        ];
        for (k, t) in kinds {
            assert_eq!(file_type(k as i32).unwrap(), t);
        }
    }

    #[test]
    fn device_numbers_match_the_kernel_encoding() {
        // /dev/null is 1:3 → kernel 0x103; /dev/sda1 8:1 → 0x801.
        assert_eq!(dev_to_kernel(libc::makedev(1, 3)), 0x103);
        assert_eq!(dev_from_kernel(0x103), libc::makedev(1, 3));
        assert_eq!(dev_to_kernel(libc::makedev(8, 1)), 0x801);
        // A large minor uses the split encoding.
        let d = libc::makedev(259, 70000);
        assert_eq!(dev_from_kernel(dev_to_kernel(d)), d);
    }

    proptest! {
        #[test]
        fn device_round_trip(major in 0u32..4096, minor in 0u32..(1 << 20)) {
            let d = libc::makedev(major, minor);
            prop_assert_eq!(dev_from_kernel(dev_to_kernel(d)), d);
        }

        /// Times on either side of 1970 survive the trip to the wire and back
        /// exactly, so what `stat` shows is what was stored.
        #[test]
        fn system_times_round_trip(sec in -4_000_000_000i64..4_000_000_000i64, nsec in 0u32..1_000_000_000) {
            let t = if sec >= 0 {
                UNIX_EPOCH + Duration::new(sec as u64, nsec)
            } else {
                UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
            };
            let ts = timestamp(t);
            prop_assert!(ts.nsec < 1_000_000_000);
            prop_assert_eq!(system_time(Some(&ts)), t);
        }

        /// Whatever `timespec` the kernel sends in a setattr reaches the wire
        /// unchanged, through fuser's conversion of it.
        #[test]
        fn kernel_set_times_reach_the_wire_unchanged(sec in -4_000_000_000i64..4_000_000_000i64, nsec in 0u32..1_000_000_000) {
            let ts = kernel_set_time(fuser_request_time(sec, nsec));
            prop_assert_eq!(ts, brick::Timestamp { sec, nsec });
        }

        #[test]
        fn timestamps_round_trip(sec in -4_000_000_000i64..4_000_000_000i64, nsec in 0u32..1_000_000_000) {
            let ts = brick::Timestamp { sec, nsec };
            let back = timestamp(system_time(Some(&ts)));
            prop_assert_eq!(back, ts);
        }
    }
}
