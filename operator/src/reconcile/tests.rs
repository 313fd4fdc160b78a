//! Reconcile against a mocked API server: the requests it makes, in order.

use super::*;
use crate::crd::{KadaluStorageSpec, PvReclaimPolicy, StorageEntry, StorageType};
use crate::probe::{BrickReport, ProbeFuture};
use http::{Request, Response};
use kube::client::Body;
use std::sync::Mutex;

struct FakeProbe(Result<BrickReport, String>);
impl BrickProbe for FakeProbe {
    fn probe<'a>(&'a self, _address: &'a str) -> ProbeFuture<'a> {
        let r = self.0.clone();
        Box::pin(async move { r })
    }
}

fn pool(finalized: bool, deleting: bool) -> KadaluStorage {
    let mut k = KadaluStorage::new(
        "p",
        KadaluStorageSpec {
            pool_type: StorageType::Replica1,
            storage: vec![StorageEntry {
                node: Some("n1".into()),
                path: Some("/b".into()),
                ..Default::default()
            }],
            pv_reclaim_policy: PvReclaimPolicy::Delete,
            tolerations: vec![],
            options: Default::default(),
        },
    );
    k.metadata.namespace = Some("store".into());
    k.metadata.uid = Some("u1".into());
    k.metadata.generation = Some(2);
    k.metadata.resource_version = Some("7".into());
    if finalized {
        k.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    if deleting {
        k.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    }
    k
}

type Log = Arc<Mutex<Vec<(String, String, String)>>>;

/// Answers like an API server that holds `ks` and PVs `pvs`; logs (method, path?query, body).
fn mock(ks: KadaluStorage, pvs: Vec<&'static str>) -> (Client, Log, tokio::task::JoinHandle<()>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Default::default();
    let l = log.clone();
    let task = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let body = req.into_body().collect_bytes().await.unwrap();
            let body = String::from_utf8_lossy(&body).to_string();
            l.lock()
                .unwrap()
                .push((method.clone(), uri.clone(), body.clone()));
            let ks_json = serde_json::to_value(&ks).unwrap();
            let answer = if uri.starts_with("/api/v1/persistentvolumes") {
                let items: Vec<_> = pvs
                    .iter()
                    .map(|n| json!({ "metadata": { "name": n }, "spec": { "storageClassName": "kadalu.p" } }))
                    .chain([json!({ "metadata": { "name": "other" }, "spec": { "storageClassName": "standard" } })])
                    .collect();
                json!({ "apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {}, "items": items })
            } else if method == "GET" && uri.contains("kadalustorages") {
                json!({ "apiVersion": "kadalu-operator.storage/v1alpha1", "kind": "KadaluStorageList", "metadata": {}, "items": [ks_json] })
            } else if uri.contains("kadalustorages") {
                ks_json
            } else {
                serde_json::from_str(&body).unwrap()
            };
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(svc, "kadalu"), log, task)
}

fn ctx(client: Client, probe: Result<BrickReport, String>) -> Arc<Context> {
    Arc::new(Context {
        client,
        images: Images::new("reg", "t"),
        probe: Box::new(FakeProbe(probe)),
        metrics: Default::default(),
    })
}

/// A server-side apply under our field manager, forced (kube puts the two in either order).
fn is_apply(uri: &str) -> bool {
    uri.contains("fieldManager=kadalu-operator") && uri.contains("force=true")
}

#[tokio::test]
async fn new_pool_adds_finalizer_applies_everything_and_patches_status() {
    let ks = pool(false, false);
    let (client, log, task) = mock(ks.clone(), vec![]);
    let report = BrickReport {
        capacity_bytes: 1000,
        used_bytes: 100,
        heal_pending_entries: 0,
    };
    let c = ctx(client, Ok(report));
    reconcile(Arc::new(ks), c.clone()).await.unwrap();
    task.abort();
    let log = log.lock().unwrap().clone();
    let seq: Vec<(String, String)> = log
        .iter()
        .map(|(m, u, _)| (m.clone(), u.split('?').next().unwrap().to_string()))
        .collect();
    let want = [
        (
            "PATCH",
            "/apis/kadalu-operator.storage/v1alpha1/namespaces/store/kadalustorages/p",
        ),
        ("PATCH", "/api/v1/namespaces/store/services/p-0"),
        ("PATCH", "/apis/apps/v1/namespaces/store/statefulsets/p-0"),
        ("PATCH", "/apis/storage.k8s.io/v1/storageclasses/kadalu.p"),
        ("PATCH", "/apis/storage.k8s.io/v1/csidrivers/kadalu"),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/kadalu/deployments/kadalu-csi-controller",
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/kadalu/daemonsets/kadalu-csi-node",
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/kadalu/daemonsets/kadalu-mounter",
        ),
        (
            "GET",
            "/apis/kadalu-operator.storage/v1alpha1/kadalustorages",
        ),
        ("PATCH", "/api/v1/namespaces/kadalu/configmaps/kadalu-pools"),
        ("GET", "/api/v1/persistentvolumes"),
        (
            "PATCH",
            "/apis/kadalu-operator.storage/v1alpha1/namespaces/store/kadalustorages/p/status",
        ),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(seq, want);
    assert!(
        log[0].2.contains(FINALIZER) && log[0].2.contains("\"resourceVersion\":\"7\""),
        "{}",
        log[0].2
    );
    for (_, uri, _) in &log[1..8] {
        assert!(is_apply(uri), "{uri}");
    }
    assert!(is_apply(&log[9].1));
    assert!(log[9].2.contains("p.json"));
    let status = &log[11].2;
    assert!(
        status.contains("\"capacityBytes\":1000") && status.contains("\"observedGeneration\":2"),
        "{status}"
    );
    assert!(c
        .metrics
        .render()
        .contains("kadalu_pool_capacity_bytes{pool=\"store/p\"} 1000"));
}

#[tokio::test]
async fn unchanged_status_is_not_patched() {
    let mut ks = pool(true, false);
    let report = BrickReport {
        capacity_bytes: 5,
        used_bytes: 1,
        heal_pending_entries: 0,
    };
    let reports = vec![("p-0-0".to_string(), "n1".to_string(), 0, Ok(report))];
    ks.status = Some(compute_status(
        &ks,
        &reports,
        &[],
        false,
        &Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    ));
    let (client, log, task) = mock(ks.clone(), vec![]);
    reconcile(Arc::new(ks), ctx(client, Ok(report)))
        .await
        .unwrap();
    task.abort();
    let log = log.lock().unwrap();
    assert!(
        !log.iter().any(|(_, u, _)| u.contains("/status")),
        "{log:?}"
    );
    // The finalizer was there already: no metadata patch either.
    assert!(log[0].1.contains("/services/p-0"));
}

#[tokio::test]
async fn deletion_waits_for_pvs_and_names_them() {
    let ks = pool(true, true);
    let (client, log, task) = mock(ks.clone(), vec!["pvc-1", "pvc-2"]);
    let action = reconcile(Arc::new(ks), ctx(client, Err("down".into())))
        .await
        .unwrap();
    task.abort();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].1.starts_with("/api/v1/persistentvolumes"));
    assert!(
        log[1].1.ends_with("/kadalustorages/p/status?"),
        "{}",
        log[1].1
    );
    assert!(log[1].2.contains("pvc-1, pvc-2"), "{}", log[1].2);
    assert!(!log[1].2.contains("other"));
}

