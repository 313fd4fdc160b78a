//! The gRPC face of a brick: decodes requests, sends mutations through the
//! applier (via `prepare`), answers reads straight from the store, and keeps
//! the lock table. Blocking work runs on tokio's blocking pool so that one slow
//! disk operation never stalls other requests.
//!
//! In a replica set (Replica3) mutations are proposed to the Raft log instead
//! of applied here, and only the leader answers: reads after a read-index
//! barrier, so none is stale; a follower answers "not the leader" with the
//! leader's address, and the client goes there. Open handles, locks and the
//! reclaim of unlinked-while-open files live on the leader.

use crate::applier::Applier;
use crate::apply_thread::{caught, ApplyThread};
use crate::error::{FsError, FsResult};
use crate::locks::{LockKind, LockTable, Owner};
use crate::ops::{Command, Outcome};
use crate::prepare::{client_of, parse_client, parse_id, Preparer};
use crate::raft::node::RaftNode;
use crate::store::Store;
use kadalu_proto::brick::brick_server::Brick;
use kadalu_proto::brick::*;
use kadalu_proto::MAX_PREFETCH;
use prost::bytes::Bytes;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// The Brick service of one brick directory.
#[derive(Clone)]
pub struct BrickService {
    store: Arc<Store>,
    applier: Arc<Applier>,
    prep: Arc<Preparer>,
    locks: Arc<Mutex<LockTable>>,
    /// Replica3: the replica set this brick is a member of.
    raft: Option<Arc<RaftNode>>,
    /// Replica1: where mutations run (`apply_thread.rs`).
    apply_thread: Arc<ApplyThread>,
}

type Reply<T> = Result<Response<T>, Status>;

/// Runs blocking brick work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> FsResult<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => Err(FsError::Store(format!("worker failed: {e}")).into()),
    }
}

/// Runs quick brick work right on the request's worker, where a hop to the
/// blocking pool and back would cost more than the work; a panic is still only
/// an error for this request.
fn inline<T>(f: impl FnOnce() -> FsResult<T>) -> Result<T, Status> {
    caught(f)?.map_err(Status::from)
}

fn attr_of(outcome: Outcome) -> FsResult<Attr> {
    match outcome {
        Outcome::Attr(a) | Outcome::Created { attr: a, .. } => Ok(a),
        other => Err(FsError::Store(format!("unexpected outcome {other:?}"))),
    }
}

/// How many bytes of the file an open answers with: what the client asked
/// for (bounded), if the file is regular and opened for reading.
fn prefetch_size(r: &OpenRequest, attr: &Attr) -> u32 {
    let readable = r.flags & libc::O_ACCMODE != libc::O_WRONLY;
    let regular = attr.kind == FileKind::Regular as i32;
    match readable && regular {
        true => r.prefetch.min(MAX_PREFETCH),
        false => 0,
    }
}

fn lock_kind(typ: i32) -> FsResult<Option<LockKind>> {
    match LockType::try_from(typ) {
        Ok(LockType::Read) => Ok(Some(LockKind::Read)),
        Ok(LockType::Write) => Ok(Some(LockKind::Write)),
        Ok(LockType::Unlock) => Ok(None),
        _ => Err(FsError::Os(libc::EINVAL)),
    }
}

impl BrickService {
    pub fn new(applier: Arc<Applier>, prep: Arc<Preparer>, apply_thread: Arc<ApplyThread>) -> Self {
        BrickService {
            store: applier.store().clone(),
            applier,
            prep,
            locks: Arc::new(Mutex::new(LockTable::new())),
            raft: None,
            apply_thread,
        }
    }

    /// The service of a Replica3 brick: mutations go through `node`'s log.
    pub fn replicated(
        applier: Arc<Applier>,
        prep: Arc<Preparer>,
        node: Arc<RaftNode>,
        apply_thread: Arc<ApplyThread>,
    ) -> Self {
        BrickService {
            raft: Some(node),
            ..BrickService::new(applier, prep, apply_thread)
        }
    }

