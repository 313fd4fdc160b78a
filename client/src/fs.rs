//! The FUSE file system: fuser's `Filesystem` callbacks, each turned into one
//! brick RPC (or a few) on the tokio runtime.
//!
//! Every callback returns at once after spawning a task that does the RPC and
//! replies, so a slow request (a write to a busy brick, a lock wait, an outage)
//! never holds a FUSE request loop: the other requests keep flowing.

use crate::attr::{self, attr_id, file_attr, required, AttrStamp};
use crate::dir_attrs::DirAttrs;
use crate::dir_cursor;
use crate::error::ClientError;
use crate::inode_map::{InodeMap, ROOT_INO};
use crate::lock_owners::LockOwners;
use crate::locks::{self, CallerSyscall};
use crate::pool::{home_set, join_cursor, set_of, split_cursor, Pool, Routed, Target};
use crate::prefetch::{Prefetches, PREFETCH_BYTES};
use crate::request_seq::Sequencer;
use crate::write_behind::{Limits, Span, Ticket, WriteBehind};
use crate::xattr_cache::XattrCache;
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::brick::{self, time_set, LockRange, LockType};
use kadalu_proto::{FileId, ROOT_ID};
use prost::bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Handle;

/// Generation number of every inode: inode numbers are never reused in a pool.
const GENERATION: Generation = Generation(0);

/// Largest read or write the kernel may send (1 MiB).
const MAX_IO: u32 = kadalu_proto::MAX_IO_SIZE as u32;

/// Largest `copy_file_range` asked of the brick at once: the reply carries a u32,
/// and a short copy is legal, so the caller simply loops.
const MAX_COPY: u64 = 0xffff_f000;

/// Bytes of kernel reply buffer one brick readdir batch is sized for. Larger than
/// the kernel's page-sized requests so that a long listing takes few RPCs; what
/// does not fit waits in the stream's leftover.
const DIR_FETCH_BYTES: u32 = 64 * 1024;

/// Settings of a mount that the callbacks need.
#[derive(Debug, Clone, Copy)]
pub struct FsOptions {
    /// How long the kernel may cache a name → inode entry.
    pub entry_ttl: Duration,
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// Acknowledge writes at once and send them in the background
    /// ([`crate::write_behind`]); off, every write waits for the brick.
    pub write_behind: bool,
}

/// State of one open directory stream.
#[derive(Debug, Default)]
struct DirStream {
    /// The brick's handle of this open. While it is held the brick keeps a
    /// directory removed meanwhile alive (empty, nlink 0), so `fstat` of the
    /// open directory still answers, as on a local file system.
    brick_handle: u64,
    /// Kernel offset after which the brick said nothing follows, so the
    /// end-of-listing readdir needs no RPC.
    eof_after: Option<u64>,
    /// Entries fetched but not yet sent (they did not fit the kernel's buffer).
    leftover: Option<Leftover>,
}

/// Entries fetched for a readdir that did not fit; the next readdir of the stream
/// (which resumes exactly where they start) uses them instead of asking again.
#[derive(Debug)]
struct Leftover {
    /// Kernel offset the next readdir must resume at for these to apply.
    after: u64,
    plus: bool,
    entries: VecDeque<brick::DirEntry>,
    /// The brick said nothing follows the last of them.
    eof: bool,
    fetched: Instant,
}

/// How long fetched-but-unsent entries stay usable. Readdirplus attributes in them
/// age meanwhile, so they are kept only across the quick succession of readdir
/// calls of one listing.
const LEFTOVER_MAX_AGE: Duration = Duration::from_millis(500);

/// Where readdir and readdirplus put entries: fuser's two reply types.
trait DirSink {
    /// Whether entries carry attributes (readdirplus).
    const PLUS: bool;
    /// Adds "." or ".."; true when the buffer is full (entry not added).
    fn add_dot(&mut self, ino: u64, offset: u64, name: &str, ttl: Duration) -> bool;
    /// Adds a brick entry; true when the buffer is full (entry not added).
    fn add_entry(
        &mut self,
        inner: &Inner,
        entry: &brick::DirEntry,
        offset: u64,
    ) -> Result<bool, ClientError>;
}

impl DirSink for ReplyDirectory {
    const PLUS: bool = false;

    fn add_dot(&mut self, ino: u64, offset: u64, name: &str, _ttl: Duration) -> bool {
        self.add(INodeNo(ino), offset, FileType::Directory, name)
    }

    fn add_entry(
        &mut self,
        inner: &Inner,
        e: &brick::DirEntry,
        offset: u64,
    ) -> Result<bool, ClientError> {
        let id = FileId::from_wire(&e.id).map_err(|err| ClientError::BadReply(err.to_string()))?;
        let kind = attr::file_type(e.kind)?;
        Ok(self.add(
            INodeNo(inner.ino_of(id)),
            offset,
            kind,
            OsStr::from_bytes(&e.name),
        ))
    }
}

impl DirSink for ReplyDirectoryPlus {
    const PLUS: bool = true;

    fn add_dot(&mut self, ino: u64, offset: u64, name: &str, ttl: Duration) -> bool {
        self.add(INodeNo(ino), offset, name, &ttl, &dot_attr(ino), GENERATION)
    }

    fn add_entry(
        &mut self,
        inner: &Inner,
        e: &brick::DirEntry,
        offset: u64,
    ) -> Result<bool, ClientError> {
        let a = e
            .attr
            .as_ref()
            .ok_or_else(|| ClientError::BadReply("readdirplus entry without attributes".into()))?;
        // The kernel takes a lookup reference for each entry it receives; take it
        // before the kernel can see the entry (and forget it), give it back if the
        // entry does not fit.
        let entry = inner.new_entry(a)?;
        let ttl = inner.opts.entry_ttl;
        let full = self.add(
            entry.ino,
            offset,
            OsStr::from_bytes(&e.name),
            &ttl,
            &entry,
            GENERATION,
        );
        if full {
            inner.forget(entry.ino.0, 1);
        }
        Ok(full)
    }
}

/// Everything the request tasks share.
struct Inner {
    /// The replica sets; requests go to the one holding what they name.
    pool: Pool,
    seq: Sequencer,
    inodes: Mutex<InodeMap>,
    dirs: Mutex<HashMap<u64, DirStream>>,
    next_dir: AtomicU64,
    /// Files this client ever placed a lock on. Only their `flush` (which releases
    /// the closing process's POSIX locks) needs the brick; for all other files a
    /// close costs no round trip.
    locked: Mutex<HashSet<FileId>>,
    /// Per open handle, the owners that locked through it: the release of the
    /// handle unlocks them (OFD locks, which no flush names).
    lock_owners: Mutex<LockOwners>,
    xattrs: Mutex<XattrCache>,
    /// Directory attributes the brick answered a change of names with.
    dir_attrs: Mutex<DirAttrs>,
    /// First bytes of files, from their opens, for the first read.
    prefetch: Mutex<Prefetches>,
    /// Per inode, the stamp of the attributes last handed to the kernel, so an open
    /// can tell whether the kernel's cached size and times are out of date.
    reported: Mutex<HashMap<u64, AttrStamp>>,
    /// Channel for telling the kernel to drop cached attributes; set once the
    /// session exists.
    notifier: Arc<OnceLock<Notifier>>,
    /// Writes acknowledged to the kernel and not yet finished at the brick.
    /// Everything that must observe a file's data or size settles its inode first.
    writes: Arc<WriteBehind>,
    opts: FsOptions,
}

