//! Makes the cluster match [`crate::desired`]: server-side apply of every object under the
//! field manager `kadalu-operator`, a finalizer that keeps a pool while PersistentVolumes
//! of its StorageClass exist, and a status patch only when the status changed (a patch
//! would otherwise trigger another reconcile, forever).

use crate::crd::{BrickStatus, KadaluStorage, KadaluStorageStatus};
use crate::desired::{self, Desired, Images};
use crate::metrics::Metrics;
use crate::probe::BrickProbe;
use crate::Error;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub const FIELD_MANAGER: &str = "kadalu-operator";
pub const FINALIZER: &str = "kadalu-operator.storage/pvs";

pub struct Context {
    pub client: Client,
    pub images: Images,
    pub probe: Box<dyn BrickProbe>,
    pub metrics: Arc<Metrics>,
}

/// Server-side applies one object.
pub async fn apply(client: &Client, d: &Desired) -> Result<(), Error> {
    let (group, version) = match d.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", d.api_version),
    };
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, d.kind));
    let api: Api<DynamicObject> = match &d.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        &d.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&d.body),
    )
    .await?;
    Ok(())
}

/// PersistentVolumes of the pool's StorageClass.
pub async fn pool_pvs(client: &Client, pool: &str) -> Result<Vec<String>, Error> {
    let sc = desired::storage_class_name(pool);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    Ok(pvs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
                == Some(sc.as_str())
        })
        .map(|pv| pv.name_any())
        .collect())
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps a condition's transition time when its status did not change, so an unchanged
/// pool yields an identical status and no patch.
pub fn carry_transition_times(old: Option<&KadaluStorageStatus>, new: &mut KadaluStorageStatus) {
    let Some(old) = old else { return };
    for c in &mut new.conditions {
        if let Some(o) = old
            .conditions
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

/// Status from the probes: pure.
pub fn compute_status(
    ks: &KadaluStorage,
    reports: &[(
        String,
        String,
        u32,
        Result<crate::probe::BrickReport, String>,
    )],
    pvs: &[String],
    deleting: bool,
    now: &Time,
) -> KadaluStorageStatus {
    let generation = ks.metadata.generation;
    let mut bricks = vec![];
    let mut per_set: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    let mut down = vec![];
    let mut healing = 0;
    for (name, node, set, r) in reports {
        let (state, rep) = match r {
            Ok(rep) => ("Up", *rep),
            Err(_) => {
                down.push(name.clone());
                ("Down", Default::default())
            }
        };
        healing += rep.heal_pending_entries;
        // A set's bricks hold the same data: the set's space is the smallest brick's.
        if r.is_ok() {
            let e = per_set.entry(*set).or_insert((u64::MAX, 0));
            e.0 = e.0.min(rep.capacity_bytes);
            e.1 = e.1.max(rep.used_bytes);
        }
        let index = bricks.len();
        bricks.push(BrickStatus {
            source: ks
                .spec
                .storage
                .get(index)
                .map(crate::layout::entry_label)
                .unwrap_or_default(),
            name: name.clone(),
            node: node.clone(),
            set_index: *set,
            state: state.into(),
            capacity_bytes: rep.capacity_bytes,
            used_bytes: rep.used_bytes,
            heal_pending_entries: rep.heal_pending_entries,
        });
    }
    let ready = down.is_empty() && !deleting;
    let mut conditions = vec![
        condition(
            "Ready",
            ready,
            if ready {
                "BricksUp"
            } else if deleting {
                "Deleting"
            } else {
                "BricksDown"
            },
            if deleting && !pvs.is_empty() {
                format!("deletion waits for PersistentVolumes: {}", pvs.join(", "))
            } else if down.is_empty() {
                format!("{} bricks answer", bricks.len())
            } else {
                format!("bricks not answering: {}", down.join(", "))
            },
            generation,
            now,
        ),
        condition(
            "Progressing",
            healing > 0,
            if healing > 0 { "Healing" } else { "Settled" },
            format!("{healing} log entries pending replication"),
            generation,
            now,
        ),
    ];
    conditions.push(condition(
        "Degraded",
        !down.is_empty(),
        if down.is_empty() {
            "AllBricksUp"
        } else {
            "BricksDown"
        },
        format!("{} of {} bricks down", down.len(), bricks.len()),
        generation,
        now,
    ));
    KadaluStorageStatus {
        conditions,
        observed_generation: generation,
        capacity_bytes: per_set
            .values()
            .map(|v| if v.0 == u64::MAX { 0 } else { v.0 })
            .sum(),
        used_bytes: per_set.values().map(|v| v.1).sum(),
        bricks,
        pv_count: pvs.len() as u32,
    }
}

/// The pool type the recorded bricks were laid out for: a Replica3 set's first two bricks
/// share a set index, Replica1 bricks never do. `None` with fewer than two bricks.
fn applied_type(bricks: &[BrickStatus]) -> Option<crate::crd::StorageType> {
    match bricks {
        [a, b, ..] if a.set_index == b.set_index => Some(crate::crd::StorageType::Replica3),
        [_, _, ..] => Some(crate::crd::StorageType::Replica1),
        _ => None,
    }
}

/// Why the spec cannot be applied as it stands: invalid on its own, or an unsafe change
/// from the bricks last applied. Pure.
pub fn spec_problem(ks: &KadaluStorage) -> Option<String> {
    if let Err(e) = ks.spec.validate() {
        return Some(e.to_string());
    }
    let applied = ks
        .status
        .as_ref()
        .map(|s| s.bricks.as_slice())
        .unwrap_or(&[]);
    crate::layout::check_change(&ks.spec, applied_type(applied), applied)
        .err()
        .map(|e| e.to_string())
}

/// The status for a spec the operator refuses: the bricks stay as last applied (they are
/// what the next spec is compared with), `Ready` is False and says what to fix.
pub fn refused_status(ks: &KadaluStorage, problem: &str, now: &Time) -> KadaluStorageStatus {
    let mut st = ks.status.clone().unwrap_or_default();
    let generation = ks.metadata.generation;
    st.observed_generation = generation;
    st.conditions.retain(|c| c.type_ != "Ready");
    st.conditions.insert(
        0,
        condition(
            "Ready",
            false,
            "SpecRefused",
            format!("the spec was not applied: {problem}"),
            generation,
            now,
        ),
    );
    st
}

async fn probe_all(
    ctx: &Context,
    ks: &KadaluStorage,
    ns: &str,
) -> Vec<(
    String,
    String,
    u32,
    Result<crate::probe::BrickReport, String>,
)> {
    let pool = ks.name_any();
    let mut out = vec![];
    for (i, e) in ks.spec.storage.iter().enumerate() {
        let addr = desired::brick_address(&pool, ns, i);
        let r = ctx.probe.probe(&addr).await;
        out.push((
            format!("{pool}-{i}-0"),
            e.node.clone().unwrap_or_default(),
            desired::set_index(ks.spec.pool_type, i),
            r,
        ));
    }
    out
}

async fn patch_status(
    client: &Client,
    ks: &KadaluStorage,
    ns: &str,
    status: KadaluStorageStatus,
) -> Result<(), Error> {
    if ks.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<KadaluStorage> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        &ks.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn set_finalizers(
    client: &Client,
    ks: &KadaluStorage,
    ns: &str,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let api: Api<KadaluStorage> = Api::namespaced(client.clone(), ns);
    // The resourceVersion makes this a compare-and-swap: a concurrent edit fails the patch
    // and the next reconcile sees it, instead of losing someone else's finalizer.
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": ks.resource_version() } });
    api.patch(
        &ks.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// Applies the pool ConfigMap from every KadaluStorage of the cluster.
/// Deletes the pool's StorageClass (cluster-scoped, so not garbage-collected
/// through an owner reference); already gone is fine.
async fn delete_storage_class(client: &Client, pool: &str) -> Result<(), Error> {
    let api: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    match api
        .delete(&desired::storage_class_name(pool), &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn apply_configmap(client: &Client) -> Result<(), Error> {
    let all: Api<KadaluStorage> = Api::all(client.clone());
    let list = all.list(&ListParams::default()).await?;
    let (cm, errs) = desired::pools_configmap(&list.items);
    for e in errs {
        tracing::warn!("pool left out of kadalu-pools: {e}");
    }
    apply(client, &cm).await
}

/// One reconcile of one KadaluStorage.
pub async fn reconcile(ks: Arc<KadaluStorage>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .reconciles
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = reconcile_inner(&ks, &ctx).await;
    if r.is_err() {
        ctx.metrics
            .reconcile_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

async fn reconcile_inner(ks: &KadaluStorage, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = ks
        .namespace()
        .ok_or(Error::MissingMeta("metadata.namespace"))?;
    let pool = ks.name_any();
    let key = format!("{ns}/{pool}");
    let has_finalizer = ks.finalizers().iter().any(|f| f == FINALIZER);
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    if ks.metadata.deletion_timestamp.is_some() {
        let pvs = pool_pvs(client, &pool).await?;
        if !pvs.is_empty() {
            let mut st = compute_status(ks, &[], &pvs, true, &now);
            carry_transition_times(ks.status.as_ref(), &mut st);
            patch_status(client, ks, &ns, st).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        // The object is leaving: the ConfigMap built now no longer lists it.
        apply_configmap(client).await?;
        delete_storage_class(client, &pool).await?;
        if has_finalizer {
            let rest = ks
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            set_finalizers(client, ks, &ns, rest).await?;
        }
        ctx.metrics.remove_pool(&key);
        return Ok(Action::await_change());
    }

    if let Some(problem) = spec_problem(ks) {
        // Nothing is applied: a half-applied reshaping is worse than none. The next edit
        // of the object triggers the next reconcile.
        tracing::warn!("KadaluStorage {key}: {problem}");
        let mut st = refused_status(ks, &problem, &now);
        carry_transition_times(ks.status.as_ref(), &mut st);
        patch_status(client, ks, &ns, st).await?;
        return Ok(Action::await_change());
    }

    if !has_finalizer {
        let mut f = ks.finalizers().to_vec();
        f.push(FINALIZER.into());
        set_finalizers(client, ks, &ns, f).await?;
    }
    let objects = desired::pool_objects(ks, &ctx.images)?;
    for d in objects
        .iter()
        .chain(desired::csi_objects(&ctx.images).iter())
    {
        apply(client, d).await?;
    }
    apply_configmap(client).await?;
    let pvs = pool_pvs(client, &pool).await?;
    let reports = probe_all(ctx, ks, &ns).await;
    let mut st = compute_status(ks, &reports, &pvs, false, &now);
    carry_transition_times(ks.status.as_ref(), &mut st);
    ctx.metrics.set_pool(&key, st.capacity_bytes, st.used_bytes);
    patch_status(client, ks, &ns, st).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Backoff after a failed reconcile.
pub fn error_policy(_ks: Arc<KadaluStorage>, e: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!("reconcile failed: {e}");
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests;