    /// Replica3: returns once this brick leads and has applied everything
    /// committed before now, so what it reads is not stale.
    pub(crate) async fn read_gate(&self) -> Result<(), Status> {
        match &self.raft {
            None => Ok(()),
            Some(node) => node.read_barrier().await.map_err(Status::from),
        }
    }

    /// A file's bytes: page-cached data is answered on this worker; only a
    /// read that would wait for the disk goes to the blocking pool.
    async fn read_bytes(&self, id: FileId, offset: u64, size: u32) -> Result<Bytes, Status> {
        match inline(|| self.store.read_cached(id, offset, size))? {
            Some(data) => Ok(data),
            None => {
                let store = self.store.clone();
                blocking(move || store.read(id, offset, size)).await
            }
        }
    }

    /// Replica3: prepares `prepare` on the leader and proposes it.
    async fn propose(
        &self,
        node: &Arc<RaftNode>,
        prepare: impl FnOnce(&Preparer) -> FsResult<Command> + Send + 'static,
    ) -> Result<Outcome, Status> {
        node.leader_ready().await.map_err(Status::from)?;
        let prep = self.prep.clone();
        let cmd = blocking(move || prepare(&prep)).await?;
        let outcome = node
            .propose(cmd)
            .await
            .map_err(Status::from)?
            .map_err(|errno| Status::from(FsError::Os(errno)))?;
        if let Outcome::Removed { orphan: Some(id) } = &outcome {
            if !self.applier.is_open(*id) {
                self.reclaim(node, *id);
            }
        }
        Ok(outcome)
    }

    /// Replica3: frees an inode whose last name and last handle are gone, by
    /// a log entry, so every member frees it. A reclaim that does not go
    /// through (leader change) leaves an orphan for the next leader's sweep.
    fn reclaim(&self, node: &Arc<RaftNode>, id: FileId) {
        let node = node.clone();
        let cmd = self.prep.internal(crate::ops::Operation::Reclaim { id });
        tokio::spawn(async move {
            match node.propose(cmd).await {
                Ok(Ok(_)) => {}
                Ok(Err(errno)) => tracing::warn!("reclaiming {id}: errno {errno}"),
                Err(e) => tracing::info!("reclaiming {id}: {e:?}"),
            }
        });
    }

    /// Prepares and applies a mutation.
    pub(crate) async fn mutate(
        &self,
        prepare: impl FnOnce(&Preparer) -> FsResult<Command> + Send + 'static,
    ) -> Result<Outcome, Status> {
        if let Some(node) = &self.raft {
            return self.propose(node, prepare).await;
        }
        let cmd = prepare(&self.prep)?;
        // A hand-off to the apply thread and back costs two thread wake-ups,
        // more than a small command takes to apply: a single stream of small
        // writes waits on those wake-ups, not on the disk. So a small command
        // is applied right here when nothing else holds the applier; a large
        // write (a long copy into the page cache, possibly throttled) or a
        // command that finds the applier busy goes to the thread, where it
        // blocks no worker of the runtime.
        if cmd.op.inline_apply_ok() {
            if let Some(result) = caught(|| self.applier.try_apply(&cmd))? {
                return result.map_err(Status::from);
            }
        }
        let applier = self.applier.clone();
        self.apply_thread.run(move || applier.apply(&cmd)).await
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, LockTable> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`BrickService::mutate`] for a change of names, answering also with
    /// the attributes of the directories `dirs` as the change left them, read
    /// on the same worker. The change is done either way, so a directory that
    /// cannot be read is only left out.
    async fn mutate_in_dirs<const N: usize>(
        &self,
        dirs: [Bytes; N],
        prepare: impl FnOnce(&Preparer) -> FsResult<Command> + Send + 'static,
    ) -> Result<(Outcome, [Option<Attr>; N]), Status> {
        if let Some(node) = &self.raft {
            let outcome = self.propose(node, prepare).await?;
            let store = self.store.clone();
            let attrs = blocking(move || {
                Ok(dirs.map(|d| parse_id(&d).and_then(|id| store.getattr(id)).ok()))
            })
            .await?;
            return Ok((outcome, attrs));
        }
        let prep = self.prep.clone();
        let applier = self.applier.clone();
        self.apply_thread
            .run(move || {
                let cmd = prepare(&prep)?;
                let outcome = applier.apply(&cmd)?;
                let store = applier.store();
                let attrs = dirs.map(|d| parse_id(&d).and_then(|id| store.getattr(id)).ok());
                Ok((outcome, attrs))
            })
            .await
    }

