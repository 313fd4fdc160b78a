//! A bounded cache of open object files, so that a read or write of a file the
//! brick touched recently costs a pread/pwrite and not an open(2) and close(2)
//! around it (path walk, dentry lookup, file allocation: several times the cost
//! of a 4 KiB pread from the page cache).
//!
//! Every object is opened read-write once and shared (`Arc<File>`): positioned
//! I/O needs no per-user file offset, and fsync on any descriptor of a file
//! syncs that file. Only the id space matters for correctness: ids are never
//! reused, and an object file is only ever removed (never renamed or replaced),
//! so a cached descriptor names the same file for as long as the object
//! exists. Removal goes through [`ObjectFds::remove`], which drops the entry;
//! a descriptor opened concurrently with a removal is not cached (see
//! `removals`), so no descriptor of a removed object stays behind.
//!
//! Eviction is least-recently-used, in batches: when the cache is over its
//! bound, the oldest quarter goes, so the scan that finds them is paid once per
//! `bound / 4` misses.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

struct Entry {
    file: Arc<File>,
    used: u64,
}

struct Inner {
    map: HashMap<u128, Entry>,
    clock: u64,
    /// Bumped by every removal: an open that started before a removal may
    /// have opened the file being removed, and must not cache it.
    removals: u64,
}

/// Open object files by id (see the module doc).
pub(crate) struct ObjectFds {
    inner: Mutex<Inner>,
    bound: usize,
}

/// Most descriptors kept, whatever the process limit allows.
const MAX_BOUND: usize = 4096;
/// Fewest descriptors kept.
const MIN_BOUND: usize = 16;

impl ObjectFds {
    /// A cache of at most `bound` descriptors (at least [`MIN_BOUND`]).
    pub(crate) fn new(bound: usize) -> Self {
        ObjectFds {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                clock: 0,
                removals: 0,
            }),
            bound: bound.max(MIN_BOUND),
        }
    }

    /// A bound that leaves three quarters of the process's descriptor limit
    /// to connections, the journal and the store.
    pub(crate) fn default_bound() -> usize {
        // SAFETY: getrlimit fills the struct we pass.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        let soft = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
            0 => lim.rlim_cur as usize,
            _ => 1024,
        };
        (soft / 4).clamp(MIN_BOUND, MAX_BOUND)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here is left half-done by a panic: every change is one map
        // operation.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached descriptor of `id`, if any (marks it used).
    pub(crate) fn cached(&self, id: u128) -> Option<Arc<File>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        inner.map.get_mut(&id).map(|e| {
            e.used = now;
            e.file.clone()
        })
    }

    /// The descriptor of `id`: the cached one, or the one `open` gives (which
    /// is then cached). `open` runs without the cache's lock; `Ok(None)` from
    /// it (no such object) is passed on and not cached.
    pub(crate) fn get_or_open<E>(
        &self,
        id: u128,
        open: impl FnOnce() -> Result<Option<File>, E>,
    ) -> Result<Option<Arc<File>>, E> {
        let removals = {
            let mut inner = self.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some(e) = inner.map.get_mut(&id) {
                e.used = now;
                return Ok(Some(e.file.clone()));
            }
            inner.removals
        };
        let Some(file) = open()? else {
            return Ok(None);
        };
        let file = Arc::new(file);
        let mut inner = self.lock();
        if inner.removals != removals {
            // The file may have been removed after we opened it.
            return Ok(Some(file));
        }
        inner.clock += 1;
        let now = inner.clock;
        // Another thread may have opened it meanwhile: keep one.
        let file = inner
            .map
            .entry(id)
            .or_insert(Entry { file, used: now })
            .file
            .clone();
        let evicted = self.evict_if_full(&mut inner);
        drop(inner);
        drop(evicted);
        Ok(Some(file))
    }

    /// Removes `id`'s descriptor from the cache and runs `remove` (which
    /// deletes the object file) under the cache's lock, so that no open
    /// racing with it caches a descriptor of the removed file.
    pub(crate) fn remove<T>(&self, id: u128, remove: impl FnOnce() -> T) -> T {
        let mut inner = self.lock();
        inner.removals += 1;
        let old = inner.map.remove(&id);
        let r = remove();
        drop(inner);
        drop(old);
        r
    }

    /// Number of cached descriptors.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Takes the least recently used quarter out when over the bound; the
    /// caller drops them (closes the files) after letting go of the lock.
    fn evict_if_full(&self, inner: &mut Inner) -> Vec<Entry> {
        if inner.map.len() <= self.bound {
            return Vec::new();
        }
        let mut ages: Vec<u64> = inner.map.values().map(|e| e.used).collect();
        let cut = (self.bound / 4).max(1).min(ages.len() - 1);
        let (_, oldest_kept, _) = ages.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        let victims: Vec<u128> = inner
            .map
            .iter()
            .filter(|(_, e)| e.used < oldest_kept)
            .map(|(k, _)| *k)
            .collect();
        victims
            .into_iter()
            .filter_map(|k| inner.map.remove(&k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Result<Option<File>, std::io::Error> {
        Ok(Some(tempfile::tempfile()?))
    }

    #[test]
    fn hit_returns_the_same_descriptor() {
        let c = ObjectFds::new(16);
        let a = c.get_or_open(1, file).unwrap().unwrap();
        let b = c
            .get_or_open(1, || -> Result<Option<File>, std::io::Error> {
                panic!("opened again")
            })
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a, &c.cached(1).unwrap()));
    }

    #[test]
    fn missing_object_is_not_cached() {
        let c = ObjectFds::new(16);
        let none = c.get_or_open(1, || Ok::<_, std::io::Error>(None)).unwrap();
        assert!(none.is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn removal_drops_the_entry() {
        let c = ObjectFds::new(16);
        c.get_or_open(7, file).unwrap();
        let r = c.remove(7, || 42);
        assert_eq!(r, 42);
        assert!(c.cached(7).is_none());
    }

    #[test]
    fn open_racing_a_removal_is_not_cached() {
        let c = ObjectFds::new(16);
        let got = c
            .get_or_open(3, || {
                // A removal of the same id lands while this open runs.
                c.remove(3, || ());
                file()
            })
            .unwrap();
        assert!(got.is_some(), "the caller still gets its descriptor");
        assert!(c.cached(3).is_none());
    }

    #[test]
    fn stays_bounded_and_keeps_recently_used() {
        let c = ObjectFds::new(16);
        c.get_or_open(0, file).unwrap();
        for id in 1..200u128 {
            c.get_or_open(id, file).unwrap();
            // Id 0 is used all the time and must survive eviction.
            assert!(c.cached(0).is_some(), "hot entry evicted at {id}");
            assert!(c.len() <= 17, "{} entries", c.len());
        }
        assert!(c.cached(199).is_some());
        assert!(c.cached(1).is_none());
    }
}
