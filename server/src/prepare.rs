//! The leader's half of the apply path: turns a request off the wire into a
//! [`Command`], choosing everything that is not deterministic (new file ids,
//! the time, which file a rename expects to move). Clock and id source are
//! injected so that this is testable and so that replicas never make these
//! choices themselves.

use crate::error::{FsError, FsResult};
use crate::ops::{Command, Operation, RequestId};
use crate::records::Time;
use kadalu_proto::brick::{
    time_set, CopyFileRangeRequest, CreateRequest, FallocateRequest, LinkRequest, MkdirRequest,
    MknodRequest, OpenRequest, RemoveXattrRequest, RenameRequest, RequestHeader, RmdirRequest,
    SetAttrRequest, SetXattrRequest, SymlinkRequest, TimeSet, UnlinkRequest, WriteRequest,
};
use kadalu_proto::{FileId, MAX_IO_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time::new(d.as_secs() as i64, d.subsec_nanos())
    }
}

/// Where new file ids come from.
pub trait IdSource: Send + Sync {
    fn next_id(&self) -> FileId;
}

/// Ids with a monotonic inode number (never reused) in the low half and
/// random bits in the high half.
#[derive(Debug)]
pub struct IdAllocator {
    next_ino: AtomicU64,
}

impl IdAllocator {
    /// `next_ino`: the smallest inode number never handed out (from the store).
    pub fn new(next_ino: u64) -> Self {
        IdAllocator {
            next_ino: AtomicU64::new(next_ino.max(crate::store::FIRST_INO)),
        }
    }
}

use kadalu_proto::SET_SHIFT;

/// Most replica sets in one pool.
pub const MAX_SET_INDEX: u64 = (1 << 15) - 1;

/// The first inode number set `set_index` may hand out.
pub fn first_ino_of_set(set_index: u64) -> u64 {
    (set_index << SET_SHIFT).max(crate::store::FIRST_INO)
}

impl IdAllocator {
    /// Raises the next inode number to at least `next` (a new Replica3
    /// leader, past every id its predecessors handed out).
    pub fn raise_to(&self, next: u64) {
        self.next_ino.fetch_max(next, Ordering::Relaxed);
    }
}

impl<T: IdSource + ?Sized> IdSource for std::sync::Arc<T> {
    fn next_id(&self) -> FileId {
        (**self).next_id()
    }
}

impl IdSource for IdAllocator {
    fn next_id(&self) -> FileId {
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        FileId::from_parts(rand::random::<u64>(), ino)
    }
}

/// Parses a file id off the wire: anything but 16 bytes is EINVAL.
pub fn parse_id(b: &[u8]) -> FsResult<FileId> {
    FileId::from_wire(b).map_err(|_| FsError::Os(libc::EINVAL))
}

/// Parses a 16-byte client id.
pub fn parse_client(b: &[u8]) -> FsResult<u128> {
    Ok(parse_id(b)?.0)
}

/// The request identity of a header; requests without one (or with seq 0)
/// are applied without deduplication.
pub fn request_id(h: Option<&RequestHeader>) -> FsResult<Option<RequestId>> {
    match h {
        Some(h) if h.seq != 0 => Ok(Some(RequestId {
            client: parse_client(&h.client_id)?,
            seq: h.seq,
            ack_below: h.ack_below,
        })),
        _ => Ok(None),
    }
}

/// The client id of a header, 0 when there is none.
pub fn client_of(h: Option<&RequestHeader>) -> FsResult<u128> {
    match h {
        Some(h) if !h.client_id.is_empty() => parse_client(&h.client_id),
        _ => Ok(0),
    }
}

/// Builds commands from requests.
pub struct Preparer {
    clock: Box<dyn Clock>,
    ids: Box<dyn IdSource>,
}

impl Preparer {
    pub fn new(clock: Box<dyn Clock>, ids: Box<dyn IdSource>) -> Self {
        Preparer { clock, ids }
    }

