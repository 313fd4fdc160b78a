//! Which changes to a pool's bricks are safe, as a pure function of the new spec and the
//! bricks the operator last applied (recorded in the status).
//!
//! A brick's identity is its position: entry `i` is StatefulSet `<pool>-i`, at a fixed
//! address, in replica set `i / 3` (Replica3) or `i` (Replica1). So:
//! - appending entries (whole sets for Replica3) adds bricks and is always safe;
//! - removing or reordering entries would renumber bricks and move data between sets:
//!   refused;
//! - Replica3: changing the node or the source (device, path, pvc) of an entry replaces
//!   that brick: its pod starts on empty storage at the same address and the set rebuilds
//!   it from the other two. Safe for one brick per set at a time, and only while the other
//!   two are up and have nothing left to heal: with two bricks of a set being rebuilt the
//!   set has no majority holding the data;
//! - Replica1 keeps one copy, so a changed node or source of an existing entry would start
//!   it empty and lose its data: refused.

use crate::crd::{BrickStatus, KadaluStorageSpec, StorageEntry, StorageType};
use crate::desired::set_index;

/// A change the operator refuses, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("spec.type changed from {from} to {to}; a pool's type cannot change: create a new pool and copy the data")]
    TypeChanged { from: String, to: String },
    #[error("spec.storage has {now} entries but the pool has {had} bricks; bricks cannot be removed (entry {first_missing}, brick {brick}, is gone): put the entries back")]
    Removed {
        now: usize,
        had: usize,
        first_missing: usize,
        brick: String,
    },
    #[error("spec.storage[{index}] changed ({was} -> {now}) but a Replica1 brick is the only copy of its data: restore the entry, and add storage by appending entries")]
    Replica1Changed {
        index: usize,
        was: String,
        now: String,
    },
    #[error("spec.storage[{index}] is now {label}, which is the brick of entry {other}: entries cannot be reordered (a brick's position is its identity); restore the order")]
    Reordered {
        index: usize,
        other: usize,
        label: String,
    },
    #[error("spec.storage[{a}] and spec.storage[{b}] of replica set {set} both changed; replace one brick of a set at a time and wait until the set is healed")]
    TwoInOneSet { set: u32, a: usize, b: usize },
    #[error("spec.storage[{index}] replaces a brick of replica set {set} while {other} is {why}; wait until the set is healthy (Degraded and Progressing False), then replace")]
    SetNotHealthy {
        index: usize,
        set: u32,
        other: String,
        why: &'static str,
    },
}

/// How an entry is recorded in the status (`BrickStatus::source`): node and source.
pub fn entry_label(e: &StorageEntry) -> String {
    let node = e.node.as_deref().unwrap_or("");
    let source = match (&e.device, &e.path, &e.pvc) {
        (Some(d), _, _) => format!("device:{d}"),
        (_, Some(p), _) => format!("path:{p}"),
        (_, _, Some(c)) => format!("pvc:{c}"),
        _ => String::new(),
    };
    format!("{node}/{source}")
}

