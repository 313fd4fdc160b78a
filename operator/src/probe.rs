//! Brick health and space: a [`BrickProbe`] asks one brick for its capacity and its set's
//! heal backlog. The real probe speaks gRPC with a deadline on every call; tests use a fake.

use kadalu_proto::quota::{quota_client::QuotaClient, CapacityRequest};
use kadalu_proto::raft::{raft_admin_client::RaftAdminClient, HealInfoRequest};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What one brick said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrickReport {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Entries the set's leader still has to send to this brick (0 if it is the leader or
    /// the set is Replica1).
    pub heal_pending_entries: u64,
}

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<BrickReport, String>> + Send + 'a>>;

/// Asks a brick at `address` (host:port) how it is.
pub trait BrickProbe: Send + Sync {
    fn probe<'a>(&'a self, address: &'a str) -> ProbeFuture<'a>;
}

/// Probe over gRPC.
pub struct GrpcProbe {
    pub deadline: Duration,
    /// Plain, or the operator's own certificate when the cluster uses mutual TLS.
    pub transport: kadalu_proto::transport::Transport,
}

impl BrickProbe for GrpcProbe {
    fn probe<'a>(&'a self, address: &'a str) -> ProbeFuture<'a> {
        Box::pin(async move {
            let endpoint = self
                .transport
                .endpoint(address)
                .map_err(|e| e.to_string())?
                .connect_timeout(self.deadline)
                .timeout(self.deadline);
            let ch = endpoint
                .connect()
                .await
                .map_err(|e| format!("connecting to {address}: {e}"))?;
            let cap = tokio::time::timeout(
                self.deadline,
                QuotaClient::new(ch.clone()).capacity(CapacityRequest {}),
            )
            .await
            .map_err(|_| format!("{address}: Capacity timed out"))?
            .map_err(|e| format!("{address}: Capacity: {}", e.message()))?
            .into_inner();
            // Heal info is the leader's view; a follower answers with its own (or an
            // error), which only means this brick cannot report the backlog itself.
            let heal = tokio::time::timeout(
                self.deadline,
                RaftAdminClient::new(ch).heal_info(HealInfoRequest {}),
            )
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|r| r.into_inner());
            let pending = heal
                .map(|h| {
                    h.members
                        .iter()
                        .map(|m| m.entries_pending)
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            Ok(BrickReport {
                capacity_bytes: cap.fs_total_bytes,
                used_bytes: cap.fs_total_bytes.saturating_sub(cap.fs_free_bytes),
                heal_pending_entries: pending,
            })
        })
    }
}
