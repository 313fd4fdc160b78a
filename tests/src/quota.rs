//! A client of the bricks' `Quota` service for tests: finds the leader of a
//! replica set (following "not the leader" hints), retries while an election
//! runs, and puts a request header on every change, as the CSI driver does.

use kadalu_proto::brick::RequestHeader;
use kadalu_proto::quota::quota_client::QuotaClient;
use kadalu_proto::quota::*;
use kadalu_proto::LEADER_HINT_KEY;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call keeps looking for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Quota calls to one replica set.
pub struct QuotaAdmin {
    addrs: Vec<String>,
    client_id: [u8; 16],
    seq: u64,
    rt: tokio::runtime::Runtime,
}

impl QuotaAdmin {
    pub fn new(addrs: &[SocketAddr]) -> QuotaAdmin {
        QuotaAdmin {
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            client_id: rand::random(),
            seq: 0,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn header(&mut self) -> Option<RequestHeader> {
        self.seq += 1;
        Some(RequestHeader {
            client_id: self.client_id.to_vec().into(),
            seq: self.seq,
            ack_below: self.seq,
        })
    }

    /// Runs `f` against the leader: tries each brick, goes where a refusal
    /// points, and retries until [`LEADER_WAIT`] on unavailability.
    fn call<R, F, Fut>(&self, f: F) -> Result<R, Status>
    where
        F: Fn(QuotaClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.rt.block_on(async {
            let deadline = Instant::now() + LEADER_WAIT;
            let mut next = 0usize;
            let mut hint: Option<String> = None;
            loop {
                let addr = hint.take().unwrap_or_else(|| {
                    next += 1;
                    self.addrs[next % self.addrs.len()].clone()
                });
                let result = async {
                    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| Status::invalid_argument(e.to_string()))?
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(CALL_TIMEOUT);
                    let ch = ep
                        .connect()
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    tokio::time::timeout(CALL_TIMEOUT, f(QuotaClient::new(ch)))
                        .await
                        .map_err(|_| Status::deadline_exceeded("quota call timed out"))?
                }
                .await;
                match result {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if Instant::now() < deadline && retryable(&s) => {
                        hint = s
                            .metadata()
                            .get(LEADER_HINT_KEY)
                            .and_then(|v| v.to_str().ok())
                            .filter(|v| !v.is_empty())
                            .map(str::to_string);
                        if hint.is_none() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    Err(s) => return Err(s),
                }
            }
        })
    }

    pub fn create(&mut self, name: &str, bytes: u64, inodes: u64) -> Result<Pv, Status> {
        let req = CreatePvRequest {
            header: self.header(),
            name: name.into(),
            byte_limit: bytes,
            inode_limit: inodes,
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.create_pv(r).await }
        })
    }

    pub fn expand(&mut self, name: &str, bytes: u64) -> Result<Pv, Status> {
        let req = ExpandPvRequest {
            header: self.header(),
            name: name.into(),
            byte_limit: bytes,
            inode_limit: 0,
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.expand_pv(r).await }
        })
    }

    pub fn delete(&mut self, name: &str, policy: ReclaimPolicy) -> Result<DeletePvReply, Status> {
        let req = DeletePvRequest {
            header: self.header(),
            name: name.into(),
            policy: policy as i32,
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.delete_pv(r).await }
        })
    }

    pub fn get(&self, name: &str) -> Result<Pv, Status> {
        let req = GetPvRequest { name: name.into() };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.get_pv(r).await }
        })
    }

    pub fn list(&self) -> Result<Vec<Pv>, Status> {
        self.call(|mut c| async move { c.list_pvs(ListPvsRequest {}).await })
            .map(|r| r.pvs)
    }

    pub fn recount(&mut self, name: &str) -> Result<Vec<PvDrift>, Status> {
        let req = RecountRequest {
            header: self.header(),
            name: name.into(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.recount(r).await }
        })
        .map(|r| r.pvs)
    }

    pub fn capacity(&self) -> Result<CapacityReply, Status> {
        self.call(|mut c| async move { c.capacity(CapacityRequest {}).await })
    }
}

fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || (s.code() == Code::FailedPrecondition && s.metadata().get(LEADER_HINT_KEY).is_some())
}
