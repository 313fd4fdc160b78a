//! How a Linux errno crosses the wire. A file-system answer (ENOENT, EEXIST, ...)
//! travels as a gRPC status with the errno in the `x-errno` metadata entry, so
//! the client can hand the kernel exactly what the brick's checks decided.
//! Statuses without it are transport or server conditions.

use tonic::{Code, Status};

/// Metadata key that carries the errno.
pub const ERRNO_KEY: &str = "x-errno";

// Linux errno values used below; spelled out so this crate needs no libc.
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const EBADF: i32 = 9;
const EAGAIN: i32 = 11;
const EACCES: i32 = 13;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const ERANGE: i32 = 34;
const ENAMETOOLONG: i32 = 36;
const ENOSYS: i32 = 38;
const EOPNOTSUPP: i32 = 95;
const ETIMEDOUT: i32 = 110;
const EDQUOT: i32 = 122;
const EHOSTUNREACH: i32 = 113;

/// The gRPC code that best describes an errno, for peers that ignore `x-errno`.
fn code_for(errno: i32) -> Code {
    match errno {
        ENOENT => Code::NotFound,
        EEXIST => Code::AlreadyExists,
        EPERM | EACCES => Code::PermissionDenied,
        ENOSPC | EDQUOT => Code::ResourceExhausted,
        ENOSYS | EOPNOTSUPP => Code::Unimplemented,
        EAGAIN => Code::Unavailable,
        ETIMEDOUT => Code::DeadlineExceeded,
        EINVAL | ENAMETOOLONG | ERANGE | EBADF => Code::InvalidArgument,
        EIO => Code::Internal,
        _ => Code::FailedPrecondition,
    }
}

/// A status carrying a file-system error.
pub fn status_from_errno(errno: i32, message: impl Into<String>) -> Status {
    let mut status = Status::new(code_for(errno), message);
    if let Ok(v) = errno.to_string().parse() {
        status.metadata_mut().insert(ERRNO_KEY, v);
    }
    status
}

/// The errno a status carries, if it is a file-system answer.
pub fn errno_of(status: &Status) -> Option<i32> {
    status
        .metadata()
        .get(ERRNO_KEY)?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()
        .filter(|e| *e > 0 && *e < 4096)
}

/// The errno a client reports to its kernel for any status: the carried errno,
/// or a fallback for transport failures (unreachable brick, deadline passed).
pub fn errno_for_client(status: &Status) -> i32 {
    if let Some(e) = errno_of(status) {
        return e;
    }
    match status.code() {
        Code::NotFound => ENOENT,
        Code::AlreadyExists => EEXIST,
        Code::PermissionDenied => EACCES,
        Code::ResourceExhausted => ENOSPC,
        Code::Unimplemented => ENOSYS,
        Code::InvalidArgument | Code::OutOfRange => EINVAL,
        Code::DeadlineExceeded => ETIMEDOUT,
        Code::Unavailable => EHOSTUNREACH,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips() {
        for e in [
            ENOENT, EEXIST, EINVAL, 39, /* ENOTEMPTY */
            EDQUOT, 18, /* EXDEV */
        ] {
            let s = status_from_errno(e, "x");
            assert_eq!(errno_of(&s), Some(e));
            assert_eq!(errno_for_client(&s), e);
        }
    }

    #[test]
    fn transport_failures_map_to_sane_errnos() {
        assert_eq!(errno_for_client(&Status::unavailable("down")), EHOSTUNREACH);
        assert_eq!(
            errno_for_client(&Status::deadline_exceeded("slow")),
            ETIMEDOUT
        );
        assert_eq!(errno_of(&Status::internal("boom")), None);
    }

    #[test]
    fn garbage_errno_metadata_is_ignored() {
        let mut s = Status::internal("x");
        s.metadata_mut().insert(ERRNO_KEY, "-5".parse().unwrap());
        assert_eq!(errno_of(&s), None);
        assert_eq!(errno_for_client(&s), EIO);
    }
}
