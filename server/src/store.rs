//! The brick's storage: a metadata store plus one object file per regular file.
//!
//! ```text
//! BRICK/meta.redb                   namespace and metadata (redb, transactional)
//! BRICK/journal                     commands not yet durable in meta.redb (`journal.rs`)
//! BRICK/objects/xx/<32 hex digits>  data of the regular file with that id
//!                                   (xx = the id's last two hex digits);
//!                                   made on the first write, absent = empty
//! ```
//!
//! Files are not stored as a mirror of the user's tree. The namespace lives in
//! redb tables:
//!
//! | table        | key                        | value                                 |
//! |--------------|----------------------------|---------------------------------------|
//! | `inodes`     | id (u128)                  | [`InodeRecord`] (kind, mode, owner, nlink, rdev, times, symlink target, a directory's parent and next cursor) |
//! | `dirents`    | (parent id, name)          | [`Dirent`] (child id, cursor, kind)   |
//! | `dir_order`  | (parent id, cursor)        | name: readdir walks this in cursor order, so a cursor stays valid while the directory changes |
//! | `xattrs`     | (id, name)                 | value                                 |
//! | `meta`       | key                        | u64: format version, next inode number, applied journal index, dedupe clock |
//! | `orphans`    | id                         | (): unlinked while open, reclaimed on last release or at start |
//! | `dedupe*`    | see `dedupe.rs`            | recorded outcomes of client requests  |
//! | `raft_meta`  | key                        | Replica3: last applied log id and membership (bincode) |
//!
//! The size and allocated blocks of a regular file come from `fstat` of its
//! object file, so sparse files, `fallocate`, `SEEK_DATA`/`SEEK_HOLE` and
//! `copy_file_range` are the kernel's own behaviour. Directories, symlinks,
//! fifos, sockets and device nodes exist only as records: the brick never
//! creates a device node. Nothing here resolves a user path: every access is by
//! id, so no request can reach outside the brick directory.
//!
//! Why redb: pure Rust, ACID transactions with MVCC (reads never block the one
//! writer), crash-safe, and non-durable commits so an operation does not cost
//! an fsync. A non-durable commit lives only in this process until the next
//! durable one: a kill -9 takes the store back to its last *durable* commit
//! (made on a one-second timer, at shutdown and at journal checkpoints), never
//! to a torn state. What it loses is recovered from the write-ahead journal,
//! which holds every command since that commit; each command records its
//! journal index (`applied_index` in `meta`) in its own transaction, so the
//! store says where replay starts.
//!
//! This module owns opening and formatting the brick and every read-only
//! query; all changes go through `apply.rs`.

use crate::error::{FsError, FsResult};
use crate::object_fds::ObjectFds;
use crate::records::{Dirent, InodeRecord, Time};
use kadalu_proto::brick::{Attr, DirEntry, FileKind, ReadDirReply, StatFsReply};
use kadalu_proto::{FileId, MAX_IO_SIZE, MAX_READDIR_ENTRIES, ROOT_ID};
use prost::bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const INODES: TableDefinition<u128, &[u8]> = TableDefinition::new("inodes");
pub(crate) const DIRENTS: TableDefinition<(u128, &[u8]), &[u8]> = TableDefinition::new("dirents");
pub(crate) const DIR_ORDER: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("dir_order");
pub(crate) const XATTRS: TableDefinition<(u128, &[u8]), &[u8]> = TableDefinition::new("xattrs");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const ORPHANS: TableDefinition<u128, ()> = TableDefinition::new("orphans");
/// Replica3 only: the Raft position the store reflects (`raft/state_machine.rs`),
/// written in the same transaction as each applied command.
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// `meta` key: on-disk format version.
pub(crate) const META_FORMAT: &str = "format_version";
/// `meta` key: the smallest inode number never handed out.
pub(crate) const META_NEXT_INO: &str = "next_ino";
/// `meta` key: journal index of the last command the store reflects.
pub(crate) const META_APPLIED_INDEX: &str = "applied_index";
/// The format this code reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// Inode numbers below this are reserved (1 is the root).
pub const FIRST_INO: u64 = 2;

/// Block size reported for files and directories.
const BLKSIZE: u32 = 4096;

