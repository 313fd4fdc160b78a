//! The durable Raft log and vote of one brick (openraft's `RaftLogStorage`).
//!
//! # Why a log of its own
//!
//! Raft's safety rests on two promises of every member: a vote, once given,
//! survives a crash (or the member could vote twice in a term), and an entry
//! the member acknowledged to the leader survives a crash (or an entry a
//! majority "holds" could be lost). Entries carry file data (up to a MiB
//! each), so the log is a sequence of append-only files rather than a table
//! of the metadata store: appends are sequential writes, purging a prefix is
//! an unlink, and memory holds only where each entry is, never the entries.
//!
//! # Format
//!
//! In the brick's `raft/` log directory:
//!
//! ```text
//! vote                      one frame: encode(&Vote)
//! purged                    one frame: encode(&LogId), the last purged entry
//! log-<first index:020>.seg frames of entries, the file named by its first one
//!
//! frame = [u32 len][u32 crc32][len bytes: encode(&Entry)]   (little endian)
//! ```
//!
//! The crc covers the `len` bytes and the payload, so a damaged length is
//! caught as well as damaged data. `vote` and `purged` are replaced whole
//! (write a temporary file, fsync, rename, fsync the directory), so they are
//! either the old or the new value after a crash, never a mix.
//!
//! # Durability
//!
//! With `sync` (the default) an append is reported flushed to openraft only
//! once its segment is `fdatasync`ed, by a dedicated I/O thread that syncs
//! several appends at once when they queue up (group commit) and reports them
//! in order. Without `sync` the report follows the write(2): a killed process
//! loses nothing, a power loss may lose the tail. The vote and the purge point
//! are always fsynced, and truncation is durable before it returns, because an
//! entry of an old term that reappears after a crash could contradict the
//! new leader.
//!
//! When a segment is full it is synced before the next one gets data, in both
//! modes, so after any crash only the last segment can have a torn end.
//!
//! # Recovery
//!
//! Opening scans every segment. In the last segment, a frame that is torn
//! (short, zeroed, or holding a zeroed sector) or the damaged last frame is
//! cut off with everything after it: no sync completed after it was written,
//! so neither it nor anything later was acknowledged. Any other damage, a gap
//! in indices or a term that goes down is an error: the brick must not take
//! part in Raft with a log it cannot trust (wipe it and let it rejoin as a
//! new node). Segments whose entries are all purged are deleted, finishing a
//! purge a crash interrupted.

use crate::raft::types::{decode, encode, Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use kadalu_proto::MAX_RAFT_MESSAGE_SIZE;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageIOError,
};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Debug};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

/// A segment is closed once it holds this much (it may pass it by one entry).
const SEGMENT_BYTES: u64 = 64 << 20;

/// `[u32 len][u32 crc32]`.
const HEADER: u64 = 8;

/// Largest payload a frame may declare; anything larger is damage, and
/// bounds what recovery allocates for one frame.
const MAX_FRAME: u64 = MAX_RAFT_MESSAGE_SIZE as u64;

/// The vote and the purge point are a few dozen bytes; a larger file is not
/// ours.
const MAX_SMALL_FILE: u64 = 4096;

/// Bytes of entries one `limited_get_log_entries` returns (at least one
/// entry): the append-entries request carrying them must stay below
/// `MAX_RAFT_MESSAGE_SIZE`, and openraft asks for up to
/// `max_payload_entries` entries of up to a MiB each.
const READ_BUDGET: u64 = MAX_RAFT_MESSAGE_SIZE as u64 / 2;

/// Most bytes one pread of consecutive frames reads.
const READ_CHUNK: u64 = 8 << 20;

/// The granularity a torn write shows as zeros at.
const SECTOR: u64 = 512;

const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";

/// The Raft log and vote of one brick. Clones share the same state (the
/// clone is also openraft's log reader); only one of them may write.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    io: mpsc::Sender<Job>,
    sync: bool,
}

/// Where one entry is.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Loc {
    /// The segment's key (its first index).
    seg: u64,
    /// Of the frame's header.
    offset: u64,
    /// Of the payload.
    len: u32,
    log_id: LogId,
    /// Frame bytes of all entries up to and including this one, from an
    /// arbitrary origin: differences give the size of a range in O(1).
    end: u64,
}

impl Loc {
    fn frame_len(&self) -> u64 {
        HEADER + u64::from(self.len)
    }
}

struct Segment {
    file: Arc<File>,
    len: u64,
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// Every entry after `purged`, consecutive.
    locs: VecDeque<Loc>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    /// Set when a write or sync failed: what is on disk is then unknown
    /// (a failed fsync may have dropped dirty pages), so no further write is
    /// accepted; reopening recovers from what the disk really holds.
    broken: Option<String>,
}

/// Work for the I/O thread, done in the order queued.
enum Job {
    /// Make appended frames durable (and the directory, when the append
    /// created a segment), then report.
    Sync {
        files: Vec<Arc<File>>,
        dir: bool,
        done: Done,
    },
    /// A write that must not overtake the syncs queued before it.
    Run(Box<dyn FnOnce() + Send>),
}

type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// What a truncation left to do once the in-memory state is updated.
#[derive(Default)]
struct Truncated {
    /// Segments were deleted: sync the directory.
    deleted: bool,
    /// Cut this segment at this length.
    cut: Option<(Arc<File>, u64)>,
}

/// What an append left to sync.
#[derive(Default)]
struct Pending {
    files: Vec<Arc<File>>,
    dir: bool,
}

