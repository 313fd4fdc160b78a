//! The CSI Controller service: volumes are PVs (quota directories) of a
//! pool's replica sets, created, grown and deleted through the bricks'
//! `Quota` service. Placement is `placement.rs`; every answer uses the code
//! the CSI specification gives for its case.

use crate::capability::unsupported;
use crate::error::{missing, CsiError, CsiResult};
use crate::placement::{self, SetSpace};
use crate::pools::Pools;
use crate::set_client::{from_status, Connector, Requester, SetClient};
use crate::volume_id::{pv_name_for, VolumeRef};
use kadalu_proto::csi::controller_server::Controller;
use kadalu_proto::csi::controller_service_capability::rpc::Type as RpcType;
use kadalu_proto::csi::*;
use kadalu_proto::pool_config::{PoolConfig, ReclaimPolicy};
use kadalu_proto::quota;
use kadalu_proto::transport::Transport;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// Size of a volume whose request names no capacity.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// Quota accounting unit: capacities are rounded up to it.
const BLOCK: u64 = 4096;

pub struct ControllerService {
    pools: Pools,
    req: Arc<Requester>,
    conn: Arc<Connector>,
    /// Bytes each set keeps free, beyond what it promised (0 unless configured).
    reserve: u64,
}

type Reply<T> = Result<Response<T>, Status>;

impl ControllerService {
    pub fn new(pools: Pools, reserve: u64, transport: Transport) -> Self {
        ControllerService {
            pools,
            req: Requester::new(),
            conn: Connector::new(transport),
            reserve,
        }
    }

    fn pool(&self, name: &str) -> CsiResult<PoolConfig> {
        self.pools.get(name).ok_or_else(|| {
            CsiError::NotFound(format!(
                "pool {name:?} is not known to the driver (no {name}.json in the pool directory)"
            ))
        })
    }

    /// The set holding `pv` and its record, if any set does.
    async fn find(&self, pool: &PoolConfig, pv: &str) -> CsiResult<Option<(u32, quota::Pv)>> {
        for set in &pool.sets {
            let c = self
                .conn
                .set(set.bricks.iter().map(|b| b.address.clone()).collect());
            let name = pv.to_string();
            let r = c
                .call(|mut q| {
                    let name = name.clone();
                    async move { q.get_pv(quota::GetPvRequest { name }).await }
                })
                .await;
            match r {
                Ok(p) => return Ok(Some((set.index, p))),
                Err(s) if s.code() == Code::NotFound => continue,
                Err(s) => return Err(from_status(s)),
            }
        }
        Ok(None)
    }

    fn set_client(&self, pool: &PoolConfig, index: u32) -> CsiResult<SetClient> {
        let set = pool
            .sets
            .iter()
            .find(|s| s.index == index)
            .ok_or_else(|| CsiError::Internal(format!("set {index} vanished")))?;
        Ok(self
            .conn
            .set(set.bricks.iter().map(|b| b.address.clone()).collect()))
    }

    async fn spaces(&self, pool: &PoolConfig) -> CsiResult<Vec<SetSpace>> {
        let mut out = Vec::new();
        for set in &pool.sets {
            let c = self
                .conn
                .set(set.bricks.iter().map(|b| b.address.clone()).collect());
            let cap = c
                .call(|mut q| async move { q.capacity(quota::CapacityRequest {}).await })
                .await
                .map_err(from_status)?;
            out.push(SetSpace {
                set_index: set.index,
                fs_free_bytes: cap.fs_free_bytes,
                promised_bytes: cap.promised_bytes,
            });
        }
        Ok(out)
    }
}

/// The size to give a volume for a capacity range: the required bytes
/// rounded up to the accounting block, within the limit.
pub fn size_for(range: Option<&CapacityRange>) -> CsiResult<u64> {
    let (req, lim) = match range {
        None => (0, 0),
        Some(r) => (r.required_bytes, r.limit_bytes),
    };
    if req < 0 || lim < 0 {
        return Err(CsiError::InvalidArgument(
            "capacity_range bytes must not be negative".into(),
        ));
    }
    let (req, lim) = (req as u64, lim as u64);
    if lim != 0 && req > lim {
        return Err(CsiError::InvalidArgument(format!(
            "required_bytes {req} is more than limit_bytes {lim}"
        )));
    }
    let want = if req == 0 {
        if lim == 0 {
            DEFAULT_SIZE
        } else {
            DEFAULT_SIZE.min(lim)
        }
    } else {
        req
    };
    let rounded = want.div_ceil(BLOCK).saturating_mul(BLOCK);
    let size = if lim != 0 && rounded > lim {
        want
    } else {
        rounded
    };
    if size == 0 {
        return Err(CsiError::OutOfRange(
            "a volume needs at least one byte".into(),
        ));
    }
    Ok(size)
}

