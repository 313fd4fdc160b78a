//! Request headers for mutations: a per-process client id, a strictly increasing
//! sequence number, and `ack_below`, the smallest sequence number still waiting for
//! its reply. The brick keeps the outcome of each `(client_id, seq)` so that a
//! mutation retried after a lost reply is applied at most once; `ack_below` tells it
//! which outcomes it may forget.

use kadalu_proto::brick::RequestHeader;
use prost::bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Sequence numbers handed out and not yet finished. Pure bookkeeping, kept apart
/// from the header type so it can be tested on its own.
#[derive(Debug, Default)]
pub struct InFlightSet {
    in_flight: BTreeSet<u64>,
}

impl InFlightSet {
    /// Marks `seq` as waiting for its reply.
    pub fn begin(&mut self, seq: u64) {
        self.in_flight.insert(seq);
    }

    /// Marks `seq` as finished (replied, or given up on).
    pub fn finish(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// The smallest sequence number still in flight, or `next` when none is: every
    /// request below it has had its reply.
    pub fn ack_below(&self, next: u64) -> u64 {
        self.in_flight.first().copied().unwrap_or(next)
    }

    /// Number of requests in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[derive(Debug)]
struct SequencerInner {
    client_id: Bytes,
    next: AtomicU64,
    in_flight: Mutex<InFlightSet>,
}

/// Hands out request headers. Cheap to clone; all clones share one sequence.
#[derive(Debug, Clone)]
pub struct Sequencer {
    inner: Arc<SequencerInner>,
}

impl Sequencer {
    /// A sequencer with a fresh random client id.
    pub fn new() -> Self {
        Self::with_client_id(rand::random::<[u8; 16]>())
    }

    /// A sequencer with a given client id (tests).
    pub fn with_client_id(client_id: [u8; 16]) -> Self {
        Sequencer {
            inner: Arc::new(SequencerInner {
                client_id: Bytes::copy_from_slice(&client_id),
                next: AtomicU64::new(1),
                in_flight: Mutex::new(InFlightSet::default()),
            }),
        }
    }

    /// This process's client id.
    pub fn client_id(&self) -> Bytes {
        self.inner.client_id.clone()
    }

    /// Starts a mutation: a header to send (and to resend unchanged on retry) and a
    /// guard that marks the mutation finished when dropped.
    pub fn begin(&self) -> Mutation {
        // Taking the lock before drawing the number keeps `ack_below` honest: no seq
        // can be drawn but not yet recorded while another header computes its bound.
        let mut set = self.lock();
        let seq = self.inner.next.fetch_add(1, Ordering::Relaxed);
        set.begin(seq);
        let ack_below = set.ack_below(seq);
        drop(set);
        Mutation {
            header: RequestHeader {
                client_id: self.inner.client_id.clone(),
                seq,
                ack_below,
            },
            owner: self.inner.clone(),
        }
    }

    /// Number of mutations in flight (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlightSet> {
        // A panic while holding this lock leaves the set consistent (each method is a
        // single insert/remove), so a poisoned lock is safe to reuse.
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

/// One mutation in flight. Its header is fixed for all retries.
#[derive(Debug)]
pub struct Mutation {
    header: RequestHeader,
    owner: Arc<SequencerInner>,
}

impl Mutation {
    /// The header to put in the request.
    pub fn header(&self) -> Option<RequestHeader> {
        Some(self.header.clone())
    }

    /// The sequence number of this mutation.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }
}

impl Drop for Mutation {
    fn drop(&mut self) {
        self.owner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .finish(self.header.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn headers_carry_the_client_id_and_increasing_seqs() {
        let s = Sequencer::with_client_id([7; 16]);
        let a = s.begin();
        let b = s.begin();
        assert_eq!(a.header.client_id.as_ref(), &[7u8; 16]);
        assert!(a.seq() >= 1);
        assert!(b.seq() > a.seq());
        // `a` is still in flight, so b may not acknowledge it.
        assert_eq!(b.header.ack_below, a.seq());
        drop(a);
        let c = s.begin();
        assert_eq!(c.header.ack_below, b.seq());
        drop(b);
        drop(c);
        assert_eq!(s.in_flight(), 0);
        let d = s.begin();
        assert_eq!(d.header.ack_below, d.seq());
    }

    #[test]
    fn random_client_ids_differ() {
        assert_ne!(Sequencer::new().client_id(), Sequencer::new().client_id());
    }

    proptest! {
        /// Whatever order requests finish in, ack_below never passes a request that is
        /// still waiting, and reaches `next` once all are done.
        #[test]
        fn ack_below_never_passes_a_waiting_request(
            ops in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..200)
        ) {
            let mut set = InFlightSet::default();
            let mut waiting: Vec<u64> = Vec::new();
            let mut next = 1u64;
            let mut last_ack = 0u64;
            for (start, pick) in ops {
                if start || waiting.is_empty() {
                    set.begin(next);
                    waiting.push(next);
                    next += 1;
                } else {
                    let seq = waiting.remove(pick.index(waiting.len()));
                    set.finish(seq);
                }
                let ack = set.ack_below(next);
                for w in &waiting {
                    prop_assert!(ack <= *w);
                }
                // The bound only ever moves forward.
                prop_assert!(ack >= last_ack);
                last_ack = ack;
            }
            for w in waiting.drain(..) {
                set.finish(w);
            }
            prop_assert_eq!(set.ack_below(next), next);
        }
    }
}
