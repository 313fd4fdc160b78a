//! One brick's membership of its replica set: starts openraft over the
//! brick's log and state machine, bootstraps or joins the set, and offers the
//! service the two things it needs: `propose` (a mutation, committed by a
//! majority and applied) and `read_barrier` (this brick is the leader and has
//! applied everything committed before the read arrived: read-index).
//!
//! Group commit: openraft 0.9 flushes the log once per append, so proposals
//! that arrive while earlier ones are in flight are gathered into one entry
//! (up to `MAX_BATCH_COMMANDS` commands or `MAX_BATCH_BYTES`). Reads gather
//! the same way behind one read-index round, but only behind a round that
//! started after they arrived, so no read sees a state older than itself.
//!
//! Leases: a follower that acknowledged the leader's heartbeat refuses to
//! vote for anyone else for `election_max` after (openraft's leader lease),
//! and a brick refuses all votes for `election_max` after it starts (so a
//! restart does not forget that promise; `network.rs`). A read-index round
//! that started at `t` therefore keeps this brick the only leader until at
//! least `t + election_max`; reads within `t + election_min / 2` (a wide
//! margin for clock drift) are answered without a round of their own.
//!
//! New ids are chosen by the leader before it proposes; a new leader first
//! waits until it has applied every entry of earlier terms (its first
//! read-index round), then raises its id counter past every id in the store,
//! so two leaders never hand out the same inode number.

use crate::applier::Applier;
use crate::ops::{Command, Outcome};
use crate::prepare::IdAllocator;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Faults, Identity, Network};
use crate::raft::state_machine::{BrickStateMachine, FaultSlot};
use crate::raft::types::{Batch, NodeId, Raft, MAX_BATCH_COMMANDS};
use kadalu_proto::raft::raft_admin_client::RaftAdminClient;
use kadalu_proto::raft::{JoinRequest, NodeInfoRequest};
use kadalu_proto::LEADER_HINT_KEY;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tonic::Status;

/// Most bytes of commands one entry gathers.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Entries proposed at once: while they are in flight the next one gathers.
const IN_FLIGHT: usize = 4;
/// A learner this close to the leader's log is promoted to voter.
const CATCH_UP_SLACK: u64 = 64;
/// How long a new leader leaves the orphans its predecessor kept (files
/// unlinked while open) before reclaiming those no handle holds here: open
/// handles are not carried over a failover, so a client still using such a
/// file gets ESTALE after this, and the space is not held forever.
const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// How a brick takes part in its replica set.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// Every member's address, this brick's included (as `advertise`).
    pub peers: Vec<String>,
    /// The address the other members reach this brick at.
    pub advertise: String,
    /// The replica set's identity; bricks of other sets are refused.
    pub set_id: String,
    /// The set's place in its pool (inode numbers start at `index << 48`).
    pub set_index: u64,
    /// fsync the log before acknowledging (the default); off trades power-
    /// loss safety of a majority for latency.
    pub log_sync: bool,
    /// Accept `SetFaults` (tests only).
    pub fault_injection: bool,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// A snapshot is built after this many log entries, and the log before
    /// it is purged but for `keep_entries` (short absences heal from those).
    pub snapshot_every: u64,
    pub keep_entries: u64,
    /// How long a proposal or a read barrier may take before the client is
    /// told to retry.
    pub propose_timeout: Duration,
    /// Plain or mutual TLS, for peer traffic (and the brick's own listener).
    pub transport: kadalu_proto::transport::Transport,
}

impl RaftOptions {
    pub fn new(peers: Vec<String>, advertise: String, set_id: String) -> Self {
        RaftOptions {
            peers,
            advertise,
            set_id,
            set_index: 0,
            log_sync: true,
            fault_injection: false,
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            snapshot_every: 20_000,
            keep_entries: 5_000,
            propose_timeout: Duration::from_secs(5),
            transport: Default::default(),
        }
    }

