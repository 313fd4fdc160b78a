//! The `KadaluStorage` custom resource (group `kadalu-operator.storage`, version
//! `v1alpha1`): the spec a user writes to ask for a pool, and the status the operator
//! reports back. Field names follow Kadalu's own CRD so existing manifests carry over.
//!
//! The rules the API server can check on its own (a Replica3 pool has whole replica sets,
//! every storage entry names exactly one source, device and path entries name their node)
//! are CEL rules in the schema, so a bad object is refused at `kubectl apply` time;
//! [`KadaluStorageSpec::validate`] repeats them for objects that reached the operator
//! before the CRD carried them.

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use kadalu_proto::pool_config::{PoolType, ReclaimPolicy};

/// API group of the CRD.
pub const GROUP: &str = "kadalu-operator.storage";
/// The only served version.
pub const VERSION: &str = "v1alpha1";

/// Replication of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StorageType {
    /// One brick per replica set: no redundancy.
    Replica1,
    /// Three bricks per replica set on three nodes, kept in step by Raft.
    Replica3,
}

impl From<StorageType> for PoolType {
    fn from(t: StorageType) -> Self {
        match t {
            StorageType::Replica1 => PoolType::Replica1,
            StorageType::Replica3 => PoolType::Replica3,
        }
    }
}

/// What happens to a PV's data when its PVC is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PvReclaimPolicy {
    /// Remove the PV's directory.
    #[default]
    Delete,
    /// Keep the data under an archive name; the PV goes.
    Archive,
    /// Keep the PV and its data (StorageClass reclaimPolicy Retain).
    Retain,
}

impl From<PvReclaimPolicy> for ReclaimPolicy {
    fn from(p: PvReclaimPolicy) -> Self {
        match p {
            PvReclaimPolicy::Delete => ReclaimPolicy::Delete,
            PvReclaimPolicy::Archive => ReclaimPolicy::Archive,
            PvReclaimPolicy::Retain => ReclaimPolicy::Retain,
        }
    }
}

/// One brick of the pool: where its data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.device), has(self.path), has(self.pvc)].filter(x, x).size() == 1").message("a storage entry takes exactly one of device, path and pvc"),
    validation = Rule::new("!(has(self.device) || has(self.path)) || (has(self.node) && self.node != '')").message("a device or path storage entry needs node")
)]
pub struct StorageEntry {
    /// Kubernetes node (its `kubernetes.io/hostname` label) the brick runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Raw block device on that node; formatted with XFS if it has no file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Directory on that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Name of a PersistentVolumeClaim in the KadaluStorage's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
}

/// Where a storage entry's data lives, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrickSource<'a> {
    Device(&'a str),
    Path(&'a str),
    Pvc(&'a str),
}

/// A pool of replicated storage.
// The derive expands every printcolumn into sibling attributes clippy sees as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "kadalu-operator.storage",
    version = "v1alpha1",
    kind = "KadaluStorage",
    namespaced,
    shortname = "kds",
    status = "KadaluStorageStatus",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "PVs", type_ = "integer", json_path = ".status.pvCount"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'Replica3' || size(self.storage) % 3 == 0").message("a Replica3 pool needs a multiple of 3 storage entries (one replica set is 3 bricks on 3 nodes)"),
    validation = Rule::new("self.type == oldSelf.type").message("type cannot change: create a new pool and copy the data"),
    validation = Rule::new("size(self.storage) >= size(oldSelf.storage)").message("storage entries cannot be removed (a brick's position is its identity); add storage by appending entries")
)]
pub struct KadaluStorageSpec {
    /// Replica1 or Replica3.
    #[serde(rename = "type")]
    pub pool_type: StorageType,
    /// The bricks, in order: for Replica3 entries 3K..3K+2 form replica set K.
    #[schemars(length(min = 1))]
    pub storage: Vec<StorageEntry>,
    /// What happens to a PV's data when its claim goes (delete, archive or retain).
    #[serde(default)]
    pub pv_reclaim_policy: PvReclaimPolicy,
    /// Tolerations given to the brick pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Free-form pool options passed to the pool file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// What the operator last saw of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct KadaluStorageStatus {
    /// `Ready`, `Progressing` and `Degraded`, in the metav1 Condition shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bricks: Vec<BrickStatus>,
    /// Sum of the replica sets' usable space (a set counts once, not per replica).
    #[serde(default)]
    pub capacity_bytes: u64,
    #[serde(default)]
    pub used_bytes: u64,
    /// PersistentVolumes of the pool's StorageClass.
    #[serde(default)]
    pub pv_count: u32,
}

