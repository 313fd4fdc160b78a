//! The mounter: the long-lived process on a node that owns the FUSE mounts.
//!
//! Kadalu's most-reported failure was mounts dying with the CSI node plugin:
//! the FUSE daemons were its children, in its container. Here the node
//! service never runs `kadalu-mount` itself; it asks the mounter, over a unix
//! socket, to mount a PV at a staging path or to unmount it. The mounter runs
//! each `kadalu-mount` in its own session and records every mount in its
//! state directory, so:
//! - restarting or upgrading the node service touches no mount at all (it
//!   holds none, and bind mounts of a staging path are kernel state);
//! - a restarted mounter re-adopts the recorded mounts that are still up,
//!   and mounts again those whose daemon died (a dead FUSE mount is lazily
//!   unmounted first), and keeps doing so every few seconds.
//!
//! In Kubernetes the mounter is its own DaemonSet with `updateStrategy:
//! OnDelete`, so a node-plugin upgrade never restarts it.
//!
//! Protocol: one JSON request per connection, one JSON reply
//! ([`Request`] / [`Reply`]), bounded in size and time.

use crate::mountinfo::{is_dead, is_mounted};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Largest request or reply line.
const MAX_LINE: usize = 64 * 1024;
/// How long a mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for the mounter's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often recorded mounts are checked and repaired.
const SUPERVISE_EVERY: Duration = Duration::from_secs(3);

/// What a FUSE mount of a PV needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub target: PathBuf,
    pub bricks: Vec<String>,
    pub set_size: usize,
    pub subdir: String,
    pub read_only: bool,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Mount(MountSpec),
    Unmount { target: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default)]
    pub error: String,
}

/// A recorded mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: MountSpec,
    pid: u32,
}

struct State {
    dir: PathBuf,
    mount_bin: PathBuf,
    /// Passed to every `kadalu-mount` as `--tls-dir`.
    tls_dir: Option<PathBuf>,
    children: HashMap<PathBuf, Child>,
}

#[derive(Clone)]
pub struct Mounter {
    state: Arc<Mutex<State>>,
}

fn record_path(dir: &Path, target: &Path) -> PathBuf {
    let h = hex::encode(&Sha256::digest(target.as_os_str().as_encoded_bytes())[..12]);
    dir.join(format!("{h}.json"))
}