/// The kadalu FUSE file system.
pub struct KadaluFs {
    inner: Arc<Inner>,
    rt: Handle,
}

fn bytes(s: &OsStr) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation, so a poisoned lock still
    // guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn time_set(t: Option<TimeOrNow>) -> Option<brick::TimeSet> {
    t.map(|t| brick::TimeSet {
        how: Some(match t {
            TimeOrNow::Now => time_set::How::Now(true),
            TimeOrNow::SpecificTime(at) => time_set::How::At(attr::kernel_set_time(at)),
        }),
    })
}

/// Attributes shown for "." and ".." in readdirplus; the kernel ignores them for
/// those two names, but the reply format needs some.
fn dot_attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl KadaluFs {
    /// A file system rooted at `root` (the pool root or a subdirectory), talking to
    /// the replica sets of `pool`, running its request tasks on `rt`.
    pub fn new(pool: Pool, root: FileId, opts: FsOptions, rt: Handle) -> Self {
        crate::inline_task::keep_timers_armed(&rt);
        KadaluFs {
            inner: Arc::new(Inner {
                pool,
                seq: Sequencer::new(),
                inodes: Mutex::new(InodeMap::new(root)),
                dirs: Mutex::new(HashMap::new()),
                next_dir: AtomicU64::new(1),
                locked: Mutex::new(HashSet::new()),
                lock_owners: Mutex::new(LockOwners::new()),
                xattrs: Mutex::new(XattrCache::new(opts.attr_ttl)),
                dir_attrs: Mutex::new(DirAttrs::new(opts.attr_ttl)),
                prefetch: Mutex::new(Prefetches::new()),
                reported: Mutex::new(HashMap::new()),
                notifier: Arc::new(OnceLock::new()),
                writes: Arc::new(WriteBehind::new(Limits::default())),
                opts,
            }),
            rt,
        }
    }

    /// Where the session's notifier goes once the session exists (the file system
    /// is created before the session that owns it).
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.inner.notifier.clone()
    }

    /// The mount's write-behind state, so that shutdown can wait for writes
    /// already acknowledged to reach the brick.
    pub fn write_behind(&self) -> Arc<WriteBehind> {
        self.inner.writes.clone()
    }

    /// Runs a request's task: on this (FUSE) thread until it first waits, so
    /// that its RPC leaves from here, then on the runtime (`inline_task.rs`).
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        crate::inline_task::run(&self.rt, task);
    }
}

fn wire_id(b: &[u8]) -> Result<FileId, ClientError> {
    FileId::from_wire(b).map_err(|e| ClientError::BadReply(e.to_string()))
}

impl Inner {
    /// Sends `msg` to the replica set holding what it names (`pool.rs`).
    async fn call<M, T, F, Fut>(&self, msg: M, attempt: F) -> Result<T, ClientError>
    where
        M: Clone + Routed,
        F: Fn(BrickClient<crate::connection::BrickChannel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let set = match msg.target() {
            Target::Pair(a, b) => {
                let first = self.route(&a).await?;
                // A name that does not exist yet goes where the first is.
                let second = match &*b {
                    Target::Name(parent, name) if self.pool.spreads(wire_id(parent)?) => {
                        self.find_at_root(name).await?.unwrap_or(first)
                    }
                    other => self.route(other).await?,
                };
                if first != second {
                    return Err(ClientError::Fs(libc::EXDEV));
                }
                first
            }
            one => self.route(&one).await?,
        };
        self.pool.set(set).call(msg, attempt).await
    }

    /// The set an id or a name belongs to (a new name under the root: its
    /// home set).
    async fn route(&self, t: &Target<'_>) -> Result<usize, ClientError> {
        let n = self.pool.len();
        match t {
            Target::Id(id) => set_of(wire_id(id)?, n),
            Target::Name(parent, name) => {
                let parent = wire_id(parent)?;
                if !self.pool.spreads(parent) {
                    return set_of(parent, n);
                }
                Ok(self
                    .find_at_root(name)
                    .await?
                    .unwrap_or_else(|| home_set(name, n)))
            }
            Target::Pair(..) => Err(ClientError::Invalid("nested request target")),
        }
    }

