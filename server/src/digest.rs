//! A digest of a brick's logical content, so that the three bricks of a
//! Replica3 set can be compared (`RaftAdmin.TreeDigest`, heal checks, tests):
//! two bricks that hold the same files give the same digest, whatever their
//! history, and any difference a client could observe changes it.
//!
//! What goes in, in id order, each field tagged and length-prefixed so that no
//! two different contents feed the hash the same bytes:
//! - every inode: kind, permissions, owner, link count, rdev, the three
//!   times, a symlink's target, a directory's parent and next cursor, and for
//!   a regular file its size and a hash of its bytes;
//! - every directory entry (`dirents`: name, child, cursor, kind) and the
//!   readdir order (`dir_order`: cursor, name);
//! - every extended attribute;
//! - the orphans (inodes unlinked while open);
//! - quota: each inode's PV, the PV records (limits and usage), their names
//!   and the block extents usage is counted from (`quota.rs`), since EDQUOT
//!   is decided from them and a difference would make bricks diverge.
//!
//! Left out: `meta` (journal position, inode allocator, dedupe clock),
//! `raft_meta` and the dedupe tables. They are bookkeeping of how a brick got
//! to its content, and differ between bricks holding the same files (a brick
//! restored from a snapshot, one that replayed its journal after a crash).
//!
//! A file's bytes are hashed by their value, never by how they are stored:
//! a hole and a written run of zeros are the same content, so a brick that
//! received a file through a snapshot (data extents only) matches one that
//! wrote every byte. The content is cut into [`BLOCK`]-sized blocks and only
//! blocks that are not all zeros are hashed, with their index; holes
//! (`SEEK_HOLE`) are skipped without reading them, so a mostly-empty file of
//! terabytes costs only its data.

use crate::error::FsResult;
use crate::records::{Dirent, InodeRecord, Time};
use crate::store::{Store, DIRENTS, DIR_ORDER, INODES, ORPHANS, XATTRS};
use kadalu_proto::FileId;
use redb::{ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

/// The digest of a brick's logical content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeDigest {
    pub sha256: [u8; 32],
    /// Number of inodes (orphans included).
    pub inodes: u64,
}

