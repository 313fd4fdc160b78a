//! The single entry point for changes: every mutation the service receives is
//! applied here, one at a time, in the order it arrives. Today the order is a
//! mutex; with replication a log will sit in front of this instead.
//!
//! Every command is journalled before it is applied (`journal.rs`), all under
//! the lock:
//! 1. it is *resolved*: whatever in it depends on object files, which after a
//!    crash may be ahead of the store, is fixed now (an append becomes a write
//!    at the current size, a copy's length is cut to what its source holds);
//! 2. a barrier (the store made durable, the journal emptied) comes first if
//!    the command would change an object that an un-checkpointed copy read,
//!    or is a copy within one file;
//! 3. it gets the next index, is appended to the journal, and is applied; if
//!    it fails, a note saying so follows it in the journal.
//!
//! The caller answers the client only after that, so an acknowledged change is
//! in the journal. Making the store durable (timer, shutdown, a journal over
//! its size limit) empties the journal. At start, [`Applier::open`] replays
//! the journal onto the store before anything else looks at the brick.
//!
//! The applier also owns the open-handle table, because whether an unlinked
//! file is reclaimed depends on it: the check and the reclaim happen under the
//! same lock as the unlink and the release, so no open can slip in between.

use crate::apply::{StateMachine, MAX_COPY};
use crate::error::{FsError, FsResult};
use crate::handles::HandleTable;
use crate::journal::{Journal, Record, RecordRef, Scan, Stop};
use crate::ops::{Command, Operation, Outcome};
use crate::records::Time;
use crate::store::Store;
use kadalu_proto::brick::{Attr, FileKind};
use kadalu_proto::FileId;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

/// Journal size above which an fsync checkpoints instead of syncing the
/// journal: about what a durable store commit costs in journal writes.
pub const FSYNC_JOURNAL_BYTES: u64 = 1 << 20;

/// Most objects tracked as holding data not yet synced (see `Inner::unsynced`);
/// past it every fsync syncs the object, as if nothing were tracked.
pub const MAX_TRACKED_UNSYNCED: usize = 100_000;

struct Inner {
    sm: StateMachine,
    journal: Journal,
    handles: HandleTable,
    /// Objects read by copies journalled since the last checkpoint: changing
    /// one needs a checkpoint first, so that a replayed copy reads what the
    /// original read.
    copy_sources: HashSet<FileId>,
    /// Counts checkpoints: the journal of epoch `e` holds every command
    /// applied since checkpoint `e`.
    epoch: u64,
    /// Objects changed since they were last synced, with the epoch of their
    /// oldest unsynced change. While that is the current epoch, the journal
    /// holds every such change with its bytes, so syncing the journal makes
    /// the object's state durable (replay redoes it); an older change is only
    /// in the object file's page cache, which fsync must then flush.
    unsynced: HashMap<FileId, u64>,
    /// More objects were unsynced than tracked: fsync syncs every object.
    untracked: bool,
    /// Objects an fsync made durable through the journal alone: the
    /// checkpoint that empties the journal syncs them first.
    journal_durable: HashSet<FileId>,
    /// Object files synced so far (fsync and checkpoints), for tests.
    object_syncs: u64,
}

/// Serialises all changes to one brick.
pub struct Applier {
    inner: Mutex<Inner>,
    store: Arc<Store>,
    /// The journal's file, synced by `fsync` without taking the lock.
    journal_file: Arc<File>,
    /// Replica3: commands come from the Raft log ([`Applier::apply_logged`]),
    /// which takes the journal's place; nothing is changed outside the log.
    replicated: bool,
}

/// What recovery found in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Index the durable store was at.
    pub from: u64,
    /// Commands applied again.
    pub replayed: u64,
    /// Commands whose recorded failure was replayed instead.
    pub failed: u64,
    /// Replayed commands that failed (their first run may have failed too:
    /// a crash can come between a failure and its note).
    pub refused: u64,
    /// How the journal ended.
    pub scan: Scan,
}

