//! A short-lived cache of the extended attributes the kernel and common tools ask
//! for on their own: `security.capability` before every write (to decide whether
//! the write must drop file capabilities), `security.selinux` and the POSIX ACL
//! names on every `ls -l`. Answering those from memory for the attribute TTL saves
//! a brick round trip per write and per listed file; like cached attributes, a
//! change made through another client shows after at most that TTL. Names outside
//! this set (e.g. `user.*`) are never cached.

use kadalu_proto::FileId;
use prost::bytes::Bytes;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The xattr holding file capabilities.
const CAPABILITY: &[u8] = b"security.capability";

/// Names answered from the cache.
const CACHED_NAMES: [&[u8]; 4] = [
    CAPABILITY,
    b"security.selinux",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
];

/// Entries kept at most; beyond that the cache starts over (it only saves RPCs).
const MAX_ENTRIES: usize = 65_536;

/// Whether `name` is one the cache keeps.
pub fn is_cached_name(name: &[u8]) -> bool {
    CACHED_NAMES.contains(&name)
}

/// What the brick said about one name: its value, or that it does not exist.
pub type XattrValue = Option<Bytes>;

/// The cache; times are passed in so its behaviour is testable.
#[derive(Debug)]
pub struct XattrCache {
    ttl: Duration,
    entries: HashMap<(FileId, Bytes), (XattrValue, Instant)>,
}

impl XattrCache {
    /// A cache keeping answers for `ttl` (zero disables it).
    pub fn new(ttl: Duration) -> Self {
        XattrCache {
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The cached answer for `name` of `id`, if fresh.
    pub fn get(&self, id: FileId, name: &Bytes, now: Instant) -> Option<XattrValue> {
        let (value, at) = self.entries.get(&(id, name.clone()))?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| value.clone())
    }

    /// Records the brick's answer for `name` of `id` (only for cached names).
    pub fn put(&mut self, id: FileId, name: Bytes, value: XattrValue, now: Instant) {
        if self.ttl.is_zero() || !is_cached_name(&name) {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < self.ttl);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert((id, name), (value, now));
    }

    /// Records that `id` was just created by this client: a new file carries no
    /// file capabilities, so the kernel's check before its first write needs no
    /// round trip. (ACL names are not primed: a new file may inherit a default ACL.)
    pub fn note_created(&mut self, id: FileId, now: Instant) {
        self.put(id, Bytes::from_static(CAPABILITY), None, now);
    }

    /// Forgets everything about `id` (its xattrs changed through this client).
    pub fn invalidate(&mut self, id: FileId) {
        self.entries.retain(|(i, _), _| *i != id);
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: &[u8] = b"security.capability";

    #[test]
    fn answers_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = XattrCache::new(Duration::from_secs(1));
        let id = FileId(5);
        let name = Bytes::from_static(CAP);
        assert_eq!(c.get(id, &name, t0), None);
        c.put(id, name.clone(), None, t0);
        assert_eq!(
            c.get(id, &name, t0 + Duration::from_millis(999)),
            Some(None)
        );
        assert_eq!(c.get(id, &name, t0 + Duration::from_secs(1)), None);
        c.put(id, name.clone(), Some(Bytes::from_static(b"v")), t0);
        assert_eq!(c.get(id, &name, t0), Some(Some(Bytes::from_static(b"v"))));
        assert_eq!(c.get(FileId(6), &name, t0), None);
    }

    #[test]
    fn user_names_are_never_cached() {
        let t0 = Instant::now();
        let mut c = XattrCache::new(Duration::from_secs(1));
        let name = Bytes::from_static(b"user.x");
        c.put(FileId(5), name.clone(), None, t0);
        assert_eq!(c.get(FileId(5), &name, t0), None);
        assert!(c.is_empty());
    }

    #[test]
    fn zero_ttl_disables_and_invalidate_forgets_a_file() {
        let t0 = Instant::now();
        let name = Bytes::from_static(CAP);
        let mut off = XattrCache::new(Duration::ZERO);
        off.put(FileId(5), name.clone(), None, t0);
        assert!(off.is_empty());

        let mut c = XattrCache::new(Duration::from_secs(5));
        c.put(FileId(5), name.clone(), None, t0);
        c.put(FileId(6), name.clone(), None, t0);
        c.invalidate(FileId(5));
        assert_eq!(c.get(FileId(5), &name, t0), None);
        assert_eq!(c.get(FileId(6), &name, t0), Some(None));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_created_file_has_no_capability_but_acls_are_asked() {
        let t0 = Instant::now();
        let mut c = XattrCache::new(Duration::from_secs(1));
        c.note_created(FileId(7), t0);
        assert_eq!(c.get(FileId(7), &Bytes::from_static(CAP), t0), Some(None));
        let acl = Bytes::from_static(b"system.posix_acl_access");
        assert_eq!(c.get(FileId(7), &acl, t0), None);
        let mut off = XattrCache::new(Duration::ZERO);
        off.note_created(FileId(7), t0);
        assert!(off.is_empty());
    }

    #[test]
    fn size_stays_bounded() {
        let t0 = Instant::now();
        let mut c = XattrCache::new(Duration::from_secs(60));
        for i in 0..(MAX_ENTRIES as u128 + 10) {
            c.put(FileId(i), Bytes::from_static(CAP), None, t0);
        }
        assert!(c.len() <= MAX_ENTRIES);
    }
}
