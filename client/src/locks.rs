//! Pieces of file locking: lock types and ranges between the kernel's `struct
//! flock` view and the wire (pure), and what the requesting thread's /proc files
//! tell: whether a blocked waiter got a signal, whether a lock is a flock(2).
//!
//! The brick never blocks in `SetLock` (every RPC has a deadline), so `F_SETLKW`
//! is a poll loop here. fuser answers FUSE_INTERRUPT itself with ENOSYS, so the
//! loop cannot learn of an interrupt from the kernel; it looks at the waiting
//! thread's pending signals in /proc instead and gives up with EINTR when one is
//! pending, as a local `fcntl(F_SETLKW)` would.
//!
//! fuser 0.18 also drops the kernel's FUSE_LK_FLOCK bit, which is all that tells
//! a flock(2) apart from an OFD record lock on the whole file (both are owned by
//! the open file, both span 0..EOF). The caller is blocked in its system call
//! while the request waits for us, so `/proc/<tid>/syscall` names that call;
//! when it cannot be read (a caller in a pid namespace we cannot see) the lock is
//! taken as a record lock, the kernel's own flock emulation.

use kadalu_proto::brick::LockType;
use std::time::Duration;

/// The kernel's "to end of file" (`OFFSET_MAX`).
pub const KERNEL_EOF: u64 = i64::MAX as u64;

/// Wire lock type for a `struct flock` `l_type`.
pub fn lock_type(typ: i32) -> Option<LockType> {
    match typ {
        libc::F_RDLCK => Some(LockType::Read),
        libc::F_WRLCK => Some(LockType::Write),
        libc::F_UNLCK => Some(LockType::Unlock),
        _ => None,
    }
}

/// `l_type` for a wire lock type (unknown values read as unlocked).
pub fn kernel_lock_type(typ: i32) -> i32 {
    match LockType::try_from(typ) {
        Ok(LockType::Read) => libc::F_RDLCK,
        Ok(LockType::Write) => libc::F_WRLCK,
        _ => libc::F_UNLCK,
    }
}

/// Kernel range end to wire end (`u64::MAX` = to end of file).
pub fn wire_end(end: u64) -> u64 {
    if end >= KERNEL_EOF {
        u64::MAX
    } else {
        end
    }
}

/// Wire range end to the kernel's, which refuses anything above `OFFSET_MAX`.
pub fn kernel_end(end: u64) -> u64 {
    end.min(KERNEL_EOF)
}

/// Pause between polls of a blocked lock request: short at first so a lock
/// handed over quickly is picked up quickly, then capped so a long wait costs
/// little.
pub fn lock_poll_pause(attempt: u32) -> Duration {
    let ms = 5u64.saturating_mul(1u64 << attempt.min(10));
    Duration::from_millis(ms.min(200))
}

/// Whether a `/proc/<tid>/status` text shows a signal pending for the thread (or
/// its process) that it does not block.
pub fn signal_pending(status: &str) -> bool {
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") != 0
}

/// Whether thread `tid` is gone or has an unblocked signal pending: either way
/// nobody is waiting for its lock any more.
///
/// Tid 0 is the kernel saying the caller lives in a pid namespace this process
/// cannot see (another container): its signals cannot be watched, so the wait
/// goes on until the lock is granted rather than failing at once.
pub fn waiter_interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(s) => signal_pending(&s),
        Err(_) => true,
    }
}

/// What a thread is doing, as `/proc/<tid>/syscall` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerSyscall {
    /// Blocked inside flock(2).
    Flock,
    /// Blocked in another system call (fcntl for record and OFD locks).
    Other,
    /// On a CPU right now: ask again in a moment, it is about to block.
    Running,
}

/// Reads a `/proc/<tid>/syscall` text; `None` when it is not the kernel's format.
pub fn caller_syscall(text: &str) -> Option<CallerSyscall> {
    let first = text.split_whitespace().next()?;
    if first == "running" {
        return Some(CallerSyscall::Running);
    }
    let nr: i64 = first.parse().ok()?;
    Some(if nr == libc::SYS_flock {
        CallerSyscall::Flock
    } else {
        CallerSyscall::Other
    })
}

