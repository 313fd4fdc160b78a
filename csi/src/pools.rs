//! The pools the driver knows, from the pool files the operator writes
//! (`kadalu_proto::pool_config`): every `*.json` in `--pools-dir`, re-read
//! every few seconds. kubelet updates a mounted ConfigMap by swapping a
//! symlink, so polling content is the dependable way to see a change. A file
//! that turns invalid keeps its last good content and the reason is logged.

use kadalu_proto::pool_config::PoolConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the pool directory is re-read.
pub const RELOAD_EVERY: Duration = Duration::from_secs(3);

#[derive(Clone, Default)]
pub struct Pools {
    inner: Arc<RwLock<BTreeMap<String, PoolConfig>>>,
}

impl Pools {
    pub fn get(&self, name: &str) -> Option<PoolConfig> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<PoolConfig> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Re-reads `dir`: valid files replace their pool, pools whose file is
    /// gone are dropped, invalid files keep what was there.
    pub fn reload(&self, dir: &Path) {
        let mut seen = BTreeMap::new();
        let mut keep = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("reading pool directory {}: {e}", dir.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let path: PathBuf = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(pool) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let bytes = match read_bounded(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("pool file {}: {e}", path.display());
                    keep.push(pool.to_string());
                    continue;
                }
            };
            match PoolConfig::parse(&bytes) {
                Ok(cfg) if cfg.name == pool => {
                    seen.insert(cfg.name.clone(), cfg);
                }
                Ok(cfg) => {
                    tracing::warn!(
                        "pool file {} describes pool {:?}; the file must be named {}.json",
                        path.display(),
                        cfg.name,
                        cfg.name
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        "pool file {}: {e}; keeping the last good one",
                        path.display()
                    );
                    keep.push(pool.to_string());
                }
            }
        }
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for k in keep {
            if let Some(old) = map.get(&k) {
                seen.entry(k).or_insert_with(|| old.clone());
            }
        }
        *map = seen;
    }

    /// Loads `dir` now and keeps reloading it in the background.
    pub fn watch(dir: PathBuf) -> Pools {
        let pools = Pools::default();
        pools.reload(&dir);
        let p = pools.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            loop {
                tick.tick().await;
                let (p2, d2) = (p.clone(), dir.clone());
                let _ = tokio::task::spawn_blocking(move || p2.reload(&d2)).await;
            }
        });
        pools
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(kadalu_proto::pool_config::MAX_POOL_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kadalu_proto::pool_config::*;

    fn pool(name: &str) -> PoolConfig {
        PoolConfig {
            version: 1,
            name: name.into(),
            pool_type: PoolType::Replica1,
            pv_reclaim_policy: ReclaimPolicy::Delete,
            sets: vec![ReplicaSetConfig {
                index: 0,
                bricks: vec![BrickConfig {
                    node: "n".into(),
                    address: "127.0.0.1:1".into(),
                }],
            }],
            options: Default::default(),
        }
    }

    #[test]
    fn reload_adds_replaces_keeps_last_good_and_drops() {
        let dir = tempfile::tempdir().unwrap();
        let pools = Pools::default();
        std::fs::write(dir.path().join("a.json"), pool("a").to_json()).unwrap();
        std::fs::write(dir.path().join("b.json"), pool("b").to_json()).unwrap();
        std::fs::write(dir.path().join("wrong.json"), pool("c").to_json()).unwrap();
        pools.reload(dir.path());
        assert_eq!(pools.all().len(), 2);
        std::fs::write(dir.path().join("a.json"), "{broken").unwrap();
        pools.reload(dir.path());
        assert_eq!(pools.get("a"), Some(pool("a")));
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        pools.reload(dir.path());
        assert!(pools.get("b").is_none());
    }
}
