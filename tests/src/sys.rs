//! Thin wrappers over the Linux file-system syscalls the tests exercise.
//!
//! Each returns the raw `Errno` on failure so that a test can compare the
//! error a FUSE mount gives with the one a local directory gives, errno for
//! errno. They deliberately do no retrying and no path massaging: whatever
//! the kernel answers is what the test sees.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

/// Result of a syscall: the value, or the errno the kernel set.
pub type SysResult<T> = Result<T, Errno>;

/// `path` as a C string. Test paths never contain NUL, so this cannot fail in practice.
pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("test path contains NUL")
}

/// Raw bytes as a C string (xattr names and the like).
pub fn cbytes(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("test string contains NUL")
}

fn cvt(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

fn cvt_off(ret: libc::off_t) -> SysResult<u64> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as u64)
    }
}

pub fn open(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> SysResult<OwnedFd> {
    let c = cpath(path);
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn pread(fd: BorrowedFd<'_>, len: usize, offset: u64) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = cvt_size(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            offset as libc::off_t,
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads exactly `len` bytes at `offset` unless EOF comes first (loops over short reads).
pub fn pread_full(fd: BorrowedFd<'_>, len: usize, offset: u64) -> SysResult<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let chunk = pread(fd, len - out.len(), offset + out.len() as u64)?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub fn pwrite(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> SysResult<usize> {
    cvt_size(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            offset as libc::off_t,
        )
    })
}

/// Writes all of `data` at `offset` (loops over short writes).
pub fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> SysResult<()> {
    let mut done = 0;
    while done < data.len() {
        let n = pwrite(fd, &data[done..], offset + done as u64)?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        done += n;
    }
    Ok(())
}

pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> SysResult<usize> {
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
}

pub fn read(fd: BorrowedFd<'_>, len: usize) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len) })?;
    buf.truncate(n);
    Ok(buf)
}

/// Opens `path` read-only and reads it whole.
pub fn read_file(path: &Path) -> SysResult<Vec<u8>> {
    let fd = open(path, libc::O_RDONLY, 0)?;
    let mut out = Vec::new();
    loop {
        let chunk = read(fd_of(&fd), 1 << 20)?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

/// Creates (or truncates) `path` and writes `data` into it, then closes it.
pub fn write_file(path: &Path, data: &[u8]) -> SysResult<()> {
    let fd = open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)?;
    pwrite_all(fd_of(&fd), data, 0)?;
    close(fd)
}

/// Closes explicitly so that an error from close (which FUSE flush can return) is seen.
pub fn close(fd: OwnedFd) -> SysResult<()> {
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    cvt(unsafe { libc::close(raw) }).map(|_| ())
}

pub fn fd_of(fd: &OwnedFd) -> BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(fd)
}

fn stat_with(
    f: unsafe extern "C" fn(*const libc::c_char, *mut libc::stat) -> libc::c_int,
    path: &Path,
) -> SysResult<libc::stat> {
    let c = cpath(path);
    let mut st = unsafe { std::mem::zeroed::<libc::stat>() };
    cvt(unsafe { f(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn stat(path: &Path) -> SysResult<libc::stat> {
    stat_with(libc::stat, path)
}

pub fn lstat(path: &Path) -> SysResult<libc::stat> {
    stat_with(libc::lstat, path)
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = unsafe { std::mem::zeroed::<libc::stat>() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn chmod(path: &Path, mode: libc::mode_t) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::chmod(c.as_ptr(), mode) }).map(|_| ())
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> SysResult<()> {
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(|_| ())
}

/// `uid`/`gid` of `u32::MAX` (-1) leave that id unchanged, as in chown(2).
pub fn chown(path: &Path, uid: u32, gid: u32) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::chown(c.as_ptr(), uid, gid) }).map(|_| ())
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::lchown(c.as_ptr(), uid, gid) }).map(|_| ())
}

pub fn truncate(path: &Path, len: u64) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) }).map(|_| ())
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> SysResult<()> {
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(|_| ())
}

/// A timespec for utimensat: explicit time, or `UTIME_NOW` / `UTIME_OMIT` in `nsec`.
pub fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

pub fn utimensat(path: &Path, times: [libc::timespec; 2], flags: libc::c_int) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) }).map(|_| ())
}

pub fn futimens(fd: BorrowedFd<'_>, times: [libc::timespec; 2]) -> SysResult<()> {
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(|_| ())
}

pub fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::mknod(c.as_ptr(), mode, dev) }).map(|_| ())
}

pub fn mkdir(path: &Path, mode: libc::mode_t) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::mkdir(c.as_ptr(), mode) }).map(|_| ())
}

pub fn rmdir(path: &Path) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::rmdir(c.as_ptr()) }).map(|_| ())
}

pub fn unlink(path: &Path) -> SysResult<()> {
    let c = cpath(path);
    cvt(unsafe { libc::unlink(c.as_ptr()) }).map(|_| ())
}

pub fn symlink(target: &[u8], linkpath: &Path) -> SysResult<()> {
    let t = cbytes(target);
    let c = cpath(linkpath);
    cvt(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) }).map(|_| ())
}

