//! Mutual TLS end to end, with certificates made by the operator's own generator: a
//! Replica3 set whose bricks elect and replicate over TLS, a FUSE mount that reaches them
//! with the mounter's certificate, and the peers that must be turned away (no TLS, a
//! certificate from another CA, a brick started with a broken TLS directory).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kadalu_e2e::binaries::server_bin;
use kadalu_e2e::process::wait_bounded;
use kadalu_e2e::{Mount, MountOptions, ReplicaSet};
use kadalu_operator::tls::{components, generate, secret_name, sign_with, CA_SECRET};
use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::brick::GetAttrRequest;
use kadalu_proto::transport::Transport;
use kadalu_proto::ROOT_ID;
use tempfile::TempDir;

/// Writes each component Secret of a fresh CA to `<root>/<component>/` as the kubelet
/// would mount it (one file per key).
fn write_material(root: &Path) {
    for secret in generate(&components()).expect("generate certificates") {
        let dir = root.join(&secret.name);
        std::fs::create_dir_all(&dir).unwrap();
        let data = secret.body["stringData"].as_object().expect("stringData");
        for (file, pem) in data {
            std::fs::write(dir.join(file), pem.as_str().expect("PEM text")).unwrap();
        }
    }
}

fn dir_of(root: &Path, component: &str) -> PathBuf {
    root.join(secret_name(component))
}

/// A GetAttr of the root through `transport`, bounded in time.
fn get_root(rt: &tokio::runtime::Runtime, transport: &Transport, addr: &str) -> Result<(), String> {
    rt.block_on(async {
        let ep = transport
            .endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5));
        let call = async {
            let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
            BrickClient::new(ch)
                .get_attr(GetAttrRequest {
                    id: ROOT_ID.to_bytes().to_vec().into(),
                })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

#[test]
fn replica3_over_mutual_tls() {
    let certs = TempDir::new().unwrap();
    write_material(certs.path());
    let brick_dir = dir_of(certs.path(), "brick");
    let brick_arg = brick_dir.display().to_string();
    // Electing a leader needs the bricks to reach each other: over TLS, with the brick
    // certificate as both their server and client identity.
    let set = ReplicaSet::start_with(3, &["--tls-dir", &brick_arg]);
    let addrs = set.addrs();

    let opts = MountOptions {
        tls_dir: Some(dir_of(certs.path(), "mounter")),
        ..MountOptions::replica3()
    };
    let m = Mount::start(&addrs, &opts);
    let file = m.path().join("over-tls.txt");
    std::fs::write(&file, b"sealed in transit\n").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"sealed in transit\n");
    std::fs::create_dir(m.path().join("d")).unwrap();
    set.wait_converged(&[0, 1, 2], Duration::from_secs(30))
        .expect("the three bricks converge over TLS");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Reads are answered by the leader; followers say "not the leader".
    let leader = set.wait_leader(Duration::from_secs(30)).expect("a leader");
    let addr = addrs[leader].to_string();
    // The CSI controller's certificate is another component of the same CA: accepted.
    let controller = Transport::from_dir(&dir_of(certs.path(), "csi-controller")).unwrap();
    get_root(&rt, &controller, &addr).expect("a component of the same CA is accepted");

    // Plain gRPC to a TLS port gets no answer from the file system.
    let plain = get_root(&rt, &Transport::plain(), &addr);
    assert!(plain.is_err(), "plain gRPC was served: {plain:?}");

    // A well-formed certificate from another CA is refused in the handshake.
    let other = TempDir::new().unwrap();
    write_material(other.path());
    let foreign = Transport::from_dir(&dir_of(other.path(), "mounter")).unwrap();
    let refused = get_root(&rt, &foreign, &addr);
    assert!(refused.is_err(), "a foreign CA's certificate was accepted");

    // A certificate the operator signs later with the stored CA (a component Secret that
    // went missing) chains like the original ones.
    let ca_dir = certs.path().join(CA_SECRET);
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(ca_dir.join("ca.key")).unwrap();
    let mounter = components()
        .into_iter()
        .filter(|c| c.name == "mounter")
        .collect::<Vec<_>>();
    let resigned = TempDir::new().unwrap();
    for secret in sign_with(&mounter, &ca_pem, &ca_key).unwrap() {
        for (file, pem) in secret.body["stringData"].as_object().unwrap() {
            std::fs::write(resigned.path().join(file), pem.as_str().unwrap()).unwrap();
        }
    }
    let t = Transport::from_dir(resigned.path()).unwrap();
    get_root(&rt, &t, &addr).expect("a re-signed certificate is accepted");

    // The set still serves its own after the refused attempts.
    get_root(&rt, &controller, &addr).expect("still serving");
    drop(m);
}

#[test]
fn a_broken_tls_directory_stops_the_brick_with_a_clear_error() {
    let certs = TempDir::new().unwrap();
    write_material(certs.path());
    let bad = TempDir::new().unwrap();
    let good = dir_of(certs.path(), "brick");
    std::fs::copy(good.join("ca.crt"), bad.path().join("ca.crt")).unwrap();
    std::fs::copy(good.join("tls.crt"), bad.path().join("tls.crt")).unwrap();
    std::fs::write(bad.path().join("tls.key"), "this is no key\n").unwrap();
    let brick = TempDir::new().unwrap();
    let log = brick.path().join("server.log");
    let mut child = Command::new(server_bin())
        .arg("--brick-dir")
        .arg(brick.path().join("b"))
        .arg("--tls-dir")
        .arg(bad.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run kadalu-server");
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        matches!(status, Some(s) if !s.success()),
        "a brick with a broken key did not stop: {status:?}"
    );
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        err.contains("tls.key is not a PEM file")
            && err.contains(&bad.path().display().to_string()),
        "unclear error: {err}"
    );
}
