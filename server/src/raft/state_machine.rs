//! The Raft state machine of a brick: committed entries are applied, in log
//! order, through the brick's one apply path (`Applier::apply_logged`), and
//! snapshots are whole-brick archives (`snapshot.rs`).
//!
//! Where a restart resumes: each command records its log position
//! (`index << 8 | place in the entry`) in the store with its change, and after
//! each call the last applied log id (and the membership, when an entry changed it) go into `raft_meta`.
//! openraft re-applies from the recorded log id; commands the store already
//! reflects are skipped by position, so re-applying is harmless.
//!
//! Faults are not answers: a command that fails with a file-system errno
//! (ENOENT, EEXIST, ...) fails the same way on every member and is an
//! outcome; anything else (EIO, a full disk, a store error) is this brick's
//! own trouble, and applying on regardless would let it diverge silently.
//! Such an error stops this node's Raft (openraft treats a storage error as
//! fatal); the brick reports itself faulty and the other two carry on.

// openraft's `StorageError` is what its storage traits must return; the
// helpers here return it too rather than box it only to unbox it again.
#![allow(clippy::result_large_err)]

use crate::applier::Applier;
use crate::ops::Outcome;
use crate::raft::snapshot;
use crate::raft::types::{
    decode, encode, Applied, Entry, LogId, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, MAX_BATCH_COMMANDS,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `raft_meta` key: the last applied log id.
const APPLIED: &str = "applied";
/// `raft_meta` key: the membership as of the last applied membership entry.
const MEMBERSHIP: &str = "membership";
/// The archive a lagging member gets, and its metadata.
const CURRENT_META: &str = "current.meta";
const CURRENT_DATA: &str = "current.snap";
/// The position of the last snapshot openraft had built: the store is
/// durable there, so the log before it may go.
const POINT_META: &str = "point.meta";

/// A command's position in the store's applied order: its entry's index and
/// its place in the entry.
pub fn command_seq(index: u64, place: usize) -> u64 {
    (index << 8) | place as u64
}

const _: () = assert!(MAX_BATCH_COMMANDS <= 256);

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// Why this brick stopped applying, once it did (reported by `Status`).
pub type FaultSlot = Arc<Mutex<Option<String>>>;

/// The state machine openraft drives.
///
/// Snapshots come in two halves. openraft builds one every `--snapshot-every`
/// entries so it may purge the log: that only needs the store durable at a
/// known position (a "point", cheap). The archive a lagging member needs is
/// made when one asks for it (`get_current_snapshot`), so a brick does not
/// pause its writes to copy itself every few thousand entries.
pub struct BrickStateMachine {
    applier: Arc<Applier>,
    /// `BRICK/raft/snapshots`: the current snapshot and incoming ones.
    dir: PathBuf,
    fault: FaultSlot,
    /// openraft 0.9 reads the current snapshot once at start for its
    /// metadata only (`storage/helper.rs`); that read gets the point without
    /// an archive. Every later read is for sending one.
    started: bool,
}

impl BrickStateMachine {
    pub fn new(applier: Arc<Applier>, raft_dir: &Path, fault: FaultSlot) -> std::io::Result<Self> {
        let dir = raft_dir.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        // Incoming snapshots a crash interrupted are of no use.
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("incoming-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(BrickStateMachine {
            applier,
            dir,
            fault,
            started: false,
        })
    }

    fn set_fault(&self, why: String) {
        tracing::error!("brick faulty, leaving the replica set's writes to the others: {why}");
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

/// Reads the recorded applied log id and membership of a brick.
fn recorded_state(applier: &Applier) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let store = applier.store();
    let applied = match store.raft_meta(APPLIED).map_err(read_err)? {
        Some(b) => decode::<Option<LogId>>(&b).map_err(read_err)?,
        None => None,
    };
    let membership = match store.raft_meta(MEMBERSHIP).map_err(read_err)? {
        Some(b) => decode::<StoredMembership>(&b).map_err(read_err)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Records the applied log id, and the membership when it changed.
fn record_state(
    applier: &Applier,
    applied: &Option<LogId>,
    membership: Option<&StoredMembership>,
) -> Result<(), StorageError> {
    let a = encode(applied).map_err(io_err)?;
    match membership {
        Some(m) => {
            let m = encode(m).map_err(io_err)?;
            applier.record_raft_meta(&[(APPLIED, &a), (MEMBERSHIP, &m)])
        }
        None => applier.record_raft_meta(&[(APPLIED, &a)]),
    }
    .map_err(io_err)
}

/// Applies entries in order; the blocking half of `apply`.
fn apply_entries(applier: &Applier, entries: Vec<Entry>) -> Result<Vec<Applied>, StorageError> {
    // Membership entries are rare: it is written only when one is applied,
    // not read and rewritten with every batch.
    let mut membership = None;
    let mut last = None;
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = entry.log_id;
        match entry.payload {
            EntryPayload::Blank => replies.push(Applied::default()),
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(log_id), m));
                replies.push(Applied::default());
            }
            EntryPayload::Normal(batch) => {
                let mut out = Vec::with_capacity(batch.cmds.len());
                for (place, cmd) in batch.cmds.iter().enumerate() {
                    let seq = command_seq(log_id.index, place);
                    match applier.apply_logged(seq, cmd) {
                        Ok(Some(o)) => out.push(Ok(o)),
                        // Applied before a restart; nobody waits for its answer.
                        Ok(None) => out.push(Ok(Outcome::Done)),
                        Err(e) if e.is_answer() => out.push(Err(e.errno())),
                        Err(e) => {
                            // Record what was applied so far, then stop.
                            let _ = record_state(applier, &last, membership.as_ref());
                            return Err(StorageIOError::apply(log_id, &e).into());
                        }
                    }
                }
                replies.push(Applied(out));
            }
        }
        last = Some(log_id);
    }
    if last.is_some() {
        record_state(applier, &last, membership.as_ref())?;
    }
    Ok(replies)
}

