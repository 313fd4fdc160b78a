//! The cluster's TLS material: one CA and a certificate per component, as Secrets in the
//! operator's namespace, for the mutual TLS between bricks, the CSI driver and the mounter.
//!
//! Generation is random, so it must happen once: the Secrets are created only when absent
//! (never server-side applied, which would replace the CA on every reconcile). A component
//! Secret that is missing while the CA exists (deleted by hand, or a component added by an
//! upgrade) is signed again by the stored CA.
//!
//! Every certificate carries the DNS name [`SERVER_NAME`], which is what clients check (see
//! `kadalu_proto::transport`): brick addresses are per-pod names in any namespace.

use crate::desired::{Desired, OPERATOR_NAMESPACE as NAMESPACE};
use crate::reconcile::FIELD_MANAGER;
use crate::Error;
use k8s_openapi::api::core::v1::Secret;
use kadalu_proto::transport::{Transport, CA_FILE, CERT_FILE, KEY_FILE, SERVER_NAME};
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

/// The components of one cluster that reach bricks or are bricks: bricks (any pool's brick
/// Service in any namespace, so a wildcard over `*.svc` names), the CSI controller, the
/// mounter, and the operator. The CSI node plugin talks only to the mounter and the kubelet,
/// over unix sockets, and gets no certificate.
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
            name: "mounter",
            dns_names: vec![format!("kadalu-mounter.{NAMESPACE}.svc")],
        },
        // The operator's own client certificate, for its brick probes.
        Component {
            name: "operator",
            dns_names: vec![format!("kadalu-operator.{NAMESPACE}.svc")],
        },
    ]
}

/// The PEM files of one component, as mounted from its Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentPem {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl ComponentPem {
    /// Stand-ins for `kadalu-operator render`, which has no cluster to read from and must
    /// not print real keys.
    pub fn placeholder(component: &str) -> Self {
        let from = secret_name(component);
        ComponentPem {
            ca: format!("<{CA_FILE} of Secret {NAMESPACE}/{from}>"),
            cert: format!("<{CERT_FILE} of Secret {NAMESPACE}/{from}>"),
            key: format!("<{KEY_FILE} of Secret {NAMESPACE}/{from}>"),
        }
    }

    /// The Secret's `stringData` as the mounted file names (for a create).
    pub fn string_data(&self) -> serde_json::Value {
        json!({ CA_FILE: self.ca, CERT_FILE: self.cert, KEY_FILE: self.key })
    }

    /// The same as `data` (base64), for server-side apply: `stringData` is write-only
    /// (the API server folds it into `data`), so an applied object that carries it never
    /// matches what is stored, and its field ownership is muddled.
    pub fn data(&self) -> serde_json::Value {
        let b64 = |s: &str| {
            serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap_or_default()
        };
        json!({ CA_FILE: b64(&self.ca), CERT_FILE: b64(&self.cert), KEY_FILE: b64(&self.key) })
    }

    pub fn transport(&self, from: &str) -> Result<Transport, Error> {
        Transport::from_pem(
            from,
            self.ca.clone().into_bytes(),
            self.cert.clone().into_bytes(),
            self.key.clone().into_bytes(),
        )
        .map_err(|e| Error::Tls(e.to_string()))
    }
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

/// The CA's parameters. They are the same every time, so the stored CA key together with
/// them signs certificates that chain to the stored CA certificate (the issuer name and
/// key identifier come from these and the key), without parsing that certificate.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kadalu CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca_params)
}

fn component_secret(
    c: &Component,
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
) -> Result<Desired, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut names = c.dns_names.clone();
    names.push(SERVER_NAME.into());
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("kadalu-{}", c.name));
    // Every component both serves and calls others: mutual TLS needs both usages.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, issuer)?;
    let pem = ComponentPem {
        ca: ca_pem.to_string(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    Ok(secret(&secret_name(c.name), pem.string_data()))
}

/// A fresh CA and one certificate per component, each signed by it, as Secrets: the CA's
/// (`ca.crt`, `ca.key`) and one per component (`ca.crt`, `tls.crt`, `tls.key`).
pub fn generate(components: &[Component]) -> Result<Vec<Desired>, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params()?;
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let mut out = vec![secret(
        CA_SECRET,
        json!({ CA_FILE: ca_pem, "ca.key": ca_key.serialize_pem() }),
    )];
    let issuer = Issuer::new(ca_params, ca_key);
    for c in components {
        out.push(component_secret(c, &issuer, &ca_pem)?);
    }
    Ok(out)
}

