//! The client's error type: every way a file-system request can fail on this side,
//! and the one errno each of them becomes for the kernel.

use kadalu_proto::errno::{errno_for_client, status_from_errno};
use std::time::Duration;

/// Why a request could not be answered with success.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The brick answered with a file-system error; the errno is handed on verbatim.
    #[error("brick answered: {}", std::io::Error::from_raw_os_error(*.0))]
    Fs(i32),
    /// A status that is neither a file-system answer nor a transport failure
    /// (e.g. an unexpected gRPC code); mapped the way `kadalu_proto::errno` does.
    #[error("brick answered {code:?}: {message}")]
    Status {
        code: tonic::Code,
        errno: i32,
        message: String,
    },
    /// No brick answered within the unavailable wait.
    #[error("no brick reachable after waiting {waited:?}: {last}")]
    Unreachable { waited: Duration, last: String },
    /// The brick's reply violated the protocol (bad id length, missing attributes, ...).
    #[error("malformed reply: {0}")]
    BadReply(String),
    /// The kernel named an inode this client does not know (it never gave it out or
    /// it was forgotten).
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    /// A request this client refuses before sending (bad argument).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The process waiting for a lock got a signal.
    #[error("interrupted")]
    Interrupted,
}

/// The errno for "gave up waiting for a brick". ETIMEDOUT ("Connection timed out")
/// says what happened: the client waited `--unavailable-wait` for a brick and none
/// answered. It is distinct from every errno a brick itself returns for a
/// file-system answer, so scripts can tell an outage from a real error.
pub const UNREACHABLE_ERRNO: i32 = libc::ETIMEDOUT;

impl ClientError {
    /// The errno the kernel gets for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Fs(e) => *e,
            ClientError::Status { errno, .. } => *errno,
            ClientError::Unreachable { .. } => UNREACHABLE_ERRNO,
            ClientError::BadReply(_) => libc::EIO,
            ClientError::UnknownInode(_) => libc::ESTALE,
            ClientError::Invalid(_) => libc::EINVAL,
            ClientError::Interrupted => libc::EINTR,
        }
    }

    /// Classifies a status that the retry policy decided is an answer, not a
    /// transport failure.
    pub fn from_answer(status: &tonic::Status) -> Self {
        match kadalu_proto::errno::errno_of(status) {
            Some(e) => ClientError::Fs(e),
            None => ClientError::Status {
                code: status.code(),
                errno: errno_for_client(status),
                message: status.message().to_string(),
            },
        }
    }

    /// Whether this error is the plain "no such entry" answer.
    pub fn is_enoent(&self) -> bool {
        self.errno() == libc::ENOENT
    }
}

impl From<ClientError> for tonic::Status {
    fn from(e: ClientError) -> Self {
        status_from_errno(e.errno(), e.to_string())
    }
}

impl From<ClientError> for fuser::Errno {
    fn from(e: ClientError) -> Self {
        fuser::Errno::from_i32(e.errno())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brick_errno_is_kept_verbatim() {
        let s = status_from_errno(libc::ENOTEMPTY, "x");
        assert_eq!(ClientError::from_answer(&s).errno(), libc::ENOTEMPTY);
        let s = status_from_errno(libc::EAGAIN, "lock held");
        assert_eq!(ClientError::from_answer(&s).errno(), libc::EAGAIN);
    }

    #[test]
    fn statuses_without_errno_use_the_proto_mapping() {
        let s = tonic::Status::not_found("gone");
        assert_eq!(ClientError::from_answer(&s).errno(), libc::ENOENT);
        let s = tonic::Status::permission_denied("no");
        assert_eq!(ClientError::from_answer(&s).errno(), libc::EACCES);
    }

    #[test]
    fn local_failures_have_distinct_errnos() {
        let unreachable = ClientError::Unreachable {
            waited: Duration::from_secs(1),
            last: "refused".into(),
        };
        assert_eq!(unreachable.errno(), libc::ETIMEDOUT);
        assert_eq!(ClientError::UnknownInode(7).errno(), libc::ESTALE);
        assert_eq!(ClientError::BadReply("x".into()).errno(), libc::EIO);
        assert_eq!(ClientError::Interrupted.errno(), libc::EINTR);
        let st: tonic::Status = ClientError::Fs(libc::EEXIST).into();
        assert_eq!(kadalu_proto::errno::errno_of(&st), Some(libc::EEXIST));
    }
}
