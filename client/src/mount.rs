//! Setting a mount up: parsing `-o` options, finding the directory to mount (the
//! pool root or `--subdir`), and the kernel-side tuning done once the mount is live.

use crate::error::ClientError;
use crate::pool::Pool;
use fuser::MountOption;
use kadalu_proto::brick::{self, FileKind};
use kadalu_proto::{FileId, ROOT_ID};
use prost::bytes::Bytes;
use std::path::Path;

/// Parses a `-o` list (`ro,noatime,fsname=x`) into fuser mount options; names
/// fuser does not know are passed through to the kernel as they are.
pub fn parse_mount_options(list: &str) -> Vec<MountOption> {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| match o {
            "auto_unmount" => MountOption::AutoUnmount,
            "default_permissions" => MountOption::DefaultPermissions,
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "ro" => MountOption::RO,
            "rw" => MountOption::RW,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "dirsync" => MountOption::DirSync,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            o => match o.split_once('=') {
                Some(("fsname", v)) => MountOption::FSName(v.to_string()),
                Some(("subtype", v)) => MountOption::Subtype(v.to_string()),
                _ => MountOption::CUSTOM(o.to_string()),
            },
        })
        .collect()
}

/// The components of a `--subdir` path, or an error for `..` (a mount must not
/// climb out of the pool).
pub fn subdir_components(path: &str) -> Result<Vec<Bytes>, ClientError> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(ClientError::Invalid("`..` in --subdir")),
            c => out.push(Bytes::copy_from_slice(c.as_bytes())),
        }
    }
    Ok(out)
}

/// The id of the directory to mount: the pool root, or `subdir` resolved by
/// lookups from it. Also proves a brick answers before anything is mounted.
pub async fn resolve_root(pool: &Pool, subdir: Option<&str>) -> Result<FileId, ClientError> {
    for set in pool.sets() {
        let msg = brick::GetAttrRequest {
            id: ROOT_ID.to_wire(),
        };
        set.call(msg, |mut c, r| async move { c.get_attr(r).await })
            .await?;
    }
    let mut id = ROOT_ID;
    for name in subdir_components(subdir.unwrap_or(""))? {
        // Under the pool root a name may be in any set; below, in its parent's.
        let sets: Vec<usize> = match pool.spreads(id) {
            true => (0..pool.len()).collect(),
            false => vec![crate::pool::set_of(id, pool.len())?],
        };
        let mut found = None;
        for s in sets {
            let msg = brick::LookupRequest {
                parent: id.to_wire(),
                name: name.clone(),
            };
            match pool
                .set(s)
                .call(msg, |mut c, r| async move { c.lookup(r).await })
                .await
            {
                Ok(r) => {
                    found = Some(r);
                    break;
                }
                Err(e) if e.errno() == libc::ENOENT => continue,
                Err(e) => return Err(e),
            }
        }
        let reply = found.ok_or(ClientError::Fs(libc::ENOENT))?;
        let attr = crate::attr::required(reply.attr)?;
        if attr.kind != FileKind::Directory as i32 {
            return Err(ClientError::Fs(libc::ENOTDIR));
        }
        id = crate::attr::attr_id(&attr)?;
    }
    Ok(id)
}

/// Lets the kernel read ahead up to `kib` KiB on the mount at `mountpoint`, so
/// sequential reads reach the brick as large requests. The FUSE handshake caps
/// readahead at the kernel's default (128 KiB); the per-device limit in sysfs can
/// be raised afterwards. Needs root; failure only costs throughput.
pub fn raise_readahead(mountpoint: &Path, kib: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(path, kib.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_parse() {
        let o = parse_mount_options("ro, noatime,fsname=pool1,,max_read=131072");
        assert_eq!(
            o,
            vec![
                MountOption::RO,
                MountOption::NoAtime,
                MountOption::FSName("pool1".into()),
                MountOption::CUSTOM("max_read=131072".into()),
            ]
        );
        assert!(parse_mount_options("").is_empty());
    }

    #[test]
    fn subdirs_split_and_refuse_dotdot() {
        let c = subdir_components("/pvs//pv1/./data/").unwrap();
        assert_eq!(
            c,
            vec![Bytes::from("pvs"), Bytes::from("pv1"), Bytes::from("data")]
        );
        assert!(subdir_components("").unwrap().is_empty());
        assert!(subdir_components("/").unwrap().is_empty());
        assert!(subdir_components("a/../b").is_err());
    }
}
