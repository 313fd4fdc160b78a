//! What should exist for the KadaluStorage objects, as a pure function: no I/O, so every
//! pool shape and bad input is unit-tested. The reconciler applies the result with
//! server-side apply.
//!
//! Naming: storage entry `i` of pool `p` in namespace `ns` is the headless Service and the
//! one-pod StatefulSet `p-i`; its pod is `p-i-0`, reachable at `p-i-0.p-i.ns.svc:24007`.
//! Replica set K is entries 3K..3K+2 (Replica3) or entry K (Replica1), in spec order, so
//! appending entries never renumbers an existing set.

use crate::crd::{BrickSource, KadaluStorage, PvReclaimPolicy, StorageType};
use crate::Error;
use kadalu_proto::pool_config::{BrickConfig, PoolConfig, ReplicaSetConfig, POOL_CONFIG_VERSION};
use kube::Resource;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Namespace of the operator and the cluster-wide CSI objects.
pub const OPERATOR_NAMESPACE: &str = "kadalu";
/// ConfigMap holding `<pool>.json` for every pool.
pub const POOLS_CONFIGMAP: &str = "kadalu-pools";
/// The CSI driver's name, also the StorageClasses' provisioner.
pub const CSI_DRIVER: &str = "kadalu";
/// Brick gRPC port.
pub const BRICK_PORT: u16 = 24007;
/// Brick metrics port.
pub const METRICS_PORT: u16 = 9100;

/// Settings from the operator's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// `<registry>/kadalu:<tag>`: every kadalu binary is in the one image.
    pub kadalu: String,
    pub csi_provisioner: String,
    pub csi_resizer: String,
    pub node_driver_registrar: String,
    /// The kubelet's root directory on the nodes.
    pub kubelet_dir: String,
    /// Mutual TLS between every kadalu process: the bricks' certificate (copied into each
    /// pool's namespace, where the brick pods can mount it). `None`: plain gRPC.
    pub tls: Option<crate::tls::ComponentPem>,
}

impl Images {
    pub fn new(registry: &str, tag: &str) -> Self {
        Images {
            kadalu: format!("{registry}/kadalu:{tag}"),
            csi_provisioner: "registry.k8s.io/sig-storage/csi-provisioner:v5.2.0".into(),
            csi_resizer: "registry.k8s.io/sig-storage/csi-resizer:v1.13.2".into(),
            node_driver_registrar: "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0"
                .into(),
            kubelet_dir: "/var/lib/kubelet".into(),
            tls: None,
        }
    }
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
    /// The whole object, apiVersion/kind/metadata included.
    pub body: Value,
}

fn obj(
    api_version: &'static str,
    kind: &'static str,
    namespace: Option<&str>,
    name: &str,
    mut body: Value,
    owner: Option<&Value>,
) -> Desired {
    let mut meta =
        json!({ "name": name, "labels": { "app.kubernetes.io/managed-by": "kadalu-operator" } });
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    if let Some(o) = owner {
        meta["ownerReferences"] = json!([o]);
    }
    body["apiVersion"] = json!(api_version);
    body["kind"] = json!(kind);
    body["metadata"] = meta;
    Desired {
        api_version,
        kind,
        namespace: namespace.map(Into::into),
        name: name.into(),
        body,
    }
}

/// Name, namespace and owner reference of a KadaluStorage, or which is missing.
fn identity(ks: &KadaluStorage) -> Result<(String, String, Value), Error> {
    let name = ks
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMeta("metadata.name"))?;
    let ns = ks
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMeta("metadata.namespace"))?;
    let uid = ks
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingMeta("metadata.uid"))?;
    kadalu_proto::pv_name::validate_pv_name(&name).map_err(|e| {
        Error::Spec(
            name.clone(),
            crate::crd::SpecError::BadValue {
                index: 0,
                field: "metadata.name",
                value: format!("{name} ({e})"),
                why: "a pool name must also be a valid kadalu pool name",
            },
        )
    })?;
    let owner = json!({
        "apiVersion": KadaluStorage::api_version(&()),
        "kind": KadaluStorage::kind(&()),
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    });
    Ok((name, ns, owner))
}

/// Replica set index of storage entry `i`.
pub fn set_index(t: StorageType, i: usize) -> u32 {
    match t {
        StorageType::Replica1 => i as u32,
        StorageType::Replica3 => (i / 3) as u32,
    }
}