    /// The set holding `name` directly under the pool root, asking its home
    /// set first (where it is unless a PV was placed elsewhere).
    async fn find_at_root(&self, name: &[u8]) -> Result<Option<usize>, ClientError> {
        let n = self.pool.len();
        let home = home_set(name, n);
        for k in 0..n {
            let set = (home + k) % n;
            let msg = brick::LookupRequest {
                parent: ROOT_ID.to_wire(),
                name: Bytes::copy_from_slice(name),
            };
            match self
                .pool
                .set(set)
                .call(msg, |mut c, r| async move { c.lookup(r).await })
                .await
            {
                Ok(_) => return Ok(Some(set)),
                Err(e) if e.errno() == libc::ENOENT => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn id(&self, ino: INodeNo) -> Result<FileId, ClientError> {
        lock(&self.inodes)
            .id_of(ino.0)
            .ok_or(ClientError::UnknownInode(ino.0))
    }

    fn ino_of(&self, id: FileId) -> u64 {
        lock(&self.inodes).ino_of(id)
    }

    /// Attributes of a file the kernel already knows (no lookup reference).
    fn known_attr(&self, a: &brick::Attr) -> Result<FileAttr, ClientError> {
        let id = attr_id(a)?;
        let ino = self.ino_of(id);
        let fa = file_attr(a, ino)?;
        lock(&self.reported).insert(ino, AttrStamp::of(a));
        Ok(fa)
    }

    /// Attributes of an entry handed to the kernel: takes one lookup reference.
    fn new_entry(&self, a: &brick::Attr) -> Result<FileAttr, ClientError> {
        let id = attr_id(a)?;
        // Convert first so a malformed reply takes no reference the kernel never gets.
        let probe = file_attr(a, 0)?;
        let ino = lock(&self.inodes).remember(id);
        lock(&self.reported).insert(ino, AttrStamp::of(a));
        Ok(FileAttr {
            ino: INodeNo(ino),
            ..probe
        })
    }

    /// Called with the attributes an open returned: when the file changed since the
    /// kernel last got attributes (another client wrote it), tell the kernel to drop
    /// them, so the reads after this open see the new size. Together with the page
    /// cache drop on every open this is close-to-open consistency.
    fn refresh_if_changed(&self, ino: INodeNo, a: &brick::Attr) {
        let now = AttrStamp::of(a);
        let before = lock(&self.reported).insert(ino.0, now);
        if before != Some(now) {
            if let Some(n) = self.notifier.get() {
                // Offset < 0: attributes only; the open itself drops the pages.
                if let Err(e) = n.inval_inode(ino, -1, 0) {
                    tracing::debug!(ino = ino.0, "attribute invalidation: {e}");
                }
            }
        }
    }

    fn forget(&self, ino: u64, n: u64) {
        let mut inodes = lock(&self.inodes);
        inodes.forget(ino, n);
        if inodes.id_of(ino).is_none() {
            lock(&self.reported).remove(&ino);
            self.writes.forget(ino);
        }
    }

    /// Waits until every write acknowledged on `ino` so far has reached the brick.
    async fn settle(&self, ino: INodeNo) {
        self.writes.settle(ino.0).await;
    }

    /// Settles `ino`, then reports the error of a background write that failed
    /// since the last report (once).
    async fn settle_and_take_error(&self, ino: INodeNo) -> Result<(), ClientError> {
        self.writes.settle(ino.0).await;
        self.take_write_error(ino)
    }

    /// The error of a background write of `ino` that failed since the last
    /// report (once).
    fn take_write_error(&self, ino: INodeNo) -> Result<(), ClientError> {
        match self.writes.take_error(ino.0) {
            Some(errno) => Err(ClientError::Fs(errno)),
            None => Ok(()),
        }
    }

    /// `a`, or when its file has writes in flight (its size may predate writes
    /// the kernel was told are done), the file's attributes fetched again once
    /// they have landed: the kernel must never be handed a size older than what
    /// it already knows.
    async fn settled_attr(&self, a: brick::Attr) -> Result<brick::Attr, ClientError> {
        let id = attr_id(&a)?;
        let ino = self.ino_of(id);
        if !self.writes.busy(ino) {
            return Ok(a);
        }
        self.writes.settle(ino).await;
        let msg = brick::GetAttrRequest { id: id.to_wire() };
        let r = self
            .call(msg, |mut c, r| async move { c.get_attr(r).await })
            .await?;
        required(r.attr)
    }

    /// Sends a write the kernel was already told succeeded, and records how it
    /// ended; a failure is reported by the next write, flush or fsync of the file.
    async fn write_in_background(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: Bytes,
        ticket: Ticket,
    ) {
        let len = data.len();
        let outcome = match self.write(ino, fh, offset, data, false).await {
            Ok(n) if n as usize == len => Ok(()),
            // The kernel was told all of it went; a short write loses data as
            // surely as an error does.
            Ok(n) => {
                tracing::warn!(
                    ino = ino.0,
                    offset,
                    len,
                    written = n,
                    "short background write"
                );
                Err(libc::EIO)
            }
            Err(e) => Err(e.errno()),
        };
        self.writes.finish(ino.0, ticket, outcome);
        if let Err(errno) = outcome {
            tracing::warn!(
                ino = ino.0,
                offset,
                len,
                "background write failed ({}); reported at the file's next write, flush or fsync",
                std::io::Error::from_raw_os_error(errno)
            );
            // The kernel counted this write into the file size; make it ask again.
            if let Some(n) = self.notifier.get() {
                if let Err(e) = n.inval_inode(ino, -1, 0) {
                    tracing::debug!(ino = ino.0, "attribute invalidation: {e}");
                }
            }
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, result: Result<brick::Attr, ClientError>) {
        match result.and_then(|a| self.new_entry(&a)) {
            Ok(attr) => {
                reply.entry_with_ttls(&self.opts.attr_ttl, &self.opts.entry_ttl, &attr, GENERATION)
            }
            Err(e) => reply.error(e.into()),
        }
    }

    async fn lookup(&self, parent: INodeNo, name: Bytes) -> Result<brick::Attr, ClientError> {
        let parent_id = self.id(parent)?;
        if self.pool.spreads(parent_id) {
            return self.lookup_at_root(name).await;
        }
        let msg = brick::LookupRequest {
            parent: parent_id.to_wire(),
            name,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.lookup(r).await })
            .await?;
        self.settled_attr(required(r.attr)?).await
    }

    /// A name under the pool root: the first set that has it, home set first.
    async fn lookup_at_root(&self, name: Bytes) -> Result<brick::Attr, ClientError> {
        let n = self.pool.len();
        let home = home_set(&name, n);
        for k in 0..n {
            let msg = brick::LookupRequest {
                parent: ROOT_ID.to_wire(),
                name: name.clone(),
            };
            match self
                .pool
                .set((home + k) % n)
                .call(msg, |mut c, r| async move { c.lookup(r).await })
                .await
            {
                Ok(r) => return self.settled_attr(required(r.attr)?).await,
                Err(e) if e.errno() == libc::ENOENT => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Fs(libc::ENOENT))
    }

    /// Keeps the attributes a change of names left directory `ino` with.
    fn note_dir(&self, ino: INodeNo, attr: Option<brick::Attr>) {
        if let Some(a) = attr {
            lock(&self.dir_attrs).put(ino.0, a, Instant::now());
        }
    }

    async fn getattr(&self, ino: INodeNo) -> Result<FileAttr, ClientError> {
        self.settle(ino).await;
        let fresh = lock(&self.dir_attrs).take(ino.0, Instant::now());
        if let Some(a) = fresh {
            return self.known_attr(&a);
        }
        let msg = brick::GetAttrRequest {
            id: self.id(ino)?.to_wire(),
        };
        let r = self
            .call(msg, |mut c, r| async move { c.get_attr(r).await })
            .await?;
        self.known_attr(&required(r.attr)?)
    }

    #[allow(clippy::too_many_arguments)]
    async fn setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, ClientError> {
        let id = self.id(ino)?;
        // A truncate must not be overtaken by earlier writes, and the attributes
        // returned must include them.
        self.settle(ino).await;
        lock(&self.dir_attrs).forget(ino.0);
        lock(&self.prefetch).changed(ino.0);
        // Mode and owner changes may change ACLs or drop file capabilities.
        lock(&self.xattrs).invalidate(id);
        let m = self.seq.begin();
        let msg = brick::SetAttrRequest {
            header: m.header(),
            id: id.to_wire(),
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: time_set(atime),
            mtime: time_set(mtime),
            handle: fh.map_or(0, |h| h.0),
        };
        if self.pool.spreads(id) {
            // The root of every set keeps the same mode, owner and times.
            for set in &self.pool.sets()[1..] {
                set.call(msg.clone(), |mut c, r| async move { c.set_attr(r).await })
                    .await?;
            }
        }
        let r = self
            .call(msg, |mut c, r| async move { c.set_attr(r).await })
            .await?;
        self.known_attr(&required(r.attr)?)
    }

    async fn readlink(&self, ino: INodeNo) -> Result<Bytes, ClientError> {
        let msg = brick::ReadlinkRequest {
            id: self.id(ino)?.to_wire(),
        };
        let r = self
            .call(msg, |mut c, r| async move { c.readlink(r).await })
            .await?;
        Ok(r.target)
    }

    async fn mknod(
        &self,
        parent: INodeNo,
        name: Bytes,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Result<brick::Attr, ClientError> {
        let m = self.seq.begin();
        let msg = brick::MknodRequest {
            header: m.header(),
            parent: self.id(parent)?.to_wire(),
            name,
            mode,
            rdev: attr::dev_from_kernel(rdev),
            uid,
            gid,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.mknod(r).await })
            .await?;
        self.note_dir(parent, r.parent);
        required(r.attr)
    }

    async fn mkdir(
        &self,
        parent: INodeNo,
        name: Bytes,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<brick::Attr, ClientError> {
        let m = self.seq.begin();
        let msg = brick::MkdirRequest {
            header: m.header(),
            parent: self.id(parent)?.to_wire(),
            name,
            mode: mode & 0o7777,
            uid,
            gid,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.mkdir(r).await })
            .await?;
        self.note_dir(parent, r.parent);
        required(r.attr)
    }

    async fn unlink(&self, parent: INodeNo, name: Bytes) -> Result<(), ClientError> {
        let m = self.seq.begin();
        let msg = brick::UnlinkRequest {
            header: m.header(),
            parent: self.id(parent)?.to_wire(),
            name,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.unlink(r).await })
            .await?;
        self.note_dir(parent, r.parent);
        Ok(())
    }

    async fn rmdir(&self, parent: INodeNo, name: Bytes) -> Result<(), ClientError> {
        let m = self.seq.begin();
        let msg = brick::RmdirRequest {
            header: m.header(),
            parent: self.id(parent)?.to_wire(),
            name,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.rmdir(r).await })
            .await?;
        lock(&self.dir_attrs).clear();
        self.note_dir(parent, r.parent);
        Ok(())
    }

    async fn symlink(
        &self,
        parent: INodeNo,
        name: Bytes,
        target: Bytes,
        uid: u32,
        gid: u32,
    ) -> Result<brick::Attr, ClientError> {
        let m = self.seq.begin();
        let msg = brick::SymlinkRequest {
            header: m.header(),
            parent: self.id(parent)?.to_wire(),
            name,
            target,
            uid,
            gid,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.symlink(r).await })
            .await?;
        self.note_dir(parent, r.parent);
        required(r.attr)
    }

    async fn rename(
        &self,
        parent: INodeNo,
        name: Bytes,
        new_parent: INodeNo,
        new_name: Bytes,
        flags: u32,
    ) -> Result<(), ClientError> {
        let m = self.seq.begin();
        let msg = brick::RenameRequest {
            header: m.header(),
            parent: self.id(parent)?.to_wire(),
            name,
            new_parent: self.id(new_parent)?.to_wire(),
            new_name,
            flags,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.rename(r).await })
            .await?;
        lock(&self.dir_attrs).clear();
        self.note_dir(parent, r.parent);
        self.note_dir(new_parent, r.new_parent);
        Ok(())
    }

