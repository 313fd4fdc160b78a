//! Every API-talking command against a mocked API server: asserts the method, path and body
//! of each request and answers with canned objects.

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use kubectl_kadalu::cli::{self, Cli, Command};
use kubectl_kadalu::commands;
use serde_json::{json, Value};
use tower_test::mock;

type Expect = (Method, &'static str, u16, Value);

/// Serves the expected requests in order; returns the bodies the client sent.
fn mock_client(expect: Vec<Expect>) -> (Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (method, path, code, reply) in expect {
            let (req, send) = handle.next_request().await.expect("request expected");
            assert_eq!(req.method(), method);
            let uri = req.uri().to_string();
            assert!(uri.starts_with(path), "{uri} vs {path}");
            let bytes = req.into_body().collect_bytes().await.unwrap();
            bodies.push(if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            });
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
        bodies
    });
    (Client::new(svc, "kadalu"), task)
}

fn parse(args: &[&str]) -> Cli {
    cli::parse(std::iter::once("kubectl-kadalu").chain(args.iter().copied())).unwrap()
}

fn pool(name: &str) -> Value {
    json!({
        "apiVersion": "kadalu-operator.storage/v1alpha1", "kind": "KadaluStorage",
        "metadata": {"name": name, "namespace": "kadalu", "generation": 1},
        "spec": {"type": "Replica3", "storage": [
            {"node": "n1", "device": "/dev/a"}, {"node": "n2", "device": "/dev/a"}, {"node": "n3", "device": "/dev/a"}],
            "pvReclaimPolicy": "delete", "options": {"k": "v"}},
        "status": {"observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllBricksUp"}],
            "bricks": [{"name": format!("{name}-0"), "node": "n1", "setIndex": 0, "state": "Up",
                "capacityBytes": 1073741824u64, "usedBytes": 0, "healPendingEntries": 7}],
            "capacityBytes": 1073741824u64, "usedBytes": 536870912u64, "pvCount": 1}
    })
}

fn pv_list(class: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {}, "items": [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-123"},
         "spec": {"storageClassName": class, "capacity": {"storage": "1Gi"}}, "status": {"phase": "Bound"}}]})
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404})
}

const POOLS: &str = "/apis/kadalu-operator.storage/v1alpha1/namespaces/kadalu/kadalustorages";

#[tokio::test]
async fn storage_add_checks_nodes_then_creates() {
    let cli = parse(&[
        "storage-add",
        "p1",
        "--type",
        "Replica1",
        "--device",
        "n1:/dev/vdc",
    ]);
    let Command::StorageAdd(a) = &cli.command else {
        panic!()
    };
    let nodes = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}]});
    let (c, t) = mock_client(vec![
        (Method::GET, "/api/v1/nodes", 200, nodes),
        (Method::POST, POOLS, 201, pool("p1")),
    ]);
    let out = commands::storage_add(Some(&c), &cli.global, a)
        .await
        .unwrap();
    assert!(out.contains("Storage pool p1 created"), "{out}");
    let bodies = t.await.unwrap();
    assert_eq!(
        bodies[1]["spec"]["storage"][0],
        json!({"node": "n1", "device": "/dev/vdc"})
    );
    assert_eq!(bodies[1]["spec"]["type"], "Replica1");
}

#[tokio::test]
async fn storage_add_rejects_unknown_node_before_creating() {
    let cli = parse(&[
        "storage-add",
        "p1",
        "--type",
        "Replica1",
        "--device",
        "ghost:/dev/vdc",
    ]);
    let Command::StorageAdd(a) = &cli.command else {
        panic!()
    };
    let nodes = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": []});
    let (c, t) = mock_client(vec![(Method::GET, "/api/v1/nodes", 200, nodes)]);
    let e = commands::storage_add(Some(&c), &cli.global, a)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    t.await.unwrap();
}

