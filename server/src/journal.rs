//! The brick's write-ahead journal: every command is appended here, with its
//! index, before it is applied, so that a change acknowledged to a client
//! survives a crash of the server process.
//!
//! # Why
//!
//! The metadata store commits each operation without an fsync
//! (`Durability::None`), and redb keeps such commits only in the process until
//! the next durable commit: a `kill -9` takes the store back to its last
//! durable commit, up to a second old. Object files do not go back: their
//! writes are in the kernel's page cache. The journal is an ordinary file
//! written the same way, so after a kill it holds every command that was
//! acknowledged (the reply goes out only after the append returned), and
//! recovery re-applies those the store lost. Only a power loss can lose
//! un-fsynced changes, as with a local file system; `fsync` from a client
//! syncs the journal and the object (see `applier.rs`).
//!
//! # Format
//!
//! `BRICK/journal` starts with an 8-byte magic, then frames
//!
//! ```text
//! [u32 len][u32 crc32][u64 index][len bytes: a prost `RecordMsg`]   (little endian)
//! ```
//!
//! The crc covers `len`, `index` and the payload, so a torn or zeroed tail is
//! recognised. A record is either a command (`ops_codec.rs`) or a note that
//! the command with the same index failed (with its errno if that was an
//! answer to the client), so that recovery records the same failure instead
//! of trying again a command that, say, ran out of space the first time. Each
//! frame goes out in one write(2), without fsync.
//!
//! # Checkpoints
//!
//! Each applied command records its index (`applied_index` in the store's
//! `meta` table) in its own transaction. When the store is made durable at
//! index D (the one-second timer, shutdown, a size limit, a barrier), no entry
//! up to D is needed any more, and since that happens under the applier's
//! lock, that is every entry: the journal starts over after its header (the
//! file keeps its blocks, see [`Journal`]). Its size is thus bounded by what
//! one interval writes, and by [`CHECKPOINT_BYTES`] plus one entry.
//!
//! # Recovery
//!
//! At start the store is at its last durable state with applied index D; the
//! entries after D are replayed in order through the same apply path, the
//! store is made durable and the journal emptied, and only then are orphans
//! reclaimed and stray objects swept (every object a replayed entry names has
//! its inode again by then). Replay stops at the first frame that is torn,
//! fails its crc, or is not the next index: such a frame is left from before
//! the last checkpoint, or was never acknowledged (or a power failure took
//! it, with what followed).
//!
//! # Why replaying onto newer object files converges
//!
//! The store replays exactly: it is back at D and gets entries D+1.. once
//! each, in order. Object files are *ahead*: they already hold the effects of
//! some or all of those entries. Replaying a suffix σ of the log on them must
//! end where the original run ended, i.e. σ(σ(S)) = σ(S) for the object state
//! S at D. That holds for every operation that only sets bytes at fixed
//! positions, as the journal carries them:
//!
//! - a write at an explicit offset (an append is resolved to one, using the
//!   size at the time, before it is journalled: replaying "append" would
//!   append twice);
//! - a size change: truncate, setattr size, open with O_TRUNC;
//! - fallocate that allocates, punches or zeroes a range. The shifting modes
//!   (collapse, insert range) are refused with EOPNOTSUPP, as the FUSE kernel
//!   module refuses them anyway: replaying an insert inserts twice.
//!
//! For each such operation, every byte it leaves is either one it sets itself
//! (data, or zeroes) or the byte that was at the same position, and the size
//! it leaves is a constant or `max(old size, constant)`. So after σ, a byte at
//! position p is decided by the last operation in σ that sets p regardless of
//! what came before (a write or zeroing covering p, or a truncation below p
//! followed by a zero-filling extension), which is the same operation with the
//! same value in both runs; if none does, the byte came from S through
//! operations that keep it, and is the same too. Sizes compose to a constant or
//! `max(x, c)`, and both are idempotent. Namespace operations touch no object
//! (a new file has no object until written; a reclaimed file's object is
//! deleted only after the store has durably forgotten it, so no replayed entry
//! can meet a deleted object).
//!
//! `copy_file_range` does not only set bytes: it copies bytes of another file
//! (or of another range of the same file), so replaying it is right only if
//! the source range reads as it did. The applier makes sure it does:
//! - the length is resolved to what the source holds at the time, so a source
//!   that has grown since cannot make the replayed copy longer;
//! - before any command that would change an object that a copy in the current
//!   suffix read, the store is made durable (a barrier), so no replayed copy
//!   ever sees a later change to its source;
//! - a copy within one file is preceded by a barrier too: the copy itself then
//!   starts the suffix, and the kernel refuses overlapping ranges, so the bytes
//!   it writes are never the bytes it reads.
//!
//! With those, the source of a copy from another file is only changed, in the
//! suffix, by commands before the copy, which converge by the argument above
//! (the copy itself does not change its source); a replayed copy thus writes
//! the same bytes, at fixed positions, as the original.
//!
//! # What a replay records differently
//!
//! Dedupe outcomes recorded while replaying are those of the replayed
//! commands, which equal the originals except where an outcome reports an
//! object's size or blocks (the attributes in `Attr`, the size in `Written`):
//! the object may already be larger than it was when the command first ran.
//! A copy that was cut short by an error the first time copies its whole
//! (resolved) length on replay.