impl TreeDigest {
    /// The digest in hex, for logs and the admin tool.
    pub fn to_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Unit of the content hash: blocks of zeros are left out, so this is the
/// granularity at which allocated zeros and holes are told to be the same.
const BLOCK: u64 = 64 * 1024;

/// Names this digest's input layout: a change of layout must change every
/// digest, not collide with the old one.
const DOMAIN: &[u8] = b"kadalu tree digest v2\0";

/// Section and record tags.
const T_INODE: u8 = b'I';
const T_DIRENT: u8 = b'D';
const T_ORDER: u8 = b'O';
const T_XATTR: u8 = b'X';
const T_ORPHAN: u8 = b'R';
const T_PV: u8 = b'P';
const T_PV_NAME: u8 = b'N';
const T_EXTENT: u8 = b'B';
const T_SECTION_END: u8 = b'E';

/// Feeds fixed-width and length-prefixed fields to a hash.
struct Feed(Sha256);

impl Feed {
    fn u8(&mut self, v: u8) {
        self.0.update([v]);
    }
    fn u32(&mut self, v: u32) {
        self.0.update(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.update(v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.update(v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }
    fn time(&mut self, t: Time) {
        self.i64(t.sec);
        self.u32(t.nsec);
    }
    /// Closes a section with its record count, so that records cannot be
    /// read as belonging to the next section.
    fn end_section(&mut self, count: u64) {
        self.u8(T_SECTION_END);
        self.u64(count);
    }
}

/// The digest of `store`'s logical content (see the module doc). The
/// metadata is read in one transaction; object files are read after it, so
/// the caller keeps commands from being applied meanwhile when it needs a
/// digest of one point in time.
pub fn tree_digest(store: &Store) -> FsResult<TreeDigest> {
    let txn = store.db().begin_read()?;
    let mut h = Feed(Sha256::new());
    h.0.update(DOMAIN);

    let inodes = txn.open_table(INODES)?;
    let mut n_inodes = 0u64;
    for item in inodes.iter()? {
        let (k, v) = item?;
        let id = FileId(k.value());
        let rec = InodeRecord::decode_bytes(v.value())?;
        h.u8(T_INODE);
        h.u128(id.0);
        // The raw kind, not the decoded one: an unknown kind must not
        // collapse with another.
        h.u32(rec.kind as u32);
        h.u32(rec.perm);
        h.u32(rec.uid);
        h.u32(rec.gid);
        h.u32(rec.nlink);
        h.u64(rec.rdev);
        h.time(rec.atime);
        h.time(rec.mtime);
        h.time(rec.ctime);
        h.bytes(&rec.target);
        h.u64(rec.pv);
        if rec.is_dir() {
            h.u128(rec.parent().0);
            h.u64(rec.next_cursor);
        }
        if rec.is_regular() {
            let (size, content) = content_digest(store, id)?;
            h.u64(size);
            h.0.update(content);
        }
        n_inodes += 1;
    }
    h.end_section(n_inodes);

    let dirents = txn.open_table(DIRENTS)?;
    let mut n = 0u64;
    for item in dirents.iter()? {
        let (k, v) = item?;
        let (parent, name) = k.value();
        let d = Dirent::decode(v.value())?;
        h.u8(T_DIRENT);
        h.u128(parent);
        h.bytes(name);
        h.u128(d.child.0);
        h.u64(d.cursor);
        h.u32(d.kind as i32 as u32);
        n += 1;
    }
    h.end_section(n);

    let order = txn.open_table(DIR_ORDER)?;
    let mut n = 0u64;
    for item in order.iter()? {
        let (k, v) = item?;
        let (parent, cursor) = k.value();
        h.u8(T_ORDER);
        h.u128(parent);
        h.u64(cursor);
        h.bytes(v.value());
        n += 1;
    }
    h.end_section(n);

    let xattrs = txn.open_table(XATTRS)?;
    let mut n = 0u64;
    for item in xattrs.iter()? {
        let (k, v) = item?;
        let (id, name) = k.value();
        h.u8(T_XATTR);
        h.u128(id);
        h.bytes(name);
        h.bytes(v.value());
        n += 1;
    }
    h.end_section(n);

    let orphans = txn.open_table(ORPHANS)?;
    let mut n = 0u64;
    for item in orphans.iter()? {
        let (k, _) = item?;
        h.u8(T_ORPHAN);
        h.u128(k.value());
        n += 1;
    }
    h.end_section(n);

    let pvs = txn.open_table(crate::quota::PVS)?;
    let mut n = 0u64;
    for item in pvs.iter()? {
        let (k, v) = item?;
        h.u8(T_PV);
        h.u64(k.value());
        h.bytes(v.value());
        n += 1;
    }
    h.end_section(n);
    let names = txn.open_table(crate::quota::PV_NAMES)?;
    let mut n = 0u64;
    for item in names.iter()? {
        let (k, v) = item?;
        h.u8(T_PV_NAME);
        h.bytes(k.value().as_bytes());
        h.u64(v.value());
        n += 1;
    }
    h.end_section(n);
    let extents = txn.open_table(crate::quota::EXTENTS)?;
    let mut n = 0u64;
    for item in extents.iter()? {
        let (k, v) = item?;
        let (id, start) = k.value();
        h.u8(T_EXTENT);
        h.u128(id);
        h.u64(start);
        h.u64(v.value());
        n += 1;
    }
    h.end_section(n);

    Ok(TreeDigest {
        sha256: h.0.finalize().into(),
        inodes: n_inodes,
    })
}

/// Size and content hash of regular file `id`: sha256 over the size, then
/// (index, bytes) of every block that is not all zeros. Given the size, the
/// blocks' lengths follow, so the encoding determines the content.
fn content_digest(store: &Store, id: FileId) -> FsResult<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    // Opened by path, not through the store's descriptor cache: a digest
    // walks every file once and would only push out the descriptors the
    // brick's clients are using.
    let file = match open_object_readonly(store, id)? {
        Some(f) => f,
        None => {
            h.update(0u64.to_le_bytes());
            return Ok((0, h.finalize().into()));
        }
    };
    let size = file.metadata()?.size();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; BLOCK as usize];
    // First block not yet looked at: two extents may share a block.
    let mut next_block = 0u64;
    for extent in DataExtents::new(&file, size) {
        let (start, end) = extent?;
        let first = (start / BLOCK).max(next_block);
        let last = end.div_ceil(BLOCK);
        for block in first..last {
            let at = block * BLOCK;
            let len = BLOCK.min(size - at) as usize;
            let chunk = &mut buf[..len];
            file.read_exact_at(chunk, at)?;
            if chunk.iter().any(|&b| b != 0) {
                h.update(block.to_le_bytes());
                h.update(&*chunk);
            }
        }
        next_block = next_block.max(last);
    }
    Ok((size, h.finalize().into()))
}

/// The object file of `id` opened read-only by path, bypassing the
/// descriptor cache; `None` when the file has no object (it is empty).
pub(crate) fn open_object_readonly(store: &Store, id: FileId) -> FsResult<Option<File>> {
    let r = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(store.object_path(id));
    match r {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The data extents `[start, end)` of a file below `size`, as
/// `SEEK_DATA`/`SEEK_HOLE` report them, in order. Everything outside them
/// reads as zeros. File systems without holes report one extent.
pub(crate) struct DataExtents<'f> {
    file: &'f File,
    pos: u64,
    size: u64,
}

impl<'f> DataExtents<'f> {
    pub(crate) fn new(file: &'f File, size: u64) -> Self {
        DataExtents { file, pos: 0, size }
    }

    fn seek(&self, offset: u64, whence: i32) -> std::io::Result<Option<u64>> {
        let offset = i64::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: lseek on a descriptor we borrow; no memory is passed.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after the offset.
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }
}

impl Iterator for DataExtents<'_> {
    type Item = std::io::Result<(u64, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.size {
            return None;
        }
        let r = (|| {
            let Some(start) = self.seek(self.pos, libc::SEEK_DATA)? else {
                return Ok(None);
            };
            if start >= self.size {
                return Ok(None);
            }
            let end = self
                .seek(start, libc::SEEK_HOLE)?
                .unwrap_or(self.size)
                .min(self.size);
            if end <= start {
                // Only a file changing under us gets here; never loop on it.
                return Err(std::io::Error::other(format!(
                    "SEEK_HOLE at {start} gave {end}"
                )));
            }
            Ok(Some((start, end)))
        })();
        match r {
            Ok(Some((start, end))) => {
                self.pos = end;
                Some(Ok((start, end)))
            }
            Ok(None) => {
                self.pos = self.size;
                None
            }
            Err(e) => {
                self.pos = self.size;
                Some(Err(e))
            }
        }
    }
}

/// A brick in a temporary directory with a state machine, for the tests of
/// this module and of `raft::snapshot`.
#[cfg(test)]
pub(crate) mod testing {
    use crate::apply::StateMachine;
    use crate::ops::{Command, Operation, Outcome, RequestId};
    use crate::records::Time;
    use crate::store::Store;
    use kadalu_proto::FileId;
    use prost::bytes::Bytes;
    use std::sync::Arc;

