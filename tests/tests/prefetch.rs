//! Opens return a file's first bytes and the first read is answered from
//! them: through the mount, that must never show bytes older than this
//! mount's own changes, nor bytes from before another mount's close.

use kadalu_e2e::sys;
use kadalu_e2e::{MountOptions, Pool};

fn read_at(fd: &std::os::fd::OwnedFd, len: usize, offset: u64) -> Vec<u8> {
    sys::pread(sys::fd_of(fd), len, offset).expect("pread")
}

#[test]
fn first_reads_see_this_mounts_own_changes() {
    let pool = Pool::start();
    let f = pool.mount(0).path().join("f");
    sys::write_file(&f, b"0123456789").unwrap();
    for write_through in [false, true] {
        sys::write_file(&f, b"0123456789").unwrap();
        // The reader's open brings the first bytes; then another handle of
        // the same mount changes them before the reader's first read.
        let writer = sys::open(&f, libc::O_RDWR, 0).unwrap();
        let reader = sys::open(&f, libc::O_RDONLY, 0).unwrap();
        if write_through {
            sys::ftruncate(sys::fd_of(&writer), 4).unwrap();
            assert_eq!(read_at(&reader, 100, 0), b"0123", "truncate shows");
        } else {
            sys::pwrite_all(sys::fd_of(&writer), b"ab", 2).unwrap();
            assert_eq!(read_at(&reader, 100, 0), b"01ab456789", "write shows");
        }
        sys::close(reader).unwrap();
        sys::close(writer).unwrap();
    }
    // A truncating open of the same file by another handle.
    sys::write_file(&f, b"abcdef").unwrap();
    let reader = sys::open(&f, libc::O_RDONLY, 0).unwrap();
    let trunc = sys::open(&f, libc::O_WRONLY | libc::O_TRUNC, 0).unwrap();
    assert_eq!(read_at(&reader, 100, 0), b"", "O_TRUNC shows");
    sys::close(trunc).unwrap();
    sys::close(reader).unwrap();
}

#[test]
fn small_and_large_files_read_back_whole() {
    let pool = Pool::start();
    let dir = pool.mount(0).path();
    // Shorter than, as long as, and longer than what an open brings.
    for len in [0usize, 1, 4096, 128 * 1024, 128 * 1024 + 1, 300_000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let p = dir.join(format!("f{len}"));
        sys::write_file(&p, &data).unwrap();
        assert_eq!(sys::read_file(&p).unwrap(), data, "length {len}");
        // Reads that start past the start, and past the end.
        let fd = sys::open(&p, libc::O_RDONLY, 0).unwrap();
        let from = len / 2;
        assert_eq!(read_at(&fd, len + 10, from as u64), &data[from..]);
        sys::close(fd).unwrap();
        let fd = sys::open(&p, libc::O_RDONLY, 0).unwrap();
        assert_eq!(read_at(&fd, 10, len as u64 + 5), b"");
        sys::close(fd).unwrap();
    }
}

#[test]
fn another_mounts_close_shows_at_the_next_open() {
    let pool = Pool::start_with(2, &MountOptions::short_ttl(0.1));
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    for v in 0..5u8 {
        let data = vec![b'a' + v; 5000];
        sys::write_file(&a.join("f"), &data).unwrap();
        assert_eq!(sys::read_file(&b.join("f")).unwrap(), data, "round {v}");
    }
}
