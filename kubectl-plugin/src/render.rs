//! Turning pools, bricks and PVs into what the user reads: health from conditions, sizes in
//! binary units, aligned tables, and serialisable summaries for `-o json|yaml`.

use serde::Serialize;

use crate::exit::{Error, Result};
use crate::pool::{storage_class_of, KadaluStorage};

/// A plain aligned table; the last column is not padded so long messages do not leave
/// trailing blanks.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut width = vec![0usize; n];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                if i + 1 == n {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{c:<w$}  ", w = width[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Sizes as `kubectl` users read them: binary units, one decimal.
pub fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else {
        return "-".to_string();
    };
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

/// One word for a pool's state, from its conditions. A status older than the spec (the
/// operator has not seen the latest change) is shown as such rather than as healthy.
pub fn health(pool: &KadaluStorage) -> String {
    let Some(status) = &pool.status else {
        return "Pending".to_string();
    };
    let is_true = |t: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    let word = if is_true("Degraded") {
        "Degraded"
    } else if is_true("Progressing") {
        "Progressing"
    } else if is_true("Ready") {
        "Ready"
    } else if status.conditions.iter().any(|c| c.type_ == "Ready") {
        "NotReady"
    } else {
        "Unknown"
    };
    match (pool.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) if o < g => format!("{word} (updating)"),
        _ => word.to_string(),
    }
}

/// A PV of some pool, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PvInfo {
    pub name: String,
    pub storage_class: String,
    pub capacity: Option<String>,
    pub phase: Option<String>,
    pub claim: Option<String>,
}

pub fn pv_info(pv: &k8s_openapi::api::core::v1::PersistentVolume) -> PvInfo {
    let spec = pv.spec.as_ref();
    PvInfo {
        name: pv.metadata.name.clone().unwrap_or_default(),
        storage_class: spec
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default(),
        capacity: spec
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        phase: pv.status.as_ref().and_then(|s| s.phase.clone()),
        claim: spec.and_then(|s| s.claim_ref.as_ref()).map(|c| {
            format!(
                "{}/{}",
                c.namespace.as_deref().unwrap_or(""),
                c.name.as_deref().unwrap_or("")
            )
        }),
    }
}

/// PVs that belong to `pool` by StorageClass.
pub fn pvs_of<'a>(pool: &str, pvs: &'a [PvInfo]) -> Vec<&'a PvInfo> {
    let sc = storage_class_of(pool);
    pvs.iter().filter(|p| p.storage_class == sc).collect()
}

/// What `storage-list -o json|yaml` prints per pool.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSummary<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub pool_type: &'a str,
    pub health: String,
    pub bricks: usize,
    pub capacity_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    pub pv_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<&'a [crate::pool::Condition]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brick_status: Option<&'a [crate::pool::BrickStatus]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volumes: Option<Vec<&'a PvInfo>>,
}

pub fn summary<'a>(
    pool: &'a KadaluStorage,
    pvs: &'a [PvInfo],
    detail: bool,
    with_status: bool,
) -> PoolSummary<'a> {
    let st = pool.status.as_ref();
    let own = pvs_of(pool.name(), pvs);
    PoolSummary {
        name: pool.name(),
        pool_type: &pool.spec.pool_type,
        health: health(pool),
        bricks: pool.spec.storage.len(),
        capacity_bytes: st.and_then(|s| s.capacity_bytes),
        used_bytes: st.and_then(|s| s.used_bytes),
        pv_count: own.len(),
        conditions: with_status.then(|| st.map(|s| s.conditions.as_slice()).unwrap_or(&[])),
        brick_status: detail.then(|| st.map(|s| s.bricks.as_slice()).unwrap_or(&[])),
        persistent_volumes: detail.then_some(own),
    }
}

