//! Child processes under a leash: spawned with their output in a log file,
//! waited for with deadlines, and signalled by PID.
//!
//! Children run in their own process group (so a Ctrl-C aimed at `cargo test`
//! does not kill a FUSE daemon before it can unmount) and get SIGTERM from the
//! kernel if the thread that spawned them dies without cleaning up, so that no
//! test leaves a process behind even when it is killed outright.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A spawned child whose stdout lines are readable with a deadline and whose
/// stdout and stderr both end up in `log`.
pub struct Spawned {
    pub child: Child,
    pub log: PathBuf,
    lines: Receiver<String>,
}

/// Spawns `cmd` with stderr appended to `log` and stdout forwarded, line by line,
/// both to `log` and to [`Spawned::wait_for_line`].
pub fn spawn_logged(mut cmd: Command, log: &Path) -> std::io::Result<Spawned> {
    let stderr = OpenOptions::new().create(true).append(true).open(log)?;
    let mut header = OpenOptions::new().append(true).open(log)?;
    writeln!(header, "=== spawn {cmd:?}")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut log_out = OpenOptions::new().append(true).open(log)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log_out, "{line}");
            // The receiver may be gone once startup is over; keep draining the
            // pipe anyway so the child never blocks on a full stdout.
            let _ = tx.send(line);
        }
    });
    Ok(Spawned {
        child,
        log: log.to_path_buf(),
        lines: rx,
    })
}

impl Spawned {
    /// Waits until the child prints a line starting with `prefix`; returns the rest
    /// of that line. Fails if the child exits or the deadline passes first.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no line {prefix:?} within {timeout:?}\n{}",
                        log_tail(&self.log, 40)
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_bounded(&mut self.child, Duration::from_secs(2));
                    return Err(format!(
                        "process exited ({status:?}) before printing {prefix:?}\n{}",
                        log_tail(&self.log, 40)
                    ));
                }
            }
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Still running (not yet reaped)?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `sig`, then waits up to `timeout` for exit. Returns the exit status if it exited.
    pub fn signal_and_wait(&mut self, sig: Signal, timeout: Duration) -> Option<ExitStatus> {
        if !self.alive() {
            return self.child.try_wait().ok().flatten();
        }
        let _ = kill(self.pid(), sig);
        wait_bounded(&mut self.child, timeout)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Always reaps.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.signal_and_wait(Signal::SIGTERM, grace) {
            return Some(status);
        }
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5))
    }
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Runs a helper command (fusermount3 and the like) to completion, killing it if it
/// takes longer than `timeout`. Returns whether it exited successfully.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    match wait_bounded(&mut child, timeout) {
        Some(status) => status.success(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }
}

/// The last `n` lines of a log file, for failure messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let Ok(file) = File::open(log) else {
        return format!("(no log at {})", log.display());
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "--- last {} lines of {} ---\n{}",
        lines.len() - start,
        log.display(),
        lines[start..].join("\n")
    )
}

/// Polls `f` every `step` until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}
