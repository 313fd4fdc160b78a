//! The gRPC `Quota` service: PV create, expand, delete, get, list, recount
//! and the set's capacity. Requests are validated here, with messages that
//! say what to fix; every change is then an operation through the same path
//! as a file-system change (`BrickService::mutate`: the Raft log on
//! Replica3), so it is applied in order on every brick and a retried request
//! applies once. Reads go behind the same read gate as file-system reads.

use crate::error::FsError;
use crate::ops::{Operation, Outcome, ReclaimPolicy};
use crate::service::BrickService;
use crate::store::Store;
use kadalu_proto::errno::errno_of;
use kadalu_proto::pv_name::validate_pv_name;
use kadalu_proto::quota::quota_server::Quota;
use kadalu_proto::quota::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// The Quota service of one brick.
#[derive(Clone)]
pub struct QuotaService {
    brick: BrickService,
    store: Arc<Store>,
}

impl QuotaService {
    pub fn new(brick: BrickService, store: Arc<Store>) -> Self {
        QuotaService { brick, store }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, FsError> + Send + 'static,
    ) -> Result<T, Status> {
        self.brick.read_gate().await?;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(Status::from),
            Err(e) => Err(Status::internal(format!("worker failed: {e}"))),
        }
    }

    async fn pv_reply(&self, name: String) -> Result<Pv, Status> {
        let n = name.clone();
        self.read(move |s| s.pv(&n))
            .await?
            .map(|p| p.to_wire())
            .ok_or_else(|| Status::not_found(format!("no PV named {name:?}")))
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    validate_pv_name(name).map_err(Status::invalid_argument)
}

/// Turns a file-system answer of a PV operation into the status a caller
/// acts on; statuses without an errno (not the leader, unavailable) pass.
fn pv_status(s: Status, name: &str, what: &str) -> Status {
    match errno_of(&s) {
        Some(libc::EEXIST) => Status::already_exists(format!(
            "{name:?} already exists with other limits, or as a directory that is not a PV"
        )),
        Some(libc::ENOENT) => Status::not_found(format!("no PV named {name:?}")),
        Some(libc::EINVAL) => {
            Status::failed_precondition(format!("{what} of {name:?}: {}", s.message()))
        }
        _ => s,
    }
}

#[tonic::async_trait]
impl Quota for QuotaService {
    async fn create_pv(&self, request: Request<CreatePvRequest>) -> Reply<Pv> {
        let r = request.into_inner();
        check_name(&r.name)?;
        if r.byte_limit == 0 {
            return Err(Status::invalid_argument(
                "byte_limit is 0; give the PV's size in bytes",
            ));
        }
        let name = r.name.clone();
        let out = self
            .brick
            .mutate(move |p| {
                let op = Operation::CreatePv {
                    name: r.name.clone(),
                    id: p.new_id(),
                    byte_limit: r.byte_limit,
                    inode_limit: r.inode_limit,
                };
                p.pv_command(r.header.as_ref(), op)
            })
            .await;
        out.map_err(|s| pv_status(s, &name, "create"))?;
        Ok(Response::new(self.pv_reply(name).await?))
    }

    async fn expand_pv(&self, request: Request<ExpandPvRequest>) -> Reply<Pv> {
        let r = request.into_inner();
        check_name(&r.name)?;
        let name = r.name.clone();
        let current = self.pv_reply(name.clone()).await?;
        if r.byte_limit < current.byte_limit {
            return Err(Status::failed_precondition(format!(
                "PV {name:?} has {} bytes; it can only grow, and {} is smaller",
                current.byte_limit, r.byte_limit
            )));
        }
        if r.inode_limit != 0 && current.inode_limit != 0 && r.inode_limit < current.inode_limit {
            return Err(Status::failed_precondition(format!(
                "PV {name:?} allows {} inodes; it can only grow, and {} is smaller",
                current.inode_limit, r.inode_limit
            )));
        }
        let out = self
            .brick
            .mutate(move |p| {
                let op = Operation::ExpandPv {
                    name: r.name.clone(),
                    byte_limit: r.byte_limit,
                    inode_limit: r.inode_limit,
                };
                p.pv_command(r.header.as_ref(), op)
            })
            .await;
        out.map_err(|s| pv_status(s, &name, "expand"))?;
        Ok(Response::new(self.pv_reply(name).await?))
    }

    async fn delete_pv(&self, request: Request<DeletePvRequest>) -> Reply<DeletePvReply> {
        let r = request.into_inner();
        check_name(&r.name)?;
        let policy = ReclaimPolicy::from_number(r.policy).ok_or_else(|| {
            Status::invalid_argument(format!(
                "policy {} is not one of DELETE (1), ARCHIVE (2), RETAIN (3)",
                r.policy
            ))
        })?;
        let name = r.name.clone();
        let out = self
            .brick
            .mutate(move |p| {
                let op = Operation::DeletePv {
                    name: r.name.clone(),
                    policy,
                };
                p.pv_command(r.header.as_ref(), op)
            })
            .await
            .map_err(|s| pv_status(s, &name, "delete"))?;
        match out {
            Outcome::PvDeleted {
                existed,
                archived_as,
            } => Ok(Response::new(DeletePvReply {
                existed,
                archived_as,
            })),
            other => Err(Status::internal(format!("delete answered {other:?}"))),
        }
    }

    async fn get_pv(&self, request: Request<GetPvRequest>) -> Reply<Pv> {
        let r = request.into_inner();
        check_name(&r.name)?;
        Ok(Response::new(self.pv_reply(r.name).await?))
    }

    async fn list_pvs(&self, _request: Request<ListPvsRequest>) -> Reply<ListPvsReply> {
        let pvs = self.read(|s| s.pvs()).await?;
        Ok(Response::new(ListPvsReply {
            pvs: pvs.iter().map(|p| p.to_wire()).collect(),
        }))
    }

    async fn recount(&self, request: Request<RecountRequest>) -> Reply<RecountReply> {
        let r = request.into_inner();
        if !r.name.is_empty() {
            check_name(&r.name)?;
        }
        let name = r.name.clone();
        let out = self
            .brick
            .mutate(move |p| {
                let op = Operation::RecountPv {
                    name: r.name.clone(),
                };
                p.pv_command(r.header.as_ref(), op)
            })
            .await
            .map_err(|s| pv_status(s, &name, "recount"))?;
        match out {
            Outcome::Recounted(pvs) => Ok(Response::new(RecountReply { pvs })),
            other => Err(Status::internal(format!("recount answered {other:?}"))),
        }
    }

    async fn capacity(&self, _request: Request<CapacityRequest>) -> Reply<CapacityReply> {
        Ok(Response::new(self.read(|s| s.capacity()).await?))
    }
}