impl LogStore {
    /// Opens (creating if missing) the log in `dir`, recovering from a crash.
    /// `sync`: acknowledge appends only once they are on stable storage.
    pub fn open(dir: &Path, sync: bool) -> Result<LogStore, io::Error> {
        Self::open_with(dir, sync, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, sync: bool, segment_bytes: u64) -> Result<LogStore, io::Error> {
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            // The directory entry must last as long as what goes in it.
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => sync_dir(p)?,
                _ => sync_dir(Path::new("."))?,
            }
        }
        for name in [VOTE_FILE, PURGED_FILE] {
            match fs::remove_file(dir.join(format!("{name}.tmp"))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let vote: Option<Vote> = read_small(dir, VOTE_FILE)?;
        let purged: Option<LogId> = read_small(dir, PURGED_FILE)?;
        let (segments, locs) = recover(dir, purged)?;
        let inner = Arc::new(Mutex::new(Inner {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            segments,
            locs,
            purged,
            vote,
            broken: None,
        }));
        let (tx, rx) = mpsc::channel();
        let thread_inner = inner.clone();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("raft-log-io".into())
            .spawn(move || io_thread(rx, thread_inner, dir))?;
        Ok(LogStore {
            inner,
            io: tx,
            sync,
        })
    }

    /// Bytes of all segment files (including purged entries that share a
    /// segment with live ones).
    pub fn disk_bytes(&self) -> u64 {
        self.lock().segments.values().map(|s| s.len).sum()
    }

    /// Frame bytes of the entries with index in `(after_index, upto_index]`
    /// that the log holds: what a member that has `after_index` still needs.
    pub fn bytes_between(&self, after_index: u64, upto_index: u64) -> u64 {
        let g = self.lock();
        let (Some(first), Some(last)) = (g.locs.front(), g.locs.back()) else {
            return 0;
        };
        let hi = upto_index.min(last.log_id.index);
        if hi <= after_index || hi < first.log_id.index {
            return 0;
        }
        let base = first.log_id.index;
        let hi_end = g.locs[(hi - base) as usize].end;
        let lo_end = if after_index < base {
            first.end - first.frame_len()
        } else {
            g.locs[(after_index - base) as usize].end
        };
        hi_end - lo_end
    }

    /// Index of the first entry the log holds (after the purged ones).
    pub fn first_index(&self) -> Option<u64> {
        self.lock().locs.front().map(|l| l.log_id.index)
    }

    /// Index of the last entry the log holds; `None` when it holds none,
    /// even if entries were purged (see `get_log_state` for that).
    pub fn last_index(&self) -> Option<u64> {
        self.lock().locs.back().map(|l| l.log_id.index)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Writes `entries` (readable once this returns) and calls `done` once
    /// they are as durable as the store promises.
    fn append_then<I>(&self, entries: I, done: Done) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry>,
    {
        // Encoded before taking the lock: entries can be a MiB each.
        let encoded = entries
            .into_iter()
            .map(|e| {
                encode(&e)
                    .map(|b| (e.log_id, b))
                    .map_err(|err| invalid_input(format!("encoding entry {}: {err}", e.log_id)))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let pending = self.lock().append(encoded)?;
        if !self.sync {
            done(Ok(()));
            return Ok(());
        }
        // Even an empty append goes through the queue, so reports stay in
        // order.
        self.io
            .send(Job::Sync {
                files: pending.files,
                dir: pending.dir,
                done,
            })
            .map_err(|_| io_thread_gone())
    }

    /// Runs `f` on the I/O thread after every sync queued before it.
    async fn run_io<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Mutex<Inner>>) -> io::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        self.io
            .send(Job::Run(Box::new(move || {
                let _ = tx.send(f(&inner));
            })))
            .map_err(|_| io_thread_gone())?;
        rx.await.map_err(|_| io_thread_gone())?
    }

    async fn read_blocking(
        &self,
        start: u64,
        end: u64,
        budget: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read(start, end, budget))
            .await
            .map_err(|e| read_err(io::Error::other(e.to_string())))?
            .map_err(read_err)
    }

    /// The entries with index in `[start, end)` that the log holds, up to
    /// `budget` frame bytes (at least one entry).
    fn read(&self, start: u64, end: u64, budget: Option<u64>) -> io::Result<Vec<Entry>> {
        let plan = self.lock().plan_read(start, end, budget)?;
        let mut out = Vec::with_capacity(plan.len());
        let mut i = 0;
        while i < plan.len() {
            // One pread for a run of adjacent frames of one segment.
            let (file, first) = &plan[i];
            let mut j = i + 1;
            let mut run_end = first.offset + first.frame_len();
            while j < plan.len() {
                let (f, l) = &plan[j];
                if !Arc::ptr_eq(f, file)
                    || l.offset != run_end
                    || run_end + l.frame_len() - first.offset > READ_CHUNK
                {
                    break;
                }
                run_end += l.frame_len();
                j += 1;
            }
            let mut buf = vec![0u8; (run_end - first.offset) as usize];
            let read = file.read_exact_at(&mut buf, first.offset);
            for (_, loc) in &plan[i..j] {
                let at = (loc.offset - first.offset) as usize;
                let frame = buf.get(at..at + loc.frame_len() as usize);
                let entry = match (&read, frame) {
                    (Ok(()), Some(frame)) => parse_entry(frame, loc),
                    (Err(e), _) => Err(e.to_string()),
                    (_, None) => Err("frame outside the read".to_string()),
                };
                match entry {
                    Ok(e) => out.push(e),
                    // A truncation or purge since the plan was made: what
                    // was read so far is still right.
                    Err(_) if !self.lock().holds(loc) => return Ok(out),
                    Err(why) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "raft log entry {} (segment {}, offset {}): {why}",
                                loc.log_id, loc.seg, loc.offset
                            ),
                        ))
                    }
                }
            }
            i = j;
        }
        Ok(out)
    }

    /// Appends and waits until the entries are durable (as `append` reports
    /// them): what tests use, since openraft's callback cannot be made
    /// outside openraft.
    #[cfg(test)]
    fn append_entries_sync(&self, entries: Vec<Entry>) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.append_then(
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv().map_err(|_| io_thread_gone())?
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.lock();
        f.debug_struct("LogStore")
            .field("dir", &g.dir)
            .field("purged", &g.purged)
            .field("first", &g.locs.front().map(|l| l.log_id))
            .field("last", &g.locs.back().map(|l| l.log_id))
            .field("sync", &self.sync)
            .finish()
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    match inner.lock() {
        Ok(g) => g,
        Err(poisoned) => {
            // A panic in the middle of a change: memory may not match the
            // disk any more.
            let mut g = poisoned.into_inner();
            g.broken
                .get_or_insert_with(|| "a panic while changing the log".into());
            g
        }
    }
}

impl Inner {
    fn seg_path(&self, first: u64) -> PathBuf {
        seg_path(&self.dir, first)
    }