    /// Checks what a user could get wrong; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.set_id.is_empty() || self.set_id.len() > 128 {
            return Err("--set-id must be 1 to 128 characters".into());
        }
        if !self.peers.iter().any(|p| p == &self.advertise) {
            return Err(format!(
                "--peers {} must include this brick's own address {} (see --advertise)",
                self.peers.join(","),
                self.advertise
            ));
        }
        let unique: BTreeSet<_> = self.peers.iter().collect();
        if unique.len() != self.peers.len() {
            return Err("--peers names an address twice".into());
        }
        if self.set_index > crate::prepare::MAX_SET_INDEX {
            return Err(format!(
                "--set-index must be at most {}",
                crate::prepare::MAX_SET_INDEX
            ));
        }
        if self.peers.len() > 7 {
            return Err("a replica set has at most 7 members".into());
        }
        if self.election_min <= self.heartbeat || self.election_max <= self.election_min {
            return Err("need heartbeat < election timeout min < election timeout max".into());
        }
        Ok(())
    }
}

/// The node id and set of a brick directory, made on first use.
fn node_identity(raft_dir: &Path, set_id: &str) -> std::io::Result<NodeId> {
    let path = raft_dir.join("node");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let mut parts = s.split_whitespace();
            let id = parts.next().and_then(|v| v.parse::<NodeId>().ok());
            let set = parts.next().unwrap_or("");
            match id {
                Some(id) if id != 0 && set == set_id => Ok(id),
                Some(_) if set != set_id => Err(std::io::Error::other(format!(
                    "this brick belongs to replica set {set:?}, not {set_id:?}; \
                     use an empty directory to join another set"
                ))),
                _ => Err(std::io::Error::other(format!(
                    "{} is damaged; move it away to rejoin as a new member",
                    path.display()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = rand::random::<u64>().max(1);
            let tmp = raft_dir.join("node.tmp");
            std::fs::write(&tmp, format!("{id} {set_id}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(raft_dir)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Why a proposal or a read did not go through; cloned to every waiter of a batch.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Another member leads (its address if known): the client goes there.
    NotLeader(Option<String>),
    /// No answer within the deadline, no quorum, or the node stopped: the
    /// client retries (a retried mutation is deduplicated).
    Unavailable(String),
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::NotLeader(hint) => {
                let mut s = Status::unavailable("not the leader of the replica set");
                if let Ok(v) = hint.unwrap_or_default().parse() {
                    s.metadata_mut().insert(LEADER_HINT_KEY, v);
                }
                s
            }
            Refusal::Unavailable(why) => Status::unavailable(why),
        }
    }
}

fn forward(f: &ForwardToLeader<NodeId, BasicNode>) -> Refusal {
    Refusal::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
}

fn write_refusal(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Refusal {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward(&f),
        other => Refusal::Unavailable(format!("replica set: {other}")),
    }
}

fn read_refusal(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> Refusal {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => forward(&f),
        other => Refusal::Unavailable(format!("replica set: {other}")),
    }
}

type OutcomeResult = Result<Result<Outcome, i32>, Refusal>;

struct Proposal {
    cmd: Command,
    bytes: usize,
    reply: oneshot::Sender<OutcomeResult>,
}

/// A running member of a replica set.
pub struct RaftNode {
    pub raft: Raft,
    pub id: NodeId,
    pub me: Identity,
    pub opts: RaftOptions,
    pub applier: Arc<Applier>,
    pub log: LogStore,
    pub fault: FaultSlot,
    ids: Arc<IdAllocator>,
    /// The term whose leader (this node) has applied all earlier terms' entries.
    ready_term: AtomicU64,
    proposals: mpsc::Sender<Proposal>,
    reads: Mutex<Vec<oneshot::Sender<Result<(), Refusal>>>>,
    read_wake: Notify,
    /// Reads before `until` need no round while leading in `term`.
    lease: Mutex<Option<Lease>>,
    /// This node, for tasks it starts itself.
    weak: std::sync::OnceLock<std::sync::Weak<RaftNode>>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    term: u64,
    until: std::time::Instant,
}

impl RaftNode {
    /// Starts Raft on an opened Replica3 brick (`Applier::open_replicated`).
    pub async fn start(
        brick_dir: &Path,
        applier: Arc<Applier>,
        ids: Arc<IdAllocator>,
        opts: RaftOptions,
    ) -> Result<Arc<RaftNode>, String> {
        opts.validate()?;
        let raft_dir: PathBuf = brick_dir.join("raft");
        std::fs::create_dir_all(&raft_dir).map_err(|e| format!("{}: {e}", raft_dir.display()))?;
        let id = node_identity(&raft_dir, &opts.set_id).map_err(|e| e.to_string())?;
        let log = LogStore::open(&raft_dir.join("log"), opts.log_sync)
            .map_err(|e| format!("opening the raft log: {e}"))?;
        let fault: FaultSlot = Arc::new(Mutex::new(None));
        let sm = BrickStateMachine::new(applier.clone(), &raft_dir, fault.clone())
            .map_err(|e| format!("raft snapshots: {e}"))?;
        let me = Identity {
            node_id: id,
            set_id: opts.set_id.clone(),
            faults: Arc::new(Faults::default()),
        };
        let config = openraft::Config {
            cluster_name: opts.set_id.clone(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            election_timeout_min: opts.election_min.as_millis() as u64,
            election_timeout_max: opts.election_max.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
            max_in_snapshot_log_to_keep: opts.keep_entries,
            snapshot_max_chunk_size: 4 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft configuration: {e}"))?;
        let network = Network::new(me.clone(), opts.transport.clone());
        let raft = Raft::new(id, Arc::new(config), network, log.clone(), sm)
            .await
            .map_err(|e| format!("starting raft: {e}"))?;
        let (tx, rx) = mpsc::channel(4096);
        let node = Arc::new(RaftNode {
            raft,
            id,
            me,
            opts,
            applier,
            log,
            fault,
            ids,
            ready_term: AtomicU64::new(0),
            proposals: tx,
            reads: Mutex::new(Vec::new()),
            read_wake: Notify::new(),
            lease: Mutex::new(None),
            weak: std::sync::OnceLock::new(),
        });
        let _ = node.weak.set(Arc::downgrade(&node));
        tokio::spawn(run_proposer(node.raft.clone(), rx));
        tokio::spawn(run_reads(Arc::downgrade(&node)));
        tokio::spawn(membership_loop(Arc::downgrade(&node)));
        tracing::info!(
            "replica set {}: node {id} at {}",
            node.opts.set_id,
            node.opts.advertise
        );
        Ok(node)
    }

    /// Why this brick stopped applying, if it did.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until this node may prepare commands: it leads, and has applied
    /// everything committed in earlier terms (so its ids are past theirs).
    pub async fn leader_ready(&self) -> Result<(), Refusal> {
        let term = self.raft.metrics().borrow().current_term;
        if self.ready_term.load(Ordering::Acquire) == term {
            // Still leader? The proposal itself finds out if not.
            return Ok(());
        }
        self.read_barrier().await?;
        let next = self
            .applier
            .store()
            .next_ino()
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        self.ids.raise_to(next);
        if self.ready_term.swap(term, Ordering::AcqRel) != term {
            tokio::spawn(sweep_orphans(self.self_ref(), term));
        }
        Ok(())
    }

    fn self_ref(&self) -> std::sync::Weak<RaftNode> {
        self.weak.get().cloned().unwrap_or_default()
    }

    /// Proposes a command and waits for its outcome on this (leading) brick.
    pub async fn propose(&self, cmd: Command) -> Result<Result<Outcome, i32>, Refusal> {
        let bytes = cmd.approx_bytes();
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send(Proposal {
                cmd,
                bytes,
                reply: tx,
            })
            .await
            .map_err(|_| Refusal::Unavailable("brick shutting down".into()))?;
        match tokio::time::timeout(self.opts.propose_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Refusal::Unavailable("proposal dropped".into())),
            Err(_) => Err(Refusal::Unavailable(format!(
                "not committed within {:?}",
                self.opts.propose_timeout
            ))),
        }
    }

    /// Returns once this brick is the leader and has applied everything
    /// committed before the call: then a read of its store is linearizable.
    pub async fn read_barrier(&self) -> Result<(), Refusal> {
        if self.has_lease() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        self.read_wake.notify_one();
        match tokio::time::timeout(self.opts.propose_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Refusal::Unavailable("brick shutting down".into())),
            Err(_) => Err(Refusal::Unavailable(format!(
                "leadership not confirmed within {:?}",
                self.opts.propose_timeout
            ))),
        }
    }

    /// Whether this brick still holds a read lease of its current term.
    fn has_lease(&self) -> bool {
        let Some(lease) = *self.lease.lock().unwrap_or_else(|p| p.into_inner()) else {
            return false;
        };
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
            && m.current_term == lease.term
            && std::time::Instant::now() < lease.until
    }

    /// How long a confirmed round keeps reads local (see the module doc).
    fn lease_span(&self) -> Duration {
        self.opts.election_min / 2
    }

    /// The member addresses of the current membership, by node id.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.voter_ids().collect()
    }

    /// The leader's side of a join: a pristine brick takes the place of the
    /// member at its address (or is added). Idempotent, and done in steps the
    /// joiner repeats until it is a voter: first it becomes a learner and
    /// receives the log (or a snapshot); once caught up, the membership is
    /// changed through openraft's joint consensus, which needs only the
    /// remaining members, so the brick it replaces may be dead.
    pub async fn handle_join(&self, new_id: NodeId, addr: String) -> Result<(), Status> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            let hint = metrics
                .current_leader
                .and_then(|l| self.members().get(&l).cloned());
            return Err(Refusal::NotLeader(hint).into());
        }
        let members = self.members();
        let voters = self.voters();
        if voters.contains(&new_id) {
            return Ok(());
        }
        if !members.contains_key(&new_id) {
            tracing::info!("join: adding node {new_id} at {addr} as a learner");
            self.raft
                .add_learner(new_id, BasicNode { addr: addr.clone() }, false)
                .await
                .map_err(|e| Status::from(write_refusal(e)))?;
            return Ok(());
        }
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&new_id).cloned().flatten())
            .map_or(0, |l| l.index);
        let last = metrics.last_log_index.unwrap_or(0);
        if matched + CATCH_UP_SLACK < last {
            return Err(Status::unavailable(format!(
                "node {new_id} is catching up ({matched} of {last})"
            )));
        }
        let mut next: BTreeSet<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| members.get(v) != Some(&addr))
            .collect();
        next.insert(new_id);
        tracing::info!("join: voters {voters:?} -> {next:?}");
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
            .await
            .map_err(|e| Status::from(write_refusal(e)))?;
        Ok(())
    }
}