use crate::error::{FsError, FsResult};
use crate::ops::Command;
use crate::ops_codec::{CommandMsg, OpMsg};
use kadalu_proto::MAX_MESSAGE_SIZE;
use prost::bytes::Bytes;
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The journal's file name in the brick directory.
pub const JOURNAL_FILE: &str = "journal";
const MAGIC: &[u8; 8] = b"KDLJNL01";
/// Bytes before the first frame.
pub const HEADER_LEN: u64 = MAGIC.len() as u64;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER: usize = 16;
/// Largest payload accepted: a command carries at most one wire message's
/// worth of data, plus its own fields.
pub const MAX_ENTRY: usize = MAX_MESSAGE_SIZE + 64 * 1024;
/// A journal this large is checkpointed at once rather than at the next tick.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// One journal entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A command, about to be applied.
    Command(Command),
    /// The command with the same index failed and changed nothing. `Some`:
    /// the errno it answered, recorded for deduplication; `None`: a fault of
    /// this brick, not recorded.
    Failed(Option<i32>),
}

/// The stored form of a [`Record`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordMsg {
    #[prost(oneof = "RecordBody", tags = "1, 2")]
    pub body: Option<RecordBody>,
}

// Built and dropped once per append; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RecordBody {
    #[prost(message, tag = "1")]
    Command(CommandMsg),
    #[prost(message, tag = "2")]
    Failed(FailedMsg),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FailedMsg {
    /// 0: a fault of the brick, not an answer.
    #[prost(int32, tag = "1")]
    pub errno: i32,
}

fn record_msg(record: RecordRef<'_>) -> RecordMsg {
    RecordMsg {
        body: Some(match record {
            RecordRef::Command(c) => RecordBody::Command(CommandMsg::from(c)),
            RecordRef::Failed(errno) => RecordBody::Failed(FailedMsg {
                errno: errno.unwrap_or(0),
            }),
        }),
    }
}

/// A record to append, borrowed (commands are not cloned to be journalled).
#[derive(Debug, Clone, Copy)]
pub enum RecordRef<'a> {
    Command(&'a Command),
    Failed(Option<i32>),
}

/// Decodes a record payload. A payload that passed its crc but is not a
/// record is an error, not a torn tail: it was written whole, by something
/// this code does not understand.
pub fn decode_record(payload: Bytes) -> FsResult<Record> {
    let msg = RecordMsg::decode(payload)?;
    match msg.body {
        Some(RecordBody::Command(c)) => Ok(Record::Command(Command::try_from(c)?)),
        Some(RecordBody::Failed(f)) => Ok(Record::Failed((f.errno != 0).then_some(f.errno))),
        None => Err(FsError::Store("journal record of an unknown kind".into())),
    }
}

