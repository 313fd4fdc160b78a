//! Validation of the names that arrive off the wire. A name is one path
//! component; anything that could make the brick resolve something other than
//! one entry of one directory is refused here, with the errno Linux gives for
//! the same request on a local file system.

use crate::error::{FsError, FsResult};
use kadalu_proto::{MAX_NAME_LEN, MAX_PATH_LEN};

/// What the request does with the name; decides the errno for "." and "..".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameUse {
    /// Looked up: "." and ".." resolve to the directory and its parent.
    Lookup,
    /// open(O_CREAT): Linux answers EISDIR for "." and "..".
    CreateFile,
    /// mkdir, mknod, symlink, link: Linux answers EEXIST.
    MakeEntry,
    /// unlink: Linux answers EISDIR.
    Unlink,
    /// rmdir: "." is EINVAL, ".." is ENOTEMPTY.
    Rmdir,
    /// Source of a rename: EBUSY.
    RenameFrom,
    /// Target of a rename: EBUSY, or EEXIST under RENAME_NOREPLACE.
    RenameTo { noreplace: bool },
}

/// A checked name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name<'a> {
    /// "." (only for lookups).
    Dot,
    /// ".." (only for lookups).
    DotDot,
    /// An ordinary entry name.
    Entry(&'a [u8]),
}

/// Checks a name for the given use.
pub fn check_name(name: &[u8], usage: NameUse) -> FsResult<Name<'_>> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Os(libc::EINVAL));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::Os(libc::ENAMETOOLONG));
    }
    let special = match name {
        b"." => Name::Dot,
        b".." => Name::DotDot,
        _ => return Ok(Name::Entry(name)),
    };
    let errno = match (usage, special) {
        (NameUse::Lookup, _) => return Ok(special),
        (NameUse::CreateFile, _) | (NameUse::Unlink, _) => libc::EISDIR,
        (NameUse::MakeEntry, _) => libc::EEXIST,
        (NameUse::Rmdir, Name::Dot) => libc::EINVAL,
        (NameUse::Rmdir, _) => libc::ENOTEMPTY,
        (NameUse::RenameFrom, _) => libc::EBUSY,
        (NameUse::RenameTo { noreplace: true }, _) => libc::EEXIST,
        (NameUse::RenameTo { noreplace: false }, _) => libc::EBUSY,
    };
    Err(FsError::Os(errno))
}

/// Checks a name that must be an ordinary entry (every use but lookup).
pub fn entry_name(name: &[u8], usage: NameUse) -> FsResult<&[u8]> {
    match check_name(name, usage)? {
        Name::Entry(n) => Ok(n),
        // check_name only lets "." and ".." through for lookups.
        Name::Dot | Name::DotDot => Err(FsError::Os(libc::EINVAL)),
    }
}

/// Checks a symlink target: Linux refuses an empty one (ENOENT) and one that
/// does not fit PATH_MAX with its terminating NUL (ENAMETOOLONG).
pub fn check_symlink_target(target: &[u8]) -> FsResult<()> {
    if target.is_empty() {
        return Err(FsError::Os(libc::ENOENT));
    }
    if target.len() >= MAX_PATH_LEN {
        return Err(FsError::Os(libc::ENAMETOOLONG));
    }
    if target.contains(&0) {
        return Err(FsError::Os(libc::EINVAL));
    }
    Ok(())
}

/// Checks an extended attribute name as setxattr(2) does: the namespaces Linux
/// knows, at most XATTR_NAME_MAX bytes.
pub fn check_xattr_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name.len() > kadalu_proto::MAX_XATTR_NAME {
        return Err(FsError::Os(libc::ERANGE));
    }
    if name.contains(&0) {
        return Err(FsError::Os(libc::EINVAL));
    }
    const NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];
    match NAMESPACES.iter().find(|ns| name.starts_with(ns)) {
        // A bare "user." has an empty name within its namespace.
        Some(ns) if name.len() == ns.len() => Err(FsError::Os(libc::EINVAL)),
        Some(_) => Ok(()),
        None => Err(FsError::Os(libc::EOPNOTSUPP)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn errno(r: FsResult<Name<'_>>) -> i32 {
        r.map(|_| 0).unwrap_or_else(|e| e.errno())
    }

    #[test]
    fn dots_get_linux_errnos() {
        assert_eq!(check_name(b".", NameUse::Lookup).unwrap(), Name::Dot);
        assert_eq!(check_name(b"..", NameUse::Lookup).unwrap(), Name::DotDot);
        assert_eq!(errno(check_name(b".", NameUse::MakeEntry)), libc::EEXIST);
        assert_eq!(errno(check_name(b"..", NameUse::MakeEntry)), libc::EEXIST);
        assert_eq!(errno(check_name(b".", NameUse::CreateFile)), libc::EISDIR);
        assert_eq!(errno(check_name(b".", NameUse::Unlink)), libc::EISDIR);
        assert_eq!(errno(check_name(b".", NameUse::Rmdir)), libc::EINVAL);
        assert_eq!(errno(check_name(b"..", NameUse::Rmdir)), libc::ENOTEMPTY);
        assert_eq!(errno(check_name(b"..", NameUse::RenameFrom)), libc::EBUSY);
        let to = |noreplace| NameUse::RenameTo { noreplace };
        assert_eq!(errno(check_name(b".", to(false))), libc::EBUSY);
        assert_eq!(errno(check_name(b".", to(true))), libc::EEXIST);
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [&b""[..], b"a/b", b"/", b"a\0b", b"../x"] {
            assert_eq!(errno(check_name(bad, NameUse::Lookup)), libc::EINVAL);
        }
        assert_eq!(
            errno(check_name(&[b'a'; 256], NameUse::Lookup)),
            libc::ENAMETOOLONG
        );
        assert_eq!(errno(check_name(&[b'a'; 255], NameUse::MakeEntry)), 0);
        assert_eq!(errno(check_name(b"...", NameUse::MakeEntry)), 0);
    }

    #[test]
    fn symlink_targets() {
        assert_eq!(check_symlink_target(b"").unwrap_err().errno(), libc::ENOENT);
        assert!(check_symlink_target(&[b'a'; 4095]).is_ok());
        let long = check_symlink_target(&[b'a'; 4096]).unwrap_err();
        assert_eq!(long.errno(), libc::ENAMETOOLONG);
        assert!(check_symlink_target(b"../../etc/passwd").is_ok());
    }

    #[test]
    fn xattr_names() {
        assert!(check_xattr_name(b"user.a").is_ok());
        assert!(check_xattr_name(b"trusted.x").is_ok());
        assert_eq!(check_xattr_name(b"").unwrap_err().errno(), libc::ERANGE);
        assert_eq!(
            check_xattr_name(b"foo.a").unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            check_xattr_name(b"user.").unwrap_err().errno(),
            libc::EINVAL
        );
        let mut long = b"user.".to_vec();
        long.resize(256, b'x');
        assert_eq!(check_xattr_name(&long).unwrap_err().errno(), libc::ERANGE);
    }

    proptest! {
        #[test]
        fn accepted_names_are_single_components(name in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Name::Entry(n)) = check_name(&name, NameUse::MakeEntry) {
                prop_assert!(!n.is_empty() && n.len() <= 255);
                prop_assert!(!n.contains(&b'/') && !n.contains(&0));
                prop_assert!(n != b"." && n != b"..");
            }
        }
    }
}
