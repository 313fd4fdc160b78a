//! Serving the CSI services on a unix socket (`unix:///path` endpoints).

use std::path::{Path, PathBuf};

/// The socket path of a `unix://` endpoint (a bare absolute path is accepted too).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let p = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(format!(
            "endpoint {endpoint:?} is not unix:///absolute/path"
        ));
    }
    Ok(path)
}

/// Binds `path`, removing a stale socket file a previous run left.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixListener::bind(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(socket_path("/x.sock").unwrap(), PathBuf::from("/x.sock"));
        assert!(socket_path("unix://rel.sock").is_err());
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
    }
}