#[tokio::test]
async fn storage_list_shows_pool_and_detail() {
    let cli = parse(&["storage-list", "--detail"]);
    let Command::StorageList(a) = &cli.command else {
        panic!()
    };
    let list = json!({"apiVersion": "kadalu-operator.storage/v1alpha1", "kind": "KadaluStorageList", "metadata": {}, "items": [pool("p1")]});
    let (c, t) = mock_client(vec![
        (Method::GET, POOLS, 200, list),
        (
            Method::GET,
            "/api/v1/persistentvolumes",
            200,
            pv_list("kadalu.p1"),
        ),
    ]);
    let out = commands::storage_list(&c, &cli.global, a).await.unwrap();
    assert!(out.contains("p1    Replica3  Ready"), "{out}");
    assert!(
        out.contains("1.0 GiB") && out.contains("512.0 MiB"),
        "{out}"
    );
    assert!(out.contains("p1-0") && out.contains("pvc-123"), "{out}");
    t.await.unwrap();
}

#[tokio::test]
async fn storage_remove_refuses_with_pv_names() {
    let cli = parse(&["storage-remove", "p1"]);
    let Command::StorageRemove(a) = &cli.command else {
        panic!()
    };
    let (c, t) = mock_client(vec![
        (
            Method::GET,
            "/apis/kadalu-operator.storage/v1alpha1/namespaces/kadalu/kadalustorages/p1",
            200,
            pool("p1"),
        ),
        (
            Method::GET,
            "/api/v1/persistentvolumes",
            200,
            pv_list("kadalu.p1"),
        ),
    ]);
    let e = commands::storage_remove(&c, &cli.global, a)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3);
    assert!(e.to_string().contains("pvc-123"), "{e}");
    t.await.unwrap();
}

#[tokio::test]
async fn storage_remove_deletes_an_empty_pool_and_reports_missing_ones() {
    let cli = parse(&["storage-remove", "p1"]);
    let Command::StorageRemove(a) = &cli.command else {
        panic!()
    };
    let path = "/apis/kadalu-operator.storage/v1alpha1/namespaces/kadalu/kadalustorages/p1";
    let (c, t) = mock_client(vec![
        (Method::GET, path, 200, pool("p1")),
        (
            Method::GET,
            "/api/v1/persistentvolumes",
            200,
            pv_list("kadalu.other"),
        ),
        (Method::DELETE, path, 200, pool("p1")),
    ]);
    let out = commands::storage_remove(&c, &cli.global, a).await.unwrap();
    assert!(out.contains("removed"));
    t.await.unwrap();
    let (c, t) = mock_client(vec![(Method::GET, path, 404, not_found())]);
    let e = commands::storage_remove(&c, &cli.global, a)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4);
    t.await.unwrap();
}

#[tokio::test]
async fn healinfo_lists_pending_entries() {
    let cli = parse(&["healinfo", "--name", "p1"]);
    let Command::Healinfo(a) = &cli.command else {
        panic!()
    };
    let (c, t) = mock_client(vec![(
        Method::GET,
        "/apis/kadalu-operator.storage/v1alpha1/namespaces/kadalu/kadalustorages/p1",
        200,
        pool("p1"),
    )]);
    let out = commands::healinfo(&c, &cli.global, a).await.unwrap();
    assert!(
        out.contains("p1-0") && out.lines().nth(1).unwrap().trim_end().ends_with('7'),
        "{out}"
    );
    t.await.unwrap();
}