impl RaftStateMachine<TypeConfig> for BrickStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applier = self.applier.clone();
        tokio::task::spawn_blocking(move || recorded_state(&applier))
            .await
            .map_err(read_err)?
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let applier = self.applier.clone();
        let result = tokio::task::spawn_blocking(move || apply_entries(&applier, entries))
            .await
            .map_err(io_err)?;
        if let Err(e) = &result {
            self.set_fault(e.to_string());
        }
        result
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            applier: self.applier.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // Unlinked: nothing is left behind if the transfer never finishes.
        Ok(Box::new(unlinked_file(&self.dir, "incoming").await?))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let applier = self.applier.clone();
        let meta = meta.clone();
        let dir = self.dir.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let mut file = file;
            use std::io::Seek;
            file.rewind().map_err(snap_err)?;
            let stats = applier
                .exclusive(|store| snapshot::install_archive(store, &mut file))
                .map_err(snap_err)?;
            applier.reload_position().map_err(snap_err)?;
            record_state(&applier, &meta.last_log_id, Some(&meta.last_membership))?;
            applier.make_durable().map_err(snap_err)?;
            tracing::info!(
                "installed snapshot {} ({} rows, {} objects, {} bytes)",
                meta.snapshot_id,
                stats.rows,
                stats.objects,
                stats.bytes
            );
            // Kept as this brick's current snapshot, to serve on if it leads.
            file.rewind().map_err(snap_err)?;
            let tmp = dir.join("current.snap.tmp");
            let mut out = std::fs::File::create(&tmp).map_err(snap_err)?;
            std::io::copy(&mut file, &mut out).map_err(snap_err)?;
            out.sync_all().map_err(snap_err)?;
            std::fs::rename(&tmp, dir.join(CURRENT_DATA)).map_err(snap_err)?;
            write_meta(&dir, CURRENT_META, &meta)?;
            write_meta(&dir, POINT_META, &meta)?;
            Ok(())
        })
        .await
        .map_err(snap_err)?;
        if let Err(e) = &result {
            self.set_fault(format!("installing a snapshot: {e}"));
        }
        result
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.dir.clone();
        let first = !std::mem::replace(&mut self.started, true);
        let Some(point) = read_meta(&dir, POINT_META)? else {
            return Ok(None);
        };
        if first {
            return Ok(Some(Snapshot {
                meta: point,
                snapshot: Box::new(empty_file(&dir).await?),
            }));
        }
        // An archive at or after the point serves: the log after it is kept.
        let current = read_meta(&dir, CURRENT_META)?;
        let index = |m: &SnapshotMeta| m.last_log_id.map_or(0, |l| l.index);
        let meta = match current {
            Some(c) if index(&c) >= index(&point) && dir.join(CURRENT_DATA).exists() => c,
            _ => {
                let applier = self.applier.clone();
                let d = dir.clone();
                tokio::task::spawn_blocking(move || build_archive(&applier, &d))
                    .await
                    .map_err(snap_err)??
            }
        };
        let f = tokio::fs::File::open(dir.join(CURRENT_DATA))
            .await
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

