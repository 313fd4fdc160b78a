//! First bytes of a file that came back with its open, kept for the read
//! that follows.
//!
//! Reading a small file costs lookup, open, read and release: the open asks
//! the brick for the file's first bytes too (`OpenRequest.prefetch`), and the
//! kernel's first read through that handle is answered from them, one round
//! trip less.
//!
//! The bytes are as fresh as a read sent when the open was answered, which
//! close-to-open consistency allows. What this client itself changes in the
//! file must show, though: any local change of the inode (a write, truncate,
//! fallocate, copy into it) drops its prefetched bytes, and one that starts
//! while an open of the inode is still on its way spoils that open's bytes
//! before they arrive. An entry serves one read, the handle's first.

use prost::bytes::Bytes;
use std::collections::HashMap;

/// Bytes asked for with each open.
pub const PREFETCH_BYTES: u32 = 128 * 1024;
/// Most handles holding prefetched bytes at once; past it new ones are not kept
/// (they only cost a read).
pub const MAX_ENTRIES: usize = 256;

/// An open under way: hand it back to [`Prefetches::opened`] or
/// [`Prefetches::open_failed`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Opening {
    ino: u64,
}

#[derive(Debug)]
struct Entry {
    ino: u64,
    data: Bytes,
    /// What the open asked for: a shorter answer ends at the end of the file.
    asked: u32,
}

#[derive(Debug, Default)]
struct Pending {
    opens: u32,
    /// A local change began while these opens were on their way.
    spoiled: bool,
}

/// Prefetched bytes by handle.
#[derive(Debug, Default)]
pub struct Prefetches {
    entries: HashMap<u64, Entry>,
    pending: HashMap<u64, Pending>,
}

impl Prefetches {
    pub fn new() -> Self {
        Prefetches::default()
    }

    /// An open of `ino` is about to be sent.
    pub fn opening(&mut self, ino: u64) -> Opening {
        self.pending.entry(ino).or_default().opens += 1;
        Opening { ino }
    }

    /// Its answer: handle `fh` and the bytes that came with it. Kept unless a
    /// local change of the inode began since the open was sent.
    pub fn opened(&mut self, opening: Opening, fh: u64, data: Option<Bytes>, asked: u32) {
        let spoiled = self.done(opening.ino);
        let Some(data) = data else { return };
        if spoiled || data.len() as u64 > asked as u64 || self.entries.len() >= MAX_ENTRIES {
            return;
        }
        let ino = opening.ino;
        self.entries.insert(fh, Entry { ino, data, asked });
    }

    /// The open failed.
    pub fn open_failed(&mut self, opening: Opening) {
        self.done(opening.ino);
    }

    /// One open of `ino` is over; true if a change spoiled it.
    fn done(&mut self, ino: u64) -> bool {
        let Some(p) = self.pending.get_mut(&ino) else {
            return true;
        };
        let spoiled = p.spoiled;
        p.opens = p.opens.saturating_sub(1);
        if p.opens == 0 {
            self.pending.remove(&ino);
        }
        spoiled
    }

    /// This client starts changing the content or size of `ino`.
    pub fn changed(&mut self, ino: u64) {
        if let Some(p) = self.pending.get_mut(&ino) {
            p.spoiled = true;
        }
        if !self.entries.is_empty() {
            self.entries.retain(|_, e| e.ino != ino);
        }
    }

    /// The answer to the first read through `fh` of `ino`, if its prefetched
    /// bytes hold it. The handle's bytes are gone afterwards either way.
    pub fn read(&mut self, fh: u64, ino: u64, offset: u64, size: u32) -> Option<Bytes> {
        let e = self.entries.remove(&fh)?;
        if e.ino != ino {
            return None;
        }
        let len = e.data.len() as u64;
        let end = offset.checked_add(size as u64)?;
        // All of the read lies within what came, or the file ended there.
        let at_eof = len < e.asked as u64;
        if end > len && !at_eof {
            return None;
        }
        let from = offset.min(len) as usize;
        let to = end.min(len) as usize;
        Some(e.data.slice(from..to))
    }

    /// The handle is gone.
    pub fn released(&mut self, fh: u64) {
        self.entries.remove(&fh);
    }

