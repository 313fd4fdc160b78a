//! The state machine: the only code that changes a brick. `apply` takes a
//! prepared [`Command`] and is deterministic given the brick's state: all checks
//! run first, each command is one store transaction that is aborted on error
//! (so a failed command changes nothing), object files are touched only after
//! the checks pass, and object files of reclaimed inodes are deleted only once
//! the store has durably forgotten them.
//!
//! Replaying a command is harmless where it can be recognised: creating an id
//! that already sits under the same name, a link already made, a rename whose
//! source already sits under the new name all report success; a client's
//! retried request gets the recorded outcome (`dedupe.rs`).

use crate::dedupe;
use crate::error::{FsError, FsResult};
use crate::names::{check_symlink_target, check_xattr_name, entry_name, NameUse};
use crate::ops::{Command, Operation, Outcome, ReclaimPolicy, RecordedOutcome};
use crate::quota::{self, PvRecord, EXTENTS, PVS, PV_NAMES};
use crate::records::{Dirent, InodeRecord, Time};
use crate::store::{
    get_dirent, get_inode, regular_or_errno, Store, DIRENTS, DIR_ORDER, INODES, META,
    META_APPLIED_INDEX, META_NEXT_INO, ORPHANS, XATTRS,
};
use kadalu_proto::brick::FileKind;
use kadalu_proto::{FileId, MAX_IO_SIZE, MAX_XATTR_NAME, MAX_XATTR_VALUE, ROOT_ID};
use redb::{Durability, ReadableTable, Table, WriteTransaction};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Most hard links to one file, as ext4's EXT4_LINK_MAX.
const MAX_LINKS: u32 = 65_000;
/// Most bytes one copy_file_range command copies (a short copy is allowed).
pub const MAX_COPY: u64 = 64 << 20;
/// Most bytes of xattr names plus values one inode carries.
const MAX_XATTR_TOTAL: usize = 1 << 20;
/// Most bytes of a listxattr answer, as Linux's XATTR_LIST_MAX.
const MAX_XATTR_LIST: usize = 64 * 1024;
/// Deepest directory chain walked when checking for a rename into a subtree.
const MAX_DEPTH: usize = 1 << 20;

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;
/// The fallocate modes a brick carries out: those that only set bytes where
/// they are (see `journal.rs` for why that matters), which are also all the
/// FUSE kernel module passes on.
const FALLOC_MODES: i32 =
    libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;

/// Applies commands to one brick.
pub struct StateMachine {
    store: Arc<Store>,
    /// Objects of reclaimed inodes, deleted once the store is durable.
    pending_deletes: Vec<FileId>,
    dirty: bool,
    /// Index of the last command applied (or found to fail); each applied
    /// command records its index in the store with its change, so that after
    /// a crash the journal is replayed from the right place.
    last_index: u64,
}

impl StateMachine {
    pub fn new(store: Arc<Store>) -> FsResult<Self> {
        let last_index = store.applied_index()?;
        Ok(StateMachine {
            store,
            pending_deletes: Vec::new(),
            dirty: false,
            last_index,
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// True when changes were committed since the store was last made durable.
    pub fn is_dirty(&self) -> bool {
        self.dirty || !self.pending_deletes.is_empty()
    }

    /// Notes a change committed to the store outside `apply_at` (Replica3's
    /// Raft position), so the next durable point includes it.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Index of the last command applied.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The index the next command gets.
    pub fn next_index(&self) -> u64 {
        self.last_index + 1
    }

    /// Applies one command as the next index. On error nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> FsResult<Outcome> {
        self.apply_at(self.next_index(), cmd)
    }

    /// Applies the command with log index `index`, which must come after every
    /// index applied before; the index is used up whether or not the command
    /// succeeds. On error nothing changed.
    pub fn apply_at(&mut self, index: u64, cmd: &Command) -> FsResult<Outcome> {
        if index <= self.last_index {
            return Err(FsError::Store(format!(
                "command index {index} not after {}",
                self.last_index
            )));
        }
        self.last_index = index;
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(Durability::None)?;
        if let Some(req) = &cmd.request {
            if let Some(rec) = dedupe::recorded(&txn, req)? {
                txn.abort()?;
                return replayed(&rec, cmd.op.tag());
            }
        }
        let mut deletes = Vec::new();
        let result = {
            let mut tx = Tx::open(&txn)?;
            Exec {
                store: &self.store,
                tx: &mut tx,
                now: cmd.now,
                deletes: &mut deletes,
            }
            .run(&cmd.op)
        };
        match result {
            Ok(outcome) => {
                if let Some(req) = &cmd.request {
                    let rec = RecordedOutcome::from_result(cmd.op.tag(), &Ok(outcome.clone()));
                    dedupe::record(&txn, req, &rec)?;
                }
                record_index(&txn, index)?;
                txn.commit()?;
                self.dirty = true;
                self.pending_deletes.extend(deletes);
                Ok(outcome)
            }
            Err(e) => {
                txn.abort()?;
                if let (Some(req), true) = (&cmd.request, e.is_answer()) {
                    self.record_failure(index, req, cmd.op.tag(), e.errno())?;
                }
                Err(e)
            }
        }
    }

    /// Replays a command known to have failed when it was first applied
    /// (`errno`: its answer, `None` for a fault of the brick), without running
    /// it again: its failure is recorded as it was then.
    pub fn replay_failed(&mut self, index: u64, cmd: &Command, errno: Option<i32>) -> FsResult<()> {
        if index <= self.last_index {
            return Err(FsError::Store(format!(
                "command index {index} not after {}",
                self.last_index
            )));
        }
        self.last_index = index;
        let (Some(req), Some(errno)) = (&cmd.request, errno) else {
            return Ok(());
        };
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(Durability::None)?;
        // A repeat of a recorded request failed by answering with the record
        // (or EINVAL for a reused seq) and recorded nothing new.
        if dedupe::recorded(&txn, req)?.is_some() {
            txn.abort()?;
            return Ok(());
        }
        dedupe::record(
            &txn,
            req,
            &RecordedOutcome::from_result(cmd.op.tag(), &Err(errno)),
        )?;
        record_index(&txn, index)?;
        txn.commit()?;
        self.dirty = true;
        Ok(())
    }

    fn record_failure(
        &mut self,
        index: u64,
        req: &crate::ops::RequestId,
        tag: u32,
        errno: i32,
    ) -> FsResult<()> {
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(Durability::None)?;
        dedupe::record(&txn, req, &RecordedOutcome::from_result(tag, &Err(errno)))?;
        record_index(&txn, index)?;
        txn.commit()?;
        self.dirty = true;
        Ok(())
    }

    /// Makes all applied changes durable, then deletes the objects of
    /// reclaimed inodes (safe now: no crash can bring those inodes back).
    pub fn make_durable(&mut self) -> FsResult<()> {
        self.durable(true)
    }

    /// As `make_durable`, with the cheaper commit a client's fsync waits for.
    pub fn make_durable_fast(&mut self) -> FsResult<()> {
        self.durable(false)
    }

    fn durable(&mut self, quick_repair: bool) -> FsResult<()> {
        self.store.make_durable(quick_repair, self.last_index)?;
        self.dirty = false;
        for id in std::mem::take(&mut self.pending_deletes) {
            if let Err(e) = self.store.remove_object(id) {
                tracing::warn!("removing object of {id}: {e}");
            }
        }
        Ok(())
    }

    /// Start-up recovery, once the journal has been replayed and the store
    /// made durable: no handle survives a restart, so every orphan is
    /// reclaimed; object files without an inode (left by a crash before a
    /// pending delete, or by a create whose journal entry a power loss took)
    /// are removed.
    pub fn recover(&mut self, now: Time) -> FsResult<()> {
        for id in self.store.orphans()? {
            self.apply(&Command {
                request: None,
                now,
                op: Operation::Reclaim { id },
            })?;
        }
        self.make_durable()?;
        self.sweep_strays()
    }

    /// Removes object files that no inode names (left by a crash before a
    /// pending delete, or by a create the store lost). Only safe once the
    /// commands a restart re-applies can recreate what they need: each
    /// recreates its inode and rewrites its object's bytes at fixed offsets.
    pub fn sweep_strays(&mut self) -> FsResult<()> {
        for shard in std::fs::read_dir(self.store.objects_dir())? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for obj in std::fs::read_dir(shard.path())? {
                let obj = obj?;
                let name = obj.file_name();
                let Some(id) = name.to_str().and_then(|s| u128::from_str_radix(s, 16).ok()) else {
                    continue;
                };
                if !self.store.exists(FileId(id))? {
                    tracing::info!("removing stray object {}", FileId(id));
                    self.store.remove_object_at(FileId(id), &obj.path())?;
                }
            }
        }
        Ok(())
    }
}

/// Records, in a command's transaction, that the store now reflects `index`.
fn record_index(txn: &WriteTransaction, index: u64) -> FsResult<()> {
    txn.open_table(META)?.insert(META_APPLIED_INDEX, index)?;
    Ok(())
}

fn replayed(rec: &RecordedOutcome, tag: u32) -> FsResult<Outcome> {
    if rec.op_tag != tag {
        // The client reused a seq for a different operation.
        return Err(FsError::Os(libc::EINVAL));
    }
    match rec.to_result() {
        Some(Ok(o)) => Ok(o),
        Some(Err(errno)) => Err(FsError::Os(errno)),
        None => Err(FsError::Store("undecodable dedupe record".into())),
    }
}

/// The tables one command works on, open in its transaction.
struct Tx<'t> {
    inodes: Table<'t, u128, &'static [u8]>,
    dirents: Table<'t, (u128, &'static [u8]), &'static [u8]>,
    order: Table<'t, (u128, u64), &'static [u8]>,
    xattrs: Table<'t, (u128, &'static [u8]), &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    orphans: Table<'t, u128, ()>,
    pvs: Table<'t, u64, &'static [u8]>,
    pv_names: Table<'t, &'static str, u64>,
    extents: Table<'t, (u128, u64), u64>,
}