    pub(crate) struct Brick {
        pub dir: tempfile::TempDir,
        pub store: Arc<Store>,
        pub sm: StateMachine,
        pub clock: i64,
        pub seq: u64,
    }

    pub(crate) fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// An id of the test brick namespace `ns`: tests give different bricks
    /// different namespaces when their files must not share ids.
    pub(crate) fn fid(ns: u64, n: u64) -> FileId {
        FileId::from_parts(0xfeed_0000 + ns, n)
    }

    impl Brick {
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path(), 0o755, Time::new(1, 0)).unwrap());
            let sm = StateMachine::new(store.clone()).unwrap();
            Brick {
                dir,
                store,
                sm,
                clock: 1000,
                seq: 0,
            }
        }

        /// Applies `op` at the next tick of this brick's clock; two bricks
        /// given the same ops get the same times.
        pub(crate) fn apply(&mut self, op: Operation) -> Outcome {
            self.clock += 1;
            let cmd = Command {
                request: None,
                now: Time::new(self.clock, 0),
                op,
            };
            self.sm.apply(&cmd).unwrap()
        }

        /// As `apply`, as a client request (recorded for deduplication).
        pub(crate) fn apply_request(&mut self, client: u128, op: Operation) -> Outcome {
            self.clock += 1;
            self.seq += 1;
            let cmd = Command {
                request: Some(RequestId {
                    client,
                    seq: self.seq,
                    ack_below: 0,
                }),
                now: Time::new(self.clock, 0),
                op,
            };
            self.sm.apply(&cmd).unwrap()
        }