/// gRPC address of storage entry `i`'s brick.
pub fn brick_address(pool: &str, ns: &str, i: usize) -> String {
    format!("{pool}-{i}-0.{pool}-{i}.{ns}.svc:{BRICK_PORT}")
}

/// The pool file of one KadaluStorage.
pub fn pool_config(ks: &KadaluStorage) -> Result<PoolConfig, Error> {
    let (name, ns, _) = identity(ks)?;
    ks.spec
        .validate()
        .map_err(|e| Error::Spec(name.clone(), e))?;
    let size = PoolTypeSize::of(ks.spec.pool_type);
    let sets = ks
        .spec
        .storage
        .chunks(size)
        .enumerate()
        .map(|(k, chunk)| ReplicaSetConfig {
            index: k as u32,
            bricks: chunk
                .iter()
                .enumerate()
                .map(|(j, e)| BrickConfig {
                    node: e.node.clone().unwrap_or_default(),
                    address: brick_address(&name, &ns, k * size + j),
                })
                .collect(),
        })
        .collect();
    let cfg = PoolConfig {
        version: POOL_CONFIG_VERSION,
        name: name.clone(),
        pool_type: ks.spec.pool_type.into(),
        pv_reclaim_policy: ks.spec.pv_reclaim_policy.into(),
        sets,
        options: ks.spec.options.clone(),
    };
    cfg.validate()
        .map_err(|e| Error::Serialize("pool file", e.to_string()))?;
    Ok(cfg)
}

struct PoolTypeSize;
impl PoolTypeSize {
    fn of(t: StorageType) -> usize {
        kadalu_proto::pool_config::PoolType::from(t).set_size()
    }
}