/// A new leader's sweep of orphans its predecessors left (see `ORPHAN_GRACE`).
async fn sweep_orphans(node: std::sync::Weak<RaftNode>, term: u64) {
    tokio::time::sleep(ORPHAN_GRACE).await;
    let Some(n) = node.upgrade() else { return };
    let m = n.raft.metrics().borrow().clone();
    if m.state != ServerState::Leader || m.current_term != term {
        return;
    }
    let orphans = match n.applier.store().orphans() {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("listing orphans: {e}");
            return;
        }
    };
    let clock = crate::prepare::SystemClock;
    for id in orphans.into_iter().filter(|id| !n.applier.is_open(*id)) {
        use crate::prepare::Clock;
        let cmd = Command {
            request: None,
            now: clock.now(),
            op: crate::ops::Operation::Reclaim { id },
        };
        match n.propose(cmd).await {
            Ok(_) => tracing::info!("reclaimed {id}, left open by a previous leader's client"),
            Err(e) => {
                tracing::info!("orphan sweep stopped: {e:?}");
                return;
            }
        }
    }
}

/// Gathers proposals into entries, at most `IN_FLIGHT` in flight.
async fn run_proposer(raft: Raft, mut rx: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (cmds, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            match raft.client_write(Batch { cmds }).await {
                Ok(resp) => {
                    let mut outs = resp.data.0.into_iter();
                    for reply in replies {
                        let out = outs.next().unwrap_or(Err(libc::EIO));
                        let _ = reply.send(Ok(out));
                    }
                }
                Err(e) => {
                    let refusal = write_refusal(e);
                    for reply in replies {
                        let _ = reply.send(Err(refusal.clone()));
                    }
                }
            }
        });
    }
}