/// Whether an existing volume of `bytes` satisfies the range.
pub fn fits_range(bytes: u64, range: Option<&CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    (r.required_bytes <= 0 || bytes >= r.required_bytes as u64)
        && (r.limit_bytes <= 0 || bytes <= r.limit_bytes as u64)
}

fn volume(v: &VolumeRef, bytes: u64) -> Volume {
    Volume {
        capacity_bytes: bytes.min(i64::MAX as u64) as i64,
        volume_id: v.id(),
        volume_context: HashMap::from([
            ("pool".to_string(), v.pool.clone()),
            ("pv".to_string(), v.pv.clone()),
        ]),
        ..Default::default()
    }
}

fn check_caps(caps: &[VolumeCapability]) -> CsiResult<()> {
    if caps.is_empty() {
        return Err(missing("volume_capabilities"));
    }
    for c in caps {
        if let Some(why) = unsupported(c) {
            return Err(CsiError::InvalidArgument(why));
        }
    }
    Ok(())
}

fn policy(p: ReclaimPolicy) -> quota::ReclaimPolicy {
    match p {
        ReclaimPolicy::Delete => quota::ReclaimPolicy::Delete,
        ReclaimPolicy::Archive => quota::ReclaimPolicy::Archive,
        ReclaimPolicy::Retain => quota::ReclaimPolicy::Retain,
    }
}