impl<'t> Tx<'t> {
    fn open(txn: &'t WriteTransaction) -> FsResult<Self> {
        Ok(Tx {
            inodes: txn.open_table(INODES)?,
            dirents: txn.open_table(DIRENTS)?,
            order: txn.open_table(DIR_ORDER)?,
            xattrs: txn.open_table(XATTRS)?,
            meta: txn.open_table(META)?,
            orphans: txn.open_table(ORPHANS)?,
            pvs: txn.open_table(PVS)?,
            pv_names: txn.open_table(PV_NAMES)?,
            extents: txn.open_table(EXTENTS)?,
        })
    }

    fn try_inode(&self, id: FileId) -> FsResult<Option<InodeRecord>> {
        get_inode(&self.inodes, id)
    }

    /// The inode of `id`; ESTALE if it does not exist.
    fn inode(&self, id: FileId) -> FsResult<InodeRecord> {
        self.try_inode(id)?.ok_or(FsError::Os(libc::ESTALE))
    }

    /// The inode of a directory; ENOTDIR if `id` is something else.
    fn dir(&self, id: FileId) -> FsResult<InodeRecord> {
        let rec = self.inode(id)?;
        if !rec.is_dir() {
            return Err(FsError::Os(libc::ENOTDIR));
        }
        Ok(rec)
    }

    /// A directory new entries may go into: ENOENT once it was removed (it may
    /// live on as an orphan while a client holds it open).
    fn live_dir(&self, id: FileId) -> FsResult<InodeRecord> {
        let rec = self.dir(id)?;
        if rec.nlink == 0 {
            return Err(FsError::Os(libc::ENOENT));
        }
        Ok(rec)
    }

    fn put(&mut self, id: FileId, rec: &InodeRecord) -> FsResult<()> {
        self.inodes.insert(id.0, rec.encode_vec().as_slice())?;
        Ok(())
    }

    fn entry(&self, parent: FileId, name: &[u8]) -> FsResult<Option<Dirent>> {
        get_dirent(&self.dirents, parent, name)
    }

    /// Names `child` in `parent` with the directory's next cursor.
    fn link_entry(
        &mut self,
        parent: FileId,
        dir: &mut InodeRecord,
        name: &[u8],
        child: FileId,
        kind: FileKind,
    ) -> FsResult<()> {
        let cursor = dir.next_cursor.max(crate::records::FIRST_CURSOR);
        dir.next_cursor = cursor + 1;
        let d = Dirent {
            child,
            cursor,
            kind,
        };
        self.dirents
            .insert((parent.0, name), d.encode().as_slice())?;
        self.order.insert((parent.0, cursor), name)?;
        Ok(())
    }

    /// Re-points an existing entry, keeping its cursor (RENAME_EXCHANGE).
    fn repoint_entry(
        &mut self,
        parent: FileId,
        name: &[u8],
        old: &Dirent,
        child: FileId,
        kind: FileKind,
    ) -> FsResult<()> {
        let d = Dirent {
            child,
            cursor: old.cursor,
            kind,
        };
        self.dirents
            .insert((parent.0, name), d.encode().as_slice())?;
        Ok(())
    }

    fn unlink_entry(&mut self, parent: FileId, name: &[u8], d: &Dirent) -> FsResult<()> {
        self.dirents.remove((parent.0, name))?;
        self.order.remove((parent.0, d.cursor))?;
        Ok(())
    }

    fn is_empty_dir(&self, id: FileId) -> FsResult<bool> {
        Ok(self
            .order
            .range((id.0, 0)..=(id.0, u64::MAX))?
            .next()
            .is_none())
    }

    /// Removes an inode with its xattrs and orphan mark (not its object).
    fn delete_inode(&mut self, id: FileId) -> FsResult<()> {
        self.inodes.remove(id.0)?;
        self.orphans.remove(id.0)?;
        let next = id.0.checked_add(1);
        match next {
            Some(n) => self
                .xattrs
                .retain_in((id.0, &b""[..])..(n, &b""[..]), |_, _| false)?,
            None => self.xattrs.retain_in((id.0, &b""[..]).., |_, _| false)?,
        }
        Ok(())
    }

