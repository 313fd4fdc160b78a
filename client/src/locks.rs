//! Pure pieces of file locking: lock types and ranges between the kernel's `struct
//! flock` view and the wire, and how a blocking lock request notices that the
//! process waiting for it got a signal.
//!
//! The brick never blocks in `SetLock` (every RPC has a deadline), so `F_SETLKW`
//! is a poll loop here. fuser answers FUSE_INTERRUPT itself with ENOSYS, so the
//! loop cannot learn of an interrupt from the kernel; it looks at the waiting
//! thread's pending signals in /proc instead and gives up with EINTR when one is
//! pending, as a local `fcntl(F_SETLKW)` would.

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