impl Applier {
    /// Opens the apply path of a brick: replays the journal onto the store
    /// (which a crash may have taken back to its last durable commit), makes
    /// the store durable and empties the journal, and only then reclaims the
    /// orphans and removes stray objects, so that no object a replayed command
    /// names is taken for a stray.
    ///
    /// `handle_base`: the first handle number of this process (see `HandleTable::new`).
    pub fn open(store: Arc<Store>, now: Time, handle_base: u64) -> FsResult<Applier> {
        let (applier, recovery) = Self::open_reporting(store, now, handle_base)?;
        if recovery.replayed + recovery.failed > 0 || recovery.scan.stopped.is_some() {
            tracing::info!(
                "journal: replayed {} commands and {} failures after index {}; end: {:?}",
                recovery.replayed,
                recovery.failed,
                recovery.from,
                recovery.scan.stopped
            );
        }
        Ok(applier)
    }

    /// [`Applier::open`], telling what recovery did.
    pub fn open_reporting(
        store: Arc<Store>,
        now: Time,
        handle_base: u64,
    ) -> FsResult<(Applier, Recovery)> {
        let mut sm = StateMachine::new(store.clone())?;
        let mut journal = Journal::open(store.dir())?;
        let recovery = replay(&mut sm, &journal)?;
        if recovery.replayed > 0 {
            // Replay rewrote object files through the page cache; they must be
            // on disk before the journal that could redo them is emptied.
            syncfs(store.dir())?;
        }
        sm.make_durable()?;
        journal.clear()?;
        sm.recover(now)?;
        let journal_file = journal.file();
        let applier = Applier {
            inner: Mutex::new(Inner::new(sm, journal, handle_base)),
            store,
            journal_file,
            replicated: false,
        };
        Ok((applier, recovery))
    }

    /// Opens the apply path of a Replica3 brick. The Raft log is its journal:
    /// openraft re-applies the entries after the store's applied position, so
    /// there is no journal replay here; orphans are not reclaimed here either,
    /// because a reclaim is a log entry the leader proposes (every member must
    /// change its brick the same way).
    pub fn open_replicated(store: Arc<Store>, handle_base: u64) -> FsResult<Applier> {
        let mut sm = StateMachine::new(store.clone())?;
        let journal = Journal::open(store.dir())?;
        if !journal.is_empty() {
            return Err(FsError::Store(
                "brick has a Replica1 journal; it cannot join a replica set".into(),
            ));
        }
        sm.sweep_strays()?;
        let journal_file = journal.file();
        Ok(Applier {
            inner: Mutex::new(Inner::new(sm, journal, handle_base)),
            store,
            journal_file,
            replicated: true,
        })
    }

    /// Replica3: applies the command at position `seq` of the Raft log (a
    /// log index and the command's place in its entry). `None`: already
    /// applied (openraft re-applies entries after a restart from the
    /// store's recorded position, and the store may be ahead of that).
    ///
    /// An append or a copy reads the object as it is, which after a crash may
    /// be ahead of the store; such a command is made durable at once, so a
    /// restart never re-applies it. Every other command sets bytes at fixed
    /// positions and converges when re-applied (`journal.rs`).
    pub fn apply_logged(&self, seq: u64, cmd: &Command) -> FsResult<Option<Outcome>> {
        let mut inner = self.lock();
        if seq <= inner.sm.last_index() {
            return Ok(None);
        }
        let result = inner.sm.apply_at(seq, cmd);
        let reads_objects = matches!(
            cmd.op,
            Operation::Write { append: true, .. } | Operation::CopyFileRange { .. }
        );
        if reads_objects {
            inner.sm.make_durable_fast()?;
        }
        result.map(Some)
    }