    /// Keeps the recorded next inode number above every id in use.
    fn note_new_id(&mut self, id: FileId) -> FsResult<()> {
        let next = self
            .meta
            .get(META_NEXT_INO)?
            .map(|v| v.value())
            .unwrap_or(0);
        if id.ino() >= next {
            self.meta
                .insert(META_NEXT_INO, id.ino().saturating_add(1))?;
        }
        Ok(())
    }

    /// Whether `a` is `b` or one of its ancestors (`b` a directory).
    fn is_ancestor_or_self(&self, a: FileId, b: FileId) -> FsResult<bool> {
        let mut cur = b;
        for _ in 0..MAX_DEPTH {
            if cur == a {
                return Ok(true);
            }
            if cur == ROOT_ID {
                return Ok(false);
            }
            cur = self.inode(cur)?.parent();
        }
        Err(FsError::Store("directory chain too deep or cyclic".into()))
    }

    /// (count of names, bytes of names+values, bytes of the name list) of `id`'s xattrs, leaving out `skip`.
    fn xattr_usage(&self, id: FileId, skip: &[u8]) -> FsResult<(usize, usize)> {
        let mut total = 0;
        let mut list = 0;
        for item in self.xattrs.range((id.0, &b""[..])..)? {
            let (k, v) = item?;
            let (owner, name) = k.value();
            if owner != id.0 {
                break;
            }
            if name == skip {
                continue;
            }
            total += name.len() + v.value().len();
            list += name.len() + 1;
        }
        Ok((total, list))
    }
}

/// New entries in a set-group-id directory take its group; new
/// subdirectories inherit the bit.
fn inherit_group(dir: &InodeRecord, gid: u32, perm: u32, is_dir: bool) -> (u32, u32) {
    if dir.perm & libc::S_ISGID != 0 {
        (dir.gid, if is_dir { perm | libc::S_ISGID } else { perm })
    } else {
        (gid, perm)
    }
}

/// One command being executed inside its transaction.
struct Exec<'a, 't> {
    store: &'a Store,
    tx: &'a mut Tx<'t>,
    now: Time,
    deletes: &'a mut Vec<FileId>,
}