#[tokio::test]
async fn option_set_and_reset_send_merge_patches() {
    let path = "/apis/kadalu-operator.storage/v1alpha1/namespaces/kadalu/kadalustorages/p1";
    let cli = parse(&["option-set", "p1", "a.b", "on"]);
    let Command::OptionSet(a) = &cli.command else {
        panic!()
    };
    let (c, t) = mock_client(vec![(Method::PATCH, path, 200, pool("p1"))]);
    commands::option_set(&c, &cli.global, a).await.unwrap();
    assert_eq!(
        t.await.unwrap()[0],
        json!({"spec": {"options": {"a.b": "on"}}})
    );

    let cli = parse(&["option-reset", "p1", "k"]);
    let Command::OptionReset(a) = &cli.command else {
        panic!()
    };
    let (c, t) = mock_client(vec![
        (Method::GET, path, 200, pool("p1")),
        (Method::PATCH, path, 200, pool("p1")),
    ]);
    commands::option_reset(&c, &cli.global, a).await.unwrap();
    assert_eq!(
        t.await.unwrap()[1],
        json!({"spec": {"options": {"k": null}}})
    );

    let cli = parse(&["option-reset", "p1", "unset"]);
    let Command::OptionReset(a) = &cli.command else {
        panic!()
    };
    let (c, t) = mock_client(vec![(Method::GET, path, 200, pool("p1"))]);
    assert_eq!(
        commands::option_reset(&c, &cli.global, a)
            .await
            .unwrap_err()
            .exit_code(),
        2
    );
    t.await.unwrap();
}

#[tokio::test]
async fn version_reports_operator_image() {
    let cli = parse(&["version"]);
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kadalu-operator"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "op", "image": "kadalu/operator:0.1"}]}}}});
    let (c, t) = mock_client(vec![(
        Method::GET,
        "/apis/apps/v1/namespaces/kadalu/deployments/kadalu-operator",
        200,
        dep,
    )]);
    let out = commands::version(&c, &cli.global).await.unwrap();
    assert!(out.contains("kadalu/operator:0.1"), "{out}");
    t.await.unwrap();
}

#[tokio::test]
async fn install_applies_each_document_server_side() {
    let cli = parse(&["install", "--manifest", "x.yaml"]);
    let Command::Install(a) = &cli.command else {
        panic!()
    };
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kadalu\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: op\n  namespace: kadalu\n";
    let core = json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["get", "patch"]},
        {"name": "serviceaccounts", "singularName": "serviceaccount", "namespaced": true, "kind": "ServiceAccount", "verbs": ["get", "patch"]}]});
    let (c, t) = mock_client(vec![
        (Method::GET, "/api/v1", 200, core.clone()),
        (
            Method::PATCH,
            "/api/v1/namespaces/kadalu?&fieldManager=kubectl-kadalu",
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kadalu"}}),
        ),
        (Method::GET, "/api/v1", 200, core),
        (
            Method::PATCH,
            "/api/v1/namespaces/kadalu/serviceaccounts/op",
            200,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "op"}}),
        ),
    ]);
    let out = commands::install(Some(&c), &cli.global, a, manifest)
        .await
        .unwrap();
    assert!(
        out.contains("applied Namespace kadalu")
            && out.contains("applied ServiceAccount kadalu/op"),
        "{out}"
    );
    let bodies = t.await.unwrap();
    assert_eq!(bodies[1]["kind"], "Namespace");
}

#[tokio::test]
async fn logs_reads_each_container() {
    let cli = parse(&["logs", "--pod", "op-1", "--tail", "5"]);
    let Command::Logs(a) = &cli.command else {
        panic!()
    };
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "op-1"}, "spec": {"containers": [{"name": "main"}]}});
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/api/v1/namespaces/kadalu/pods/op-1");
        send.send_response(Response::new(Body::from(serde_json::to_vec(&pod).unwrap())));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/api/v1/namespaces/kadalu/pods/op-1/log");
        let q = req.uri().query().unwrap_or("").to_string();
        assert!(
            q.contains("container=main") && q.contains("tailLines=5"),
            "{q}"
        );
        send.send_response(Response::new(Body::from(b"hello\n".to_vec())));
    });
    let out = commands::logs(&Client::new(svc, "kadalu"), &cli.global, a)
        .await
        .unwrap();
    assert_eq!(out, "==> op-1/main <==\nhello\n");
    task.await.unwrap();
}
