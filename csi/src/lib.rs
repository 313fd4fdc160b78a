//! The CSI driver (`kadalu-csi`): identity, controller and node services on a unix socket. Arrives with the CSI issue; nothing here yet.