impl Exec<'_, '_> {
    fn run(&mut self, op: &Operation) -> FsResult<Outcome> {
        match op {
            Operation::Create {
                parent,
                name,
                id,
                mode,
                uid,
                gid,
                exclusive,
                truncate,
            } => self.create(*parent, name, *id, *mode, *uid, *gid, *exclusive, *truncate),
            Operation::Mknod {
                parent,
                name,
                id,
                mode,
                rdev,
                uid,
                gid,
            } => self.mknod(*parent, name, *id, *mode, *rdev, *uid, *gid),
            Operation::Mkdir {
                parent,
                name,
                id,
                mode,
                uid,
                gid,
            } => self.mkdir(*parent, name, *id, *mode, *uid, *gid),
            Operation::Symlink {
                parent,
                name,
                id,
                target,
                uid,
                gid,
            } => self.symlink(*parent, name, *id, target, *uid, *gid),
            Operation::Link {
                id,
                new_parent,
                new_name,
            } => self.link(*id, *new_parent, new_name),
            Operation::Unlink { parent, name } => self.unlink(*parent, name),
            Operation::Rmdir { parent, name } => self.rmdir(*parent, name),
            Operation::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                source,
            } => self.rename(*parent, name, *new_parent, new_name, *flags, *source),
            Operation::SetAttr {
                id,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            } => self.setattr(*id, *mode, *uid, *gid, *size, *atime, *mtime),
            Operation::Truncate { id } => self.truncate(*id),
            Operation::Write {
                id,
                offset,
                data,
                append,
            } => self.write(*id, *offset, data, *append),
            Operation::Fallocate {
                id,
                offset,
                length,
                mode,
            } => self.fallocate(*id, *offset, *length, *mode),
            Operation::CopyFileRange {
                id_in,
                offset_in,
                id_out,
                offset_out,
                length,
            } => self.copy_file_range(*id_in, *offset_in, *id_out, *offset_out, *length),
            Operation::SetXattr {
                id,
                name,
                value,
                flags,
            } => self.setxattr(*id, name, value, *flags),
            Operation::RemoveXattr { id, name } => self.removexattr(*id, name),
            Operation::Reclaim { id } => self.reclaim(*id),
            Operation::CreatePv {
                name,
                id,
                byte_limit,
                inode_limit,
            } => self.create_pv(name, *id, *byte_limit, *inode_limit),
            Operation::ExpandPv {
                name,
                byte_limit,
                inode_limit,
            } => self.expand_pv(name, *byte_limit, *inode_limit),
            Operation::DeletePv { name, policy } => self.delete_pv(name, *policy),
            Operation::RecountPv { name } => self.recount_pv(name),
        }
    }

    fn attr(&self, id: FileId, rec: &InodeRecord) -> kadalu_proto::brick::Attr {
        self.store.attr(id, rec)
    }

    /// If `name` in `parent` already names `id`, the creating command was
    /// applied before: answer as it did.
    fn already_created(
        &self,
        parent: FileId,
        name: &[u8],
        id: FileId,
    ) -> FsResult<Option<Outcome>> {
        match self.tx.entry(parent, name)? {
            Some(d) if d.child == id => {
                let rec = self.tx.inode(id)?;
                Ok(Some(Outcome::Attr(self.attr(id, &rec))))
            }
            Some(_) => Err(FsError::Os(libc::EEXIST)),
            None => Ok(None),
        }
    }

    /// Links a fresh inode under a name: the common end of every creation.
    fn add_new(
        &mut self,
        parent: FileId,
        dir: &mut InodeRecord,
        name: &[u8],
        id: FileId,
        rec: &InodeRecord,
    ) -> FsResult<()> {
        if self.tx.try_inode(id)?.is_some() {
            // Ids are never reused; a collision is a leader fault, not a user error.
            return Err(FsError::Store(format!("new id {id} already in use")));
        }
        let mut rec = rec.clone();
        rec.pv = dir.pv;
        self.charge_inode(rec.pv)?;
        let rec = &rec;
        self.tx.put(id, rec)?;
        self.tx.note_new_id(id)?;
        self.tx.link_entry(parent, dir, name, id, rec.file_kind())?;
        dir.touch_modified(self.now);
        self.tx.put(parent, dir)
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        parent: FileId,
        name: &[u8],
        id: FileId,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        truncate: bool,
    ) -> FsResult<Outcome> {
        let name = entry_name(name, NameUse::CreateFile)?;
        let mut dir = self.tx.live_dir(parent)?;
        if let Some(d) = self.tx.entry(parent, name)? {
            if d.child == id {
                let rec = self.tx.inode(id)?;
                return Ok(Outcome::Created {
                    attr: self.attr(id, &rec),
                    created: true,
                });
            }
            if exclusive {
                return Err(FsError::Os(libc::EEXIST));
            }
            match d.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(FsError::Os(libc::EISDIR)),
                _ => return Err(FsError::Os(libc::EEXIST)),
            }
            let mut rec = self.tx.inode(d.child)?;
            if truncate {
                self.release_blocks(d.child, &rec, (0, u64::MAX))?;
                self.store.open_object_write(d.child)?.set_len(0)?;
                rec.touch_modified(self.now);
                self.tx.put(d.child, &rec)?;
            }
            return Ok(Outcome::Created {
                attr: self.attr(d.child, &rec),
                created: false,
            });
        }
        let (gid, perm) = inherit_group(&dir, gid, mode & 0o7777, false);
        let rec = InodeRecord::new(FileKind::Regular, perm, uid, gid, self.now);
        // No object file yet: a missing object reads as empty and the first
        // change of the data creates it, so an empty file costs no file
        // creation on the brick. Ids are never reused and stray objects are
        // swept at start, so no old object can be waiting under this id.
        self.add_new(parent, &mut dir, name, id, &rec)?;
        Ok(Outcome::Created {
            attr: self.attr(id, &rec),
            created: true,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn mknod(
        &mut self,
        parent: FileId,
        name: &[u8],
        id: FileId,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> FsResult<Outcome> {
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => FileKind::Regular,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFDIR => return Err(FsError::Os(libc::EPERM)),
            _ => return Err(FsError::Os(libc::EINVAL)),
        };
        let name = entry_name(name, NameUse::MakeEntry)?;
        let mut dir = self.tx.live_dir(parent)?;
        if let Some(done) = self.already_created(parent, name, id)? {
            return Ok(done);
        }
        let (gid, perm) = inherit_group(&dir, gid, mode & 0o7777, false);
        let mut rec = InodeRecord::new(kind, perm, uid, gid, self.now);
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            rec.rdev = rdev;
        }
        // A regular file's object is created lazily, as in `create`.
        self.add_new(parent, &mut dir, name, id, &rec)?;
        Ok(Outcome::Attr(self.attr(id, &rec)))
    }

    fn mkdir(
        &mut self,
        parent: FileId,
        name: &[u8],
        id: FileId,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Outcome> {
        let name = entry_name(name, NameUse::MakeEntry)?;
        let mut dir = self.tx.live_dir(parent)?;
        if let Some(done) = self.already_created(parent, name, id)? {
            return Ok(done);
        }
        if dir.nlink >= u32::MAX - 1 {
            return Err(FsError::Os(libc::EMLINK));
        }
        // mkdir(2) ignores set-id bits in the mode; S_ISGID comes from the parent.
        let (gid, perm) = inherit_group(&dir, gid, mode & 0o1777, true);
        let mut rec = InodeRecord::new(FileKind::Directory, perm, uid, gid, self.now);
        rec.nlink = 2;
        rec.set_parent(parent);
        dir.nlink += 1;
        self.add_new(parent, &mut dir, name, id, &rec)?;
        Ok(Outcome::Attr(self.attr(id, &rec)))
    }

    fn symlink(
        &mut self,
        parent: FileId,
        name: &[u8],
        id: FileId,
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Outcome> {
        check_symlink_target(target)?;
        let name = entry_name(name, NameUse::MakeEntry)?;
        let mut dir = self.tx.live_dir(parent)?;
        if let Some(done) = self.already_created(parent, name, id)? {
            return Ok(done);
        }
        let (gid, _) = inherit_group(&dir, gid, 0, false);
        let mut rec = InodeRecord::new(FileKind::Symlink, 0o777, uid, gid, self.now);
        rec.target = target.to_vec();
        self.add_new(parent, &mut dir, name, id, &rec)?;
        Ok(Outcome::Attr(self.attr(id, &rec)))
    }

    fn link(&mut self, id: FileId, new_parent: FileId, new_name: &[u8]) -> FsResult<Outcome> {
        let mut rec = self.tx.inode(id)?;
        let name = entry_name(new_name, NameUse::MakeEntry)?;
        let mut dir = self.tx.live_dir(new_parent)?;
        if let Some(done) = self.already_created(new_parent, name, id)? {
            return Ok(done);
        }
        if rec.is_dir() {
            return Err(FsError::Os(libc::EPERM));
        }
        if rec.pv != dir.pv {
            return Err(FsError::Os(libc::EXDEV));
        }
        if rec.nlink == 0 {
            return Err(FsError::Os(libc::ENOENT));
        }
        if rec.nlink >= MAX_LINKS {
            return Err(FsError::Os(libc::EMLINK));
        }
        rec.nlink += 1;
        rec.ctime = self.now;
        self.tx.put(id, &rec)?;
        self.tx
            .link_entry(new_parent, &mut dir, name, id, rec.file_kind())?;
        dir.touch_modified(self.now);
        self.tx.put(new_parent, &dir)?;
        Ok(Outcome::Attr(self.attr(id, &rec)))
    }

    /// Drops one name of a non-directory; marks it an orphan when it was the last.
    fn drop_link(&mut self, id: FileId, rec: &mut InodeRecord) -> FsResult<Option<FileId>> {
        rec.nlink = rec.nlink.saturating_sub(1);
        rec.ctime = self.now;
        self.tx.put(id, rec)?;
        if rec.nlink == 0 {
            self.tx.orphans.insert(id.0, ())?;
            return Ok(Some(id));
        }
        Ok(None)
    }

    fn unlink(&mut self, parent: FileId, name: &[u8]) -> FsResult<Outcome> {
        let name = entry_name(name, NameUse::Unlink)?;
        let mut dir = self.tx.dir(parent)?;
        let d = self
            .tx
            .entry(parent, name)?
            .ok_or(FsError::Os(libc::ENOENT))?;
        if d.kind == FileKind::Directory {
            return Err(FsError::Os(libc::EISDIR));
        }
        let mut rec = self.tx.inode(d.child)?;
        self.tx.unlink_entry(parent, name, &d)?;
        let orphan = self.drop_link(d.child, &mut rec)?;
        dir.touch_modified(self.now);
        self.tx.put(parent, &dir)?;
        Ok(Outcome::Removed { orphan })
    }

    /// A removed directory stays, empty and with nlink 0, as an orphan until
    /// no handle holds it (fstat of an open, removed directory works on Linux).
    fn kill_dir(&mut self, id: FileId) -> FsResult<FileId> {
        let mut rec = self.tx.inode(id)?;
        rec.nlink = 0;
        rec.ctime = self.now;
        self.tx.put(id, &rec)?;
        self.tx.orphans.insert(id.0, ())?;
        Ok(id)
    }

    fn rmdir(&mut self, parent: FileId, name: &[u8]) -> FsResult<Outcome> {
        let name = entry_name(name, NameUse::Rmdir)?;
        let mut dir = self.tx.dir(parent)?;
        let d = self
            .tx
            .entry(parent, name)?
            .ok_or(FsError::Os(libc::ENOENT))?;
        if d.kind != FileKind::Directory {
            return Err(FsError::Os(libc::ENOTDIR));
        }
        if is_pv_root(d.child, &self.tx.inode(d.child)?) {
            // Only DeletePv removes a PV's directory.
            return Err(FsError::Os(libc::EBUSY));
        }
        if !self.tx.is_empty_dir(d.child)? {
            return Err(FsError::Os(libc::ENOTEMPTY));
        }
        self.tx.unlink_entry(parent, name, &d)?;
        let orphan = self.kill_dir(d.child)?;
        dir.nlink = dir.nlink.saturating_sub(1);
        dir.touch_modified(self.now);
        self.tx.put(parent, &dir)?;
        Ok(Outcome::Removed {
            orphan: Some(orphan),
        })
    }

    fn rename(
        &mut self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: u32,
        source: Option<FileId>,
    ) -> FsResult<Outcome> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(FsError::Os(libc::EINVAL));
        }
        let exchange = flags & RENAME_EXCHANGE != 0;
        let noreplace = flags & RENAME_NOREPLACE != 0;
        let name = entry_name(name, NameUse::RenameFrom)?;
        let new_name = entry_name(new_name, NameUse::RenameTo { noreplace })?;
        self.tx.dir(parent)?;
        self.tx.live_dir(new_parent)?;
        let dst = self.tx.entry(new_parent, new_name)?;
        let Some(src) = self.tx.entry(parent, name)? else {
            if let (Some(s), Some(d), false) = (source, dst, exchange) {
                if d.child == s {
                    return Ok(Outcome::Removed { orphan: None });
                }
            }
            return Err(FsError::Os(libc::ENOENT));
        };
        if noreplace && dst.is_some() {
            return Err(FsError::Os(libc::EEXIST));
        }
        if exchange && dst.is_none() {
            return Err(FsError::Os(libc::ENOENT));
        }
        self.check_rename_pvs(
            parent,
            new_parent,
            src.child,
            dst.map(|d| d.child),
            exchange,
        )?;
        let src_is_dir = src.kind == FileKind::Directory;
        if src_is_dir && self.tx.is_ancestor_or_self(src.child, new_parent)? {
            return Err(FsError::Os(libc::EINVAL));
        }
        if let Some(d) = dst {
            if d.kind == FileKind::Directory && self.tx.is_ancestor_or_self(d.child, parent)? {
                return Err(FsError::Os(if exchange {
                    libc::EINVAL
                } else {
                    libc::ENOTEMPTY
                }));
            }
            if d.child == src.child {
                // Both names are links to one inode (or the same entry): rename does nothing.
                return Ok(Outcome::Removed { orphan: None });
            }
        }
        // Records touched, written back once at the end (parents may coincide).
        let mut recs: BTreeMap<FileId, InodeRecord> = BTreeMap::new();
        for id in [parent, new_parent, src.child]
            .into_iter()
            .chain(dst.map(|d| d.child))
        {
            if let std::collections::btree_map::Entry::Vacant(e) = recs.entry(id) {
                e.insert(self.tx.inode(id)?);
            }
        }
        let now = self.now;
        let rec = |recs: &mut BTreeMap<FileId, InodeRecord>, id: FileId| -> FsResult<InodeRecord> {
            recs.get(&id)
                .cloned()
                .ok_or(FsError::Store("rename record missing".into()))
        };
        let mut orphan = None;
        if exchange {
            let d = dst.ok_or(FsError::Os(libc::ENOENT))?;
            let dst_is_dir = d.kind == FileKind::Directory;
            self.tx.repoint_entry(parent, name, &src, d.child, d.kind)?;
            self.tx
                .repoint_entry(new_parent, new_name, &d, src.child, src.kind)?;
            if parent != new_parent && src_is_dir != dst_is_dir {
                let (gains, loses) = if src_is_dir {
                    (new_parent, parent)
                } else {
                    (parent, new_parent)
                };
                let mut g = rec(&mut recs, gains)?;
                g.nlink += 1;
                recs.insert(gains, g);
                let mut l = rec(&mut recs, loses)?;
                l.nlink = l.nlink.saturating_sub(1);
                recs.insert(loses, l);
            }
            let mut s = rec(&mut recs, src.child)?;
            if src_is_dir {
                s.set_parent(new_parent);
            }
            s.ctime = now;
            recs.insert(src.child, s);
            let mut t = rec(&mut recs, d.child)?;
            if dst_is_dir {
                t.set_parent(parent);
            }
            t.ctime = now;
            recs.insert(d.child, t);
        } else {
            if let Some(d) = dst {
                let dst_is_dir = d.kind == FileKind::Directory;
                match (src_is_dir, dst_is_dir) {
                    (true, false) => return Err(FsError::Os(libc::ENOTDIR)),
                    (false, true) => return Err(FsError::Os(libc::EISDIR)),
                    _ => {}
                }
                if dst_is_dir && !self.tx.is_empty_dir(d.child)? {
                    return Err(FsError::Os(libc::ENOTEMPTY));
                }
                self.tx.unlink_entry(new_parent, new_name, &d)?;
                if dst_is_dir {
                    let mut np = rec(&mut recs, new_parent)?;
                    np.nlink = np.nlink.saturating_sub(1);
                    recs.insert(new_parent, np);
                    let mut t = rec(&mut recs, d.child)?;
                    t.nlink = 0;
                    t.ctime = now;
                    recs.insert(d.child, t);
                    orphan = Some(d.child);
                } else {
                    let mut t = rec(&mut recs, d.child)?;
                    t.nlink = t.nlink.saturating_sub(1);
                    t.ctime = now;
                    if t.nlink == 0 {
                        orphan = Some(d.child);
                    }
                    recs.insert(d.child, t);
                }
            }
            self.tx.unlink_entry(parent, name, &src)?;
            let mut np = rec(&mut recs, new_parent)?;
            self.tx
                .link_entry(new_parent, &mut np, new_name, src.child, src.kind)?;
            recs.insert(new_parent, np);
            let mut s = rec(&mut recs, src.child)?;
            if src_is_dir && parent != new_parent {
                s.set_parent(new_parent);
                let mut op = rec(&mut recs, parent)?;
                op.nlink = op.nlink.saturating_sub(1);
                recs.insert(parent, op);
                let mut np = rec(&mut recs, new_parent)?;
                np.nlink += 1;
                recs.insert(new_parent, np);
            }
            s.ctime = now;
            recs.insert(src.child, s);
        }
        for p in [parent, new_parent] {
            let mut r = rec(&mut recs, p)?;
            r.touch_modified(now);
            recs.insert(p, r);
        }
        for (id, r) in &recs {
            self.tx.put(*id, r)?;
        }
        if let Some(id) = orphan {
            self.tx.orphans.insert(id.0, ())?;
        }
        Ok(Outcome::Removed { orphan })
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        id: FileId,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Time>,
        mtime: Option<Time>,
    ) -> FsResult<Outcome> {
        let mut rec = self.tx.inode(id)?;
        if let Some(size) = size {
            regular_or_errno(&rec, libc::EINVAL)?;
            if size > i64::MAX as u64 {
                return Err(FsError::Os(libc::EINVAL));
            }
        }
        if let Some(m) = mode {
            rec.perm = m & 0o7777;
        }
        if uid.is_some() || gid.is_some() {
            rec.uid = uid.unwrap_or(rec.uid);
            rec.gid = gid.unwrap_or(rec.gid);
            // chown(2) of a non-directory drops set-user-id, and set-group-id
            // when group execute is set, unless the same call sets the mode.
            if !rec.is_dir() && mode.is_none() {
                rec.perm &= !libc::S_ISUID;
                if rec.perm & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
                    rec.perm &= !libc::S_ISGID;
                }
            }
        }
        if let Some(t) = atime {
            rec.atime = t;
        }
        if let Some(t) = mtime {
            rec.mtime = t;
        }
        if let Some(size) = size {
            self.release_blocks(id, &rec, (quota::first_block_past(size), u64::MAX))?;
            self.store.open_object_write(id)?.set_len(size)?;
            if mtime.is_none() {
                rec.mtime = self.now;
            }
        }
        rec.ctime = self.now;
        self.tx.put(id, &rec)?;
        Ok(Outcome::Attr(self.attr(id, &rec)))
    }

    fn truncate(&mut self, id: FileId) -> FsResult<Outcome> {
        let mut rec = self.tx.inode(id)?;
        regular_or_errno(&rec, libc::EINVAL)?;
        self.release_blocks(id, &rec, (0, u64::MAX))?;
        self.store.open_object_write(id)?.set_len(0)?;
        rec.touch_modified(self.now);
        self.tx.put(id, &rec)?;
        Ok(Outcome::Attr(self.attr(id, &rec)))
    }

    fn write(&mut self, id: FileId, offset: u64, data: &[u8], append: bool) -> FsResult<Outcome> {
        if data.len() > MAX_IO_SIZE {
            return Err(FsError::Os(libc::EINVAL));
        }
        let mut rec = self.tx.inode(id)?;
        regular_or_errno(&rec, libc::EINVAL)?;
        let file = self.store.open_object_write(id)?;
        let offset = if append {
            file.metadata()?.len()
        } else {
            offset
        };
        if offset > i64::MAX as u64 {
            return Err(FsError::Os(libc::EINVAL));
        }
        if offset + data.len() as u64 > i64::MAX as u64 {
            return Err(FsError::Os(libc::EFBIG));
        }
        if !data.is_empty() {
            self.charge_blocks(id, &rec, quota::blocks_touched(offset, data.len() as u64))?;
            file.write_all_at(data, offset)?;
            rec.touch_modified(self.now);
            self.tx.put(id, &rec)?;
        }
        let size = file.metadata()?.len();
        Ok(Outcome::Written {
            written: data.len() as u32,
            size,
        })
    }

    fn fallocate(&mut self, id: FileId, offset: u64, length: u64, mode: i32) -> FsResult<Outcome> {
        let mut rec = self.tx.inode(id)?;
        regular_or_errno(&rec, libc::ENODEV)?;
        if mode & !FALLOC_MODES != 0 {
            return Err(FsError::Os(libc::EOPNOTSUPP));
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            self.release_blocks(id, &rec, quota::blocks_inside(offset, length))?;
        } else {
            // Allocating and zeroing both give the range blocks.
            self.charge_blocks(id, &rec, quota::blocks_touched(offset, length))?;
        }
        let file = self.store.open_object_write(id)?;
        // Out-of-range values turn negative and get the kernel's own EINVAL/EFBIG.
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) };
        if r != 0 {
            return Err(FsError::last_os());
        }
        rec.touch_modified(self.now);
        self.tx.put(id, &rec)?;
        Ok(Outcome::Done)
    }

    fn copy_file_range(
        &mut self,
        id_in: FileId,
        offset_in: u64,
        id_out: FileId,
        offset_out: u64,
        length: u64,
    ) -> FsResult<Outcome> {
        let rin = self.tx.inode(id_in)?;
        regular_or_errno(&rin, libc::EINVAL)?;
        let mut rout = self.tx.inode(id_out)?;
        regular_or_errno(&rout, libc::EINVAL)?;
        let Some(fin) = self.store.open_object_read(id_in)? else {
            return Ok(Outcome::Copied(0));
        };
        if rout.pv != 0 {
            // Charged for what the copy will move, known from the source's
            // size, so that the check comes before any byte lands.
            let size_in = fin.metadata()?.len();
            let expected = length.min(MAX_COPY).min(size_in.saturating_sub(offset_in));
            self.charge_blocks(id_out, &rout, quota::blocks_touched(offset_out, expected))?;
        }
        let fout = self.store.open_object_write(id_out)?;
        let mut off_in = offset_in as i64;
        let mut off_out = offset_out as i64;
        let mut left = length.min(MAX_COPY) as usize;
        let mut copied = 0u64;
        while left > 0 {
            // SAFETY: both descriptors are ours and the offsets are valid locals.
            let n = unsafe {
                libc::copy_file_range(
                    fin.as_raw_fd(),
                    &mut off_in,
                    fout.as_raw_fd(),
                    &mut off_out,
                    left,
                    0,
                )
            };
            if n < 0 {
                if copied > 0 {
                    break;
                }
                return Err(FsError::last_os());
            }
            if n == 0 {
                break;
            }
            copied += n as u64;
            left -= n as usize;
        }
        if copied > 0 {
            rout.touch_modified(self.now);
            self.tx.put(id_out, &rout)?;
        }
        Ok(Outcome::Copied(copied))
    }

    fn setxattr(&mut self, id: FileId, name: &[u8], value: &[u8], flags: i32) -> FsResult<Outcome> {
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(FsError::Os(libc::EINVAL));
        }
        if name.is_empty() || name.len() > MAX_XATTR_NAME {
            return Err(FsError::Os(libc::ERANGE));
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(FsError::Os(libc::E2BIG));
        }
        check_xattr_name(name)?;
        let mut rec = self.tx.inode(id)?;
        let exists = self.tx.xattrs.get((id.0, name))?.is_some();
        if exists && flags & XATTR_CREATE != 0 {
            return Err(FsError::Os(libc::EEXIST));
        }
        if !exists && flags & XATTR_REPLACE != 0 {
            return Err(FsError::Os(libc::ENODATA));
        }
        let (total, list) = self.tx.xattr_usage(id, name)?;
        if total + name.len() + value.len() > MAX_XATTR_TOTAL
            || list + name.len() + 1 > MAX_XATTR_LIST
        {
            return Err(FsError::Os(libc::ENOSPC));
        }
        self.tx.xattrs.insert((id.0, name), value)?;
        rec.ctime = self.now;
        self.tx.put(id, &rec)?;
        Ok(Outcome::Done)
    }

    fn removexattr(&mut self, id: FileId, name: &[u8]) -> FsResult<Outcome> {
        if name.is_empty() || name.len() > MAX_XATTR_NAME {
            return Err(FsError::Os(libc::ERANGE));
        }
        check_xattr_name(name)?;
        let mut rec = self.tx.inode(id)?;
        if self.tx.xattrs.remove((id.0, name))?.is_none() {
            return Err(FsError::Os(libc::ENODATA));
        }
        rec.ctime = self.now;
        self.tx.put(id, &rec)?;
        Ok(Outcome::Done)
    }

    fn reclaim(&mut self, id: FileId) -> FsResult<Outcome> {
        let Some(rec) = self.tx.try_inode(id)? else {
            self.tx.orphans.remove(id.0)?;
            return Ok(Outcome::Done);
        };
        if rec.nlink > 0 || id == ROOT_ID {
            self.tx.orphans.remove(id.0)?;
            return Ok(Outcome::Done);
        }
        self.release_inode(id, &rec)?;
        self.tx.delete_inode(id)?;
        if rec.is_regular() {
            self.deletes.push(id);
        }
        Ok(Outcome::Done)
    }
}

