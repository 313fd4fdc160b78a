//! The kadalu FUSE client: mounts a pool (or one directory of it) served by
//! bricks over gRPC.
//!
//! - [`connection`]: the brick set, per-RPC deadlines, retry while unreachable.
//! - [`request_seq`]: request headers that let a brick deduplicate retried mutations.
//! - [`inode_map`]: FUSE inode numbers ↔ 128-bit file ids, with lookup counts.
//! - [`attr`], [`dir_cursor`], [`locks`]: pure conversions between kernel and wire.
//! - [`lock_owners`]: which lock owners each open handle must unlock at release.
//! - [`xattr_cache`]: short-lived answers for the xattrs the kernel asks on its own.
//! - [`write_behind`]: bookkeeping of writes acknowledged but not yet at the brick.
//! - [`prefetch`]: a file's first bytes, brought by its open, for the first read.
//! - [`dir_attrs`]: directory attributes that came with a change of names, so
//!   the GetAttr the kernel sends after every create or unlink needs no round trip.
//! - [`fs`]: the fuser `Filesystem` implementation.
//! - [`inline_task`]: request tasks that start on the FUSE thread, so their RPC
//!   leaves from there, and move to the runtime when their reply arrives.
//! - [`mount`]: option parsing, resolving the mount root, kernel tuning.
//!
//! Decisions worth knowing:
//!
//! - **Concurrency.** Several FUSE request loops (`--threads`, cloned fds), and
//!   every callback that must wait replies from a tokio task, so no request waits
//!   behind another; one that needs no round trip (a prefetched read, a flush with
//!   nothing in flight) is answered on its FUSE thread.
//! - **Caching.** Entries and attributes are cached by the kernel for
//!   `--entry-ttl`/`--attr-ttl` (missing names too: a lookup's ENOENT is a
//!   negative entry for the entry TTL); no writeback cache (pools are read-write-many).
//!   Close-to-open: every open drops the file's cached pages, and when the open's
//!   reply shows the file changed since the kernel last got its attributes, the
//!   kernel is told to drop those too, so a reader after a writer's close sees the
//!   new size at once.
//! - **Outages.** Every RPC has `--rpc-timeout`. A request that finds no brick
//!   retries with backoff (moving along the brick set) for `--unavailable-wait`, then
//!   fails with ETIMEDOUT; the mount itself never dies and serves again as soon as a
//!   brick answers. Mutations keep their request header across retries.
//! - **Open directories** are opened on the brick too (`opendir` → `Open`,
//!   `releasedir` → `Release`), so a directory removed while open lives on (empty,
//!   nlink 0) until closed, as on a local file system: `fstat` of it still works.
//! - **Locks.** POSIX locks and flock go to the brick. `F_SETLKW` is a poll loop
//!   (the brick never blocks) that gives up with EINTR when the waiting thread has a
//!   signal pending. fuser 0.18 does not pass the kernel's FUSE_LK_FLOCK bit on, so a
//!   flock(2) is told from an fcntl lock by the system call the requesting thread
//!   is blocked in (`/proc/<tid>/syscall`) and sent to the brick as a flock, held
//!   apart from record locks as on a local file system, and dropped when the file
//!   is released. When the caller cannot be seen (pid 0: another pid namespace),
//!   a flock falls back to the kernel's emulation, a whole-file record lock owned
//!   by the open file, which conflicts with fcntl locks (as on NFS). Record locks of a process go at every close (`flush` names
//!   their owner); OFD locks belong to the open file, and since `release` names no
//!   owner for them the client remembers which owners locked through each handle
//!   ([`lock_owners`]) and unlocks them when the handle is released.
//! - **Write-behind** ([`write_behind`], off with `--no-write-behind`). A write
//!   is acknowledged at once and sent in the background, bounded per file and per
//!   mount; overlapping writes reach the brick in the kernel's order, appends go
//!   synchronously after everything before them. Whatever observes a file's data
//!   or size (read, getattr, setattr, open, flush, fsync, release, locks, lseek,
//!   fallocate, copy_file_range, attributes in lookup/readdirplus replies) first
//!   waits for that file's writes, so a close is still the point after which
//!   every mount sees the data. A background write that fails is reported, once,
//!   by the file's next write, flush (close) or fsync.
//! - **Fewer round trips.** `flush` reaches the brick only for files this client
//!   ever locked (it waits for the file's background writes, but they are already
//!   on their way), and the
//!   kernel's implicit `security.capability` check before each write is answered
//!   from [`xattr_cache`] (for a file this client just created, without ever asking).

pub mod attr;
pub mod connection;
pub mod dir_attrs;
pub mod dir_cursor;
pub mod error;
pub mod fs;
pub mod inline_task;
pub mod inode_map;
pub mod lock_owners;
pub mod locks;
pub mod mount;
pub mod pool;
pub mod prefetch;
pub mod request_seq;
pub mod write_behind;
pub mod xattr_cache;
