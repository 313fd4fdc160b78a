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
            if method == "GET" && uri.contains("/secrets/") {
                // No TLS material yet: tls::ensure makes it.
                let gone = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found" });
                send.send_response(
                    Response::builder()
                        .status(404)
                        .body(Body::from(serde_json::to_vec(&gone).unwrap()))
                        .unwrap(),
                );
                continue;
            }
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
    for (_, uri, _) in &log[1..7] {
        assert!(is_apply(uri), "{uri}");
    }
    assert!(is_apply(&log[8].1));
    assert!(log[8].2.contains("p.json"));
    let status = &log[10].2;
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

/// A pool as the operator left it: status written for `storage` with every brick up.
fn applied_pool(t: StorageType, storage: Vec<StorageEntry>) -> KadaluStorage {
    let mut ks = pool(true, false);
    ks.spec.pool_type = t;
    ks.spec.storage = storage;
    let report = BrickReport {
        capacity_bytes: 10,
        used_bytes: 1,
        heal_pending_entries: 0,
    };
    let reports: Vec<_> = (0..ks.spec.storage.len())
        .map(|i| {
            (
                format!("p-{i}-0"),
                ks.spec.storage[i].node.clone().unwrap_or_default(),
                desired::set_index(t, i),
                Ok(report),
            )
        })
        .collect();
    ks.status = Some(compute_status(
        &ks,
        &reports,
        &[],
        false,
        &Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    ));
    ks
}

use crate::crd::fixtures::at;

#[tokio::test]
async fn removing_an_entry_applies_nothing_and_says_why_in_ready() {
    let mut ks = applied_pool(StorageType::Replica1, vec![at("n1", "/a"), at("n2", "/b")]);
    let before = ks.status.clone().unwrap();
    ks.spec.storage.pop();
    ks.metadata.generation = Some(3);
    let (client, log, task) = mock(ks.clone(), vec![]);
    let action = reconcile(Arc::new(ks), ctx(client, Ok(BrickReport::default())))
        .await
        .unwrap();
    task.abort();
    assert_eq!(action, Action::await_change());
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "only the status is written: {log:?}");
    assert!(
        log[0].1.ends_with("/kadalustorages/p/status?"),
        "{}",
        log[0].1
    );
    let patch: serde_json::Value = serde_json::from_str(&log[0].2).unwrap();
    let st: KadaluStorageStatus = serde_json::from_value(patch["status"].clone()).unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "SpecRefused");
    assert!(
        ready.message.contains("cannot be removed"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("p-1-0"), "{}", ready.message);
    assert_eq!(st.observed_generation, Some(3));
    // The recorded bricks stay what was applied: the next spec is checked against them.
    assert_eq!(st.bricks, before.bricks);
}

