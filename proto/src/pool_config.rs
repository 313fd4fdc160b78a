//! The pool file: where a pool's bricks are and how to reach them.
//!
//! The operator writes one JSON document per pool (a key `<pool>.json` of the
//! ConfigMap `kadalu-pools`, mounted into the CSI pods as a directory); the CSI
//! driver reads every `*.json` of that directory and reloads it when it
//! changes. Locally, `scripts/local-pool` could write the same file. The format
//! is versioned: a reader refuses a `version` it does not know rather than
//! guess. Format, version 1:
//!
//! ```json
//! {
//!   "version": 1,
//!   "name": "pool1",
//!   "type": "Replica3",
//!   "pv_reclaim_policy": "delete",
//!   "sets": [
//!     { "index": 0, "bricks": [
//!         { "node": "node1", "address": "pool1-0-0.pool1.kadalu.svc:24007" },
//!         { "node": "node2", "address": "pool1-0-1.pool1.kadalu.svc:24007" },
//!         { "node": "node3", "address": "pool1-0-2.pool1.kadalu.svc:24007" } ] }
//!   ],
//!   "options": {}
//! }
//! ```
//!
//! `sets[i].index` is the replica set's index (its inode numbers start at
//! `index << SET_SHIFT`); the bricks of a set are listed in their
//! `--set-index`/`--peers` order, and `kadalu-mount` takes them set by set.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only version this build reads and writes.
pub const POOL_CONFIG_VERSION: u32 = 1;

/// Largest pool file a reader accepts (a pool of a few hundred bricks is well
/// under this).
pub const MAX_POOL_CONFIG_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolType {
    Replica1,
    Replica3,
}

impl PoolType {
    /// Bricks per replica set.
    pub fn set_size(self) -> usize {
        match self {
            PoolType::Replica1 => 1,
            PoolType::Replica3 => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReclaimPolicy {
    #[default]
    Delete,
    Archive,
    Retain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickConfig {
    /// Kubernetes node the brick runs on (informational for the driver).
    #[serde(default)]
    pub node: String,
    /// `host:port` of the brick's gRPC endpoint.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSetConfig {
    pub index: u32,
    pub bricks: Vec<BrickConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub version: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub pool_type: PoolType,
    #[serde(default)]
    pub pv_reclaim_policy: ReclaimPolicy,
    pub sets: Vec<ReplicaSetConfig>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolConfigError {
    #[error("pool file is {0} bytes; at most {MAX_POOL_CONFIG_BYTES} are accepted")]
    TooLarge(usize),
    #[error("pool file is not valid JSON for format version {POOL_CONFIG_VERSION}: {0}")]
    Syntax(String),
    #[error("pool file has version {0}; this build reads version {POOL_CONFIG_VERSION}")]
    Version(u32),
    #[error("pool file is invalid: {0}")]
    Invalid(String),
}

impl PoolConfig {
    /// Parses and validates a pool file.
    pub fn parse(bytes: &[u8]) -> Result<Self, PoolConfigError> {
        if bytes.len() > MAX_POOL_CONFIG_BYTES {
            return Err(PoolConfigError::TooLarge(bytes.len()));
        }
        // Read the version first so a future format gets "unknown version",
        // not a confusing field error.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned =
            serde_json::from_slice(bytes).map_err(|e| PoolConfigError::Syntax(e.to_string()))?;
        if v.version != POOL_CONFIG_VERSION {
            return Err(PoolConfigError::Version(v.version));
        }
        let cfg: PoolConfig =
            serde_json::from_slice(bytes).map_err(|e| PoolConfigError::Syntax(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Serialises the pool file (pretty, stable key order).
    pub fn to_json(&self) -> String {
        // Serialising plain structs with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what JSON's shape cannot: names, set sizes, distinct indexes.
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        let bad = |m: String| Err(PoolConfigError::Invalid(m));
        if let Err(e) = crate::pv_name::validate_pv_name(&self.name) {
            return bad(format!("pool name: {e}"));
        }
        if self.sets.is_empty() {
            return bad(format!("pool {:?} has no replica sets", self.name));
        }
        let want = self.pool_type.set_size();
        let mut seen = std::collections::BTreeSet::new();
        for set in &self.sets {
            if !seen.insert(set.index) {
                return bad(format!("replica set index {} appears twice", set.index));
            }
            if u64::from(set.index) >= 1 << (64 - crate::SET_SHIFT) {
                return bad(format!("replica set index {} is too large", set.index));
            }
            if set.bricks.len() != want {
                return bad(format!(
                    "replica set {} has {} bricks; a {:?} set has {want}",
                    set.index,
                    set.bricks.len(),
                    self.pool_type
                ));
            }
            for b in &set.bricks {
                if b.address.is_empty() || !b.address.contains(':') {
                    return bad(format!(
                        "brick address {:?} in set {} is not host:port",
                        b.address, set.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// Brick addresses of every set, set by set in index order: the `--brick`
    /// list `kadalu-mount` takes with `--set-size`.
    pub fn mount_bricks(&self) -> Vec<String> {
        let mut sets: Vec<&ReplicaSetConfig> = self.sets.iter().collect();
        sets.sort_by_key(|s| s.index);
        sets.iter()
            .flat_map(|s| s.bricks.iter().map(|b| b.address.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PoolConfig {
        PoolConfig {
            version: 1,
            name: "pool1".into(),
            pool_type: PoolType::Replica3,
            pv_reclaim_policy: ReclaimPolicy::Archive,
            sets: vec![ReplicaSetConfig {
                index: 0,
                bricks: (0..3)
                    .map(|i| BrickConfig {
                        node: format!("node{i}"),
                        address: format!("10.0.0.{i}:24007"),
                    })
                    .collect(),
            }],
            options: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trips_and_names_fields_as_documented() {
        let cfg = sample();
        let json = cfg.to_json();
        assert!(json.contains("\"type\": \"Replica3\""));
        assert!(json.contains("\"pv_reclaim_policy\": \"archive\""));
        assert_eq!(PoolConfig::parse(json.as_bytes()), Ok(cfg));
    }

    #[test]
    fn refuses_unknown_versions_and_wrong_set_sizes() {
        let mut cfg = sample();
        cfg.version = 2;
        assert_eq!(
            PoolConfig::parse(cfg.to_json().as_bytes()),
            Err(PoolConfigError::Version(2))
        );
        let mut cfg = sample();
        cfg.sets[0].bricks.pop();
        assert!(matches!(
            PoolConfig::parse(cfg.to_json().as_bytes()),
            Err(PoolConfigError::Invalid(m)) if m.contains("has 2 bricks")
        ));
        assert!(matches!(
            PoolConfig::parse(b"{\"version\":1}"),
            Err(PoolConfigError::Syntax(_))
        ));
        assert!(matches!(
            PoolConfig::parse(b"nope"),
            Err(PoolConfigError::Syntax(_))
        ));
    }
}
