//! The CSI Node service. A volume is staged once per node: the mounter
//! (`mounter.rs`) holds one FUSE mount of the PV at the staging path; each
//! publish is a bind mount of it at the pod's target path (read-only when
//! asked), which is kernel state and outlives this service. So a restart or
//! an upgrade of the node service leaves every pod's mount as it is.

use crate::capability::{check_mount_flags, mount_flags, read_only, unsupported};
use crate::error::{missing, CsiError, CsiResult};
use crate::mounter::{self, MountSpec, Request as MountRequest};
use crate::mountinfo::{is_dead, is_mounted, unmount};
use crate::pools::Pools;
use crate::volume_id::VolumeRef;
use kadalu_proto::csi::node_server::Node;
use kadalu_proto::csi::node_service_capability::rpc::Type as RpcType;
use kadalu_proto::csi::*;
use std::path::{Path, PathBuf};
use tonic::{Request, Response, Status};

pub struct NodeService {
    pub node_id: String,
    pub pools: Pools,
    pub mounter_socket: PathBuf,
}

type Reply<T> = Result<Response<T>, Status>;

fn path_arg(p: &str, field: &str) -> CsiResult<PathBuf> {
    if p.is_empty() {
        return Err(missing(field));
    }
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(CsiError::InvalidArgument(format!(
            "{field} must be an absolute path"
        )));
    }
    Ok(path)
}

/// Space of a mounted volume, from its file system (the PV's quota).
pub fn stats(path: &Path) -> Result<nix::sys::statvfs::Statvfs, nix::errno::Errno> {
    nix::sys::statvfs::statvfs(path)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> CsiResult<T> + Send + 'static,
) -> CsiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CsiError::Internal(format!("worker failed: {e}")))?
}

impl NodeService {
    fn volume(&self, id: &str) -> CsiResult<(VolumeRef, kadalu_proto::pool_config::PoolConfig)> {
        let not_found = || CsiError::NotFound(format!("volume {id:?} does not exist"));
        let v = VolumeRef::parse(id).ok_or_else(not_found)?;
        let pool = self.pools.get(&v.pool).ok_or_else(not_found)?;
        Ok((v, pool))
    }
}