fn crc(len: u32, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the frame of `record` at `index` to `out`. EINVAL if its payload
/// exceeds [`MAX_ENTRY`] (the wire bounds keep every real command below it).
pub fn encode_frame(index: u64, record: RecordRef<'_>, out: &mut Vec<u8>) -> FsResult<()> {
    let data = encode_frame_split(index, record, out)?;
    out.extend_from_slice(&data);
    Ok(())
}

/// [`encode_frame`] without copying a write's data: appends the frame up to where
/// the data begins to `out` and returns the data, which completes the frame.
/// Empty for every record but a write.
///
/// Protobuf lets fields come in any order, so the data is encoded as the last
/// field of the write (before `append`, where prost would put it, when that is
/// set; decoding is the same either way, see the tests).
pub fn encode_frame_split(index: u64, record: RecordRef<'_>, out: &mut Vec<u8>) -> FsResult<Bytes> {
    let mut msg = record_msg(record);
    let write = match &mut msg.body {
        Some(RecordBody::Command(cmd)) => match cmd.op.take() {
            Some(OpMsg::Write(mut w)) if !w.data.is_empty() => {
                let data = std::mem::take(&mut w.data);
                Some((w, data))
            }
            other => {
                cmd.op = other;
                None
            }
        },
        _ => None,
    };
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    let data = match (write, &msg.body) {
        (Some((w, data)), Some(RecordBody::Command(cmd))) => {
            use prost::encoding::{
                encode_key, encode_varint, encoded_len_varint, key_len, WireType,
            };
            let field = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
            let write_len = w.encoded_len() + field(WRITE_DATA_TAG, data.len());
            let cmd_len = cmd.encoded_len() + field(OP_WRITE_TAG, write_len);
            if field(RECORD_COMMAND_TAG, cmd_len) > MAX_ENTRY {
                out.truncate(start);
                return Err(FsError::Os(libc::EINVAL));
            }
            encode_key(RECORD_COMMAND_TAG, WireType::LengthDelimited, out);
            encode_varint(cmd_len as u64, out);
            cmd.encode_raw(out);
            encode_key(OP_WRITE_TAG, WireType::LengthDelimited, out);
            encode_varint(write_len as u64, out);
            w.encode_raw(out);
            encode_key(WRITE_DATA_TAG, WireType::LengthDelimited, out);
            encode_varint(data.len() as u64, out);
            data
        }
        _ => {
            if msg.encoded_len() > MAX_ENTRY {
                out.truncate(start);
                return Err(FsError::Os(libc::EINVAL));
            }
            msg.encode_raw(out);
            Bytes::new()
        }
    };
    let len = (out.len() - start - FRAME_HEADER + data.len()) as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(&out[start + FRAME_HEADER..]);
    h.update(&data);
    let sum = h.finalize();
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&index.to_le_bytes());
    Ok(data)
}

/// Field numbers of the path from a record to a write's data, as the derives
/// above and in `ops_codec` give them (the split encoding's test holds them to it).
const RECORD_COMMAND_TAG: u32 = 1;
const OP_WRITE_TAG: u32 = 20;
const WRITE_DATA_TAG: u32 = 3;

