//! The Kubernetes operator (`kadalu-operator`): turns `KadaluStorage` objects into bricks
//! (one StatefulSet per storage entry), StorageClasses, the pool ConfigMap the CSI driver
//! reads, and the cluster-wide CSI driver objects.
//!
//! Layout: [`crd`] is the API type, [`desired`] the pure function from the objects to what
//! should exist, [`reconcile`] the I/O that makes the cluster match it, [`metrics`] what the
//! operator reports about itself.

pub mod crd;
pub mod desired;
pub mod error;
pub mod layout;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod tls;

pub use error::Error;