    fn usable(&self) -> io::Result<()> {
        match &self.broken {
            Some(why) => Err(io::Error::other(format!(
                "raft log refuses writes after an earlier failure: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn break_on<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            self.broken.get_or_insert_with(|| e.to_string());
        }
        r
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.locs.back().map(|l| l.log_id).or(self.purged)
    }

    fn holds(&self, loc: &Loc) -> bool {
        let Some(first) = self.locs.front() else {
            return false;
        };
        let Some(pos) = loc.log_id.index.checked_sub(first.log_id.index) else {
            return false;
        };
        self.locs.get(pos as usize) == Some(loc)
    }

    fn plan_read(
        &self,
        start: u64,
        end: u64,
        budget: Option<u64>,
    ) -> io::Result<Vec<(Arc<File>, Loc)>> {
        let (Some(first), Some(last)) = (self.locs.front(), self.locs.back()) else {
            return Ok(Vec::new());
        };
        let base = first.log_id.index;
        let from = start.max(base);
        let to = end.min(last.log_id.index.saturating_add(1));
        let mut plan = Vec::new();
        let mut bytes = 0u64;
        for index in from..to {
            let loc = self.locs[(index - base) as usize];
            if budget.is_some_and(|b| !plan.is_empty() && bytes + loc.frame_len() > b) {
                break;
            }
            bytes += loc.frame_len();
            let seg = self.segments.get(&loc.seg).ok_or_else(|| {
                io::Error::other(format!(
                    "raft log: entry {} in a missing segment",
                    loc.log_id
                ))
            })?;
            plan.push((seg.file.clone(), loc));
        }
        Ok(plan)
    }

    fn append(&mut self, encoded: Vec<(LogId, Vec<u8>)>) -> io::Result<Pending> {
        self.usable()?;
        // Checked before anything is written: a rejected append changes
        // nothing.
        let mut prev = self.last_log_id();
        for (log_id, payload) in &encoded {
            if let Some(p) = prev {
                if log_id.index != p.index + 1 {
                    return Err(invalid_input(format!(
                        "raft log: entry {log_id} does not follow {p}"
                    )));
                }
                if log_id.leader_id.term < p.leader_id.term {
                    return Err(invalid_input(format!(
                        "raft log: entry {log_id} has a lower term than {p}"
                    )));
                }
            }
            if payload.is_empty() || payload.len() as u64 > MAX_FRAME {
                return Err(invalid_input(format!(
                    "raft log: entry {log_id} encodes to {} bytes",
                    payload.len()
                )));
            }
            prev = Some(*log_id);
        }
        let mut pending = Pending::default();
        let mut i = 0;
        while i < encoded.len() {
            let (seg, offset) = match self.segments.last_key_value() {
                Some((&k, s)) if s.len < self.segment_bytes => (k, s.len),
                full => {
                    // The full segment must be durable before a later one
                    // gets data: recovery trusts every segment but the last.
                    // One fdatasync per segment, so done here, inline.
                    if let Some((_, s)) = full {
                        let r = s.file.sync_data();
                        self.break_on(r)?;
                    }
                    let first = encoded[i].0.index;
                    let r = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(self.seg_path(first));
                    let file = self.break_on(r)?;
                    self.segments.insert(
                        first,
                        Segment {
                            file: Arc::new(file),
                            len: 0,
                        },
                    );
                    pending.dir = true;
                    (first, 0)
                }
            };
            let mut buf = Vec::new();
            let mut locs = Vec::new();
            let mut total = self.locs.back().map_or(0, |l| l.end);
            while i < encoded.len()
                && (buf.is_empty() || offset + (buf.len() as u64) < self.segment_bytes)
            {
                let (log_id, payload) = &encoded[i];
                let loc = Loc {
                    seg,
                    offset: offset + buf.len() as u64,
                    len: payload.len() as u32,
                    log_id: *log_id,
                    end: total + HEADER + payload.len() as u64,
                };
                put_frame(&mut buf, payload);
                total = loc.end;
                locs.push(loc);
                i += 1;
            }
            let Some(s) = self.segments.get_mut(&seg) else {
                return Err(io::Error::other("raft log: segment vanished"));
            };
            let file = s.file.clone();
            let r = file.write_all_at(&buf, offset);
            self.break_on(r)?;
            if let Some(s) = self.segments.get_mut(&seg) {
                s.len = offset + buf.len() as u64;
            }
            self.locs.extend(locs);
            if !pending.files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                pending.files.push(file);
            }
        }
        Ok(pending)
    }

    /// Drops the entries from `index` on in memory and deletes the segments
    /// after the one it is in; returns that segment and where to cut it (the
    /// cut is made by the caller after the deletions are durable).
    fn truncate(&mut self, index: u64) -> io::Result<Truncated> {
        self.usable()?;
        let mut t = Truncated::default();
        let Some(first) = self.locs.front() else {
            return Ok(t);
        };
        let base = first.log_id.index;
        let pos = index.saturating_sub(base) as usize;
        let Some(&loc) = self.locs.get(pos) else {
            return Ok(t);
        };
        let mut doomed: Vec<u64> = self
            .segments
            .range((Bound::Excluded(loc.seg), Bound::Unbounded))
            .map(|(&k, _)| k)
            .collect();
        if loc.offset == 0 {
            doomed.push(loc.seg);
        }
        // Newest first: whatever a crash leaves, the log stays contiguous.
        doomed.sort_unstable_by(|a, b| b.cmp(a));
        self.locs.truncate(pos);
        for k in doomed {
            self.segments.remove(&k);
            let r = remove_if_present(&self.seg_path(k));
            self.break_on(r)?;
            t.deleted = true;
        }
        t.cut = self.segments.get_mut(&loc.seg).map(|s| {
            s.len = loc.offset;
            (s.file.clone(), loc.offset)
        });
        Ok(t)
    }

    /// After `purged` is durable: forgets the entries up to it and deletes
    /// the segments that hold nothing newer.
    fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.purged = Some(log_id);
        while self
            .locs
            .front()
            .is_some_and(|l| l.log_id.index <= log_id.index)
        {
            self.locs.pop_front();
        }
        let keys: Vec<u64> = self.segments.keys().copied().collect();
        for (i, &k) in keys.iter().enumerate() {
            let all_purged = match keys.get(i + 1) {
                Some(&next) => next <= log_id.index.saturating_add(1),
                None => self.locs.is_empty(),
            };
            if !all_purged {
                break;
            }
            self.segments.remove(&k);
            let r = remove_if_present(&self.seg_path(k));
            self.break_on(r)?;
        }
        Ok(())
    }
}

/// Syncs queued appends together and reports them in order; runs the other
/// writes between them.
fn io_thread(rx: mpsc::Receiver<Job>, inner: Arc<Mutex<Inner>>, dir: PathBuf) {
    let mut files: Vec<Arc<File>> = Vec::new();
    let mut sync_dir_too = false;
    let mut dones: Vec<Done> = Vec::new();
    while let Ok(job) = rx.recv() {
        let mut next = Some(job);
        while let Some(job) = next {
            match job {
                Job::Sync {
                    files: f,
                    dir: d,
                    done,
                } => {
                    for f in f {
                        if !files.iter().any(|g| Arc::ptr_eq(g, &f)) {
                            files.push(f);
                        }
                    }
                    sync_dir_too |= d;
                    dones.push(done);
                }
                Job::Run(f) => {
                    flush(&inner, &dir, &mut files, &mut sync_dir_too, &mut dones);
                    f();
                }
            }
            next = rx.try_recv().ok();
        }
        flush(&inner, &dir, &mut files, &mut sync_dir_too, &mut dones);
    }
}

fn flush(
    inner: &Mutex<Inner>,
    dir: &Path,
    files: &mut Vec<Arc<File>>,
    sync_dir_too: &mut bool,
    dones: &mut Vec<Done>,
) {
    if dones.is_empty() {
        return;
    }
    let mut result = Ok(());
    if std::mem::take(sync_dir_too) {
        result = sync_dir(dir);
    }
    for f in files.drain(..) {
        if result.is_ok() {
            result = f.sync_data();
        }
    }
    if let Err(e) = &result {
        tracing::error!("raft log: sync failed: {e}");
        lock(inner).broken.get_or_insert_with(|| e.to_string());
    }
    for done in dones.drain(..) {
        done(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        self.read_blocking(start, end, None).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_blocking(start, end, Some(READ_BUDGET)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let g = self.lock();
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: g.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.run_io(move |inner| {
            let dir = {
                let g = lock(inner);
                g.usable()?;
                g.dir.clone()
            };
            let bytes = encode(&vote).map_err(|e| invalid_input(e.to_string()))?;
            let r = write_small(&dir, VOTE_FILE, &bytes);
            let mut g = lock(inner);
            g.break_on(r)?;
            g.vote = Some(vote);
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::<NodeId>::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_then(entries, Box::new(move |r| callback.log_io_completed(r)))
            .map_err(|e| StorageIOError::<NodeId>::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.run_io(move |inner| {
            let (t, dir) = {
                let mut g = lock(inner);
                (g.truncate(log_id.index)?, g.dir.clone())
            };
            // The deletions are durable before the cut: a crash in between
            // leaves old entries at the end of the log, never a gap.
            let deleted = if t.deleted { sync_dir(&dir) } else { Ok(()) };
            let r = deleted.and_then(|()| match t.cut {
                Some((file, at)) => file.set_len(at).and_then(|()| file.sync_all()),
                None => Ok(()),
            });
            lock(inner).break_on(r)
        })
        .await
        .map_err(|e| {
            StorageIOError::<NodeId>::new(ErrorSubject::Logs, ErrorVerb::Delete, AnyError::new(&e))
                .into()
        })
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.run_io(move |inner| {
            let dir = {
                let g = lock(inner);
                g.usable()?;
                if g.purged.is_some_and(|p| p.index >= log_id.index) {
                    return Ok(());
                }
                g.dir.clone()
            };
            // The purge point first: if the deletions are lost, recovery
            // deletes those segments again, while a segment deleted without
            // it would leave a gap.
            let bytes = encode(&log_id).map_err(|e| invalid_input(e.to_string()))?;
            let r = write_small(&dir, PURGED_FILE, &bytes);
            let mut g = lock(inner);
            g.break_on(r)?;
            g.purge(log_id)
        })
        .await
        .map_err(|e| {
            StorageIOError::<NodeId>::new(ErrorSubject::Logs, ErrorVerb::Delete, AnyError::new(&e))
                .into()
        })
    }
}

fn read_err(e: io::Error) -> StorageError {
    StorageIOError::<NodeId>::read_logs(&e).into()
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn corrupt(path: &Path, msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {msg}", path.display()),
    )
}

fn io_thread_gone() -> io::Error {
    io::Error::other("raft log I/O thread is gone")
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("log-{first:020}.seg"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&frame_crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Checks one whole frame read back for `loc` and decodes its entry.
fn parse_entry(frame: &[u8], loc: &Loc) -> Result<Entry, String> {
    let (Some(len), Some(crc), Some(payload)) = (
        frame.get(0..4),
        frame.get(4..8),
        frame.get(HEADER as usize..),
    ) else {
        return Err("short frame".into());
    };
    let len: [u8; 4] = len.try_into().map_err(|_| "short frame")?;
    let crc: [u8; 4] = crc.try_into().map_err(|_| "short frame")?;
    if u32::from_le_bytes(len) != loc.len || payload.len() != loc.len as usize {
        return Err("length differs from the index".into());
    }
    if frame_crc(len, payload) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    let entry: Entry = decode(payload).map_err(|e| format!("undecodable: {e}"))?;
    if entry.log_id != loc.log_id {
        return Err(format!("holds entry {}", entry.log_id));
    }
    Ok(entry)
}

/// Writes a small value durably and atomically (the old or the new after a
/// crash).
fn write_small(dir: &Path, name: &str, payload: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut buf = Vec::with_capacity(payload.len() + HEADER as usize);
    put_frame(&mut buf, payload);
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn read_small<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    let path = dir.join(name);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_SMALL_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(corrupt(&path, "too large".into()));
    }
    let (Some(len), Some(crc), Some(payload)) =
        (buf.get(0..4), buf.get(4..8), buf.get(HEADER as usize..))
    else {
        return Err(corrupt(&path, "too short".into()));
    };
    let len: [u8; 4] = len
        .try_into()
        .map_err(|_| corrupt(&path, "too short".into()))?;
    let crc: [u8; 4] = crc
        .try_into()
        .map_err(|_| corrupt(&path, "too short".into()))?;
    if u32::from_le_bytes(len) as usize != payload.len() {
        return Err(corrupt(&path, "length mismatch".into()));
    }
    if frame_crc(len, payload) != u32::from_le_bytes(crc) {
        return Err(corrupt(&path, "checksum mismatch".into()));
    }
    decode(payload)
        .map(Some)
        .map_err(|e| corrupt(&path, format!("undecodable: {e}")))
}

/// The segments in `dir`, by first index.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut names = Vec::new();
    for de in fs::read_dir(dir)? {
        let de = de?;
        let name = de.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name
            .strip_prefix("log-")
            .and_then(|n| n.strip_suffix(".seg"))
        else {
            continue;
        };
        if num.len() != 20 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(corrupt(&de.path(), "not a segment name".into()));
        }
        let first = num
            .parse::<u64>()
            .map_err(|e| corrupt(&de.path(), e.to_string()))?;
        names.push(first);
    }
    names.sort_unstable();
    Ok(names)
}

enum Frame {
    /// Exactly at the end of the file.
    End,
    /// A good frame with this payload length (the payload is in the buffer).
    Good(u64),
    /// Torn by a crash: cut off if in the last segment.
    Torn,
    /// Damaged, or a torn tail cannot be told apart from damage.
    Damaged(&'static str),
}

fn read_frame(
    r: &mut impl Read,
    off: u64,
    file_len: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Frame> {
    let left = file_len - off;
    if left == 0 {
        return Ok(Frame::End);
    }
    if left < HEADER {
        return Ok(Frame::Torn);
    }
    let mut h = [0u8; HEADER as usize];
    r.read_exact(&mut h)?;
    let len_bytes = [h[0], h[1], h[2], h[3]];
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let len = u64::from(u32::from_le_bytes(len_bytes));
    let end = off + HEADER + len;
    // A zero length is a zeroed header: a real frame has a payload.
    if len == 0 || end > file_len {
        return Ok(Frame::Torn);
    }
    if len > MAX_FRAME {
        return Ok(if end == file_len {
            Frame::Torn
        } else {
            Frame::Damaged("frame length out of bounds")
        });
    }
    payload.resize(len as usize, 0);
    r.read_exact(payload)?;
    if frame_crc(len_bytes, payload) != crc {
        return Ok(
            if end == file_len || has_zero_sector(off + HEADER, payload) {
                Frame::Torn
            } else {
                Frame::Damaged("checksum mismatch")
            },
        );
    }
    Ok(Frame::Good(len))
}

/// Whether `payload` (at file offset `at`) holds a whole sector of zeros:
/// the mark of a write that did not reach the disk.
fn has_zero_sector(at: u64, payload: &[u8]) -> bool {
    let mut s = at.div_ceil(SECTOR) * SECTOR;
    while s + SECTOR <= at + payload.len() as u64 {
        let i = (s - at) as usize;
        if payload[i..i + SECTOR as usize].iter().all(|&b| b == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

/// Scans the segments: the live index, with a torn tail cut off and
/// segments holding only purged entries deleted.
fn recover(
    dir: &Path,
    purged: Option<LogId>,
) -> io::Result<(BTreeMap<u64, Segment>, VecDeque<Loc>)> {
    let mut names = list_segments(dir)?;
    let keep_from = purged.map(|p| p.index.saturating_add(1));
    let mut dir_changed = false;
    // A segment followed by one starting at or before `keep_from` holds only
    // purged entries: finish the interrupted purge without reading it.
    if let Some(k) = keep_from {
        let doomed = names.windows(2).take_while(|w| w[1] <= k).count();
        for first in names.drain(..doomed) {
            remove_if_present(&seg_path(dir, first))?;
            dir_changed = true;
        }
    }
    let mut segments = BTreeMap::new();
    let mut locs: VecDeque<Loc> = VecDeque::new();
    let mut prev: Option<LogId> = None;
    let mut total = 0u64;
    let mut payload = Vec::new();
    for (i, &first) in names.iter().enumerate() {
        let is_last = i + 1 == names.len();
        let path = seg_path(dir, first);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_len = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut off = 0u64;
        let mut frames = 0usize;
        let mut kept = 0usize;
        loop {
            let damage = match read_frame(&mut reader, off, file_len, &mut payload)? {
                Frame::End => break,
                Frame::Good(len) => {
                    let log_id: LogId = decode(&payload).map_err(|e| {
                        corrupt(&path, format!("undecodable entry at offset {off}: {e}"))
                    })?;
                    if frames == 0 && log_id.index != first {
                        return Err(corrupt(
                            &path,
                            format!("starts with entry {log_id}, not index {first}"),
                        ));
                    }
                    if let Some(p) = prev {
                        if log_id.index != p.index.saturating_add(1) {
                            return Err(corrupt(&path, format!("entry {log_id} follows {p}")));
                        }
                        if log_id.leader_id.term < p.leader_id.term {
                            return Err(corrupt(
                                &path,
                                format!("entry {log_id} has a lower term than {p}"),
                            ));
                        }
                    }
                    prev = Some(log_id);
                    frames += 1;
                    if keep_from.is_none_or(|k| log_id.index >= k) {
                        if let (Some(k), Some(p), true) = (keep_from, purged, locs.is_empty()) {
                            if log_id.index != k || log_id.leader_id.term < p.leader_id.term {
                                return Err(corrupt(
                                    &path,
                                    format!("entry {log_id} does not follow the purged {p}"),
                                ));
                            }
                        }
                        total += HEADER + len;
                        locs.push_back(Loc {
                            seg: first,
                            offset: off,
                            len: len as u32,
                            log_id,
                            end: total,
                        });
                        kept += 1;
                    }
                    off += HEADER + len;
                    continue;
                }
                Frame::Torn if is_last => None,
                Frame::Torn => Some("torn frame"),
                Frame::Damaged(why) => Some(why),
            };
            if let Some(why) = damage {
                return Err(corrupt(&path, format!("{why} at offset {off}")));
            }
            tracing::warn!(
                "raft log: {}: cutting a torn tail of {} bytes at offset {off}",
                path.display(),
                file_len - off
            );
            drop(reader);
            file.set_len(off)?;
            file.sync_all()?;
            break;
        }
        // An empty segment, or a last one holding only purged entries, is
        // of no use; the next append starts a segment of its own.
        if frames == 0 || (is_last && kept == 0 && keep_from.is_some()) {
            drop(file);
            remove_if_present(&path)?;
            dir_changed = true;
            continue;
        }
        segments.insert(
            first,
            Segment {
                file: Arc::new(file),
                len: off,
            },
        );
    }
    if let (Some(k), Some(first)) = (keep_from, locs.front()) {
        if first.log_id.index != k {
            return Err(corrupt(
                dir,
                format!("log starts at {}, after a gap", first.log_id),
            ));
        }
    }
    if dir_changed {
        sync_dir(dir)?;
    }
    Ok((segments, locs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Command, Operation};
    use crate::raft::types::Batch;
    use crate::records::Time;
    use openraft::{CommittedLeaderId, EntryPayload};
    use proptest::prelude::*;
    use prost::bytes::Bytes;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    /// A normal entry carrying `data_len` bytes of file data.
    fn normal(term: u64, index: u64, data_len: usize) -> Entry {
        let cmds = match data_len {
            0 => vec![],
            n => vec![Command {
                request: None,
                now: Time::new(1, 2),
                op: Operation::Write {
                    id: kadalu_proto::FileId::from_parts(0, 7),
                    offset: 4096,
                    data: Bytes::from(vec![(index % 251) as u8; n]),
                    append: false,
                },
            }],
        };
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Batch { cmds }),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn all(rt: &tokio::runtime::Runtime, s: &mut LogStore) -> Vec<Entry> {
        rt.block_on(s.try_get_log_entries(..)).expect("read")
    }

    fn state(rt: &tokio::runtime::Runtime, s: &mut LogStore) -> LogState<TypeConfig> {
        rt.block_on(s.get_log_state()).expect("state")
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        list_segments(dir).expect("list")
    }

    fn frame_bytes(e: &Entry) -> u64 {
        HEADER + encode(e).expect("encode").len() as u64
    }

    #[test]
    fn log_id_is_the_prefix_of_an_entry() {
        // Recovery decodes only the log id of each frame.
        let e = normal(3, 9, 100);
        let id: LogId = decode(&encode(&e).expect("encode")).expect("decode");
        assert_eq!(id, e.log_id);
    }

    #[test]
    fn append_read_back_and_reopen() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("raft");
        let entries: Vec<Entry> = (0..20)
            .map(|i| match i % 3 {
                0 => blank(1 + i / 10, i),
                1 => normal(1 + i / 10, i, 0),
                _ => normal(1 + i / 10, i, 300),
            })
            .collect();
        {
            let mut s = LogStore::open(&dir, true).expect("open");
            assert_eq!(state(&rt, &mut s), LogState::default());
            s.append_entries_sync(entries[..7].to_vec())
                .expect("append");
            s.append_entries_sync(entries[7..].to_vec())
                .expect("append");
            assert_eq!(all(&rt, &mut s), entries);
            let part = rt.block_on(s.try_get_log_entries(5..=8)).expect("read");
            assert_eq!(part, entries[5..9].to_vec());
            let none = rt.block_on(s.try_get_log_entries(20..30)).expect("read");
            assert!(none.is_empty());
            assert_eq!(s.first_index(), Some(0));
            assert_eq!(s.last_index(), Some(19));
            let st = state(&rt, &mut s);
            assert_eq!(st.last_log_id, Some(entries[19].log_id));
            assert_eq!(st.last_purged_log_id, None);
            let want: u64 = entries[3..=10].iter().map(frame_bytes).sum();
            assert_eq!(s.bytes_between(2, 10), want);
            assert_eq!(s.bytes_between(10, 2), 0);
            let total: u64 = entries.iter().map(frame_bytes).sum();
            assert_eq!(s.disk_bytes(), total);
        }
        let mut s = LogStore::open(&dir, true).expect("reopen");
        assert_eq!(all(&rt, &mut s), entries);
        assert_eq!(s.last_index(), Some(19));
        // Appends continue where the log ended.
        s.append_entries_sync(vec![blank(3, 20)]).expect("append");
        assert!(s.append_entries_sync(vec![blank(3, 22)]).is_err());
        assert!(s.append_entries_sync(vec![blank(2, 21)]).is_err());
        assert_eq!(s.last_index(), Some(20));
    }

    #[test]
    fn unsynced_mode_and_large_entries() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let entries: Vec<Entry> = (0..4).map(|i| normal(1, i, 1 << 20)).collect();
        {
            let mut s = LogStore::open(tmp.path(), false).expect("open");
            s.append_entries_sync(entries.clone()).expect("append");
            assert_eq!(all(&rt, &mut s), entries);
        }
        let mut s = LogStore::open(tmp.path(), false).expect("reopen");
        assert_eq!(all(&rt, &mut s), entries);
        // The budget cuts a batch of MiB entries short, but never to nothing.
        let some = rt.block_on(s.limited_get_log_entries(0, 4)).expect("read");
        assert_eq!(some, entries);
        let one = s.read(0, 4, Some(10)).expect("read");
        assert_eq!(one, entries[..1].to_vec());
    }

    #[test]
    fn sync_reports_come_in_order() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let mut s = LogStore::open_with(tmp.path(), true, 400).expect("open");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for i in 0..40u64 {
            let seen = seen.clone();
            let tx = tx.clone();
            s.append_then(
                vec![normal(1, i, 50)],
                Box::new(move |r| {
                    seen.lock().expect("lock").push((i, r.is_ok()));
                    let _ = tx.send(());
                }),
            )
            .expect("append");
        }
        // A truncation waits for the syncs queued before it.
        rt.block_on(s.truncate(log_id(1, 30))).expect("truncate");
        assert_eq!(seen.lock().expect("lock").len(), 40);
        for _ in 0..40 {
            rx.recv().expect("report");
        }
        let want: Vec<(u64, bool)> = (0..40).map(|i| (i, true)).collect();
        assert_eq!(*seen.lock().expect("lock"), want);
        assert_eq!(s.last_index(), Some(29));
    }

    #[test]
    fn vote_round_trip() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        {
            let mut s = LogStore::open(tmp.path(), false).expect("open");
            assert_eq!(rt.block_on(s.read_vote()).expect("vote"), None);
            rt.block_on(s.save_vote(&Vote::new(3, 7))).expect("save");
            let v = Vote::new_committed(4, 7);
            rt.block_on(s.save_vote(&v)).expect("save");
            assert_eq!(rt.block_on(s.read_vote()).expect("vote"), Some(v));
        }
        let mut s = LogStore::open(tmp.path(), false).expect("reopen");
        assert_eq!(
            rt.block_on(s.read_vote()).expect("vote"),
            Some(Vote::new_committed(4, 7))
        );
        // A damaged vote is an error, not "no vote".
        drop(s);
        let path = tmp.path().join(VOTE_FILE);
        let mut b = fs::read(&path).expect("read");
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&path, b).expect("write");
        assert!(LogStore::open(tmp.path(), false).is_err());
    }

    #[test]
    fn truncate_then_reopen() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let entries: Vec<Entry> = (0..30).map(|i| normal(1, i, 40)).collect();
        {
            let mut s = LogStore::open_with(tmp.path(), true, 500).expect("open");
            s.append_entries_sync(entries.clone()).expect("append");
            assert!(segment_files(tmp.path()).len() > 3);
            rt.block_on(s.truncate(log_id(1, 17))).expect("truncate");
            assert_eq!(all(&rt, &mut s), entries[..17].to_vec());
            assert_eq!(state(&rt, &mut s).last_log_id, Some(log_id(1, 16)));
            // A new leader's entries take the place of the old ones.
            s.append_entries_sync(vec![blank(2, 17), blank(2, 18)])
                .expect("append");
        }
        let mut s = LogStore::open_with(tmp.path(), true, 500).expect("reopen");
        let got = all(&rt, &mut s);
        assert_eq!(got.len(), 19);
        assert_eq!(got[..17], entries[..17]);
        assert_eq!(got[17..], [blank(2, 17), blank(2, 18)]);
        // Truncating everything leaves no segment behind.
        rt.block_on(s.truncate(log_id(1, 0))).expect("truncate");
        assert!(all(&rt, &mut s).is_empty());
        assert!(segment_files(tmp.path()).is_empty());
        assert_eq!(s.disk_bytes(), 0);
        drop(s);
        let mut s = LogStore::open_with(tmp.path(), true, 500).expect("reopen");
        assert_eq!(state(&rt, &mut s), LogState::default());
    }

    #[test]
    fn purge_then_reopen() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let entries: Vec<Entry> = (0..30).map(|i| normal(1, i, 40)).collect();
        let before;
        {
            let mut s = LogStore::open_with(tmp.path(), true, 500).expect("open");
            s.append_entries_sync(entries.clone()).expect("append");
            before = segment_files(tmp.path());
            rt.block_on(s.purge(log_id(1, 20))).expect("purge");
            let st = state(&rt, &mut s);
            assert_eq!(st.last_purged_log_id, Some(log_id(1, 20)));
            assert_eq!(st.last_log_id, Some(log_id(1, 29)));
            assert_eq!(s.first_index(), Some(21));
            assert_eq!(all(&rt, &mut s), entries[21..].to_vec());
        }
        let after = segment_files(tmp.path());
        assert!(after.len() < before.len());
        // Every remaining segment holds an entry after the purge point.
        assert!(after.windows(2).all(|w| w[1] > 21));
        let mut s = LogStore::open_with(tmp.path(), true, 500).expect("reopen");
        let st = state(&rt, &mut s);
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 20)));
        assert_eq!(st.last_log_id, Some(log_id(1, 29)));
        assert_eq!(all(&rt, &mut s), entries[21..].to_vec());
        // Purging past the end (a snapshot was installed) empties the log.
        rt.block_on(s.purge(log_id(2, 40))).expect("purge");
        let st = state(&rt, &mut s);
        assert_eq!(st.last_purged_log_id, Some(log_id(2, 40)));
        assert_eq!(st.last_log_id, Some(log_id(2, 40)));
        assert!(segment_files(tmp.path()).is_empty());
        assert!(s.append_entries_sync(vec![blank(2, 42)]).is_err());
        s.append_entries_sync(vec![blank(2, 41)]).expect("append");
        drop(s);
        let mut s = LogStore::open_with(tmp.path(), true, 500).expect("reopen");
        assert_eq!(all(&rt, &mut s), vec![blank(2, 41)]);
    }

    #[test]
    fn interrupted_purge_is_finished_at_open() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let entries: Vec<Entry> = (0..30).map(|i| normal(1, i, 40)).collect();
        {
            let s = LogStore::open_with(tmp.path(), true, 500).expect("open");
            s.append_entries_sync(entries.clone()).expect("append");
        }
        // As if the purge point was written and the crash came before any
        // segment was deleted.
        let bytes = encode(&log_id(1, 20)).expect("encode");
        write_small(tmp.path(), PURGED_FILE, &bytes).expect("write");
        let mut s = LogStore::open_with(tmp.path(), true, 500).expect("reopen");
        assert_eq!(all(&rt, &mut s), entries[21..].to_vec());
        assert_eq!(segment_files(tmp.path())[0], s.lock().locs[0].seg);
    }