    /// Handles holding bytes now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| i as u8).collect::<Vec<_>>())
    }

    #[test]
    fn a_short_file_is_read_whole_once() {
        let mut p = Prefetches::new();
        let o = p.opening(7);
        p.opened(o, 1, Some(bytes(100)), 4096);
        assert_eq!(p.read(1, 7, 0, 4096), Some(bytes(100)));
        assert_eq!(p.read(1, 7, 0, 4096), None, "one read only");
    }

    #[test]
    fn reads_past_what_came_go_to_the_brick_unless_the_file_ended() {
        let mut p = Prefetches::new();
        let o = p.opening(7);
        p.opened(o, 1, Some(bytes(4096)), 4096);
        assert_eq!(p.read(1, 7, 0, 8192), None, "the file may go on");
        let o = p.opening(7);
        p.opened(o, 2, Some(bytes(100)), 4096);
        assert_eq!(p.read(2, 7, 200, 4096), Some(Bytes::new()), "past the end");
        let o = p.opening(7);
        p.opened(o, 3, Some(bytes(4096)), 4096);
        assert_eq!(p.read(3, 7, 1000, 10), Some(bytes(4096).slice(1000..1010)));
    }

    #[test]
    fn a_local_change_drops_or_spoils_the_bytes() {
        let mut p = Prefetches::new();
        let o = p.opening(7);
        p.opened(o, 1, Some(bytes(10)), 4096);
        p.changed(7);
        assert_eq!(p.read(1, 7, 0, 10), None, "dropped");
        let o = p.opening(7);
        p.changed(7);
        p.opened(o, 2, Some(bytes(10)), 4096);
        assert_eq!(p.read(2, 7, 0, 10), None, "spoiled on the way");
        let o = p.opening(7);
        p.opened(o, 3, Some(bytes(10)), 4096);
        assert_eq!(p.read(3, 7, 0, 10), Some(bytes(10)), "a later open is fine");
        p.changed(8);
        assert!(p.is_empty());
    }

    #[test]
    fn wrong_inodes_failed_opens_and_releases_leave_nothing() {
        let mut p = Prefetches::new();
        let o = p.opening(7);
        p.opened(o, 1, Some(bytes(10)), 4096);
        assert_eq!(p.read(1, 8, 0, 10), None);
        let o = p.opening(7);
        p.open_failed(o);
        let o = p.opening(7);
        p.opened(o, 2, Some(bytes(10)), 4096);
        p.released(2);
        assert!(p.is_empty() && p.pending.is_empty());
        let o = p.opening(7);
        p.opened(o, 3, Some(bytes(5000)), 4096);
        assert!(p.is_empty(), "more than asked is not believed");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open { ino: u64 },
        Answer,
        Change { ino: u64 },
        Read { ino: u64, offset: u64, size: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..3).prop_map(|ino| Op::Open { ino }),
            Just(Op::Answer),
            (0u64..3).prop_map(|ino| Op::Change { ino }),
            (0u64..3, 0u64..300, 0u32..300).prop_map(|(ino, offset, size)| Op::Read {
                ino,
                offset,
                size
            }),
        ]
    }

    proptest! {
        /// Against a model file per inode whose bytes change with every local
        /// change: a read answered from prefetched bytes always equals the
        /// model's bytes, i.e. nothing served is older than this client's own
        /// changes.
        #[test]
        fn never_serves_bytes_older_than_a_local_change(ops in proptest::collection::vec(op(), 1..200)) {
            const ASK: u32 = 128;
            let mut p = Prefetches::new();
            // Content of each inode: a version number repeated, `len` bytes
            // (shorter than, equal to and longer than what an open asks).
            let mut version = [0u8; 3];
            let len = [50usize, 128, 300];
            // Opens under way; the brick reads the content when it answers.
            let mut waiting: Vec<(Opening, u64)> = Vec::new();
            let mut handles: Vec<u64> = Vec::new();
            let mut next_fh = 1;
            for op in ops {
                match op {
                    Op::Open { ino } => waiting.push((p.opening(ino), ino)),
                    Op::Answer => {
                        if let Some((o, ino)) = waiting.pop() {
                            let i = ino as usize;
                            let n = len[i].min(ASK as usize);
                            let data = Bytes::from(vec![version[i]; n]);
                            p.opened(o, next_fh, Some(data), ASK);
                            handles.push(next_fh);
                            next_fh += 1;
                        }
                    }
                    Op::Change { ino } => {
                        p.changed(ino);
                        version[ino as usize] = version[ino as usize].wrapping_add(1);
                    }
                    Op::Read { ino, offset, size } => {
                        for fh in handles.clone() {
                            if let Some(got) = p.read(fh, ino, offset, size) {
                                let i = ino as usize;
                                let end = (offset + size as u64).min(len[i] as u64);
                                let want = end.saturating_sub(offset) as usize;
                                prop_assert_eq!(got.len(), want);
                                prop_assert!(got.iter().all(|b| *b == version[i]));
                            }
                        }
                    }
                }
            }
        }
    }
}
