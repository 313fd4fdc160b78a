//! Side-by-side op scripts: the same list of file-system operations run once
//! against a kadalu mount and once against a plain local directory, compared
//! outcome by outcome (value or errno).
//!
//! An op is a closure over a [`Ctx`] that returns an [`Outcome`]: a string
//! rendering of everything about the result that must agree (values that may
//! legitimately differ, such as inode numbers, are left out by the op), or the
//! errno. Ops run in order and share open file descriptors through the `Ctx`.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;

use crate::lock_holder::LockHolder;
use crate::mount::MountOptions;
use crate::pool::Pool;
use crate::sys::{self, SysResult};

/// What an op produced: a comparable rendering of its value, or the errno.
pub type Outcome = Result<String, Errno>;

type OpFn = Box<dyn Fn(&mut Ctx) -> Outcome + Send + Sync>;

/// Longest one op may take before the run is declared hung.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by the ops of one run: the directories they work in and the
/// file descriptors and lock-holding children they leave for later ops.
pub struct Ctx {
    a: PathBuf,
    b: PathBuf,
    fds: HashMap<String, OwnedFd>,
    holders: HashMap<String, LockHolder>,
}

impl Ctx {
    /// `rel` under the working directory of view A (the first mount, or the local dir).
    pub fn a(&self, rel: &str) -> PathBuf {
        self.a.join(rel)
    }

    /// `rel` under view B: a second mount of the same pool, or the same local dir.
    pub fn b(&self, rel: &str) -> PathBuf {
        self.b.join(rel)
    }

    /// Raw-byte name under view A.
    pub fn a_bytes(&self, name: &[u8]) -> PathBuf {
        self.a.join(sys::name(name))
    }

    /// Opens `path` and keeps the descriptor as `key` for later ops.
    pub fn open(
        &mut self,
        key: &str,
        path: &Path,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> Outcome {
        let fd = sys::open(path, flags, mode)?;
        self.fds.insert(key.to_string(), fd);
        Ok("opened".into())
    }

    /// The descriptor kept as `key`; EBADF if the op that should have opened it failed.
    pub fn fd(&self, key: &str) -> SysResult<BorrowedFd<'_>> {
        self.fds.get(key).map(|f| f.as_fd()).ok_or(Errno::EBADF)
    }

    pub fn raw_fd(&self, key: &str) -> SysResult<RawFd> {
        self.fd(key).map(|f| f.as_raw_fd())
    }

    /// Closes `key` through close(2), so an error from the final flush is seen.
    pub fn close(&mut self, key: &str) -> Outcome {
        let fd = self.fds.remove(key).ok_or(Errno::EBADF)?;
        sys::close(fd).map(|()| "closed".into())
    }

    /// Keeps a lock-holding child as `key`.
    pub fn hold(&mut self, key: &str, holder: LockHolder) {
        self.holders.insert(key.to_string(), holder);
    }

    pub fn holder(&self, key: &str) -> SysResult<&LockHolder> {
        self.holders.get(key).ok_or(Errno::ESRCH)
    }

    /// Lets the child `key` exit (releasing its locks) and reaps it.
    pub fn release_holder(&mut self, key: &str) -> Outcome {
        self.holders.remove(key).ok_or(Errno::ESRCH)?;
        Ok("released".into())
    }
}

/// An ordered list of described ops.
pub struct Script {
    name: String,
    ops: Vec<(String, OpFn)>,
    two_views: bool,
}

impl Script {
    pub fn new(name: &str) -> Script {
        Script {
            name: name.to_string(),
            ops: Vec::new(),
            two_views: false,
        }
    }

    /// Runs view B on a second, independent mount of the same pool (locally both
    /// views are the same directory).
    pub fn with_two_mounts(mut self) -> Script {
        self.two_views = true;
        self
    }

    pub fn op(
        &mut self,
        desc: &str,
        f: impl Fn(&mut Ctx) -> Outcome + Send + Sync + 'static,
    ) -> &mut Script {
        self.ops.push((desc.to_string(), Box::new(f)));
        self
    }

