//! Write-behind through a real mount: writes are acknowledged before the brick
//! has them, so these check that nothing an application can observe gives that
//! away. Bytes end as written even when writes overlap, reads and stats through
//! the writer see every acknowledged write, appends and truncates keep their
//! place in the order, and a close on one mount is enough for an open on another
//! to see everything (close-to-open). How errors of background writes are
//! reported is `write_behind_errors.rs`.

use std::os::fd::BorrowedFd;

use kadalu_e2e::sys;
use kadalu_e2e::{MountOptions, Pool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FILE_SIZE: usize = 6 << 20;

/// Applies `n` random writes (sizes from 1 byte to 1 MiB, many overlapping, some
/// past the current end) through `fd` and to `reference`.
fn random_writes(fd: BorrowedFd<'_>, reference: &mut Vec<u8>, rng: &mut StdRng, n: usize) {
    for i in 0..n {
        let len = match i % 4 {
            0 => rng.random_range(1..64),
            1 => 4096,
            2 => rng.random_range(4096..200_000),
            _ => rng.random_range(1..(1 << 20)),
        };
        // Offsets cluster in a few regions so that writes often overlap.
        let region = rng.random_range(0..4usize) * (FILE_SIZE / 4);
        let offset = (region + rng.random_range(0..(FILE_SIZE / 8))).min(FILE_SIZE - len);
        let byte = rng.random::<u8>();
        let data: Vec<u8> = (0..len).map(|k| byte.wrapping_add(k as u8)).collect();
        sys::pwrite_all(fd, &data, offset as u64).unwrap();
        if reference.len() < offset + len {
            reference.resize(offset + len, 0);
        }
        reference[offset..offset + len].copy_from_slice(&data);
    }
}

/// Where two buffers first differ, for a readable failure.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("lengths {} and {}", a.len(), b.len());
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i}: {} vs {}", a[i], b[i]),
        None => "equal".into(),
    }
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert!(got == want, "{what}: {}", first_difference(got, want));
}

#[test]
fn overlapping_random_writes_read_back_exactly() {
    let pool = Pool::start();
    let path = pool.path().join("random");
    let mut rng = StdRng::seed_from_u64(0x6b61_6461_6c75);
    let fd = sys::open(&path, libc::O_CREAT | libc::O_RDWR, 0o644).unwrap();
    let mut reference = Vec::new();
    random_writes(sys::fd_of(&fd), &mut reference, &mut rng, 300);

    // Through the writer's own descriptor, before any close: size and bytes
    // must already include every acknowledged write.
    let st = sys::fstat(sys::fd_of(&fd)).unwrap();
    assert_eq!(st.st_size as usize, reference.len(), "fstat size");
    let back = sys::pread_full(sys::fd_of(&fd), reference.len() + 10, 0).unwrap();
    assert_same("read through the writing descriptor", &back, &reference);

    // More writes, each immediately followed by a read of what it covered.
    for _ in 0..50 {
        let len = rng.random_range(1..300_000usize);
        let offset = rng.random_range(0..FILE_SIZE - len);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        sys::pwrite_all(sys::fd_of(&fd), &data, offset as u64).unwrap();
        if reference.len() < offset + len {
            reference.resize(offset + len, 0);
        }
        reference[offset..offset + len].copy_from_slice(&data);
        let back = sys::pread_full(sys::fd_of(&fd), len, offset as u64).unwrap();
        assert_same("read right after the write", &back, &data);
    }
    sys::fsync(sys::fd_of(&fd)).unwrap();
    sys::close(fd).unwrap();
    assert_same(
        "whole file after close",
        &sys::read_file(&path).unwrap(),
        &reference,
    );
}

#[test]
fn small_sequential_and_overlapping_writes_keep_their_order() {
    // Many tiny writes to the same few bytes: the last one written must win.
    let pool = Pool::start();
    let path = pool.path().join("same-bytes");
    let fd = sys::open(&path, libc::O_CREAT | libc::O_RDWR, 0o644).unwrap();
    for round in 0u32..2000 {
        let offset = u64::from(round % 7);
        sys::pwrite_all(sys::fd_of(&fd), &round.to_le_bytes(), offset).unwrap();
    }
    let mut want = vec![0u8; 10];
    for round in 0u32..2000 {
        let o = (round % 7) as usize;
        want[o..o + 4].copy_from_slice(&round.to_le_bytes());
    }
    assert_same(
        "through the descriptor",
        &sys::pread_full(sys::fd_of(&fd), 64, 0).unwrap(),
        &want,
    );
    sys::close(fd).unwrap();
    assert_same("after close", &sys::read_file(&path).unwrap(), &want);
}