impl Mounter {
    pub fn new(
        state_dir: PathBuf,
        mount_bin: PathBuf,
        tls_dir: Option<PathBuf>,
    ) -> std::io::Result<Mounter> {
        std::fs::create_dir_all(&state_dir)?;
        Ok(Mounter {
            state: Arc::new(Mutex::new(State {
                dir: state_dir,
                mount_bin,
                tls_dir,
                children: HashMap::new(),
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mounts `spec`; already mounted with the same spec is done.
    pub fn mount(&self, spec: &MountSpec) -> Result<(), String> {
        let mut st = self.lock();
        let rec = record_path(&st.dir, &spec.target);
        if let Ok(old) = read_record(&rec) {
            if old.spec != *spec {
                return Err(format!(
                    "{} is already mounted for another volume or with other options",
                    spec.target.display()
                ));
            }
            if is_mounted(&spec.target) && !is_dead(&spec.target) {
                return Ok(());
            }
        }
        if is_mounted(&spec.target) && !is_dead(&spec.target) {
            return Err(format!(
                "{} is a mount point this mounter did not make",
                spec.target.display()
            ));
        }
        start(&mut st, spec, &rec)
    }

    /// Unmounts `target` and forgets it; not mounted is done.
    pub fn unmount(&self, target: &Path) -> Result<(), String> {
        let mut st = self.lock();
        let rec = record_path(&st.dir, target);
        let record = read_record(&rec).ok();
        let child = st.children.remove(target);
        stop(record.as_ref().map(|r| r.pid), child, target);
        let _ = std::fs::remove_file(&rec);
        if is_mounted(target) {
            return Err(format!("{} is still mounted", target.display()));
        }
        Ok(())
    }

    /// Re-adopts or restarts every recorded mount (at start, then periodically).
    pub fn supervise_once(&self) {
        let mut st = self.lock();
        // Reap children that exited, so they leave no zombies.
        st.children.retain(|_, c| matches!(c.try_wait(), Ok(None)));
        let Ok(entries) = std::fs::read_dir(&st.dir) else {
            return;
        };
        let records: Vec<(PathBuf, Record)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_record(&e.path()).ok().map(|r| (e.path(), r)))
            .collect();
        for (path, r) in records {
            if is_mounted(&r.spec.target) && !is_dead(&r.spec.target) {
                continue;
            }
            tracing::warn!(target = %r.spec.target.display(), "mount is down; mounting again");
            if let Err(e) = start(&mut st, &r.spec, &path) {
                tracing::error!(target = %r.spec.target.display(), "remount failed: {e}");
            }
        }
    }

    /// Serves the protocol on `listener` (see `serve::bind`).
    pub async fn serve(self, listener: UnixListener) -> std::io::Result<()> {
        let sup = self.clone();
        tokio::spawn(async move {
            loop {
                let s = sup.clone();
                let _ = tokio::task::spawn_blocking(move || s.supervise_once()).await;
                tokio::time::sleep(SUPERVISE_EVERY).await;
            }
        });
        loop {
            let (conn, _) = listener.accept().await?;
            let m = self.clone();
            tokio::spawn(async move {
                if let Err(e) = m.handle(conn).await {
                    tracing::warn!("mounter request: {e}");
                }
            });
        }
    }

    async fn handle(&self, conn: UnixStream) -> std::io::Result<()> {
        let (r, mut w) = conn.into_split();
        let line = read_line(r).await?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply {
                ok: false,
                error: format!("bad request: {e}"),
            },
            Ok(req) => {
                let m = self.clone();
                let res = tokio::task::spawn_blocking(move || match req {
                    Request::Mount(spec) => m.mount(&spec),
                    Request::Unmount { target } => m.unmount(&target),
                })
                .await
                .unwrap_or_else(|e| Err(format!("mounter task failed: {e}")));
                match res {
                    Ok(()) => Reply {
                        ok: true,
                        error: String::new(),
                    },
                    Err(error) => Reply { ok: false, error },
                }
            }
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_default();
        out.push('\n');
        w.write_all(out.as_bytes()).await
    }
}

async fn read_line(r: tokio::net::unix::OwnedReadHalf) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_LINE as u64));
    tokio::time::timeout(CALL_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    Ok(line)
}

fn read_record(path: &Path) -> Result<Record, String> {
    let b = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&b).map_err(|e| e.to_string())
}

fn start(st: &mut State, spec: &MountSpec, rec: &Path) -> Result<(), String> {
    if is_dead(&spec.target) || is_mounted(&spec.target) {
        // A dead FUSE mount (its daemon gone) must be cleared before mounting again.
        let _ = crate::mountinfo::unmount(&spec.target);
    }
    if let Some(mut old) = st.children.remove(&spec.target) {
        let _ = old.kill();
        let _ = old.wait();
    }
    std::fs::create_dir_all(&spec.target).map_err(|e| format!("{}: {e}", spec.target.display()))?;
    let log_path = rec.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&st.mount_bin);
    for b in &spec.bricks {
        cmd.arg("--brick").arg(b);
    }
    cmd.arg("--set-size")
        .arg(spec.set_size.to_string())
        .arg("--subdir")
        .arg(&spec.subdir);
    if spec.read_only {
        cmd.arg("--read-only");
    }
    if let Some(dir) = &st.tls_dir {
        cmd.arg("--tls-dir").arg(dir);
    }
    if !spec.options.is_empty() {
        cmd.arg("-o").arg(spec.options.join(","));
    }
    cmd.arg(&spec.target)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // Its own session: no signal meant for the mounter's group reaches it.
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", st.mount_bin.display()))?;
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        if is_mounted(&spec.target) && !is_dead(&spec.target) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(format!("kadalu-mount exited with {status}: {tail}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} did not come up within {MOUNT_TIMEOUT:?}",
                spec.target.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let record = Record {
        spec: spec.clone(),
        pid: child.id(),
    };
    let tmp = rec.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&record).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, rec))
        .map_err(|e| format!("recording the mount: {e}"))?;
    st.children.insert(spec.target.clone(), child);
    Ok(())
}

/// Stops the daemon of a mount: SIGTERM (it unmounts cleanly), then an
/// unmount of whatever is left.
fn stop(pid: Option<u32>, child: Option<Child>, target: &Path) {
    let pid = child.as_ref().map(|c| c.id()).or(pid);
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(target) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(mut c) = child {
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    if is_mounted(target) {
        let _ = crate::mountinfo::unmount(target);
    }
}

/// Asks the mounter at `socket`.
pub async fn call(socket: &Path, req: &Request) -> Result<(), String> {
    let fut = async {
        let mut conn = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("mounter at {} unreachable: {e}", socket.display()))?;
        let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
        line.push('\n');
        conn.write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let (r, _w) = conn.into_split();
        let answer = read_line(r).await.map_err(|e| e.to_string())?;
        let reply: Reply = serde_json::from_str(&answer)
            .map_err(|e| format!("mounter answered {answer:?}: {e}"))?;
        if reply.ok {
            Ok(())
        } else {
            Err(reply.error)
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| "the mounter did not answer in time".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = Request::Mount(MountSpec {
            target: "/a".into(),
            bricks: vec!["h:1".into()],
            set_size: 1,
            subdir: "pv".into(),
            read_only: true,
            options: vec![],
        });
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"op\":\"mount\""));
        let back: Request = serde_json::from_str(&j).unwrap();
        assert!(matches!(back, Request::Mount(s) if s.read_only));
        assert!(serde_json::from_str::<Request>("{\"op\":\"format\"}").is_err());
    }
}
