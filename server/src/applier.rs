//! The single entry point for changes: every mutation the service receives is
//! applied here, one at a time, in the order it arrives. A replication log
//! will sit in front of this later; today the order is simply a mutex.
//!
//! The applier also owns the open-handle table, because whether an unlinked
//! file is reclaimed depends on it: the check and the reclaim happen under the
//! same lock as the unlink and the release, so no open can slip in between.

use crate::apply::StateMachine;
use crate::error::{FsError, FsResult};
use crate::handles::HandleTable;
use crate::ops::{Command, Operation, Outcome};
use crate::records::Time;
use crate::store::Store;
use kadalu_proto::brick::{Attr, FileKind};
use kadalu_proto::FileId;
use std::sync::{Arc, Mutex, MutexGuard};

struct Inner {
    sm: StateMachine,
    handles: HandleTable,
}

/// Serialises all changes to one brick.
pub struct Applier {
    inner: Mutex<Inner>,
    store: Arc<Store>,
}

impl Applier {
    /// `handle_base`: the first handle number of this process (see `HandleTable::new`).
    pub fn new(sm: StateMachine, handle_base: u64) -> Self {
        let store = sm.store().clone();
        Applier {
            inner: Mutex::new(Inner {
                sm,
                handles: HandleTable::new(handle_base),
            }),
            store,
        }
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
    pub fn open(
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

    /// Makes every applied change durable if any is not yet.
    pub fn make_durable(&self) -> FsResult<()> {
        let mut inner = self.lock();
        if inner.sm.is_dirty() {
            inner.sm.make_durable()?;
        }
        Ok(())
    }

    /// fsync(2): the file's data and the metadata store, synced side by
    /// side (the two syncs share the file system's journal commits, so this
    /// costs about one sync, not two).
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
            let meta = {
                let mut inner = self.lock();
                match inner.sm.is_dirty() {
                    true => inner.sm.make_durable_fast(),
                    false => Ok(()),
                }
            };
            if let Some(h) = data {
                match h.join() {
                    Ok(r) => r?,
                    Err(_) => return Err(FsError::Store("object sync thread panicked".into())),
                }
            }
            meta
        })
    }
}

impl Inner {
    fn apply(&mut self, cmd: &Command) -> FsResult<Outcome> {
        let outcome = self.sm.apply(cmd)?;
        if let Outcome::Removed { orphan: Some(id) } = outcome {
            if !self.handles.is_open(id) {
                self.reclaim(id, cmd.now);
            }
        }
        Ok(outcome)
    }

    /// Reclaims an orphan; a failure leaves it for the next start.
    fn reclaim(&mut self, id: FileId, now: Time) {
        let cmd = Command {
            request: None,
            now,
            op: Operation::Reclaim { id },
        };
        if let Err(e) = self.sm.apply(&cmd) {
            tracing::warn!("reclaiming {id}: {e}");
        }
    }
}