fn bind(staging: &Path, target: &Path, ro: bool) -> CsiResult<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(target)?;
    mount(
        Some(staging),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| CsiError::Internal(format!("bind mount at {}: {e}", target.display())))?;
    if ro {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = unmount(target);
            return Err(CsiError::Internal(format!(
                "making {} read-only: {e}",
                target.display()
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Reply<NodeStageVolumeResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        let staging = path_arg(&r.staging_target_path, "staging_target_path")?;
        let cap = r
            .volume_capability
            .ok_or_else(|| missing("volume_capability"))?;
        if let Some(why) = unsupported(&cap) {
            return Err(CsiError::InvalidArgument(why).into());
        }
        let flags = mount_flags(&cap);
        check_mount_flags(&flags).map_err(CsiError::InvalidArgument)?;
        let (v, pool) = self.volume(&r.volume_id)?;
        let spec = MountSpec {
            target: staging,
            bricks: pool.mount_bricks(),
            set_size: pool.pool_type.set_size(),
            subdir: v.pv.clone(),
            read_only: read_only(&cap),
            options: flags,
        };
        mounter::call(&self.mounter_socket, &MountRequest::Mount(spec))
            .await
            .map_err(CsiError::Unavailable)?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Reply<NodeUnstageVolumeResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        let staging = path_arg(&r.staging_target_path, "staging_target_path")?;
        mounter::call(
            &self.mounter_socket,
            &MountRequest::Unmount { target: staging },
        )
        .await
        .map_err(CsiError::Unavailable)?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Reply<NodePublishVolumeResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        let target = path_arg(&r.target_path, "target_path")?;
        let staging = path_arg(&r.staging_target_path, "staging_target_path")?;
        let cap = r
            .volume_capability
            .ok_or_else(|| missing("volume_capability"))?;
        if let Some(why) = unsupported(&cap) {
            return Err(CsiError::InvalidArgument(why).into());
        }
        self.volume(&r.volume_id)?;
        let ro = r.readonly || read_only(&cap);
        blocking(move || {
            if is_mounted(&target) && !is_dead(&target) {
                return Ok(());
            }
            if is_dead(&target) {
                let _ = unmount(&target);
            }
            if !is_mounted(&staging) || is_dead(&staging) {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume is not staged at {}: call NodeStageVolume first",
                    staging.display()
                )));
            }
            bind(&staging, &target, ro)
        })
        .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Reply<NodeUnpublishVolumeResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        let target = path_arg(&r.target_path, "target_path")?;
        blocking(move || {
            // Unmount every layer (a dead one too), then the directory goes.
            for _ in 0..4 {
                if !is_mounted(&target) && !is_dead(&target) {
                    break;
                }
                unmount(&target).map_err(|e| {
                    CsiError::Internal(format!("unmounting {}: {e}", target.display()))
                })?;
            }
            match std::fs::remove_dir(&target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(CsiError::Internal(format!(
                    "removing {}: {e}",
                    target.display()
                ))),
            }
        })
        .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Reply<NodeGetVolumeStatsResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        let path = path_arg(&r.volume_path, "volume_path")?;
        self.volume(&r.volume_id)?;
        let reply = blocking(move || {
            if is_dead(&path) {
                return Ok(NodeGetVolumeStatsResponse {
                    usage: vec![],
                    volume_condition: Some(VolumeCondition {
                        abnormal: true,
                        message: "the volume's mount is broken (transport endpoint not connected)"
                            .into(),
                    }),
                });
            }
            if !path.exists() {
                return Err(CsiError::NotFound(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            let st = match stats(&path) {
                Ok(st) => st,
                Err(e) => {
                    return Ok(NodeGetVolumeStatsResponse {
                        usage: vec![],
                        volume_condition: Some(VolumeCondition {
                            abnormal: true,
                            message: format!("statfs of the volume failed: {e}"),
                        }),
                    })
                }
            };
            let fr = st.fragment_size() as u64;
            let total = st.blocks() as u64 * fr;
            let avail = st.blocks_available() as u64 * fr;
            let free = st.blocks_free() as u64 * fr;
            let files = st.files() as u64;
            let ffree = st.files_free() as u64;
            let i = |v: u64| v.min(i64::MAX as u64) as i64;
            Ok(NodeGetVolumeStatsResponse {
                usage: vec![
                    VolumeUsage {
                        available: i(avail),
                        total: i(total),
                        used: i(total.saturating_sub(free)),
                        unit: volume_usage::Unit::Bytes as i32,
                    },
                    VolumeUsage {
                        available: i(ffree),
                        total: i(files),
                        used: i(files.saturating_sub(ffree)),
                        unit: volume_usage::Unit::Inodes as i32,
                    },
                ],
                volume_condition: Some(VolumeCondition {
                    abnormal: false,
                    message: String::new(),
                }),
            })
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Reply<NodeExpandVolumeResponse> {
        let r = request.into_inner();
        if r.volume_id.is_empty() {
            return Err(missing("volume_id").into());
        }
        let path = path_arg(&r.volume_path, "volume_path")?;
        self.volume(&r.volume_id)?;
        let total = blocking(move || {
            if !path.exists() {
                return Err(CsiError::NotFound(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            let st = stats(&path).map_err(|e| CsiError::Internal(format!("statfs: {e}")))?;
            Ok(st.blocks() as u64 * st.fragment_size() as u64)
        })
        .await?;
        // Nothing to grow on the node: the mount reports the PV's new limit.
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: total.min(i64::MAX as u64) as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Reply<NodeGetCapabilitiesResponse> {
        let caps = [
            RpcType::StageUnstageVolume,
            RpcType::GetVolumeStats,
            RpcType::ExpandVolume,
            RpcType::VolumeCondition,
            RpcType::SingleNodeMultiWriter,
        ];
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .map(|t| NodeServiceCapability {
                    r#type: Some(node_service_capability::Type::Rpc(
                        node_service_capability::Rpc { r#type: t as i32 },
                    )),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Reply<NodeGetInfoResponse> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