#[test]
fn appends_and_truncates_keep_their_place_among_background_writes() {
    let pool = Pool::start();
    let path = pool.path().join("mixed");
    let writer = sys::open(&path, libc::O_CREAT | libc::O_RDWR, 0o644).unwrap();
    let appender = sys::open(&path, libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
    let block = vec![7u8; 1 << 20];
    for i in 0..4u64 {
        sys::pwrite_all(sys::fd_of(&writer), &block, i << 20).unwrap();
    }
    // The append must land after the 4 MiB written just before it.
    assert_eq!(sys::write(sys::fd_of(&appender), b"tail").unwrap(), 4);
    let st = sys::fstat(sys::fd_of(&writer)).unwrap();
    assert_eq!(st.st_size, (4 << 20) + 4);
    assert_eq!(
        sys::pread_full(sys::fd_of(&writer), 10, 4 << 20).unwrap(),
        b"tail"
    );

    // A truncate after writes past its length must not be overtaken by them.
    for i in 0..8u64 {
        sys::pwrite_all(sys::fd_of(&writer), &block[..4096], (5 << 20) + i * 4096).unwrap();
    }
    sys::ftruncate(sys::fd_of(&writer), 1000).unwrap();
    sys::pwrite_all(sys::fd_of(&writer), b"end", 1000).unwrap();
    sys::close(appender).unwrap();
    sys::close(writer).unwrap();
    let mut want = vec![7u8; 1000];
    want.extend_from_slice(b"end");
    assert_same("after truncate", &sys::read_file(&path).unwrap(), &want);
    assert_eq!(sys::stat(&path).unwrap().st_size, 1003);
}

#[test]
fn close_on_one_mount_then_open_on_another_sees_every_byte() {
    let pool = Pool::start_with(2, &MountOptions::short_ttl(0.1));
    let (a, b) = (pool.mount(0).path(), pool.mount(1).path());
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..3 {
        let name = format!("shared-{round}");
        let mut reference = Vec::new();
        let fd = sys::open(&a.join(&name), libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
        random_writes(sys::fd_of(&fd), &mut reference, &mut rng, 40);
        sys::close(fd).unwrap();
        let seen = sys::read_file(&b.join(&name)).unwrap();
        assert_same(
            &format!("{name}: mount B after close on A"),
            &seen,
            &reference,
        );
        // Overwritten in place on A while B has read (and cached) it.
        let fd = sys::open(&a.join(&name), libc::O_WRONLY, 0).unwrap();
        random_writes(sys::fd_of(&fd), &mut reference, &mut rng, 40);
        sys::close(fd).unwrap();
        let seen = sys::read_file(&b.join(&name)).unwrap();
        assert_same(
            &format!("{name}: mount B after overwrite on A"),
            &seen,
            &reference,
        );
    }
    // Sequential 1 MiB writes, then close: B sees the whole file at once.
    let data: Vec<u8> = (0..(8usize << 20)).map(|i| (i / 4096) as u8).collect();
    let fd = sys::open(&a.join("seq"), libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        sys::pwrite_all(sys::fd_of(&fd), chunk, (i as u64) << 20).unwrap();
    }
    sys::close(fd).unwrap();
    assert_eq!(
        sys::stat(&b.join("seq")).unwrap().st_size as usize,
        data.len()
    );
    assert_same(
        "sequential file on mount B",
        &sys::read_file(&b.join("seq")).unwrap(),
        &data,
    );
}

#[test]
fn without_write_behind_a_write_waits_for_the_brick() {
    // The switch: with --no-write-behind a write to a dead brick fails itself.
    let mut pool = Pool::start_with(
        1,
        &MountOptions {
            write_behind: Some(false),
            rpc_timeout: Some(1.0),
            unavailable_wait: Some(1.0),
            ..MountOptions::default()
        },
    );
    let path = pool.path().join("f");
    sys::write_file(&path, b"x").unwrap();
    let fd = sys::open(&path, libc::O_WRONLY, 0).unwrap();
    pool.brick_mut().kill();
    assert_eq!(
        sys::pwrite(sys::fd_of(&fd), b"y", 0),
        Err(nix::errno::Errno::ETIMEDOUT)
    );
    pool.brick_mut().restart();
    drop(fd);
}