/// `pwritev` of all of `bufs` at `offset`, again from where a short write stopped.
fn write_all_vectored_at(file: &File, bufs: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut skip: usize = 0;
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    while skip < total {
        let mut iov = Vec::with_capacity(bufs.len());
        let mut seen = 0;
        for b in bufs {
            let from = skip.saturating_sub(seen).min(b.len());
            seen += b.len();
            if from < b.len() {
                iov.push(libc::iovec {
                    iov_base: b[from..].as_ptr() as *mut libc::c_void,
                    iov_len: b.len() - from,
                });
            }
        }
        // SAFETY: every iovec points into a live slice of `bufs` and the kernel only
        // reads from them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        match n {
            n if n > 0 => {
                skip += n as usize;
                offset += n as u64;
            }
            0 => return Err(ErrorKind::WriteZero.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The file ends inside a frame (a write cut short).
    Torn,
    /// A frame whose length is impossible or whose crc does not match.
    Corrupt,
    /// A frame from before the last checkpoint, left behind the new end when
    /// the journal started over: the normal end of a journal.
    Stale { index: u64 },
    /// A well-formed frame after a gap in the sequence: entries are missing.
    OutOfOrder { index: u64, expected: u64 },
}

/// One frame read from a stream, or why there is none.
#[derive(Debug)]
pub enum Frame {
    Entry { index: u64, payload: Bytes },
    End,
    Bad(Stop),
}

/// Reads the next frame from `r`. Never allocates more than [`MAX_ENTRY`].
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Frame> {
    let mut head = [0u8; FRAME_HEADER];
    let got = read_full(r, &mut head)?;
    if got == 0 {
        return Ok(Frame::End);
    }
    if got < FRAME_HEADER {
        return Ok(Frame::Bad(Stop::Torn));
    }
    let field = |i: usize| [head[i], head[i + 1], head[i + 2], head[i + 3]];
    let len = u32::from_le_bytes(field(0));
    let sum = u32::from_le_bytes(field(4));
    let index = u64::from_le_bytes([
        head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
    ]);
    if len == 0 || len as usize > MAX_ENTRY {
        return Ok(Frame::Bad(Stop::Corrupt));
    }
    let mut payload = vec![0u8; len as usize];
    if read_full(r, &mut payload)? < payload.len() {
        return Ok(Frame::Bad(Stop::Torn));
    }
    if crc(len, index, &payload) != sum {
        return Ok(Frame::Bad(Stop::Corrupt));
    }
    Ok(Frame::Entry {
        index,
        payload: Bytes::from(payload),
    })
}

/// Reads until `buf` is full or the stream ends; the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Records handed on (after the given index).
    pub records: u64,
    /// Records skipped because the store already has them.
    pub skipped: u64,
    /// Why the scan ended before the end of the file, if it did.
    pub stopped: Option<Stop>,
}

/// Walks the frames of a journal stream (after its header), handing on, in
/// order, the records after `after`: commands must have consecutive indices
/// starting at `after + 1`, a failure note the index of the command before it.
/// Frames up to `after` at the start are skipped (the store has them).
pub fn scan(
    r: &mut impl Read,
    after: u64,
    mut f: impl FnMut(u64, Record) -> FsResult<()>,
) -> FsResult<Scan> {
    let mut out = Scan {
        records: 0,
        skipped: 0,
        stopped: None,
    };
    let mut last = after;
    loop {
        let (index, payload) = match read_frame(r)? {
            Frame::End => return Ok(out),
            Frame::Bad(why) => {
                out.stopped = Some(why);
                return Ok(out);
            }
            Frame::Entry { index, payload } => (index, payload),
        };
        if index <= after && last == after {
            out.skipped += 1;
            continue;
        }
        let record = decode_record(payload)?;
        let expected = match record {
            Record::Command(_) => last + 1,
            Record::Failed(_) => last,
        };
        // A failure note with no command before it has index > last = expected.
        if index < expected {
            out.stopped = Some(Stop::Stale { index });
            return Ok(out);
        }
        if index > expected {
            out.stopped = Some(Stop::OutOfOrder { index, expected });
            return Ok(out);
        }
        last = index;
        out.records += 1;
        f(index, record)?;
    }
}

/// The journal file of one brick.
///
/// Starting over after a checkpoint ([`Journal::rewind`]) only moves the end
/// back: the next frames overwrite the old ones, which is cheaper than
/// truncating the file and extending it again (the blocks stay allocated).
/// What lies after the last new frame is never replayed: an old frame's index
/// is at most the checkpoint's, which the store durably holds, so replay finds
/// it out of sequence ([`Stop::Stale`]); the middle of an old frame fails its
/// crc. The same holds for the rest of a frame whose write failed. The file
/// is cut back to its header at start and at shutdown.
pub struct Journal {
    path: PathBuf,
    file: Arc<File>,
    /// Where the next frame goes.
    end: u64,
    /// False until recovery has read the journal and cleared it.
    ready: bool,
    buf: Vec<u8>,
    limit: u64,
}

impl Journal {
    /// Opens the journal of the brick in `dir`, creating an empty one if there
    /// is none. It must be scanned (if wanted) and then [`Journal::clear`]ed
    /// before anything is appended.
    pub fn open(dir: &Path) -> FsResult<Journal> {
        let path = dir.join(JOURNAL_FILE);
        if !path.exists() {
            create(dir, &path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        let mut magic = [0u8; MAGIC.len()];
        let got = read_full(&mut &file, &mut magic)?;
        if got < magic.len() || &magic != MAGIC {
            return Err(FsError::Store(format!(
                "{} is not a journal this server reads",
                path.display()
            )));
        }
        let end = file.metadata()?.len();
        Ok(Journal {
            path,
            file: Arc::new(file),
            end,
            ready: false,
            buf: Vec::new(),
            limit: CHECKPOINT_BYTES,
        })
    }

    /// Hands on the records after index `after` (see [`scan`]).
    pub fn scan(&self, after: u64, f: impl FnMut(u64, Record) -> FsResult<()>) -> FsResult<Scan> {
        let mut file = std::io::BufReader::with_capacity(1 << 20, &*self.file);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(HEADER_LEN))?;
        scan(&mut file, after, f)
    }

    /// Appends one record. It has reached the page cache (and so survives a
    /// crash of this process) when this returns; on error nothing was added
    /// (a partial frame may be in the file, to be overwritten by the next).
    pub fn append(&mut self, index: u64, record: RecordRef<'_>) -> FsResult<()> {
        if !self.ready {
            return Err(FsError::Store("journal appended before recovery".into()));
        }
        self.buf.clear();
        let data = encode_frame_split(index, record, &mut self.buf)?;
        write_all_vectored_at(&self.file, &[&self.buf, &data], self.end)?;
        self.end += (self.buf.len() + data.len()) as u64;
        if self.buf.capacity() > 2 * MAX_ENTRY {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Starts the journal over, keeping the file's blocks. Only once the
    /// store durably holds every entry.
    pub fn rewind(&mut self) {
        self.end = HEADER_LEN;
    }

    /// Empties the journal and cuts the file back to its header. Only once
    /// the store durably holds every entry.
    pub fn clear(&mut self) -> FsResult<()> {
        self.file.set_len(HEADER_LEN)?;
        self.end = HEADER_LEN;
        self.ready = true;
        Ok(())
    }

    /// Bytes of entries in the journal, header included.
    pub fn len(&self) -> u64 {
        self.end
    }

    /// True when no entry is in the journal.
    pub fn is_empty(&self) -> bool {
        self.end <= HEADER_LEN
    }

    /// True when the journal has grown past its limit and should be
    /// checkpointed now.
    pub fn wants_checkpoint(&self) -> bool {
        self.end >= self.limit
    }

    /// Sets the size at which [`Journal::wants_checkpoint`] says so.
    pub fn set_limit(&mut self, bytes: u64) {
        self.limit = bytes.max(HEADER_LEN + 1);
    }

    /// The file, for syncing without holding whoever owns the journal
    /// (`fdatasync` of it makes every entry appended so far durable).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates an empty journal atomically, so that a crash never leaves a file
/// without its header.
fn create(dir: &Path, path: &Path) -> FsResult<()> {
    let tmp = dir.join(format!("{JOURNAL_FILE}.new"));
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all_at(MAGIC, 0)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Operation, RequestId};
    use crate::ops_codec::tests::arb_command;
    use crate::records::Time;
    use kadalu_proto::FileId;
    use proptest::prelude::*;

    fn cmd(i: u64) -> Command {
        Command {
            request: Some(RequestId {
                client: 7,
                seq: i,
                ack_below: 0,
            }),
            now: Time::new(i as i64, 0),
            op: Operation::Write {
                id: FileId(9),
                offset: i,
                data: Bytes::from(vec![i as u8; (i as usize * 37) % 3000]),
                append: false,
            },
        }
    }

    fn frames(records: &[(u64, Record)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, r) in records {
            let r = match r {
                Record::Command(c) => RecordRef::Command(c),
                Record::Failed(e) => RecordRef::Failed(*e),
            };
            encode_frame(*i, r, &mut out).unwrap();
        }
        out
    }

    fn collect(bytes: &[u8], after: u64) -> (Vec<(u64, Record)>, Scan) {
        let mut got = Vec::new();
        let s = scan(&mut &bytes[..], after, |i, r| {
            got.push((i, r));
            Ok(())
        })
        .unwrap();
        (got, s)
    }

    fn sample(n: u64) -> Vec<(u64, Record)> {
        let mut v = Vec::new();
        for i in 1..=n {
            v.push((i, Record::Command(cmd(i))));
            if i % 3 == 0 {
                v.push((i, Record::Failed(Some(libc::ENOSPC))));
            }
            if i % 5 == 0 {
                v.push((i, Record::Failed(None)));
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn frames_round_trip(cmds in proptest::collection::vec(arb_command(), 0..8)) {
            let records: Vec<(u64, Record)> = cmds
                .into_iter()
                .enumerate()
                .map(|(i, c)| (i as u64 + 1, Record::Command(c)))
                .collect();
            let bytes = frames(&records);
            let (got, s) = collect(&bytes, 0);
            prop_assert_eq!(s.stopped, None);
            prop_assert_eq!(got, records);
        }

        #[test]
        fn a_torn_tail_ends_the_scan_after_the_whole_frames(cut in 0usize..20_000) {
            let records = sample(12);
            let bytes = frames(&records);
            let cut = cut.min(bytes.len());
            // The whole frames before the cut, and nothing else, come back.
            let mut whole = 0;
            let mut at = 0;
            for (i, r) in &records {
                let mut one = Vec::new();
                let rr = match r {
                    Record::Command(c) => RecordRef::Command(c),
                    Record::Failed(e) => RecordRef::Failed(*e),
                };
                encode_frame(*i, rr, &mut one).unwrap();
                if at + one.len() > cut {
                    break;
                }
                at += one.len();
                whole += 1;
            }
            let (got, s) = collect(&bytes[..cut], 0);
            prop_assert_eq!(&got[..], &records[..whole]);
            prop_assert_eq!(s.stopped, (cut != at).then_some(Stop::Torn));
        }

        #[test]
        fn a_flipped_bit_is_never_replayed(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let records = sample(6);
            let mut bytes = frames(&records);
            let p = pos.index(bytes.len());
            bytes[p] ^= 1 << bit;
            let (got, s) = collect(&bytes, 0);
            // Everything before the damaged frame, then a stop.
            prop_assert!(s.stopped.is_some());
            prop_assert!(got.len() < records.len());
            prop_assert_eq!(&got[..], &records[..got.len()]);
        }
    }

    #[test]
    fn entries_the_store_has_are_skipped_and_gaps_stop() {
        let records = sample(10);
        let bytes = frames(&records);
        let (got, s) = collect(&bytes, 4);
        assert_eq!(s.stopped, None);
        assert_eq!(got.first().map(|r| r.0), Some(5));
        assert_eq!(
            got,
            records
                .iter()
                .filter(|r| r.0 > 4)
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(s.skipped as usize + got.len(), records.len());

        // A missing entry: the scan stops before the gap.
        let gap: Vec<_> = records.iter().filter(|r| r.0 != 7).cloned().collect();
        let (got, s) = collect(&frames(&gap), 0);
        assert_eq!(got.last().map(|r| r.0), Some(6));
        assert_eq!(
            s.stopped,
            Some(Stop::OutOfOrder {
                index: 8,
                expected: 7
            })
        );
        // The journal starts after what the store has: nothing to replay safely.
        let late: Vec<_> = records.iter().filter(|r| r.0 >= 4).cloned().collect();
        let (got, s) = collect(&frames(&late), 1);
        assert!(got.is_empty());
        assert!(matches!(s.stopped, Some(Stop::OutOfOrder { .. })));
        // A failure note with nothing before it.
        let (got, s) = collect(&frames(&[(1, Record::Failed(None))]), 0);
        assert!(got.is_empty());
        assert!(s.stopped.is_some());
    }

    #[test]
    fn zeroes_and_oversized_lengths_are_corrupt() {
        let (got, s) = collect(&[0u8; 64], 0);
        assert!(got.is_empty());
        assert_eq!(s.stopped, Some(Stop::Corrupt));
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_ENTRY as u32 + 1).to_le_bytes());
        huge.extend_from_slice(&[0u8; 12]);
        let (_, s) = collect(&huge, 0);
        assert_eq!(s.stopped, Some(Stop::Corrupt));
        // A frame that is whole and sound but not a record is an error.
        let mut out = Vec::new();
        let payload = [0xffu8; 3];
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&crc(3, 1, &payload).to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&payload);
        assert!(scan(&mut &out[..], 0, |_, _| Ok(())).is_err());
    }

    /// The frame as prost alone would encode it: what the split encoding must match.
    fn plain_frame(index: u64, record: RecordRef<'_>) -> Vec<u8> {
        let payload = record_msg(record).encode_to_vec();
        let len = payload.len() as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc(len, index, &payload).to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    proptest! {
        /// A write's frame written in two pieces is byte for byte prost's frame when
        /// `append` is unset (data is then prost's last field too); with `append` set
        /// it differs only in field order and reads back as the same command.
        #[test]
        fn split_write_frames_match_prost(index in 1u64..u64::MAX, offset: u64, len in 0usize..70_000,
                                          append: bool, request: bool, seq: u64) {
            let c = Command {
                request: request.then_some(RequestId { client: 3, seq, ack_below: seq / 2 }),
                now: Time::new(offset as i64 / 3, 5),
                op: Operation::Write {
                    id: FileId(u128::from(offset) << 7 | 1),
                    offset,
                    data: Bytes::from((0..len).map(|i| (i % 253) as u8).collect::<Vec<u8>>()),
                    append,
                },
            };
            let mut head = Vec::new();
            let data = encode_frame_split(index, RecordRef::Command(&c), &mut head).unwrap();
            prop_assert_eq!(data.len(), len, "the data is not copied into the head");
            let mut whole = head.clone();
            whole.extend_from_slice(&data);
            if !append {
                prop_assert_eq!(&whole, &plain_frame(index, RecordRef::Command(&c)));
            }
            let (got, stop) = collect(&whole, index - 1);
            prop_assert_eq!(got, vec![(index, Record::Command(c))]);
            prop_assert_eq!(stop.stopped, None);
        }

        /// Every other record is encoded as prost encodes it, in one piece.
        #[test]
        fn other_frames_are_prosts(c in arb_command(), index in 1u64..1000) {
            let mut head = Vec::new();
            let data = encode_frame_split(index, RecordRef::Command(&c), &mut head).unwrap();
            let mut whole = head.clone();
            whole.extend_from_slice(&data);
            let is_write_with_data = matches!(&c.op, Operation::Write { data, .. } if !data.is_empty());
            if !is_write_with_data {
                prop_assert!(data.is_empty());
            }
            if !matches!(&c.op, Operation::Write { append: true, .. }) {
                prop_assert_eq!(&whole, &plain_frame(index, RecordRef::Command(&c)));
            }
            let (got, _) = collect(&whole, index - 1);
            prop_assert_eq!(got, vec![(index, Record::Command(c))]);
        }
    }

    #[test]
    fn the_journal_file_holds_split_writes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        let commands: Vec<Command> = (1..=20).map(|i| cmd(i * 13)).collect();
        for (i, c) in commands.iter().enumerate() {
            j.append(i as u64 + 1, RecordRef::Command(c)).unwrap();
        }
        let records: Vec<(u64, Record)> = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as u64 + 1, Record::Command(c)))
            .collect();
        let bytes = std::fs::read(j.path()).unwrap();
        assert_eq!(bytes.len() as u64, j.len());
        let (got, _) = collect(&bytes[HEADER_LEN as usize..], 0);
        assert_eq!(got, records);
    }

    #[test]
    fn oversized_records_are_refused() {
        let big = Command {
            request: None,
            now: Time::new(1, 0),
            op: Operation::Write {
                id: FileId(1),
                offset: 0,
                data: Bytes::from(vec![0u8; MAX_ENTRY + 1]),
                append: false,
            },
        };
        let mut out = Vec::new();
        assert_eq!(
            encode_frame(1, RecordRef::Command(&big), &mut out)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert!(out.is_empty());
    }

    #[test]
    fn the_file_appends_clears_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert!(
            j.append(1, RecordRef::Command(&cmd(1))).is_err(),
            "not before recovery cleared it"
        );
        j.clear().unwrap();
        assert!(j.is_empty());
        for i in 1..=20 {
            j.append(i, RecordRef::Command(&cmd(i))).unwrap();
        }
        j.append(20, RecordRef::Failed(Some(libc::EEXIST))).unwrap();
        let size = std::fs::metadata(j.path()).unwrap().len();
        assert_eq!(size, j.len());
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let mut seen = Vec::new();
        let s = j
            .scan(10, |i, r| {
                seen.push((i, r));
                Ok(())
            })
            .unwrap();
        assert_eq!(s.stopped, None);
        assert_eq!(s.skipped, 10);
        assert_eq!(seen.len(), 11);
        assert_eq!(seen[0], (11, Record::Command(cmd(11))));
        assert_eq!(seen[10], (20, Record::Failed(Some(libc::EEXIST))));
        // A torn last frame, as a crash in the middle of a write leaves.
        std::fs::OpenOptions::new()
            .write(true)
            .open(j.path())
            .unwrap()
            .set_len(size - 3)
            .unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mut n = 0;
        let s = j
            .scan(0, |_, _| {
                n += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!((n, s.stopped), (20, Some(Stop::Torn)));
        let mut j = j;
        j.clear().unwrap();
        assert_eq!(std::fs::metadata(j.path()).unwrap().len(), HEADER_LEN);
        assert_eq!(j.scan(0, |_, _| Ok(())).unwrap().records, 0);
    }

    #[test]
    fn after_a_rewind_old_frames_are_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        for i in 1..=30 {
            j.append(i, RecordRef::Command(&cmd(i))).unwrap();
        }
        let full = std::fs::metadata(j.path()).unwrap().len();
        // A checkpoint at 30, then a few new entries over the old ones.
        j.rewind();
        assert!(j.is_empty());
        for i in 31..=33 {
            j.append(i, RecordRef::Command(&cmd(i))).unwrap();
        }
        assert_eq!(
            std::fs::metadata(j.path()).unwrap().len(),
            full,
            "blocks kept"
        );
        let mut seen = Vec::new();
        let s = j
            .scan(30, |i, _| {
                seen.push(i);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![31, 32, 33]);
        assert!(
            matches!(
                s.stopped,
                Some(Stop::Stale { .. } | Stop::Corrupt | Stop::Torn)
            ),
            "{s:?}"
        );
        // A crash right after the rewind: every frame left is the store's already.
        j.rewind();
        let s = j.scan(33, |i, _| panic!("replayed {i}")).unwrap();
        assert!(s.skipped > 0);
        // A failed write leaves part of a frame, which the next append covers.
        let mut partial = Vec::new();
        encode_frame(34, RecordRef::Command(&cmd(34)), &mut partial).unwrap();
        j.file
            .write_all_at(&partial[..partial.len() / 2], j.len())
            .unwrap();
        j.append(34, RecordRef::Command(&cmd(34))).unwrap();
        let mut seen = Vec::new();
        j.scan(33, |i, r| {
            seen.push((i, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(34, Record::Command(cmd(34)))]);
    }

    #[test]
    fn the_size_limit_asks_for_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        j.set_limit(10_000);
        let mut i = 0;
        while !j.wants_checkpoint() {
            i += 1;
            j.append(i, RecordRef::Command(&cmd(i))).unwrap();
            assert!(i < 1000);
        }
        assert!(j.len() >= 10_000 && j.len() < 10_000 + MAX_ENTRY as u64);
        let most = std::fs::metadata(j.path()).unwrap().len();
        j.rewind();
        assert!(!j.wants_checkpoint());
        // Filling it again reuses the same space.
        while !j.wants_checkpoint() {
            i += 1;
            j.append(i, RecordRef::Command(&cmd(i))).unwrap();
        }
        assert!(std::fs::metadata(j.path()).unwrap().len() < most + MAX_ENTRY as u64);
        j.clear().unwrap();
        assert_eq!(std::fs::metadata(j.path()).unwrap().len(), HEADER_LEN);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), b"something else").unwrap();
        assert!(Journal::open(dir.path()).is_err());
    }
}
