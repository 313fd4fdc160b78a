//! The CSI driver under test: `kadalu-csi` processes (controller, node,
//! mounter) on unix sockets in a temporary directory, gRPC clients to them,
//! and a pool file for a replica set the test started. Dropping a node host
//! stops its processes and also the FUSE daemons its mounter started (they
//! outlive the mounter by design), unmounting what they left.

use crate::binaries::csi_bin;
use crate::process::{spawn_logged, Spawned};
use kadalu_proto::pool_config::{
    BrickConfig, PoolConfig, PoolType, ReclaimPolicy, ReplicaSetConfig,
};
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint, Uri};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `<name>.json` for one replica set into `dir`.
pub fn write_pool_file(dir: &Path, name: &str, set: &[SocketAddr], policy: ReclaimPolicy) {
    let cfg = PoolConfig {
        version: 1,
        name: name.into(),
        pool_type: if set.len() == 3 {
            PoolType::Replica3
        } else {
            PoolType::Replica1
        },
        pv_reclaim_policy: policy,
        sets: vec![ReplicaSetConfig {
            index: 0,
            bricks: set
                .iter()
                .map(|a| BrickConfig {
                    node: "local".into(),
                    address: a.to_string(),
                })
                .collect(),
        }],
        options: Default::default(),
    };
    std::fs::write(dir.join(format!("{name}.json")), cfg.to_json()).expect("write pool file");
}

fn start(args: &[String], log: &Path, what: &str) -> Spawned {
    let mut cmd = Command::new(csi_bin());
    cmd.args(args).env("KADALU_LOG", "info");
    let mut p = spawn_logged(cmd, log).expect("spawn kadalu-csi");
    if let Err(e) = p.wait_for_line(&format!("kadalu-csi {what} ready"), READY_TIMEOUT) {
        panic!(
            "kadalu-csi {what} did not start: {e}\n{}",
            crate::process::log_tail(log, 30)
        );
    }
    p
}

/// A gRPC channel over a unix socket.
pub async fn channel(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .timeout(Duration::from_secs(90))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .expect("connect to the CSI socket")
}

/// A controller process.
pub struct Controller {
    _dir: TempDir,
    process: Spawned,
    pub socket: PathBuf,
}

impl Controller {
    pub fn start(pools_dir: &Path) -> Controller {
        let dir = tempfile::Builder::new()
            .prefix("kadalu-csi-c-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("csi.sock");
        let args = vec![
            "controller".to_string(),
            "--endpoint".into(),
            format!("unix://{}", socket.display()),
            "--pools-dir".into(),
            pools_dir.display().to_string(),
        ];
        let process = start(&args, &dir.path().join("controller.log"), "controller");
        Controller {
            _dir: dir,
            process,
            socket,
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// One "node": a node service and its mounter, with a directory for
/// staging and target paths.
pub struct NodeHost {
    pub dir: TempDir,
    node: Option<Spawned>,
    mounter: Option<Spawned>,
    pub socket: PathBuf,
    pub mounter_socket: PathBuf,
    pools_dir: PathBuf,
    pub name: String,
}

impl NodeHost {
    pub fn start(name: &str, pools_dir: &Path) -> NodeHost {
        let dir = tempfile::Builder::new()
            .prefix("kadalu-csi-n-")
            .tempdir()
            .unwrap();
        let mounter_socket = dir.path().join("mounter.sock");
        let mut host = NodeHost {
            socket: dir.path().join("csi.sock"),
            mounter_socket,
            node: None,
            mounter: None,
            pools_dir: pools_dir.to_path_buf(),
            name: name.to_string(),
            dir,
        };
        host.start_mounter();
        host.start_node();
        host
    }

    pub fn start_mounter(&mut self) {
        let args = vec![
            "mounter".to_string(),
            "--socket".into(),
            self.mounter_socket.display().to_string(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--mount-bin".into(),
            crate::binaries::mount_bin().display().to_string(),
        ];
        self.mounter = Some(start(
            &args,
            &self.dir.path().join("mounter.log"),
            "mounter",
        ));
    }

    pub fn start_node(&mut self) {
        let args = vec![
            "node".to_string(),
            "--endpoint".into(),
            format!("unix://{}", self.socket.display()),
            "--node-id".into(),
            self.name.clone(),
            "--pools-dir".into(),
            self.pools_dir.display().to_string(),
            "--mounter-socket".into(),
            self.mounter_socket.display().to_string(),
        ];
        self.node = Some(start(&args, &self.dir.path().join("node.log"), "node"));
    }

    /// SIGKILLs the node service, as a crash or an upgrade's pod kill does.
    pub fn kill_node(&mut self) {
        if let Some(mut p) = self.node.take() {
            assert!(p
                .signal_and_wait(Signal::SIGKILL, Duration::from_secs(10))
                .is_some());
        }
    }

    /// SIGKILLs the mounter (its FUSE daemons stay).
    pub fn kill_mounter(&mut self) {
        if let Some(mut p) = self.mounter.take() {
            assert!(p
                .signal_and_wait(Signal::SIGKILL, Duration::from_secs(10))
                .is_some());
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("mounts")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for NodeHost {
    fn drop(&mut self) {
        if let Some(mut p) = self.node.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut p) = self.mounter.take() {
            p.stop(Duration::from_secs(5));
        }
        // Bind mounts first (they keep the staging mounts busy), then the
        // FUSE daemons the mounter recorded.
        let root = self.dir.path().to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        if let Ok(entries) = std::fs::read_dir(self.state_dir()) {
            for e in entries.flatten() {
                let Ok(b) = std::fs::read(e.path()) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
                    continue;
                };
                if let Some(pid) = v.get("pid").and_then(|p| p.as_i64()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        Signal::SIGTERM,
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
