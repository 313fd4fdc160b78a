//! Errors of the operator library.

/// What can go wrong computing or applying a pool's objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KadaluStorage {0}: {1}")]
    Spec(String, #[source] crate::crd::SpecError),
    #[error(
        "KadaluStorage has no {0} (the API server always sets it; is this object from a file?)"
    )]
    MissingMeta(&'static str),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialising {0}: {1}")]
    Serialize(&'static str, String),
    #[error("generating TLS certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}
