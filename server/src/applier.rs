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
use std::collections::HashSet;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

/// Journal size above which an fsync checkpoints instead of syncing the
/// journal: about what a durable store commit costs in journal writes.
pub const FSYNC_JOURNAL_BYTES: u64 = 1 << 20;

struct Inner {
    sm: StateMachine,
    journal: Journal,
    handles: HandleTable,
    /// Objects read by copies journalled since the last checkpoint: changing
    /// one needs a checkpoint first, so that a replayed copy reads what the
    /// original read.
    copy_sources: HashSet<FileId>,
}

/// Serialises all changes to one brick.
pub struct Applier {
    inner: Mutex<Inner>,
    store: Arc<Store>,
    /// The journal's file, synced by `fsync` without taking the lock.
    journal_file: Arc<File>,
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
        sm.make_durable()?;
        journal.clear()?;
        sm.recover(now)?;
        let journal_file = journal.file();
        let applier = Applier {
            inner: Mutex::new(Inner {
                sm,
                journal,
                handles: HandleTable::new(handle_base),
                copy_sources: HashSet::new(),
            }),
            store,
            journal_file,
        };
        Ok((applier, recovery))
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
        let rec = self.store.inode(id)?;
        if rec.file_kind() == FileKind::Directory && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(FsError::Os(libc::EISDIR));
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
        let mut inner = self.lock();
        if inner.sm.is_dirty() || !inner.journal.is_empty() {
            inner.checkpoint(true)?;
        }
        Ok(())
    }

    /// Makes everything durable and cuts the journal file back (at shutdown).
    pub fn close(&self) -> FsResult<()> {
        let mut inner = self.lock();
        inner.checkpoint(true)?;
        inner.journal.clear()
    }

    /// fsync(2): the file's data, side by side with making every change
    /// before it durable (the file's metadata and every name change). That is
    /// an fdatasync of the journal while the journal is small; past
    /// [`FSYNC_JOURNAL_BYTES`] it is a checkpoint instead, because the journal
    /// also holds the data other files were written with, and syncing it would
    /// write all of that out, while a durable store commit writes metadata
    /// only (and empties the journal). The journal sync takes no lock.
    pub fn fsync(&self, id: FileId, datasync: bool) -> FsResult<()> {
        let rec = self.store.inode(id)?;
        let object = match rec.is_regular() {
            true => self.store.open_object_read(id)?,
            false => None,
        };
        std::thread::scope(|s| {
            let data = object.map(|f| {
                s.spawn(move || match datasync {
                    true => f.sync_data(),
                    false => f.sync_all(),
                })
            });
            let meta = self.sync_metadata();
            if let Some(h) = data {
                match h.join() {
                    Ok(r) => r?,
                    Err(_) => return Err(FsError::Store("object sync thread panicked".into())),
                }
            }
            meta
        })
    }

    /// Makes every change applied so far durable, the cheaper way (see `fsync`).
    fn sync_metadata(&self) -> FsResult<()> {
        let mut inner = self.lock();
        if inner.journal.len() > FSYNC_JOURNAL_BYTES {
            return inner.checkpoint(false);
        }
        drop(inner);
        // Whatever was appended by now is covered, and more does no harm.
        Ok(self.journal_file.sync_data()?)
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
            Ok(_) => {
                if let Operation::CopyFileRange { id_in, .. } = cmd.op {
                    self.copy_sources.insert(id_in);
                }
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
        match quick_repair {
            true => self.sm.make_durable()?,
            false => self.sm.make_durable_fast()?,
        }
        self.journal.rewind();
        self.copy_sources.clear();
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
