//! A real `kadalu-server` process serving a temporary brick directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::binaries::server_bin;
use crate::process::{log_tail, spawn_logged, Spawned};

/// How long a server may take from spawn to "listening".
const START_TIMEOUT: Duration = Duration::from_secs(20);
const LISTENING: &str = "kadalu-server listening on ";

/// A brick server. Killed (and reaped) on drop; its directory is removed with it.
pub struct Brick {
    process: Option<Spawned>,
    addr: SocketAddr,
    /// Holds `brick/` (the exported directory) and `server.log`.
    root: TempDir,
    /// Extra command-line arguments (Replica3: peers, set id), kept for restarts.
    extra: Vec<String>,
}

impl Brick {
    /// Starts a server on a fresh directory and an ephemeral loopback port.
    pub fn start() -> Brick {
        Brick::start_in(
            tempfile::Builder::new()
                .prefix("kadalu-brick-")
                .tempdir()
                .expect("brick tempdir"),
        )
    }

    /// Starts a server whose brick directory (and log) live in `root`, e.g. a
    /// directory on a small file system the test made.
    pub fn start_in(root: TempDir) -> Brick {
        Brick::start_with(root, "127.0.0.1:0", Vec::new())
    }

    /// Starts a server on `listen` with extra arguments (a Replica3 member:
    /// `--peers`, `--set-id`, ...).
    pub fn start_with(root: TempDir, listen: &str, extra: Vec<String>) -> Brick {
        std::fs::create_dir(root.path().join("brick")).expect("create brick dir");
        let (process, addr) =
            spawn_server(root.path(), listen, &extra).unwrap_or_else(|e| panic!("{e}"));
        Brick {
            process: Some(process),
            addr,
            root,
            extra,
        }
    }

    /// SIGSTOP: the process hangs as a wedged machine would, its sockets open.
    pub fn pause(&mut self) {
        if let Some(p) = self.process.as_ref() {
            let _ = nix::sys::signal::kill(p.pid(), Signal::SIGSTOP);
        }
    }

    /// SIGCONT after [`Brick::pause`].
    pub fn resume(&mut self) {
        if let Some(p) = self.process.as_ref() {
            let _ = nix::sys::signal::kill(p.pid(), Signal::SIGCONT);
        }
    }

    /// Kills the server, empties its brick directory (a new disk), and starts
    /// it again on the same address.
    pub fn wipe_and_restart(&mut self) {
        self.kill();
        let dir = self.dir();
        std::fs::remove_dir_all(&dir).expect("wipe brick dir");
        std::fs::create_dir(&dir).expect("recreate brick dir");
        self.restart();
    }

    /// `host:port` the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The exported directory on local disk.
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("brick")
    }

    pub fn log(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Spawned::alive)
    }

    /// SIGKILL, as a crash would: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let status = p.signal_and_wait(Signal::SIGKILL, Duration::from_secs(10));
            assert!(status.is_some(), "server did not die from SIGKILL");
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        match self.process.take() {
            Some(mut p) => {
                let exited = p.signal_and_wait(Signal::SIGTERM, grace).is_some();
                if !exited {
                    p.stop(Duration::from_secs(1));
                }
                exited
            }
            None => true,
        }
    }

    /// Starts the server again on the same directory and the same port (after
    /// [`Brick::kill`] or [`Brick::terminate`]; kills a running one first).
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.to_string();
        // The port may be briefly unavailable right after the old process died.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match spawn_server(self.root.path(), &listen, &self.extra) {
                Ok((process, addr)) => {
                    assert_eq!(addr, self.addr, "restarted server on another address");
                    self.process = Some(process);
                    return;
                }
                Err(e) if Instant::now() >= deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

fn spawn_server(
    root: &Path,
    listen: &str,
    extra: &[String],
) -> Result<(Spawned, SocketAddr), String> {
    let mut cmd = Command::new(server_bin());
    cmd.arg("--brick-dir")
        .arg(root.join("brick"))
        .arg("--listen")
        .arg(listen)
        .args(extra);
    let log = root.join("server.log");
    let mut p = spawn_logged(cmd, &log).map_err(|e| format!("spawn kadalu-server: {e}"))?;
    let rest = match p.wait_for_line(LISTENING, START_TIMEOUT) {
        Ok(rest) => rest,
        Err(e) => {
            p.stop(Duration::from_secs(2));
            return Err(e);
        }
    };
    let addr: SocketAddr = match rest.parse() {
        Ok(a) => a,
        Err(e) => {
            p.stop(Duration::from_secs(2));
            return Err(format!("unparsable listen address {rest:?}: {e}"));
        }
    };
    Ok((p, addr))
}

impl Drop for Brick {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(3));
        }
        if std::thread::panicking() {
            eprintln!("{}", log_tail(&self.log(), 60));
        }
    }
}