/// The children of one KadaluStorage: per storage entry a headless Service and a StatefulSet,
/// and the pool's StorageClass.
pub fn pool_objects(ks: &KadaluStorage, images: &Images) -> Result<Vec<Desired>, Error> {
    let (pool, ns, owner) = identity(ks)?;
    ks.spec
        .validate()
        .map_err(|e| Error::Spec(pool.clone(), e))?;
    let size = PoolTypeSize::of(ks.spec.pool_type);
    let mut out = Vec::new();
    for (i, entry) in ks.spec.storage.iter().enumerate() {
        let source = entry.source(i).map_err(|e| Error::Spec(pool.clone(), e))?;
        let k = set_index(ks.spec.pool_type, i);
        let sts = format!("{pool}-{i}");
        let labels = json!({ "app.kubernetes.io/name": "kadalu-brick", "kadalu.storage/pool": pool, "kadalu.storage/brick": sts });
        out.push(obj(
            "v1",
            "Service",
            Some(&ns),
            &sts,
            json!({ "spec": {
                "clusterIP": "None",
                // Peers must resolve each other before they are Ready: Raft elects through them.
                "publishNotReadyAddresses": true,
                "selector": labels,
                "ports": [
                    { "name": "grpc", "port": BRICK_PORT },
                    { "name": "metrics", "port": METRICS_PORT }
                ]
            }}),
            Some(&owner),
        ));
        let mut args = vec![
            "--brick-dir".to_string(),
            "/bricks/brick".into(),
            "--listen".into(),
            format!("0.0.0.0:{BRICK_PORT}"),
        ];
        if ks.spec.pool_type == StorageType::Replica3 {
            let first = k as usize * size;
            let peers: Vec<String> = (first..first + size)
                .map(|j| brick_address(&pool, &ns, j))
                .collect();
            args.extend([
                "--advertise".into(),
                brick_address(&pool, &ns, i),
                "--peers".into(),
                peers.join(","),
            ]);
        }
        if images.tls.is_some() {
            args.extend(["--tls-dir".into(), crate::tls::MOUNT_PATH.into()]);
        }
        args.extend([
            "--set-id".into(),
            format!("{pool}-set{k}"),
            "--set-index".into(),
            k.to_string(),
            "--metrics-listen".into(),
            format!("0.0.0.0:{METRICS_PORT}"),
        ]);
        let mut init = vec![];
        let mut volumes = vec![];
        let mut brick_mount = json!({ "name": "brick", "mountPath": "/bricks" });
        match source {
            BrickSource::Device(dev) => {
                volumes.push(json!({ "name": "dev", "hostPath": { "path": "/dev" } }));
                volumes.push(json!({ "name": "brick", "hostPath": { "path": format!("/var/lib/kadalu/bricks/{sts}"), "type": "DirectoryOrCreate" } }));
                // The server pod sees the mount through the shared hostPath directory.
                brick_mount["mountPropagation"] = json!("HostToContainer");
                init.push(json!({
                    "name": "format-and-mount",
                    "image": images.kadalu,
                    "command": ["sh", "-c",
                        "set -e; blkid \"$DEV\" || mkfs.xfs \"$DEV\"; mountpoint -q /bricks || mount \"$DEV\" /bricks; mkdir -p /bricks/brick"],
                    "env": [{ "name": "DEV", "value": dev }],
                    "securityContext": { "privileged": true },
                    "volumeMounts": [
                        { "name": "dev", "mountPath": "/dev" },
                        { "name": "brick", "mountPath": "/bricks", "mountPropagation": "Bidirectional" }
                    ]
                }));
            }
            BrickSource::Path(p) => {
                volumes.push(json!({ "name": "brick", "hostPath": { "path": p, "type": "DirectoryOrCreate" } }));
            }
            BrickSource::Pvc(c) => {
                volumes
                    .push(json!({ "name": "brick", "persistentVolumeClaim": { "claimName": c } }));
            }
        }
        let mut mounts = vec![brick_mount];
        if images.tls.is_some() {
            volumes.push(
                json!({ "name": "tls", "secret": { "secretName": brick_tls_secret(&pool) } }),
            );
            mounts.push(
                json!({ "name": "tls", "mountPath": crate::tls::MOUNT_PATH, "readOnly": true }),
            );
        }
        let mut pod_spec = json!({
            "initContainers": init,
            "containers": [{
                "name": "kadalu-server",
                "image": images.kadalu,
                "command": ["kadalu-server"],
                "args": args,
                "ports": [
                    { "name": "grpc", "containerPort": BRICK_PORT },
                    { "name": "metrics", "containerPort": METRICS_PORT }
                ],
                "volumeMounts": mounts
            }],
            "volumes": volumes,
            "tolerations": serde_json::to_value(&ks.spec.tolerations)
                .map_err(|e| Error::Serialize("tolerations", e.to_string()))?,
        });
        if let Some(node) = entry.node.as_deref().filter(|n| !n.is_empty()) {
            pod_spec["nodeSelector"] = json!({ "kubernetes.io/hostname": node });
        }
        out.push(obj(
            "apps/v1",
            "StatefulSet",
            Some(&ns),
            &sts,
            json!({ "spec": {
                "serviceName": sts,
                "replicas": 1,
                "selector": { "matchLabels": labels },
                "template": { "metadata": { "labels": labels }, "spec": pod_spec }
            }}),
            Some(&owner),
        ));
    }
    // The operator watches its bricks' Services and StatefulSets by these labels.
    for d in &mut out {
        d.body["metadata"]["labels"]["app.kubernetes.io/name"] = json!("kadalu-brick");
        d.body["metadata"]["labels"]["kadalu.storage/pool"] = json!(pool);
    }
    if let Some(pem) = &images.tls {
        // A Secret can only be mounted in its own namespace: each pool gets a copy of the
        // bricks' certificate, owned by the pool so that it goes with it.
        out.push(obj(
            "v1",
            "Secret",
            Some(&ns),
            &brick_tls_secret(&pool),
            json!({ "type": "Opaque", "data": pem.data() }),
            Some(&owner),
        ));
    }
    let mut params = BTreeMap::new();
    params.insert("pool", pool.clone());
    out.push(obj(
        "storage.k8s.io/v1",
        "StorageClass",
        None,
        &storage_class_name(&pool),
        json!({
            "provisioner": CSI_DRIVER,
            "parameters": params,
            "allowVolumeExpansion": true,
            "reclaimPolicy": if ks.spec.pv_reclaim_policy == PvReclaimPolicy::Retain { "Retain" } else { "Delete" },
        }),
        // A cluster-scoped object cannot be owned by a namespaced one (the
        // garbage collector would treat the owner as missing and delete it):
        // the StorageClass is deleted by the finalizer path instead.
        None,
    ));
    Ok(out)
}

/// The copy of the bricks' TLS Secret in a pool's namespace.
pub fn brick_tls_secret(pool: &str) -> String {
    format!("{pool}-tls")
}

/// StorageClass of a pool.
pub fn storage_class_name(pool: &str) -> String {
    format!("kadalu.{pool}")
}