/// Checks `spec` against `applied` (the status's bricks, in entry order) and the type the
/// pool had (`applied_type`, `None` before the first status).
pub fn check_change(
    spec: &KadaluStorageSpec,
    applied_type: Option<StorageType>,
    applied: &[BrickStatus],
) -> Result<(), LayoutError> {
    if let Some(t) = applied_type.filter(|t| *t != spec.pool_type) {
        return Err(LayoutError::TypeChanged {
            from: format!("{t:?}"),
            to: format!("{:?}", spec.pool_type),
        });
    }
    if spec.storage.len() < applied.len() {
        let i = spec.storage.len();
        return Err(LayoutError::Removed {
            now: spec.storage.len(),
            had: applied.len(),
            first_missing: i,
            brick: applied[i].name.clone(),
        });
    }
    let mut changed_in_set: std::collections::BTreeMap<u32, usize> = Default::default();
    for (i, (entry, was)) in spec.storage.iter().zip(applied).enumerate() {
        // Statuses written before the source was recorded cannot be compared.
        if was.source.is_empty() {
            continue;
        }
        let now = entry_label(entry);
        if now == was.source {
            continue;
        }
        if let Some(other) = applied.iter().position(|b| b.source == now) {
            return Err(LayoutError::Reordered {
                index: i,
                other,
                label: now,
            });
        }
        if spec.pool_type == StorageType::Replica1 {
            return Err(LayoutError::Replica1Changed {
                index: i,
                was: was.source.clone(),
                now,
            });
        }
        let set = set_index(spec.pool_type, i);
        if let Some(a) = changed_in_set.insert(set, i) {
            return Err(LayoutError::TwoInOneSet { set, a, b: i });
        }
        for (j, other) in applied.iter().enumerate() {
            if j == i || set_index(spec.pool_type, j) != set {
                continue;
            }
            let why = if other.state != "Up" {
                "not answering"
            } else if other.heal_pending_entries > 0 {
                "still healing"
            } else {
                continue;
            };
            return Err(LayoutError::SetNotHealthy {
                index: i,
                set,
                other: other.name.clone(),
                why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::{at as entry, spec};
    use proptest::prelude::*;

    /// The status the operator writes for `s` with every brick up and healed.
    fn applied(s: &KadaluStorageSpec) -> Vec<BrickStatus> {
        s.storage
            .iter()
            .enumerate()
            .map(|(i, e)| BrickStatus {
                name: format!("p-{i}-0"),
                node: e.node.clone().unwrap_or_default(),
                set_index: set_index(s.pool_type, i),
                state: "Up".into(),
                source: entry_label(e),
                ..Default::default()
            })
            .collect()
    }

    fn r3(n: usize) -> KadaluStorageSpec {
        spec(
            StorageType::Replica3,
            (0..n).map(|i| entry(&format!("n{i}"), "/data")).collect(),
        )
    }

    #[test]
    fn replacing_one_brick_of_a_healthy_set_is_allowed() {
        let old = r3(6);
        let mut new = old.clone();
        new.storage[4] = StorageEntry {
            node: Some("n4".into()),
            device: Some("/dev/sdc".into()),
            ..Default::default()
        };
        assert_eq!(
            check_change(&new, Some(old.pool_type), &applied(&old)),
            Ok(())
        );
        // A move to another node is a replacement too: same address, new pod.
        let mut moved = old.clone();
        moved.storage[0].node = Some("n9".into());
        assert_eq!(
            check_change(&moved, Some(old.pool_type), &applied(&old)),
            Ok(())
        );
        // One brick in each of two sets at once is fine: each set keeps a majority.
        let mut two_sets = old.clone();
        two_sets.storage[0].path = Some("/new".into());
        two_sets.storage[3].path = Some("/new".into());
        assert_eq!(
            check_change(&two_sets, Some(old.pool_type), &applied(&old)),
            Ok(())
        );
    }

    #[test]
    fn two_bricks_of_one_set_or_an_unhealthy_set_are_refused() {
        let old = r3(3);
        let mut new = old.clone();
        new.storage[0].path = Some("/a".into());
        new.storage[2].path = Some("/b".into());
        let e = check_change(&new, Some(old.pool_type), &applied(&old)).unwrap_err();
        assert_eq!(e, LayoutError::TwoInOneSet { set: 0, a: 0, b: 2 });
        assert!(e.to_string().contains("one brick of a set at a time"));

        let mut one = old.clone();
        one.storage[1].path = Some("/a".into());
        let mut st = applied(&old);
        st[2].state = "Down".into();
        let e = check_change(&one, Some(old.pool_type), &st).unwrap_err();
        assert!(
            matches!(
                e,
                LayoutError::SetNotHealthy {
                    why: "not answering",
                    ..
                }
            ),
            "{e}"
        );
        let mut st = applied(&old);
        st[0].heal_pending_entries = 12;
        let e = check_change(&one, Some(old.pool_type), &st).unwrap_err();
        assert!(
            matches!(
                e,
                LayoutError::SetNotHealthy {
                    why: "still healing",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn replica1_entries_cannot_change_and_types_cannot_change() {
        let old = spec(
            StorageType::Replica1,
            vec![entry("a", "/x"), entry("b", "/y")],
        );
        let mut new = old.clone();
        new.storage[1].node = Some("c".into());
        let e = check_change(&new, Some(old.pool_type), &applied(&old)).unwrap_err();
        assert!(
            matches!(e, LayoutError::Replica1Changed { index: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("b/path:/y -> c/path:/y"), "{e}");

        let as_r3 = spec(
            StorageType::Replica3,
            vec![entry("a", "/x"), entry("b", "/y"), entry("c", "/z")],
        );
        let e = check_change(&as_r3, Some(StorageType::Replica1), &applied(&old)).unwrap_err();
        assert!(matches!(e, LayoutError::TypeChanged { .. }), "{e}");
    }

    #[test]
    fn swapped_entries_are_a_reorder_not_two_replacements() {
        let old = r3(6);
        let mut new = old.clone();
        new.storage.swap(0, 3);
        let e = check_change(&new, Some(old.pool_type), &applied(&old)).unwrap_err();
        assert_eq!(
            e,
            LayoutError::Reordered {
                index: 0,
                other: 3,
                label: "n3/path:/data".into()
            }
        );
    }

    #[test]
    fn old_statuses_without_sources_only_guard_removal() {
        let old = r3(3);
        let mut st = applied(&old);
        for b in &mut st {
            b.source.clear();
        }
        let mut new = old.clone();
        new.storage[0].path = Some("/a".into());
        new.storage[1].path = Some("/b".into());
        assert_eq!(check_change(&new, Some(old.pool_type), &st), Ok(()));
        assert!(check_change(&r3(0), Some(old.pool_type), &st).is_err());
    }

    proptest! {
        /// Appending any number of whole sets to any pool is accepted.
        #[test]
        fn appending_is_always_accepted(sets in 1usize..5, more in 0usize..5, r1 in any::<bool>()) {
            let size = if r1 { 1 } else { 3 };
            let t = if r1 { StorageType::Replica1 } else { StorageType::Replica3 };
            let old = spec(t, (0..sets * size).map(|i| entry(&format!("n{i}"), "/d")).collect());
            let mut new = old.clone();
            new.storage.extend((0..more * size).map(|i| entry(&format!("m{i}"), "/e")));
            prop_assert_eq!(check_change(&new, Some(t), &applied(&old)), Ok(()));
        }

        /// Dropping any entries is refused, naming the first brick that went.
        #[test]
        fn removal_is_always_refused(n in 1usize..12, keep in 0usize..12) {
            prop_assume!(keep < n);
            let old = spec(StorageType::Replica1, (0..n).map(|i| entry(&format!("n{i}"), "/d")).collect());
            let mut new = old.clone();
            new.storage.truncate(keep);
            let e = check_change(&new, Some(old.pool_type), &applied(&old)).unwrap_err();
            let expected = format!("p-{keep}-0");
            let named = matches!(e, LayoutError::Removed { ref brick, .. } if *brick == expected);
            prop_assert!(named, "{}", e);
        }
    }
}
