//! `kadalu-csi`: the CSI driver `kadalu`, in one of three roles: `controller`
//! (Identity + Controller), `node` (Identity + Node) or `mounter` (the
//! long-lived holder of a node's FUSE mounts).

use anyhow::Context;
use clap::{Parser, Subcommand};
use kadalu_csi::controller::ControllerService;
use kadalu_csi::identity::IdentityService;
use kadalu_csi::mounter::Mounter;
use kadalu_csi::node::NodeService;
use kadalu_csi::pools::Pools;
use kadalu_csi::serve::{bind, socket_path};
use kadalu_proto::csi::controller_server::ControllerServer;
use kadalu_proto::csi::identity_server::IdentityServer;
use kadalu_proto::csi::node_server::NodeServer;
use kadalu_proto::transport::Transport;
use std::io::Write;
use std::path::PathBuf;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Parser)]
#[command(name = "kadalu-csi", version, about = "CSI driver for kadalu pools")]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Identity and Controller services: creates, grows and deletes volumes.
    Controller {
        /// CSI endpoint, unix:///path/to/csi.sock.
        #[arg(long, env = "CSI_ENDPOINT")]
        endpoint: String,
        /// Directory of pool files (<pool>.json), as the operator writes them.
        #[arg(long, default_value = "/etc/kadalu/pools")]
        pools_dir: PathBuf,
        /// Bytes each replica set keeps free beyond what its PVs were promised.
        #[arg(long, default_value_t = 0)]
        reserve_bytes: u64,
        /// Reach bricks over mutual TLS with `ca.crt`, `tls.crt`, `tls.key` from here.
        #[arg(long, env = "KADALU_TLS_DIR", value_name = "DIR")]
        tls_dir: Option<PathBuf>,
    },
    /// Identity and Node services: stages, publishes and reports volumes.
    Node {
        #[arg(long, env = "CSI_ENDPOINT")]
        endpoint: String,
        /// This node's id: the Kubernetes node name.
        #[arg(long, env = "NODE_NAME")]
        node_id: String,
        #[arg(long, default_value = "/etc/kadalu/pools")]
        pools_dir: PathBuf,
        /// The mounter's socket.
        #[arg(long, default_value = "/var/lib/kadalu/mounter.sock")]
        mounter_socket: PathBuf,
    },
    /// The process that holds a node's FUSE mounts across node-service restarts.
    Mounter {
        #[arg(long, default_value = "/var/lib/kadalu/mounter.sock")]
        socket: PathBuf,
        /// Where mounts are recorded, so a restarted mounter re-adopts them.
        #[arg(long, default_value = "/var/lib/kadalu/mounts")]
        state_dir: PathBuf,
        /// The kadalu-mount executable.
        #[arg(long, env = "KADALU_MOUNT_BIN", default_value = "kadalu-mount")]
        mount_bin: PathBuf,
        /// Mount over mutual TLS: given to every kadalu-mount as `--tls-dir`.
        #[arg(long, env = "KADALU_TLS_DIR", value_name = "DIR")]
        tls_dir: Option<PathBuf>,
    },
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn ready(what: &str) -> anyhow::Result<()> {
    println!("kadalu-csi {what} ready");
    std::io::stdout().flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KADALU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Args::parse().role {
        Role::Controller {
            endpoint,
            pools_dir,
            reserve_bytes,
            tls_dir,
        } => {
            let transport = Transport::from_optional_dir(tls_dir.as_deref())?;
            let path = socket_path(&endpoint).map_err(anyhow::Error::msg)?;
            let listener = bind(&path).with_context(|| format!("binding {}", path.display()))?;
            let pools = Pools::watch(pools_dir);
            ready("controller")?;
            tonic::transport::Server::builder()
                .add_service(IdentityServer::new(IdentityService { controller: true }))
                .add_service(ControllerServer::new(ControllerService::new(
                    pools,
                    reserve_bytes,
                    transport,
                )))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown())
                .await?;
        }
        Role::Node {
            endpoint,
            node_id,
            pools_dir,
            mounter_socket,
        } => {
            if node_id.is_empty() {
                anyhow::bail!("--node-id (or NODE_NAME) must name this node");
            }
            let path = socket_path(&endpoint).map_err(anyhow::Error::msg)?;
            let listener = bind(&path).with_context(|| format!("binding {}", path.display()))?;
            let pools = Pools::watch(pools_dir);
            ready("node")?;
            tonic::transport::Server::builder()
                .add_service(IdentityServer::new(IdentityService { controller: false }))
                .add_service(NodeServer::new(NodeService {
                    node_id,
                    pools,
                    mounter_socket,
                }))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown())
                .await?;
        }
        Role::Mounter {
            socket,
            state_dir,
            mount_bin,
            tls_dir,
        } => {
            // Checked here so that a bad directory stops the mounter with a clear
            // message, instead of every mount failing later.
            Transport::from_optional_dir(tls_dir.as_deref())?;
            let m = Mounter::new(state_dir.clone(), mount_bin, tls_dir)
                .with_context(|| format!("state directory {}", state_dir.display()))?;
            // Re-adopt or restart what a previous run recorded before serving.
            let m2 = m.clone();
            tokio::task::spawn_blocking(move || m2.supervise_once()).await?;
            let listener =
                bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
            let serve = m.serve(listener);
            ready("mounter")?;
            tokio::select! {
                r = serve => r.with_context(|| format!("serving {}", socket.display()))?,
                _ = shutdown() => {
                    // The mounts stay: they belong to the pods, not to this process.
                }
            }
        }
    }
    Ok(())
}