/// The storage-list table(s).
pub fn pools_table(pools: &[KadaluStorage], pvs: &[PvInfo], detail: bool, status: bool) -> String {
    let mut t = Table::new(&[
        "NAME", "TYPE", "HEALTH", "BRICKS", "CAPACITY", "USED", "PVS",
    ]);
    for p in pools {
        let s = summary(p, pvs, false, false);
        t.row(vec![
            s.name.to_string(),
            s.pool_type.to_string(),
            s.health,
            s.bricks.to_string(),
            bytes(s.capacity_bytes),
            bytes(s.used_bytes),
            s.pv_count.to_string(),
        ]);
    }
    if pools.is_empty() {
        return "No storage pools found.\n".to_string();
    }
    let mut out = t.render();
    for p in pools.iter().filter(|_| detail || status) {
        out.push_str(&format!("\nPool {}:\n", p.name()));
        let st = p.status.clone().unwrap_or_default();
        if status {
            let mut c = Table::new(&["CONDITION", "STATUS", "REASON", "MESSAGE"]);
            for cond in &st.conditions {
                c.row(vec![
                    cond.type_.clone(),
                    cond.status.clone(),
                    opt(cond.reason.clone()),
                    opt(cond.message.clone()),
                ]);
            }
            out.push_str(&if c.is_empty() {
                "  no conditions reported yet\n".to_string()
            } else {
                c.render()
            });
        }
        if detail {
            let mut b = Table::new(&[
                "BRICK",
                "NODE",
                "SET",
                "STATE",
                "CAPACITY",
                "USED",
                "HEAL-PENDING",
            ]);
            for br in &st.bricks {
                b.row(vec![
                    br.name.clone(),
                    opt(br.node.clone()),
                    opt(br.set_index),
                    opt(br.state.clone()),
                    bytes(br.capacity_bytes),
                    bytes(br.used_bytes),
                    opt(br.heal_pending_entries),
                ]);
            }
            out.push_str(&if b.is_empty() {
                "  no brick status reported yet\n".to_string()
            } else {
                b.render()
            });
            let own = pvs_of(p.name(), pvs);
            let mut v = Table::new(&["PV", "CAPACITY", "PHASE", "CLAIM"]);
            for pv in own {
                v.row(vec![
                    pv.name.clone(),
                    opt(pv.capacity.clone()),
                    opt(pv.phase.clone()),
                    opt(pv.claim.clone()),
                ]);
            }
            out.push_str(&if v.is_empty() {
                "  no persistent volumes\n".to_string()
            } else {
                v.render()
            });
        }
    }
    out
}

/// Heal backlog rows for healinfo.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealRow {
    pub pool: String,
    pub brick: String,
    pub node: Option<String>,
    pub set_index: Option<u32>,
    pub heal_pending_entries: Option<u64>,
}

pub fn heal_rows(pools: &[KadaluStorage]) -> Vec<HealRow> {
    pools
        .iter()
        .flat_map(|p| {
            let bricks = p
                .status
                .as_ref()
                .map(|s| s.bricks.clone())
                .unwrap_or_default();
            bricks.into_iter().map(move |b| HealRow {
                pool: p.name().to_string(),
                brick: b.name,
                node: b.node,
                set_index: b.set_index,
                heal_pending_entries: b.heal_pending_entries,
            })
        })
        .collect()
}

pub fn heal_table(rows: &[HealRow]) -> String {
    if rows.is_empty() {
        return "No bricks reported yet.\n".to_string();
    }
    let mut t = Table::new(&["POOL", "BRICK", "NODE", "SET", "HEAL-PENDING"]);
    for r in rows {
        t.row(vec![
            r.pool.clone(),
            r.brick.clone(),
            opt(r.node.clone()),
            opt(r.set_index),
            opt(r.heal_pending_entries),
        ]);
    }
    t.render()
}

pub fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Error::Encode(format!("encoding JSON: {e}")))
}

pub fn to_yaml<T: Serialize>(v: &T) -> Result<String> {
    serde_saphyr::to_string(v).map_err(|e| Error::Encode(format!("encoding YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Condition, KadaluStorageStatus};

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(None), "-");
        assert_eq!(bytes(Some(512)), "512 B");
        assert_eq!(bytes(Some(1536)), "1.5 KiB");
        assert_eq!(bytes(Some(3 << 30)), "3.0 GiB");
    }

    #[test]
    fn health_follows_conditions_and_generation() {
        let mut p = KadaluStorage::new("p", "kadalu", Default::default());
        assert_eq!(health(&p), "Pending");
        let cond = |t: &str, s: &str| Condition {
            type_: t.into(),
            status: s.into(),
            ..Condition::default()
        };
        p.status = Some(KadaluStorageStatus {
            conditions: vec![cond("Ready", "True"), cond("Degraded", "False")],
            observed_generation: Some(1),
            ..KadaluStorageStatus::default()
        });
        p.metadata.generation = Some(1);
        assert_eq!(health(&p), "Ready");
        p.metadata.generation = Some(2);
        assert_eq!(health(&p), "Ready (updating)");
        if let Some(s) = p.status.as_mut() {
            s.conditions = vec![cond("Ready", "False"), cond("Degraded", "True")];
        }
        assert_eq!(health(&p), "Degraded (updating)");
    }
}
