//! Each subcommand's API calls. Every command takes a [`kube::Client`] (a real one from the
//! kubeconfig, or a mocked one in tests) and returns the text to print, so the I/O is all
//! here and the decisions are in `validate` and `render`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch, PatchParams,
    PostParams,
};
use kube::discovery::Scope;
use kube::Client;
use serde_json::json;

use crate::cli::{
    GlobalOpts, HealinfoArgs, InstallArgs, LogsArgs, OptionResetArgs, OptionSetArgs, Output,
    StorageAddArgs, StorageListArgs, StorageRemoveArgs,
};
use crate::exit::{Error, Result};
use crate::pool::{storage_class_of, KadaluStorage, KIND};
use crate::render::{self, PvInfo};
use crate::validate;

/// The field manager of every server-side apply, so a later install can tell its own fields.
pub const FIELD_MANAGER: &str = "kubectl-kadalu";
/// The operator's Deployment, whose image `version` reports.
pub const OPERATOR_DEPLOYMENT: &str = "kadalu-operator";

fn pools(client: &Client, ns: &str) -> Api<KadaluStorage> {
    Api::namespaced(client.clone(), ns)
}

fn encode<T: serde::Serialize>(out: Output, v: &T) -> Result<String> {
    match out {
        Output::Json => render::to_json(v),
        _ => render::to_yaml(v),
    }
}

/// storage-add without `--dry-run` checks the nodes and creates the object; with it, prints
/// the object (YAML unless `-o json`) and needs no cluster.
pub async fn storage_add(
    client: Option<&Client>,
    g: &GlobalOpts,
    args: &StorageAddArgs,
) -> Result<String> {
    let obj = validate::build_storage(args, &validate::entries_of(args), &g.namespace)?;
    if args.dry_run {
        return encode(g.output, &obj);
    }
    let client = client.ok_or_else(|| Error::Config("no cluster connection".into()))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = nodes
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    validate::check_nodes_exist(&obj.spec.storage, &names)?;
    let created = match pools(client, &g.namespace)
        .create(&PostParams::default(), &obj)
        .await
    {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(Error::Refused(format!(
                "storage pool {:?} already exists in namespace {:?}",
                args.name, g.namespace
            )))
        }
        Err(e) => return Err(e.into()),
    };
    match g.output {
        Output::Table => Ok(format!(
            "Storage pool {} created ({} bricks, {}); its StorageClass will be {}.\n",
            created.name(),
            created.spec.storage.len(),
            created.spec.pool_type,
            storage_class_of(created.name())
        )),
        o => encode(o, &created),
    }
}

async fn get_pool(client: &Client, ns: &str, name: &str) -> Result<KadaluStorage> {
    pools(client, ns)
        .get(name)
        .await
        .map_err(|e| Error::from_api(e, KIND, name, ns))
}

async fn list_or_get(client: &Client, ns: &str, name: Option<&str>) -> Result<Vec<KadaluStorage>> {
    match name {
        Some(n) => Ok(vec![get_pool(client, ns, n).await?]),
        None => {
            let mut items = pools(client, ns).list(&ListParams::default()).await?.items;
            items.sort_by(|a, b| a.name().cmp(b.name()));
            Ok(items)
        }
    }
}

async fn kadalu_pvs(client: &Client) -> Result<Vec<PvInfo>> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut pvs: Vec<PvInfo> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(render::pv_info)
        .filter(|p| p.storage_class.starts_with("kadalu."))
        .collect();
    pvs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pvs)
}

pub async fn storage_list(
    client: &Client,
    g: &GlobalOpts,
    args: &StorageListArgs,
) -> Result<String> {
    let pools = list_or_get(client, &g.namespace, args.name.as_deref()).await?;
    let pvs = kadalu_pvs(client).await?;
    match g.output {
        Output::Table => Ok(render::pools_table(&pools, &pvs, args.detail, args.status)),
        o => {
            let s: Vec<_> = pools
                .iter()
                .map(|p| render::summary(p, &pvs, args.detail, args.status))
                .collect();
            encode(o, &s)
        }
    }
}

