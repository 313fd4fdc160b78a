//! Pure checks of what the user typed: storage entries, pool names, option pairs, and the
//! `KadaluStorage` object storage-add builds from them. Nothing here talks to the cluster, so
//! a bad command line fails before anything is sent.

use std::collections::{BTreeMap, HashSet};

use crate::cli::{PoolType, StorageAddArgs};
use crate::exit::{Error, Result};
use crate::pool::{KadaluStorage, KadaluStorageSpec, StorageEntry};

/// Which flag an entry came from; keeps messages in the user's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Device,
    Path,
    Pvc,
}

impl EntryKind {
    fn flag(self) -> &'static str {
        match self {
            EntryKind::Device => "--device",
            EntryKind::Path => "--path",
            EntryKind::Pvc => "--pvc",
        }
    }
}

/// A pool name becomes part of object names (`kadalu.NAME`, pod names), so it must be a
/// DNS-1123 label.
pub fn check_pool_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    // Leaves room for the operator's suffixes on server pod names.
    if name.is_empty() || name.len() > 40 || !ok_chars || !ok_ends {
        return Err(Error::Invalid(format!(
            "invalid pool name {name:?}: use 1-40 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Parses one `NODE:VALUE` (device, path) or `NAME` (pvc) argument.
pub fn parse_entry(kind: EntryKind, raw: &str) -> Result<StorageEntry> {
    if kind == EntryKind::Pvc {
        if raw.is_empty() || raw.contains(':') || raw.contains('/') {
            return Err(Error::Invalid(format!(
                "--pvc {raw:?}: give the name of a PVC in the kadalu namespace (no node, no path)"
            )));
        }
        return Ok(StorageEntry {
            pvc: Some(raw.to_string()),
            ..StorageEntry::default()
        });
    }
    let flag = kind.flag();
    let Some((node, value)) = raw.split_once(':') else {
        return Err(Error::Invalid(format!(
            "{flag} {raw:?}: expected NODE:{}, e.g. node1:{}",
            if kind == EntryKind::Device {
                "DEVICE"
            } else {
                "DIR"
            },
            if kind == EntryKind::Device {
                "/dev/vdc"
            } else {
                "/exports/pool1"
            }
        )));
    };
    if node.is_empty() {
        return Err(Error::Invalid(format!(
            "{flag} {raw:?}: the node name before ':' is empty"
        )));
    }
    if !value.starts_with('/') {
        return Err(Error::Invalid(format!(
            "{flag} {raw:?}: {value:?} must be an absolute path (starting with '/')"
        )));
    }
    let value = value.trim_end_matches('/');
    if value.is_empty() {
        return Err(Error::Invalid(format!(
            "{flag} {raw:?}: '/' itself cannot be a brick"
        )));
    }
    let mut e = StorageEntry {
        node: Some(node.to_string()),
        ..StorageEntry::default()
    };
    if kind == EntryKind::Device {
        e.device = Some(value.to_string());
    } else {
        e.path = Some(value.to_string());
    }
    Ok(e)
}

/// Human form of an entry for messages, in the flag syntax.
pub fn describe_entry(e: &StorageEntry) -> String {
    match (&e.node, &e.device, &e.path, &e.pvc) {
        (Some(n), Some(d), _, _) => format!("--device {n}:{d}"),
        (Some(n), None, Some(p), _) => format!("--path {n}:{p}"),
        (_, _, _, Some(p)) => format!("--pvc {p}"),
        _ => "(empty entry)".to_string(),
    }
}

/// Parses and checks every entry: count fits the type, no entry twice.
pub fn check_entries(
    pool_type: PoolType,
    raw: &[(EntryKind, String)],
) -> Result<Vec<StorageEntry>> {
    let entries = raw
        .iter()
        .map(|(k, s)| parse_entry(*k, s))
        .collect::<Result<Vec<_>>>()?;
    if entries.is_empty() {
        return Err(Error::Invalid(
            "no storage given: add at least one --device NODE:DEVICE, --path NODE:DIR or --pvc NAME"
                .to_string(),
        ));
    }
    let set = pool_type.set_size();
    if entries.len() % set != 0 {
        return Err(Error::Invalid(format!(
            "{} needs a multiple of {set} storage entries (each {set} form one replica set); got {}",
            pool_type.as_str(),
            entries.len()
        )));
    }
    let mut seen = HashSet::new();
    for e in &entries {
        // A device or directory is one brick however it is spelled with trailing slashes;
        // parse_entry already normalised those.
        if !seen.insert(e.clone()) {
            return Err(Error::Invalid(format!(
                "{} is given twice: every brick needs its own device, directory or PVC",
                describe_entry(e)
            )));
        }
    }
    Ok(entries)
}

/// Nodes the entries name that are not in the cluster's node list.
pub fn check_nodes_exist(entries: &[StorageEntry], cluster_nodes: &[String]) -> Result<()> {
    let known: HashSet<&str> = cluster_nodes.iter().map(String::as_str).collect();
    let mut missing: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.node.as_deref())
        .filter(|n| !known.contains(n))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = known.into_iter().collect();
    names.sort_unstable();
    Err(Error::Invalid(format!(
        "no such node: {}; nodes in the cluster: {}",
        missing.join(", "),
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        }
    )))
}

/// The object storage-add creates (or prints with --dry-run).
pub fn build_storage(
    args: &StorageAddArgs,
    raw: &[(EntryKind, String)],
    namespace: &str,
) -> Result<KadaluStorage> {
    check_pool_name(&args.name)?;
    let storage = check_entries(args.pool_type, raw)?;
    Ok(KadaluStorage::new(
        &args.name,
        namespace,
        KadaluStorageSpec {
            pool_type: args.pool_type.as_str().to_string(),
            storage,
            pv_reclaim_policy: Some(args.pv_reclaim_policy.as_str().to_string()),
            tolerations: None,
            options: None,
        },
    ))
}

/// The entries in the order they were typed, when the caller knows it; otherwise devices,
/// then paths, then PVCs.
pub fn entries_of(args: &StorageAddArgs) -> Vec<(EntryKind, String)> {
    if let Some(order) = &args.order {
        return order.clone();
    }
    let d = args.device.iter().map(|s| (EntryKind::Device, s.clone()));
    let p = args.path.iter().map(|s| (EntryKind::Path, s.clone()));
    let c = args.pvc.iter().map(|s| (EntryKind::Pvc, s.clone()));
    d.chain(p).chain(c).collect()
}

/// KEY VALUE pairs of option-set.
pub fn option_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    if !pairs.len().is_multiple_of(2) {
        return Err(Error::Invalid(format!(
            "option-set takes KEY VALUE pairs; {:?} has no value",
            pairs.last().map(String::as_str).unwrap_or("")
        )));
    }
    let mut out = BTreeMap::new();
    for kv in pairs.chunks(2) {
        let (k, v) = (&kv[0], &kv[1]);
        check_option_key(k)?;
        if out.insert(k.clone(), v.clone()).is_some() {
            return Err(Error::Invalid(format!("option {k:?} is given twice")));
        }
    }
    Ok(out)
}

pub fn check_option_key(k: &str) -> Result<()> {
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(Error::Invalid(format!(
            "invalid option key {k:?}: use letters, digits, '.', '-' and '_'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ReclaimPolicy;

    fn raw(v: &[(EntryKind, &str)]) -> Vec<(EntryKind, String)> {
        v.iter().map(|(k, s)| (*k, s.to_string())).collect()
    }

    #[test]
    fn replica_counts_are_enforced() {
        use EntryKind::*;
        assert!(check_entries(PoolType::Replica1, &[]).is_err());
        assert_eq!(
            check_entries(PoolType::Replica1, &raw(&[(Pvc, "a")]))
                .unwrap()
                .len(),
            1
        );
        let two = raw(&[(Device, "n1:/dev/a"), (Device, "n2:/dev/a")]);
        let e = check_entries(PoolType::Replica3, &two).unwrap_err();
        assert!(e.to_string().contains("multiple of 3"), "{e}");
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        let six: Vec<_> = (1..=6).map(|i| (Path, format!("n{i}:/d"))).collect();
        assert_eq!(check_entries(PoolType::Replica3, &six).unwrap().len(), 6);
    }

    #[test]
    fn duplicates_and_malformed_entries_are_rejected() {
        use EntryKind::*;
        let dup = raw(&[(Path, "n1:/d"), (Path, "n1:/d/")]);
        let e = check_entries(PoolType::Replica1, &dup).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        for (k, s) in [
            (Device, "n1"),
            (Device, ":/dev/a"),
            (Path, "n1:rel"),
            (Path, "n1:/"),
            (Pvc, "n1:x"),
        ] {
            assert!(parse_entry(k, s).is_err(), "{s}");
        }
        assert!(check_pool_name("Pool_1").is_err());
        assert!(check_pool_name("-p").is_err());
        assert!(check_pool_name("pool-1").is_ok());
    }

    #[test]
    fn unknown_nodes_are_named() {
        let e = parse_entry(EntryKind::Device, "ghost:/dev/a").unwrap();
        let err = check_nodes_exist(std::slice::from_ref(&e), &["n1".into()]).unwrap_err();
        assert!(
            err.to_string().contains("ghost") && err.to_string().contains("n1"),
            "{err}"
        );
        assert!(check_nodes_exist(&[e], &["ghost".into()]).is_ok());
    }

    #[test]
    fn option_pairs_need_values() {
        assert!(option_pairs(&["a".into(), "1".into(), "b".into()]).is_err());
        assert!(option_pairs(&["a".into(), "1".into(), "a".into(), "2".into()]).is_err());
        let m = option_pairs(&["a.b".into(), "1".into()]).unwrap();
        assert_eq!(m.get("a.b").map(String::as_str), Some("1"));
    }

    #[test]
    fn storage_add_object_golden_yaml() {
        let args = StorageAddArgs {
            name: "pool1".into(),
            pool_type: PoolType::Replica3,
            device: vec![],
            path: vec![],
            pvc: vec![],
            pv_reclaim_policy: ReclaimPolicy::Retain,
            dry_run: true,
            order: None,
        };
        let entries = raw(&[
            (EntryKind::Device, "n1:/dev/vdc"),
            (EntryKind::Path, "n2:/exports/p1/"),
            (EntryKind::Pvc, "pvc3"),
        ]);
        let obj = build_storage(&args, &entries, "kadalu").unwrap();
        let yaml = crate::render::to_yaml(&obj).unwrap();
        let golden = "\
apiVersion: kadalu-operator.storage/v1alpha1
kind: KadaluStorage
metadata:
  name: pool1
  namespace: kadalu
spec:
  type: Replica3
  storage:
  - node: n1
    device: /dev/vdc
  - node: n2
    path: /exports/p1
  - pvc: pvc3
  pvReclaimPolicy: retain
";
        assert_eq!(yaml, golden);
    }
}