/// Component Secrets signed by an existing CA (its certificate and key in PEM).
pub fn sign_with(
    components: &[Component],
    ca_pem: &str,
    ca_key_pem: &str,
) -> Result<Vec<Desired>, rcgen::Error> {
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(ca_key_pem)?);
    components
        .iter()
        .map(|c| component_secret(c, &issuer, ca_pem))
        .collect()
}

fn secret_text(s: &Secret, key: &str) -> Option<String> {
    let data = s.data.as_ref()?.get(key)?;
    String::from_utf8(data.0.clone()).ok()
}

/// Reads a component's Secret, saying what is missing.
pub async fn read_component(client: &Client, component: &str) -> Result<ComponentPem, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let name = secret_name(component);
    let s = api.get(&name).await?;
    let field = |k: &str| {
        secret_text(&s, k)
            .ok_or_else(|| Error::Tls(format!("Secret {NAMESPACE}/{name} has no {k}")))
    };
    Ok(ComponentPem {
        ca: field(CA_FILE)?,
        cert: field(CERT_FILE)?,
        key: field(KEY_FILE)?,
    })
}

/// Creates the CA and component Secrets unless the CA Secret exists. Returns whether it
/// created them. A Secret that appeared meanwhile (409) is left as it is: another operator
/// replica won the race, and its CA is as good as ours.
pub async fn ensure(client: &Client) -> Result<bool, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let to_create = match api.get_opt(CA_SECRET).await? {
        None => generate(&components())?,
        Some(ca) => {
            let mut missing = vec![];
            for c in components() {
                if api.get_opt(&secret_name(c.name)).await?.is_none() {
                    missing.push(c);
                }
            }
            if missing.is_empty() {
                return Ok(false);
            }
            let (Some(ca_pem), Some(ca_key)) =
                (secret_text(&ca, CA_FILE), secret_text(&ca, "ca.key"))
            else {
                return Err(Error::Tls(format!(
                    "Secret {NAMESPACE}/{CA_SECRET} lacks {CA_FILE} or ca.key; delete it and every kadalu-tls-* Secret to make a new CA"
                )));
            };
            sign_with(&missing, &ca_pem, &ca_key)?
        }
    };
    for d in to_create {
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
    /// A Secret's `data` (base64 values, as the API server returns them) from a Desired.
    fn base64_data(d: &Desired) -> serde_json::Value {
        let map = d.body["stringData"].as_object().unwrap();
        let encoded: serde_json::Map<_, _> = map
            .iter()
            .map(|(k, v)| {
                let bytes = k8s_openapi::ByteString(v.as_str().unwrap().as_bytes().to_vec());
                (k.clone(), serde_json::to_value(bytes).unwrap())
            })
            .collect();
        serde_json::Value::Object(encoded)
    }

    async fn run_ensure(existing: &'static [&'static str]) -> (bool, Vec<(String, String)>) {
        let ca = generate(&[]).unwrap().remove(0);
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
                    // A real CA, so that missing components can be signed by it.
                    let data = match name == CA_SECRET {
                        true => base64_data(&ca),
                        false => json!({}),
                    };
                    (
                        200,
                        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "data": data }),
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
        let (created, seen) = run_ensure(&[
            CA_SECRET,
            "kadalu-tls-brick",
            "kadalu-tls-csi-controller",
            "kadalu-tls-mounter",
            "kadalu-tls-operator",
        ])
        .await;
        assert!(!created);
        assert!(seen.iter().all(|(m, _)| m == "GET"), "{seen:?}");
        assert_eq!(
            seen[0],
            (
                "GET".into(),
                format!("/api/v1/namespaces/{NAMESPACE}/secrets/{CA_SECRET}")
            )
        );
    }

    #[tokio::test]
    async fn ensure_signs_only_missing_components_with_the_stored_ca() {
        let (created, seen) =
            run_ensure(&[CA_SECRET, "kadalu-tls-brick", "kadalu-tls-mounter"]).await;
        assert!(created);
        let posts = seen.iter().filter(|(m, _)| m == "POST").count();
        // csi-controller and operator; never a second CA.
        assert_eq!(posts, 2, "{seen:?}");
    }

    #[test]
    fn re_signing_keeps_the_ca_and_makes_a_new_certificate() {
        let all = generate(&components()).unwrap();
        let ca_pem = data(&all[0], "ca.crt");
        let again = sign_with(&components()[..1], ca_pem, data(&all[0], "ca.key")).unwrap();
        assert_eq!(data(&again[0], "ca.crt"), ca_pem);
        assert_ne!(data(&again[0], "tls.crt"), data(&all[1], "tls.crt"));
        // Whether it chains is checked by a real handshake in tests/tests/tls.rs.
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