/// What thread `tid` (as FUSE named the requester) is doing; `None` when that
/// cannot be known (tid 0, thread gone, no permission).
pub fn caller_syscall_of(tid: u32) -> Option<CallerSyscall> {
    if tid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()?;
    caller_syscall(&text)
}

/// How many times a lock request looks again at a caller that is still
/// running, `CALLER_LOOK_PAUSE` apart, before it settles for a record lock.
pub const CALLER_LOOKS: u32 = 20;
/// Pause between those looks.
pub const CALLER_LOOK_PAUSE: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_types_round_trip() {
        for t in [libc::F_RDLCK, libc::F_WRLCK, libc::F_UNLCK] {
            let w = lock_type(t).unwrap();
            assert_eq!(kernel_lock_type(w as i32), t);
        }
        assert_eq!(lock_type(99), None);
        assert_eq!(kernel_lock_type(0), libc::F_UNLCK);
    }

    #[test]
    fn ends_map_to_eof_and_back() {
        assert_eq!(wire_end(KERNEL_EOF), u64::MAX);
        assert_eq!(wire_end(100), 100);
        assert_eq!(kernel_end(u64::MAX), KERNEL_EOF);
        assert_eq!(kernel_end(100), 100);
    }

    #[test]
    fn poll_pause_grows_and_caps() {
        assert_eq!(lock_poll_pause(0), Duration::from_millis(5));
        assert_eq!(lock_poll_pause(2), Duration::from_millis(20));
        assert_eq!(lock_poll_pause(40), Duration::from_millis(200));
    }

    #[test]
    fn caller_syscalls_are_read_from_proc() {
        let flock = format!("{} 0x3 0x2 0x0 0x0 0x0 0x0 0x7ffd 0x7f12", libc::SYS_flock);
        assert_eq!(caller_syscall(&flock), Some(CallerSyscall::Flock));
        let fcntl = format!(
            "{} 0x3 0x25 0x7ffd 0x0 0x0 0x0 0x7ffd 0x7f12",
            libc::SYS_fcntl
        );
        assert_eq!(caller_syscall(&fcntl), Some(CallerSyscall::Other));
        assert_eq!(caller_syscall("running\n"), Some(CallerSyscall::Running));
        // Blocked outside any system call.
        assert_eq!(
            caller_syscall("-1 0x7ffd 0x7f12\n"),
            Some(CallerSyscall::Other)
        );
        assert_eq!(caller_syscall(""), None);
        assert_eq!(caller_syscall("garbage"), None);
        assert_eq!(caller_syscall_of(0), None);
        assert_eq!(caller_syscall_of(u32::MAX), None);
    }

    /// A real thread blocked in flock(2) is recognised.
    #[test]
    fn a_thread_blocked_in_flock_is_recognised() {
        use std::os::fd::AsRawFd;
        let path =
            std::env::temp_dir().join(format!("kadalu-client-flock-probe-{}", std::process::id()));
        let holder = std::fs::File::create(&path).unwrap();
        let waiter_file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            // Blocks until the holder unlocks.
            unsafe { libc::flock(waiter_file.as_raw_fd(), libc::LOCK_EX) }
        });
        let tid = rx.recv().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = None;
        while std::time::Instant::now() < deadline {
            seen = caller_syscall_of(tid);
            if seen == Some(CallerSyscall::Flock) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_UN) }, 0);
        assert_eq!(waiter.join().unwrap(), 0);
        assert_eq!(seen, Some(CallerSyscall::Flock));
    }

    #[test]
    fn pending_signals_are_read_from_proc_status() {
        let quiet = "Name:\tx\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n";
        assert!(!signal_pending(quiet));
        // SIGTERM (15) pending for the process.
        let term = quiet.replace("ShdPnd:\t0000000000000000", "ShdPnd:\t0000000000004000");
        assert!(signal_pending(&term));
        // ... but blocked.
        let blocked = term.replace("SigBlk:\t0000000000000000", "SigBlk:\t0000000000004000");
        assert!(!signal_pending(&blocked));
        // Our own thread has no pending signal right now.
        assert!(!waiter_interrupted(nix::unistd::gettid().as_raw() as u32));
        assert!(waiter_interrupted(u32::MAX));
        // An unnamed waiter (pid namespace we cannot see) keeps waiting.
        assert!(!waiter_interrupted(0));
    }
}