/// Whether `id` is the directory of a PV (its PV number is its own).
fn is_pv_root(id: FileId, rec: &InodeRecord) -> bool {
    rec.pv != 0 && rec.pv == id.ino() && rec.is_dir()
}

/// Quota accounting and the PV operations (`quota.rs`).
impl Exec<'_, '_> {
    /// The registered PV an inode counts against, if any (an archived PV's
    /// files keep their number but count against nothing).
    fn pv_record(&self, pv: u64) -> FsResult<Option<PvRecord>> {
        if pv == 0 {
            return Ok(None);
        }
        quota::get_pv(&self.tx.pvs, pv)
    }

    /// Counts a new inode in PV `pv`; EDQUOT when its inode limit is reached.
    fn charge_inode(&mut self, pv: u64) -> FsResult<()> {
        let Some(mut p) = self.pv_record(pv)? else {
            return Ok(());
        };
        if !quota::inode_fits(p.inodes_used, p.inode_limit) {
            return Err(quota::over_quota());
        }
        p.inodes_used += 1;
        quota::put_pv(&mut self.tx.pvs, pv, &p)
    }

    /// Gives regular file `id` the blocks `range`, counting the ones it did
    /// not hold; EDQUOT (and nothing changed) when they do not fit.
    fn charge_blocks(&mut self, id: FileId, rec: &InodeRecord, range: (u64, u64)) -> FsResult<()> {
        let Some(mut p) = self.pv_record(rec.pv)? else {
            return Ok(());
        };
        let fresh = quota::new_blocks(&self.tx.extents, id, range)?;
        let bytes = fresh.saturating_mul(quota::BLOCK);
        if !quota::bytes_fit(p.bytes_used, p.byte_limit, bytes) {
            return Err(quota::over_quota());
        }
        if fresh == 0 {
            return Ok(());
        }
        quota::add_blocks(&mut self.tx.extents, id, range)?;
        p.bytes_used += bytes;
        quota::put_pv(&mut self.tx.pvs, rec.pv, &p)
    }

