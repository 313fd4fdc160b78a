//! The cluster's TLS material: one CA and a certificate per component, as Secrets in the
//! operator's namespace, for the mutual TLS between bricks, the CSI driver and the mounter.
//!
//! Generation is random, so it must happen once: the Secrets are created only when absent
//! (never server-side applied, which would replace the CA on every reconcile). Nothing
//! consumes them yet: the servers take no TLS flags (see docs/operator.md).

use crate::desired::{Desired, OPERATOR_NAMESPACE as NAMESPACE};
use crate::reconcile::FIELD_MANAGER;
use crate::Error;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

/// Secret holding the CA certificate and key.
pub const CA_SECRET: &str = "kadalu-tls-ca";
/// Where pods are to mount their component Secret.
pub const MOUNT_PATH: &str = "/etc/kadalu/tls";

/// A component and the DNS names its certificate carries.
pub struct Component {
    pub name: &'static str,
    pub dns_names: Vec<String>,
}

/// The components of one cluster: bricks (any pool's brick Service in any namespace, so a
/// wildcard over `*.svc` names), the CSI controller, the node plugin and the mounter.
pub fn components() -> Vec<Component> {
    vec![
        Component {
            name: "brick",
            dns_names: vec!["*.svc".into(), "*.svc.cluster.local".into()],
        },
        Component {
            name: "csi-controller",
            dns_names: vec![format!("kadalu-csi-controller.{NAMESPACE}.svc")],
        },
        Component {
            name: "csi-node",
            dns_names: vec![format!("kadalu-csi-node.{NAMESPACE}.svc")],
        },
        Component {
            name: "mounter",
            dns_names: vec![format!("kadalu-mounter.{NAMESPACE}.svc")],
        },
    ]
}

/// Name of a component's Secret.
pub fn secret_name(component: &str) -> String {
    format!("kadalu-tls-{component}")
}

fn secret(name: &str, data: serde_json::Value) -> Desired {
    Desired {
        api_version: "v1",
        kind: "Secret",
        namespace: Some(NAMESPACE.into()),
        name: name.into(),
        body: json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": { "app.kubernetes.io/managed-by": "kadalu-operator" },
            },
            "type": "Opaque",
            "stringData": data,
        }),
    }
}

/// A fresh CA and one certificate per component, each signed by it, as Secrets: the CA's
/// (`ca.crt`, `ca.key`) and one per component (`ca.crt`, `tls.crt`, `tls.key`).
pub fn generate(components: &[Component]) -> Result<Vec<Desired>, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kadalu CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let mut out = vec![secret(
        CA_SECRET,
        json!({ "ca.crt": ca_pem, "ca.key": ca_key.serialize_pem() }),
    )];
    let issuer = Issuer::new(ca_params, ca_key);
    for c in components {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(c.dns_names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kadalu-{}", c.name));
        // Every component both serves and calls others: mutual TLS needs both usages.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        out.push(secret(
            &secret_name(c.name),
            json!({ "ca.crt": ca_pem, "tls.crt": cert.pem(), "tls.key": key.serialize_pem() }),
        ));
    }
    Ok(out)
}

/// Creates the CA and component Secrets unless the CA Secret exists. Returns whether it
/// created them. A Secret that appeared meanwhile (409) is left as it is: another operator
/// replica won the race, and its CA is as good as ours.
pub async fn ensure(client: &Client) -> Result<bool, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    if api.get_opt(CA_SECRET).await?.is_some() {
        return Ok(false);
    }
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for d in generate(&components())? {
        let s: Secret = serde_json::from_value(d.body)
            .map_err(|e| Error::Serialize("TLS Secret", e.to_string()))?;
        match api.create(&pp, &s).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!("Secret {} exists already; kept", d.name);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data<'a>(d: &'a Desired, k: &str) -> &'a str {
        d.body["stringData"][k].as_str().unwrap_or_default()
    }

    #[test]
    fn one_ca_and_a_signed_cert_per_component() {
        let comps = components();
        let secrets = generate(&comps).unwrap();
        assert_eq!(secrets.len(), comps.len() + 1);
        assert_eq!(secrets[0].name, CA_SECRET);
        let ca = data(&secrets[0], "ca.crt");
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(data(&secrets[0], "ca.key").contains("PRIVATE KEY"));
        let mut certs = vec![];
        for (s, c) in secrets[1..].iter().zip(&comps) {
            assert_eq!(s.name, secret_name(c.name));
            assert_eq!(s.namespace.as_deref(), Some(NAMESPACE));
            assert_eq!(s.body["kind"], "Secret");
            // Each component carries the same CA, so any peer can verify any other.
            assert_eq!(data(s, "ca.crt"), ca);
            assert!(data(s, "tls.crt").starts_with("-----BEGIN CERTIFICATE-----"));
            assert_ne!(data(s, "tls.crt"), ca);
            certs.push(data(s, "tls.crt").to_string());
        }
        certs.sort();
        certs.dedup();
        assert_eq!(certs.len(), comps.len(), "certificates must differ");
    }

    use http::{Request, Response};
    use kube::client::Body;

    /// An API server whose Secrets are `existing`; returns the (method, path) it saw.
    async fn run_ensure(existing: &'static [&'static str]) -> (bool, Vec<(String, String)>) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut seen = vec![];
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let body = req.into_body().collect_bytes().await.unwrap();
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                let posted: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let posted_name = posted["metadata"]["name"].as_str().unwrap_or_default();
                let (code, answer) = if method == "GET" && !existing.contains(&name.as_str()) {
                    (
                        404,
                        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found" }),
                    )
                } else if method == "GET" {
                    (
                        200,
                        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name } }),
                    )
                } else if existing.contains(&posted_name) {
                    (
                        409,
                        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "AlreadyExists", "code": 409, "message": "exists" }),
                    )
                } else {
                    (201, posted)
                };
                seen.push((method, path));
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
            seen
        });
        let created = ensure(&Client::new(svc, "default")).await.unwrap();
        (created, server.await.unwrap())
    }

    #[tokio::test]
    async fn ensure_keeps_an_existing_ca() {
        let (created, seen) = run_ensure(&[CA_SECRET]).await;
        assert!(!created);
        assert_eq!(
            seen,
            vec![(
                "GET".into(),
                format!("/api/v1/namespaces/{NAMESPACE}/secrets/{CA_SECRET}")
            )]
        );
    }

    #[tokio::test]
    async fn ensure_creates_ca_and_components_and_tolerates_a_race() {
        // The brick Secret appears between our GET and our POST: a 409, not a failure.
        let (created, seen) = run_ensure(&["kadalu-tls-brick"]).await;
        assert!(created);
        let posts: Vec<_> = seen.iter().filter(|(m, _)| m == "POST").collect();
        assert_eq!(posts.len(), components().len() + 1, "{seen:?}");
        assert!(posts
            .iter()
            .all(|(_, p)| p == &format!("/api/v1/namespaces/{NAMESPACE}/secrets")));
    }

    #[test]
    fn generation_is_fresh_each_time() {
        let a = generate(&[]).unwrap();
        let b = generate(&[]).unwrap();
        assert_ne!(data(&a[0], "ca.key"), data(&b[0], "ca.key"));
    }
}