/// The brick's metadata store and object directory.
pub struct Store {
    db: Database,
    dir: PathBuf,
    objects: PathBuf,
    /// Open object files (`object_fds.rs`): every object access goes
    /// through it, and so does every removal of an object file.
    fds: ObjectFds,
}

impl Store {
    /// Opens the brick in `dir`, formatting it first if it is empty: creates
    /// the store, the object directories and the root directory (`root_mode`,
    /// owned by 0:0, timestamps `now`).
    pub fn open(dir: &Path, root_mode: u32, now: Time) -> FsResult<Store> {
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects)?;
        for i in 0..=255u8 {
            let sub = objects.join(format!("{i:02x}"));
            if !sub.is_dir() {
                std::fs::create_dir(&sub)?;
            }
        }
        let db = Database::create(dir.join("meta.redb"))?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            objects,
            fds: ObjectFds::new(ObjectFds::default_bound()),
        };
        store.format_if_new(root_mode, now)?;
        Ok(store)
    }

    fn format_if_new(&self, root_mode: u32, now: Time) -> FsResult<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get(META_FORMAT)?.map(|v| v.value());
            match version {
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(FsError::Store(format!(
                        "brick format version {other}, this server reads {FORMAT_VERSION}"
                    )))
                }
                None => {
                    meta.insert(META_FORMAT, FORMAT_VERSION)?;
                    meta.insert(META_NEXT_INO, FIRST_INO)?;
                    let mut inodes = txn.open_table(INODES)?;
                    let mut root = InodeRecord::new(FileKind::Directory, root_mode, 0, 0, now);
                    root.nlink = 2;
                    root.set_parent(ROOT_ID);
                    inodes.insert(ROOT_ID.0, root.encode_vec().as_slice())?;
                }
            }
            // Every table exists from here on, so readers never meet a missing one.
            txn.open_table(INODES)?;
            txn.open_table(DIRENTS)?;
            txn.open_table(DIR_ORDER)?;
            txn.open_table(XATTRS)?;
            txn.open_table(ORPHANS)?;
            txn.open_table(crate::quota::PVS)?;
            txn.open_table(crate::quota::PV_NAMES)?;
            txn.open_table(crate::quota::EXTENTS)?;
            crate::dedupe::create_tables(&txn)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// The brick directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the data of regular file `id` lives.
    pub fn object_path(&self, id: FileId) -> PathBuf {
        let hex = id.to_hex();
        self.objects.join(&hex[30..]).join(hex)
    }

    /// The object directory (for the start-up sweep).
    pub(crate) fn objects_dir(&self) -> &Path {
        &self.objects
    }

    /// The object file of `id`, for reading; `None` if it does not exist (a
    /// regular file that was never written has no data to read). The
    /// descriptor is shared and cached; use positioned I/O only.
    pub(crate) fn open_object_read(&self, id: FileId) -> FsResult<Option<Arc<File>>> {
        self.fds.get_or_open(id.0, || {
            match self.object_options(false).open(self.object_path(id)) {
                Ok(f) => Ok(Some(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// The object file of `id`, created if needed, for writing.
    pub(crate) fn open_object_write(&self, id: FileId) -> FsResult<Arc<File>> {
        let file = self.fds.get_or_open(id.0, || -> FsResult<Option<File>> {
            Ok(Some(self.object_options(true).open(self.object_path(id))?))
        })?;
        file.ok_or_else(|| FsError::Store(format!("object of {id} vanished on open")))
    }

    fn object_options(&self, create: bool) -> OpenOptions {
        let mut o = OpenOptions::new();
        o.read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        o
    }

    /// Deletes the object file of `id` (absent is fine) and forgets its
    /// cached descriptor.
    pub(crate) fn remove_object(&self, id: FileId) -> std::io::Result<()> {
        self.remove_object_at(id, &self.object_path(id))
    }

    /// As `remove_object`, for an object file found at `path` (the start-up
    /// sweep, which meets whatever names are there).
    pub(crate) fn remove_object_at(&self, id: FileId, path: &Path) -> std::io::Result<()> {
        self.fds.remove(id.0, || match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        })
    }

    /// `stat` of the object of `id`: by its cached descriptor if there is
    /// one (no path walk), else by path; `None` when it has no object.
    fn object_metadata(&self, id: FileId) -> FsResult<Option<std::fs::Metadata>> {
        if let Some(f) = self.fds.cached(id.0) {
            return Ok(Some(f.metadata()?));
        }
        match std::fs::symlink_metadata(self.object_path(id)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Size of the object file of `id` as it is now; 0 when it has none.
    pub fn object_size(&self, id: FileId) -> FsResult<u64> {
        Ok(self.object_metadata(id)?.map_or(0, |m| m.size()))
    }

    /// Journal index of the last command this store reflects (0: none yet).
    pub fn applied_index(&self) -> FsResult<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(META_APPLIED_INDEX)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// A `raft_meta` value (Replica3's applied log id and membership).
    pub fn raft_meta(&self, key: &str) -> FsResult<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(RAFT_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Sets `raft_meta` values in one non-durable commit; the caller holds
    /// the applier's lock, so this lands between two commands.
    pub(crate) fn put_raft_meta(&self, entries: &[(&str, &[u8])]) -> FsResult<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(RAFT_META)?;
            for (k, v) in entries {
                table.insert(*k, *v)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The next inode number never handed out, as recorded.
    pub fn next_ino(&self) -> FsResult<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(META_NEXT_INO)?
            .map(|v| v.value())
            .unwrap_or(FIRST_INO))
    }

    /// Reserves `gap` inode numbers for this run, durably, and returns the
    /// first. A crash loses the non-durable tail of the previous run, whose new
    /// ids clients may still hold; skipping ahead means such an id never
    /// comes back naming a different file.
    pub fn reserve_inos(&self, gap: u64) -> FsResult<u64> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let first = {
            let mut meta = txn.open_table(META)?;
            let next = meta
                .get(META_NEXT_INO)?
                .map(|v| v.value())
                .unwrap_or(FIRST_INO);
            let first = next.saturating_add(gap);
            meta.insert(META_NEXT_INO, first)?;
            first
        };
        txn.commit()?;
        Ok(first)
    }

    /// The inode record of `id`; ESTALE when there is none.
    pub fn inode(&self, id: FileId) -> FsResult<InodeRecord> {
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        get_inode(&inodes, id)?.ok_or(FsError::Os(libc::ESTALE))
    }

    /// Attributes of `id` as a client sees them.
    pub fn getattr(&self, id: FileId) -> FsResult<Attr> {
        let rec = self.inode(id)?;
        Ok(self.attr(id, &rec))
    }

    /// Builds the wire attributes of an inode; a regular file's size and
    /// blocks come from its object file.
    pub fn attr(&self, id: FileId, rec: &InodeRecord) -> Attr {
        let kind = rec.file_kind();
        let (size, blocks, blksize) = match kind {
            FileKind::Regular => match self.object_metadata(id) {
                Ok(Some(m)) => (m.size(), m.blocks(), m.blksize() as u32),
                _ => (0, 0, BLKSIZE),
            },
            FileKind::Directory => (BLKSIZE as u64, 8, BLKSIZE),
            FileKind::Symlink => (rec.target.len() as u64, 0, BLKSIZE),
            _ => (0, 0, BLKSIZE),
        };
        Attr {
            id: id.to_wire(),
            kind: kind as i32,
            perm: rec.perm,
            nlink: rec.nlink,
            uid: rec.uid,
            gid: rec.gid,
            size,
            blocks,
            atime: Some(rec.atime.to_wire()),
            mtime: Some(rec.mtime.to_wire()),
            ctime: Some(rec.ctime.to_wire()),
            rdev: rec.rdev,
            blksize,
        }
    }

    /// Resolves one name in a directory; "." and ".." resolve to the
    /// directory itself and its parent.
    pub fn lookup(&self, parent: FileId, name: &[u8]) -> FsResult<Attr> {
        use crate::names::{check_name, Name, NameUse};
        let name = check_name(name, NameUse::Lookup)?;
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        let dir = get_inode(&inodes, parent)?.ok_or(FsError::Os(libc::ESTALE))?;
        if !dir.is_dir() {
            return Err(FsError::Os(libc::ENOTDIR));
        }
        let child = match name {
            Name::Dot => parent,
            Name::DotDot => dir.parent(),
            Name::Entry(n) => {
                let dirents = txn.open_table(DIRENTS)?;
                get_dirent(&dirents, parent, n)?
                    .ok_or(FsError::Os(libc::ENOENT))?
                    .child
            }
        };
        let rec = get_inode(&inodes, child)?
            .ok_or_else(|| FsError::Store(format!("entry points at missing inode {child}")))?;
        Ok(self.attr(child, &rec))
    }

    /// The id an entry names, if any (used by prepare to make renames idempotent).
    pub fn entry_id(&self, parent: FileId, name: &[u8]) -> FsResult<Option<FileId>> {
        let txn = self.db.begin_read()?;
        let dirents = txn.open_table(DIRENTS)?;
        Ok(get_dirent(&dirents, parent, name)?.map(|d| d.child))
    }

    /// Entries of a directory after `cursor`, in cursor order.
    pub fn readdir(
        &self,
        id: FileId,
        cursor: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<ReadDirReply> {
        let max = clamp_readdir(max_entries);
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        let dir = get_inode(&inodes, id)?.ok_or(FsError::Os(libc::ESTALE))?;
        if !dir.is_dir() {
            return Err(FsError::Os(libc::ENOTDIR));
        }
        let Some(start) = cursor.checked_add(1) else {
            return Ok(ReadDirReply {
                entries: Vec::new(),
                eof: true,
            });
        };
        let order = txn.open_table(DIR_ORDER)?;
        let dirents = txn.open_table(DIRENTS)?;
        let mut entries = Vec::new();
        let mut eof = true;
        for item in order.range((id.0, start)..=(id.0, u64::MAX))? {
            let (key, name) = item?;
            if entries.len() == max {
                eof = false;
                break;
            }
            let name = name.value();
            let d = get_dirent(&dirents, id, name)?.ok_or_else(|| {
                FsError::Store(format!("dir_order names a missing entry in {id}"))
            })?;
            let attr = if plus {
                let rec = get_inode(&inodes, d.child)?.ok_or_else(|| {
                    FsError::Store(format!("entry points at missing inode {}", d.child))
                })?;
                Some(self.attr(d.child, &rec))
            } else {
                None
            };
            entries.push(DirEntry {
                name: Bytes::copy_from_slice(name),
                id: d.child.to_wire(),
                kind: d.kind as i32,
                cursor: key.value().1,
                attr,
            });
        }
        Ok(ReadDirReply { entries, eof })
    }

    /// Target of a symlink; EINVAL for anything else, as readlink(2).
    pub fn readlink(&self, id: FileId) -> FsResult<Bytes> {
        let rec = self.inode(id)?;
        if rec.file_kind() != FileKind::Symlink {
            return Err(FsError::Os(libc::EINVAL));
        }
        Ok(Bytes::from(rec.target))
    }

    /// Reads up to `size` bytes at `offset` of a regular file.
    pub fn read(&self, id: FileId, offset: u64, size: u32) -> FsResult<Bytes> {
        match self.read_inner(id, offset, size, false)? {
            Some(data) => Ok(data),
            None => Err(FsError::Store("blocking read would block".into())),
        }
    }

    /// [`Store::read`] if it can be answered from the page cache without
    /// waiting for the disk (`RWF_NOWAIT`); `None` if it would wait. The
    /// service answers such reads on its async workers, where a hop to the
    /// blocking pool would cost more than the read.
    pub fn read_cached(&self, id: FileId, offset: u64, size: u32) -> FsResult<Option<Bytes>> {
        self.read_inner(id, offset, size, true)
    }

    fn read_inner(
        &self,
        id: FileId,
        offset: u64,
        size: u32,
        nowait: bool,
    ) -> FsResult<Option<Bytes>> {
        let size = size as usize;
        if size > MAX_IO_SIZE || offset > i64::MAX as u64 {
            return Err(FsError::Os(libc::EINVAL));
        }
        regular_or_errno(&self.inode(id)?, libc::EINVAL)?;
        let Some(file) = self.open_object_read(id)? else {
            return Ok(Some(Bytes::new()));
        };
        let mut buf = vec![0u8; size];
        let mut done = 0;
        while done < size {
            let at = offset + done as u64;
            let r = match nowait {
                true => pread_nowait(&file, &mut buf[done..], at),
                false => file.read_at(&mut buf[done..], at),
            };
            match r {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(Some(Bytes::from(buf)))
    }

    /// SEEK_DATA / SEEK_HOLE on a regular file, answered by the object file.
    pub fn lseek(&self, id: FileId, offset: i64, whence: i32) -> FsResult<i64> {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(FsError::Os(libc::EINVAL));
        }
        regular_or_errno(&self.inode(id)?, libc::EINVAL)?;
        let Some(file) = self.open_object_read(id)? else {
            // An empty file: every offset is at or past the end.
            return Err(FsError::Os(libc::ENXIO));
        };
        // SAFETY: lseek on a valid descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if r < 0 {
            return Err(FsError::last_os());
        }
        Ok(r)
    }

    /// One extended attribute.
    pub fn getxattr(&self, id: FileId, name: &[u8]) -> FsResult<Bytes> {
        if name.is_empty() || name.len() > kadalu_proto::MAX_XATTR_NAME {
            return Err(FsError::Os(libc::ERANGE));
        }
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        if get_inode(&inodes, id)?.is_none() {
            return Err(FsError::Os(libc::ESTALE));
        }
        let xattrs = txn.open_table(XATTRS)?;
        let v = xattrs
            .get((id.0, name))?
            .ok_or(FsError::Os(libc::ENODATA))?;
        Ok(Bytes::copy_from_slice(v.value()))
    }

    /// Names of all extended attributes of `id`.
    pub fn listxattr(&self, id: FileId) -> FsResult<Vec<Bytes>> {
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        if get_inode(&inodes, id)?.is_none() {
            return Err(FsError::Os(libc::ESTALE));
        }
        let xattrs = txn.open_table(XATTRS)?;
        let mut names = Vec::new();
        for item in xattrs.range((id.0, &b""[..])..)? {
            let (k, _) = item?;
            let (owner, name) = k.value();
            if owner != id.0 {
                break;
            }
            names.push(Bytes::copy_from_slice(name));
        }
        Ok(names)
    }

    /// Capacity of the file system holding the brick.
    pub fn statfs(&self) -> FsResult<StatFsReply> {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::Os(libc::EINVAL))?;
        // SAFETY: statvfs fills the zeroed struct we pass; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if r != 0 {
            return Err(FsError::last_os());
        }
        Ok(StatFsReply {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: kadalu_proto::MAX_NAME_LEN as u32,
            frsize: st.f_frsize as u32,
        })
    }

    /// `statfs` as seen from `id`: inside a registered PV its limit and
    /// usage (so `df` on a PV mount shows the PV), elsewhere the brick's.
    pub fn statfs_of(&self, id: FileId) -> FsResult<StatFsReply> {
        let rec = self.inode(id)?;
        let fs = self.statfs()?;
        if rec.pv == 0 {
            return Ok(fs);
        }
        let txn = self.db.begin_read()?;
        let pvs = txn.open_table(crate::quota::PVS)?;
        Ok(match crate::quota::get_pv(&pvs, rec.pv)? {
            Some(p) => p.statfs(fs.bsize, fs.files, fs.ffree),
            None => fs,
        })
    }

    /// The registered PV `name`.
    pub fn pv(&self, name: &str) -> FsResult<Option<crate::quota::PvRecord>> {
        let txn = self.db.begin_read()?;
        let names = txn.open_table(crate::quota::PV_NAMES)?;
        let Some(num) = names.get(name)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let pvs = txn.open_table(crate::quota::PVS)?;
        crate::quota::get_pv(&pvs, num)
    }

    /// Every registered PV, by name.
    pub fn pvs(&self) -> FsResult<Vec<crate::quota::PvRecord>> {
        let txn = self.db.begin_read()?;
        let pvs = txn.open_table(crate::quota::PVS)?;
        let mut out = Vec::new();
        for item in pvs.iter()? {
            let (_, v) = item?;
            out.push(<crate::quota::PvRecord as prost::Message>::decode(
                v.value(),
            )?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Space for placing PVs: the file system's size and free bytes, and
    /// what registered PVs may still fill (limit − usage, summed).
    pub fn capacity(&self) -> FsResult<kadalu_proto::quota::CapacityReply> {
        let fs = self.statfs()?;
        let pvs = self.pvs()?;
        let frsize = u64::from(fs.frsize.max(1));
        Ok(kadalu_proto::quota::CapacityReply {
            fs_total_bytes: fs.blocks.saturating_mul(frsize),
            fs_free_bytes: fs.bavail.saturating_mul(frsize),
            promised_bytes: pvs
                .iter()
                .map(|p| p.byte_limit.saturating_sub(p.bytes_used))
                .fold(0u64, u64::saturating_add),
            pv_count: pvs.len() as u32,
        })
    }

    /// Tests and repair drills only: overwrites the stored usage of PV `name`
    /// (on a stopped brick), as a damaged store would have it.
    pub fn debug_set_pv_usage(&self, name: &str, bytes: u64, inodes: u64) -> FsResult<()> {
        let txn = self.db.begin_write()?;
        {
            let names = txn.open_table(crate::quota::PV_NAMES)?;
            let num = names
                .get(name)?
                .map(|v| v.value())
                .ok_or(FsError::Os(libc::ENOENT))?;
            let mut pvs = txn.open_table(crate::quota::PVS)?;
            let mut p = crate::quota::get_pv(&pvs, num)?.ok_or(FsError::Os(libc::ENOENT))?;
            p.bytes_used = bytes;
            p.inodes_used = inodes;
            crate::quota::put_pv(&mut pvs, num, &p)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Makes every committed change durable (one fsync'd commit), recording
    /// that the store now reflects every command up to journal index
    /// `applied_index` (which takes in commands that failed and committed
    /// nothing). `quick_repair` also records the allocator state (a second
    /// sync), so that opening after a crash need not walk the whole store.
    pub fn make_durable(&self, quick_repair: bool, applied_index: u64) -> FsResult<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(quick_repair);
        {
            let mut meta = txn.open_table(META)?;
            let now = meta.get(META_APPLIED_INDEX)?.map(|v| v.value());
            // Never backwards: a store that reflects more says so.
            if now.is_none_or(|n| n < applied_index) {
                meta.insert(META_APPLIED_INDEX, applied_index)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Ids of inodes unlinked while open.
    pub fn orphans(&self) -> FsResult<Vec<FileId>> {
        let txn = self.db.begin_read()?;
        let orphans = txn.open_table(ORPHANS)?;
        let mut out = Vec::new();
        for item in orphans.iter()? {
            out.push(FileId(item?.0.value()));
        }
        Ok(out)
    }

    /// Whether an inode record exists for `id`.
    pub fn exists(&self, id: FileId) -> FsResult<bool> {
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        Ok(inodes.get(id.0)?.is_some())
    }

    /// Drops the cached descriptor of `id`, if any, without touching the
    /// object file: a snapshot install (`raft/snapshot.rs`) replaces the
    /// object files wholesale, and no descriptor of a replaced one may be
    /// used again.
    pub(crate) fn forget_object_fd(&self, id: FileId) {
        self.fds.remove(id.0, || ());
    }
}

/// pread that fails with `WouldBlock` instead of waiting for the disk.
fn pread_nowait(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call; the descriptor is ours.
    let r = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // A file system without non-blocking buffered reads: take the slow path.
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Max entries in a readdir reply: 0 means "as many as allowed".
pub fn clamp_readdir(max_entries: u32) -> usize {
    match max_entries {
        0 => MAX_READDIR_ENTRIES as usize,
        n => n.min(MAX_READDIR_ENTRIES) as usize,
    }
}

/// Refuses anything but a regular file: EISDIR for a directory, `other` else.
pub(crate) fn regular_or_errno(rec: &InodeRecord, other: i32) -> FsResult<()> {
    match rec.file_kind() {
        FileKind::Regular => Ok(()),
        FileKind::Directory => Err(FsError::Os(libc::EISDIR)),
        _ => Err(FsError::Os(other)),
    }
}

pub(crate) fn get_inode(
    t: &impl ReadableTable<u128, &'static [u8]>,
    id: FileId,
) -> FsResult<Option<InodeRecord>> {
    match t.get(id.0)? {
        Some(v) => Ok(Some(InodeRecord::decode_bytes(v.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn get_dirent(
    t: &impl ReadableTable<(u128, &'static [u8]), &'static [u8]>,
    parent: FileId,
    name: &[u8],
) -> FsResult<Option<Dirent>> {
    match t.get((parent.0, name))? {
        Some(v) => Ok(Some(Dirent::decode(v.value())?)),
        None => Ok(None),
    }
}
