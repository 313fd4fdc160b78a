//! Reading the kernel's mount table and unmounting, for the node and the
//! mounter: which paths are mount points, and whether a FUSE mount's daemon
//! is gone (its mount answers ENOTCONN).

use std::path::Path;

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points listed in a mountinfo text.
pub fn mount_points(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Whether `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mount_points(&text).iter().any(|m| *m == want)
}

/// Whether `path` is a mount whose file system no longer answers (a FUSE
/// daemon that died: ENOTCONN), which only a (lazy) unmount clears.
pub fn is_dead(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Unmounts `path`, lazily when a plain unmount fails (busy or dead).
pub fn unmount(path: &Path) -> std::io::Result<()> {
    use nix::mount::{umount2, MntFlags};
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) if !is_mounted(path) => Ok(()),
        Err(_) => umount2(path, MntFlags::MNT_DETACH).map_err(std::io::Error::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_points_with_escapes() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(mount_points(text), vec!["/mnt/a b", "/proc"]);
        assert_eq!(unescape("x\\134y"), "x\\y");
        assert_eq!(unescape("trail\\"), "trail\\");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/definitely/not/here")));
    }
}