pub fn readlink(path: &Path) -> SysResult<Vec<u8>> {
    let c = cpath(path);
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = cvt_size(unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn link(old: &Path, new: &Path) -> SysResult<()> {
    let a = cpath(old);
    let b = cpath(new);
    cvt(unsafe { libc::link(a.as_ptr(), b.as_ptr()) }).map(|_| ())
}

pub fn rename(old: &Path, new: &Path) -> SysResult<()> {
    renameat2(old, new, 0)
}

/// renameat2(2); `flags` takes `RENAME_NOREPLACE` / `RENAME_EXCHANGE`.
pub fn renameat2(old: &Path, new: &Path, flags: libc::c_uint) -> SysResult<()> {
    let a = cpath(old);
    let b = cpath(new);
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
    .map(|_| ())
}

pub fn statvfs(path: &Path) -> SysResult<libc::statvfs> {
    let c = cpath(path);
    let mut st = unsafe { std::mem::zeroed::<libc::statvfs>() };
    cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn setxattr(path: &Path, name: &[u8], value: &[u8], flags: libc::c_int) -> SysResult<()> {
    let c = cpath(path);
    let n = cbytes(name);
    cvt(unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(|_| ())
}

pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8], flags: libc::c_int) -> SysResult<()> {
    let c = cpath(path);
    let n = cbytes(name);
    cvt(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(|_| ())
}

/// getxattr(2) with a buffer of `size` bytes; `size == 0` asks for the value's length,
/// which comes back as a vector of that many zero bytes' length (see [`getxattr_len`]).
pub fn getxattr(path: &Path, name: &[u8], size: usize) -> SysResult<Vec<u8>> {
    let c = cpath(path);
    let n = cbytes(name);
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    let got = cvt_size(unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), ptr, size) })?;
    buf.truncate(got.min(size));
    Ok(buf)
}

/// The size query form of getxattr(2): NULL buffer, size 0.
pub fn getxattr_len(path: &Path, name: &[u8]) -> SysResult<usize> {
    let c = cpath(path);
    let n = cbytes(name);
    cvt_size(unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) })
}

/// listxattr(2) with a buffer of `size` bytes; returns the names (split at NUL).
pub fn listxattr(path: &Path, size: usize) -> SysResult<Vec<Vec<u8>>> {
    let c = cpath(path);
    let mut buf = vec![0u8; size];
    let got = cvt_size(unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), size) })?;
    buf.truncate(got);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The size query form of listxattr(2).
pub fn listxattr_len(path: &Path) -> SysResult<usize> {
    let c = cpath(path);
    cvt_size(unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) })
}

pub fn removexattr(path: &Path, name: &[u8]) -> SysResult<()> {
    let c = cpath(path);
    let n = cbytes(name);
    cvt(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }).map(|_| ())
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: libc::c_int, offset: u64, len: u64) -> SysResult<()> {
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(|_| ())
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> SysResult<u64> {
    cvt_off(unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) })
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> SysResult<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    cvt_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut oi,
            fd_out.as_raw_fd(),
            &mut oo,
            len,
            0,
        )
    })
}

pub fn fsync(fd: BorrowedFd<'_>) -> SysResult<()> {
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) }).map(|_| ())
}

pub fn fdatasync(fd: BorrowedFd<'_>) -> SysResult<()> {
    cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) }).map(|_| ())
}

/// A `struct flock` for fcntl record locks. `len == 0` means "to end of file".
pub fn flock_range(typ: libc::c_int, start: i64, len: i64) -> libc::flock {
    let mut fl = unsafe { std::mem::zeroed::<libc::flock>() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// fcntl(F_SETLK / F_SETLKW / F_OFD_SETLK / F_OFD_SETLKW) with `fl`.
pub fn fcntl_setlk(fd: RawFd, cmd: libc::c_int, fl: &libc::flock) -> SysResult<()> {
    cvt(unsafe { libc::fcntl(fd, cmd, fl as *const libc::flock) }).map(|_| ())
}

/// fcntl(F_GETLK / F_OFD_GETLK): returns the conflicting lock, or `l_type == F_UNLCK`.
pub fn fcntl_getlk(fd: RawFd, cmd: libc::c_int, fl: &libc::flock) -> SysResult<libc::flock> {
    let mut out = *fl;
    cvt(unsafe { libc::fcntl(fd, cmd, &mut out as *mut libc::flock) })?;
    Ok(out)
}

pub fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> SysResult<()> {
    cvt(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(|_| ())
}

/// Every entry of directory `path` as (name, d_type), including `.` and `..`, in
/// the order readdir returned them.
pub fn read_dir(path: &Path) -> SysResult<Vec<(Vec<u8>, u8)>> {
    let c = cpath(path);
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    if dir.is_null() {
        return Err(Errno::last());
    }
    let mut out = Vec::new();
    let result = loop {
        Errno::clear();
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            let e = Errno::last_raw();
            break if e == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(e))
            };
        }
        let ent = unsafe { &*ent };
        let name = unsafe { std::ffi::CStr::from_ptr(ent.d_name.as_ptr()) };
        out.push((name.to_bytes().to_vec(), ent.d_type));
    };
    unsafe { libc::closedir(dir) };
    result.map(|()| out)
}

/// Bytes of a name as a path component (names in tests may be non-UTF-8).
pub fn name(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}