#[tokio::test]
async fn replacing_a_replica3_brick_reapplies_its_statefulset_only_changed() {
    let old = vec![at("n1", "/a"), at("n2", "/a"), at("n3", "/a")];
    let mut ks = applied_pool(StorageType::Replica3, old);
    ks.spec.storage[1] = StorageEntry {
        node: Some("n2".into()),
        device: Some("/dev/sdz".into()),
        ..Default::default()
    };
    let (client, log, task) = mock(ks.clone(), vec![]);
    reconcile(
        Arc::new(ks),
        ctx(
            client,
            Ok(BrickReport {
                capacity_bytes: 10,
                used_bytes: 1,
                heal_pending_entries: 0,
            }),
        ),
    )
    .await
    .unwrap();
    task.abort();
    let log = log.lock().unwrap();
    let sts: Vec<_> = log
        .iter()
        .filter(|(m, u, _)| m == "PATCH" && u.contains("/statefulsets/") && is_apply(u))
        .collect();
    assert_eq!(sts.len(), 3, "{log:?}");
    let body = |name: &str| {
        let (_, _, b) = sts
            .iter()
            .find(|(_, u, _)| u.contains(&format!("/statefulsets/{name}?")))
            .unwrap();
        serde_json::from_str::<serde_json::Value>(b).unwrap()
    };
    // The replaced brick keeps its name, address and set; only its storage differs.
    let replaced = body("p-1");
    let init = &replaced["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["env"][0]["value"], "/dev/sdz");
    let args = replaced["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("p-1-0.p-1.store.svc:24007"), "{args}");
    assert!(args.contains("p-set0"), "{args}");
    // The new source is recorded, so a second replacement in the set is judged from here.
    let status = log
        .iter()
        .rev()
        .find(|(_, u, _)| u.contains("/status"))
        .unwrap();
    assert!(status.2.contains("n2/device:/dev/sdz"), "{}", status.2);
}

/// One API request as RBAC sees it: verb, API group, resource (with subresource), and
/// namespace (`None`: cluster-scoped or across all namespaces).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
}

/// The accesses one logged request needs. A server-side apply may create the object, so
/// it needs `create` as well as `patch`.
fn accesses(method: &str, uri: &str) -> Vec<Access> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts[0] {
        "api" => (String::new(), &parts[2..]),
        "apis" => (parts[1].to_string(), &parts[3..]),
        other => panic!("not an API path: {other} in {uri}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, named) = match rest {
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        [r, _name, sub] => (format!("{r}/{sub}"), true),
        _ => panic!("unexpected path {uri}"),
    };
    let verbs: Vec<&str> = match (method, named) {
        ("GET", true) => vec!["get"],
        ("GET", false) if query.contains("watch=true") => vec!["watch"],
        ("GET", false) => vec!["list"],
        ("POST", _) => vec!["create"],
        ("PATCH", _) if is_apply(uri) => vec!["patch", "create"],
        ("PATCH", _) => vec!["patch"],
        ("PUT", _) => vec!["update"],
        ("DELETE", _) => vec!["delete"],
        _ => panic!("unexpected method {method} {uri}"),
    };
    verbs
        .into_iter()
        .map(|v| Access {
            verb: v.into(),
            group: group.clone(),
            resource: resource.clone(),
            namespace: namespace.clone(),
        })
        .collect()
}

/// The operator's grants in manifests/operator.yaml: (rule, namespace of a Role or `None`
/// for the ClusterRole) expanded to single accesses.
fn granted() -> Vec<Access> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/operator.yaml"),
    )
    .unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut out = vec![];
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        if !(kind == "ClusterRole" || kind == "Role") || d["metadata"]["name"] != "kadalu-operator"
        {
            continue;
        }
        let ns = d["metadata"]["namespace"].as_str().map(str::to_string);
        for rule in d["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        out.push(Access {
                            verb: v.as_str().unwrap().into(),
                            group: g.as_str().unwrap().into(),
                            resource: r.as_str().unwrap().into(),
                            namespace: ns.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

fn allows(grant: &Access, want: &Access) -> bool {
    grant.verb == want.verb
        && grant.group == want.group
        && grant.resource == want.resource
        && (grant.namespace.is_none() || grant.namespace == want.namespace)
}

/// Every request the operator makes in its flows (TLS set-up, a new pool with TLS, a
/// refused spec, a deletion waiting for PVs, a deletion) is allowed by the manifest's RBAC,
/// and every grant is used by one of them.
#[tokio::test]
async fn rbac_grants_exactly_what_the_operator_uses() {
    let mut log = vec![];
    let run = |ks: KadaluStorage, pvs: Vec<&'static str>, tls: bool| {
        let (client, l, task) = mock(ks.clone(), pvs);
        let mut c = Context {
            client: client.clone(),
            images: Images::new("reg", "t"),
            probe: Box::new(FakeProbe(Ok(BrickReport::default()))),
            metrics: Default::default(),
        };
        if tls {
            c.images.tls = Some(crate::tls::ComponentPem::placeholder("brick"));
        }
        async move {
            if tls {
                crate::tls::ensure(&client).await.unwrap();
            }
            reconcile(Arc::new(ks), Arc::new(c)).await.unwrap();
            task.abort();
            let v = l.lock().unwrap().clone();
            v
        }
    };
    log.extend(run(pool(false, false), vec![], true).await);
    let mut bad = pool(true, false);
    bad.spec.storage.clear();
    log.extend(run(bad, vec![], false).await);
    log.extend(run(pool(true, true), vec!["pvc-1"], false).await);
    log.extend(run(pool(true, true), vec![], false).await);

    let mut used: Vec<Access> = log.iter().flat_map(|(m, u, _)| accesses(m, u)).collect();
    // Made outside reconcile: the controller's watches (kube-runtime lists, then watches,
    // across all namespaces), and the owner references' blockOwnerDeletion, which the API
    // server authorises as an update of the owner's finalizers.
    for (g, r) in [
        ("kadalu-operator.storage", "kadalustorages"),
        ("apps", "statefulsets"),
        ("", "services"),
    ] {
        for v in ["list", "watch"] {
            used.push(Access {
                verb: v.into(),
                group: g.into(),
                resource: r.into(),
                namespace: None,
            });
        }
    }
    used.push(Access {
        verb: "update".into(),
        group: "kadalu-operator.storage".into(),
        resource: "kadalustorages/finalizers".into(),
        namespace: Some("store".into()),
    });
    used.sort();
    used.dedup();

    let grants = granted();
    let denied: Vec<_> = used
        .iter()
        .filter(|u| !grants.iter().any(|g| allows(g, u)))
        .collect();
    assert!(denied.is_empty(), "the manifest's RBAC denies: {denied:#?}");
    let unused: Vec<_> = grants
        .iter()
        .filter(|g| !used.iter().any(|u| allows(g, u)))
        .collect();
    assert!(unused.is_empty(), "granted but never used: {unused:#?}");
}