    /// Replica3: records the Raft position (`raft_meta` entries) after the
    /// commands before it, so a restart resumes from there.
    pub fn record_raft_meta(&self, entries: &[(&str, &[u8])]) -> FsResult<()> {
        let mut inner = self.lock();
        self.store.put_raft_meta(entries)?;
        inner.sm.mark_dirty();
        Ok(())
    }

    /// Runs `f` while no command is applied (Replica3 snapshots).
    pub fn exclusive<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        let _inner = self.lock();
        f(&self.store)
    }

    /// Runs `f` while no command is applied, once everything applied so far
    /// is durable (store and objects): Replica3 snapshots, after which the log
    /// before them may be purged.
    pub fn exclusive_durable<T>(&self, f: impl FnOnce(&Store) -> T) -> FsResult<T> {
        let mut inner = self.lock();
        syncfs(self.store.dir())?;
        inner.sm.make_durable()?;
        Ok(f(&self.store))
    }

    /// Replica3: after a snapshot replaced the store's content, the applied
    /// position is the snapshot's.
    pub fn reload_position(&self) -> FsResult<()> {
        let mut inner = self.lock();
        inner.sm = StateMachine::new(self.store.clone())?;
        inner.handles = HandleTable::new(rand::random::<u64>() >> 1);
        Ok(())
    }

    /// Replica3: registers a handle for a file the log just created.
    pub fn open_created(&self, attr: &Attr, flags: i32, client: u128) -> FsResult<u64> {
        let id = crate::prepare::parse_id(&attr.id)?;
        self.lock().handles.open(id, flags, client)
    }

    /// Replica3: drops a handle; true when the file must now be reclaimed
    /// (its last handle went and it has no name), which the caller proposes.
    pub fn release_replicated(&self, id: FileId, handle: u64) -> FsResult<bool> {
        let mut inner = self.lock();
        if inner.handles.release(handle, id).is_none() || inner.handles.is_open(id) {
            return Ok(false);
        }
        Ok(matches!(self.store.inode(id), Ok(rec) if rec.nlink == 0))
    }

    /// Whether any handle holds `id`.
    pub fn is_open(&self, id: FileId) -> bool {
        self.lock().handles.is_open(id)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while applying aborted that command's transaction (the
        // transaction is dropped), so the state behind the lock is sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one command, and reclaims the file it unlinked if no handle holds it.
    pub fn apply(&self, cmd: &Command) -> FsResult<Outcome> {
        let mut inner = self.lock();
        inner.apply(cmd)
    }

    /// The lock if it is free at once.
    fn try_lock(&self) -> Option<MutexGuard<'_, Inner>> {
        match self.inner.try_lock() {
            Ok(g) => Some(g),
            // As in `lock`: the state behind a poisoned lock is sound.
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// [`Applier::apply`] if the lock is free at once; `None` (nothing done)
    /// while another command or a checkpoint holds it.
    pub fn try_apply(&self, cmd: &Command) -> Option<FsResult<Outcome>> {
        Some(self.try_lock()?.apply(cmd))
    }

    /// Create (open with O_CREAT): applies and registers the handle atomically.
    pub fn create(&self, cmd: &Command, flags: i32, client: u128) -> FsResult<(Outcome, u64)> {
        let mut inner = self.lock();
        let outcome = inner.apply(cmd)?;
        let Outcome::Created { attr, .. } = &outcome else {
            return Err(FsError::Store("create produced no attributes".into()));
        };
        let id = crate::prepare::parse_id(&attr.id)?;
        let handle = inner.handles.open(id, flags, client)?;
        Ok((outcome, handle))
    }

    /// Opens an existing file, truncating it first if `truncate` is given.
    pub fn open_file(
        &self,
        id: FileId,
        flags: i32,
        client: u128,
        truncate: Option<&Command>,
    ) -> FsResult<(u64, Attr)> {
        let mut inner = self.lock();
        self.open_locked(&mut inner, id, flags, client, truncate)
    }

    /// [`Applier::open_file`] without a truncation, if the lock is free at once;
    /// `None` (nothing done) while a command or a checkpoint holds it.
    pub fn try_open_file(
        &self,
        id: FileId,
        flags: i32,
        client: u128,
    ) -> Option<FsResult<(u64, Attr)>> {
        let mut inner = self.try_lock()?;
        Some(self.open_locked(&mut inner, id, flags, client, None))
    }

    fn open_locked(
        &self,
        inner: &mut Inner,
        id: FileId,
        flags: i32,
        client: u128,
        truncate: Option<&Command>,
    ) -> FsResult<(u64, Attr)> {
        let rec = self.store.inode(id)?;
        if rec.file_kind() == FileKind::Directory && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(FsError::Os(libc::EISDIR));
        }
        // An orphan no handle holds is being reclaimed (Replica3 proposes the
        // reclaim after the unlink): it cannot be opened again.
        if rec.nlink == 0 && !inner.handles.is_open(id) {
            return Err(FsError::Os(libc::ENOENT));
        }
        let attr = match truncate {
            Some(cmd) => match inner.apply(cmd)? {
                Outcome::Attr(a) => a,
                _ => self.store.attr(id, &self.store.inode(id)?),
            },
            None => self.store.attr(id, &rec),
        };
        let handle = inner.handles.open(id, flags, client)?;
        Ok((handle, attr))
    }

    /// Drops a handle; the file is reclaimed if it was its last and the file has no name left.
    pub fn release(&self, id: FileId, handle: u64, now: Time) -> FsResult<()> {
        let mut inner = self.lock();
        self.release_locked(&mut inner, id, handle, now)
    }

    /// [`Applier::release`] if the lock is free at once; `None` (nothing done)
    /// while a command or a checkpoint holds it.
    pub fn try_release(&self, id: FileId, handle: u64, now: Time) -> Option<FsResult<()>> {
        let mut inner = self.try_lock()?;
        Some(self.release_locked(&mut inner, id, handle, now))
    }

    fn release_locked(
        &self,
        inner: &mut Inner,
        id: FileId,
        handle: u64,
        now: Time,
    ) -> FsResult<()> {
        if inner.handles.release(handle, id).is_none() || inner.handles.is_open(id) {
            return Ok(());
        }
        match self.store.inode(id) {
            Ok(rec) if rec.nlink == 0 => {
                inner.reclaim(id, now);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Number of open handles.
    pub fn open_handles(&self) -> usize {
        self.lock().handles.len()
    }

    /// Makes every applied change durable if any is not yet, and empties the
    /// journal.
    pub fn make_durable(&self) -> FsResult<()> {
        if self.replicated {
            // Without a journal of object data, the objects must be on disk
            // before the store says their commands are done: a power loss
            // would otherwise lose bytes the log no longer redoes. The first
            // sync, unlocked, flushes the bulk; the second, locked, what came
            // meanwhile.
            syncfs(self.store.dir())?;
            let mut inner = self.lock();
            if inner.sm.is_dirty() {
                syncfs(self.store.dir())?;
                inner.sm.make_durable()?;
            }
            return Ok(());
        }
        let mut inner = self.lock();
        if inner.sm.is_dirty() || !inner.journal.is_empty() {
            inner.checkpoint(true)?;
        }
        Ok(())
    }

    /// Makes everything durable and cuts the journal file back (at shutdown).
    pub fn close(&self) -> FsResult<()> {
        if self.replicated {
            return self.make_durable();
        }
        let mut inner = self.lock();
        inner.checkpoint(true)?;
        inner.journal.clear()
    }

    /// fsync(2): makes the file's data and every change before it durable
    /// (the file's metadata and every name change).
    ///
    /// Everything applied since the last checkpoint is in the journal, data
    /// included, so an fdatasync of the journal makes it durable: replay
    /// redoes it. The object file must be synced only when it holds changes
    /// from before the last checkpoint, which the journal no longer has. One
    /// sync instead of two is most of the cost of a small write + fsync. The
    /// next checkpoint, which empties the journal, syncs the objects whose
    /// durability rested on it first (`Inner::journal_durable`).
    ///
    /// Past [`FSYNC_JOURNAL_BYTES`] a checkpoint replaces the journal sync,
    /// because the journal also holds the data other files were written
    /// with, while a durable store commit writes metadata only.
    pub fn fsync(&self, id: FileId, _datasync: bool) -> FsResult<()> {
        let rec = self.store.inode(id)?;
        let mut inner = self.lock();
        let since = match rec.is_regular() {
            true => inner.unsynced.get(&id).copied(),
            false => None,
        };
        let untracked = rec.is_regular() && inner.untracked;
        if inner.journal.len() > FSYNC_JOURNAL_BYTES {
            if since.is_some() || untracked {
                inner.journal_durable.insert(id);
            }
            return inner.checkpoint(false);
        }
        let older = since.map_or(untracked, |e| e < inner.epoch);
        if older {
            inner.unsynced.remove(&id);
        } else if since.is_some() {
            inner.journal_durable.insert(id);
        }
        drop(inner);
        // The object's metadata lives in the store, so its data is enough.
        let object = match older {
            true => self.store.open_object_read(id)?,
            false => None,
        };
        let result = match object {
            // Whatever was appended by now is covered, and more does no harm.
            None => self.journal_file.sync_data().map_err(FsError::from),
            Some(f) => std::thread::scope(|s| {
                let data = s.spawn(move || f.sync_data());
                let journal = self.journal_file.sync_data();
                match data.join() {
                    Ok(r) => r?,
                    Err(_) => return Err(FsError::Store("object sync thread panicked".into())),
                }
                Ok(journal?)
            }),
        };
        if older {
            let mut inner = self.lock();
            match result.is_ok() {
                true => inner.object_syncs += 1,
                // Not synced after all: the next fsync tries again.
                false => {
                    inner.unsynced.insert(id, 0);
                }
            }
        }
        result
    }

    /// Object files synced so far, by fsync and by checkpoints.
    pub fn object_syncs(&self) -> u64 {
        self.lock().object_syncs
    }

    /// Sets the journal size that forces a checkpoint (tests use small ones).
    pub fn set_journal_limit(&self, bytes: u64) {
        self.lock().journal.set_limit(bytes);
    }

    /// Bytes in the journal now.
    pub fn journal_len(&self) -> u64 {
        self.lock().journal.len()
    }
}

/// Flushes every dirty page of the file system holding `dir`.
fn syncfs(dir: &std::path::Path) -> FsResult<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: a plain syscall on a descriptor we own for its duration.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Replays the journal entries after the store's applied index.
fn replay(sm: &mut StateMachine, journal: &Journal) -> FsResult<Recovery> {
    let from = sm.last_index();
    let mut pending: Option<(u64, Command)> = None;
    let (mut replayed, mut failed, mut refused) = (0, 0, 0);
    // A command that fails again failed the first time too, if the crash came
    // between the failure and its note: carry on either way (a store that is
    // really broken fails the durable commit that follows).
    let mut run = |sm: &mut StateMachine, index: u64, cmd: &Command| {
        replayed += 1;
        if let Err(e) = sm.apply_at(index, cmd) {
            refused += 1;
            match e {
                FsError::Os(_) => tracing::debug!("replayed command {index} failed: {e}"),
                _ => tracing::warn!("replayed command {index} failed: {e}"),
            }
        }
    };
    let scan = journal.scan(from, |index, record| match record {
        Record::Command(cmd) => {
            if let Some((i, c)) = pending.replace((index, cmd)) {
                run(sm, i, &c);
            }
            Ok(())
        }
        Record::Failed(errno) => {
            // The scan hands on a failure note only right after its command.
            let (i, c) = pending
                .take()
                .ok_or_else(|| FsError::Store("journal failure note without its command".into()))?;
            failed += 1;
            sm.replay_failed(i, &c, errno)
        }
    })?;
    if let Some((i, c)) = pending.take() {
        run(sm, i, &c);
    }
    match &scan.stopped {
        None | Some(Stop::Stale { .. }) => {}
        Some(stop @ (Stop::Torn | Stop::Corrupt)) => {
            tracing::info!("journal ends in a partial or damaged frame ({stop:?})")
        }
        Some(stop @ Stop::OutOfOrder { .. }) => {
            tracing::error!("journal entries missing ({stop:?}); replayed up to the gap")
        }
    }
    Ok(Recovery {
        from,
        replayed,
        failed,
        refused,
        scan,
    })
}

impl Inner {
    fn new(sm: StateMachine, journal: Journal, handle_base: u64) -> Inner {
        Inner {
            sm,
            journal,
            handles: HandleTable::new(handle_base),
            copy_sources: HashSet::new(),
            epoch: 1,
            unsynced: HashMap::new(),
            untracked: false,
            journal_durable: HashSet::new(),
            object_syncs: 0,
        }
    }

    /// Journals and applies one command; reclaims the file it unlinked if no
    /// handle holds it.
    fn apply(&mut self, cmd: &Command) -> FsResult<Outcome> {
        let outcome = self.submit(cmd)?;
        if let Outcome::Removed { orphan: Some(id) } = outcome {
            if !self.handles.is_open(id) {
                self.reclaim(id, cmd.now);
            }
        }
        Ok(outcome)
    }

    fn submit(&mut self, cmd: &Command) -> FsResult<Outcome> {
        let resolved = self.resolve(cmd)?;
        let cmd = resolved.as_ref().unwrap_or(cmd);
        if self.needs_barrier(cmd)? {
            self.checkpoint(false)?;
        }
        let index = self.sm.next_index();
        // On error the command is neither journalled nor applied.
        self.journal.append(index, RecordRef::Command(cmd))?;
        let result = self.sm.apply_at(index, cmd);
        match &result {
            Ok(outcome) => {
                if let Operation::CopyFileRange { id_in, .. } = cmd.op {
                    self.copy_sources.insert(id_in);
                }
                self.note_unsynced(cmd, outcome);
            }
            Err(e) => {
                let answer = e.is_answer().then(|| e.errno());
                if let Err(j) = self.journal.append(index, RecordRef::Failed(answer)) {
                    // Without the note a replay would run the command again;
                    // after a checkpoint it is never replayed.
                    if let Err(c) = self.checkpoint(false) {
                        tracing::error!(
                            "noting a failure in the journal ({j}) and a checkpoint failed: {c}"
                        );
                    }
                }
            }
        }
        if self.journal.wants_checkpoint() {
            if let Err(e) = self.checkpoint(false) {
                tracing::warn!("checkpoint of a full journal: {e}");
            }
        }
        result
    }

    /// Records which object `cmd` changed, for `Applier::fsync`.
    fn note_unsynced(&mut self, cmd: &Command, outcome: &Outcome) {
        let (id, since) = match &cmd.op {
            Operation::Write { id, .. }
            | Operation::Truncate { id }
            | Operation::Fallocate { id, .. }
            | Operation::SetAttr {
                id, size: Some(_), ..
            } => (*id, self.epoch),
            // The journal holds a copy without its bytes, and a replay reads
            // them from a source that may not be on disk: only syncing the
            // destination makes it durable.
            Operation::CopyFileRange { id_out, .. } => (*id_out, 0),
            Operation::Create { truncate: true, .. } => match outcome {
                Outcome::Created { attr, .. } => match crate::prepare::parse_id(&attr.id) {
                    Ok(id) => (id, self.epoch),
                    Err(_) => return,
                },
                _ => return,
            },
            Operation::Reclaim { id } => {
                self.unsynced.remove(id);
                return;
            }
            _ => return,
        };
        if self.unsynced.len() >= MAX_TRACKED_UNSYNCED && !self.unsynced.contains_key(&id) {
            self.untracked = true;
            return;
        }
        let entry = self.unsynced.entry(id).or_insert(since);
        *entry = (*entry).min(since);
    }

    /// Fixes what a replay could not reproduce from the command alone.
    fn resolve(&self, cmd: &Command) -> FsResult<Option<Command>> {
        let store = self.sm.store();
        let op = match &cmd.op {
            Operation::Write {
                id,
                data,
                append: true,
                ..
            } => Operation::Write {
                id: *id,
                offset: store.object_size(*id)?,
                data: data.clone(),
                append: false,
            },
            Operation::CopyFileRange {
                id_in,
                offset_in,
                id_out,
                offset_out,
                length,
            } => {
                let size = store.object_size(*id_in)?;
                let available = size.saturating_sub(*offset_in);
                // Past the end the kernel decides (0 bytes, or its errno); leave that alone.
                if available == 0 || *length <= available.min(MAX_COPY) {
                    return Ok(None);
                }
                Operation::CopyFileRange {
                    id_in: *id_in,
                    offset_in: *offset_in,
                    id_out: *id_out,
                    offset_out: *offset_out,
                    length: available.min(MAX_COPY),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(Command {
            request: cmd.request,
            now: cmd.now,
            op,
        }))
    }

    /// Whether the store must be made durable before `cmd` is journalled (see
    /// "Why replaying onto newer object files converges" in `journal.rs`).
    fn needs_barrier(&self, cmd: &Command) -> FsResult<bool> {
        if let Operation::CopyFileRange { id_in, id_out, .. } = cmd.op {
            if id_in == id_out && !self.journal.is_empty() {
                return Ok(true);
            }
        }
        if self.copy_sources.is_empty() {
            return Ok(false);
        }
        let changed = match &cmd.op {
            Operation::Write { id, .. }
            | Operation::Truncate { id }
            | Operation::Fallocate { id, .. }
            | Operation::SetAttr {
                id, size: Some(_), ..
            } => Some(*id),
            Operation::CopyFileRange { id_out, .. } => Some(*id_out),
            Operation::Create {
                parent,
                name,
                exclusive: false,
                truncate: true,
                ..
            } => self.sm.store().entry_id(*parent, name)?,
            _ => None,
        };
        Ok(changed.is_some_and(|id| self.copy_sources.contains(&id)))
    }

    /// Makes the store durable and empties the journal.
    fn checkpoint(&mut self, quick_repair: bool) -> FsResult<()> {
        // Before the store says the journal's commands are done with: an
        // fsync'd file whose data the journal held must not lose it when
        // replay starts after them.
        for id in std::mem::take(&mut self.journal_durable) {
            let synced = match self.sm.store().open_object_read(id) {
                Ok(Some(f)) => {
                    self.object_syncs += 1;
                    f.sync_data().map_err(FsError::from)
                }
                Ok(None) | Err(FsError::Os(libc::ENOENT)) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                self.journal_durable.insert(id);
                return Err(e);
            }
            self.unsynced.remove(&id);
        }
        match quick_repair {
            true => self.sm.make_durable()?,
            false => self.sm.make_durable_fast()?,
        }
        self.journal.rewind();
        self.copy_sources.clear();
        self.epoch += 1;
        Ok(())
    }

    /// Reclaims an orphan; a failure leaves it for the next start.
    fn reclaim(&mut self, id: FileId, now: Time) {
        let cmd = Command {
            request: None,
            now,
            op: Operation::Reclaim { id },
        };
        if let Err(e) = self.submit(&cmd) {
            tracing::warn!("reclaiming {id}: {e}");
        }
    }
}
