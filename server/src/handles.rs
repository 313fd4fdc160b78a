//! Open file handles: which files clients hold open, so that a file unlinked
//! while open is kept (as an orphan) until its last handle is released.
//! Handles live only in this brick's memory; reads and writes address files
//! by id, so a client keeps working with its old handles across a restart.

use crate::error::{FsError, FsResult};
use kadalu_proto::FileId;
use std::collections::HashMap;

/// Most handles open at once on one brick.
pub const MAX_HANDLES: usize = 1 << 20;

/// One open of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenHandle {
    pub id: FileId,
    pub flags: i32,
    pub client: u128,
}

/// The handles of one brick process.
#[derive(Debug)]
pub struct HandleTable {
    next: u64,
    handles: HashMap<u64, OpenHandle>,
    per_file: HashMap<FileId, u32>,
}

impl HandleTable {
    /// `base` seeds the handle numbers; give each process start a different
    /// one so a stale handle from before a restart does not name a new open.
    pub fn new(base: u64) -> Self {
        HandleTable {
            next: base.max(1),
            handles: HashMap::new(),
            per_file: HashMap::new(),
        }
    }

    /// Registers an open of `id`; ENFILE when the table is full.
    pub fn open(&mut self, id: FileId, flags: i32, client: u128) -> FsResult<u64> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(FsError::Os(libc::ENFILE));
        }
        let mut h = self.next;
        while h == 0 || self.handles.contains_key(&h) {
            h = h.wrapping_add(1);
        }
        self.next = h.wrapping_add(1);
        self.handles.insert(h, OpenHandle { id, flags, client });
        *self.per_file.entry(id).or_insert(0) += 1;
        Ok(h)
    }

    /// Drops a handle of `id`. Unknown handles (or a handle of another file)
    /// are ignored: they predate a restart.
    pub fn release(&mut self, handle: u64, id: FileId) -> Option<OpenHandle> {
        match self.handles.get(&handle) {
            Some(h) if h.id == id => {}
            _ => return None,
        }
        let h = self.handles.remove(&handle)?;
        if let Some(n) = self.per_file.get_mut(&h.id) {
            *n -= 1;
            if *n == 0 {
                self.per_file.remove(&h.id);
            }
        }
        Some(h)
    }

    /// Whether any handle holds `id`.
    pub fn is_open(&self, id: FileId) -> bool {
        self.per_file.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_opens_per_file() {
        let mut t = HandleTable::new(100);
        let a = FileId(5);
        let h1 = t.open(a, 0, 1).unwrap();
        let h2 = t.open(a, 0, 2).unwrap();
        assert_ne!(h1, h2);
        assert!(t.is_open(a));
        assert!(
            t.release(h1, FileId(6)).is_none(),
            "a handle of another file is not released"
        );
        assert!(t.release(h1, a).is_some());
        assert!(t.is_open(a));
        assert!(t.release(h1, a).is_none(), "double release is ignored");
        assert!(t.release(h2, a).is_some());
        assert!(!t.is_open(a));
        assert!(t.is_empty());
    }

    #[test]
    fn handle_zero_is_never_given() {
        let mut t = HandleTable::new(u64::MAX);
        let h1 = t.open(FileId(1), 0, 0).unwrap();
        let h2 = t.open(FileId(1), 0, 0).unwrap();
        assert_eq!(h1, u64::MAX);
        assert_eq!(h2, 1);
    }
}