    /// Takes the blocks `range` from regular file `id` and uncounts them.
    fn release_blocks(&mut self, id: FileId, rec: &InodeRecord, range: (u64, u64)) -> FsResult<()> {
        if rec.pv == 0 {
            return Ok(());
        }
        let removed = quota::remove_blocks(&mut self.tx.extents, id, range)?;
        if removed == 0 {
            return Ok(());
        }
        if let Some(mut p) = self.pv_record(rec.pv)? {
            p.bytes_used = p.bytes_used.saturating_sub(removed * quota::BLOCK);
            quota::put_pv(&mut self.tx.pvs, rec.pv, &p)?;
        }
        Ok(())
    }

    /// An inode is going away: uncount it and its blocks.
    fn release_inode(&mut self, id: FileId, rec: &InodeRecord) -> FsResult<()> {
        if rec.pv == 0 || is_pv_root(id, rec) {
            return Ok(());
        }
        self.release_blocks(id, rec, (0, u64::MAX))?;
        if let Some(mut p) = self.pv_record(rec.pv)? {
            p.inodes_used = p.inodes_used.saturating_sub(1);
            quota::put_pv(&mut self.tx.pvs, rec.pv, &p)?;
        }
        Ok(())
    }

    /// A rename stays inside one PV (EXDEV otherwise) and never moves or
    /// replaces a PV's own directory (EBUSY).
    fn check_rename_pvs(
        &self,
        parent: FileId,
        new_parent: FileId,
        src: FileId,
        dst: Option<FileId>,
        exchange: bool,
    ) -> FsResult<()> {
        let src_rec = self.tx.inode(src)?;
        if is_pv_root(src, &src_rec) {
            return Err(FsError::Os(libc::EBUSY));
        }
        if src_rec.pv != self.tx.inode(new_parent)?.pv {
            return Err(FsError::Os(libc::EXDEV));
        }
        if let Some(d) = dst {
            let d_rec = self.tx.inode(d)?;
            if is_pv_root(d, &d_rec) {
                return Err(FsError::Os(libc::EBUSY));
            }
            if exchange && d_rec.pv != self.tx.inode(parent)?.pv {
                return Err(FsError::Os(libc::EXDEV));
            }
        }
        Ok(())
    }