    /// Replica3 create: the file through the log, the handle on the leader.
    async fn create_replicated(
        &self,
        node: &Arc<RaftNode>,
        r: CreateRequest,
    ) -> Reply<CreateReply> {
        let client = client_of(r.header.as_ref())?;
        let flags = r.flags;
        let parent_id = r.parent.clone();
        let outcome = self.propose(node, move |p| p.create(&r)).await?;
        let Outcome::Created { attr, created } = outcome else {
            return Err(FsError::Store("create produced no attributes".into()).into());
        };
        let applier = self.applier.clone();
        let a = attr.clone();
        let (handle, parent) = blocking(move || {
            let handle = applier.open_created(&a, flags, client)?;
            let parent = parse_id(&parent_id)
                .and_then(|id| applier.store().getattr(id))
                .ok();
            Ok((handle, parent))
        })
        .await?;
        Ok(Response::new(CreateReply {
            attr: Some(attr),
            handle,
            created,
            parent,
        }))
    }

    /// Locks are only taken on files that exist.
    async fn check_exists(&self, id: FileId) -> Result<(), Status> {
        let store = self.store.clone();
        blocking(move || match store.exists(id)? {
            true => Ok(()),
            false => Err(FsError::Os(libc::ESTALE)),
        })
        .await
    }
}

use kadalu_proto::FileId;

