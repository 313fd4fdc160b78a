//! Volume ids and PV names: pure mapping between what the CO names a volume
//! and where it lives. A volume id is `<pool>/<pv>`: self-describing (the
//! pool to find, the PV directory in it) and stable, since both parts are
//! fixed at creation.

use kadalu_proto::pv_name::{validate_pv_name, MAX_PV_NAME_LEN};
use sha2::{Digest, Sha256};

/// A volume's place: its pool and its PV.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VolumeRef {
    pub pool: String,
    pub pv: String,
}

impl VolumeRef {
    pub fn id(&self) -> String {
        format!("{}/{}", self.pool, self.pv)
    }

    /// Parses a volume id; `None` when it is not one this driver made (the
    /// caller answers NOT_FOUND, or OK for a delete).
    pub fn parse(id: &str) -> Option<VolumeRef> {
        let (pool, pv) = id.split_once('/')?;
        validate_pv_name(pool).ok()?;
        validate_pv_name(pv).ok()?;
        Some(VolumeRef {
            pool: pool.to_string(),
            pv: pv.to_string(),
        })
    }
}

/// The PV name for a CreateVolume `name`: the name itself when it is already
/// a valid PV name (Kubernetes' `pvc-<uuid>` is), else a readable prefix plus
/// a hash of the whole name, so every name maps to one PV and no two
/// different names share one (short of a sha256 collision).
pub fn pv_name_for(name: &str) -> String {
    if validate_pv_name(name).is_ok() {
        return name.to_string();
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..16]);
    let mut prefix: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    prefix = prefix.trim_matches('-').to_string();
    if prefix.starts_with(kadalu_proto::pv_name::ARCHIVE_PREFIX.trim_end_matches('-')) {
        prefix.insert_str(0, "pv-");
    }
    let out = if prefix.is_empty() {
        format!("pv-{hash}")
    } else {
        format!("{prefix}-{hash}")
    };
    debug_assert!(out.len() <= MAX_PV_NAME_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_round_trip_and_junk_is_refused() {
        let v = VolumeRef {
            pool: "pool1".into(),
            pv: "pvc-123".into(),
        };
        assert_eq!(v.id(), "pool1/pvc-123");
        assert_eq!(VolumeRef::parse("pool1/pvc-123"), Some(v));
        for bad in ["", "pool1", "/x", "pool1/", "a/b/c", "A/b", "a/../b"] {
            assert_eq!(VolumeRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn kubernetes_names_are_kept() {
        assert_eq!(
            pv_name_for("pvc-0b6f1c2e-1234-4bcd-9aaa-000000000000"),
            "pvc-0b6f1c2e-1234-4bcd-9aaa-000000000000"
        );
        let odd = pv_name_for("My Volume/../x");
        assert!(validate_pv_name(&odd).is_ok(), "{odd}");
        assert_ne!(pv_name_for("My Volume"), pv_name_for("my volume"));
    }

    proptest! {
        #[test]
        fn every_name_maps_to_a_valid_pv_name(name in "\\PC{1,300}") {
            let pv = pv_name_for(&name);
            prop_assert!(validate_pv_name(&pv).is_ok(), "{}", pv);
            prop_assert_eq!(pv_name_for(&name), pv);
        }
    }
}