    fn pv_by_name(&self, name: &str) -> FsResult<Option<(u64, PvRecord)>> {
        let Some(num) = self.tx.pv_names.get(name)?.map(|v| v.value()) else {
            return Ok(None);
        };
        match quota::get_pv(&self.tx.pvs, num)? {
            Some(p) => Ok(Some((num, p))),
            None => Err(FsError::Store(format!("PV {name} named but not recorded"))),
        }
    }

    fn create_pv(
        &mut self,
        name: &str,
        id: FileId,
        byte_limit: u64,
        inode_limit: u64,
    ) -> FsResult<Outcome> {
        if kadalu_proto::pv_name::validate_pv_name(name).is_err() || byte_limit == 0 {
            return Err(FsError::Os(libc::EINVAL));
        }
        if let Some((_, p)) = self.pv_by_name(name)? {
            if p.byte_limit == byte_limit && p.inode_limit == inode_limit {
                return Ok(Outcome::Done);
            }
            return Err(FsError::Os(libc::EEXIST));
        }
        if self.tx.entry(ROOT_ID, name.as_bytes())?.is_some() {
            // A directory (or file) of that name that is not a PV: never adopt it.
            return Err(FsError::Os(libc::EEXIST));
        }
        if self.tx.try_inode(id)?.is_some() {
            return Err(FsError::Store(format!("new id {id} already in use")));
        }
        let mut root = self.tx.live_dir(ROOT_ID)?;
        // World-writable: the PV belongs to whichever pods mount it, under
        // whatever uid they run as.
        let mut rec = InodeRecord::new(FileKind::Directory, 0o777, 0, 0, self.now);
        rec.nlink = 2;
        rec.set_parent(ROOT_ID);
        rec.pv = id.ino();
        self.tx.put(id, &rec)?;
        self.tx.note_new_id(id)?;
        self.tx
            .link_entry(ROOT_ID, &mut root, name.as_bytes(), id, FileKind::Directory)?;
        root.nlink += 1;
        root.touch_modified(self.now);
        self.tx.put(ROOT_ID, &root)?;
        let p = PvRecord {
            name: name.to_string(),
            dir_hi: id.hi(),
            dir_lo: id.ino(),
            byte_limit,
            inode_limit,
            bytes_used: 0,
            inodes_used: 0,
        };
        quota::put_pv(&mut self.tx.pvs, id.ino(), &p)?;
        self.tx.pv_names.insert(name, id.ino())?;
        Ok(Outcome::Done)
    }