    #[test]
    fn torn_tail_is_cut() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let entries: Vec<Entry> = (0..10).map(|i| normal(1, i, 100)).collect();
        {
            let s = LogStore::open(tmp.path(), true).expect("open");
            s.append_entries_sync(entries.clone()).expect("append");
        }
        let last = *segment_files(tmp.path()).last().expect("a segment");
        let path = seg_path(tmp.path(), last);
        let good_len = fs::metadata(&path).expect("meta").len();
        // Half of the next frame.
        let mut frame = Vec::new();
        put_frame(&mut frame, &encode(&normal(1, 10, 100)).expect("encode"));
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&frame[..frame.len() / 2]).expect("write");
        drop(f);
        let mut s = LogStore::open(tmp.path(), true).expect("reopen");
        assert_eq!(all(&rt, &mut s), entries);
        assert_eq!(fs::metadata(&path).expect("meta").len(), good_len);
        // The log goes on from the cut.
        s.append_entries_sync(vec![normal(1, 10, 100)])
            .expect("append");
        drop(s);

        // A complete last frame with a bad checksum is cut as well.
        let mut b = fs::read(&path).expect("read");
        let end = b.len() - 1;
        b[end] ^= 0xff;
        fs::write(&path, b).expect("write");
        let mut s = LogStore::open(tmp.path(), true).expect("reopen");
        assert_eq!(all(&rt, &mut s), entries);

        // So is a zeroed tail.
        drop(s);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[0u8; 700]).expect("write");
        drop(f);
        let mut s = LogStore::open(tmp.path(), true).expect("reopen");
        assert_eq!(all(&rt, &mut s), entries);
        assert_eq!(fs::metadata(&path).expect("meta").len(), good_len);
    }

    #[test]
    fn damage_before_the_tail_fails_open() {
        let tmp = tempfile::tempdir().expect("tmp");
        let entries: Vec<Entry> = (0..30).map(|i| normal(1, i, 40)).collect();
        {
            let s = LogStore::open_with(tmp.path(), true, 500).expect("open");
            s.append_entries_sync(entries).expect("append");
        }
        let segs = segment_files(tmp.path());
        assert!(segs.len() >= 3);
        let copy = tempfile::tempdir().expect("tmp");
        for name in fs::read_dir(tmp.path()).expect("ls") {
            let p = name.expect("entry").path();
            fs::copy(&p, copy.path().join(p.file_name().expect("name"))).expect("copy");
        }

        // A flipped byte in a middle frame of a segment that is not the last.
        let path = seg_path(tmp.path(), segs[1]);
        let mut b = fs::read(&path).expect("read");
        let frame = encode(&normal(1, segs[1], 40)).expect("encode").len() + HEADER as usize;
        b[frame + frame / 2] ^= 0x10;
        fs::write(&path, b).expect("write");
        let err = LogStore::open_with(tmp.path(), true, 500).expect_err("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // A damaged frame followed by good ones in the last segment.
        let last = *segs.last().expect("last");
        let path = seg_path(copy.path(), last);
        let mut b = fs::read(&path).expect("read");
        assert!(b.len() > 2 * frame);
        b[frame / 2] ^= 0x10;
        fs::write(&path, b).expect("write");
        assert!(LogStore::open_with(copy.path(), true, 500).is_err());

        // A missing segment is a gap.
        let copy2 = tempfile::tempdir().expect("tmp");
        {
            let s = LogStore::open_with(copy2.path(), true, 500).expect("open");
            s.append_entries_sync((0..30).map(|i| normal(1, i, 40)).collect())
                .expect("append");
        }
        fs::remove_file(seg_path(copy2.path(), segs[1])).expect("rm");
        assert!(LogStore::open_with(copy2.path(), true, 500).is_err());
    }

    #[test]
    fn segments_roll() {
        let rt = rt();
        let tmp = tempfile::tempdir().expect("tmp");
        let entries: Vec<Entry> = (0..50).map(|i| normal(1, i, 60)).collect();
        let one = frame_bytes(&entries[0]);
        let mut s = LogStore::open_with(tmp.path(), true, 3 * one).expect("open");
        // One entry at a time and in batches, crossing segment ends both
        // ways.
        s.append_entries_sync(entries[..1].to_vec())
            .expect("append");
        s.append_entries_sync(entries[1..20].to_vec())
            .expect("append");
        for e in &entries[20..] {
            s.append_entries_sync(vec![e.clone()]).expect("append");
        }
        let segs = segment_files(tmp.path());
        assert_eq!(segs, (0..50).step_by(3).collect::<Vec<u64>>());
        for &first in &segs {
            let len = fs::metadata(seg_path(tmp.path(), first))
                .expect("meta")
                .len();
            assert!(len <= 3 * one);
        }
        assert_eq!(all(&rt, &mut s), entries);
        drop(s);
        let mut s = LogStore::open_with(tmp.path(), true, 3 * one).expect("reopen");
        assert_eq!(all(&rt, &mut s), entries);
        assert_eq!(s.disk_bytes(), 50 * one);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Append {
            n: usize,
            new_term: bool,
            data: usize,
        },
        Truncate(u8),
        Purge(u8),
        PurgePastEnd(u8),
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1usize..6, any::<bool>(), 0usize..200)
                .prop_map(|(n, new_term, data)| Step::Append { n, new_term, data }),
            1 => any::<u8>().prop_map(Step::Truncate),
            1 => any::<u8>().prop_map(Step::Purge),
            1 => (1u8..4).prop_map(Step::PurgePastEnd),
            1 => Just(Step::Reopen),
        ]
    }

    /// What the log should hold.
    #[derive(Default)]
    struct Model {
        entries: BTreeMap<u64, Entry>,
        purged: Option<LogId>,
    }

    impl Model {
        fn last(&self) -> Option<LogId> {
            self.entries
                .values()
                .next_back()
                .map(|e| e.log_id)
                .or(self.purged)
        }
    }

    fn check(
        rt: &tokio::runtime::Runtime,
        s: &mut LogStore,
        m: &Model,
    ) -> Result<(), TestCaseError> {
        let want: Vec<Entry> = m.entries.values().cloned().collect();
        prop_assert_eq!(all(rt, s), want.clone());
        let st = state(rt, s);
        prop_assert_eq!(st.last_purged_log_id, m.purged);
        prop_assert_eq!(st.last_log_id, m.last());
        prop_assert_eq!(s.first_index(), m.entries.keys().next().copied());
        prop_assert_eq!(s.last_index(), m.entries.keys().next_back().copied());
        if let (Some(&a), Some(&b)) = (m.entries.keys().next(), m.entries.keys().next_back()) {
            let mid = a + (b - a) / 2;
            let got = rt.block_on(s.try_get_log_entries(mid..b)).expect("read");
            let exp: Vec<Entry> = m.entries.range(mid..b).map(|(_, e)| e.clone()).collect();
            prop_assert_eq!(got, exp);
            let bytes: u64 = m
                .entries
                .range(mid..=b)
                .filter(|(&i, _)| i > mid)
                .map(|(_, e)| frame_bytes(e))
                .sum();
            prop_assert_eq!(s.bytes_between(mid, b), bytes);
        }
        let dir = s.lock().dir.clone();
        let on_disk: u64 = segment_files(&dir)
            .iter()
            .map(|&f| fs::metadata(seg_path(&dir, f)).map_or(0, |m| m.len()))
            .sum();
        prop_assert_eq!(s.disk_bytes(), on_disk);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn behaves_like_a_model(sync in any::<bool>(), steps in proptest::collection::vec(step(), 1..40)) {
            let rt = rt();
            let tmp = tempfile::tempdir().expect("tmp");
            let seg = 300;
            let mut s = LogStore::open_with(tmp.path(), sync, seg).expect("open");
            let mut m = Model::default();
            let mut term = 1;
            for st in steps {
                match st {
                    Step::Append { n, new_term, data } => {
                        if new_term {
                            term += 1;
                        }
                        let next = m.last().map_or(0, |l| l.index + 1);
                        let batch: Vec<Entry> = (next..next + n as u64)
                            .map(|i| match (i + data as u64) % 3 {
                                0 => blank(term, i),
                                _ => normal(term, i, (data * (i as usize + 1)) % 200),
                            })
                            .collect();
                        s.append_entries_sync(batch.clone()).expect("append");
                        for e in batch {
                            m.entries.insert(e.log_id.index, e);
                        }
                    }
                    Step::Truncate(k) => {
                        if let (Some(&a), Some(&b)) = (m.entries.keys().next(), m.entries.keys().next_back()) {
                            let at = a + u64::from(k) % (b - a + 2);
                            rt.block_on(s.truncate(log_id(term, at))).expect("truncate");
                            m.entries.retain(|&i, _| i < at);
                            // The new leader's term, as after a real truncation.
                            term += 1;
                        }
                    }
                    Step::Purge(k) => {
                        if let (Some(&a), Some(&b)) = (m.entries.keys().next(), m.entries.keys().next_back()) {
                            let at = a + u64::from(k) % (b - a + 1);
                            let id = m.entries[&at].log_id;
                            rt.block_on(s.purge(id)).expect("purge");
                            m.entries.retain(|&i, _| i > at);
                            m.purged = Some(id);
                        }
                    }
                    Step::PurgePastEnd(k) => {
                        let at = m.last().map_or(0, |l| l.index) + u64::from(k);
                        let id = log_id(term, at);
                        rt.block_on(s.purge(id)).expect("purge");
                        m.entries.clear();
                        m.purged = Some(id);
                    }
                    Step::Reopen => {
                        drop(s);
                        s = LogStore::open_with(tmp.path(), sync, seg).expect("reopen");
                    }
                }
                check(&rt, &mut s, &m)?;
            }
        }
    }
}
