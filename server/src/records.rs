//! The values the brick keeps in its metadata store, and their encodings.
//! Records are prost messages (not the wire types) so that fields can be added
//! without a migration; fixed-size values use a hand-written byte layout.

use crate::error::{FsError, FsResult};
use kadalu_proto::brick::FileKind;
use kadalu_proto::FileId;

/// A point in time, as stored and as carried in operations.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, prost::Message)]
pub struct Time {
    #[prost(int64, tag = "1")]
    pub sec: i64,
    #[prost(uint32, tag = "2")]
    pub nsec: u32,
}

impl Time {
    /// A timestamp from its parts.
    pub fn new(sec: i64, nsec: u32) -> Self {
        Time { sec, nsec }
    }

    /// The wire form.
    pub fn to_wire(self) -> kadalu_proto::brick::Timestamp {
        kadalu_proto::brick::Timestamp {
            sec: self.sec,
            nsec: self.nsec,
        }
    }
}

/// Everything the brick knows about one file except its data (and, for a
/// regular file, its size, which is the object file's).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InodeRecord {
    #[prost(enumeration = "FileKind", tag = "1")]
    pub kind: i32,
    /// mode & 07777
    #[prost(uint32, tag = "2")]
    pub perm: u32,
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    #[prost(uint32, tag = "4")]
    pub gid: u32,
    #[prost(uint32, tag = "5")]
    pub nlink: u32,
    #[prost(uint64, tag = "6")]
    pub rdev: u64,
    #[prost(message, required, tag = "7")]
    pub atime: Time,
    #[prost(message, required, tag = "8")]
    pub mtime: Time,
    #[prost(message, required, tag = "9")]
    pub ctime: Time,
    /// Symlink target.
    #[prost(bytes = "vec", tag = "10")]
    pub target: Vec<u8>,
    /// Directories only: the parent directory (the root is its own parent).
    #[prost(fixed64, tag = "11")]
    pub parent_hi: u64,
    #[prost(fixed64, tag = "12")]
    pub parent_lo: u64,
    /// Directories only: cursor the next entry linked into it gets.
    #[prost(uint64, tag = "13")]
    pub next_cursor: u64,
    /// The PV this inode belongs to (the PV directory's inode number; 0 =
    /// none), inherited from the parent at creation (`quota.rs`).
    #[prost(uint64, tag = "14")]
    pub pv: u64,
}

/// The first cursor of a directory's entries; 1 and 2 are the client's "." and "..".
pub const FIRST_CURSOR: u64 = 3;

impl InodeRecord {
    /// A fresh inode with all three timestamps at `now`.
    pub fn new(kind: FileKind, perm: u32, uid: u32, gid: u32, now: Time) -> Self {
        InodeRecord {
            kind: kind as i32,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: 1,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            target: Vec::new(),
            parent_hi: 0,
            parent_lo: 0,
            next_cursor: FIRST_CURSOR,
            pv: 0,
        }
    }

    /// The kind; a record that does not decode to a known kind is a fault.
    pub fn file_kind(&self) -> FileKind {
        FileKind::try_from(self.kind).unwrap_or(FileKind::Unspecified)
    }

    pub fn is_dir(&self) -> bool {
        self.file_kind() == FileKind::Directory
    }

    pub fn is_regular(&self) -> bool {
        self.file_kind() == FileKind::Regular
    }

    pub fn parent(&self) -> FileId {
        FileId::from_parts(self.parent_hi, self.parent_lo)
    }

    pub fn set_parent(&mut self, parent: FileId) {
        self.parent_hi = parent.hi();
        self.parent_lo = parent.ino();
    }

    /// Sets mtime and ctime, as a change of contents does.
    pub fn touch_modified(&mut self, now: Time) {
        self.mtime = now;
        self.ctime = now;
    }

    pub fn encode_vec(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    pub fn decode_bytes(b: &[u8]) -> FsResult<Self> {
        Ok(<Self as prost::Message>::decode(b)?)
    }
}

/// What a directory entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    pub child: FileId,
    pub cursor: u64,
    pub kind: FileKind,
}

impl Dirent {
    const LEN: usize = 25;

    /// child (16, big-endian) ++ cursor (8, big-endian) ++ kind (1).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..16].copy_from_slice(&self.child.to_bytes());
        out[16..24].copy_from_slice(&self.cursor.to_be_bytes());
        out[24] = self.kind as i32 as u8;
        out
    }

    pub fn decode(b: &[u8]) -> FsResult<Self> {
        let bad = || FsError::Store(format!("bad dirent record of {} bytes", b.len()));
        if b.len() != Self::LEN {
            return Err(bad());
        }
        let child = FileId::from_wire(&b[..16]).map_err(|_| bad())?;
        let cursor = u64::from_be_bytes(b[16..24].try_into().map_err(|_| bad())?);
        let kind = FileKind::try_from(b[24] as i32).map_err(|_| bad())?;
        Ok(Dirent {
            child,
            cursor,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dirent_round_trips(child in any::<u128>(), cursor in any::<u64>(), k in 1i32..=7) {
            let d = Dirent { child: FileId(child), cursor, kind: FileKind::try_from(k).unwrap() };
            prop_assert_eq!(Dirent::decode(&d.encode()).unwrap(), d);
        }
    }

    #[test]
    fn inode_round_trips() {
        let mut r = InodeRecord::new(FileKind::Directory, 0o2755, 1, 2, Time::new(5, 6));
        r.set_parent(FileId(0xabc << 64 | 7));
        r.target = b"x".to_vec();
        let back = InodeRecord::decode_bytes(&r.encode_vec()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.parent(), FileId(0xabc << 64 | 7));
        assert!(InodeRecord::decode_bytes(&[0xff, 0xff]).is_err());
        assert!(Dirent::decode(&[0; 3]).is_err());
    }
}