/// One brick as last probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrickStatus {
    /// The brick's pod name.
    pub name: String,
    #[serde(default)]
    pub node: String,
    pub set_index: u32,
    /// `Up` (answered the probe), `Down` (did not) or `Unknown` (not probed yet).
    pub state: String,
    #[serde(default)]
    pub capacity_bytes: u64,
    #[serde(default)]
    pub used_bytes: u64,
    /// Raft log entries the set's leader has not yet replicated to this brick.
    #[serde(default)]
    pub heal_pending_entries: u64,
    /// The storage entry this brick was made from, `node/device:DEV` (or `path:`, `pvc:`):
    /// what a later spec is compared against, to refuse reordering and unsafe replacement.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// A spec the operator cannot turn into bricks, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.storage is empty: list at least one brick (node with device or path, or a pvc)")]
    NoStorage,
    #[error("spec.storage has {0} entries; a Replica3 pool needs a multiple of 3")]
    NotWholeSets(usize),
    #[error("spec.storage[{0}] names {1} of device, path and pvc; give exactly one")]
    Sources(usize, usize),
    #[error("spec.storage[{0}] uses a {1} but has no node; set node to the node that has it")]
    NoNode(usize, &'static str),
    #[error("spec.storage[{index}].{field} {value:?} is not valid: {why}")]
    BadValue {
        index: usize,
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

impl StorageEntry {
    /// The entry's one source, or why it has not exactly one.
    pub fn source(&self, index: usize) -> Result<BrickSource<'_>, SpecError> {
        let given = [&self.device, &self.path, &self.pvc]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if given != 1 {
            return Err(SpecError::Sources(index, given));
        }
        let needs_node = |kind| match self.node.as_deref() {
            Some(n) if !n.is_empty() => Ok(()),
            _ => Err(SpecError::NoNode(index, kind)),
        };
        let non_empty = |field, v: &str| {
            if v.is_empty() || v.contains('\0') {
                Err(SpecError::BadValue {
                    index,
                    field,
                    value: v.to_owned(),
                    why: "it is empty or holds a NUL byte",
                })
            } else {
                Ok(())
            }
        };
        if let Some(d) = &self.device {
            needs_node("device")?;
            non_empty("device", d)?;
            if !d.starts_with("/dev/") {
                return Err(SpecError::BadValue {
                    index,
                    field: "device",
                    value: d.clone(),
                    why: "a device is an absolute path under /dev/",
                });
            }
            return Ok(BrickSource::Device(d));
        }
        if let Some(p) = &self.path {
            needs_node("path")?;
            non_empty("path", p)?;
            if !p.starts_with('/') {
                return Err(SpecError::BadValue {
                    index,
                    field: "path",
                    value: p.clone(),
                    why: "a path is absolute",
                });
            }
            return Ok(BrickSource::Path(p));
        }
        let pvc = self.pvc.as_deref().unwrap_or_default();
        non_empty("pvc", pvc)?;
        Ok(BrickSource::Pvc(pvc))
    }
}

impl KadaluStorageSpec {
    /// The CEL rules of the schema plus what CEL cannot say cheaply (absolute paths).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.storage.is_empty() {
            return Err(SpecError::NoStorage);
        }
        if self.pool_type == StorageType::Replica3 && !self.storage.len().is_multiple_of(3) {
            return Err(SpecError::NotWholeSets(self.storage.len()));
        }
        for (i, e) in self.storage.iter().enumerate() {
            e.source(i)?;
        }
        Ok(())
    }
}

/// The CRD as the YAML document committed in `manifests/crd.yaml`.
pub fn crd_yaml() -> Result<String, crate::Error> {
    use kube::CustomResourceExt;
    let crd = KadaluStorage::crd();
    serde_saphyr::to_string(&crd).map_err(|e| crate::Error::Serialize("CRD", e.to_string()))
}

