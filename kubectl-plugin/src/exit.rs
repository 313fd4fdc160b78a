//! Exit codes and the error type every command returns; scripts branch on the code.

/// Success.
pub const OK: u8 = 0;
/// The cluster or the API failed (connection, permission, server error, bad kubeconfig).
pub const API: u8 = 1;
/// The command line or its values are wrong; nothing was sent.
pub const USAGE: u8 = 2;
/// The request was understood and refused, e.g. removing a pool that still holds PVs.
pub const REFUSED: u8 = 3;
/// The named object does not exist.
pub const NOT_FOUND: u8 = 4;

/// Appended to `--help` so the codes are discoverable where people look.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  error from the cluster or the API (connection, permission, kubeconfig)
  2  usage or validation error (nothing was sent)
  3  refused (e.g. storage-remove while the pool still has PVs)
  4  not found (no such pool, pod or deployment)";

/// Why a command failed; [`Error::exit_code`] maps it to the documented codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("{kind} {name:?} not found in namespace {namespace:?}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{0}")]
    Encode(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) => USAGE,
            Error::Refused(_) => REFUSED,
            Error::NotFound { .. } => NOT_FOUND,
            Error::Api(kube::Error::Api(s)) if s.code == 404 => NOT_FOUND,
            Error::Api(_) | Error::Config(_) | Error::Encode(_) | Error::Io(_) => API,
        }
    }

    /// Turns a 404 from the API into [`Error::NotFound`] naming what was looked for.
    pub fn from_api(e: kube::Error, kind: &'static str, name: &str, namespace: &str) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 404 => Error::NotFound {
                kind,
                name: name.to_string(),
                namespace: namespace.to_string(),
            },
            other => Error::Api(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