    /// Runs every op in a worker thread with views `a` and `b`, each op bounded by
    /// [`OP_TIMEOUT`]. A hung op ends the run early with `Err(desc)`.
    fn run(self: &Arc<Self>, a: &Path, b: &Path) -> (Vec<Outcome>, Option<String>) {
        let (tx, rx) = mpsc::channel();
        let script = Arc::clone(self);
        let mut ctx = Ctx {
            a: a.to_path_buf(),
            b: b.to_path_buf(),
            fds: HashMap::new(),
            holders: HashMap::new(),
        };
        let worker = std::thread::spawn(move || {
            for (_, op) in &script.ops {
                if tx.send(op(&mut ctx)).is_err() {
                    return;
                }
            }
        });
        let mut outcomes = Vec::new();
        for (desc, _) in &self.ops {
            match rx.recv_timeout(OP_TIMEOUT) {
                Ok(o) => outcomes.push(o),
                Err(RecvTimeoutError::Timeout) => return (outcomes, Some(desc.clone())),
                Err(RecvTimeoutError::Disconnected) => {
                    return (outcomes, Some(format!("{desc} (op panicked)")))
                }
            }
        }
        // The worker drops the Ctx (closing descriptors, reaping lock holders) on its
        // way out; wait for that so the mount is idle when it is torn down.
        let _ = worker.join();
        (outcomes, None)
    }

    /// Runs the script on a local temp dir and on a fresh pool's mount, and panics
    /// with a transcript at the first op whose outcomes differ.
    pub fn run_side_by_side(self) {
        self.run_side_by_side_with(&MountOptions::default());
    }

    pub fn run_side_by_side_with(self, opts: &MountOptions) {
        let script = Arc::new(self);
        let local = tempfile::Builder::new()
            .prefix("kadalu-local-")
            .tempdir()
            .expect("local tempdir");
        let local_dir = local.path().join("t");
        sys::mkdir(&local_dir, 0o755).expect("mkdir local t");
        let (local_out, local_hung) = script.run(&local_dir, &local_dir);
        if let Some(desc) = local_hung {
            panic!("[{}] op {desc:?} hung or panicked on the LOCAL directory: the test itself is wrong", script.name);
        }

        if std::env::var_os("KADALU_E2E_TRANSCRIPT").is_some() {
            let lines: Vec<String> = script
                .ops
                .iter()
                .zip(&local_out)
                .map(|((desc, _), o)| format!("  {desc}: {}", render(o)))
                .collect();
            eprintln!("[{}] local transcript:\n{}", script.name, lines.join("\n"));
        }
        if std::env::var_os("KADALU_E2E_LOCAL_ONLY").is_some() {
            // Validates the scripts themselves: a second local run must agree with
            // the first, or an op renders something that is not deterministic.
            let again = tempfile::tempdir().expect("second local tempdir");
            let dir = again.path().join("t");
            sys::mkdir(&dir, 0o755).expect("mkdir second local t");
            let (out, hung) = script.run(&dir, &dir);
            if let Some(report) = compare(&script, &local_out, &out, hung.as_deref()) {
                panic!("LOCAL vs LOCAL: {report}");
            }
            return;
        }
        let pool = Pool::start_with(if script.two_views { 2 } else { 1 }, opts);
        let a = pool.mounts()[0].path().join("t");
        sys::mkdir(&a, 0o755).expect("mkdir t on the mount");
        let b = match pool.mounts().get(1) {
            Some(m) => m.path().join("t"),
            None => a.clone(),
        };
        let (mount_out, mount_hung) = script.run(&a, &b);

        let report = compare(&script, &local_out, &mount_out, mount_hung.as_deref());
        // Tear down before panicking so the mount's own teardown is exercised normally.
        drop(pool);
        if let Some(report) = report {
            panic!("{report}");
        }
    }
}

fn render(o: &Outcome) -> String {
    match o {
        Ok(v) => format!("Ok({v})"),
        Err(e) => format!("Err({e:?})"),
    }
}

