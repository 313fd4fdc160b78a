//! Files with data beyond 4 GiB offsets: sizes, holes and extents stay right
//! when offsets no longer fit in 32 bits, and nothing is materialized on disk.

use kadalu_e2e::sys;
use kadalu_e2e::{MountOptions, Pool};

const GIB: u64 = 1 << 30;
const A_AT: u64 = 5 * GIB;
const B_AT: u64 = 9 * GIB;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn data_beyond_4gib_reads_back_and_stays_sparse() {
    let mut pool = Pool::start();
    let path = pool.path().join("sparse");
    let a = pattern(64 * 1024, 1);
    let b = pattern(4096, 2);

    let fd = sys::open(&path, libc::O_CREAT | libc::O_RDWR, 0o644).unwrap();
    let f = sys::fd_of(&fd);
    sys::pwrite_all(f, &a, A_AT).unwrap();
    sys::pwrite_all(f, &b, B_AT).unwrap();
    sys::fsync(f).unwrap();

    let st = sys::fstat(f).unwrap();
    assert_eq!(st.st_size as u64, B_AT + 4096, "size");
    assert!(
        (st.st_blocks as u64) * 512 < 16 << 20,
        "{} bytes allocated for 68 KiB of data: not sparse",
        st.st_blocks * 512
    );

    assert_eq!(
        sys::pread_full(f, a.len(), A_AT).unwrap(),
        a,
        "data at 5 GiB"
    );
    assert_eq!(
        sys::pread_full(f, b.len(), B_AT).unwrap(),
        b,
        "data at 9 GiB"
    );
    for hole in [0, GIB, 4 * GIB - 10, 4 * GIB, 7 * GIB, B_AT - 65536] {
        let d = sys::pread_full(f, 65536, hole).unwrap();
        assert_eq!(d.len(), 65536, "short read in the hole at {hole}");
        assert!(d.iter().all(|x| *x == 0), "hole at {hole} is not zeros");
    }
    let edge = sys::pread_full(f, 200, A_AT - 100).unwrap();
    assert!(
        edge[..100].iter().all(|x| *x == 0) && edge[100..] == a[..100],
        "boundary at 5 GiB"
    );
    assert!(
        sys::pread(f, 10, B_AT + 4096).unwrap().is_empty(),
        "read at EOF"
    );

    assert_eq!(
        sys::lseek(f, 0, libc::SEEK_DATA).unwrap(),
        A_AT,
        "SEEK_DATA from 0"
    );
    assert_eq!(
        sys::lseek(f, A_AT as i64, libc::SEEK_HOLE).unwrap(),
        A_AT + 65536,
        "SEEK_HOLE after the first extent"
    );
    assert_eq!(
        sys::lseek(f, (A_AT + 65536) as i64, libc::SEEK_DATA).unwrap(),
        B_AT,
        "SEEK_DATA to 9 GiB"
    );
    assert_eq!(
        sys::lseek(f, B_AT as i64, libc::SEEK_HOLE).unwrap(),
        B_AT + 4096,
        "SEEK_HOLE at EOF"
    );
    sys::close(fd).unwrap();

    // A second client, with nothing cached, sees the same.
    let other = pool
        .add_mount(&MountOptions::default())
        .path()
        .join("sparse");
    let fd = sys::open(&other, libc::O_RDWR, 0).unwrap();
    let f = sys::fd_of(&fd);
    assert_eq!(sys::fstat(f).unwrap().st_size as u64, B_AT + 4096);
    assert_eq!(
        sys::pread_full(f, a.len(), A_AT).unwrap(),
        a,
        "data at 5 GiB via another mount"
    );
    assert_eq!(
        sys::pread_full(f, b.len(), B_AT).unwrap(),
        b,
        "data at 9 GiB via another mount"
    );

    // Shrink below the second extent: it is gone, the first stays.
    sys::ftruncate(f, 6 * GIB).unwrap();
    assert_eq!(sys::fstat(f).unwrap().st_size as u64, 6 * GIB);
    assert!(sys::pread(f, 10, B_AT).unwrap().is_empty());
    assert_eq!(sys::pread_full(f, 16, A_AT).unwrap(), a[..16]);
    // Grow again: the old data at 9 GiB must not come back.
    sys::ftruncate(f, 10 * GIB).unwrap();
    assert!(
        sys::pread_full(f, 4096, B_AT)
            .unwrap()
            .iter()
            .all(|x| *x == 0),
        "truncated data resurfaced"
    );
    sys::close(fd).unwrap();
    assert_eq!(sys::stat(&path).unwrap().st_size as u64, 10 * GIB);
}

#[test]
fn writes_that_straddle_the_4gib_boundary() {
    let pool = Pool::start();
    let path = pool.path().join("straddle");
    let data = pattern(3 * 1024 * 1024, 9);
    let at = 4 * GIB - 1024 * 1024 - 7;
    let fd = sys::open(&path, libc::O_CREAT | libc::O_RDWR, 0o644).unwrap();
    sys::pwrite_all(sys::fd_of(&fd), &data, at).unwrap();
    sys::close(fd).unwrap();
    let fd = sys::open(&path, libc::O_RDONLY, 0).unwrap();
    assert_eq!(
        sys::pread_full(sys::fd_of(&fd), data.len(), at).unwrap(),
        data
    );
    assert_eq!(
        sys::fstat(sys::fd_of(&fd)).unwrap().st_size as u64,
        at + data.len() as u64
    );
    // fallocate and copy_file_range at large offsets too.
    let out = sys::open(
        &pool.path().join("copy"),
        libc::O_CREAT | libc::O_RDWR,
        0o644,
    )
    .unwrap();
    let n = sys::copy_file_range(sys::fd_of(&fd), at, sys::fd_of(&out), 6 * GIB, 1 << 20).unwrap();
    assert_eq!(n, 1 << 20);
    assert_eq!(
        sys::pread_full(sys::fd_of(&out), 1 << 20, 6 * GIB).unwrap(),
        data[..1 << 20]
    );
    sys::fallocate(
        sys::fd_of(&out),
        libc::FALLOC_FL_KEEP_SIZE,
        8 * GIB,
        1 << 20,
    )
    .unwrap();
    assert_eq!(
        sys::fstat(sys::fd_of(&out)).unwrap().st_size as u64,
        6 * GIB + (1 << 20)
    );
}