    pub fn now(&self) -> Time {
        self.clock.now()
    }

    fn command(&self, header: Option<&RequestHeader>, op: Operation) -> FsResult<Command> {
        Ok(Command {
            request: request_id(header)?,
            now: self.clock.now(),
            op,
        })
    }

    /// A PV operation (`quota_service.rs` validates the request first).
    pub fn pv_command(&self, header: Option<&RequestHeader>, op: Operation) -> FsResult<Command> {
        self.command(header, op)
    }

    /// A fresh file id, for the directory of a new PV.
    pub fn new_id(&self) -> FileId {
        self.ids.next_id()
    }

    /// A command that no client asked for (reclaiming an orphan).
    pub fn internal(&self, op: Operation) -> Command {
        Command {
            request: None,
            now: self.clock.now(),
            op,
        }
    }

    fn time_set(&self, t: Option<&TimeSet>) -> FsResult<Option<Time>> {
        match t.and_then(|t| t.how) {
            None => Ok(None),
            Some(time_set::How::Now(_)) => Ok(Some(self.clock.now())),
            Some(time_set::How::At(ts)) if ts.nsec < 1_000_000_000 => {
                Ok(Some(Time::new(ts.sec, ts.nsec)))
            }
            Some(time_set::How::At(_)) => Err(FsError::Os(libc::EINVAL)),
        }
    }

