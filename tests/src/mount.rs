//! A real `kadalu-mount` FUSE mount on a temporary mount point.
//!
//! Teardown is layered because a FUSE daemon can fail in every way a test is
//! trying to provoke: SIGTERM (clean unmount), then `fusermount3 -u`, then a
//! lazy `fusermount3 -uz`, and SIGKILL only as the last resort, so that no
//! mount and no process outlives the test, even on panic.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::binaries::mount_bin;
use crate::process::{log_tail, poll_until, run_bounded, spawn_logged, Spawned};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const MOUNTED: &str = "kadalu-mount mounted at ";

/// Command-line options of `kadalu-mount`; `None` leaves the binary's default.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub subdir: Option<String>,
    pub entry_ttl: Option<f64>,
    pub attr_ttl: Option<f64>,
    pub rpc_timeout: Option<f64>,
    pub unavailable_wait: Option<f64>,
    pub threads: Option<u32>,
    /// `Some(false)` mounts with `--no-write-behind` (every write waits for the brick).
    pub write_behind: Option<bool>,
    /// Bricks per replica set (`--set-size`), for a pool of several sets.
    pub set_size: Option<usize>,
    /// Extra mount options, passed as `-o a,b`.
    pub options: Vec<String>,
    /// Reach the bricks over mutual TLS with the PEM files in this directory.
    pub tls_dir: Option<PathBuf>,
    /// `--protocol` (`grpc` or `wire`); `None` leaves the default (or `KADALU_PROTOCOL`).
    pub protocol: Option<&'static str>,
}

impl MountOptions {
    /// For a Replica3 pool: a short RPC deadline, so a leader that stops
    /// answering (paused, cut off) costs seconds rather than the default
    /// 10 s, a wait longer than an election, and short kernel caches.
    pub fn replica3() -> MountOptions {
        MountOptions {
            rpc_timeout: Some(3.0),
            unavailable_wait: Some(30.0),
            entry_ttl: Some(0.2),
            attr_ttl: Some(0.2),
            ..MountOptions::default()
        }
    }

    /// Short kernel caches, for tests that watch one mount see another's changes.
    pub fn short_ttl(ttl: f64) -> MountOptions {
        MountOptions {
            entry_ttl: Some(ttl),
            attr_ttl: Some(ttl),
            ..MountOptions::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                args.push(flag.to_string());
                args.push(v);
            }
        };
        push("--subdir", self.subdir.clone());
        push("--set-size", self.set_size.map(|v| v.to_string()));
        push("--entry-ttl", self.entry_ttl.map(|v| v.to_string()));
        push("--attr-ttl", self.attr_ttl.map(|v| v.to_string()));
        push("--rpc-timeout", self.rpc_timeout.map(|v| v.to_string()));
        push(
            "--unavailable-wait",
            self.unavailable_wait.map(|v| v.to_string()),
        );
        push("--threads", self.threads.map(|v| v.to_string()));
        push("--protocol", self.protocol.map(str::to_string));
        push(
            "--tls-dir",
            self.tls_dir.as_ref().map(|d| d.display().to_string()),
        );
        if !self.options.is_empty() {
            push("-o", Some(self.options.join(",")));
        }
        if self.write_behind == Some(false) {
            args.push("--no-write-behind".to_string());
        }
        args
    }
}

/// A live FUSE mount of one or more bricks. Unmounted and reaped on drop.
pub struct Mount {
    process: Option<Spawned>,
    /// Holds `mnt/` (the mount point) and `mount.log`.
    root: TempDir,
    path: PathBuf,
    watchdog: Arc<Mutex<bool>>,
}