pub async fn storage_remove(
    client: &Client,
    g: &GlobalOpts,
    args: &StorageRemoveArgs,
) -> Result<String> {
    let ns = &g.namespace;
    get_pool(client, ns, &args.name).await?;
    let pvs = kadalu_pvs(client).await?;
    let own = render::pvs_of(&args.name, &pvs);
    if !own.is_empty() {
        let names: Vec<&str> = own.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::Refused(format!(
            "storage pool {:?} still has {} persistent volume(s): {}; delete their PVCs first",
            args.name,
            names.len(),
            names.join(", ")
        )));
    }
    pools(client, ns)
        .delete(&args.name, &DeleteParams::default())
        .await
        .map_err(|e| Error::from_api(e, KIND, &args.name, ns))?;
    Ok(format!("Storage pool {} removed.\n", args.name))
}

pub async fn healinfo(client: &Client, g: &GlobalOpts, args: &HealinfoArgs) -> Result<String> {
    let pools = list_or_get(client, &g.namespace, args.name.as_deref()).await?;
    let rows = render::heal_rows(&pools);
    match g.output {
        Output::Table => Ok(render::heal_table(&rows)),
        o => encode(o, &rows),
    }
}

async fn patch_options(
    client: &Client,
    ns: &str,
    name: &str,
    options: serde_json::Value,
) -> Result<KadaluStorage> {
    // A JSON merge patch: CRDs do not take strategic merge, and only the named keys change.
    let patch = json!({ "spec": { "options": options } });
    pools(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::from_api(e, KIND, name, ns))
}

fn options_out(out: Output, pool: &KadaluStorage, verb: &str) -> Result<String> {
    let opts = pool.spec.options.clone().unwrap_or_default();
    match out {
        Output::Table => {
            let mut s = format!("Options of {} {verb}.", pool.name());
            if opts.is_empty() {
                s.push_str(" No options set.\n");
            } else {
                s.push('\n');
                let mut t = render::Table::new(&["KEY", "VALUE"]);
                for (k, v) in &opts {
                    t.row(vec![k.clone(), v.clone()]);
                }
                s.push_str(&t.render());
            }
            Ok(s)
        }
        o => encode(o, &opts),
    }
}

pub async fn option_set(client: &Client, g: &GlobalOpts, args: &OptionSetArgs) -> Result<String> {
    let pairs = validate::option_pairs(&args.pairs)?;
    let pool = patch_options(client, &g.namespace, &args.name, json!(pairs)).await?;
    options_out(g.output, &pool, "updated")
}

pub async fn option_reset(
    client: &Client,
    g: &GlobalOpts,
    args: &OptionResetArgs,
) -> Result<String> {
    for k in &args.keys {
        validate::check_option_key(k)?;
    }
    let current = get_pool(client, &g.namespace, &args.name).await?;
    let set = current.spec.options.clone().unwrap_or_default();
    let patch = if args.all {
        serde_json::Value::Null
    } else {
        let unknown: Vec<&str> = args
            .keys
            .iter()
            .filter(|k| !set.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let have: Vec<&str> = set.keys().map(String::as_str).collect();
            return Err(Error::Invalid(format!(
                "option(s) not set on {}: {}; set options: {}",
                args.name,
                unknown.join(", "),
                if have.is_empty() {
                    "(none)".to_string()
                } else {
                    have.join(", ")
                }
            )));
        }
        let nulls: BTreeMap<&str, serde_json::Value> = args
            .keys
            .iter()
            .map(|k| (k.as_str(), serde_json::Value::Null))
            .collect();
        json!(nulls)
    };
    let pool = patch_options(client, &g.namespace, &args.name, patch).await?;
    options_out(g.output, &pool, "reset")
}

/// Plugin version plus the operator image; a missing operator is exit code 4 after the
/// plugin's own version has been printed.
pub async fn version(client: &Client, g: &GlobalOpts) -> Result<String> {
    let ours = env!("CARGO_PKG_VERSION");
    let api: Api<Deployment> = Api::namespaced(client.clone(), &g.namespace);
    let dep = api
        .get(OPERATOR_DEPLOYMENT)
        .await
        .map_err(|e| Error::from_api(e, "Deployment", OPERATOR_DEPLOYMENT, &g.namespace))?;
    let images: Vec<String> = dep
        .spec
        .template
        .spec
        .map(|s| s.containers.into_iter().filter_map(|c| c.image).collect())
        .unwrap_or_default();
    match g.output {
        // main has already printed the plugin's own version line.
        Output::Table => Ok(format!(
            "operator image: {}\n",
            if images.is_empty() {
                "(none)".to_string()
            } else {
                images.join(", ")
            }
        )),
        o => encode(o, &json!({ "plugin": ours, "operatorImages": images })),
    }
}

