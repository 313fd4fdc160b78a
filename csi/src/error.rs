//! The driver's error type, mapped to the gRPC codes the CSI specification
//! gives for each case.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A required field is missing or a value is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or its pool) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume of that name exists with an incompatible capacity.
    #[error("{0}")]
    AlreadyExists(String),
    /// No replica set has room.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A capacity the driver cannot honour.
    #[error("{0}")]
    OutOfRange(String),
    /// The request conflicts with the volume's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A ListVolumes token this driver did not hand out.
    #[error("{0}")]
    Aborted(String),
    /// The bricks or the mounter cannot be reached now; the CO retries.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        let code = match &e {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::ResourceExhausted(_) => Code::ResourceExhausted,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<std::io::Error> for CsiError {
    fn from(e: std::io::Error) -> Self {
        CsiError::Internal(e.to_string())
    }
}

pub type CsiResult<T> = Result<T, CsiError>;

/// A missing required field.
pub fn missing(field: &str) -> CsiError {
    CsiError::InvalidArgument(format!("{field} is required"))
}