/// The `kadalu-pools` ConfigMap from every KadaluStorage that is valid and not being
/// deleted. Returns it with the errors of the objects left out, so one bad pool does not
/// take the others' pool files away.
pub fn pools_configmap(all: &[KadaluStorage]) -> (Desired, Vec<Error>) {
    let mut data = BTreeMap::new();
    let mut errors = vec![];
    for ks in all {
        if ks.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match pool_config(ks) {
            Ok(cfg) => {
                data.insert(format!("{}.json", cfg.name), cfg.to_json());
            }
            Err(e) => errors.push(e),
        }
    }
    (
        obj(
            "v1",
            "ConfigMap",
            Some(OPERATOR_NAMESPACE),
            POOLS_CONFIGMAP,
            json!({ "data": data }),
            None,
        ),
        errors,
    )
}

/// The CSI driver objects, once per cluster.
pub fn csi_objects(images: &Images) -> Vec<Desired> {
    let ns = Some(OPERATOR_NAMESPACE);
    let kubelet = images.kubelet_dir.trim_end_matches('/');
    let pools_vol = json!({ "name": "pools", "configMap": { "name": POOLS_CONFIGMAP } });
    let pools_mount =
        json!({ "name": "pools", "mountPath": "/etc/kadalu/pools", "readOnly": true });
    let socket_dir = json!({ "name": "socket-dir", "emptyDir": {} });
    let socket_mount = json!({ "name": "socket-dir", "mountPath": "/csi" });
    let sidecar = |name: &str, image: &str, extra: Vec<&str>| {
        let mut args = vec!["--csi-address=/csi/csi.sock"];
        args.extend(extra);
        json!({ "name": name, "image": image, "args": args, "volumeMounts": [socket_mount] })
    };
    let controller_labels = json!({ "app.kubernetes.io/name": "kadalu-csi-controller" });
    let node_labels = json!({ "app.kubernetes.io/name": "kadalu-csi-node" });
    let mounter_labels = json!({ "app.kubernetes.io/name": "kadalu-mounter" });
    // With TLS, the controller and the mounter (the processes that reach bricks) mount their
    // component's Secret and say so with --tls-dir. The volume is not optional: a pod
    // without its certificate could not talk to any brick, so it waits for the Secret.
    let tls = images.tls.is_some();
    let tls_vols = |component: &str| match tls {
        true => vec![
            json!({ "name": "tls", "secret": { "secretName": crate::tls::secret_name(component) } }),
        ],
        false => vec![],
    };
    let tls_mounts = || match tls {
        true => {
            vec![json!({ "name": "tls", "mountPath": crate::tls::MOUNT_PATH, "readOnly": true })]
        }
        false => vec![],
    };
    let tls_args = || match tls {
        true => vec!["--tls-dir", crate::tls::MOUNT_PATH],
        false => vec![],
    };
    let with = |mut a: Vec<Value>, more: Vec<Value>| {
        a.extend(more);
        a
    };
    let mut controller_args = vec![
        "controller",
        "--endpoint",
        "unix:///csi/csi.sock",
        "--pools-dir",
        "/etc/kadalu/pools",
    ];
    controller_args.extend(tls_args());
    let mut mounter_args = vec![
        "mounter",
        "--socket",
        "/var/lib/kadalu/mounter.sock",
        "--state-dir",
        "/var/lib/kadalu/mounts",
    ];
    mounter_args.extend(tls_args());
    let node_name_env = json!([{ "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } }]);
    // The CSIDriver object is in manifests/operator.yaml, not here: cluster-scoped and
    // unowned, it would outlive `kubectl delete -f manifests/operator.yaml` if the
    // operator made it.
    vec![
        obj(
            "apps/v1",
            "Deployment",
            ns,
            "kadalu-csi-controller",
            json!({ "spec": {
                "replicas": 1,
                "selector": { "matchLabels": controller_labels },
                "template": { "metadata": { "labels": controller_labels }, "spec": {
                    "serviceAccountName": "kadalu-csi-controller",
                    "containers": [
                        { "name": "kadalu-csi", "image": images.kadalu, "command": ["kadalu-csi"],
                          "args": controller_args,
                          "volumeMounts": with(vec![socket_mount.clone(), pools_mount.clone()], tls_mounts()) },
                        sidecar("csi-provisioner", &images.csi_provisioner, vec!["--extra-create-metadata"]),
                        sidecar("csi-resizer", &images.csi_resizer, vec![]),
                    ],
                    "volumes": with(vec![socket_dir, pools_vol.clone()], tls_vols("csi-controller"))
                }}
            }}),
            None,
        ),
        obj(
            "apps/v1",
            "DaemonSet",
            ns,
            "kadalu-csi-node",
            json!({ "spec": {
                "selector": { "matchLabels": node_labels },
                "template": { "metadata": { "labels": node_labels }, "spec": {
                    "serviceAccountName": "kadalu-csi-node",
                    "containers": [
                        { "name": "kadalu-csi", "image": images.kadalu, "command": ["kadalu-csi"],
                          "args": ["node", "--endpoint", "unix:///csi/csi.sock", "--node-id", "$(NODE_NAME)",
                                   "--pools-dir", "/etc/kadalu/pools", "--mounter-socket", "/var/lib/kadalu/mounter.sock"],
                          "env": node_name_env,
                          "securityContext": { "privileged": true },
                          "volumeMounts": [
                              { "name": "plugin-dir", "mountPath": "/csi" },
                              { "name": "kubelet-dir", "mountPath": kubelet, "mountPropagation": "Bidirectional" },
                              { "name": "kadalu-state", "mountPath": "/var/lib/kadalu" },
                              pools_mount
                          ] },
                        { "name": "node-driver-registrar", "image": images.node_driver_registrar,
                          "args": ["--csi-address=/csi/csi.sock",
                                   format!("--kubelet-registration-path={kubelet}/plugins/kadalu/csi.sock")],
                          "volumeMounts": [
                              { "name": "plugin-dir", "mountPath": "/csi" },
                              { "name": "registration-dir", "mountPath": "/registration" }
                          ] }
                    ],
                    "volumes": [
                        { "name": "plugin-dir", "hostPath": { "path": format!("{kubelet}/plugins/kadalu"), "type": "DirectoryOrCreate" } },
                        { "name": "registration-dir", "hostPath": { "path": format!("{kubelet}/plugins_registry"), "type": "Directory" } },
                        { "name": "kubelet-dir", "hostPath": { "path": kubelet, "type": "Directory" } },
                        { "name": "kadalu-state", "hostPath": { "path": "/var/lib/kadalu", "type": "DirectoryOrCreate" } },
                        pools_vol
                    ]
                }}
            }}),
            None,
        ),
        obj(
            "apps/v1",
            "DaemonSet",
            ns,
            "kadalu-mounter",
            json!({ "spec": {
                "selector": { "matchLabels": mounter_labels },
                // The mounter holds every FUSE mount of the node: a rolling update would
                // kill them under running pods, so a new version waits for a manual delete.
                "updateStrategy": { "type": "OnDelete" },
                "template": { "metadata": { "labels": mounter_labels }, "spec": {
                    "serviceAccountName": "kadalu-mounter",
                    "containers": [
                        { "name": "kadalu-mounter", "image": images.kadalu, "command": ["kadalu-csi"],
                          "args": mounter_args,
                          "securityContext": { "privileged": true },
                          "volumeMounts": with(vec![
                              json!({ "name": "fuse", "mountPath": "/dev/fuse" }),
                              json!({ "name": "kadalu-state", "mountPath": "/var/lib/kadalu", "mountPropagation": "Bidirectional" }),
                              json!({ "name": "kubelet-dir", "mountPath": kubelet, "mountPropagation": "Bidirectional" }),
                          ], tls_mounts()) }
                    ],
                    "volumes": with(vec![
                        json!({ "name": "fuse", "hostPath": { "path": "/dev/fuse", "type": "CharDevice" } }),
                        json!({ "name": "kadalu-state", "hostPath": { "path": "/var/lib/kadalu", "type": "DirectoryOrCreate" } }),
                        json!({ "name": "kubelet-dir", "hostPath": { "path": kubelet, "type": "Directory" } }),
                    ], tls_vols("mounter"))
                }}
            }}),
            None,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::StorageEntry;
    use proptest::prelude::*;

    use crate::crd::fixtures::{at as path, spec};

    fn ks(name: &str, t: StorageType, storage: Vec<StorageEntry>) -> KadaluStorage {
        let mut k = KadaluStorage::new(name, spec(t, storage));
        k.metadata.namespace = Some("store".into());
        k.metadata.uid = Some(format!("uid-{name}"));
        k
    }
    fn images() -> Images {
        Images::new("reg.example", "v1")
    }
    fn args_of(d: &Desired) -> Vec<String> {
        serde_json::from_value(d.body["spec"]["template"]["spec"]["containers"][0]["args"].clone())
            .unwrap()
    }

    #[test]
    fn replica3_two_sets() {
        let k = ks(
            "p",
            StorageType::Replica3,
            (0..6).map(|i| path(&format!("n{i}"), "/b")).collect(),
        );
        let objs = pool_objects(&k, &images()).unwrap();
        assert_eq!(objs.len(), 6 * 2 + 1);
        let sts: Vec<&Desired> = objs.iter().filter(|d| d.kind == "StatefulSet").collect();
        assert_eq!(sts[4].name, "p-4");
        let a = args_of(sts[4]);
        let pos = |f: &str| a.iter().position(|x| x == f).unwrap() + 1;
        assert_eq!(a[pos("--set-index")], "1");
        assert_eq!(a[pos("--set-id")], "p-set1");
        assert_eq!(a[pos("--advertise")], "p-4-0.p-4.store.svc:24007");
        assert_eq!(
            a[pos("--peers")],
            "p-3-0.p-3.store.svc:24007,p-4-0.p-4.store.svc:24007,p-5-0.p-5.store.svc:24007"
        );
        assert_eq!(a[pos("--brick-dir")], "/bricks/brick");
        assert_eq!(a[pos("--metrics-listen")], "0.0.0.0:9100");
        assert_eq!(
            sts[4].body["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"],
            "n4"
        );
        for d in &objs {
            if d.namespace.is_none() {
                // Cluster-scoped (the StorageClass): no namespaced owner.
                assert!(
                    d.body["metadata"]["ownerReferences"].is_null(),
                    "{}",
                    d.name
                );
                continue;
            }
            assert_eq!(
                d.body["metadata"]["ownerReferences"][0]["uid"], "uid-p",
                "{}",
                d.name
            );
            assert_eq!(
                d.body["metadata"]["ownerReferences"][0]["kind"],
                "KadaluStorage"
            );
        }
        let svc = objs.iter().find(|d| d.kind == "Service").unwrap();
        assert_eq!(
            svc.body["metadata"]["labels"]["app.kubernetes.io/name"],
            "kadalu-brick"
        );
        assert_eq!(
            sts[0].body["metadata"]["labels"]["kadalu.storage/pool"],
            "p"
        );
        assert_eq!(svc.body["spec"]["clusterIP"], "None");
        let cfg = pool_config(&k).unwrap();
        assert_eq!(cfg.sets.len(), 2);
        assert_eq!(cfg.sets[1].bricks[2].address, "p-5-0.p-5.store.svc:24007");
        assert_eq!(cfg.sets[1].bricks[2].node, "n5");
    }

    #[test]
    fn replica1_has_no_peers_and_each_entry_is_a_set() {
        let k = ks(
            "r1",
            StorageType::Replica1,
            vec![path("a", "/x"), path("b", "/y")],
        );
        let objs = pool_objects(&k, &images()).unwrap();
        let sts: Vec<&Desired> = objs.iter().filter(|d| d.kind == "StatefulSet").collect();
        let a = args_of(sts[1]);
        assert!(!a.contains(&"--peers".to_string()) && !a.contains(&"--advertise".to_string()));
        assert!(a.windows(2).any(|w| w[0] == "--set-index" && w[1] == "1"));
        assert_eq!(
            sts[1].body["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"],
            "/y"
        );
        assert_eq!(pool_config(&k).unwrap().sets.len(), 2);
    }

    #[test]
    fn device_gets_privileged_format_init_container_and_pvc_its_claim() {
        let dev = StorageEntry {
            node: Some("n".into()),
            device: Some("/dev/sdb".into()),
            ..Default::default()
        };
        let pvc = StorageEntry {
            pvc: Some("claim".into()),
            ..Default::default()
        };
        let k = ks("d", StorageType::Replica1, vec![dev, pvc]);
        let objs = pool_objects(&k, &images()).unwrap();
        let sts: Vec<&Desired> = objs.iter().filter(|d| d.kind == "StatefulSet").collect();
        let init = &sts[0].body["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(init["securityContext"]["privileged"], true);
        let script = init["command"][2].as_str().unwrap();
        assert!(
            script.contains("blkid \"$DEV\" || mkfs.xfs \"$DEV\""),
            "{script}"
        );
        assert!(script.contains("mount \"$DEV\" /bricks"));
        assert_eq!(init["env"][0]["value"], "/dev/sdb");
        let pspec = &sts[1].body["spec"]["template"]["spec"];
        assert_eq!(
            pspec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "claim"
        );
        assert!(pspec.get("nodeSelector").is_none());
        assert_eq!(pspec["initContainers"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn storage_class_follows_reclaim_policy() {
        for (p, want) in [
            (PvReclaimPolicy::Delete, "Delete"),
            (PvReclaimPolicy::Archive, "Delete"),
            (PvReclaimPolicy::Retain, "Retain"),
        ] {
            let mut k = ks("sc", StorageType::Replica1, vec![path("a", "/x")]);
            k.spec.pv_reclaim_policy = p;
            let objs = pool_objects(&k, &images()).unwrap();
            let sc = objs.iter().find(|d| d.kind == "StorageClass").unwrap();
            assert_eq!(sc.name, "kadalu.sc");
            assert_eq!(sc.namespace, None);
            assert_eq!(sc.body["reclaimPolicy"], want);
            assert_eq!(sc.body["provisioner"], "kadalu");
            assert_eq!(sc.body["parameters"]["pool"], "sc");
            assert_eq!(sc.body["allowVolumeExpansion"], true);
        }
    }

    #[test]
    fn configmap_covers_all_valid_pools_and_reports_bad_ones() {
        let good = ks("g", StorageType::Replica1, vec![path("a", "/x")]);
        let bad = ks("b", StorageType::Replica3, vec![path("a", "/x")]);
        let mut gone = ks("z", StorageType::Replica1, vec![path("a", "/x")]);
        gone.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        let (cm, errs) = pools_configmap(&[good.clone(), bad, gone]);
        assert_eq!(cm.namespace.as_deref(), Some("kadalu"));
        assert_eq!(cm.name, "kadalu-pools");
        let data = cm.body["data"].as_object().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["g.json"]);
        let parsed = PoolConfig::parse(data["g.json"].as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(parsed, pool_config(&good).unwrap());
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("multiple of 3"), "{}", errs[0]);
    }

    #[test]
    fn missing_metadata_is_an_error_not_a_panic() {
        let mut k = ks("m", StorageType::Replica1, vec![path("a", "/x")]);
        k.metadata.uid = None;
        assert!(matches!(
            pool_objects(&k, &images()),
            Err(Error::MissingMeta("metadata.uid"))
        ));
    }

    fn tls_images() -> Images {
        let mut im = images();
        im.tls = Some(crate::tls::ComponentPem::placeholder("brick"));
        im
    }

    fn pod_of(d: &Desired) -> &Value {
        &d.body["spec"]["template"]["spec"]
    }

    fn tls_volume(pod: &Value) -> Option<&Value> {
        pod["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == "tls")
    }

    fn mounts_tls(container: &Value) -> bool {
        container["volumeMounts"].as_array().is_some_and(|ms| {
            ms.iter()
                .any(|m| m["name"] == "tls" && m["mountPath"] == crate::tls::MOUNT_PATH)
        })
    }

    fn has_tls_flag(container: &Value) -> bool {
        let args: Vec<&str> = container["args"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        args.windows(2)
            .any(|w| w == ["--tls-dir", crate::tls::MOUNT_PATH])
    }

    #[test]
    fn with_tls_the_processes_that_reach_bricks_get_their_certificate() {
        let objs = csi_objects(&tls_images());
        for (name, component) in [
            ("kadalu-csi-controller", "csi-controller"),
            ("kadalu-mounter", "mounter"),
        ] {
            let d = objs.iter().find(|d| d.name == name).unwrap();
            let pod = pod_of(d);
            let vol = tls_volume(pod).unwrap_or_else(|| panic!("{name} has no tls volume"));
            assert_eq!(
                vol["secret"]["secretName"],
                crate::tls::secret_name(component)
            );
            // Not optional: without its certificate the process could reach no brick.
            assert!(vol["secret"].get("optional").is_none(), "{vol}");
            assert!(mounts_tls(&pod["containers"][0]), "{name}");
            assert!(has_tls_flag(&pod["containers"][0]), "{name}");
        }
        // The node plugin talks only over unix sockets: no key in its pod.
        let node = objs.iter().find(|d| d.name == "kadalu-csi-node").unwrap();
        assert!(tls_volume(pod_of(node)).is_none());

        let k = ks(
            "t",
            StorageType::Replica3,
            (0..3).map(|i| path(&format!("n{i}"), "/x")).collect(),
        );
        let objs = pool_objects(&k, &tls_images()).unwrap();
        let secret = objs
            .iter()
            .find(|d| d.kind == "Secret")
            .expect("the pool's TLS Secret");
        assert_eq!(secret.name, "t-tls");
        assert_eq!(secret.namespace.as_deref(), Some("store"));
        assert_eq!(
            secret.body["metadata"]["ownerReferences"][0]["kind"],
            "KadaluStorage"
        );
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            let b64 = secret.body["data"][f].as_str().unwrap_or_default();
            let raw: k8s_openapi::ByteString =
                serde_json::from_value(json!(b64)).expect("base64 data");
            assert!(
                String::from_utf8(raw.0)
                    .unwrap()
                    .contains("of Secret kadalu/kadalu-tls-brick"),
                "{f}"
            );
        }
        for sts in objs.iter().filter(|d| d.kind == "StatefulSet") {
            let pod = pod_of(sts);
            assert_eq!(tls_volume(pod).unwrap()["secret"]["secretName"], "t-tls");
            assert!(mounts_tls(&pod["containers"][0]));
            assert!(has_tls_flag(&pod["containers"][0]));
        }
    }

    #[test]
    fn without_tls_nothing_mentions_it() {
        let k = ks("p", StorageType::Replica1, vec![path("a", "/x")]);
        let mut objs = pool_objects(&k, &images()).unwrap();
        objs.extend(csi_objects(&images()));
        assert!(objs.iter().all(|d| d.kind != "Secret"));
        for d in objs
            .iter()
            .filter(|d| d.body["spec"]["template"].is_object())
        {
            let pod = pod_of(d);
            assert!(tls_volume(pod).is_none(), "{}", d.name);
            assert!(!has_tls_flag(&pod["containers"][0]), "{}", d.name);
        }
    }

    #[test]
    fn csi_objects_shape() {
        let mut im = images();
        im.kubelet_dir = "/data/kubelet/".into();
        let objs = csi_objects(&im);
        assert!(objs.iter().all(|d| d.kind != "CSIDriver"));
        let mounter = objs.iter().find(|d| d.name == "kadalu-mounter").unwrap();
        assert_eq!(mounter.body["spec"]["updateStrategy"]["type"], "OnDelete");
        let node = objs.iter().find(|d| d.name == "kadalu-csi-node").unwrap();
        let c = &node.body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "reg.example/kadalu:v1");
        assert!(c["args"]
            .as_array()
            .unwrap()
            .contains(&json!("$(NODE_NAME)")));
        let kubelet_mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "kubelet-dir")
            .unwrap();
        assert_eq!(kubelet_mount["mountPath"], "/data/kubelet");
        assert_eq!(kubelet_mount["mountPropagation"], "Bidirectional");
        let ctl = objs
            .iter()
            .find(|d| d.name == "kadalu-csi-controller")
            .unwrap();
        let names: Vec<&str> = ctl.body["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["kadalu-csi", "csi-provisioner", "csi-resizer"]);
    }

    proptest! {
        #[test]
        fn any_whole_pool_yields_valid_pool_file(sets in 1usize..6, r3 in any::<bool>()) {
            let t = if r3 { StorageType::Replica3 } else { StorageType::Replica1 };
            let n = sets * if r3 { 3 } else { 1 };
            let k = ks("pp", t, (0..n).map(|i| path(&format!("n{i}"), "/b")).collect());
            let cfg = pool_config(&k).unwrap();
            prop_assert_eq!(cfg.sets.len(), sets);
            prop_assert!(PoolConfig::parse(cfg.to_json().as_bytes()).is_ok());
            let objs = pool_objects(&k, &images()).unwrap();
            prop_assert_eq!(objs.len(), 2 * n + 1);
        }

        #[test]
        fn partial_replica3_is_refused(n in 1usize..20) {
            prop_assume!(n % 3 != 0);
            let k = ks("pp", StorageType::Replica3, (0..n).map(|i| path(&format!("n{i}"), "/b")).collect());
            prop_assert!(pool_objects(&k, &images()).is_err());
            prop_assert!(pool_config(&k).is_err());
        }
    }
}