fn read_meta(dir: &Path, name: &str) -> Result<Option<SnapshotMeta>, StorageError> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => decode::<SnapshotMeta>(&b)
            .map(Some)
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageIOError::read_snapshot(None, &e).into()),
    }
}

/// An empty, already unlinked file: the data of a snapshot nobody sends.
async fn empty_file(dir: &Path) -> Result<tokio::fs::File, StorageError> {
    unlinked_file(dir, "empty").await
}

/// A new file in `dir`, open for reading and writing and already unlinked:
/// its descriptor keeps it, and no crash leaves it behind.
async fn unlinked_file(dir: &Path, prefix: &str) -> Result<tokio::fs::File, StorageError> {
    let path = dir.join(format!("{prefix}-{:016x}", rand::random::<u64>()));
    let f = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .await
        .map_err(snap_err)?;
    tokio::fs::remove_file(&path).await.map_err(snap_err)?;
    Ok(f)
}

fn snapshot_meta(applied: Option<LogId>, membership: StoredMembership) -> SnapshotMeta {
    let id = match &applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "0-0-0".to_string(),
    };
    SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: id,
    }
}

/// Archives the whole brick at its applied position, with the applier
/// paused (after a durable commit there), as the current snapshot.
fn build_archive(applier: &Applier, dir: &Path) -> Result<SnapshotMeta, StorageError> {
    let tmp = dir.join("current.snap.tmp");
    let mut out = std::fs::File::create(&tmp).map_err(snap_err)?;
    applier.make_durable().map_err(snap_err)?;
    let (meta, stats) = applier
        .exclusive_durable(|store| {
            let (applied, membership) = recorded_state(applier)?;
            let stats = snapshot::write_archive(store, &mut out).map_err(snap_err)?;
            Ok::<_, StorageError>((snapshot_meta(applied, membership), stats))
        })
        .map_err(snap_err)??;
    out.sync_all().map_err(snap_err)?;
    std::fs::rename(&tmp, dir.join(CURRENT_DATA)).map_err(snap_err)?;
    write_meta(dir, CURRENT_META, &meta)?;
    tracing::info!(
        "archived the brick for snapshot {} ({} rows, {} objects, {} bytes)",
        meta.snapshot_id,
        stats.rows,
        stats.objects,
        stats.bytes
    );
    Ok(meta)
}

fn write_meta(dir: &Path, name: &str, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let bytes = encode(meta).map_err(snap_err)?;
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(snap_err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(snap_err)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(snap_err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(snap_err)?;
    Ok(())
}

/// Builds openraft's periodic snapshots: the store made durable at its
/// applied position (openraft then purges the log before it, so a restart
/// must never need to re-apply anything earlier). No archive: see
/// [`BrickStateMachine`].
pub struct SnapshotBuilder {
    applier: Arc<Applier>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applier = self.applier.clone();
        let dir = self.dir.clone();
        let meta = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta, StorageError> {
            applier.make_durable().map_err(snap_err)?;
            let (applied, membership) = applier
                .exclusive_durable(|_| recorded_state(&applier))
                .map_err(snap_err)??;
            let meta = snapshot_meta(applied, membership);
            write_meta(&dir, POINT_META, &meta)?;
            // An older archive is a whole copy of the brick nobody needs
            // any more (a send in progress keeps its open file); the next
            // member that needs one gets a fresh one.
            let index = |m: &SnapshotMeta| m.last_log_id.map_or(0, |l| l.index);
            if let Some(current) = read_meta(&dir, CURRENT_META)? {
                if index(&current) < index(&meta) {
                    let _ = std::fs::remove_file(dir.join(CURRENT_DATA));
                    let _ = std::fs::remove_file(dir.join(CURRENT_META));
                }
            }
            tracing::debug!("snapshot point {}", meta.snapshot_id);
            Ok(meta)
        })
        .await
        .map_err(snap_err)??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(empty_file(&self.dir).await?),
        })
    }
}
