//! A Replica3 set for tests: three real `kadalu-server` processes on
//! loopback forming one Raft group, with the admin calls the tests use to
//! find the leader, cut links and compare the bricks' trees.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use kadalu_proto::raft::raft_admin_client::RaftAdminClient;
use kadalu_proto::raft::{
    HealInfoReply, HealInfoRequest, SetFaultsRequest, StatusReply, StatusRequest, TreeDigestRequest,
};
use kadalu_proto::transport::Transport;

use tempfile::TempDir;

use crate::brick::Brick;

/// Timeouts shortened from the defaults so failover tests run quickly; still
/// well above what two busy cores need for a heartbeat round.
const RAFT_ARGS: &[&str] = &[
    "--heartbeat-ms",
    "200",
    "--election-timeout-ms",
    "1000-2000",
    "--fault-injection",
];

/// Free loopback ports, found by binding port 0. Another process could take
/// one before the server binds it; on a test machine that is rare, and the
/// start fails loudly if it happens.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Three bricks of one replica set. Dropping it stops them all.
pub struct ReplicaSet {
    pub bricks: Vec<Brick>,
    rt: tokio::runtime::Runtime,
    /// How the harness reaches the bricks: TLS when they were started with `--tls-dir`.
    transport: Transport,
}

impl ReplicaSet {
    /// Starts a set of `n` bricks with extra server arguments, and waits
    /// until it has a leader.
    pub fn start_with(n: usize, extra: &[&str]) -> ReplicaSet {
        ReplicaSet::start_with_roots(n, extra, |_| {
            tempfile::Builder::new()
                .prefix("kadalu-r3-")
                .tempdir()
                .expect("brick tempdir")
        })
    }

    /// Like [`ReplicaSet::start_with`], with brick `i`'s directory (and log)
    /// in `root(i)`: e.g. a directory on a small or failing file system the
    /// test made. The caller keeps that file system mounted until the set is
    /// dropped.
    pub fn start_with_roots(
        n: usize,
        extra: &[&str],
        mut root: impl FnMut(usize) -> TempDir,
    ) -> ReplicaSet {
        // The bricks' own certificate is signed by the CA they trust, so the harness
        // can use it as its client identity.
        let transport = match extra.iter().position(|a| *a == "--tls-dir") {
            Some(i) => Transport::from_dir(Path::new(extra[i + 1])).expect("TLS directory"),
            None => Transport::plain(),
        };
        let ports = free_ports(n);
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let set_id = format!("test-{:08x}", rand::random::<u32>());
        let bricks = peers
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let mut args: Vec<String> = vec![
                    "--peers".into(),
                    peers.join(","),
                    "--set-id".into(),
                    set_id.clone(),
                ];
                args.extend(RAFT_ARGS.iter().map(|s| s.to_string()));
                args.extend(extra.iter().map(|s| s.to_string()));
                Brick::start_with(root(i), addr, args)
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let set = ReplicaSet {
            bricks,
            rt,
            transport,
        };
        set.wait_leader(Duration::from_secs(30))
            .expect("the replica set elected no leader within 30 s");
        set
    }

    pub fn start() -> ReplicaSet {
        ReplicaSet::start_with(3, &[])
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.bricks.iter().map(|b| b.addr()).collect()
    }

    fn admin<T>(
        &self,
        i: usize,
        f: impl FnOnce(
            RaftAdminClient<tonic::transport::Channel>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, tonic::Status>>>>,
    ) -> Result<T, String> {
        let addr = self.bricks[i].addr().to_string();
        let transport = self.transport.clone();
        self.rt.block_on(async move {
            let ep = transport
                .endpoint(&addr)
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10));
            let ch = tokio::time::timeout(Duration::from_secs(3), ep.connect())
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(15), f(RaftAdminClient::new(ch)))
                .await
                .map_err(|_| "admin call timed out".to_string())?
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    }

    /// `Status` of brick `i`.
    pub fn status(&self, i: usize) -> Result<StatusReply, String> {
        self.admin(i, |mut c| {
            Box::pin(async move { Ok(c.status(StatusRequest {}).await?.into_inner()) })
        })
    }

    /// `HealInfo` from brick `i` (only the leader answers).
    pub fn heal_info(&self, i: usize) -> Result<HealInfoReply, String> {
        self.admin(i, |mut c| {
            Box::pin(async move { Ok(c.heal_info(HealInfoRequest {}).await?.into_inner()) })
        })
    }

    /// Digest of brick `i`'s tree and the log index it reflects.
    pub fn digest(&self, i: usize) -> Result<(Vec<u8>, u64), String> {
        self.admin(i, |mut c| {
            Box::pin(async move {
                let r = c.tree_digest(TreeDigestRequest {}).await?.into_inner();
                Ok((r.sha256.to_vec(), r.applied_index))
            })
        })
    }

    /// Drops Raft traffic between brick `i` and the given node ids.
    pub fn block(&self, i: usize, nodes: Vec<u64>) -> Result<(), String> {
        self.admin(i, |mut c| {
            Box::pin(async move {
                c.set_faults(SetFaultsRequest {
                    blocked_nodes: nodes,
                })
                .await?;
                Ok(())
            })
        })
    }

    /// Index of the brick that says it leads, if exactly one running brick does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.bricks.len())
            .filter(|&i| matches!(self.status(i), Ok(s) if s.state == "leader"))
            .collect();
        match leaders.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Waits for a leader; its index.
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the bricks `which` have applied the same log index and
    /// their trees are identical; the digests seen last on failure.
    pub fn wait_converged(&self, which: &[usize], timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen: Vec<Result<(Vec<u8>, u64), String>> =
                which.iter().map(|&i| self.digest(i)).collect();
            let ok: Vec<&(Vec<u8>, u64)> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
            if ok.len() == which.len() && ok.windows(2).all(|w| w[0] == w[1]) {
                return Ok(ok[0].0.clone());
            }
            if Instant::now() >= deadline {
                let show: Vec<String> = seen
                    .iter()
                    .map(|r| match r {
                        Ok((d, idx)) => format!("{} at {idx}", hex8(d)),
                        Err(e) => e.clone(),
                    })
                    .collect();
                return Err(format!("bricks did not converge: {show:?}"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn hex8(d: &[u8]) -> String {
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