    async fn link(
        &self,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: Bytes,
    ) -> Result<brick::Attr, ClientError> {
        // The reply carries the file's size.
        self.settle(ino).await;
        let m = self.seq.begin();
        let msg = brick::LinkRequest {
            header: m.header(),
            id: self.id(ino)?.to_wire(),
            new_parent: self.id(new_parent)?.to_wire(),
            new_name,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.link(r).await })
            .await?;
        self.note_dir(new_parent, r.parent);
        required(r.attr)
    }

    async fn open(&self, ino: INodeNo, flags: i32) -> Result<u64, ClientError> {
        // O_TRUNC must not be overtaken by earlier writes, and the attributes the
        // reply carries decide whether the kernel drops its own.
        self.settle(ino).await;
        if flags & libc::O_TRUNC != 0 {
            lock(&self.prefetch).changed(ino.0);
        }
        let asked = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => 0,
            _ => PREFETCH_BYTES,
        };
        let m = self.seq.begin();
        let msg = brick::OpenRequest {
            id: self.id(ino)?.to_wire(),
            flags,
            header: m.header(),
            prefetch: asked,
        };
        let opening = lock(&self.prefetch).opening(ino.0);
        let r = match self
            .call(msg, |mut c, r| async move { c.open(r).await })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                lock(&self.prefetch).open_failed(opening);
                return Err(e);
            }
        };
        lock(&self.prefetch).opened(opening, r.handle, r.data, asked);
        if let Some(a) = &r.attr {
            self.refresh_if_changed(ino, a);
        }
        Ok(r.handle)
    }

    /// [`Inner::read`] when it needs no waiting: no write of the file in
    /// flight and the range prefetched. `None`: go the async way.
    fn read_now(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> Option<Bytes> {
        if self.writes.busy(ino.0) {
            return None;
        }
        lock(&self.prefetch).read(fh.0, ino.0, offset, size)
    }

    /// [`Inner::flush`] when it needs no waiting: no write of the file in
    /// flight and no lock of this client on it. `None`: go the async way.
    fn flush_now(&self, ino: INodeNo) -> Option<Result<(), ClientError>> {
        let id = match self.id(ino) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        if self.writes.busy(ino.0) || lock(&self.locked).contains(&id) {
            return None;
        }
        Some(self.take_write_error(ino))
    }

    async fn read(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<Bytes, ClientError> {
        // Not only overlapping writes: a short read before a write in flight past
        // it would make the kernel shrink the file.
        self.settle(ino).await;
        let prefetched = lock(&self.prefetch).read(fh.0, ino.0, offset, size);
        if let Some(data) = prefetched {
            return Ok(data);
        }
        let msg = brick::ReadRequest {
            id: self.id(ino)?.to_wire(),
            handle: fh.0,
            offset,
            size: size.min(MAX_IO),
        };
        let r = self
            .call(msg, |mut c, r| async move { c.read(r).await })
            .await?;
        Ok(r.data)
    }

    async fn write(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: Bytes,
        append: bool,
    ) -> Result<u32, ClientError> {
        let m = self.seq.begin();
        let msg = brick::WriteRequest {
            header: m.header(),
            id: self.id(ino)?.to_wire(),
            handle: fh.0,
            offset,
            data,
            append,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.write(r).await })
            .await?;
        Ok(r.written)
    }

    async fn flush(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        owner: LockOwner,
    ) -> Result<(), ClientError> {
        let id = self.id(ino)?;
        // close(2) returns only once the file's writes are at the brick: that is
        // close-to-open consistency for the next opener on any mount, and the
        // last chance to report a background write that failed.
        let written = self.settle_and_take_error(ino).await;
        if lock(&self.locked).contains(&id) {
            // Even when a write failed, the closing process's locks must go.
            let m = self.seq.begin();
            let msg = brick::FlushRequest {
                id: id.to_wire(),
                handle: fh.0,
                lock_owner: owner.0,
                header: m.header(),
            };
            self.call(msg, |mut c, r| async move { c.flush(r).await })
                .await?;
            lock(&self.lock_owners).flushed(id, owner.0);
        }
        written
    }

    async fn release(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        flock_owner: Option<LockOwner>,
    ) -> Result<(), ClientError> {
        let id = self.id(ino)?;
        lock(&self.prefetch).released(fh.0);
        // Writes through a mapping may arrive after the last flush.
        self.settle(ino).await;
        let mut owners = lock(&self.lock_owners).released(id, fh.0);
        // The kernel names an owner only when flock(2) was used on the file; it
        // is the open file's, as are its OFD locks. The Release request drops
        // that owner's record locks (and the handle's flocks); any other owner
        // still holding locks through this handle is unlocked first.
        let primary = flock_owner.map(|o| o.0).or_else(|| owners.first().copied());
        owners.retain(|o| Some(*o) != primary);
        for owner in owners {
            if let Err(e) = self.unlock_all(id, fh, owner).await {
                tracing::debug!(ino = ino.0, owner, "close-time unlock: {e}");
            }
        }
        let m = self.seq.begin();
        let msg = brick::ReleaseRequest {
            id: id.to_wire(),
            handle: fh.0,
            flock_release: primary.is_some(),
            lock_owner: primary.unwrap_or(0),
            header: m.header(),
        };
        self.call(msg, |mut c, r| async move { c.release(r).await })
            .await?;
        Ok(())
    }

    /// Drops every record lock `owner` holds on `id`.
    async fn unlock_all(&self, id: FileId, fh: FileHandle, owner: u64) -> Result<(), ClientError> {
        let msg = brick::SetLockRequest {
            id: id.to_wire(),
            handle: fh.0,
            lock_owner: owner,
            lock: Some(LockRange {
                typ: LockType::Unlock as i32,
                start: 0,
                end: u64::MAX,
                pid: 0,
            }),
            flock: false,
            client_id: self.seq.client_id(),
        };
        self.call(msg, |mut c, r| async move { c.set_lock(r).await })
            .await?;
        Ok(())
    }

    /// Opens a directory on the brick and starts a stream for it; returns the
    /// stream's handle.
    async fn opendir(&self, ino: INodeNo) -> Result<u64, ClientError> {
        let m = self.seq.begin();
        let msg = brick::OpenRequest {
            id: self.id(ino)?.to_wire(),
            // Exactly a read-only directory open, whatever else the kernel's
            // flags carry: listing is all a directory handle is for.
            flags: libc::O_RDONLY | libc::O_DIRECTORY,
            header: m.header(),
            prefetch: 0,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.open(r).await })
            .await?;
        let fh = self.next_dir.fetch_add(1, Ordering::Relaxed);
        let stream = DirStream {
            brick_handle: r.handle,
            ..DirStream::default()
        };
        lock(&self.dirs).insert(fh, stream);
        Ok(fh)
    }

    /// Ends a directory stream and releases its brick handle (the brick reclaims
    /// the directory if it was removed while open and this was its last handle).
    async fn releasedir(&self, ino: INodeNo, fh: FileHandle) -> Result<(), ClientError> {
        let Some(stream) = lock(&self.dirs).remove(&fh.0) else {
            return Ok(());
        };
        let m = self.seq.begin();
        let msg = brick::ReleaseRequest {
            id: self.id(ino)?.to_wire(),
            handle: stream.brick_handle,
            flock_release: false,
            lock_owner: 0,
            header: m.header(),
        };
        self.call(msg, |mut c, r| async move { c.release(r).await })
            .await?;
        Ok(())
    }

    async fn fsync(&self, ino: INodeNo, handle: u64, datasync: bool) -> Result<(), ClientError> {
        // A write that failed in the background is lost: fsync must say so
        // rather than report the file durable.
        self.settle_and_take_error(ino).await?;
        let msg = brick::FsyncRequest {
            id: self.id(ino)?.to_wire(),
            handle,
            datasync,
        };
        self.call(msg, |mut c, r| async move { c.fsync(r).await })
            .await?;
        Ok(())
    }

    async fn read_dir_batch(
        &self,
        ino: INodeNo,
        cursor: u64,
        max_entries: u32,
        plus: bool,
    ) -> Result<brick::ReadDirReply, ClientError> {
        let id = self.id(ino)?;
        if self.pool.spreads(id) {
            return self.read_root_batch(cursor, max_entries, plus).await;
        }
        let msg = brick::ReadDirRequest {
            id: id.to_wire(),
            cursor,
            max_entries,
            plus,
        };
        self.call(msg, |mut c, r| async move { c.read_dir(r).await })
            .await
    }

    /// The pool root's listing: each set's entries in turn, their cursors
    /// carrying the set (`pool::join_cursor`), so the kernel's offsets stay
    /// increasing and a listing resumes in the right set.
    async fn read_root_batch(
        &self,
        cursor: u64,
        max_entries: u32,
        plus: bool,
    ) -> Result<brick::ReadDirReply, ClientError> {
        let (mut set, mut c) = split_cursor(cursor);
        let n = self.pool.len();
        while set < n {
            let msg = brick::ReadDirRequest {
                id: ROOT_ID.to_wire(),
                cursor: c,
                max_entries,
                plus,
            };
            let mut r = self
                .pool
                .set(set)
                .call(msg, |mut cl, r| async move { cl.read_dir(r).await })
                .await?;
            for e in &mut r.entries {
                e.cursor = join_cursor(set, e.cursor)
                    .ok_or_else(|| ClientError::BadReply("readdir cursor too large".into()))?;
            }
            if !r.entries.is_empty() || !r.eof {
                r.eof = r.eof && set + 1 == n;
                return Ok(r);
            }
            set += 1;
            c = 0;
        }
        Ok(brick::ReadDirReply {
            entries: Vec::new(),
            eof: true,
        })
    }

    fn take_leftover(
        &self,
        fh: FileHandle,
        offset: u64,
        plus: bool,
        fresh: bool,
    ) -> Option<Leftover> {
        let mut dirs = lock(&self.dirs);
        let stream = dirs.get_mut(&fh.0)?;
        if fresh {
            stream.eof_after = None;
            stream.leftover = None;
            return None;
        }
        if stream.eof_after == Some(offset) {
            return Some(Leftover {
                after: offset,
                plus,
                entries: VecDeque::new(),
                eof: true,
                fetched: Instant::now(),
            });
        }
        let l = stream.leftover.take()?;
        (l.after == offset && l.plus == plus && l.fetched.elapsed() < LEFTOVER_MAX_AGE).then_some(l)
    }

    fn store_stream(&self, fh: FileHandle, eof_after: Option<u64>, leftover: Option<Leftover>) {
        if let Some(stream) = lock(&self.dirs).get_mut(&fh.0) {
            if eof_after.is_some() {
                stream.eof_after = eof_after;
            }
            stream.leftover = leftover;
        }
    }

    /// Fills one readdir(plus) reply from kernel offset `offset`: "." and "..",
    /// then brick entries, fetching batches until the buffer is full or the
    /// directory ends.
    async fn fill_dir<S: DirSink>(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        sink: &mut S,
    ) -> Result<(), ClientError> {
        let start = dir_cursor::resume(offset);
        let ttl = self.opts.entry_ttl;
        if start.dot && sink.add_dot(ino.0, dir_cursor::DOT_OFFSET, ".", ttl) {
            return Ok(());
        }
        if start.dotdot && sink.add_dot(ROOT_INO, dir_cursor::DOTDOT_OFFSET, "..", ttl) {
            return Ok(());
        }
        let mut last_offset = offset.max(dir_cursor::DOTDOT_OFFSET);
        let mut cursor = start.brick_cursor;
        // A listing that starts over (offset 0, rewinddir) asks the brick afresh
        // rather than trusting an end-of-directory memo from the previous pass.
        let fresh = offset < dir_cursor::DOTDOT_OFFSET;
        let (mut pending, mut eof) = match self.take_leftover(fh, last_offset, S::PLUS, fresh) {
            Some(l) => (l.entries, l.eof),
            None => (VecDeque::new(), false),
        };
        let batch =
            dir_cursor::batch_size(DIR_FETCH_BYTES, S::PLUS, kadalu_proto::MAX_READDIR_ENTRIES);
        loop {
            let Some(mut e) = pending.pop_front() else {
                if eof {
                    self.store_stream(fh, Some(last_offset), None);
                    return Ok(());
                }
                let r = self.read_dir_batch(ino, cursor, batch, S::PLUS).await?;
                if r.entries.is_empty() && !r.eof {
                    return Err(ClientError::BadReply(
                        "empty readdir batch before the end".into(),
                    ));
                }
                pending = r.entries.into();
                eof = r.eof;
                continue;
            };
            if S::PLUS {
                if let Some(a) = e.attr.take() {
                    e.attr = Some(self.settled_attr(a).await?);
                }
            }
            let off = dir_cursor::kernel_offset(e.cursor)
                .filter(|o| e.cursor > 0 && *o > last_offset)
                .ok_or_else(|| ClientError::BadReply("readdir cursors out of order".into()))?;
            if sink.add_entry(self, &e, off)? {
                pending.push_front(e);
                let leftover = Leftover {
                    after: last_offset,
                    plus: S::PLUS,
                    entries: pending,
                    eof,
                    fetched: Instant::now(),
                };
                self.store_stream(fh, None, Some(leftover));
                return Ok(());
            }
            cursor = e.cursor;
            last_offset = off;
        }
    }

    async fn statfs(&self, ino: INodeNo) -> Result<brick::StatFsReply, ClientError> {
        let id = self.id(ino)?;
        if self.pool.spreads(id) {
            return self.statfs_pool().await;
        }
        let msg = brick::StatFsRequest { id: id.to_wire() };
        self.call(msg, |mut c, r| async move { c.stat_fs(r).await })
            .await
    }

    /// The pool root's `statfs`: the sum of every set's space and inodes.
    async fn statfs_pool(&self) -> Result<brick::StatFsReply, ClientError> {
        let mut total: Option<brick::StatFsReply> = None;
        for set in self.pool.sets() {
            let msg = brick::StatFsRequest {
                id: ROOT_ID.to_wire(),
            };
            let r = set
                .call(msg, |mut c, r| async move { c.stat_fs(r).await })
                .await?;
            total = Some(match total {
                None => r,
                Some(mut t) => {
                    // Counted in the first set's block size.
                    let scale = |blocks: u64| {
                        blocks.saturating_mul(r.bsize.max(1) as u64) / t.bsize.max(1) as u64
                    };
                    t.blocks = t.blocks.saturating_add(scale(r.blocks));
                    t.bfree = t.bfree.saturating_add(scale(r.bfree));
                    t.bavail = t.bavail.saturating_add(scale(r.bavail));
                    t.files = t.files.saturating_add(r.files);
                    t.ffree = t.ffree.saturating_add(r.ffree);
                    t
                }
            });
        }
        total.ok_or(ClientError::Invalid("a pool without replica sets"))
    }

    async fn setxattr(
        &self,
        ino: INodeNo,
        name: Bytes,
        value: Bytes,
        flags: i32,
    ) -> Result<(), ClientError> {
        lock(&self.dir_attrs).forget(ino.0);
        let id = self.id(ino)?;
        lock(&self.xattrs).invalidate(id);
        let m = self.seq.begin();
        let msg = brick::SetXattrRequest {
            header: m.header(),
            id: id.to_wire(),
            name,
            value,
            flags,
        };
        self.call(msg, |mut c, r| async move { c.set_xattr(r).await })
            .await?;
        Ok(())
    }

    async fn getxattr(&self, ino: INodeNo, name: Bytes) -> Result<Bytes, ClientError> {
        let id = self.id(ino)?;
        let cached = lock(&self.xattrs).get(id, &name, Instant::now());
        if let Some(answer) = cached {
            return answer.ok_or(ClientError::Fs(libc::ENODATA));
        }
        let msg = brick::GetXattrRequest {
            id: id.to_wire(),
            name: name.clone(),
        };
        let r = self
            .call(msg, |mut c, r| async move { c.get_xattr(r).await })
            .await;
        let answer = match r {
            Ok(r) => Some(r.value),
            Err(e) if e.errno() == libc::ENODATA => None,
            Err(e) => return Err(e),
        };
        lock(&self.xattrs).put(id, name, answer.clone(), Instant::now());
        answer.ok_or(ClientError::Fs(libc::ENODATA))
    }

    async fn listxattr(&self, ino: INodeNo) -> Result<Vec<u8>, ClientError> {
        let msg = brick::ListXattrRequest {
            id: self.id(ino)?.to_wire(),
        };
        let r = self
            .call(msg, |mut c, r| async move { c.list_xattr(r).await })
            .await?;
        Ok(xattr_list(&r.names))
    }

    async fn removexattr(&self, ino: INodeNo, name: Bytes) -> Result<(), ClientError> {
        let id = self.id(ino)?;
        lock(&self.dir_attrs).forget(ino.0);
        lock(&self.xattrs).invalidate(id);
        let m = self.seq.begin();
        let msg = brick::RemoveXattrRequest {
            header: m.header(),
            id: id.to_wire(),
            name,
        };
        self.call(msg, |mut c, r| async move { c.remove_xattr(r).await })
            .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        parent: INodeNo,
        name: Bytes,
        mode: u32,
        uid: u32,
        gid: u32,
        flags: i32,
    ) -> Result<(brick::Attr, u64), ClientError> {
        if flags & libc::O_TRUNC != 0 && flags & libc::O_EXCL == 0 {
            // The name may be an existing file (the kernel sends create when its
            // entry was missing or stale) with writes in flight that must not
            // land after the truncation; which file is unknown until the reply.
            self.writes.settle_all().await;
        }
        let m = self.seq.begin();
        let msg = brick::CreateRequest {
            header: m.header(),
            parent: self.id(parent)?.to_wire(),
            name,
            mode: mode & 0o7777,
            uid,
            gid,
            flags,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.create(r).await })
            .await?;
        self.note_dir(parent, r.parent);
        let mut a = required(r.attr)?;
        if !r.created {
            if flags & libc::O_TRUNC != 0 {
                // An existing file was truncated: other handles' first bytes are stale.
                lock(&self.prefetch).changed(self.ino_of(attr_id(&a)?));
            }
            a = self.settled_attr(a).await?;
        }
        if r.created {
            // Spares the kernel's security.capability query before the first write.
            lock(&self.xattrs).note_created(attr_id(&a)?, Instant::now());
        }
        Ok((a, r.handle))
    }

    fn lock_range(start: u64, end: u64, typ: i32, pid: u32) -> Result<LockRange, ClientError> {
        let typ = locks::lock_type(typ).ok_or(ClientError::Invalid("unknown lock type"))?;
        Ok(LockRange {
            typ: typ as i32,
            start,
            end: locks::wire_end(end),
            pid,
        })
    }

    async fn getlk(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        owner: LockOwner,
        range: LockRange,
    ) -> Result<LockRange, ClientError> {
        self.settle(ino).await;
        let msg = brick::GetLockRequest {
            id: self.id(ino)?.to_wire(),
            handle: fh.0,
            lock_owner: owner.0,
            lock: Some(range),
            client_id: self.seq.client_id(),
        };
        let r = self
            .call(msg, |mut c, r| async move { c.get_lock(r).await })
            .await?;
        r.lock
            .ok_or_else(|| ClientError::BadReply("getlk reply without lock".into()))
    }

    async fn setlk(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        owner: LockOwner,
        range: LockRange,
        sleep: bool,
        waiter: u32,
    ) -> Result<(), ClientError> {
        let id = self.id(ino)?;
        // Whoever gets the lock after us must see what we wrote before
        // unlocking, and what we write under the lock must follow the grant.
        self.settle(ino).await;
        if range.typ != LockType::Unlock as i32 {
            // Recorded before asking so a close racing with the grant still
            // flushes and a release racing with it still unlocks.
            lock(&self.locked).insert(id);
            lock(&self.lock_owners).took(id, fh.0, owner.0);
        }
        let msg = brick::SetLockRequest {
            id: id.to_wire(),
            handle: fh.0,
            lock_owner: owner.0,
            lock: Some(range),
            flock: requested_by_flock(waiter).await,
            client_id: self.seq.client_id(),
        };
        let mut attempt = 0u32;
        loop {
            let result = self
                .call(msg.clone(), |mut c, r| async move { c.set_lock(r).await })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if sleep && e.errno() == libc::EAGAIN => {
                    if locks::waiter_interrupted(waiter) {
                        return Err(ClientError::Interrupted);
                    }
                    tokio::time::sleep(locks::lock_poll_pause(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fallocate(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), ClientError> {
        self.settle(ino).await;
        lock(&self.prefetch).changed(ino.0);
        let m = self.seq.begin();
        let msg = brick::FallocateRequest {
            header: m.header(),
            id: self.id(ino)?.to_wire(),
            handle: fh.0,
            offset,
            length,
            mode,
        };
        self.call(msg, |mut c, r| async move { c.fallocate(r).await })
            .await?;
        Ok(())
    }

    async fn lseek(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
    ) -> Result<i64, ClientError> {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            // The kernel answers SEEK_SET/CUR/END itself and never sends them.
            return Err(ClientError::Invalid("lseek whence"));
        }
        self.settle(ino).await;
        let msg = brick::LseekRequest {
            id: self.id(ino)?.to_wire(),
            handle: fh.0,
            offset,
            whence,
        };
        let r = self
            .call(msg, |mut c, r| async move { c.lseek(r).await })
            .await?;
        Ok(r.offset)
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_file_range(
        &self,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
    ) -> Result<u32, ClientError> {
        // The brick copies what it has: the source's writes must be there, and
        // the destination's must not land over the copy afterwards.
        self.settle(ino_in).await;
        self.settle(ino_out).await;
        lock(&self.prefetch).changed(ino_out.0);
        let m = self.seq.begin();
        let msg = brick::CopyFileRangeRequest {
            header: m.header(),
            id_in: self.id(ino_in)?.to_wire(),
            handle_in: fh_in.0,
            offset_in,
            id_out: self.id(ino_out)?.to_wire(),
            handle_out: fh_out.0,
            offset_out,
            length: len.min(MAX_COPY),
        };
        let r = self
            .call(msg, |mut c, r| async move { c.copy_file_range(r).await })
            .await?;
        u32::try_from(r.copied).map_err(|_| ClientError::BadReply("copied more than asked".into()))
    }
}

/// Whether the lock request of thread `tid` comes from flock(2) rather than
/// fcntl (fuser 0.18 drops the kernel's FUSE_LK_FLOCK bit; see [`locks`]). When
/// it cannot be told, the lock is taken as the kernel's flock emulation: a
/// whole-file record lock owned by the open file.
async fn requested_by_flock(tid: u32) -> bool {
    for _ in 0..locks::CALLER_LOOKS {
        match locks::caller_syscall_of(tid) {
            Some(CallerSyscall::Flock) => return true,
            Some(CallerSyscall::Running) => tokio::time::sleep(locks::CALLER_LOOK_PAUSE).await,
            Some(CallerSyscall::Other) | None => return false,
        }
    }
    false
}

/// The listxattr reply format: each name followed by a NUL.
pub fn xattr_list(names: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
    for n in names {
        out.extend_from_slice(n);
        out.push(0);
    }
    out
}

/// How an xattr query of `size` bytes is answered for a value of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrAnswer {
    /// The caller asked for the size only.
    Size(u32),
    /// The value fits.
    Data,
    /// The caller's buffer is too small.
    TooSmall,
}

/// Decides the xattr answer (size query, data, or ERANGE).
pub fn xattr_answer(size: u32, len: usize) -> XattrAnswer {
    if size == 0 {
        XattrAnswer::Size(u32::try_from(len).unwrap_or(u32::MAX))
    } else if len <= size as usize {
        XattrAnswer::Data
    } else {
        XattrAnswer::TooSmall
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    match xattr_answer(size, value.len()) {
        XattrAnswer::Size(n) => reply.size(n),
        XattrAnswer::Data => reply.data(value),
        XattrAnswer::TooSmall => reply.error(Errno::ERANGE),
    }
}

impl Filesystem for KadaluFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Each capability on its own: an old kernel lacking one must not cost the others.
        for cap in [
            // Locks go to the brick so they hold across clients.
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
            // O_TRUNC travels with open: one RPC instead of open + setattr.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Another client's change (seen as a new mtime/size) drops our cached pages.
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::info!("kernel lacks {cap:?}");
            }
        }
        // No FUSE_WRITEBACK_CACHE: pools are read-write-many, and a write cached in
        // one client's kernel would be invisible to the others.
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let inner = self.inner.clone();
        let name = bytes(name);
        self.spawn(async move {
            let r = inner.lookup(parent, name).await;
            match r {
                Err(e) if e.errno() == libc::ENOENT && !inner.opts.entry_ttl.is_zero() => {
                    // A negative entry (inode 0): the kernel remembers the name is
                    // absent for the entry TTL, as it remembers present names, so
                    // repeated probes of a missing name (PATH and include searches,
                    // stat before create) cost one round trip per TTL. Another
                    // client's create shows after at most that TTL.
                    let ttl = inner.opts.entry_ttl;
                    // The kernel ignores the attributes of inode 0.
                    reply.entry_with_ttls(&ttl, &ttl, &dot_attr(0), GENERATION)
                }
                r => inner.reply_entry(reply, r),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.getattr(ino).await {
                Ok(a) => reply.attr(&inner.opts.attr_ttl, &a),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner
                .setattr(ino, mode, uid, gid, size, atime, mtime, fh)
                .await
            {
                Ok(a) => reply.attr(&inner.opts.attr_ttl, &a),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.readlink(ino).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let inner = self.inner.clone();
        let name = bytes(name);
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            let r = inner.mknod(parent, name, mode, rdev, uid, gid).await;
            inner.reply_entry(reply, r);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let inner = self.inner.clone();
        let name = bytes(name);
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            let r = inner.mkdir(parent, name, mode, uid, gid).await;
            inner.reply_entry(reply, r);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        let name = bytes(name);
        self.spawn(async move {
            match inner.unlink(parent, name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        let name = bytes(name);
        self.spawn(async move {
            match inner.rmdir(parent, name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let inner = self.inner.clone();
        let name = bytes(link_name);
        let target = bytes(target.as_os_str());
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            let r = inner.symlink(parent, name, target, uid, gid).await;
            inner.reply_entry(reply, r);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        let name = bytes(name);
        let newname = bytes(newname);
        self.spawn(async move {
            match inner
                .rename(parent, name, newparent, newname, flags.bits())
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let inner = self.inner.clone();
        let newname = bytes(newname);
        self.spawn(async move {
            let r = inner.link(ino, newparent, newname).await;
            inner.reply_entry(reply, r);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.open(ino, flags.0).await {
                // No FOPEN_KEEP_CACHE: every open drops cached pages, which gives
                // close-to-open consistency between clients.
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.inner.clone();
        // Answered from this thread when nothing is to wait for and the open
        // brought the bytes: a runtime task would only add a wake-up.
        if let Some(d) = inner.read_now(ino, fh, offset, size) {
            reply.data(&d);
            return;
        }
        self.spawn(async move {
            match inner.read(ino, fh, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let inner = self.inner.clone();
        lock(&inner.prefetch).changed(ino.0);
        let data = Bytes::copy_from_slice(data);
        // A write-back of an mmapped page has its own offset even when the file was
        // opened O_APPEND; only writes from write(2) append.
        let append =
            flags.0 & libc::O_APPEND != 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        if !inner.opts.write_behind {
            self.spawn(async move {
                match inner.write(ino, fh, offset, data, append).await {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(e.into()),
                }
            });
            return;
        }
        if let Some(errno) = inner.writes.take_error(ino.0) {
            // An earlier write of this file failed after it was acknowledged.
            reply.error(Errno::from_i32(errno));
            return;
        }
        let len = data.len() as u64;
        // Queued here, in the order the kernel sent them, so that overlapping
        // writes reach the brick in that order. An append's offset is the size
        // at the brick: it covers the whole file.
        let span = if append {
            Span::WHOLE
        } else {
            Span::new(offset, len)
        };
        let (ticket, started) = inner.writes.queue_and_try_start(ino.0, span, len);
        if started && !append {
            // Answered from this thread: going through a runtime task first
            // would make the application wait for that task's wake-up too.
            reply.written(len as u32);
            self.spawn(async move {
                inner
                    .write_in_background(ino, fh, offset, data, ticket)
                    .await;
            });
            return;
        }
        self.spawn(async move {
            // Waits for room, or for an earlier overlapping write.
            inner.writes.start(ino.0, ticket).await;
            if append {
                // The application learns where its bytes went only from the
                // brick: sent before replying, like a write without write-behind.
                let r = inner.write(ino, fh, offset, data, true).await;
                inner.writes.finish(ino.0, ticket, Ok(()));
                match r {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(e.into()),
                }
            } else {
                reply.written(len as u32);
                inner
                    .write_in_background(ino, fh, offset, data, ticket)
                    .await;
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        if let Some(r) = inner.flush_now(ino) {
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
            return;
        }
        self.spawn(async move {
            match inner.flush(ino, fh, lock_owner).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.release(ino, fh, lock_owner).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::debug!(ino = ino.0, "release failed: {e}");
                    reply.error(e.into())
                }
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.fsync(ino, fh.0, datasync).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.opendir(ino).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.fill_dir(ino, fh, offset, &mut reply).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.fill_dir(ino, fh, offset, &mut reply).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.releasedir(ino, fh).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::debug!(ino = ino.0, "releasedir failed: {e}");
                    reply.error(e.into())
                }
            }
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            // The brick makes its whole store durable on fsync; handle 0 = no open file.
            match inner.fsync(ino, 0, datasync).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.statfs(ino).await {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        let name = bytes(name);
        let value = Bytes::copy_from_slice(value);
        self.spawn(async move {
            match inner.setxattr(ino, name, value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let inner = self.inner.clone();
        let name = bytes(name);
        self.spawn(async move {
            match inner.getxattr(ino, name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.listxattr(ino).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        let name = bytes(name);
        self.spawn(async move {
            match inner.removexattr(ino, name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let inner = self.inner.clone();
        let name = bytes(name);
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            let r = inner
                .create(parent, name, mode, uid, gid, flags)
                .await
                .and_then(|(a, fh)| Ok((inner.new_entry(&a)?, fh)));
            match r {
                Ok((attr, fh)) => reply.created(
                    &inner.opts.entry_ttl,
                    &attr,
                    GENERATION,
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            let r = match Inner::lock_range(start, end, typ, pid) {
                Ok(range) => inner.getlk(ino, fh, lock_owner, range).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(l) => reply.locked(
                    l.start,
                    locks::kernel_end(l.end),
                    locks::kernel_lock_type(l.typ),
                    l.pid,
                ),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        let waiter = req.pid();
        self.spawn(async move {
            let r = match Inner::lock_range(start, end, typ, pid) {
                Ok(range) => inner.setlk(ino, fh, lock_owner, range, sleep, waiter).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.fallocate(ino, fh, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.lseek(ino, fh, offset, whence).await {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner
                .copy_file_range(ino_in, fh_in, offset_in, ino_out, fh_out, offset_out, len)
                .await
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    /// No ioctl is supported. Answered here rather than by fuser's default,
    /// which logs a warning per call: Python asks isatty (TCGETS) on every
    /// file it opens. ENOTTY is what a regular file answers to that.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_size_queries_and_small_buffers() {
        assert_eq!(xattr_answer(0, 10), XattrAnswer::Size(10));
        assert_eq!(xattr_answer(10, 10), XattrAnswer::Data);
        assert_eq!(xattr_answer(64, 10), XattrAnswer::Data);
        assert_eq!(xattr_answer(9, 10), XattrAnswer::TooSmall);
        assert_eq!(xattr_answer(0, 0), XattrAnswer::Size(0));
    }

    #[test]
    fn xattr_names_are_nul_terminated() {
        let names = [
            Bytes::from_static(b"user.a"),
            Bytes::from_static(b"user.bc"),
        ];
        assert_eq!(xattr_list(&names), b"user.a\0user.bc\0".to_vec());
        assert!(xattr_list(&[]).is_empty());
    }

    #[test]
    fn time_sets_follow_the_kernel_request() {
        assert_eq!(time_set(None), None);
        assert_eq!(
            time_set(Some(TimeOrNow::Now)),
            Some(brick::TimeSet {
                how: Some(time_set::How::Now(true))
            })
        );
        let at = UNIX_EPOCH + Duration::new(5, 6);
        assert_eq!(
            time_set(Some(TimeOrNow::SpecificTime(at))),
            Some(brick::TimeSet {
                how: Some(time_set::How::At(brick::Timestamp { sec: 5, nsec: 6 }))
            })
        );
    }
}
