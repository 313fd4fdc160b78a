//! The `RaftAdmin` service: what a brick tells about its place in the
//! replica set (node info for bootstrap, status, heal progress, a digest of
//! its tree) and the join and fault-injection calls.

use crate::raft::node::RaftNode;
use kadalu_proto::raft::raft_admin_server::RaftAdmin;
use kadalu_proto::raft::*;
use openraft::ServerState;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    pub node: Arc<RaftNode>,
}

type Reply<T> = Result<Response<T>, Status>;

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl RaftAdmin for AdminService {
    async fn node_info(&self, _r: Request<NodeInfoRequest>) -> Reply<NodeInfoReply> {
        let n = &self.node;
        let initialized = n
            .raft
            .is_initialized()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let m = n.raft.metrics().borrow().clone();
        Ok(Response::new(NodeInfoReply {
            node_id: n.id,
            set_id: n.opts.set_id.clone(),
            initialized,
            last_log_index: m.last_log_index.unwrap_or(0),
            address: n.opts.advertise.clone(),
        }))
    }

    async fn join(&self, r: Request<JoinRequest>) -> Reply<JoinReply> {
        let r = r.into_inner();
        if r.node_id == 0 || r.address.is_empty() || r.address.len() > 256 {
            return Err(Status::invalid_argument(
                "join needs a node id and an address",
            ));
        }
        self.node.handle_join(r.node_id, r.address).await?;
        Ok(Response::new(JoinReply {}))
    }

    async fn heal_info(&self, _r: Request<HealInfoRequest>) -> Reply<HealInfoReply> {
        let n = &self.node;
        let m = n.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            let hint = m.current_leader.and_then(|l| n.members().get(&l).cloned());
            return Err(crate::raft::node::Refusal::NotLeader(hint).into());
        }
        let last = m.last_log_index.unwrap_or(0);
        let first_kept = n.log.first_index().unwrap_or(last + 1);
        let voters = n.voters();
        let replication = m.replication.clone().unwrap_or_default();
        let members = n
            .members()
            .into_iter()
            .map(|(id, addr)| {
                let matched = match id == n.id {
                    true => last,
                    false => replication
                        .get(&id)
                        .cloned()
                        .flatten()
                        .map_or(0, |l| l.index),
                };
                MemberHeal {
                    node_id: id,
                    address: addr,
                    voter: voters.contains(&id),
                    matched_index: matched,
                    entries_pending: last.saturating_sub(matched),
                    bytes_pending: n.log.bytes_between(matched, last),
                    needs_snapshot: matched + 1 < first_kept,
                    is_leader: id == n.id,
                }
            })
            .collect();
        Ok(Response::new(HealInfoReply {
            leader_id: n.id,
            last_log_index: last,
            committed_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }))
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Reply<StatusReply> {
        let n = &self.node;
        let m = n.raft.metrics().borrow().clone();
        let leader_address = m
            .current_leader
            .and_then(|l| n.members().get(&l).cloned())
            .unwrap_or_default();
        let fault = match (&m.running_state, n.fault()) {
            (_, Some(f)) => f,
            (Err(e), None) => e.to_string(),
            (Ok(()), None) => String::new(),
        };
        Ok(Response::new(StatusReply {
            node_id: n.id,
            state: state_name(m.state).to_string(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            leader_address,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            fault,
            log_bytes: n.log.disk_bytes(),
            set_id: n.opts.set_id.clone(),
        }))
    }

    async fn tree_digest(&self, _r: Request<TreeDigestRequest>) -> Reply<TreeDigestReply> {
        let applier = self.node.applier.clone();
        let (digest, applied) = tokio::task::spawn_blocking(move || {
            // The store's recorded position, not `Applier::last_applied`:
            // that takes the lock `exclusive` holds.
            applier.exclusive(|store| {
                let d = crate::digest::tree_digest(store);
                (d, store.applied_index().unwrap_or(0))
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let digest = digest.map_err(Status::from)?;
        Ok(Response::new(TreeDigestReply {
            sha256: digest.sha256.to_vec().into(),
            applied_index: applied >> 8,
            inodes: digest.inodes,
        }))
    }

    async fn set_faults(&self, r: Request<SetFaultsRequest>) -> Reply<Empty> {
        if !self.node.opts.fault_injection {
            return Err(Status::permission_denied(
                "fault injection is off (start the brick with --fault-injection)",
            ));
        }
        let r = r.into_inner();
        if r.blocked_nodes.len() > 16 {
            return Err(Status::invalid_argument("at most 16 blocked nodes"));
        }
        self.node.me.faults.set_blocked(r.blocked_nodes);
        Ok(Response::new(Empty {}))
    }
}
