//! Write-behind: a WRITE is acknowledged to the kernel as soon as it is queued and
//! sent to the brick in the background, as GlusterFS's write-behind translator does.
//! This module holds the bookkeeping that keeps that safe, apart from the FUSE and
//! gRPC code that uses it:
//!
//! - [`Ledger`] (pure, no I/O): per inode, the writes not yet finished, each with
//!   the byte range it covers and a ticket drawn in arrival order; the bounds on
//!   what may be in flight; and the error of a failed background write, kept until
//!   the next write, flush or fsync of the inode reports it (as NFS and GlusterFS
//!   do: the write(2) that failed has already returned).
//! - [`WriteBehind`]: the ledger behind a lock plus the waiting (for room, for an
//!   overlapping earlier write, for everything queued before a barrier).
//!
//! Ordering rules, all decided by [`Ledger::try_start`]:
//! - a write is sent only when no earlier unfinished write of the same inode
//!   overlaps it, so bytes end up as the application wrote them;
//! - an append covers the whole file ([`Span::WHOLE`]), so it waits for every
//!   earlier write and every later write waits for it (the brick resolves its
//!   offset from the size);
//! - an inode with nothing in flight may always send one write, and so may the
//!   mount with nothing in flight at all, so the bounds never deadlock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// Order of arrival of a write; barriers compare against it.
pub type Ticket = u64;

/// Bounds on unfinished background writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Writes in flight per inode.
    pub inode_writes: usize,
    /// Bytes in flight per inode.
    pub inode_bytes: u64,
    /// Bytes in flight for the whole mount: the memory write-behind may hold.
    pub total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inode_writes: 32,
            inode_bytes: 8 << 20,
            total_bytes: 64 << 20,
        }
    }
}

/// A byte range of a file: `len` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

impl Span {
    /// The whole file, whatever its size: what an append touches.
    pub const WHOLE: Span = Span {
        offset: 0,
        len: u64::MAX,
    };

    pub fn new(offset: u64, len: u64) -> Self {
        Span { offset, len }
    }

    /// One past the last byte (saturating: offsets near 2^64 are the brick's to refuse).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// Whether the two ranges share a byte. Empty ranges share none.
    pub fn overlaps(&self, other: &Span) -> bool {
        self.len > 0 && other.len > 0 && self.offset < other.end() && other.offset < self.end()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    InFlight,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    span: Span,
    /// Bytes this write holds (its payload; an append's span is WHOLE but its
    /// payload is what counts against the bounds).
    bytes: u64,
    state: State,
}

#[derive(Debug, Default, Clone)]
struct InodeWrites {
    entries: BTreeMap<Ticket, Entry>,
    in_flight: usize,
    in_flight_bytes: u64,
    /// Errno of a background write that failed, not yet reported.
    error: Option<i32>,
}

impl InodeWrites {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.error.is_none()
    }
}

/// Per-inode bookkeeping of unfinished writes. Pure: callers do the waiting.
#[derive(Debug, Clone)]
pub struct Ledger {
    limits: Limits,
    next: Ticket,
    inodes: HashMap<u64, InodeWrites>,
    in_flight_bytes: u64,
}

impl Ledger {
    pub fn new(limits: Limits) -> Self {
        Ledger {
            limits,
            next: 1,
            inodes: HashMap::new(),
            in_flight_bytes: 0,
        }
    }

    /// Records a write of `bytes` bytes covering `span` on `ino`, in arrival
    /// order; it is not sent until [`Ledger::try_start`] says so.
    pub fn queue(&mut self, ino: u64, span: Span, bytes: u64) -> Ticket {
        let ticket = self.next;
        self.next += 1;
        self.inodes.entry(ino).or_default().entries.insert(
            ticket,
            Entry {
                span,
                bytes,
                state: State::Queued,
            },
        );
        ticket
    }

    /// Marks queued write `ticket` in flight if it may be sent now: no earlier
    /// unfinished write of the inode overlaps it, and the bounds have room (or
    /// nothing is in flight that could make room). Returns whether it started;
    /// true also for a write already started.
    pub fn try_start(&mut self, ino: u64, ticket: Ticket) -> bool {
        let total = self.in_flight_bytes;
        let limits = self.limits;
        let Some(w) = self.inodes.get_mut(&ino) else {
            return true;
        };
        let Some(entry) = w.entries.get(&ticket).copied() else {
            return true;
        };
        if entry.state == State::InFlight {
            return true;
        }
        if w.entries
            .range(..ticket)
            .any(|(_, e)| e.span.overlaps(&entry.span))
        {
            return false;
        }
        if w.in_flight > 0
            && (w.in_flight >= limits.inode_writes
                || w.in_flight_bytes.saturating_add(entry.bytes) > limits.inode_bytes)
        {
            return false;
        }
        if total > 0 && total.saturating_add(entry.bytes) > limits.total_bytes {
            return false;
        }
        if let Some(e) = w.entries.get_mut(&ticket) {
            e.state = State::InFlight;
        }
        w.in_flight += 1;
        w.in_flight_bytes += entry.bytes;
        self.in_flight_bytes += entry.bytes;
        true
    }

