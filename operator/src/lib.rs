//! The Kubernetes operator (`kadalu-operator`): turns `KadaluStorage` objects into bricks, StorageClasses and the CSI driver. Arrives with the operator issue; nothing here yet.