/// `None` when every op agreed; else a transcript up to the first disagreement and
/// a list of the later ones.
fn compare(
    script: &Script,
    local: &[Outcome],
    mount: &[Outcome],
    hung: Option<&str>,
) -> Option<String> {
    let first = script
        .ops
        .iter()
        .enumerate()
        .position(|(i, _)| i < mount.len() && local[i] != mount[i]);
    if first.is_none() && hung.is_none() {
        return None;
    }
    let mut out = format!(
        "[{}] the mount disagrees with a local directory\n",
        script.name
    );
    let upto = first.unwrap_or(mount.len().saturating_sub(1));
    for (i, (desc, _)) in script.ops.iter().enumerate().take(upto + 1) {
        let mark = if Some(i) == first { ">>" } else { "  " };
        out.push_str(&format!(
            "{mark} #{i} {desc}\n     local: {}\n",
            render(&local[i])
        ));
        if i < mount.len() && local[i] != mount[i] {
            out.push_str(&format!("     mount: {}\n", render(&mount[i])));
        }
    }
    let later: Vec<String> = (upto + 1..mount.len())
        .filter(|&i| local[i] != mount[i])
        .map(|i| {
            format!(
                "   #{i} {}: local {} / mount {}",
                script.ops[i].0,
                render(&local[i]),
                render(&mount[i])
            )
        })
        .collect();
    if !later.is_empty() {
        out.push_str(&format!(
            "{} later disagreement(s) (may be consequences):\n{}\n",
            later.len(),
            later.join("\n")
        ));
    }
    if let Some(desc) = hung {
        out.push_str(&format!(
            "on the mount, op {desc:?} did not finish within {OP_TIMEOUT:?}\n"
        ));
    }
    Some(out)
}

// ------------------------------------------------------------ renderings

/// File type of a `st_mode` as a short word.
pub fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "reg",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "lnk",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "sock",
        libc::S_IFCHR => "chr",
        libc::S_IFBLK => "blk",
        _ => "?",
    }
}

/// The stat fields that must agree between a mount and a local directory:
/// type, permission bits, size, link count, owner, and device number for devices.
/// Not ino, dev, blocks, blksize or times, and not a directory's size, which
/// each file system defines its own way.
pub fn stat_view(st: &libc::stat) -> String {
    let size = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        String::new()
    } else {
        format!(" size={}", st.st_size)
    };
    let mut s = format!(
        "{} perm={:04o}{size} nlink={} uid={} gid={}",
        kind(st.st_mode),
        st.st_mode & 0o7777,
        st.st_nlink,
        st.st_uid,
        st.st_gid
    );
    if matches!(st.st_mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK) {
        s.push_str(&format!(
            " rdev={}:{}",
            libc::major(st.st_rdev),
            libc::minor(st.st_rdev)
        ));
    }
    s
}

/// Outcome of stat(2) rendered with [`stat_view`].
pub fn stat_of(path: &Path) -> Outcome {
    sys::stat(path).map(|s| stat_view(&s))
}

/// Outcome of lstat(2) rendered with [`stat_view`].
pub fn lstat_of(path: &Path) -> Outcome {
    sys::lstat(path).map(|s| stat_view(&s))
}

/// Directory listing as a sorted set of `name:type` (d_type), `.` and `..` included.
pub fn listing(path: &Path) -> Outcome {
    let mut entries: Vec<String> = sys::read_dir(path)?
        .into_iter()
        .map(|(name, t)| format!("{}:{}", String::from_utf8_lossy(&name), dtype(t)))
        .collect();
    entries.sort();
    Ok(entries.join(" "))
}

fn dtype(t: u8) -> &'static str {
    match t {
        libc::DT_REG => "reg",
        libc::DT_DIR => "dir",
        libc::DT_LNK => "lnk",
        libc::DT_FIFO => "fifo",
        libc::DT_SOCK => "sock",
        libc::DT_CHR => "chr",
        libc::DT_BLK => "blk",
        libc::DT_UNKNOWN => "unknown",
        _ => "?",
    }
}

/// Bytes rendered compactly: short ones verbatim (lossy), long ones by length and digest.
pub fn bytes(data: &[u8]) -> String {
    if data.len() <= 64 {
        format!("{:?}", String::from_utf8_lossy(data))
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(data);
        format!("{} bytes sha256={}", data.len(), hex8(&digest))
    }
}

fn hex8(d: &[u8]) -> String {
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Unit outcome of a syscall that returns nothing.
pub fn done(r: SysResult<()>) -> Outcome {
    r.map(|()| "ok".into())
}

/// A value outcome rendered with Debug.
pub fn val<T: std::fmt::Debug>(r: SysResult<T>) -> Outcome {
    r.map(|v| format!("{v:?}"))
}