    /// Ends write `ticket` (sent or not); a failure is kept for the inode's next
    /// write, flush or fsync. The first unreported error wins: it is the one the
    /// application lost data to first.
    pub fn finish(&mut self, ino: u64, ticket: Ticket, outcome: Result<(), i32>) {
        let Some(w) = self.inodes.get_mut(&ino) else {
            return;
        };
        if let Some(e) = w.entries.remove(&ticket) {
            if e.state == State::InFlight {
                w.in_flight -= 1;
                w.in_flight_bytes -= e.bytes;
                self.in_flight_bytes -= e.bytes;
            }
        }
        if let Err(errno) = outcome {
            w.error.get_or_insert(errno);
        }
        if w.is_empty() {
            self.inodes.remove(&ino);
        }
    }

    /// The ticket the next write will get: a barrier taken now waits for every
    /// write with a smaller ticket.
    pub fn horizon(&self) -> Ticket {
        self.next
    }

    /// Whether every write of `ino` queued before `horizon` has finished.
    pub fn settled(&self, ino: u64, horizon: Ticket) -> bool {
        self.inodes
            .get(&ino)
            .is_none_or(|w| w.entries.range(..horizon).next().is_none())
    }

    /// Whether every write of every inode queued before `horizon` has finished.
    pub fn all_settled(&self, horizon: Ticket) -> bool {
        self.inodes
            .values()
            .all(|w| w.entries.range(..horizon).next().is_none())
    }

    /// Whether `ino` has unfinished writes.
    pub fn busy(&self, ino: u64) -> bool {
        self.inodes.get(&ino).is_some_and(|w| !w.entries.is_empty())
    }

    /// Whether no write is unfinished anywhere.
    pub fn idle(&self) -> bool {
        self.inodes.values().all(|w| w.entries.is_empty())
    }

    /// Reports (and forgets) the error of a failed background write of `ino`.
    pub fn take_error(&mut self, ino: u64) -> Option<i32> {
        let w = self.inodes.get_mut(&ino)?;
        let e = w.error.take();
        if w.is_empty() {
            self.inodes.remove(&ino);
        }
        e
    }

    /// The kernel forgot `ino`: nobody can be told of its failed writes any
    /// more. Writes still unfinished keep their entries.
    pub fn forget(&mut self, ino: u64) {
        if self.inodes.get(&ino).is_some_and(|w| w.entries.is_empty()) {
            self.inodes.remove(&ino);
        }
    }

    /// Bytes in flight on the whole mount.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    /// Writes and bytes in flight on `ino`.
    pub fn in_flight_of(&self, ino: u64) -> (usize, u64) {
        self.inodes
            .get(&ino)
            .map_or((0, 0), |w| (w.in_flight, w.in_flight_bytes))
    }
}

/// The ledger shared by the request tasks, and the waiting around it.
#[derive(Debug)]
pub struct WriteBehind {
    ledger: Mutex<Ledger>,
    /// Signalled whenever a write finishes: the only event that can let a waiter on.
    finished: Notify,
}