    pub fn create(&self, r: &CreateRequest) -> FsResult<Command> {
        let op = Operation::Create {
            parent: parse_id(&r.parent)?,
            name: r.name.clone(),
            id: self.ids.next_id(),
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            exclusive: r.flags & libc::O_EXCL != 0,
            truncate: r.flags & libc::O_TRUNC != 0,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn mknod(&self, r: &MknodRequest) -> FsResult<Command> {
        let op = Operation::Mknod {
            parent: parse_id(&r.parent)?,
            name: r.name.clone(),
            id: self.ids.next_id(),
            mode: r.mode,
            rdev: r.rdev,
            uid: r.uid,
            gid: r.gid,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn mkdir(&self, r: &MkdirRequest) -> FsResult<Command> {
        let op = Operation::Mkdir {
            parent: parse_id(&r.parent)?,
            name: r.name.clone(),
            id: self.ids.next_id(),
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn symlink(&self, r: &SymlinkRequest) -> FsResult<Command> {
        let op = Operation::Symlink {
            parent: parse_id(&r.parent)?,
            name: r.name.clone(),
            id: self.ids.next_id(),
            target: r.target.clone(),
            uid: r.uid,
            gid: r.gid,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn link(&self, r: &LinkRequest) -> FsResult<Command> {
        let op = Operation::Link {
            id: parse_id(&r.id)?,
            new_parent: parse_id(&r.new_parent)?,
            new_name: r.new_name.clone(),
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn unlink(&self, r: &UnlinkRequest) -> FsResult<Command> {
        let op = Operation::Unlink {
            parent: parse_id(&r.parent)?,
            name: r.name.clone(),
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn rmdir(&self, r: &RmdirRequest) -> FsResult<Command> {
        let op = Operation::Rmdir {
            parent: parse_id(&r.parent)?,
            name: r.name.clone(),
        };
        self.command(r.header.as_ref(), op)
    }

    /// `current`: the id the old name has now, as the leader sees it.
    pub fn rename(
        &self,
        r: &RenameRequest,
        current: impl FnOnce(FileId, &[u8]) -> FsResult<Option<FileId>>,
    ) -> FsResult<Command> {
        let parent = parse_id(&r.parent)?;
        let new_parent = parse_id(&r.new_parent)?;
        let source = current(parent, &r.name)?;
        let op = Operation::Rename {
            parent,
            name: r.name.clone(),
            new_parent,
            new_name: r.new_name.clone(),
            flags: r.flags,
            source,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn setattr(&self, r: &SetAttrRequest) -> FsResult<Command> {
        let op = Operation::SetAttr {
            id: parse_id(&r.id)?,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            atime: self.time_set(r.atime.as_ref())?,
            mtime: self.time_set(r.mtime.as_ref())?,
        };
        self.command(r.header.as_ref(), op)
    }

    /// The truncation an open with O_TRUNC does, if it does one.
    pub fn open_truncate(&self, r: &OpenRequest) -> FsResult<Option<Command>> {
        if r.flags & libc::O_TRUNC == 0 {
            return Ok(None);
        }
        let op = Operation::Truncate {
            id: parse_id(&r.id)?,
        };
        Ok(Some(self.command(r.header.as_ref(), op)?))
    }

    pub fn write(&self, r: &WriteRequest) -> FsResult<Command> {
        if r.data.len() > MAX_IO_SIZE {
            return Err(FsError::Os(libc::EINVAL));
        }
        let op = Operation::Write {
            id: parse_id(&r.id)?,
            offset: r.offset,
            data: r.data.clone(),
            append: r.append,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn fallocate(&self, r: &FallocateRequest) -> FsResult<Command> {
        let op = Operation::Fallocate {
            id: parse_id(&r.id)?,
            offset: r.offset,
            length: r.length,
            mode: r.mode,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn copy_file_range(&self, r: &CopyFileRangeRequest) -> FsResult<Command> {
        let op = Operation::CopyFileRange {
            id_in: parse_id(&r.id_in)?,
            offset_in: r.offset_in,
            id_out: parse_id(&r.id_out)?,
            offset_out: r.offset_out,
            length: r.length,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn setxattr(&self, r: &SetXattrRequest) -> FsResult<Command> {
        let op = Operation::SetXattr {
            id: parse_id(&r.id)?,
            name: r.name.clone(),
            value: r.value.clone(),
            flags: r.flags,
        };
        self.command(r.header.as_ref(), op)
    }

    pub fn removexattr(&self, r: &RemoveXattrRequest) -> FsResult<Command> {
        let op = Operation::RemoveXattr {
            id: parse_id(&r.id)?,
            name: r.name.clone(),
        };
        self.command(r.header.as_ref(), op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::bytes::Bytes;
    use std::sync::Mutex;

    struct FixedClock(Time);
    impl Clock for FixedClock {
        fn now(&self) -> Time {
            self.0
        }
    }

    struct Sequential(Mutex<u128>);
    impl IdSource for Sequential {
        fn next_id(&self) -> FileId {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            FileId(*n)
        }
    }

    fn preparer() -> Preparer {
        Preparer::new(
            Box::new(FixedClock(Time::new(100, 5))),
            Box::new(Sequential(Mutex::new(41))),
        )
    }

    fn header(seq: u64) -> Option<RequestHeader> {
        Some(RequestHeader {
            client_id: Bytes::from(vec![7u8; 16]),
            seq,
            ack_below: 3,
        })
    }

    #[test]
    fn create_carries_the_chosen_id_and_time() {
        let p = preparer();
        let req = CreateRequest {
            header: header(9),
            parent: FileId(1).to_wire(),
            name: Bytes::from_static(b"f"),
            mode: 0o644,
            uid: 1,
            gid: 2,
            flags: libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        };
        let cmd = p.create(&req).unwrap();
        assert_eq!(cmd.now, Time::new(100, 5));
        assert_eq!(
            cmd.request,
            Some(RequestId {
                client: u128::from_be_bytes([7; 16]),
                seq: 9,
                ack_below: 3
            })
        );
        assert_eq!(
            cmd.op,
            Operation::Create {
                parent: FileId(1),
                name: Bytes::from_static(b"f"),
                id: FileId(42),
                mode: 0o644,
                uid: 1,
                gid: 2,
                exclusive: true,
                truncate: false
            }
        );
        // A second create gets a new id.
        let Operation::Create { id, .. } = p.create(&req).unwrap().op else {
            panic!()
        };
        assert_eq!(id, FileId(43));
    }

    #[test]
    fn malformed_ids_and_headers_are_einval() {
        let p = preparer();
        let bad_id = UnlinkRequest {
            header: None,
            parent: Bytes::from_static(b"short"),
            name: Bytes::from_static(b"x"),
        };
        assert_eq!(p.unlink(&bad_id).unwrap_err().errno(), libc::EINVAL);
        let bad_client = UnlinkRequest {
            header: Some(RequestHeader {
                client_id: Bytes::from_static(b"x"),
                seq: 1,
                ack_below: 0,
            }),
            parent: FileId(1).to_wire(),
            name: Bytes::from_static(b"x"),
        };
        assert_eq!(p.unlink(&bad_client).unwrap_err().errno(), libc::EINVAL);
        // seq 0: no deduplication, not an error.
        let no_seq = UnlinkRequest {
            header: header(0),
            ..bad_id
        };
        assert_eq!(
            p.unlink(&UnlinkRequest {
                parent: FileId(1).to_wire(),
                ..no_seq
            })
            .unwrap()
            .request,
            None
        );
    }

    #[test]
    fn setattr_resolves_now_and_checks_nanoseconds() {
        let p = preparer();
        let mut req = SetAttrRequest {
            id: FileId(5).to_wire(),
            atime: Some(TimeSet {
                how: Some(time_set::How::Now(true)),
            }),
            mtime: Some(TimeSet {
                how: Some(time_set::How::At(kadalu_proto::brick::Timestamp {
                    sec: -3,
                    nsec: 7,
                })),
            }),
            ..Default::default()
        };
        let cmd = p.setattr(&req).unwrap();
        let Operation::SetAttr {
            atime, mtime, size, ..
        } = cmd.op
        else {
            panic!()
        };
        assert_eq!(atime, Some(Time::new(100, 5)));
        assert_eq!(mtime, Some(Time::new(-3, 7)));
        assert_eq!(size, None);
        req.mtime = Some(TimeSet {
            how: Some(time_set::How::At(kadalu_proto::brick::Timestamp {
                sec: 0,
                nsec: 1_000_000_000,
            })),
        });
        assert_eq!(p.setattr(&req).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn open_truncates_only_with_o_trunc() {
        let p = preparer();
        let mut req = OpenRequest {
            id: FileId(5).to_wire(),
            flags: libc::O_RDWR,
            header: None,
            prefetch: 0,
        };
        assert!(p.open_truncate(&req).unwrap().is_none());
        req.flags |= libc::O_TRUNC;
        assert_eq!(
            p.open_truncate(&req).unwrap().unwrap().op,
            Operation::Truncate { id: FileId(5) }
        );
    }

    #[test]
    fn oversize_writes_are_refused_before_apply() {
        let p = preparer();
        let req = WriteRequest {
            id: FileId(5).to_wire(),
            data: Bytes::from(vec![0u8; MAX_IO_SIZE + 1]),
            ..Default::default()
        };
        assert_eq!(p.write(&req).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn rename_records_the_source_it_saw() {
        let p = preparer();
        let req = RenameRequest {
            parent: FileId(1).to_wire(),
            name: Bytes::from_static(b"a"),
            new_parent: FileId(1).to_wire(),
            new_name: Bytes::from_static(b"b"),
            ..Default::default()
        };
        let cmd = p
            .rename(&req, |_, n| Ok((n == b"a").then_some(FileId(77))))
            .unwrap();
        let Operation::Rename { source, .. } = cmd.op else {
            panic!()
        };
        assert_eq!(source, Some(FileId(77)));
    }

    #[test]
    fn allocator_is_monotonic_and_skips_the_root() {
        let a = IdAllocator::new(0);
        let x = a.next_id();
        let y = a.next_id();
        assert_eq!(x.ino(), 2);
        assert_eq!(y.ino(), 3);
    }
}
