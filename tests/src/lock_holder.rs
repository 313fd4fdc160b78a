//! A forked child process that holds a POSIX record lock.
//!
//! Classic POSIX locks belong to a process, so a conflict can only be shown
//! with a second process. The child does nothing but async-signal-safe
//! syscalls (open, fcntl, read, write, _exit), which keeps forking from a
//! multi-threaded test binary sound.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys::{cpath, SysResult};

/// How long the parent waits for the child to report its fcntl result.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process holding (or having tried to take) a lock. Dropping it lets the child
/// exit, which releases its locks through close(2).
pub struct LockHolder {
    pid: Pid,
    release: OwnedFd,
}

fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Errno::last());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl LockHolder {
    /// Forks a child that opens `path` read-write and runs `fcntl(cmd, fl)` on it.
    /// `Ok` means the child holds the lock; `Err` is the errno its open or fcntl got
    /// (the child has exited then).
    pub fn spawn(path: &Path, cmd: libc::c_int, fl: libc::flock) -> SysResult<LockHolder> {
        let c_path = cpath(path);
        let (report_r, report_w) = pipe()?;
        let (release_r, release_w) = pipe()?;
        // SAFETY: the child only calls async-signal-safe functions and then _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Errno::last());
        }
        if pid == 0 {
            unsafe {
                child(
                    c_path.as_ptr(),
                    cmd,
                    &fl,
                    report_w.as_raw_fd(),
                    release_r.as_raw_fd(),
                )
            }
        }
        drop(report_w);
        drop(release_r);
        let holder = LockHolder {
            pid: Pid::from_raw(pid),
            release: release_w,
        };
        let mut pfd = libc::pollfd {
            fd: report_r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ready = unsafe { libc::poll(&mut pfd, 1, REPORT_TIMEOUT.as_millis() as libc::c_int) };
        if ready != 1 {
            // Dropping `holder` kills the child.
            return Err(Errno::ETIMEDOUT);
        }
        let mut buf = [0u8; 4];
        let n = unsafe { libc::read(report_r.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
        if n != 4 {
            return Err(Errno::EPIPE);
        }
        match i32::from_ne_bytes(buf) {
            0 => Ok(holder),
            e => Err(Errno::from_raw(e)),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }
}

/// Body of the forked child; never returns.
unsafe fn child(
    path: *const libc::c_char,
    cmd: libc::c_int,
    fl: *const libc::flock,
    report: RawFd,
    release: RawFd,
) -> ! {
    let fd = libc::open(path, libc::O_RDWR);
    let err = if fd < 0 || libc::fcntl(fd, cmd, fl) < 0 {
        *libc::__errno_location()
    } else {
        0
    };
    let bytes = err.to_ne_bytes();
    libc::write(report, bytes.as_ptr().cast(), 4);
    if err == 0 {
        let mut b = 0u8;
        libc::read(release, (&mut b as *mut u8).cast(), 1);
    }
    libc::_exit(0)
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        // An explicit byte, not EOF: a concurrent fork elsewhere in the test binary
        // may hold a copy of the write end for a while.
        let b = 1u8;
        unsafe { libc::write(self.release.as_raw_fd(), (&b as *const u8).cast(), 1) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(WaitStatus::StillAlive) => {
                    let _ = kill(self.pid, Signal::SIGKILL);
                    let _ = waitpid(self.pid, None);
                    return;
                }
                _ => return,
            }
        }
    }
}
