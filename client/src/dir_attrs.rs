//! Directory attributes that came with a change of names.
//!
//! The kernel drops a directory's cached attributes whenever an entry is
//! made or removed in it, and with `default_permissions` the next path walk
//! through it asks for them again: one GetAttr round trip per create or
//! unlink in a loop over one directory. The brick answers every change of
//! names with the directories as the change left them, so that GetAttr is
//! answered here instead.
//!
//! An entry is used once and lives for the attribute TTL: it is exactly as
//! fresh as a GetAttr sent when the change was answered, and the kernel
//! would have cached that for the same TTL. Anything this client does to the
//! directory that the stored attributes would not show (setattr, xattrs)
//! forgets it; rmdir and rename, which change a directory known to them only
//! by name, forget them all.

use kadalu_proto::brick::Attr;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most directories remembered at once; past it the oldest answers are
/// dropped (they would only cost a GetAttr).
pub const MAX_DIRS: usize = 1024;

/// Fresh directory attributes by inode, each good for one GetAttr.
#[derive(Debug)]
pub struct DirAttrs {
    ttl: Duration,
    fresh: HashMap<u64, (Attr, Instant)>,
}

impl DirAttrs {
    pub fn new(ttl: Duration) -> Self {
        DirAttrs {
            ttl,
            fresh: HashMap::new(),
        }
    }

    /// Remembers `attr` as the attributes of directory `ino` at `now`.
    pub fn put(&mut self, ino: u64, attr: Attr, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        if self.fresh.len() >= MAX_DIRS && !self.fresh.contains_key(&ino) {
            let ttl = self.ttl;
            self.fresh
                .retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if self.fresh.len() >= MAX_DIRS {
                self.fresh.clear();
            }
        }
        self.fresh.insert(ino, (attr, now));
    }

    /// The attributes of `ino` if they arrived within the TTL; either way
    /// they are gone afterwards.
    pub fn take(&mut self, ino: u64, now: Instant) -> Option<Attr> {
        let (attr, at) = self.fresh.remove(&ino)?;
        (now.duration_since(at) < self.ttl).then_some(attr)
    }

    /// Drops what is known of `ino` (it changed in a way not seen here).
    pub fn forget(&mut self, ino: u64) {
        self.fresh.remove(&ino);
    }

    /// Drops everything: a directory whose inode is not at hand changed
    /// (rmdir and rename change the directory they remove or move, known to
    /// the request only by name).
    pub fn clear(&mut self) {
        self.fresh.clear();
    }

    pub fn len(&self) -> usize {
        self.fresh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fresh.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attr(size: u64) -> Attr {
        Attr {
            size,
            ..Attr::default()
        }
    }

    #[test]
    fn an_answer_serves_one_getattr_within_the_ttl() {
        let t0 = Instant::now();
        let mut d = DirAttrs::new(Duration::from_secs(1));
        d.put(5, attr(1), t0);
        assert_eq!(d.take(5, t0 + Duration::from_millis(10)), Some(attr(1)));
        assert_eq!(d.take(5, t0 + Duration::from_millis(20)), None, "once");
        d.put(5, attr(2), t0);
        assert_eq!(d.take(5, t0 + Duration::from_secs(1)), None, "expired");
        assert!(d.is_empty(), "an expired answer is dropped too");
    }

    #[test]
    fn the_newest_answer_wins_and_forget_drops_it() {
        let t0 = Instant::now();
        let mut d = DirAttrs::new(Duration::from_secs(1));
        d.put(5, attr(1), t0);
        d.put(5, attr(2), t0);
        assert_eq!(d.take(5, t0), Some(attr(2)));
        d.put(6, attr(3), t0);
        d.forget(6);
        assert_eq!(d.take(6, t0), None);
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let t0 = Instant::now();
        let mut d = DirAttrs::new(Duration::ZERO);
        d.put(5, attr(1), t0);
        assert_eq!(d.take(5, t0), None);
    }

    proptest! {
        #[test]
        fn it_stays_bounded_and_never_serves_a_stale_answer(
            ops in proptest::collection::vec((0u64..3000, 0u64..3000, any::<bool>()), 1..3000)
        ) {
            let t0 = Instant::now();
            let ttl = Duration::from_millis(500);
            let mut d = DirAttrs::new(ttl);
            let mut last_put: HashMap<u64, (u64, u64)> = HashMap::new();
            for (i, (ino, ms, put)) in ops.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(ms);
                if put {
                    d.put(ino, attr(i as u64), now);
                    last_put.insert(ino, (i as u64, ms));
                } else if let Some(a) = d.take(ino, now) {
                    // Only ever the latest answer put for this inode, and only
                    // within the TTL of when it came (times may run backwards
                    // here; `duration_since` saturates, as for a clock that
                    // did not move).
                    let (i, at) = last_put[&ino];
                    prop_assert_eq!(a.size, i);
                    prop_assert!(ms.saturating_sub(at) < 500);
                    last_put.remove(&ino);
                }
                prop_assert!(d.len() <= MAX_DIRS);
            }
        }
    }
}
