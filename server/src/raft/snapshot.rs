//! A whole brick as one archive file: the Raft snapshot of a Replica3 member.
//! A brick that is empty, or so far behind that the log it needs was purged,
//! is brought up to date by receiving the leader's archive and installing it,
//! after which it is exactly the sender at the snapshot's log position: every
//! row of every table (namespace, `meta`, `raft_meta`, the dedupe records, so
//! that a retried client request gets the same answer from it) and every
//! object file.
//!
//! # Format
//!
//! All integers are little-endian.
//!
//! ```text
//! archive  = "KDLSNAP1" version:u32 frame*  END-frame  (then end of file)
//! frame    = tag:u8 len:u32 payload[len] crc:u32      crc32 of tag, len, payload
//! ROWS   1 = table:u8 count:u32 row*count            rows of one table, ~1 MiB a frame
//! OBJECT 2 = id:u128 size:u64                         an object file begins
//! DATA   3 = offset:u64 bytes                         a run of its data (<= 1 MiB)
//! END    4 = rows:u64 objects:u64 bytes:u64 crc:u32   totals; crc32 of every byte before this frame
//! bytes    = len:u32 byte[len]                        inside rows
//! ```
//!
//! A row is its key then its value, field by field, with `bytes` for byte
//! strings and `str` keys; the layout per table is in [`Row`]. All ROWS
//! frames come before the first OBJECT; objects come in increasing id order
//! and the DATA frames of an object follow it in increasing, non-overlapping
//! offsets inside its size. What no DATA covers is a hole: an object is
//! recreated by `set_len` then writing its runs, so a sparse file stays
//! sparse and costs the archive only its data. The runs are what
//! `SEEK_DATA`/`SEEK_HOLE` report on the sender.
//!
//! No length is trusted: a frame is at most [`MAX_FRAME`] bytes and every
//! field must fit in its frame.
//!
//! # Installing
//!
//! An archive is read twice. The first pass checks everything (magic,
//! version, every frame's crc, the stream crc, lengths, order, that the rows
//! decode) and changes nothing, so a corrupt or truncated archive is refused
//! with the brick untouched. The second pass writes the rows into one write
//! transaction that first emptied every table, and the objects into a staging
//! directory (`BRICK/objects.incoming`). The staged objects are synced, then
//! the transaction commits durably with a marker in `meta`; after that the
//! staging directory takes the place of `BRICK/objects` (the old one is
//! moved to `BRICK/objects.old` and deleted) and the marker is cleared. A
//! crash before the commit leaves the old brick and a staging directory to
//! delete; after it, [`resume_install`] finishes the swap: it must run after
//! [`Store::open`] and before anything reads or applies.

use crate::digest::{open_object_readonly, DataExtents};
use crate::error::{FsError, FsResult};
use crate::quota::{EXTENTS, PVS, PV_NAMES};
use crate::records::{Dirent, InodeRecord};
use crate::store::{
    Store, DIRENTS, DIR_ORDER, FORMAT_VERSION, INODES, META, META_FORMAT, ORPHANS, RAFT_META,
    XATTRS,
};
use kadalu_proto::{FileId, ROOT_ID};
use redb::{
    AccessGuard, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, TableError, Value, WriteTransaction,
};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// First bytes of every archive.
pub const MAGIC: &[u8; 8] = b"KDLSNAP1";
/// The archive format this code writes and reads.
pub const VERSION: u32 = 1;
/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 8 << 20;

/// A ROWS frame is closed once its payload reaches this size.
const BATCH_BYTES: usize = 1 << 20;
/// Most data bytes in one DATA frame.
const CHUNK: usize = 1 << 20;
/// Largest object size: what `set_len` and `lseek` take.
const MAX_OBJECT_SIZE: u64 = i64::MAX as u64;

const F_ROWS: u8 = 1;
const F_OBJECT: u8 = 2;
const F_DATA: u8 = 3;
const F_END: u8 = 4;

/// Tables by their number in ROWS frames.
const T_INODES: u8 = 0;
const T_DIRENTS: u8 = 1;
const T_DIR_ORDER: u8 = 2;
const T_XATTRS: u8 = 3;
const T_META: u8 = 4;
const T_ORPHANS: u8 = 5;
const T_RAFT_META: u8 = 6;
const T_DEDUPE: u8 = 7;
const T_DEDUPE_CLIENTS: u8 = 8;
const T_DEDUPE_AGE: u8 = 9;
const T_PVS: u8 = 10;
const T_PV_NAMES: u8 = 11;
const T_EXTENTS: u8 = 12;

// The dedupe tables are private to `dedupe.rs`; redb finds a table by name
// and checks its key and value types on open, so these must stay identical to
// the definitions there (`every_table_is_carried` fails otherwise).
const DEDUPE: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("dedupe");
const DEDUPE_CLIENTS: TableDefinition<u128, (u64, u64)> = TableDefinition::new("dedupe_clients");
const DEDUPE_AGE: TableDefinition<(u64, u128), ()> = TableDefinition::new("dedupe_age");

/// `meta` key set by the commit of an install whose object swap is not done.
const META_SWAP_PENDING: &str = "snapshot_swap_pending";
/// Where an install stages the archive's objects.
const STAGING: &str = "objects.incoming";
/// Where the replaced objects wait to be deleted.
const OLD: &str = "objects.old";

/// What an archive holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Table rows, all tables together.
    pub rows: u64,
    /// Object files.
    pub objects: u64,
    /// Data bytes of the object files (holes excluded).
    pub bytes: u64,
}

fn corrupt(why: impl std::fmt::Display) -> FsError {
    FsError::Store(format!("snapshot archive: {why}"))
}

