//! A client of the bricks' `Quota` service for tests: finds the leader of a
//! replica set (following "not the leader" hints), retries while an election
//! runs, and puts a request header on every change, as the CSI driver does.

use kadalu_csi::set_client::{Connector, Requester, SetClient};
use kadalu_proto::brick::RequestHeader;
use kadalu_proto::quota::quota_client::QuotaClient;
use kadalu_proto::quota::*;
use kadalu_proto::transport::Transport;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::Status;

/// Quota calls to one replica set, through the CSI driver's own [`SetClient`] (leader
/// hints, retries during elections, deadlines), so tests exercise that loop too.
pub struct QuotaAdmin {
    set: SetClient,
    requester: Arc<Requester>,
    rt: tokio::runtime::Runtime,
}

impl QuotaAdmin {
    pub fn new(addrs: &[SocketAddr]) -> QuotaAdmin {
        QuotaAdmin {
            set: Connector::new(Transport::plain())
                .set(addrs.iter().map(|a| a.to_string()).collect()),
            requester: Requester::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn header(&mut self) -> Option<RequestHeader> {
        self.requester.header()
    }

    fn call<R, F, Fut>(&self, f: F) -> Result<R, Status>
    where
        F: Fn(QuotaClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.rt.block_on(self.set.call(f))
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
