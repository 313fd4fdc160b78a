//! The brick's error type: every failure is, in the end, a Linux errno that the
//! client hands to its kernel. Internal faults (the metadata store, unexpected
//! I/O) become EIO rather than a panic.

use kadalu_proto::errno::status_from_errno;

/// An error of a brick operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A file-system answer, exactly the errno Linux would give.
    #[error("errno {0}")]
    Os(i32),
    /// The metadata store failed; reported as EIO.
    #[error("metadata store: {0}")]
    Store(String),
    /// A system call on an object file failed; its errno is passed on.
    #[error("object i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FsError {
    /// The errno a client should see.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Os(e) => *e,
            FsError::Store(_) => libc::EIO,
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// True for answers about the request (recorded for deduplication), false
    /// for faults of this brick (a retry may succeed, so they are not recorded).
    pub fn is_answer(&self) -> bool {
        matches!(self, FsError::Os(_))
    }

    /// The error of the last failed system call.
    pub fn last_os() -> Self {
        FsError::Io(std::io::Error::last_os_error())
    }
}

impl From<FsError> for tonic::Status {
    fn from(e: FsError) -> Self {
        status_from_errno(e.errno(), e.to_string())
    }
}

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for FsError {
            fn from(e: $t) -> Self {
                FsError::Store(e.to_string())
            }
        }
    )*};
}

store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    prost::DecodeError
);

/// Shorthand for results of brick operations.
pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;
    use kadalu_proto::errno::errno_of;

    #[test]
    fn errnos_reach_the_status() {
        let s: tonic::Status = FsError::Os(libc::ENOTEMPTY).into();
        assert_eq!(errno_of(&s), Some(libc::ENOTEMPTY));
        let s: tonic::Status = FsError::Store("boom".into()).into();
        assert_eq!(errno_of(&s), Some(libc::EIO));
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::from(io).errno(), libc::ENOSPC);
    }
}
