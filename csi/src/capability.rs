//! Which volume capabilities the driver serves, decided without I/O: every
//! access mode on a mounted file system (a PV is a directory shared through
//! FUSE, so any number of nodes can read and write it), never a raw block
//! device, and no file-system type other than the pool's own.

use kadalu_proto::csi::volume_capability::access_mode::Mode;
use kadalu_proto::csi::volume_capability::AccessType;
use kadalu_proto::csi::VolumeCapability;

/// Why a capability is not served (for ValidateVolumeCapabilities' message
/// and INVALID_ARGUMENT errors).
pub fn unsupported(cap: &VolumeCapability) -> Option<String> {
    match &cap.access_type {
        None => return Some("volume capability has no access type (mount or block)".into()),
        Some(AccessType::Block(_)) => {
            return Some("block access is not supported: kadalu volumes are file systems".into())
        }
        Some(AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() && m.fs_type != "kadalu" && m.fs_type != "fuse.kadalu" {
                return Some(format!(
                    "fs_type {:?} is not supported; leave it empty",
                    m.fs_type
                ));
            }
            if !m.volume_mount_group.is_empty() {
                return Some("volume_mount_group is not supported".into());
            }
        }
    }
    match cap.access_mode.as_ref().map(|a| a.mode()) {
        None | Some(Mode::Unknown) => Some("volume capability has no access mode".into()),
        Some(_) => None,
    }
}

/// Whether every access mode asks for reading only.
pub fn read_only(cap: &VolumeCapability) -> bool {
    matches!(
        cap.access_mode.as_ref().map(|a| a.mode()),
        Some(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
    )
}

/// The mount flags of a capability.
pub fn mount_flags(cap: &VolumeCapability) -> Vec<String> {
    match &cap.access_type {
        Some(AccessType::Mount(m)) => m.mount_flags.clone(),
        _ => Vec::new(),
    }
}

/// Mount flags `kadalu-mount -o` accepts from a CO: plain words and
/// `key=value` options without commas or shell-unfriendly bytes. The total
/// size is bounded as the spec bounds it (4 KiB).
pub fn check_mount_flags(flags: &[String]) -> Result<(), String> {
    let total: usize = flags.iter().map(|f| f.len()).sum();
    if total > 4096 {
        return Err(format!("mount flags take {total} bytes; at most 4096"));
    }
    for f in flags {
        let ok = !f.is_empty()
            && f.chars()
                .all(|c| c.is_ascii_alphanumeric() || "=_-.:/".contains(c));
        if !ok {
            return Err(format!("mount flag {f:?} is not a plain option"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kadalu_proto::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(mode: Mode, block: bool) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume::default())
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn every_mode_on_a_mount_and_never_block() {
        for m in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            assert_eq!(unsupported(&cap(m, false)), None, "{m:?}");
            assert!(unsupported(&cap(m, true)).is_some());
        }
        assert!(unsupported(&cap(Mode::Unknown, false)).is_some());
        assert!(unsupported(&VolumeCapability::default()).is_some());
        assert!(read_only(&cap(Mode::MultiNodeReaderOnly, false)));
        assert!(!read_only(&cap(Mode::MultiNodeMultiWriter, false)));
        let mut xfs = cap(Mode::SingleNodeWriter, false);
        if let Some(AccessType::Mount(m)) = &mut xfs.access_type {
            m.fs_type = "xfs".into();
        }
        assert!(unsupported(&xfs).is_some());
    }

    #[test]
    fn mount_flags_are_plain() {
        assert!(check_mount_flags(&["noatime".into(), "max_read=4096".into()]).is_ok());
        assert!(check_mount_flags(&["a,b".into()]).is_err());
        assert!(check_mount_flags(&["x y".into()]).is_err());
        assert!(check_mount_flags(&["a".repeat(5000)]).is_err());
    }
}
