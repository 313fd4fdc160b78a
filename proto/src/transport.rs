//! How a peer reaches a brick: plain gRPC, or gRPC over mutual TLS with the cluster's CA.
//!
//! Every process that talks to bricks (other bricks, `kadalu-mount`, the CSI controller,
//! the operator) and every brick that serves builds its endpoints here, so that one
//! `--tls-dir` flag switches a whole deployment and no call site can forget the scheme.
//!
//! The directory has the layout of the operator's component Secrets: `ca.crt`, `tls.crt`,
//! `tls.key` (PEM). Both sides present a certificate and accept only peers whose
//! certificate the CA signed. Brick addresses are per-pod DNS names in any namespace,
//! which no fixed certificate can list, so clients check the server certificate for the
//! one name every kadalu certificate carries, [`SERVER_NAME`], rather than the host they
//! dialled: what is verified is membership of the cluster, not the address.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The DNS name in every kadalu certificate, checked by every client.
pub const SERVER_NAME: &str = "kadalu";
/// File names inside a TLS directory (a mounted component Secret).
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Largest PEM file accepted: a certificate chain or key is a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;
/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS directory {}: cannot read {file}: {source}", dir.display())]
    Read {
        dir: PathBuf,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("{from}: {file} is not a PEM file (expected '-----BEGIN')")]
    NotPem { from: String, file: &'static str },
    #[error("{from}: {file} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge { from: String, file: &'static str },
    #[error("{from}: the certificate, key or CA is not usable: {detail}")]
    Unusable { from: String, detail: String },
    #[error("bad brick address {addr:?}: {detail}")]
    Address { addr: String, detail: String },
}

/// The PEM material of one component.
struct Tls {
    /// Where the material came from, for messages.
    from: String,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Plain or mutual-TLS transport; cheap to clone.
#[derive(Clone, Default)]
pub struct Transport {
    tls: Option<Arc<Tls>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls {
            None => f.write_str("Transport(plain)"),
            Some(t) => write!(f, "Transport(tls from {})", t.from),
        }
    }
}

fn read_pem(dir: &Path, file: &'static str) -> Result<Vec<u8>, TransportError> {
    let path = dir.join(file);
    let read_err = |source| TransportError::Read {
        dir: dir.to_path_buf(),
        file,
        source,
    };
    let len = std::fs::metadata(&path).map_err(read_err)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TransportError::TooLarge {
            from: format!("TLS directory {}", dir.display()),
            file,
        });
    }
    std::fs::read(&path).map_err(read_err)
}

fn check_pem(from: &str, file: &'static str, bytes: &[u8]) -> Result<(), TransportError> {
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TransportError::TooLarge {
            from: from.to_string(),
            file,
        });
    }
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(TransportError::NotPem {
            from: from.to_string(),
            file,
        });
    }
    Ok(())
}

impl Transport {
    /// Plain gRPC (tests, local pools, clusters without TLS).
    pub fn plain() -> Transport {
        Transport { tls: None }
    }

    /// Mutual TLS from the files in `dir`. Both the client and the server side are built
    /// once here, so a wrong key or a certificate that does not parse is reported at
    /// start-up, naming the directory, instead of as a failed handshake later.
    pub fn from_dir(dir: &Path) -> Result<Transport, TransportError> {
        Transport::from_pem(
            &format!("TLS directory {}", dir.display()),
            read_pem(dir, CA_FILE)?,
            read_pem(dir, CERT_FILE)?,
            read_pem(dir, KEY_FILE)?,
        )
    }

    /// Mutual TLS from PEM bytes (a Secret read through the API); `from` names their
    /// origin in error messages. Checked like [`Transport::from_dir`].
    pub fn from_pem(
        from: &str,
        ca: Vec<u8>,
        cert: Vec<u8>,
        key: Vec<u8>,
    ) -> Result<Transport, TransportError> {
        check_pem(from, CA_FILE, &ca)?;
        check_pem(from, CERT_FILE, &cert)?;
        check_pem(from, KEY_FILE, &key)?;
        let t = Transport {
            tls: Some(Arc::new(Tls {
                from: from.to_string(),
                ca,
                cert,
                key,
            })),
        };
        let unusable = |e: tonic::transport::Error| TransportError::Unusable {
            from: from.to_string(),
            detail: error_chain(&e),
        };
        if let Some(cfg) = t.server_config() {
            Server::builder().tls_config(cfg).map_err(unusable)?;
        }
        t.endpoint("127.0.0.1:1")?;
        Ok(t)
    }

    /// [`Transport::from_dir`] when a directory is given, plain otherwise.
    pub fn from_optional_dir(dir: Option<&Path>) -> Result<Transport, TransportError> {
        dir.map_or_else(|| Ok(Transport::plain()), Transport::from_dir)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URI of a brick address (`host:port`, or a URI whose scheme is replaced by
    /// the one this transport speaks).
    pub fn uri(&self, addr: &str) -> String {
        let host_port = addr.split_once("://").map_or(addr, |(_, rest)| rest);
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{host_port}")
    }

    /// An endpoint for `addr`, with TLS configured when this transport has it. Timeouts
    /// and windows are the caller's to set.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, TransportError> {
        let bad = |detail: String| TransportError::Address {
            addr: addr.to_string(),
            detail,
        };
        let ep = Endpoint::from_shared(self.uri(addr)).map_err(|e| bad(error_chain(&e)))?;
        match &self.tls {
            None => Ok(ep),
            Some(t) => {
                let cfg = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.ca))
                    .identity(Identity::from_pem(&t.cert, &t.key))
                    .domain_name(SERVER_NAME)
                    .timeout(HANDSHAKE_TIMEOUT);
                ep.tls_config(cfg).map_err(|e| TransportError::Unusable {
                    from: t.from.clone(),
                    detail: error_chain(&e),
                })
            }
        }
    }

    /// The server side: our certificate, and client certificates required and checked
    /// against the CA. `None` for plain transport.
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        self.tls.as_ref().map(|t| {
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&t.cert, &t.key))
                .client_ca_root(Certificate::from_pem(&t.ca))
                .timeout(HANDSHAKE_TIMEOUT)
        })
    }
}

/// tonic's transport errors say little at the top ("transport error"); the cause is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_uris_keep_or_add_http() {
        let t = Transport::plain();
        assert_eq!(t.uri("10.0.0.1:24007"), "http://10.0.0.1:24007");
        assert_eq!(
            t.uri("http://b-0.b.ns.svc:24007"),
            "http://b-0.b.ns.svc:24007"
        );
        assert!(!t.is_tls());
        assert!(t.server_config().is_none());
    }

    #[test]
    fn missing_and_non_pem_files_name_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let e = Transport::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ca.crt") && e.contains("cannot read"), "{e}");
        for f in [CA_FILE, CERT_FILE, KEY_FILE] {
            std::fs::write(dir.path().join(f), "not a certificate").unwrap();
        }
        let e = Transport::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ca.crt is not a PEM file"), "{e}");
    }

    #[test]
    fn garbage_inside_pem_armour_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        for f in [CA_FILE, CERT_FILE] {
            std::fs::write(dir.path().join(f), junk).unwrap();
        }
        std::fs::write(
            dir.path().join(KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = Transport::from_dir(dir.path()).unwrap_err();
        assert!(matches!(e, TransportError::Unusable { .. }), "{e}");
    }
}