/// The documents of a manifest, skipping empty ones; each must name its apiVersion, kind
/// and metadata.name.
pub fn parse_manifest(text: &str) -> Result<Vec<DynamicObject>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| Error::Invalid(format!("manifest is not valid YAML: {e}")))?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() || doc.as_object().is_some_and(|m| m.is_empty()) {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(doc).map_err(|e| {
            Error::Invalid(format!(
                "manifest document {}: not a Kubernetes object: {e}",
                i + 1
            ))
        })?;
        if obj.types.is_none() || obj.metadata.name.is_none() {
            return Err(Error::Invalid(format!(
                "manifest document {}: needs apiVersion, kind and metadata.name",
                i + 1
            )));
        }
        out.push(obj);
    }
    if out.is_empty() {
        return Err(Error::Invalid("manifest holds no objects".into()));
    }
    Ok(out)
}

fn describe(obj: &DynamicObject) -> String {
    let kind = obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("?");
    let name = obj.metadata.name.as_deref().unwrap_or("?");
    match &obj.metadata.namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Server-side apply of every document, in manifest order (namespace and CRD first is the
/// manifest's job).
pub async fn install(
    client: Option<&Client>,
    g: &GlobalOpts,
    args: &InstallArgs,
    manifest: &str,
) -> Result<String> {
    let objs = parse_manifest(manifest)?;
    if args.dry_run {
        return match g.output {
            Output::Table => Ok(objs
                .iter()
                .map(|o| format!("would apply {}\n", describe(o)))
                .collect()),
            o => encode(o, &objs),
        };
    }
    let client = client.ok_or_else(|| Error::Config("no cluster connection".into()))?;
    let mut out = String::new();
    for obj in &objs {
        let tm = obj
            .types
            .as_ref()
            .ok_or_else(|| Error::Invalid("object without kind".into()))?;
        let gvk = GroupVersionKind::try_from(tm)
            .map_err(|e| Error::Invalid(format!("{}: {e}", describe(obj))))?;
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = obj.metadata.namespace.as_deref().unwrap_or(&g.namespace);
            Api::namespaced_with(client.clone(), ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(obj),
        )
        .await?;
        out.push_str(&format!("applied {}\n", describe(obj)));
    }
    Ok(out)
}

pub async fn logs(client: &Client, g: &GlobalOpts, args: &LogsArgs) -> Result<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &g.namespace);
    let pods = match &args.pod {
        Some(p) => vec![api
            .get(p)
            .await
            .map_err(|e| Error::from_api(e, "Pod", p, &g.namespace))?],
        None => api.list(&ListParams::default()).await?.items,
    };
    if pods.is_empty() {
        return Err(Error::NotFound {
            kind: "Pod",
            name: "(any)".into(),
            namespace: g.namespace.clone(),
        });
    }
    let mut out = String::new();
    for pod in &pods {
        let pname = pod.metadata.name.clone().unwrap_or_default();
        let containers: Vec<String> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let chosen: Vec<String> = match &args.container {
            Some(c) if containers.contains(c) => vec![c.clone()],
            Some(c) if args.pod.is_some() => {
                return Err(Error::NotFound {
                    kind: "Container",
                    name: format!("{pname}/{c} (containers: {})", containers.join(", ")),
                    namespace: g.namespace.clone(),
                })
            }
            Some(_) => continue,
            None => containers,
        };
        for c in chosen {
            let lp = LogParams {
                container: Some(c.clone()),
                tail_lines: args.tail,
                ..LogParams::default()
            };
            let text = api.logs(&pname, &lp).await?;
            out.push_str(&format!("==> {pname}/{c} <==\n{text}"));
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    Ok(out)
}