    fn expand_pv(&mut self, name: &str, byte_limit: u64, inode_limit: u64) -> FsResult<Outcome> {
        let (num, mut p) = self.pv_by_name(name)?.ok_or(FsError::Os(libc::ENOENT))?;
        let inode_limit = if inode_limit == 0 {
            p.inode_limit
        } else {
            inode_limit
        };
        let shrinks_inodes = p.inode_limit != 0 && inode_limit < p.inode_limit;
        if byte_limit < p.byte_limit || shrinks_inodes {
            return Err(FsError::Os(libc::EINVAL));
        }
        p.byte_limit = byte_limit;
        p.inode_limit = inode_limit;
        quota::put_pv(&mut self.tx.pvs, num, &p)?;
        Ok(Outcome::Done)
    }

    fn delete_pv(&mut self, name: &str, policy: ReclaimPolicy) -> FsResult<Outcome> {
        let Some((num, p)) = self.pv_by_name(name)? else {
            return Ok(Outcome::PvDeleted {
                existed: false,
                archived_as: String::new(),
            });
        };
        let dir = p.dir();
        let mut archived_as = String::new();
        match policy {
            ReclaimPolicy::Retain => {
                return Ok(Outcome::PvDeleted {
                    existed: true,
                    archived_as,
                })
            }
            ReclaimPolicy::Archive => {
                archived_as = self.archive_name(name)?;
                let d = self
                    .tx
                    .entry(ROOT_ID, name.as_bytes())?
                    .ok_or_else(|| FsError::Store(format!("PV {name} has no directory")))?;
                let mut root = self.tx.dir(ROOT_ID)?;
                self.tx.unlink_entry(ROOT_ID, name.as_bytes(), &d)?;
                self.tx.link_entry(
                    ROOT_ID,
                    &mut root,
                    archived_as.as_bytes(),
                    dir,
                    FileKind::Directory,
                )?;
                root.touch_modified(self.now);
                self.tx.put(ROOT_ID, &root)?;
                // The archive is an ordinary directory from now on: its files
                // keep their PV number, which counts against nothing.
                let mut rec = self.tx.inode(dir)?;
                rec.pv = 0;
                rec.ctime = self.now;
                self.tx.put(dir, &rec)?;
            }
            ReclaimPolicy::Delete => {
                self.remove_tree(dir)?;
                if let Some(d) = self.tx.entry(ROOT_ID, name.as_bytes())? {
                    let mut root = self.tx.dir(ROOT_ID)?;
                    self.tx.unlink_entry(ROOT_ID, name.as_bytes(), &d)?;
                    root.nlink = root.nlink.saturating_sub(1);
                    root.touch_modified(self.now);
                    self.tx.put(ROOT_ID, &root)?;
                }
                self.tx.delete_inode(dir)?;
            }
        }
        self.tx.pvs.remove(num)?;
        self.tx.pv_names.remove(name)?;
        Ok(Outcome::PvDeleted {
            existed: true,
            archived_as,
        })
    }

    /// The first free name of `archived-<name>`, `archived-<name>-1`, ...
    fn archive_name(&self, name: &str) -> FsResult<String> {
        let base = format!("{}{name}", kadalu_proto::pv_name::ARCHIVE_PREFIX);
        for n in 0..u32::MAX {
            let candidate = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            if candidate.len() > kadalu_proto::MAX_NAME_LEN {
                break;
            }
            if self.tx.entry(ROOT_ID, candidate.as_bytes())?.is_none() {
                return Ok(candidate);
            }
        }
        Err(FsError::Os(libc::ENAMETOOLONG))
    }

    /// Removes everything beneath directory `top` (not `top` itself): every
    /// entry, inode, xattr and extent; object files once durable.
    fn remove_tree(&mut self, top: FileId) -> FsResult<()> {
        let mut dirs = vec![top];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(d) = dirs.pop() {
            let entries: Vec<(Vec<u8>, u64)> = self
                .tx
                .order
                .range((d.0, 0)..=(d.0, u64::MAX))?
                .map(|r| r.map(|(k, v)| (v.value().to_vec(), k.value().1)))
                .collect::<Result<_, _>>()?;
            for (name, cursor) in entries {
                if let Some(e) = self.tx.entry(d, &name)? {
                    if e.kind == FileKind::Directory {
                        dirs.push(e.child);
                    }
                    if seen.insert(e.child) {
                        self.drop_whole_inode(e.child)?;
                    }
                }
                self.tx.dirents.remove((d.0, name.as_slice()))?;
                self.tx.order.remove((d.0, cursor))?;
            }
        }
        Ok(())
    }

    fn drop_whole_inode(&mut self, id: FileId) -> FsResult<()> {
        let Some(rec) = self.tx.try_inode(id)? else {
            return Ok(());
        };
        quota::remove_blocks(&mut self.tx.extents, id, (0, u64::MAX))?;
        self.tx.delete_inode(id)?;
        if rec.is_regular() {
            self.deletes.push(id);
        }
        Ok(())
    }

    fn recount_pv(&mut self, name: &str) -> FsResult<Outcome> {
        let targets: Vec<(u64, PvRecord)> = if name.is_empty() {
            self.tx
                .pvs
                .iter()?
                .map(|r| {
                    let (k, v) = r?;
                    Ok((k.value(), <PvRecord as prost::Message>::decode(v.value())?))
                })
                .collect::<FsResult<_>>()?
        } else {
            vec![self.pv_by_name(name)?.ok_or(FsError::Os(libc::ENOENT))?]
        };
        let mut counts: BTreeMap<u64, (u64, u64)> =
            targets.iter().map(|(n, _)| (*n, (0, 0))).collect();
        // Counted from the replicated state (inodes and extents), never from
        // the file system, so every brick finds the same.
        for item in self.tx.inodes.iter()? {
            let (k, v) = item?;
            let rec = InodeRecord::decode_bytes(v.value())?;
            let id = FileId(k.value());
            let Some(c) = counts.get_mut(&rec.pv) else {
                continue;
            };
            if is_pv_root(id, &rec) {
                continue;
            }
            c.1 += 1;
            if rec.is_regular() {
                c.0 += quota::held_blocks(&self.tx.extents, id)? * quota::BLOCK;
            }
        }
        let mut drifts = Vec::new();
        for (num, mut p) in targets {
            let (bytes, inodes) = counts.get(&num).copied().unwrap_or((0, 0));
            drifts.push(kadalu_proto::quota::PvDrift {
                name: p.name.clone(),
                bytes_before: p.bytes_used,
                bytes_after: bytes,
                inodes_before: p.inodes_used,
                inodes_after: inodes,
            });
            if p.bytes_used != bytes || p.inodes_used != inodes {
                p.bytes_used = bytes;
                p.inodes_used = inodes;
                quota::put_pv(&mut self.tx.pvs, num, &p)?;
            }
        }
        Ok(Outcome::Recounted(drifts))
    }
}