/// How long a mount may live before the watchdog aborts it. A test blocked in a
/// syscall on a hung mount cannot be interrupted any other way; killing the
/// daemon aborts the FUSE connection, the syscall fails with ENOTCONN, and the
/// test fails instead of hanging the suite. `KADALU_E2E_WATCHDOG_SECS` overrides.
fn watchdog_limit() -> Duration {
    std::env::var("KADALU_E2E_WATCHDOG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs)
}

/// Starts the watchdog of the daemon `pid` mounted at `path`. `done` is set (under
/// its lock) by the mount's teardown before it reaps the daemon, so the PID the
/// watchdog may kill is never a reused one.
fn start_watchdog(pid: nix::unistd::Pid, path: PathBuf, done: Arc<Mutex<bool>>) {
    let limit = watchdog_limit();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            if *done.lock().unwrap_or_else(|e| e.into_inner()) {
                return;
            }
        }
        let guard = done.lock().unwrap_or_else(|e| e.into_inner());
        if !*guard {
            eprintln!(
                "watchdog: mount {} alive after {limit:?}; aborting it",
                path.display()
            );
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            run_bounded(
                Command::new("fusermount3").arg("-uz").arg(&path),
                Duration::from_secs(5),
            );
        }
    });
}

impl Mount {
    pub fn start(bricks: &[SocketAddr], opts: &MountOptions) -> Mount {
        let root = tempfile::Builder::new()
            .prefix("kadalu-mount-")
            .tempdir()
            .expect("mount tempdir");
        let path = root.path().join("mnt");
        std::fs::create_dir(&path).expect("create mount point");
        let mut cmd = Command::new(mount_bin());
        for b in bricks {
            cmd.arg("--brick").arg(b.to_string());
        }
        cmd.args(opts.args()).arg(&path);
        let log = root.path().join("mount.log");
        let process = spawn_logged(cmd, &log).expect("spawn kadalu-mount");
        let watchdog = Arc::new(Mutex::new(false));
        start_watchdog(process.pid(), path.clone(), Arc::clone(&watchdog));
        let mut mount = Mount {
            process: Some(process),
            root,
            path,
            watchdog,
        };
        let p = mount.process.as_mut().expect("just set");
        if let Err(e) = p.wait_for_line(MOUNTED, START_TIMEOUT) {
            drop(mount);
            panic!("kadalu-mount did not come up: {e}");
        }
        let appeared = poll_until(START_TIMEOUT, Duration::from_millis(20), || {
            is_mounted(&mount.path).then_some(())
        });
        if appeared.is_none() {
            let tail = log_tail(&mount.log(), 40);
            drop(mount);
            panic!("kadalu-mount said mounted but /proc/self/mountinfo disagrees\n{tail}");
        }
        mount
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn log(&self) -> PathBuf {
        self.root.path().join("mount.log")
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Spawned::alive)
    }

    /// Unmounts the way a user's `kill` would (SIGTERM) and reports whether the
    /// daemon exited and the mount disappeared within `grace`. The layered
    /// fallback still runs afterwards, whatever happened.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let exited = match self.process.as_mut() {
            Some(p) => p.signal_and_wait(Signal::SIGTERM, grace).is_some(),
            None => true,
        };
        let unmounted = !is_mounted(&self.path);
        self.teardown();
        exited && unmounted
    }

    fn teardown(&mut self) {
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = true;
        if let Some(p) = self.process.as_mut() {
            p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(5));
        }
        if is_mounted(&self.path) {
            let ok = run_bounded(
                Command::new("fusermount3").arg("-u").arg(&self.path),
                Duration::from_secs(5),
            );
            if !ok {
                run_bounded(
                    Command::new("fusermount3").arg("-uz").arg(&self.path),
                    Duration::from_secs(5),
                );
            }
        }
        if let Some(mut p) = self.process.take() {
            // Unmounting ends a healthy daemon's session loop; give it a moment.
            if p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(2))
                .is_none()
            {
                p.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
            }
        }
        if is_mounted(&self.path) {
            run_bounded(
                Command::new("fusermount3").arg("-uz").arg(&self.path),
                Duration::from_secs(5),
            );
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.teardown();
        if std::thread::panicking() {
            eprintln!("{}", log_tail(&self.log(), 60));
        }
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.split(|b| *b == b'\n').any(|line| {
        line.split(|b| *b == b' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for space and friends).
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if let Some(v) = std::str::from_utf8(oct)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Path of `name` (raw bytes) under `dir`.
pub fn join_bytes(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape_mountinfo(b"/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(b"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(b"/end\\"), b"/end\\");
    }
}
