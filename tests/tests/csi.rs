//! The CSI driver end to end: a tonic client on the real `kadalu-csi`
//! sockets, a real Replica3 set, real FUSE mounts held by the mounter, and
//! two "nodes" (two node services, each with its own mounter and paths).
//! Every call is made twice to check idempotency; bad requests get the codes
//! the CSI specification gives; a writer keeps writing through a published
//! volume while the node service (and the mounter) are killed and restarted.

use kadalu_e2e::csi::{channel, write_pool_file, Controller, NodeHost};
use kadalu_e2e::ReplicaSet;
use kadalu_proto::csi::controller_client::ControllerClient;
use kadalu_proto::csi::identity_client::IdentityClient;
use kadalu_proto::csi::node_client::NodeClient;
use kadalu_proto::csi::volume_capability::access_mode::Mode;
use kadalu_proto::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use kadalu_proto::csi::*;
use kadalu_proto::pool_config::ReclaimPolicy;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter)],
        parameters: HashMap::from([("pool".to_string(), "pool1".to_string())]),
        ..Default::default()
    }
}

fn stage_req(id: &str, staging: &Path) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap(Mode::MultiNodeMultiWriter)),
        ..Default::default()
    }
}

fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap(Mode::MultiNodeMultiWriter)),
        readonly,
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn bytes_of(stats: &NodeGetVolumeStatsResponse) -> (i64, i64) {
    let u = stats
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .expect("byte usage");
    (u.total, u.used)
}

struct Rig {
    _set: ReplicaSet,
    _pools: tempfile::TempDir,
    controller: Controller,
    a: NodeHost,
    b: NodeHost,
}

fn rig() -> Rig {
    let set = ReplicaSet::start();
    let pools = tempfile::tempdir().unwrap();
    write_pool_file(pools.path(), "pool1", &set.addrs(), ReclaimPolicy::Delete);
    let controller = Controller::start(pools.path());
    let a = NodeHost::start("node-a", pools.path());
    let b = NodeHost::start("node-b", pools.path());
    Rig {
        _set: set,
        _pools: pools,
        controller,
        a,
        b,
    }
}

async fn clients(
    r: &Rig,
) -> (
    ControllerClient<Channel>,
    NodeClient<Channel>,
    NodeClient<Channel>,
) {
    (
        ControllerClient::new(channel(&r.controller.socket).await),
        NodeClient::new(channel(&r.a.socket).await),
        NodeClient::new(channel(&r.b.socket).await),
    )
}