#[tonic::async_trait]
impl Brick for BrickService {
    async fn lookup(&self, request: Request<LookupRequest>) -> Reply<EntryReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        // The store's own cache answers these: no hop to the blocking pool.
        let attr = inline(|| self.store.lookup(parse_id(&r.parent)?, &r.name))?;
        Ok(Response::new(EntryReply {
            attr: Some(attr),
            parent: None,
        }))
    }

    async fn get_attr(&self, request: Request<GetAttrRequest>) -> Reply<AttrReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let attr = inline(|| self.store.getattr(parse_id(&r.id)?))?;
        Ok(Response::new(AttrReply { attr: Some(attr) }))
    }

    async fn set_attr(&self, request: Request<SetAttrRequest>) -> Reply<AttrReply> {
        let r = request.into_inner();
        let attr = attr_of(self.mutate(move |p| p.setattr(&r)).await?)?;
        Ok(Response::new(AttrReply { attr: Some(attr) }))
    }

    async fn create(&self, request: Request<CreateRequest>) -> Reply<CreateReply> {
        let r = request.into_inner();
        if let Some(node) = self.raft.clone() {
            return self.create_replicated(&node, r).await;
        }
        let prep = self.prep.clone();
        let applier = self.applier.clone();
        let (outcome, handle, parent) = self
            .apply_thread
            .run(move || {
                let client = client_of(r.header.as_ref())?;
                let cmd = prep.create(&r)?;
                let (outcome, handle) = applier.create(&cmd, r.flags, client)?;
                // As in `mutate_in_dirs`.
                let parent = parse_id(&r.parent)
                    .and_then(|id| applier.store().getattr(id))
                    .ok();
                Ok((outcome, handle, parent))
            })
            .await?;
        let Outcome::Created { attr, created } = outcome else {
            return Err(FsError::Store("create produced no attributes".into()).into());
        };
        Ok(Response::new(CreateReply {
            attr: Some(attr),
            handle,
            created,
            parent,
        }))
    }

    async fn mknod(&self, request: Request<MknodRequest>) -> Reply<EntryReply> {
        let r = request.into_inner();
        let (outcome, [parent]) = self
            .mutate_in_dirs([r.parent.clone()], move |p| p.mknod(&r))
            .await?;
        Ok(Response::new(EntryReply {
            attr: Some(attr_of(outcome)?),
            parent,
        }))
    }

    async fn mkdir(&self, request: Request<MkdirRequest>) -> Reply<EntryReply> {
        let r = request.into_inner();
        let (outcome, [parent]) = self
            .mutate_in_dirs([r.parent.clone()], move |p| p.mkdir(&r))
            .await?;
        Ok(Response::new(EntryReply {
            attr: Some(attr_of(outcome)?),
            parent,
        }))
    }

    async fn symlink(&self, request: Request<SymlinkRequest>) -> Reply<EntryReply> {
        let r = request.into_inner();
        let (outcome, [parent]) = self
            .mutate_in_dirs([r.parent.clone()], move |p| p.symlink(&r))
            .await?;
        Ok(Response::new(EntryReply {
            attr: Some(attr_of(outcome)?),
            parent,
        }))
    }

    async fn link(&self, request: Request<LinkRequest>) -> Reply<EntryReply> {
        let r = request.into_inner();
        let (outcome, [parent]) = self
            .mutate_in_dirs([r.new_parent.clone()], move |p| p.link(&r))
            .await?;
        Ok(Response::new(EntryReply {
            attr: Some(attr_of(outcome)?),
            parent,
        }))
    }

    async fn readlink(&self, request: Request<ReadlinkRequest>) -> Reply<ReadlinkReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let target = inline(|| self.store.readlink(parse_id(&r.id)?))?;
        Ok(Response::new(ReadlinkReply { target }))
    }

    async fn unlink(&self, request: Request<UnlinkRequest>) -> Reply<RemoveReply> {
        let r = request.into_inner();
        let (_, [parent]) = self
            .mutate_in_dirs([r.parent.clone()], move |p| p.unlink(&r))
            .await?;
        Ok(Response::new(RemoveReply { parent }))
    }

    async fn rmdir(&self, request: Request<RmdirRequest>) -> Reply<RemoveReply> {
        let r = request.into_inner();
        let (_, [parent]) = self
            .mutate_in_dirs([r.parent.clone()], move |p| p.rmdir(&r))
            .await?;
        Ok(Response::new(RemoveReply { parent }))
    }

    async fn rename(&self, request: Request<RenameRequest>) -> Reply<RenameReply> {
        let r = request.into_inner();
        let dirs = [r.parent.clone(), r.new_parent.clone()];
        let same = dirs[0] == dirs[1];
        let store = self.store.clone();
        let (_, [parent, new_parent]) = self
            .mutate_in_dirs(dirs, move |p| {
                p.rename(&r, |parent, name| store.entry_id(parent, name))
            })
            .await?;
        Ok(Response::new(RenameReply {
            parent,
            new_parent: new_parent.filter(|_| !same),
        }))
    }

    async fn open(&self, request: Request<OpenRequest>) -> Reply<OpenReply> {
        let r = request.into_inner();
        self.read_gate().await?;
        let prep = self.prep.clone();
        let applier = self.applier.clone();
        if let Some(node) = self.raft.clone() {
            // The truncation is a log entry; the handle is the leader's alone.
            if r.flags & libc::O_TRUNC != 0 {
                let r2 = r.clone();
                self.propose(&node, move |p| {
                    // O_TRUNC is set, so there is a truncation to prepare.
                    p.open_truncate(&r2)?.ok_or(FsError::Os(libc::EINVAL))
                })
                .await?;
            }
        }
        let replicated = self.raft.is_some();
        if replicated || r.flags & libc::O_TRUNC == 0 {
            // Nothing to apply: with the applier free, registering the handle
            // is a table insert, and a cached prefetch is answered from here.
            let id = parse_id(&r.id)?;
            let client = client_of(r.header.as_ref())?;
            if let Some(opened) = caught(|| applier.try_open_file(id, r.flags, client))? {
                let (handle, attr) = opened?;
                // Best effort, as below.
                let data = match prefetch_size(&r, &attr) {
                    0 => None,
                    n => self.read_bytes(id, 0, n).await.ok(),
                };
                return Ok(Response::new(OpenReply {
                    handle,
                    attr: Some(attr),
                    data,
                }));
            }
        }
        let (handle, attr, data) = blocking(move || {
            let id = parse_id(&r.id)?;
            let client = client_of(r.header.as_ref())?;
            let truncate = match replicated {
                true => None,
                false => prep.open_truncate(&r)?,
            };
            let (handle, attr) = applier.open_file(id, r.flags, client, truncate.as_ref())?;
            // Best effort: a file that cannot be read now answers the
            // kernel's read with its error then, not the open now.
            let data = match prefetch_size(&r, &attr) {
                0 => None,
                n => applier.store().read(id, 0, n).ok(),
            };
            Ok((handle, attr, data))
        })
        .await?;
        Ok(Response::new(OpenReply {
            handle,
            attr: Some(attr),
            data,
        }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Reply<ReadReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let data = self.read_bytes(parse_id(&r.id)?, r.offset, r.size).await?;
        Ok(Response::new(ReadReply { data }))
    }

    async fn write(&self, request: Request<WriteRequest>) -> Reply<WriteReply> {
        let r = request.into_inner();
        match self.mutate(move |p| p.write(&r)).await? {
            Outcome::Written { written, size } => Ok(Response::new(WriteReply { written, size })),
            other => Err(FsError::Store(format!("unexpected outcome {other:?}")).into()),
        }
    }

    async fn flush(&self, request: Request<FlushRequest>) -> Reply<Empty> {
        let r = request.into_inner();
        let id = parse_id(&r.id)?;
        let client = client_of(r.header.as_ref())?;
        self.locks().release_owner(
            id,
            Owner {
                client,
                owner: r.lock_owner,
            },
        );
        Ok(Response::new(Empty {}))
    }

    async fn fsync(&self, request: Request<FsyncRequest>) -> Reply<Empty> {
        let r = request.into_inner();
        if self.raft.is_some() {
            // Whatever was acknowledged is in the log of a majority already.
            self.read_gate().await?;
            return Ok(Response::new(Empty {}));
        }
        let applier = self.applier.clone();
        blocking(move || applier.fsync(parse_id(&r.id)?, r.datasync)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Reply<Empty> {
        let r = request.into_inner();
        let id = parse_id(&r.id)?;
        let client = client_of(r.header.as_ref())?;
        if r.flock_release {
            let mut locks = self.locks();
            locks.funlock(
                id,
                Owner {
                    client,
                    owner: r.handle,
                },
            );
            // A client that emulates flock with whole-file record locks owned
            // by the open file releases them here too.
            locks.release_owner(
                id,
                Owner {
                    client,
                    owner: r.lock_owner,
                },
            );
        }
        let applier = self.applier.clone();
        if let Some(node) = &self.raft {
            let handle = r.handle;
            if blocking(move || applier.release_replicated(id, handle)).await? {
                self.reclaim(node, id);
            }
            return Ok(Response::new(Empty {}));
        }
        let now = self.prep.now();
        if let Some(released) = caught(|| applier.try_release(id, r.handle, now))? {
            released?;
            return Ok(Response::new(Empty {}));
        }
        blocking(move || applier.release(id, r.handle, now)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn fallocate(&self, request: Request<FallocateRequest>) -> Reply<Empty> {
        let r = request.into_inner();
        self.mutate(move |p| p.fallocate(&r)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn lseek(&self, request: Request<LseekRequest>) -> Reply<LseekReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let store = self.store.clone();
        let offset = blocking(move || store.lseek(parse_id(&r.id)?, r.offset, r.whence)).await?;
        Ok(Response::new(LseekReply { offset }))
    }

    async fn copy_file_range(
        &self,
        request: Request<CopyFileRangeRequest>,
    ) -> Reply<CopyFileRangeReply> {
        let r = request.into_inner();
        match self.mutate(move |p| p.copy_file_range(&r)).await? {
            Outcome::Copied(copied) => Ok(Response::new(CopyFileRangeReply { copied })),
            other => Err(FsError::Store(format!("unexpected outcome {other:?}")).into()),
        }
    }

    async fn read_dir(&self, request: Request<ReadDirRequest>) -> Reply<ReadDirReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let store = self.store.clone();
        let reply =
            blocking(move || store.readdir(parse_id(&r.id)?, r.cursor, r.max_entries, r.plus))
                .await?;
        Ok(Response::new(reply))
    }

    async fn stat_fs(&self, request: Request<StatFsRequest>) -> Reply<StatFsReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let store = self.store.clone();
        let reply = blocking(move || {
            let id = parse_id(&r.id)?;
            if !store.exists(id)? {
                return Err(FsError::Os(libc::ESTALE));
            }
            store.statfs_of(id)
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn get_xattr(&self, request: Request<GetXattrRequest>) -> Reply<GetXattrReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let store = self.store.clone();
        let value = blocking(move || store.getxattr(parse_id(&r.id)?, &r.name)).await?;
        Ok(Response::new(GetXattrReply { value }))
    }

    async fn set_xattr(&self, request: Request<SetXattrRequest>) -> Reply<Empty> {
        let r = request.into_inner();
        self.mutate(move |p| p.setxattr(&r)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_xattr(&self, request: Request<ListXattrRequest>) -> Reply<ListXattrReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let store = self.store.clone();
        let names = blocking(move || store.listxattr(parse_id(&r.id)?)).await?;
        Ok(Response::new(ListXattrReply { names }))
    }

    async fn remove_xattr(&self, request: Request<RemoveXattrRequest>) -> Reply<Empty> {
        let r = request.into_inner();
        self.mutate(move |p| p.removexattr(&r)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_lock(&self, request: Request<GetLockRequest>) -> Reply<GetLockReply> {
        self.read_gate().await?;
        let r = request.into_inner();
        let id = parse_id(&r.id)?;
        let client = parse_client(&r.client_id)?;
        let want = r.lock.unwrap_or_default();
        if want.start > want.end {
            return Err(FsError::Os(libc::EINVAL).into());
        }
        let Some(kind) = lock_kind(want.typ)? else {
            return Err(FsError::Os(libc::EINVAL).into());
        };
        self.check_exists(id).await?;
        let owner = Owner {
            client,
            owner: r.lock_owner,
        };
        let answer = match self.locks().test(id, owner, kind, want.start, want.end) {
            Some(l) => LockRange {
                typ: match l.kind {
                    LockKind::Read => LockType::Read,
                    LockKind::Write => LockType::Write,
                } as i32,
                start: l.start,
                end: l.end,
                pid: l.pid,
            },
            None => LockRange {
                typ: LockType::Unlock as i32,
                ..want
            },
        };
        Ok(Response::new(GetLockReply { lock: Some(answer) }))
    }

    async fn set_lock(&self, request: Request<SetLockRequest>) -> Reply<Empty> {
        self.read_gate().await?;
        let r = request.into_inner();
        let id = parse_id(&r.id)?;
        let client = parse_client(&r.client_id)?;
        let want = r.lock.unwrap_or_default();
        if want.start > want.end {
            return Err(FsError::Os(libc::EINVAL).into());
        }
        let kind = lock_kind(want.typ)?;
        self.check_exists(id).await?;
        let mut locks = self.locks();
        if r.flock {
            let owner = Owner {
                client,
                owner: r.handle,
            };
            match kind {
                Some(k) => locks.flock(id, owner, k)?,
                None => locks.funlock(id, owner),
            }
        } else {
            let owner = Owner {
                client,
                owner: r.lock_owner,
            };
            match kind {
                Some(k) => locks.lock(id, owner, k, want.start, want.end, want.pid)?,
                None => locks.unlock(id, owner, want.start, want.end)?,
            }
        }
        Ok(Response::new(Empty {}))
    }
}