        pub(crate) fn mkdir(&mut self, parent: FileId, name: &str, id: FileId) {
            self.apply(Operation::Mkdir {
                parent,
                name: b(name),
                id,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
        }

        pub(crate) fn create(&mut self, parent: FileId, name: &str, id: FileId) {
            self.apply(Operation::Create {
                parent,
                name: b(name),
                id,
                mode: 0o644,
                uid: 1,
                gid: 1,
                exclusive: true,
                truncate: false,
            });
        }

        pub(crate) fn write(&mut self, id: FileId, offset: u64, data: &[u8]) {
            self.apply(Operation::Write {
                id,
                offset,
                data: Bytes::copy_from_slice(data),
                append: false,
            });
        }

        pub(crate) fn setxattr(&mut self, id: FileId, name: &str, value: &[u8]) {
            self.apply(Operation::SetXattr {
                id,
                name: b(name),
                value: Bytes::copy_from_slice(value),
                flags: 0,
            });
        }

        pub(crate) fn chmod(&mut self, id: FileId, mode: u32) {
            self.apply(Operation::SetAttr {
                id,
                mode: Some(mode),
                uid: None,
                gid: None,
                size: None,
                atime: None,
                mtime: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{b, fid, Brick};
    use super::*;
    use crate::ops::Operation;
    use kadalu_proto::ROOT_ID;

    /// A small tree: directories, files with data, a hole, a hard link, a
    /// symlink, a fifo, xattrs, an orphan.
    fn populate(br: &mut Brick) {
        br.mkdir(ROOT_ID, "d", fid(0, 1));
        br.mkdir(fid(0, 1), "e", fid(0, 2));
        br.create(fid(0, 1), "f", fid(0, 3));
        br.write(fid(0, 3), 0, b"hello world");
        br.create(ROOT_ID, "sparse", fid(0, 4));
        br.write(fid(0, 4), 3 << 20, b"tail");
        br.apply(Operation::Link {
            id: fid(0, 3),
            new_parent: fid(0, 2),
            new_name: b("hard"),
        });
        br.apply(Operation::Symlink {
            parent: ROOT_ID,
            name: b("ln"),
            id: fid(0, 5),
            target: b("d/f"),
            uid: 3,
            gid: 4,
        });
        br.apply(Operation::Mknod {
            parent: fid(0, 2),
            name: b("fifo"),
            id: fid(0, 6),
            mode: libc::S_IFIFO | 0o600,
            rdev: 0,
            uid: 0,
            gid: 0,
        });
        br.setxattr(fid(0, 3), "user.a", b"1");
        br.setxattr(ROOT_ID, "user.root", b"r");
        br.create(ROOT_ID, "gone", fid(0, 7));
        br.write(fid(0, 7), 0, b"still open");
        br.apply(Operation::Unlink {
            parent: ROOT_ID,
            name: b("gone"),
        });
        br.create(ROOT_ID, "empty", fid(0, 8));
    }

    fn digest(br: &Brick) -> TreeDigest {
        tree_digest(&br.store).unwrap()
    }

    #[test]
    fn same_commands_give_the_same_digest() {
        let mut x = Brick::new();
        let mut y = Brick::new();
        populate(&mut x);
        populate(&mut y);
        // Bookkeeping that differs between bricks is not content.
        y.sm.make_durable().unwrap();
        y.store.reserve_inos(1000).unwrap();
        let dx = digest(&x);
        assert_eq!(dx, digest(&y));
        // root, d, e, f, sparse, ln, fifo, gone (orphan), empty
        assert_eq!(dx.inodes, 9);
        assert_eq!(dx.to_hex().len(), 64);
        // Stable: asking again changes nothing.
        assert_eq!(dx, digest(&x));
    }

    #[test]
    fn quota_state_is_content() {
        let mut x = Brick::new();
        let mut y = Brick::new();
        for br in [&mut x, &mut y] {
            br.apply(Operation::CreatePv {
                name: "pv".into(),
                id: fid(0, 50),
                byte_limit: 1 << 20,
                inode_limit: 0,
            });
            br.create(fid(0, 50), "f", fid(0, 51));
            br.write(fid(0, 51), 0, b"data");
        }
        assert_eq!(digest(&x), digest(&y));
        y.store.debug_set_pv_usage("pv", 1, 1).unwrap();
        assert_ne!(digest(&x), digest(&y));
    }

    #[test]
    fn holes_and_written_zeros_are_the_same_content() {
        let mut x = Brick::new();
        let mut y = Brick::new();
        for br in [&mut x, &mut y] {
            br.create(ROOT_ID, "f", fid(0, 1));
        }
        // x: a hole then data; y: every byte written.
        x.write(fid(0, 1), 300_000, b"z");
        let mut all = vec![0u8; 300_001];
        all[300_000] = b'z';
        y.write(fid(0, 1), 0, &all);
        assert_eq!(digest(&x), digest(&y));
    }

    #[test]
    fn every_kind_of_change_changes_the_digest() {
        let mut base = Brick::new();
        populate(&mut base);
        let d0 = digest(&base);

        type Change = fn(&mut Brick);
        let changes: [(&str, Change); 9] = [
            ("one byte of content", |br| br.write(fid(0, 3), 4, b"O")),
            ("a byte past a hole", |br| {
                br.write(fid(0, 4), (3 << 20) + 3, b"L")
            }),
            ("a mode", |br| br.chmod(fid(0, 3), 0o600)),
            ("an xattr value", |br| {
                br.setxattr(fid(0, 3), "user.a", b"2")
            }),
            ("a new xattr", |br| br.setxattr(fid(0, 6), "user.b", b"")),
            ("a size", |br| {
                br.apply(Operation::SetAttr {
                    id: fid(0, 8),
                    mode: None,
                    uid: None,
                    gid: None,
                    size: Some(1),
                    atime: None,
                    mtime: None,
                });
            }),
            ("a name", |br| {
                br.apply(Operation::Rename {
                    parent: fid(0, 1),
                    name: b("f"),
                    new_parent: fid(0, 1),
                    new_name: b("g"),
                    flags: 0,
                    source: Some(fid(0, 3)),
                });
            }),
            ("a time", |br| {
                br.apply(Operation::SetAttr {
                    id: fid(0, 5),
                    mode: None,
                    uid: None,
                    gid: None,
                    size: None,
                    atime: Some(Time::new(7, 7)),
                    mtime: None,
                });
            }),
            ("an orphan reclaimed", |br| {
                br.apply(Operation::Reclaim { id: fid(0, 7) });
            }),
        ];
        for (what, change) in changes {
            let mut br = Brick::new();
            populate(&mut br);
            assert_eq!(digest(&br), d0, "{what}: populate is deterministic");
            change(&mut br);
            assert_ne!(digest(&br), d0, "{what} left the digest unchanged");
        }
    }

    #[test]
    fn content_is_hashed_up_to_the_size_only() {
        // A byte changed then the file truncated below it: same content.
        let mut x = Brick::new();
        let mut y = Brick::new();
        for br in [&mut x, &mut y] {
            br.create(ROOT_ID, "f", fid(0, 1));
            br.write(fid(0, 1), 0, b"abcdef");
        }
        x.write(fid(0, 1), 5, b"X");
        y.write(fid(0, 1), 5, b"f");
        assert_ne!(digest(&x), digest(&y));
        for br in [&mut x, &mut y] {
            br.apply(Operation::SetAttr {
                id: fid(0, 1),
                mode: None,
                uid: None,
                gid: None,
                size: Some(5),
                atime: None,
                mtime: None,
            });
        }
        assert_eq!(digest(&x), digest(&y));
    }

    #[test]
    fn extents_cover_the_data() {
        let mut br = Brick::new();
        br.create(ROOT_ID, "f", fid(0, 1));
        br.write(fid(0, 1), 0, b"a");
        br.write(fid(0, 1), 8 << 20, b"b");
        let f = open_object_readonly(&br.store, fid(0, 1)).unwrap().unwrap();
        let size = f.metadata().unwrap().size();
        let extents: Vec<_> = DataExtents::new(&f, size)
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!extents.is_empty());
        assert_eq!(extents[0].0, 0);
        assert_eq!(extents.last().unwrap().1, size);
        let data: u64 = extents.iter().map(|(s, e)| e - s).sum();
        assert!(data < 1 << 20, "the hole was reported as data: {extents:?}");
        assert!(open_object_readonly(&br.store, fid(0, 2))
            .unwrap()
            .is_none());
    }
}