/// A ListVolumes page: entries from `start`, at most `max` (0: all).
pub fn page<T: Clone>(all: &[T], token: &str, max: i32) -> CsiResult<(Vec<T>, String)> {
    if max < 0 {
        return Err(CsiError::InvalidArgument(
            "max_entries must not be negative".into(),
        ));
    }
    let start = if token.is_empty() {
        0
    } else {
        match token.parse::<usize>() {
            Ok(n) if n <= all.len() => n,
            _ => {
                return Err(CsiError::Aborted(format!(
                    "starting_token {token:?} was not handed out by this driver or is stale"
                )))
            }
        }
    };
    let end = if max == 0 {
        all.len()
    } else {
        (start + max as usize).min(all.len())
    };
    let next = if end < all.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((all[start..end].to_vec(), next))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Reply<CreateVolumeResponse> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(missing("name").into());
        }
        check_caps(&r.volume_capabilities)?;
        if r.volume_content_source.is_some() {
            return Err(CsiError::InvalidArgument(
                "volume content sources (snapshots, clones) are not supported".into(),
            )
            .into());
        }
        let pool_name = r.parameters.get("pool").cloned().ok_or_else(|| {
            CsiError::InvalidArgument("StorageClass parameter `pool` is required".into())
        })?;
        let pool = self.pool(&pool_name).map_err(|e| match e {
            CsiError::NotFound(m) => CsiError::InvalidArgument(m),
            e => e,
        })?;
        let size = size_for(r.capacity_range.as_ref())?;
        let v = VolumeRef {
            pool: pool.name.clone(),
            pv: pv_name_for(&r.name),
        };
        if let Some((_, existing)) = self.find(&pool, &v.pv).await? {
            if fits_range(existing.byte_limit, r.capacity_range.as_ref()) {
                return Ok(Response::new(CreateVolumeResponse {
                    volume: Some(volume(&v, existing.byte_limit)),
                }));
            }
            return Err(CsiError::AlreadyExists(format!(
                "volume {:?} exists with {} bytes, outside the requested range",
                r.name, existing.byte_limit
            ))
            .into());
        }
        let spaces = self.spaces(&pool).await?;
        let set = placement::place(&spaces, size, self.reserve).map_err(|e| {
            CsiError::ResourceExhausted(format!(
                "no replica set of pool {:?} can hold {size} bytes; the most any set has is {} bytes",
                pool.name, e.largest
            ))
        })?;
        let c = self.set_client(&pool, set)?;
        let header = self.req.header();
        let name = v.pv.clone();
        let pv = c
            .call(|mut q| {
                let req = quota::CreatePvRequest {
                    header: header.clone(),
                    name: name.clone(),
                    byte_limit: size,
                    inode_limit: 0,
                };
                async move { q.create_pv(req).await }
            })
            .await
            .map_err(from_status)?;
        tracing::info!(volume = %v.id(), set, size, "created volume");
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume(&v, pv.byte_limit)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Reply<DeleteVolumeResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        // A volume that does not exist is deleted already.
        let Some(v) = VolumeRef::parse(&r.volume_id) else {
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let Some(pool) = self.pools.get(&v.pool) else {
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let Some((set, _)) = self.find(&pool, &v.pv).await? else {
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let c = self.set_client(&pool, set)?;
        let header = self.req.header();
        let (name, pol) = (v.pv.clone(), policy(pool.pv_reclaim_policy) as i32);
        let out = c
            .call(|mut q| {
                let req = quota::DeletePvRequest {
                    header: header.clone(),
                    name: name.clone(),
                    policy: pol,
                };
                async move { q.delete_pv(req).await }
            })
            .await
            .map_err(from_status)?;
        tracing::info!(volume = %v.id(), archived_as = %out.archived_as, "deleted volume");
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<ValidateVolumeCapabilitiesResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        if r.volume_capabilities.is_empty() {
            return Err(missing("volume_capabilities").into());
        }
        let not_found = || CsiError::NotFound(format!("volume {:?} does not exist", r.volume_id));
        let v = VolumeRef::parse(&r.volume_id).ok_or_else(not_found)?;
        let pool = self.pools.get(&v.pool).ok_or_else(not_found)?;
        self.find(&pool, &v.pv).await?.ok_or_else(not_found)?;
        if let Some(why) = r.volume_capabilities.iter().find_map(unsupported) {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            }));
        }
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(validate_volume_capabilities_response::Confirmed {
                volume_context: r.volume_context,
                volume_capabilities: r.volume_capabilities,
                parameters: r.parameters,
                mutable_parameters: Default::default(),
            }),
            message: String::new(),
        }))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Reply<ListVolumesResponse> {
        let r = request.into_inner();
        let mut all = Vec::new();
        for pool in self.pools.all() {
            for set in &pool.sets {
                let c = self
                    .conn
                    .set(set.bricks.iter().map(|b| b.address.clone()).collect());
                let pvs = c
                    .call(|mut q| async move { q.list_pvs(quota::ListPvsRequest {}).await })
                    .await
                    .map_err(from_status)?;
                for p in pvs.pvs {
                    let v = VolumeRef {
                        pool: pool.name.clone(),
                        pv: p.name.clone(),
                    };
                    all.push((v.id(), volume(&v, p.byte_limit)));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let vols: Vec<Volume> = all.into_iter().map(|(_, v)| v).collect();
        let (entries, next_token) = page(&vols, &r.starting_token, r.max_entries)?;
        Ok(Response::new(ListVolumesResponse {
            entries: entries
                .into_iter()
                .map(|v| list_volumes_response::Entry {
                    volume: Some(v),
                    status: None,
                })
                .collect(),
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Reply<GetCapacityResponse> {
        let r = request.into_inner();
        for c in &r.volume_capabilities {
            if unsupported(c).is_some() {
                return Ok(Response::new(GetCapacityResponse::default()));
            }
        }
        let pools = match r.parameters.get("pool") {
            Some(p) => match self.pools.get(p) {
                Some(cfg) => vec![cfg],
                None => return Ok(Response::new(GetCapacityResponse::default())),
            },
            None => self.pools.all(),
        };
        let mut spaces = Vec::new();
        for pool in &pools {
            spaces.extend(self.spaces(pool).await?);
        }
        let (total, largest) = placement::capacity(&spaces, self.reserve);
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        Ok(Response::new(GetCapacityResponse {
            available_capacity: clamp(total),
            maximum_volume_size: Some(Int64Value {
                value: clamp(largest),
            }),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Reply<ControllerGetCapabilitiesResponse> {
        let caps = [
            RpcType::CreateDeleteVolume,
            RpcType::ListVolumes,
            RpcType::GetCapacity,
            RpcType::ExpandVolume,
            RpcType::SingleNodeMultiWriter,
        ];
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .map(|t| ControllerServiceCapability {
                    r#type: Some(controller_service_capability::Type::Rpc(
                        controller_service_capability::Rpc { r#type: t as i32 },
                    )),
                })
                .collect(),
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Reply<ControllerExpandVolumeResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        let range = r
            .capacity_range
            .as_ref()
            .ok_or_else(|| missing("capacity_range"))?;
        if let Some(c) = &r.volume_capability {
            if let Some(why) = unsupported(c) {
                return Err(CsiError::InvalidArgument(why).into());
            }
        }
        let not_found = || CsiError::NotFound(format!("volume {:?} does not exist", r.volume_id));
        let v = VolumeRef::parse(&r.volume_id).ok_or_else(not_found)?;
        let pool = self.pools.get(&v.pool).ok_or_else(not_found)?;
        let (set, current) = self.find(&pool, &v.pv).await?.ok_or_else(not_found)?;
        let want = size_for(Some(range))?;
        if current.byte_limit >= want {
            // Already as large (expanding is idempotent; volumes never shrink).
            if range.limit_bytes > 0 && current.byte_limit > range.limit_bytes as u64 {
                return Err(CsiError::OutOfRange(format!(
                    "volume has {} bytes, more than limit_bytes {}; volumes do not shrink",
                    current.byte_limit, range.limit_bytes
                ))
                .into());
            }
            return Ok(Response::new(ControllerExpandVolumeResponse {
                capacity_bytes: current.byte_limit as i64,
                node_expansion_required: false,
            }));
        }
        let c = self.set_client(&pool, set)?;
        let header = self.req.header();
        let name = v.pv.clone();
        let pv = c
            .call(|mut q| {
                let req = quota::ExpandPvRequest {
                    header: header.clone(),
                    name: name.clone(),
                    byte_limit: want,
                    inode_limit: 0,
                };
                async move { q.expand_pv(req).await }
            })
            .await
            .map_err(from_status)?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: pv.byte_limit.min(i64::MAX as u64) as i64,
            // The mount reports the new size at once; nothing to do on nodes.
            node_expansion_required: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_honour_the_range() {
        let r = |req, lim| {
            Some(CapacityRange {
                required_bytes: req,
                limit_bytes: lim,
            })
        };
        assert_eq!(size_for(None).unwrap(), DEFAULT_SIZE);
        assert_eq!(size_for(r(1, 0).as_ref()).unwrap(), 4096);
        assert_eq!(size_for(r(5000, 0).as_ref()).unwrap(), 8192);
        // Rounding up must not pass the limit.
        assert_eq!(size_for(r(5000, 6000).as_ref()).unwrap(), 5000);
        assert_eq!(size_for(r(0, 1 << 20).as_ref()).unwrap(), 1 << 20);
        assert!(size_for(r(10, 5).as_ref()).is_err());
        assert!(size_for(r(-1, 0).as_ref()).is_err());
        assert!(fits_range(100, r(100, 100).as_ref()));
        assert!(!fits_range(100, r(101, 0).as_ref()));
        assert!(!fits_range(100, r(0, 99).as_ref()));
    }

    #[test]
    fn pages_and_tokens() {
        let all: Vec<u32> = (0..5).collect();
        assert_eq!(page(&all, "", 2).unwrap(), (vec![0, 1], "2".to_string()));
        assert_eq!(page(&all, "2", 2).unwrap(), (vec![2, 3], "4".to_string()));
        assert_eq!(page(&all, "4", 2).unwrap(), (vec![4], String::new()));
        assert_eq!(page(&all, "", 0).unwrap(), (all.clone(), String::new()));
        assert!(matches!(page(&all, "x", 1), Err(CsiError::Aborted(_))));
        assert!(matches!(page(&all, "9", 1), Err(CsiError::Aborted(_))));
        assert!(matches!(
            page(&all, "", -1),
            Err(CsiError::InvalidArgument(_))
        ));
    }
}