impl WriteBehind {
    pub fn new(limits: Limits) -> Self {
        WriteBehind {
            ledger: Mutex::new(Ledger::new(limits)),
            finished: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Every critical section leaves the ledger consistent (no panics inside).
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write without starting it (the mount uses
    /// [`WriteBehind::queue_and_try_start`]).
    #[cfg(test)]
    pub fn queue(&self, ino: u64, span: Span, bytes: u64) -> Ticket {
        self.lock().queue(ino, span, bytes)
    }

    /// Queues a write, in the order the kernel's requests arrive, and marks
    /// it in flight if it may be sent at once (as [`Ledger::try_start`]);
    /// otherwise it waits in [`WriteBehind::start`].
    pub fn queue_and_try_start(&self, ino: u64, span: Span, bytes: u64) -> (Ticket, bool) {
        let mut l = self.lock();
        let ticket = l.queue(ino, span, bytes);
        let started = l.try_start(ino, ticket);
        (ticket, started)
    }

    /// Waits until queued write `ticket` may be sent, and marks it in flight.
    pub async fn start(&self, ino: u64, ticket: Ticket) {
        self.wait_until(|l| l.try_start(ino, ticket)).await
    }

    /// Ends a write and lets waiters re-check.
    pub fn finish(&self, ino: u64, ticket: Ticket, outcome: Result<(), i32>) {
        self.lock().finish(ino, ticket, outcome);
        self.finished.notify_waiters();
    }

    /// Waits until every write of `ino` acknowledged so far has reached the brick
    /// (or failed).
    pub async fn settle(&self, ino: u64) {
        let horizon = {
            let l = self.lock();
            if !l.busy(ino) {
                return;
            }
            l.horizon()
        };
        self.wait_until(|l| l.settled(ino, horizon)).await
    }

    /// Waits until every write acknowledged so far, on any inode, has finished.
    pub async fn settle_all(&self) {
        let horizon = {
            let l = self.lock();
            if l.idle() {
                return;
            }
            l.horizon()
        };
        self.wait_until(|l| l.all_settled(horizon)).await
    }

    /// Whether `ino` has writes not yet finished.
    pub fn busy(&self, ino: u64) -> bool {
        self.lock().busy(ino)
    }

    /// Reports (and forgets) the error of a failed background write of `ino`.
    pub fn take_error(&self, ino: u64) -> Option<i32> {
        self.lock().take_error(ino)
    }

    /// The kernel forgot `ino`; see [`Ledger::forget`].
    pub fn forget(&self, ino: u64) {
        self.lock().forget(ino);
    }

    async fn wait_until(&self, mut ready: impl FnMut(&mut Ledger) -> bool) {
        loop {
            // Registered before the check, so a finish between the check and the
            // await still wakes us.
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&mut self.lock()) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn small() -> Limits {
        Limits {
            inode_writes: 2,
            inode_bytes: 100,
            total_bytes: 150,
        }
    }

    #[test]
    fn spans_overlap_only_when_sharing_a_byte() {
        let a = Span::new(0, 10);
        assert!(a.overlaps(&Span::new(9, 1)));
        assert!(!a.overlaps(&Span::new(10, 5)));
        assert!(!a.overlaps(&Span::new(5, 0)));
        assert!(Span::WHOLE.overlaps(&Span::new(u64::MAX - 1, 1)));
        assert!(Span::new(u64::MAX - 1, 10).overlaps(&Span::new(u64::MAX - 1, 1)));
    }

    #[test]
    fn an_overlapping_write_waits_for_the_earlier_one() {
        let mut l = Ledger::new(Limits::default());
        let a = l.queue(1, Span::new(0, 10), 10);
        let b = l.queue(1, Span::new(5, 10), 10);
        let c = l.queue(1, Span::new(100, 10), 10);
        let other = l.queue(2, Span::new(0, 10), 10);
        assert!(!l.try_start(1, b), "b overlaps a, which is still queued");
        assert!(l.try_start(1, c));
        assert!(l.try_start(2, other));
        assert!(l.try_start(1, a));
        assert!(!l.try_start(1, b));
        l.finish(1, a, Ok(()));
        assert!(l.try_start(1, b));
    }

    #[test]
    fn an_append_waits_for_all_earlier_writes_and_holds_back_later_ones() {
        let mut l = Ledger::new(Limits::default());
        let a = l.queue(1, Span::new(1000, 10), 10);
        let app = l.queue(1, Span::WHOLE, 5);
        let later = l.queue(1, Span::new(0, 1), 1);
        assert!(l.try_start(1, a));
        assert!(!l.try_start(1, app));
        l.finish(1, a, Ok(()));
        assert!(l.try_start(1, app));
        assert!(!l.try_start(1, later));
        l.finish(1, app, Ok(()));
        assert!(l.try_start(1, later));
    }

    #[test]
    fn bounds_hold_but_an_idle_inode_may_always_send_one() {
        let mut l = Ledger::new(small());
        // Alone, a write larger than every bound still goes.
        let big = l.queue(1, Span::new(0, 500), 500);
        assert!(l.try_start(1, big));
        let next = l.queue(1, Span::new(1000, 1), 1);
        assert!(!l.try_start(1, next), "the mount-wide bound is exceeded");
        l.finish(1, big, Ok(()));
        assert!(l.try_start(1, next));
        let third = l.queue(1, Span::new(2000, 1), 1);
        assert!(l.try_start(1, third));
        let fourth = l.queue(1, Span::new(3000, 1), 1);
        assert!(!l.try_start(1, fourth), "two writes per inode at most");
        assert_eq!(l.in_flight_of(1), (2, 2));
        l.finish(1, third, Ok(()));
        assert!(l.try_start(1, fourth));
    }

    #[test]
    fn errors_are_reported_once_first_one_wins() {
        let mut l = Ledger::new(Limits::default());
        let a = l.queue(1, Span::new(0, 1), 1);
        let b = l.queue(1, Span::new(1, 1), 1);
        assert!(l.try_start(1, a) && l.try_start(1, b));
        l.finish(1, a, Err(libc::ENOSPC));
        l.finish(1, b, Err(libc::EIO));
        assert_eq!(l.take_error(2), None);
        assert_eq!(l.take_error(1), Some(libc::ENOSPC));
        assert_eq!(l.take_error(1), None);
        assert!(l.idle());
        assert!(l.inodes.is_empty(), "a settled inode leaves nothing behind");
        // An error nobody asked for goes when the kernel forgets the inode, but
        // not while writes of it are unfinished.
        let c = l.queue(3, Span::new(0, 1), 1);
        assert!(l.try_start(3, c));
        l.finish(3, c, Err(libc::EIO));
        let d = l.queue(3, Span::new(0, 1), 1);
        l.forget(3);
        assert!(l.busy(3));
        l.finish(3, d, Ok(()));
        l.forget(3);
        assert!(l.inodes.is_empty());
        assert_eq!(l.take_error(3), None);
    }

    #[test]
    fn barriers_wait_only_for_earlier_writes() {
        let mut l = Ledger::new(Limits::default());
        let a = l.queue(1, Span::new(0, 1), 1);
        let h = l.horizon();
        let b = l.queue(1, Span::new(1, 1), 1);
        assert!(!l.settled(1, h));
        assert!(l.settled(2, h));
        l.finish(1, a, Ok(()));
        assert!(l.settled(1, h), "b came after the barrier");
        assert!(l.all_settled(h));
        assert!(!l.idle());
        l.finish(1, b, Ok(()));
        assert!(l.idle());
    }

    #[tokio::test]
    async fn a_write_starts_at_once_only_when_nothing_holds_it_back() {
        let wb = WriteBehind::new(Limits::default());
        let (a, started) = wb.queue_and_try_start(1, Span::new(0, 10), 10);
        assert!(started);
        let (b, started) = wb.queue_and_try_start(1, Span::new(5, 10), 10);
        assert!(!started, "b overlaps a, which is in flight");
        let (_, started) = wb.queue_and_try_start(1, Span::new(100, 10), 10);
        assert!(started, "no overlap");
        wb.finish(1, a, Ok(()));
        // The queued write starts through the waiting path as before.
        tokio::time::timeout(Duration::from_secs(5), wb.start(1, b))
            .await
            .expect("b may start once a finished");
    }

    #[tokio::test]
    async fn waiters_wake_when_writes_finish() {
        let wb = Arc::new(WriteBehind::new(Limits::default()));
        let a = wb.queue(1, Span::new(0, 10), 10);
        wb.start(1, a).await;
        let settle_a = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.settle(1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Queued after the barrier above: that barrier does not wait for it.
        let b = wb.queue(1, Span::new(5, 10), 10);
        let start_b = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.start(1, b).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!settle_a.is_finished(), "a is still in flight");
        assert!(!start_b.is_finished(), "b overlaps a");
        wb.finish(1, a, Ok(()));
        let within = Duration::from_secs(5);
        tokio::time::timeout(within, settle_a)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(within, start_b)
            .await
            .unwrap()
            .unwrap();
        let settle_b = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.settle_all().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!settle_b.is_finished(), "b is in flight");
        wb.finish(1, b, Err(libc::ENOSPC));
        tokio::time::timeout(within, settle_b)
            .await
            .unwrap()
            .unwrap();
        assert!(!wb.busy(1));
        assert_eq!(wb.take_error(1), Some(libc::ENOSPC));
        assert_eq!(wb.take_error(1), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Queue a write of inode, offset, len (append when `append`).
        Queue {
            ino: u64,
            offset: u64,
            len: u64,
            append: bool,
        },
        /// Try to start the queued write at this index.
        Start(prop::sample::Index),
        /// Finish the in-flight write at this index, failing when `fail`.
        Finish(prop::sample::Index, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..3, 0u64..64, 0u64..16, prop::bool::weighted(0.1)).prop_map(
                |(ino, offset, len, append)| Op::Queue {
                    ino,
                    offset,
                    len,
                    append
                }
            ),
            any::<prop::sample::Index>().prop_map(Op::Start),
            (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, f)| Op::Finish(i, f)),
        ]
    }

    proptest! {
        /// Whatever the interleaving: no two overlapping writes of one inode are
        /// ever in flight together, a write never starts while an earlier
        /// overlapping one is unfinished, the bounds hold whenever more than one
        /// write is in flight, every error is reported exactly once, and once all
        /// writes finish the ledger is empty. Applying the started writes in start
        /// order gives the same bytes as applying them in arrival order.
        #[test]
        fn ledger_keeps_order_bounds_and_errors(ops in prop::collection::vec(op(), 1..200)) {
            let limits = Limits { inode_writes: 3, inode_bytes: 24, total_bytes: 40 };
            let mut l = Ledger::new(limits);
            // (ino, ticket, span, bytes, started)
            let mut queued: Vec<(u64, Ticket, Span, u64)> = Vec::new();
            let mut flying: Vec<(u64, Ticket, Span, u64)> = Vec::new();
            let mut failed: HashMap<u64, usize> = HashMap::new();
            // Per inode: file contents written in arrival order vs in start order.
            let mut by_arrival: HashMap<u64, Vec<(Ticket, Span)>> = HashMap::new();
            let mut by_start: HashMap<u64, Vec<(Ticket, Span)>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Queue { ino, offset, len, append } => {
                        let span = if append { Span::WHOLE } else { Span::new(offset, len) };
                        let t = l.queue(ino, span, len);
                        queued.push((ino, t, span, len));
                        by_arrival.entry(ino).or_default().push((t, span));
                    }
                    Op::Start(i) if !queued.is_empty() => {
                        let k = i.index(queued.len());
                        let (ino, t, span, bytes) = queued[k];
                        if l.try_start(ino, t) {
                            for (fino, _, fspan, _) in &flying {
                                prop_assert!(!(*fino == ino && fspan.overlaps(&span)));
                            }
                            for (qino, qt, qspan, _) in &queued {
                                prop_assert!(!(*qino == ino && *qt < t && qspan.overlaps(&span)));
                            }
                            queued.remove(k);
                            flying.push((ino, t, span, bytes));
                            by_start.entry(ino).or_default().push((t, span));
                            let (n, b) = l.in_flight_of(ino);
                            if n > 1 {
                                prop_assert!(n <= limits.inode_writes);
                                prop_assert!(b <= limits.inode_bytes);
                            }
                            if flying.len() > 1 {
                                prop_assert!(l.in_flight_bytes() <= limits.total_bytes);
                            }
                        }
                    }
                    Op::Finish(i, fail) if !flying.is_empty() => {
                        let (ino, t, _, _) = flying.remove(i.index(flying.len()));
                        l.finish(ino, t, if fail { Err(libc::EIO) } else { Ok(()) });
                        if fail {
                            *failed.entry(ino).or_default() += 1;
                        }
                    }
                    _ => {}
                }
                // Progress: something queued can always start when nothing is in flight.
                if flying.is_empty() && !queued.is_empty() {
                    let (ino, t, _, _) = queued
                        .iter()
                        .copied()
                        .min_by_key(|q| q.1)
                        .unwrap();
                    prop_assert!(l.clone().try_start(ino, t));
                }
            }
            // Drain: start in arrival order and finish.
            queued.sort_by_key(|q| q.1);
            for (ino, t, span, _) in queued.drain(..) {
                for (fino, ft, _, _) in flying.drain(..) {
                    l.finish(fino, ft, Ok(()));
                }
                prop_assert!(l.try_start(ino, t));
                by_start.entry(ino).or_default().push((t, span));
                l.finish(ino, t, Ok(()));
            }
            for (fino, ft, _, _) in flying.drain(..) {
                l.finish(fino, ft, Ok(()));
            }
            prop_assert!(l.idle());
            prop_assert_eq!(l.in_flight_bytes(), 0);
            for ino in 0..3u64 {
                let expected = failed.get(&ino).map(|_| libc::EIO);
                prop_assert_eq!(l.take_error(ino), expected);
                prop_assert_eq!(l.take_error(ino), None);
                // The last writer of every byte is the same in both orders.
                let last = |writes: &[(Ticket, Span)]| {
                    let mut owner = [0u64; 80];
                    for (t, s) in writes {
                        let end = s.end().min(80);
                        for b in s.offset.min(80)..end {
                            owner[b as usize] = *t;
                        }
                    }
                    owner
                };
                let arrival = by_arrival.remove(&ino).unwrap_or_default();
                let started = by_start.remove(&ino).unwrap_or_default();
                prop_assert_eq!(arrival.len(), started.len());
                prop_assert_eq!(last(&arrival), last(&started));
            }
            prop_assert!(l.inodes.is_empty());
        }
    }
}