/// Spec builders shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A path brick on `node`.
    pub fn at(node: &str, path: &str) -> StorageEntry {
        StorageEntry {
            node: Some(node.into()),
            path: Some(path.into()),
            ..Default::default()
        }
    }

    /// A spec of type `t` with `storage`, defaults elsewhere.
    pub fn spec(t: StorageType, storage: Vec<StorageEntry>) -> KadaluStorageSpec {
        KadaluStorageSpec {
            pool_type: t,
            storage,
            pv_reclaim_policy: PvReclaimPolicy::Delete,
            tolerations: vec![],
            options: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn entry(
        node: Option<&str>,
        device: Option<&str>,
        path: Option<&str>,
        pvc: Option<&str>,
    ) -> StorageEntry {
        StorageEntry {
            node: node.map(Into::into),
            device: device.map(Into::into),
            path: path.map(Into::into),
            pvc: pvc.map(Into::into),
        }
    }

    use super::fixtures::spec;

    #[test]
    fn crd_names_and_subresources() {
        let crd = KadaluStorage::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("kadalustorages.kadalu-operator.storage")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(crd
            .spec
            .names
            .short_names
            .unwrap_or_default()
            .contains(&"kds".to_string()));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
    }

    #[test]
    fn committed_crd_yaml_matches_the_types() {
        let committed = include_str!("../../manifests/crd.yaml");
        let generated = crd_yaml().unwrap();
        assert!(
            committed == generated,
            "manifests/crd.yaml is stale: run `cargo run -p kadalu-operator -- crd > manifests/crd.yaml`"
        );
    }

    #[test]
    fn crd_schema_carries_cel_rules() {
        let json = serde_json::to_string(&KadaluStorage::crd()).unwrap();
        assert!(json.contains("x-kubernetes-validations"), "{json}");
        assert!(json.contains("size(self.storage) % 3 == 0"));
        assert!(json.contains("filter(x, x).size() == 1"));
        assert!(json.contains("a device or path storage entry needs node"));
        // The reclaim policy defaults server-side too.
        assert!(json.contains(r#""default":"delete""#), "{json}");
    }

    #[test]
    fn kadalu_style_yaml_parses() {
        let yaml = r#"
apiVersion: kadalu-operator.storage/v1alpha1
kind: KadaluStorage
metadata: { name: pool1, namespace: kadalu }
spec:
  type: Replica3
  storage:
    - { node: n1, device: /dev/sdb }
    - { node: n2, path: /data/b }
    - { pvc: brick-pvc }
  tolerations: [{ key: k, operator: Exists, effect: NoSchedule }]
  options: { a: b }
"#;
        let ks: KadaluStorage = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(ks.spec.pool_type, StorageType::Replica3);
        assert_eq!(ks.spec.pv_reclaim_policy, PvReclaimPolicy::Delete);
        assert_eq!(
            ks.spec.storage[2].source(2),
            Ok(BrickSource::Pvc("brick-pvc"))
        );
        assert_eq!(ks.spec.tolerations[0].key.as_deref(), Some("k"));
        ks.spec.validate().unwrap();
    }

    #[test]
    fn validate_rejects_each_bad_shape() {
        let ok = entry(Some("n"), None, Some("/b"), None);
        assert_eq!(
            spec(StorageType::Replica1, vec![]).validate(),
            Err(SpecError::NoStorage)
        );
        assert_eq!(
            spec(StorageType::Replica3, vec![ok.clone(), ok.clone()]).validate(),
            Err(SpecError::NotWholeSets(2))
        );
        assert_eq!(
            spec(
                StorageType::Replica1,
                vec![
                    ok.clone(),
                    entry(Some("n"), Some("/dev/x"), Some("/b"), None)
                ]
            )
            .validate(),
            Err(SpecError::Sources(1, 2))
        );
        assert_eq!(
            spec(
                StorageType::Replica1,
                vec![entry(Some("n"), None, None, None)]
            )
            .validate(),
            Err(SpecError::Sources(0, 0))
        );
        assert_eq!(
            spec(
                StorageType::Replica1,
                vec![entry(None, Some("/dev/sdb"), None, None)]
            )
            .validate(),
            Err(SpecError::NoNode(0, "device"))
        );
        assert_eq!(
            spec(
                StorageType::Replica1,
                vec![entry(Some(""), None, Some("/p"), None)]
            )
            .validate(),
            Err(SpecError::NoNode(0, "path"))
        );
        assert!(matches!(
            spec(
                StorageType::Replica1,
                vec![entry(Some("n"), None, Some("rel"), None)]
            )
            .validate(),
            Err(SpecError::BadValue { field: "path", .. })
        ));
        assert!(matches!(
            spec(
                StorageType::Replica1,
                vec![entry(Some("n"), Some("sdb"), None, None)]
            )
            .validate(),
            Err(SpecError::BadValue {
                field: "device",
                ..
            })
        ));
        // A pvc needs no node: the claim decides where the pod runs.
        spec(
            StorageType::Replica1,
            vec![entry(None, None, None, Some("c"))],
        )
        .validate()
        .unwrap();
        spec(StorageType::Replica3, vec![ok.clone(), ok.clone(), ok])
            .validate()
            .unwrap();
        // The message says what to fix.
        assert!(SpecError::NotWholeSets(2)
            .to_string()
            .contains("multiple of 3"));
    }
}