#[test]
fn a_volume_from_create_to_delete_on_two_nodes() {
    let r = rig();
    rt().block_on(async {
        let mut ident = IdentityClient::new(channel(&r.controller.socket).await);
        let info = ident
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "kadalu");
        let caps = ident
            .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(caps.capabilities.len(), 2, "{caps:?}");
        let probe = ident.probe(ProbeRequest {}).await.unwrap().into_inner();
        assert_eq!(probe.ready, Some(BoolValue { value: true }));

        let (mut c, mut na, mut nb) = clients(&r).await;
        let mut vol = None;
        for _ in 0..2 {
            let v = c
                .create_volume(create_req("pvc-one", 64 * MIB))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap();
            assert_eq!(v.volume_id, "pool1/pvc-one");
            assert_eq!(v.capacity_bytes, 64 * MIB);
            vol = Some(v);
        }
        let id = vol.unwrap().volume_id;
        // Same name, incompatible capacity.
        assert_eq!(
            code(c.create_volume(create_req("pvc-one", 128 * MIB)).await),
            Code::AlreadyExists
        );
        let v = c
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: id.clone(),
                volume_capabilities: vec![
                    cap(Mode::MultiNodeReaderOnly),
                    cap(Mode::SingleNodeWriter),
                ],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(v.confirmed.is_some());
        let v = c
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: id.clone(),
                volume_capabilities: vec![block_cap()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(v.confirmed.is_none() && !v.message.is_empty());
        c.create_volume(create_req("pvc-two", 8 * MIB))
            .await
            .unwrap();
        let page1 = c
            .list_volumes(ListVolumesRequest {
                max_entries: 1,
                starting_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page1.entries.len(), 1);
        assert_eq!(page1.next_token, "1");
        let page2 = c
            .list_volumes(ListVolumesRequest {
                max_entries: 1,
                starting_token: page1.next_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page2.entries.len(), 1);
        assert!(page2.next_token.is_empty());
        let ids: Vec<String> = page1
            .entries
            .iter()
            .chain(&page2.entries)
            .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
            .collect();
        assert_eq!(ids, vec!["pool1/pvc-one", "pool1/pvc-two"]);
        let cap_before = c
            .get_capacity(GetCapacityRequest {
                parameters: HashMap::from([("pool".to_string(), "pool1".to_string())]),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(cap_before.available_capacity > 0);
        assert!(cap_before.maximum_volume_size.unwrap().value > 0);

        // Two nodes, each staging once and publishing at its own target.
        let (sa, ta) = (r.a.path("staging"), r.a.path("pod/volume"));
        let (sb, tb) = (r.b.path("staging"), r.b.path("pod/volume"));
        for _ in 0..2 {
            na.node_stage_volume(stage_req(&id, &sa)).await.unwrap();
            na.node_publish_volume(publish_req(&id, &sa, &ta, false))
                .await
                .unwrap();
            nb.node_stage_volume(stage_req(&id, &sb)).await.unwrap();
            nb.node_publish_volume(publish_req(&id, &sb, &tb, false))
                .await
                .unwrap();
        }
        let tr = r.b.path("pod/readonly");
        nb.node_publish_volume(publish_req(&id, &sb, &tr, true))
            .await
            .unwrap();
        // Both read and write the same files.
        std::fs::write(ta.join("from-a"), b"hello from a").unwrap();
        std::fs::write(tb.join("from-b"), b"hello from b").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(std::fs::read(tb.join("from-a")).unwrap(), b"hello from a");
        assert_eq!(std::fs::read(ta.join("from-b")).unwrap(), b"hello from b");
        let err = std::fs::write(tr.join("nope"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

        let stats = na
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: ta.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(bytes_of(&stats).0, 64 * MIB);
        assert!(bytes_of(&stats).1 >= 8192, "{stats:?}");
        assert!(!stats.volume_condition.unwrap().abnormal);

        // Online expansion: the mounts see it at once.
        for _ in 0..2 {
            let e = c
                .controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: id.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: 128 * MIB,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(e.capacity_bytes, 128 * MIB);
        }
        let ne = nb
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: tb.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ne.capacity_bytes, 128 * MIB);

        for _ in 0..2 {
            for (on_a, t) in [(true, &ta), (false, &tb), (false, &tr)] {
                let n = if on_a { &mut na } else { &mut nb };
                n.node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: id.clone(),
                    target_path: t.display().to_string(),
                })
                .await
                .unwrap();
            }
            for (n, s) in [(&mut na, &sa), (&mut nb, &sb)] {
                n.node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: id.clone(),
                    staging_target_path: s.display().to_string(),
                })
                .await
                .unwrap();
            }
        }
        assert!(!ta.exists() && !tb.exists());
        assert!(!kadalu_e2e::mount::is_mounted(&sa) && !kadalu_e2e::mount::is_mounted(&sb));

        for _ in 0..2 {
            for v in ["pool1/pvc-one", "pool1/pvc-two"] {
                c.delete_volume(DeleteVolumeRequest {
                    volume_id: v.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
        let left = c
            .list_volumes(ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(left.entries.is_empty(), "{left:?}");
        assert_eq!(
            code(
                c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                    volume_id: id.clone(),
                    volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
    });
}

#[test]
fn bad_requests_get_the_codes_the_spec_gives() {
    let r = rig();
    rt().block_on(async {
        let (mut c, mut n, _) = clients(&r).await;
        let mut no_name = create_req("x", MIB);
        no_name.name.clear();
        assert_eq!(code(c.create_volume(no_name).await), Code::InvalidArgument);
        let mut no_caps = create_req("pvc-nocaps", MIB);
        no_caps.volume_capabilities.clear();
        assert_eq!(code(c.create_volume(no_caps).await), Code::InvalidArgument);
        let mut block = create_req("pvc-block", MIB);
        block.volume_capabilities = vec![block_cap()];
        assert_eq!(code(c.create_volume(block).await), Code::InvalidArgument);
        let mut no_pool = create_req("pvc-nopool", MIB);
        no_pool.parameters.clear();
        assert_eq!(code(c.create_volume(no_pool).await), Code::InvalidArgument);
        let mut bad_pool = create_req("pvc-badpool", MIB);
        bad_pool
            .parameters
            .insert("pool".into(), "nosuchpool".into());
        assert_eq!(code(c.create_volume(bad_pool).await), Code::InvalidArgument);
        let err = c
            .create_volume(create_req("pvc-huge", i64::MAX / 2))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(
            err.message().contains("the most any set has"),
            "{}",
            err.message()
        );

        assert_eq!(
            code(c.delete_volume(DeleteVolumeRequest::default()).await),
            Code::InvalidArgument
        );
        // Deleting what does not exist succeeds.
        for id in ["pool1/pvc-never", "nosuchpool/x", "garbage"] {
            c.delete_volume(DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        assert_eq!(
            code(
                c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                    volume_id: "pool1/pvc-never".into(),
                    volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                    volume_id: "pool1/pvc-never".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::InvalidArgument
        );
        assert_eq!(
            code(
                c.controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: "pool1/pvc-never".into(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: MIB,
                        limit_bytes: 0
                    }),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                c.list_volumes(ListVolumesRequest {
                    max_entries: 0,
                    starting_token: "not-a-token".into()
                })
                .await
            ),
            Code::Aborted
        );

        let staging = r.a.path("s");
        let target = r.a.path("t");
        let mut no_target = publish_req("pool1/pvc-x", &staging, &target, false);
        no_target.target_path.clear();
        assert_eq!(
            code(n.node_publish_volume(no_target).await),
            Code::InvalidArgument
        );
        let mut no_cap = publish_req("pool1/pvc-x", &staging, &target, false);
        no_cap.volume_capability = None;
        assert_eq!(
            code(n.node_publish_volume(no_cap).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(
                n.node_publish_volume(publish_req("nosuchpool/pvc-x", &staging, &target, false))
                    .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(n.node_stage_volume(stage_req("", &staging)).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(
                n.node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: "pool1/pvc-x".into(),
                    volume_path: r.a.path("missing").display().to_string(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        // Unpublishing what was never published succeeds.
        n.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: "pool1/pvc-x".into(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
        let info = n
            .node_get_info(NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.node_id, "node-a");
    });
}

#[test]
fn mounts_survive_restarts_of_the_node_service_and_the_mounter() {
    let mut r = rig();
    let rt = rt();
    let (id, staging, target) = rt.block_on(async {
        let (mut c, mut n, _) = clients(&r).await;
        let id = c
            .create_volume(create_req("pvc-survive", 256 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let (s, t) = (r.a.path("staging"), r.a.path("pod/data"));
        n.node_stage_volume(stage_req(&id, &s)).await.unwrap();
        n.node_publish_volume(publish_req(&id, &s, &t, false))
            .await
            .unwrap();
        (id, s, t)
    });

    // A writer that appends and fsyncs records for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let file = target.join("log");
    let (st, f2) = (stop.clone(), file.clone());
    let writer = std::thread::spawn(move || -> Result<(u64, Duration), String> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&f2)
            .map_err(|e| e.to_string())?;
        let (mut n, mut worst) = (0u64, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !st.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let t = Instant::now();
            writeln!(f, "record {n:08}").map_err(|e| format!("write {n}: {e}"))?;
            f.sync_data().map_err(|e| format!("fsync {n}: {e}"))?;
            worst = worst.max(t.elapsed());
            n += 1;
        }
        Ok((n, worst))
    });
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..2 {
        r.a.kill_node();
        std::thread::sleep(Duration::from_millis(500));
        r.a.start_node();
        std::thread::sleep(Duration::from_millis(500));
    }
    r.a.kill_mounter();
    std::thread::sleep(Duration::from_millis(500));
    r.a.start_mounter();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (records, worst) = writer.join().unwrap().expect("the writer never failed");
    assert!(records > 20, "only {records} records written");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, records);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("record {i:08}"));
    }
    eprintln!("{records} records through restarts; slowest write+fsync {worst:?}");

    rt.block_on(async {
        // The restarted services still manage the volume: stats work, and when
        // the FUSE daemon dies the condition says so; unpublish still works.
        let mut n = NodeClient::new(channel(&r.a.socket).await);
        let stats = n
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(bytes_of(&stats).0, 256 * MIB);
        kill_fuse_daemons(&r.a);
        let stats = n
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            stats.volume_condition.unwrap().abnormal,
            "dead mount not reported"
        );
        for _ in 0..2 {
            n.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .unwrap();
        }
        n.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
        assert!(!target.exists());
    });
}

/// SIGKILLs the kadalu-mount daemons a node's mounter recorded.
fn kill_fuse_daemons(host: &NodeHost) {
    for e in std::fs::read_dir(host.state_dir()).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            let pid = v["pid"].as_i64().unwrap() as i32;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
}
