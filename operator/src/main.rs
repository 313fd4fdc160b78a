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
        Cmd::Run {
            registry,
            tag,
            kubelet_dir,
            metrics_listen,
            probe_timeout,
        } => {
            let client = Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let mut images = Images::new(&registry, &tag);
            images.kubelet_dir = kubelet_dir;
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
                }),
                metrics,
            });
            let api: Api<KadaluStorage> = Api::all(client);
            Controller::new(api, watcher::Config::default())
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
