//! `kadalu-operator`: runs the controller (`run`), or prints the CRD (`crd`).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use kadalu_operator::crd::KadaluStorage;
use kadalu_operator::desired::Images;
use kadalu_operator::metrics::Metrics;
use kadalu_operator::probe::GrpcProbe;
use kadalu_operator::reconcile::{error_policy, reconcile, Context};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Kubernetes operator for kadalu pools")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the KadaluStorage CustomResourceDefinition as YAML.
    Crd,
    /// Print, as YAML, the objects the operator would apply for the KadaluStorage objects in
    /// FILE (a preview; objects without a uid get a placeholder owner uid).
    Render {
        file: std::path::PathBuf,
        #[arg(long, env = "KADALU_REGISTRY", default_value = "docker.io/kadalu")]
        registry: String,
        #[arg(long, env = "KADALU_TAG", default_value = "latest")]
        tag: String,
        /// Render with mutual TLS (the default of `run`); key material is shown as
        /// placeholders.
        #[arg(long, env = "KADALU_TLS", default_value_t = true, action = clap::ArgAction::Set)]
        tls: bool,
    },
    /// Watch KadaluStorage objects and reconcile them.
    Run {
        /// Registry of the kadalu image (`<registry>/kadalu:<tag>`).
        #[arg(long, env = "KADALU_REGISTRY", default_value = "docker.io/kadalu")]
        registry: String,
        #[arg(long, env = "KADALU_TAG", default_value = "latest")]
        tag: String,
        /// The kubelet's root directory on the nodes.
        #[arg(long, env = "KADALU_KUBELET_DIR", default_value = "/var/lib/kubelet")]
        kubelet_dir: String,
        /// Serve Prometheus metrics here.
        #[arg(long, env = "KADALU_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
        metrics_listen: SocketAddr,
        /// Deadline of each brick probe, in seconds.
        #[arg(long, default_value_t = 5)]
        probe_timeout: u64,
        /// Mutual TLS between bricks, the CSI driver, the mounter and the operator, with
        /// a CA the operator makes (Secrets `kadalu-tls-*` in namespace kadalu). `false`:
        /// plain gRPC, for clusters whose network is trusted.
        #[arg(long, env = "KADALU_TLS", default_value_t = true, action = clap::ArgAction::Set)]
        tls: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Args::parse().cmd {
        Cmd::Crd => print!("{}", kadalu_operator::crd::crd_yaml()?),
        Cmd::Render {
            file,
            registry,
            tag,
            tls,
        } => {
            let meta =
                std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?;
            anyhow::ensure!(
                meta.len() <= 1 << 20,
                "{} is over 1 MiB; a KadaluStorage file is far smaller",
                file.display()
            );
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut pools: Vec<KadaluStorage> =
                serde_saphyr::from_multiple(&text).with_context(|| {
                    format!(
                        "{} is not a list of KadaluStorage YAML documents",
                        file.display()
                    )
                })?;
            for p in &mut pools {
                p.metadata
                    .uid
                    .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
            }
            let mut images = Images::new(&registry, &tag);
            if tls {
                images.tls = Some(kadalu_operator::tls::ComponentPem::placeholder("brick"));
            }
            let mut docs = vec![];
            for p in &pools {
                docs.extend(kadalu_operator::desired::pool_objects(p, &images)?);
            }
            let (cm, errs) = kadalu_operator::desired::pools_configmap(&pools);
            if let Some(e) = errs.into_iter().next() {
                return Err(e.into());
            }
            docs.push(cm);
            docs.extend(kadalu_operator::desired::csi_objects(&images));
            for d in docs {
                println!("---\n{}", serde_saphyr::to_string(&d.body)?);
            }
        }
        Cmd::Run {
            registry,
            tag,
            kubelet_dir,
            metrics_listen,
            probe_timeout,
            tls,
        } => {
            let client = Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let mut images = Images::new(&registry, &tag);
            images.kubelet_dir = kubelet_dir;
            let mut transport = kadalu_proto::transport::Transport::plain();
            if tls {
                if kadalu_operator::tls::ensure(&client)
                    .await
                    .context("creating the TLS Secrets in namespace kadalu")?
                {
                    tracing::info!("created the kadalu CA or missing component certificates");
                }
                let own = kadalu_operator::tls::read_component(&client, "operator").await?;
                transport = own.transport("Secret kadalu/kadalu-tls-operator")?;
                images.tls = Some(kadalu_operator::tls::read_component(&client, "brick").await?);
            }
            let metrics = Arc::new(Metrics::default());
            let listener = tokio::net::TcpListener::bind(metrics_listen)
                .await
                .with_context(|| format!("binding --metrics-listen {metrics_listen}"))?;
            tokio::spawn(kadalu_operator::metrics::serve(listener, metrics.clone()));
            let ctx = Arc::new(Context {
                client: client.clone(),
                images,
                probe: Box::new(GrpcProbe {
                    deadline: Duration::from_secs(probe_timeout.max(1)),
                    transport,
                }),
                metrics,
            });
            let api: Api<KadaluStorage> = Api::all(client);
            let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::all(ctx.client.clone());
            let svc: Api<k8s_openapi::api::core::v1::Service> = Api::all(ctx.client.clone());
            Controller::new(api, watcher::Config::default())
                .owns(
                    sts,
                    watcher::Config::default().labels("app.kubernetes.io/name=kadalu-brick"),
                )
                .owns(
                    svc,
                    watcher::Config::default().labels("app.kubernetes.io/name=kadalu-brick"),
                )
                .shutdown_on_signal()
                .run(reconcile, error_policy, ctx)
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::warn!("controller: {e}");
                    }
                })
                .await;
        }
    }
    Ok(())
}