#[tokio::test]
async fn deletion_without_pvs_drops_pool_and_finalizer() {
    let ks = pool(true, true);
    let (client, log, task) = mock(ks.clone(), vec![]);
    reconcile(Arc::new(ks), ctx(client, Err("down".into())))
        .await
        .unwrap();
    task.abort();
    let log = log.lock().unwrap();
    let methods: Vec<&str> = log.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(
        methods,
        vec!["GET", "GET", "PATCH", "DELETE", "PATCH"],
        "{log:?}"
    );
    assert!(log[2].1.contains("configmaps/kadalu-pools") && is_apply(&log[2].1));
    // The StorageClass is cluster-scoped, so no owner reference collects it.
    assert!(log[3].1.contains("storageclasses/kadalu.p"), "{}", log[3].1);
    // The pool is being deleted, so its key is gone from the ConfigMap.
    assert!(!log[2].2.contains("p.json"), "{}", log[2].2);
    assert!(log[4].1.contains("/kadalustorages/p?"));
    assert!(log[4].2.contains("\"finalizers\":[]"), "{}", log[4].2);
}

#[test]
fn status_of_a_down_brick_is_degraded() {
    let ks = pool(true, false);
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let st = compute_status(
        &ks,
        &[("p-0-0".into(), "n1".into(), 0, Err("refused".into()))],
        &[],
        false,
        &now,
    );
    let get = |t: &str| st.conditions.iter().find(|c| c.type_ == t).unwrap();
    assert_eq!(get("Ready").status, "False");
    assert!(get("Ready").message.contains("p-0-0"));
    assert_eq!(get("Degraded").status, "True");
    assert_eq!(st.bricks[0].state, "Down");
    assert_eq!(st.capacity_bytes, 0);
}

#[test]
fn replica_set_space_counts_once() {
    let mut ks = pool(true, false);
    ks.spec.pool_type = StorageType::Replica3;
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let r = |c, u, h| {
        Ok(BrickReport {
            capacity_bytes: c,
            used_bytes: u,
            heal_pending_entries: h,
        })
    };
    let reports = vec![
        ("a".into(), "n1".into(), 0, r(100, 10, 0)),
        ("b".into(), "n2".into(), 0, r(90, 12, 5)),
        ("c".into(), "n3".into(), 0, r(100, 10, 0)),
    ];
    let st = compute_status(&ks, &reports, &["x".into()], false, &now);
    assert_eq!(st.capacity_bytes, 90);
    assert_eq!(st.used_bytes, 12);
    assert_eq!(st.pv_count, 1);
    assert_eq!(
        st.conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap()
            .status,
        "True"
    );
}