/// Writes an archive of the whole of `store` to `out`, from its current
/// position. The caller guarantees that no command is applied meanwhile: the
/// rows come from one read transaction, the objects are read after it.
pub fn write_archive(store: &Store, out: &mut File) -> FsResult<ArchiveStats> {
    let txn = store.db().begin_read()?;
    let mut w = FrameWriter::new(out)?;
    let mut stats = ArchiveStats::default();

    stats.rows += dump(&mut w, &txn, INODES, T_INODES, |e, k, v| {
        e.u128(k.value());
        e.bytes(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, DIRENTS, T_DIRENTS, |e, k, v| {
        let (parent, name) = k.value();
        e.u128(parent);
        e.bytes(name);
        e.bytes(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, DIR_ORDER, T_DIR_ORDER, |e, k, v| {
        let (parent, cursor) = k.value();
        e.u128(parent);
        e.u64(cursor);
        e.bytes(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, XATTRS, T_XATTRS, |e, k, v| {
        let (id, name) = k.value();
        e.u128(id);
        e.bytes(name);
        e.bytes(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, META, T_META, |e, k, v| {
        e.bytes(k.value().as_bytes());
        e.u64(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, ORPHANS, T_ORPHANS, |e, k, _| {
        e.u128(k.value());
    })?;
    stats.rows += dump(&mut w, &txn, RAFT_META, T_RAFT_META, |e, k, v| {
        e.bytes(k.value().as_bytes());
        e.bytes(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, DEDUPE, T_DEDUPE, |e, k, v| {
        let (client, seq) = k.value();
        e.u128(client);
        e.u64(seq);
        e.bytes(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, DEDUPE_CLIENTS, T_DEDUPE_CLIENTS, |e, k, v| {
        let (stamp, high) = v.value();
        e.u128(k.value());
        e.u64(stamp);
        e.u64(high);
    })?;
    stats.rows += dump(&mut w, &txn, DEDUPE_AGE, T_DEDUPE_AGE, |e, k, _| {
        let (stamp, client) = k.value();
        e.u64(stamp);
        e.u128(client);
    })?;
    stats.rows += dump(&mut w, &txn, PVS, T_PVS, |e, k, v| {
        e.u64(k.value());
        e.bytes(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, PV_NAMES, T_PV_NAMES, |e, k, v| {
        e.bytes(k.value().as_bytes());
        e.u64(v.value());
    })?;
    stats.rows += dump(&mut w, &txn, EXTENTS, T_EXTENTS, |e, k, v| {
        let (id, start) = k.value();
        e.u128(id);
        e.u64(start);
        e.u64(v.value());
    })?;

    // Objects of the regular files the rows name, and only those: an object
    // without an inode is garbage the start-up sweep removes.
    let inodes = txn.open_table(INODES)?;
    let mut buf = vec![0u8; CHUNK];
    for item in inodes.iter()? {
        let (k, v) = item?;
        if !InodeRecord::decode_bytes(v.value())?.is_regular() {
            continue;
        }
        let id = FileId(k.value());
        let Some(file) = open_object_readonly(store, id)? else {
            continue;
        };
        let size = file.metadata()?.size();
        w.frame(F_OBJECT, &[&id.0.to_le_bytes(), &size.to_le_bytes()])?;
        stats.objects += 1;
        for extent in DataExtents::new(&file, size) {
            let (mut at, end) = extent?;
            while at < end {
                let len = ((end - at) as usize).min(CHUNK);
                file.read_exact_at(&mut buf[..len], at)?;
                w.frame(F_DATA, &[&at.to_le_bytes(), &buf[..len]])?;
                stats.bytes += len as u64;
                at += len as u64;
            }
        }
    }
    w.finish(&stats)?;
    Ok(stats)
}

/// Replaces the whole content of `store` (every table, every object file)
/// with the archive read from `archive`'s current position. The archive is
/// checked completely first: if it is corrupt, truncated or of another
/// version, nothing changes and an error is returned. The caller guarantees
/// that no command is applied meanwhile, and reloads whatever it keeps in
/// memory about the store (applied position, handles) afterwards.
pub fn install_archive(store: &Store, archive: &mut File) -> FsResult<ArchiveStats> {
    install(store, archive, false)
}

/// Finishes an install whose commit happened but whose object swap a crash
/// interrupted (see the module doc), and deletes what an install that never
/// committed left behind. Returns whether an install was finished. Must run
/// after [`Store::open`], before the store is read or changed.
pub fn resume_install(store: &Store) -> FsResult<bool> {
    let txn = store.db().begin_read()?;
    let pending = txn.open_table(META)?.get(META_SWAP_PENDING)?.is_some();
    drop(txn);
    if pending {
        tracing::warn!("finishing an interrupted snapshot install");
        finish_swap(store)?;
    } else {
        remove_dir_if_present(&store.dir().join(STAGING))?;
        remove_dir_if_present(&store.dir().join(OLD))?;
    }
    Ok(pending)
}

/// `install_archive`; `stop_after_commit` lets tests leave the brick as a
/// crash right after the commit would.
fn install(store: &Store, archive: &mut File, stop_after_commit: bool) -> FsResult<ArchiveStats> {
    let start = archive.stream_position()?;
    let mut check = Verifier::default();
    let stats = walk(archive, &mut check)?;
    check.finish()?;

    // An earlier install that committed must be finished first: its marker
    // and directories would otherwise be mistaken for this one's.
    resume_install(store)?;
    let staging = store.dir().join(STAGING);
    std::fs::create_dir(&staging)?;
    let result = stage_and_commit(store, archive, start, &staging, &stats);
    if let Err(e) = result {
        if let Err(e2) = remove_dir_if_present(&staging) {
            tracing::warn!("removing {}: {e2}", staging.display());
        }
        return Err(e);
    }
    if !stop_after_commit {
        finish_swap(store)?;
    }
    Ok(stats)
}

/// The second pass: rows into one transaction that emptied every table,
/// objects into `staging`; commits durably once the objects are on disk.
fn stage_and_commit(
    store: &Store,
    archive: &mut File,
    start: u64,
    staging: &Path,
    expected: &ArchiveStats,
) -> FsResult<()> {
    for i in 0..=255u8 {
        std::fs::create_dir(staging.join(format!("{i:02x}")))?;
    }
    archive.seek(SeekFrom::Start(start))?;
    let mut txn = store.db().begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut sink = Installer::open(&txn, store, staging)?;
        let stats = walk(archive, &mut sink)?;
        sink.close_object()?;
        // The file is ours and was just checked; a difference means it
        // changed under us, and what was staged cannot be trusted.
        if stats != *expected {
            return Err(corrupt("archive changed between its two reads"));
        }
        sink.tables.meta.insert(META_SWAP_PENDING, 1)?;
    }
    // The objects must be on disk before the rows that name them are.
    syncfs(staging)?;
    txn.commit()?;
    Ok(())
}

/// Puts the staged objects in place of the old ones, drops every cached
/// descriptor of an old one, and clears the marker. Safe to run again after a
/// crash at any point of it.
fn finish_swap(store: &Store) -> FsResult<()> {
    let objects = store.objects_dir();
    let staging = store.dir().join(STAGING);
    let old = store.dir().join(OLD);
    if staging.exists() {
        if old.exists() {
            // The old objects were moved aside already; what is at `objects`
            // now is the empty tree `Store::open` made after the crash.
            remove_dir_if_present(objects)?;
        } else if objects.exists() {
            std::fs::rename(objects, &old)?;
        }
        std::fs::rename(&staging, objects)?;
        File::open(store.dir())?.sync_all()?;
    }
    if old.exists() {
        // Every cached descriptor is of an object file that existed, so the
        // names under `old` are all there is to forget.
        for shard in std::fs::read_dir(&old)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for obj in std::fs::read_dir(shard.path())? {
                let name = obj?.file_name();
                if let Some(id) = name.to_str().and_then(|s| u128::from_str_radix(s, 16).ok()) {
                    store.forget_object_fd(FileId(id));
                }
            }
        }
        std::fs::remove_dir_all(&old)?;
    }
    let mut txn = store.db().begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.open_table(META)?.remove(META_SWAP_PENDING)?;
    txn.commit()?;
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> FsResult<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// One `syncfs` makes every staged object durable, instead of an fsync each.
fn syncfs(dir: &Path) -> FsResult<()> {
    let d = File::open(dir)?;
    // SAFETY: syncfs on a descriptor we own; no memory is passed.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(FsError::last_os());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Writing.

/// Appends fields to a row.
struct Enc<'b>(&'b mut Vec<u8>);

impl Enc<'_> {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
}

/// Frames written to the archive, with the crc of the whole stream.
struct FrameWriter<'f> {
    out: BufWriter<&'f mut File>,
    crc: crc32fast::Hasher,
}

impl<'f> FrameWriter<'f> {
    fn new(out: &'f mut File) -> FsResult<Self> {
        let mut w = FrameWriter {
            out: BufWriter::with_capacity(1 << 20, out),
            crc: crc32fast::Hasher::new(),
        };
        w.raw(MAGIC)?;
        w.raw(&VERSION.to_le_bytes())?;
        Ok(w)
    }

    fn raw(&mut self, b: &[u8]) -> FsResult<()> {
        self.crc.update(b);
        self.out.write_all(b)?;
        Ok(())
    }

    /// One frame whose payload is `parts` one after the other.
    fn frame(&mut self, tag: u8, parts: &[&[u8]]) -> FsResult<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME {
            return Err(corrupt(format!("a frame of {len} bytes is too large")));
        }
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&(len as u32).to_le_bytes());
        let mut fcrc = crc32fast::Hasher::new();
        fcrc.update(&head);
        self.raw(&head)?;
        for p in parts {
            fcrc.update(p);
            self.raw(p)?;
        }
        self.raw(&fcrc.finalize().to_le_bytes())
    }

    fn finish(mut self, stats: &ArchiveStats) -> FsResult<()> {
        let crc = self.crc.clone().finalize();
        self.frame(
            F_END,
            &[
                &stats.rows.to_le_bytes(),
                &stats.objects.to_le_bytes(),
                &stats.bytes.to_le_bytes(),
                &crc.to_le_bytes(),
            ],
        )?;
        self.out.flush()?;
        Ok(())
    }
}

/// Writes every row of one table in ROWS frames; a table that was never
/// created (`raft_meta` on a brick that never ran Raft) has none.
fn dump<K: Key + 'static, V: Value + 'static>(
    w: &mut FrameWriter<'_>,
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    table: u8,
    mut encode: impl FnMut(&mut Enc<'_>, AccessGuard<'_, K>, AccessGuard<'_, V>),
) -> FsResult<u64> {
    let t = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    // table:u8 count:u32, the count patched in when the frame is closed.
    let head = 5;
    let mut buf = Vec::with_capacity(BATCH_BYTES + 4096);
    buf.extend_from_slice(&[table, 0, 0, 0, 0]);
    let mut count = 0u32;
    let mut total = 0u64;
    let flush = |w: &mut FrameWriter<'_>, buf: &mut Vec<u8>, count: &mut u32| {
        buf[1..5].copy_from_slice(&count.to_le_bytes());
        let r = w.frame(F_ROWS, &[buf]);
        buf.truncate(head);
        *count = 0;
        r
    };
    for item in t.iter()? {
        let (k, v) = item?;
        encode(&mut Enc(&mut buf), k, v);
        count += 1;
        total += 1;
        if buf.len() >= BATCH_BYTES {
            flush(w, &mut buf, &mut count)?;
        }
    }
    if count > 0 {
        flush(w, &mut buf, &mut count)?;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------
// Reading.

/// One row, borrowed from its frame. Layout: the fields in this order, each
/// `u128`/`u64` fixed, each `&[u8]`/`&str` as `bytes`.
enum Row<'a> {
    /// id, record
    Inode(u128, &'a [u8]),
    /// parent, name, dirent
    Dirent(u128, &'a [u8], &'a [u8]),
    /// parent, cursor, name
    DirOrder(u128, u64, &'a [u8]),
    /// id, name, value
    Xattr(u128, &'a [u8], &'a [u8]),
    /// key, value
    Meta(&'a str, u64),
    /// id
    Orphan(u128),
    /// key, value
    RaftMeta(&'a str, &'a [u8]),
    /// client, seq, outcome
    Dedupe(u128, u64, &'a [u8]),
    /// client, stamp, highest seq
    DedupeClient(u128, u64, u64),
    /// stamp, client
    DedupeAge(u64, u128),
    /// PV number, record
    Pv(u64, &'a [u8]),
    /// name, PV number
    PvName(&'a str, u64),
    /// id, first block, end block
    Extent(u128, u64, u64),
}

/// Reads fields from a frame's payload; nothing may run past its end.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> FsResult<&'a [u8]> {
        if n > self.0.len() {
            return Err(corrupt("a field runs past the end of its frame"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> FsResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> FsResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> FsResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> FsResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> FsResult<u128> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> FsResult<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> FsResult<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| corrupt("a key is not UTF-8"))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn end(&self) -> FsResult<()> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(corrupt("bytes left over at the end of a frame")),
        }
    }

    fn row(&mut self, table: u8) -> FsResult<Row<'a>> {
        Ok(match table {
            T_INODES => Row::Inode(self.u128()?, self.bytes()?),
            T_DIRENTS => Row::Dirent(self.u128()?, self.bytes()?, self.bytes()?),
            T_DIR_ORDER => Row::DirOrder(self.u128()?, self.u64()?, self.bytes()?),
            T_XATTRS => Row::Xattr(self.u128()?, self.bytes()?, self.bytes()?),
            T_META => Row::Meta(self.str()?, self.u64()?),
            T_ORPHANS => Row::Orphan(self.u128()?),
            T_RAFT_META => Row::RaftMeta(self.str()?, self.bytes()?),
            T_DEDUPE => Row::Dedupe(self.u128()?, self.u64()?, self.bytes()?),
            T_DEDUPE_CLIENTS => Row::DedupeClient(self.u128()?, self.u64()?, self.u64()?),
            T_DEDUPE_AGE => Row::DedupeAge(self.u64()?, self.u128()?),
            T_PVS => Row::Pv(self.u64()?, self.bytes()?),
            T_PV_NAMES => Row::PvName(self.str()?, self.u64()?),
            T_EXTENTS => Row::Extent(self.u128()?, self.u64()?, self.u64()?),
            other => return Err(corrupt(format!("unknown table {other}"))),
        })
    }
}

/// Frames read from the archive, each checked against its crc.
struct FrameReader<'f> {
    input: BufReader<&'f mut File>,
    crc: crc32fast::Hasher,
}

impl<'f> FrameReader<'f> {
    fn new(input: &'f mut File) -> FsResult<Self> {
        let mut r = FrameReader {
            input: BufReader::with_capacity(1 << 20, input),
            crc: crc32fast::Hasher::new(),
        };
        let magic: [u8; 8] = r.raw()?;
        if &magic != MAGIC {
            return Err(corrupt("not a brick snapshot (bad magic)"));
        }
        let version = u32::from_le_bytes(r.raw()?);
        if version != VERSION {
            return Err(corrupt(format!(
                "format version {version}, this server reads {VERSION}"
            )));
        }
        Ok(r)
    }

    fn fill(&mut self, buf: &mut [u8]) -> FsResult<()> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt("truncated"),
            _ => e.into(),
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn raw<const N: usize>(&mut self) -> FsResult<[u8; N]> {
        let mut a = [0u8; N];
        self.fill(&mut a)?;
        Ok(a)
    }

    /// The next frame's tag, its payload in `buf`, and the stream crc of
    /// everything before it (which the END frame must carry).
    fn frame(&mut self, buf: &mut Vec<u8>) -> FsResult<(u8, u32)> {
        let before = self.crc.clone().finalize();
        let head: [u8; 5] = self.raw()?;
        let tag = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(corrupt(format!("a frame of {len} bytes is too large")));
        }
        if !(F_ROWS..=F_END).contains(&tag) {
            return Err(corrupt(format!("unknown frame {tag}")));
        }
        buf.resize(len, 0);
        self.fill(buf)?;
        let crc = u32::from_le_bytes(self.raw()?);
        let mut fcrc = crc32fast::Hasher::new();
        fcrc.update(&head);
        fcrc.update(buf);
        if fcrc.finalize() != crc {
            return Err(corrupt("a frame fails its crc"));
        }
        Ok((tag, before))
    }

    fn expect_eof(&mut self) -> FsResult<()> {
        let mut one = [0u8; 1];
        match self.input.read(&mut one)? {
            0 => Ok(()),
            _ => Err(corrupt("data after the end")),
        }
    }
}

/// What a pass over an archive does with its content.
trait Sink {
    fn row(&mut self, row: Row<'_>) -> FsResult<()>;
    fn object(&mut self, id: u128, size: u64) -> FsResult<()>;
    fn data(&mut self, offset: u64, data: &[u8]) -> FsResult<()>;
}

/// Reads a whole archive from `archive`'s position, checking its structure,
/// and hands its content to `sink`.
fn walk(archive: &mut File, sink: &mut dyn Sink) -> FsResult<ArchiveStats> {
    let mut r = FrameReader::new(archive)?;
    let mut buf = Vec::new();
    let mut stats = ArchiveStats::default();
    // The object being read: (id, size, lowest offset its next run may have).
    let mut object: Option<(u128, u64, u64)> = None;
    loop {
        let (tag, crc_before) = r.frame(&mut buf)?;
        let mut d = Dec(&buf);
        match tag {
            F_ROWS => {
                if object.is_some() {
                    return Err(corrupt("rows after the objects"));
                }
                let table = d.u8()?;
                let count = d.u32()?;
                for _ in 0..count {
                    sink.row(d.row(table)?)?;
                }
                d.end()?;
                stats.rows += count as u64;
            }
            F_OBJECT => {
                let id = d.u128()?;
                let size = d.u64()?;
                d.end()?;
                if object.is_some_and(|(prev, _, _)| prev >= id) {
                    return Err(corrupt("objects out of order"));
                }
                if size > MAX_OBJECT_SIZE {
                    return Err(corrupt(format!("object of {size} bytes")));
                }
                sink.object(id, size)?;
                object = Some((id, size, 0));
                stats.objects += 1;
            }
            F_DATA => {
                let Some((id, size, from)) = object.as_mut() else {
                    return Err(corrupt("data before any object"));
                };
                let offset = d.u64()?;
                let data = d.rest();
                let end = offset
                    .checked_add(data.len() as u64)
                    .filter(|&e| e <= *size)
                    .ok_or_else(|| corrupt(format!("data past the end of {}", FileId(*id))))?;
                if data.is_empty() || offset < *from {
                    return Err(corrupt(format!("data of {} out of order", FileId(*id))));
                }
                sink.data(offset, data)?;
                *from = end;
                stats.bytes += data.len() as u64;
            }
            F_END => {
                let told = ArchiveStats {
                    rows: d.u64()?,
                    objects: d.u64()?,
                    bytes: d.u64()?,
                };
                let crc = d.u32()?;
                d.end()?;
                if crc != crc_before {
                    return Err(corrupt("the stream fails its crc"));
                }
                if told != stats {
                    return Err(corrupt(format!("holds {stats:?}, says {told:?}")));
                }
                r.expect_eof()?;
                return Ok(stats);
            }
            // `FrameReader::frame` lets no other tag through.
            other => return Err(corrupt(format!("unknown frame {other}"))),
        }
    }
}

/// The first pass: checks that the rows are ones this brick can use.
#[derive(Default)]
struct Verifier {
    root: bool,
    format: bool,
}

impl Sink for Verifier {
    fn row(&mut self, row: Row<'_>) -> FsResult<()> {
        match row {
            Row::Inode(id, rec) => {
                InodeRecord::decode_bytes(rec)
                    .map_err(|e| corrupt(format!("inode {}: {e}", FileId(id))))?;
                self.root |= id == ROOT_ID.0;
            }
            Row::Dirent(parent, _, d) => {
                Dirent::decode(d)
                    .map_err(|e| corrupt(format!("entry in {}: {e}", FileId(parent))))?;
            }
            Row::Meta(key, v) if key == META_FORMAT => {
                if v != FORMAT_VERSION {
                    return Err(corrupt(format!(
                        "brick format version {v}, this server reads {FORMAT_VERSION}"
                    )));
                }
                self.format = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn object(&mut self, _id: u128, _size: u64) -> FsResult<()> {
        Ok(())
    }

    fn data(&mut self, _offset: u64, _data: &[u8]) -> FsResult<()> {
        Ok(())
    }
}

impl Verifier {
    fn finish(&self) -> FsResult<()> {
        if !self.root {
            return Err(corrupt("no root directory"));
        }
        if !self.format {
            return Err(corrupt("no format version"));
        }
        Ok(())
    }
}

/// Every table of a brick, open in the install's write transaction.
struct Tables<'t> {
    inodes: Table<'t, u128, &'static [u8]>,
    dirents: Table<'t, (u128, &'static [u8]), &'static [u8]>,
    order: Table<'t, (u128, u64), &'static [u8]>,
    xattrs: Table<'t, (u128, &'static [u8]), &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    orphans: Table<'t, u128, ()>,
    raft_meta: Table<'t, &'static str, &'static [u8]>,
    dedupe: Table<'t, (u128, u64), &'static [u8]>,
    dedupe_clients: Table<'t, u128, (u64, u64)>,
    dedupe_age: Table<'t, (u64, u128), ()>,
    pvs: Table<'t, u64, &'static [u8]>,
    pv_names: Table<'t, &'static str, u64>,
    extents: Table<'t, (u128, u64), u64>,
}

/// The second pass: rows into emptied tables, objects into the staging
/// directory.
struct Installer<'t, 's> {
    tables: Tables<'t>,
    store: &'s Store,
    staging: PathBuf,
    current: Option<File>,
}

impl<'t, 's> Installer<'t, 's> {
    fn open(txn: &'t WriteTransaction, store: &'s Store, staging: &Path) -> FsResult<Self> {
        // Deleting and recreating a table empties it in one step, whatever
        // its size.
        txn.delete_table(INODES)?;
        txn.delete_table(DIRENTS)?;
        txn.delete_table(DIR_ORDER)?;
        txn.delete_table(XATTRS)?;
        txn.delete_table(META)?;
        txn.delete_table(ORPHANS)?;
        txn.delete_table(RAFT_META)?;
        txn.delete_table(DEDUPE)?;
        txn.delete_table(DEDUPE_CLIENTS)?;
        txn.delete_table(DEDUPE_AGE)?;
        txn.delete_table(PVS)?;
        txn.delete_table(PV_NAMES)?;
        txn.delete_table(EXTENTS)?;
        Ok(Installer {
            tables: Tables {
                inodes: txn.open_table(INODES)?,
                dirents: txn.open_table(DIRENTS)?,
                order: txn.open_table(DIR_ORDER)?,
                xattrs: txn.open_table(XATTRS)?,
                meta: txn.open_table(META)?,
                orphans: txn.open_table(ORPHANS)?,
                raft_meta: txn.open_table(RAFT_META)?,
                dedupe: txn.open_table(DEDUPE)?,
                dedupe_clients: txn.open_table(DEDUPE_CLIENTS)?,
                dedupe_age: txn.open_table(DEDUPE_AGE)?,
                pvs: txn.open_table(PVS)?,
                pv_names: txn.open_table(PV_NAMES)?,
                extents: txn.open_table(EXTENTS)?,
            },
            store,
            staging: staging.to_path_buf(),
            current: None,
        })
    }

    fn close_object(&mut self) -> FsResult<()> {
        // Synced all at once by `syncfs` before the commit.
        self.current = None;
        Ok(())
    }

    /// Where `id`'s object goes: its place in the store's layout
    /// (`Store::object_path` is the one place that knows it), under the
    /// staging directory.
    fn staged_path(&self, id: FileId) -> FsResult<PathBuf> {
        let path = self.store.object_path(id);
        let rel = path
            .strip_prefix(self.store.objects_dir())
            .map_err(|_| FsError::Store("object path outside the object directory".into()))?;
        Ok(self.staging.join(rel))
    }
}

impl Sink for Installer<'_, '_> {
    fn row(&mut self, row: Row<'_>) -> FsResult<()> {
        let t = &mut self.tables;
        match row {
            Row::Inode(id, rec) => {
                t.inodes.insert(id, rec)?;
            }
            Row::Dirent(parent, name, d) => {
                t.dirents.insert((parent, name), d)?;
            }
            Row::DirOrder(parent, cursor, name) => {
                t.order.insert((parent, cursor), name)?;
            }
            Row::Xattr(id, name, value) => {
                t.xattrs.insert((id, name), value)?;
            }
            Row::Meta(key, v) => {
                t.meta.insert(key, v)?;
            }
            Row::Orphan(id) => {
                t.orphans.insert(id, ())?;
            }
            Row::RaftMeta(key, v) => {
                t.raft_meta.insert(key, v)?;
            }
            Row::Dedupe(client, seq, rec) => {
                t.dedupe.insert((client, seq), rec)?;
            }
            Row::DedupeClient(client, stamp, high) => {
                t.dedupe_clients.insert(client, (stamp, high))?;
            }
            Row::DedupeAge(stamp, client) => {
                t.dedupe_age.insert((stamp, client), ())?;
            }
            Row::Pv(num, rec) => {
                t.pvs.insert(num, rec)?;
            }
            Row::PvName(name, num) => {
                t.pv_names.insert(name, num)?;
            }
            Row::Extent(id, start, end) => {
                t.extents.insert((id, start), end)?;
            }
        }
        Ok(())
    }

    fn object(&mut self, id: u128, size: u64) -> FsResult<()> {
        self.close_object()?;
        let path = self.staged_path(FileId(id))?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        // Holes are wherever no run is written.
        f.set_len(size)?;
        self.current = Some(f);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        let f = self
            .current
            .as_ref()
            .ok_or_else(|| corrupt("data before any object"))?;
        f.write_all_at(data, offset)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::testing::{b, fid, Brick};
    use crate::digest::{tree_digest, TreeDigest};
    use crate::ops::Operation;
    use std::sync::Arc;

    const FAR: u64 = 5 << 30;

    /// Directories, files, a sparse file with data at 5 GiB, a hard link, a
    /// symlink, a fifo, xattrs, an orphan, dedupe records, raft_meta.
    fn source() -> Brick {
        let mut br = Brick::new();
        br.mkdir(ROOT_ID, "d", fid(1, 1));
        br.mkdir(fid(1, 1), "sub", fid(1, 2));
        br.create(fid(1, 1), "f", fid(1, 3));
        br.write(fid(1, 3), 0, b"source content");
        br.create(ROOT_ID, "sparse", fid(1, 4));
        br.write(fid(1, 4), 0, b"head");
        br.write(fid(1, 4), FAR, b"far away");
        br.apply(Operation::Link {
            id: fid(1, 3),
            new_parent: fid(1, 2),
            new_name: b("hard"),
        });
        br.apply(Operation::Symlink {
            parent: ROOT_ID,
            name: b("ln"),
            id: fid(1, 5),
            target: b("d/f"),
            uid: 5,
            gid: 6,
        });
        br.apply(Operation::Mknod {
            parent: fid(1, 2),
            name: b("fifo"),
            id: fid(1, 6),
            mode: libc::S_IFIFO | 0o640,
            rdev: 0,
            uid: 0,
            gid: 0,
        });
        br.setxattr(fid(1, 3), "user.k", b"v");
        br.setxattr(ROOT_ID, "trusted.x", &[0, 1, 2]);
        br.apply_request(
            77,
            Operation::Create {
                parent: ROOT_ID,
                name: b("open"),
                id: fid(1, 7),
                mode: 0o600,
                uid: 0,
                gid: 0,
                exclusive: true,
                truncate: false,
            },
        );
        br.apply_request(
            77,
            Operation::Write {
                id: fid(1, 7),
                offset: 0,
                data: b("held open"),
                append: false,
            },
        );
        br.apply_request(
            77,
            Operation::Unlink {
                parent: ROOT_ID,
                name: b("open"),
            },
        );
        br.create(ROOT_ID, "empty", fid(1, 8));
        put_raft_meta(&br, &[("applied", b"log id"), ("membership", b"m")]);
        br
    }

    /// Other content, some of it under ids the source also uses.
    fn target() -> Brick {
        let mut br = Brick::new();
        br.mkdir(ROOT_ID, "other", fid(2, 1));
        br.create(fid(2, 1), "x", fid(2, 2));
        br.write(fid(2, 2), 0, b"target only");
        br.setxattr(fid(2, 2), "user.t", b"t");
        // Same id as the source's "d/f", other bytes.
        br.create(ROOT_ID, "f", fid(1, 3));
        br.write(fid(1, 3), 0, b"stale bytes of the target");
        br.apply_request(
            99,
            Operation::Mkdir {
                parent: ROOT_ID,
                name: b("req"),
                id: fid(2, 3),
                mode: 0o700,
                uid: 0,
                gid: 0,
            },
        );
        put_raft_meta(&br, &[("applied", b"old")]);
        br
    }

    /// Written directly, as `raft/state_machine.rs` records its position:
    /// this module only has to carry the rows, whatever they mean.
    fn put_raft_meta(br: &Brick, entries: &[(&str, &[u8])]) {
        let txn = br.store.db().begin_write().unwrap();
        {
            let mut t = txn.open_table(RAFT_META).unwrap();
            for (k, v) in entries {
                t.insert(*k, *v).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn get_raft_meta(br: &Brick, key: &str) -> Option<Vec<u8>> {
        let txn = br.store.db().begin_read().unwrap();
        let t = txn.open_table(RAFT_META).unwrap();
        let v = t.get(key).unwrap().map(|v| v.value().to_vec());
        v
    }

    fn archive_of(br: &Brick) -> (File, ArchiveStats) {
        let mut f = tempfile::tempfile().unwrap();
        let stats = write_archive(&br.store, &mut f).unwrap();
        f.rewind().unwrap();
        (f, stats)
    }

    fn archive_bytes(br: &Brick) -> Vec<u8> {
        let (mut f, _) = archive_of(br);
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    fn digest(br: &Brick) -> TreeDigest {
        tree_digest(&br.store).unwrap()
    }

    /// Every row of every carried table, as the archive writes them: equal
    /// dumps mean equal stores (the archive's own order is the key order).
    fn rows(br: &Brick) -> Vec<u8> {
        let bytes = archive_bytes(br);
        let mut f = file_of(&bytes);
        struct Rows(Vec<u8>);
        impl Sink for Rows {
            fn row(&mut self, row: Row<'_>) -> FsResult<()> {
                self.0
                    .extend(format!("{:?}\n", RowDebug(&row)).into_bytes());
                Ok(())
            }
            fn object(&mut self, _: u128, _: u64) -> FsResult<()> {
                Ok(())
            }
            fn data(&mut self, _: u64, _: &[u8]) -> FsResult<()> {
                Ok(())
            }
        }
        let mut sink = Rows(Vec::new());
        walk(&mut f, &mut sink).unwrap();
        sink.0
    }

    struct RowDebug<'r, 'a>(&'r Row<'a>);
    impl std::fmt::Debug for RowDebug<'_, '_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                Row::Inode(a, b) => write!(f, "inode {a} {b:?}"),
                Row::Dirent(a, b, c) => write!(f, "dirent {a} {b:?} {c:?}"),
                Row::DirOrder(a, b, c) => write!(f, "order {a} {b} {c:?}"),
                Row::Xattr(a, b, c) => write!(f, "xattr {a} {b:?} {c:?}"),
                Row::Meta(a, b) => write!(f, "meta {a} {b}"),
                Row::Orphan(a) => write!(f, "orphan {a}"),
                Row::RaftMeta(a, b) => write!(f, "raft {a} {b:?}"),
                Row::Dedupe(a, b, c) => write!(f, "dedupe {a} {b} {c:?}"),
                Row::DedupeClient(a, b, c) => write!(f, "client {a} {b} {c}"),
                Row::DedupeAge(a, b) => write!(f, "age {a} {b}"),
                Row::Pv(a, b) => write!(f, "pv {a} {b:?}"),
                Row::PvName(a, b) => write!(f, "pv-name {a} {b}"),
                Row::Extent(a, b, c) => write!(f, "extent {a} {b} {c}"),
            }
        }
    }

    fn object_count(br: &Brick) -> usize {
        let mut n = 0;
        for shard in std::fs::read_dir(br.store.objects_dir()).unwrap() {
            n += std::fs::read_dir(shard.unwrap().path()).unwrap().count();
        }
        n
    }

    fn leftovers(br: &Brick) -> bool {
        br.dir.path().join(STAGING).exists() || br.dir.path().join(OLD).exists()
    }

    #[test]
    fn install_makes_the_target_the_source() {
        let src = source();
        let (mut archive, stats) = archive_of(&src);
        let len = archive.metadata().unwrap().len();
        assert!(len < 64 * 1024, "a sparse file made a {len}-byte archive");
        // f, sparse, the orphan (empty was never written: no object).
        assert_eq!(stats.objects, 3);
        // The data written, give or take the file system's block rounding.
        assert!(
            (14 + 4 + 8 + 9..64 * 1024).contains(&stats.bytes),
            "{stats:?}"
        );

        let mut dst = target();
        // A cached descriptor of the target's own object under the source's
        // id: it must not survive the install.
        assert_eq!(
            &dst.store.read(fid(1, 3), 0, 100).unwrap()[..],
            b"stale bytes of the target"
        );
        let got = install_archive(&dst.store, &mut archive).unwrap();
        assert_eq!(got, stats);

        assert_eq!(digest(&dst), digest(&src));
        assert_eq!(
            rows(&dst),
            rows(&src),
            "every table, raft_meta and dedupe too"
        );
        assert_eq!(archive_bytes(&dst), archive_bytes(&src));
        assert!(!leftovers(&dst));

        // The target's own content is gone, objects included.
        assert!(!dst.store.exists(fid(2, 2)).unwrap());
        assert!(!dst.store.exists(fid(2, 3)).unwrap());
        assert!(!dst.store.object_path(fid(2, 2)).exists());
        assert_eq!(object_count(&dst), 3);
        assert_eq!(
            dst.store.lookup(ROOT_ID, b"other").unwrap_err().errno(),
            libc::ENOENT
        );
        assert_eq!(
            get_raft_meta(&dst, "applied").as_deref(),
            Some(&b"log id"[..])
        );
        assert_eq!(crate::dedupe::record_count(&dst.store).unwrap(), 3);

        // Reads see the source's bytes, through fresh descriptors.
        assert_eq!(
            &dst.store.read(fid(1, 3), 0, 100).unwrap()[..],
            b"source content"
        );
        assert_eq!(
            &dst.store.read(fid(1, 4), FAR, 100).unwrap()[..],
            b"far away"
        );
        assert_eq!(
            &dst.store.read(fid(1, 4), 1 << 30, 4).unwrap()[..],
            &[0, 0, 0, 0]
        );
        let m = std::fs::metadata(dst.store.object_path(fid(1, 4))).unwrap();
        assert_eq!(m.size(), FAR + 8);
        assert!(m.blocks() * 512 < 1 << 20, "the sparse file was filled in");
        let attr = dst.store.lookup(fid(1, 2), b"hard").unwrap();
        assert_eq!(attr.nlink, 2);
        assert_eq!(&dst.store.readlink(fid(1, 5)).unwrap()[..], b"d/f");
        assert_eq!(
            &dst.store.getxattr(ROOT_ID, b"trusted.x").unwrap()[..],
            &[0, 1, 2]
        );
        assert_eq!(dst.store.orphans().unwrap(), vec![fid(1, 7)]);

        // The brick goes on from there: a state machine reopened on it
        // applies new commands.
        dst.sm = crate::apply::StateMachine::new(dst.store.clone()).unwrap();
        dst.write(fid(1, 3), 0, b"S");
        assert_eq!(&dst.store.read(fid(1, 3), 0, 3).unwrap()[..], b"Sou");
    }

    #[test]
    fn install_into_a_fresh_brick_and_back() {
        let src = source();
        let (mut archive, _) = archive_of(&src);
        let dst = Brick::new();
        install_archive(&dst.store, &mut archive).unwrap();
        assert_eq!(digest(&dst), digest(&src));
        // A fresh brick's archive installs over a full one: back to empty.
        let fresh = Brick::new();
        let (mut archive, stats) = archive_of(&fresh);
        assert_eq!(stats.objects, 0);
        install_archive(&dst.store, &mut archive).unwrap();
        assert_eq!(digest(&dst), digest(&fresh));
        assert_eq!(object_count(&dst), 0);
    }

    #[test]
    fn archive_starts_at_the_current_position() {
        let src = source();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"unrelated prefix").unwrap();
        write_archive(&src.store, &mut f).unwrap();
        f.seek(SeekFrom::Start(16)).unwrap();
        let dst = Brick::new();
        install_archive(&dst.store, &mut f).unwrap();
        assert_eq!(digest(&dst), digest(&src));
    }

    #[test]
    fn corrupt_archives_are_refused_and_change_nothing() {
        let src = source();
        let good = archive_bytes(&src);
        let dst = target();
        let before = digest(&dst);
        let before_rows = rows(&dst);

        let mut bad: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [
            0,
            4,
            8,
            12,
            13,
            good.len() / 2,
            good.len() - 4,
            good.len() - 1,
        ] {
            bad.push((format!("truncated to {cut}"), good[..cut].to_vec()));
        }
        // A flip in every part: magic, version, frame headers, rows, object
        // data, the END frame.
        let step = (good.len() / 40).max(1);
        for at in (0..good.len())
            .step_by(step)
            .chain([1, 9, 12, 13, good.len() - 5])
        {
            let mut v = good.clone();
            v[at] ^= 0x10;
            bad.push((format!("bit flipped at {at}"), v));
        }
        let mut v = good.clone();
        v.push(0);
        bad.push(("a byte appended".into(), v));

        for (what, bytes) in bad {
            let mut f = file_of(&bytes);
            let r = install_archive(&dst.store, &mut f);
            assert!(r.is_err(), "{what}: accepted");
            assert_eq!(digest(&dst), before, "{what}: the target changed");
            assert!(!leftovers(&dst), "{what}: left staging behind");
        }
        assert_eq!(rows(&dst), before_rows);
        assert_eq!(
            &dst.store.read(fid(2, 2), 0, 100).unwrap()[..],
            b"target only"
        );

        // The good one still installs.
        install_archive(&dst.store, &mut file_of(&good)).unwrap();
        assert_eq!(digest(&dst), digest(&src));
    }

    /// Frames that are well-formed and checksummed but wrong.
    #[test]
    fn bad_content_is_refused() {
        let dst = target();
        let before = digest(&dst);
        let build = |frames: &[(u8, Vec<u8>)], stats: ArchiveStats| {
            let mut f = tempfile::tempfile().unwrap();
            {
                let mut w = FrameWriter::new(&mut f).unwrap();
                for (tag, payload) in frames {
                    w.frame(*tag, &[payload]).unwrap();
                }
                w.finish(&stats).unwrap();
            }
            f.rewind().unwrap();
            f
        };
        let mut rows_frame = vec![T_META, 1, 0, 0, 0];
        Enc(&mut rows_frame).bytes(META_FORMAT.as_bytes());
        Enc(&mut rows_frame).u64(FORMAT_VERSION);
        let mut root = vec![T_INODES, 1, 0, 0, 0];
        Enc(&mut root).u128(ROOT_ID.0);
        Enc(&mut root).bytes(&InodeRecord::default().encode_vec());
        let object = |id: u128, size: u64| {
            let mut v = Vec::new();
            Enc(&mut v).u128(id);
            Enc(&mut v).u64(size);
            (F_OBJECT, v)
        };
        let data = |offset: u64, bytes: &[u8]| {
            let mut v = offset.to_le_bytes().to_vec();
            v.extend_from_slice(bytes);
            (F_DATA, v)
        };
        let rows = |n| ArchiveStats {
            rows: n,
            ..Default::default()
        };
        let base = vec![(F_ROWS, root.clone()), (F_ROWS, rows_frame.clone())];
        let with = |more: Vec<(u8, Vec<u8>)>| base.iter().cloned().chain(more).collect::<Vec<_>>();

        // Sanity: the base alone is a valid (nearly empty) brick.
        let ok = Brick::new();
        install_archive(&ok.store, &mut build(&base, rows(2))).unwrap();

        let s = |rows, objects, bytes| ArchiveStats {
            rows,
            objects,
            bytes,
        };
        type Frames = Vec<(u8, Vec<u8>)>;
        let cases: Vec<(&str, Frames, ArchiveStats)> = vec![
            ("no root", vec![(F_ROWS, rows_frame.clone())], rows(1)),
            ("no format", vec![(F_ROWS, root.clone())], rows(1)),
            ("wrong counts", base.clone(), rows(3)),
            (
                "unknown table",
                with(vec![(F_ROWS, vec![42, 1, 0, 0, 0, 0])]),
                rows(3),
            ),
            (
                "row count past the frame",
                with(vec![(F_ROWS, vec![T_ORPHANS, 2, 0, 0, 0])]),
                rows(4),
            ),
            (
                "bad inode record",
                with(vec![(F_ROWS, {
                    let mut v = vec![T_INODES, 1, 0, 0, 0];
                    Enc(&mut v).u128(5);
                    Enc(&mut v).bytes(&[0xff, 0xff]);
                    v
                })]),
                rows(3),
            ),
            (
                "huge field length",
                with(vec![(F_ROWS, {
                    let mut v = vec![T_XATTRS, 1, 0, 0, 0];
                    Enc(&mut v).u128(5);
                    v.extend_from_slice(&u32::MAX.to_le_bytes());
                    v
                })]),
                rows(3),
            ),
            (
                "data before an object",
                with(vec![data(0, b"x")]),
                s(2, 0, 1),
            ),
            (
                "data past the size",
                with(vec![object(9, 2), data(1, b"xy")]),
                s(2, 1, 2),
            ),
            (
                "data overlapping",
                with(vec![object(9, 9), data(2, b"xy"), data(3, b"z")]),
                s(2, 1, 3),
            ),
            (
                "objects out of order",
                with(vec![object(9, 0), object(9, 0)]),
                s(2, 2, 0),
            ),
            (
                "object too large",
                with(vec![object(9, u64::MAX)]),
                s(2, 1, 0),
            ),
            (
                "rows after objects",
                with(vec![object(9, 0), (F_ROWS, root.clone())]),
                s(3, 1, 0),
            ),
            ("unknown frame", with(vec![(9, vec![])]), rows(2)),
        ];
        for (what, frames, stats) in cases {
            let r = install_archive(&dst.store, &mut build(&frames, stats));
            assert!(r.is_err(), "{what}: accepted");
            assert_eq!(digest(&dst), before, "{what}: the target changed");
        }

        // A frame length above the bound is refused before anything is read.
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.push(F_ROWS);
        v.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        let err = install_archive(&dst.store, &mut file_of(&v)).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&2u32.to_le_bytes());
        let err = install_archive(&dst.store, &mut file_of(&v)).unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
        assert_eq!(digest(&dst), before);
    }

    /// A crash after the commit, at each step of the object swap, is
    /// finished by `resume_install` on the reopened brick.
    #[test]
    fn an_interrupted_install_is_finished_after_a_restart() {
        let src = source();
        let good = archive_bytes(&src);
        for step in 0..3 {
            let dst = target();
            install(&dst.store, &mut file_of(&good), true).unwrap();
            let dir = dst.dir.path().to_path_buf();
            if step >= 1 {
                std::fs::rename(dir.join("objects"), dir.join(OLD)).unwrap();
            }
            if step >= 2 {
                std::fs::rename(dir.join(STAGING), dir.join("objects")).unwrap();
            }
            let Brick {
                dir: tmp,
                store,
                sm,
                ..
            } = dst;
            drop(sm);
            drop(store);
            // Store::open remakes an empty object tree when there is none.
            let store =
                Arc::new(Store::open(tmp.path(), 0o755, crate::records::Time::new(1, 0)).unwrap());
            assert!(resume_install(&store).unwrap(), "step {step}");
            assert!(!resume_install(&store).unwrap(), "step {step}: twice");
            assert_eq!(tree_digest(&store).unwrap(), digest(&src), "step {step}");
            assert!(!tmp.path().join(STAGING).exists() && !tmp.path().join(OLD).exists());
            assert_eq!(
                &store.read(fid(1, 3), 0, 100).unwrap()[..],
                b"source content"
            );
        }

        // A crash before the commit: the staging directory is just deleted.
        let dst = target();
        let before = digest(&dst);
        std::fs::create_dir(dst.dir.path().join(STAGING)).unwrap();
        assert!(!resume_install(&dst.store).unwrap());
        assert!(!leftovers(&dst));
        assert_eq!(digest(&dst), before);
    }

    /// Every table a working brick has is one the archive carries, so a
    /// table added later cannot be silently left out of snapshots.
    #[test]
    fn every_table_is_carried() {
        let src = source();
        let txn = src.store.db().begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        use redb::TableHandle;
        let carried = [
            INODES.name(),
            DIRENTS.name(),
            DIR_ORDER.name(),
            XATTRS.name(),
            META.name(),
            ORPHANS.name(),
            RAFT_META.name(),
            DEDUPE.name(),
            DEDUPE_CLIENTS.name(),
            DEDUPE_AGE.name(),
            PVS.name(),
            PV_NAMES.name(),
            EXTENTS.name(),
        ];
        for n in &names {
            assert!(
                carried.contains(&n.as_str()),
                "table {n} is not in snapshots"
            );
        }
        assert_eq!(names.len(), carried.len());
        // And with the types dedupe.rs gives them (redb checks on open).
        txn.open_table(DEDUPE).unwrap();
        txn.open_table(DEDUPE_CLIENTS).unwrap();
        txn.open_table(DEDUPE_AGE).unwrap();
    }
}