/// Runs read-index rounds for the reads queued since the last round began.
async fn run_reads(node: std::sync::Weak<RaftNode>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let waiters = std::mem::take(&mut *n.reads.lock().unwrap_or_else(|p| p.into_inner()));
        if waiters.is_empty() {
            // Re-checked every second so a dropped node ends this task.
            let _ = tokio::time::timeout(Duration::from_secs(1), n.read_wake.notified()).await;
            continue;
        }
        let started = std::time::Instant::now();
        let term = n.raft.metrics().borrow().current_term;
        let result = n
            .raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(read_refusal);
        if result.is_ok() {
            *n.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(Lease {
                term,
                until: started + n.lease_span(),
            });
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Bootstraps the set, or joins it, until this node is a voter.
///
/// Bootstrap is safe only when nobody has begun: the brick whose address
/// sorts first initialises the set, and only once every peer answers that it
/// is pristine. A brick that finds an initialised peer while it is pristine
/// itself (a new disk, a wiped directory) asks to join instead.
async fn membership_loop(node: std::sync::Weak<RaftNode>) {
    let mut pause = Duration::from_millis(200);
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        let Some(n) = node.upgrade() else { return };
        let voter = n.voters().contains(&n.id);
        if voter {
            // Stay watchful: a replaced brick may still be a learner elsewhere.
            pause = Duration::from_secs(5);
            continue;
        }
        let initialized = n.raft.is_initialized().await.unwrap_or(false);
        let mut infos = Vec::new();
        for peer in n.opts.peers.iter().filter(|p| **p != n.opts.advertise) {
            infos.push((peer.clone(), peer_info(&n.opts.transport, peer).await));
        }
        let any_initialized = infos
            .iter()
            .any(|(_, i)| matches!(i, Some(i) if i.initialized));
        if !initialized && !any_initialized {
            let all_pristine = infos
                .iter()
                .all(|(_, i)| matches!(i, Some(i) if !i.initialized && i.set_id == n.opts.set_id));
            let first = n.opts.peers.iter().min() == Some(&n.opts.advertise);
            if all_pristine && first {
                let mut members = BTreeMap::new();
                members.insert(
                    n.id,
                    BasicNode {
                        addr: n.opts.advertise.clone(),
                    },
                );
                for (addr, info) in &infos {
                    if let Some(i) = info {
                        members.insert(i.node_id, BasicNode { addr: addr.clone() });
                    }
                }
                match n.raft.initialize(members).await {
                    Ok(()) => tracing::info!("replica set {} initialised", n.opts.set_id),
                    Err(e) => tracing::info!("initialise: {e}"),
                }
            }
            continue;
        }
        if any_initialized {
            // Ask every initialised peer; the leader accepts, others redirect.
            for (addr, info) in &infos {
                if !matches!(info, Some(i) if i.initialized) {
                    continue;
                }
                match peer_join(&n.opts.transport, addr, n.id, &n.opts.advertise).await {
                    Ok(()) => break,
                    Err(e) => tracing::debug!("join via {addr}: {e}"),
                }
            }
        }
    }
}

async fn admin_client(
    transport: &kadalu_proto::transport::Transport,
    addr: &str,
) -> Option<RaftAdminClient<tonic::transport::Channel>> {
    let ep = crate::raft::network::endpoint(transport, addr).ok()?;
    let ch = ep.connect().await.ok()?;
    Some(RaftAdminClient::new(ch))
}

async fn peer_info(
    transport: &kadalu_proto::transport::Transport,
    addr: &str,
) -> Option<kadalu_proto::raft::NodeInfoReply> {
    let mut c = admin_client(transport, addr).await?;
    let mut req = tonic::Request::new(NodeInfoRequest {});
    req.set_timeout(Duration::from_secs(2));
    c.node_info(req).await.ok().map(|r| r.into_inner())
}

async fn peer_join(
    transport: &kadalu_proto::transport::Transport,
    addr: &str,
    id: NodeId,
    me: &str,
) -> Result<(), String> {
    let mut c = admin_client(transport, addr)
        .await
        .ok_or_else(|| format!("{addr} unreachable"))?;
    let mut req = tonic::Request::new(JoinRequest {
        node_id: id,
        address: me.to_string(),
    });
    req.set_timeout(Duration::from_secs(10));
    c.join(req)
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_string())
}
