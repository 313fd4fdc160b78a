//! Per-PV quota end to end, on a real Replica3 set with real FUSE mounts:
//! two mounts filling one PV (EDQUOT, usage within the limit, nothing past
//! it), `df` showing the limit and an expansion without a remount, sparse
//! files, hard links and renames, EXDEV across PVs, usage across a restart of
//! every brick, recount after a damaged store, and the reclaim policies.

use kadalu_e2e::{Mount, MountOptions, QuotaAdmin, ReplicaSet};
use kadalu_proto::quota::ReclaimPolicy;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn pv_mount(set: &ReplicaSet, pv: &str) -> Mount {
    let opts = MountOptions {
        subdir: Some(pv.to_string()),
        ..MountOptions::replica3()
    };
    Mount::start(&set.addrs(), &opts)
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut st) },
        0,
        "statvfs {p:?}"
    );
    st
}

/// Size and used bytes as `df` computes them.
fn df(p: &Path) -> (u64, u64) {
    let st = statvfs(p);
    let size = st.f_blocks * st.f_frsize;
    (size, size - st.f_bfree * st.f_frsize)
}

/// Writes 1 MiB chunks to `path` until the file system refuses; returns the
/// bytes it was told were written and the errno that stopped it.
fn fill(path: &Path, max: u64) -> (u64, i32) {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, e.raw_os_error().unwrap_or(0)),
    };
    let chunk = vec![0x5au8; MIB as usize];
    let mut done = 0;
    while done < max {
        if let Err(e) = f.write_all(&chunk) {
            return (done, e.raw_os_error().unwrap_or(0));
        }
        done += MIB;
    }
    // Write-behind reports a refused write at fsync or close at the latest.
    match f.sync_all() {
        Ok(()) => (done, 0),
        Err(e) => (done, e.raw_os_error().unwrap_or(0)),
    }
}

#[test]
fn two_mounts_fill_a_pv_to_its_limit_and_df_follows_an_expansion() {
    let set = ReplicaSet::start();
    let mut q = QuotaAdmin::new(&set.addrs());
    let limit = 24 * MIB;
    let pv = q.create("fill", limit, 0).expect("create PV");
    assert_eq!((pv.byte_limit, pv.bytes_used), (limit, 0));
    let a = pv_mount(&set, "fill");
    let b = pv_mount(&set, "fill");
    assert_eq!(df(a.path()), (limit, 0), "df of an empty PV");

    let (pa, pb) = (a.path().join("a"), b.path().join("b"));
    let ta = std::thread::spawn(move || fill(&pa, 64 * MIB));
    let tb = std::thread::spawn(move || fill(&pb, 64 * MIB));
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!(ra.1, libc::EDQUOT, "writer a stopped by {:?}", ra);
    assert_eq!(rb.1, libc::EDQUOT, "writer b stopped by {:?}", rb);

    let used = q.get("fill").unwrap().bytes_used;
    assert!(used <= limit, "usage {used} passed the limit {limit}");
    // Both writers ran into the limit: it was nearly reached.
    assert!(used + 2 * MIB >= limit, "usage {used} far below {limit}");
    // What the files hold is their allocated blocks, not their sizes: write-behind
    // sends a file's writes concurrently, so one past the refused write may land
    // first and leave a hole below it (the refusal reaches the writer at its next
    // write or fsync, as with NFS).
    use std::os::unix::fs::MetadataExt;
    let held: u64 = ["a", "b"]
        .iter()
        .map(|n| std::fs::metadata(a.path().join(n)).unwrap().blocks() * 512)
        .sum();
    assert!(held <= limit, "files hold {held} bytes, past {limit}");
    assert_eq!(df(a.path()), (limit, used));

    // Growing the PV: both mounts see the new size at once, and writing works again.
    q.expand("fill", 2 * limit).unwrap();
    assert_eq!(df(a.path()).0, 2 * limit);
    assert_eq!(df(b.path()).0, 2 * limit);
    std::fs::write(b.path().join("more"), vec![1u8; MIB as usize]).unwrap();
    assert_eq!(q.get("fill").unwrap().bytes_used, used + MIB);
    // Shrinking is refused with a message that says why.
    let err = q.expand("fill", limit).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("only grow"), "{}", err.message());
}

#[test]
fn sparse_files_links_renames_and_exdev_across_pvs() {
    let set = ReplicaSet::start();
    let mut q = QuotaAdmin::new(&set.addrs());
    q.create("pva", 64 * MIB, 0).unwrap();
    q.create("pvb", 64 * MIB, 0).unwrap();
    let root = Mount::start(&set.addrs(), &MountOptions::replica3());
    let a = root.path().join("pva");
    // A sparse file 4 GiB out occupies one block.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(a.join("sparse"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"x", 4 << 30).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        std::fs::metadata(a.join("sparse")).unwrap().len(),
        (4 << 30) + 1
    );
    let pv = q.get("pva").unwrap();
    assert_eq!((pv.bytes_used, pv.inodes_used), (4096, 1));
    // A hard link counts once; a rename inside the PV keeps usage.
    std::fs::write(a.join("data"), vec![3u8; 10_000]).unwrap();
    std::fs::hard_link(a.join("data"), a.join("link")).unwrap();
    std::fs::create_dir(a.join("sub")).unwrap();
    std::fs::rename(a.join("data"), a.join("sub/data")).unwrap();
    let pv = q.get("pva").unwrap();
    assert_eq!((pv.bytes_used, pv.inodes_used), (4096 + 3 * 4096, 3));
    assert_eq!(std::fs::metadata(a.join("link")).unwrap().nlink(), 2);
    // Across PVs, and between a PV and the rest of the pool: EXDEV.
    let err = std::fs::rename(a.join("link"), root.path().join("pvb/link")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    let err = std::fs::hard_link(a.join("link"), root.path().join("pvb/l2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    let err = std::fs::rename(a.join("link"), root.path().join("outside")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    // The PV directory itself cannot be removed or moved from a mount.
    let err = std::fs::rename(&a, root.path().join("elsewhere")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    // Unlinking the last name frees it all.
    std::fs::remove_file(a.join("link")).unwrap();
    std::fs::remove_file(a.join("sub/data")).unwrap();
    std::fs::remove_file(a.join("sparse")).unwrap();
    let freed = (0..50).find_map(|_| {
        let pv = q.get("pva").unwrap();
        if (pv.bytes_used, pv.inodes_used) == (0, 1) {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    assert!(
        freed.is_some(),
        "usage after removing everything: {:?}",
        q.get("pva")
    );
}

#[test]
fn usage_survives_a_restart_of_every_brick_and_recount_repairs_a_damaged_store() {
    let mut set = ReplicaSet::start();
    let mut q = QuotaAdmin::new(&set.addrs());
    q.create("keep", 64 * MIB, 1000).unwrap();
    {
        let m = pv_mount(&set, "keep");
        for i in 0..8 {
            std::fs::write(m.path().join(format!("f{i}")), vec![i as u8; 300_000]).unwrap();
        }
        std::fs::create_dir(m.path().join("d")).unwrap();
    }
    let before = q.get("keep").unwrap();
    assert_eq!(before.inodes_used, 9);
    assert_eq!(before.bytes_used, 8 * 300_000u64.div_ceil(4096) * 4096);

    for b in &mut set.bricks {
        assert!(b.terminate(Duration::from_secs(15)), "brick did not stop");
    }
    for b in &mut set.bricks {
        b.restart();
    }
    set.wait_leader(Duration::from_secs(30))
        .expect("leader after restart");
    assert_eq!(
        q.get("keep").unwrap(),
        before,
        "usage changed across a restart"
    );

    // Damage the stored usage on every brick, as a bug or a bad disk could.
    for b in &mut set.bricks {
        assert!(b.terminate(Duration::from_secs(15)));
        let store = kadalu_server::store::Store::open(
            &b.dir(),
            0o755,
            kadalu_server::records::Time::new(0, 0),
        )
        .expect("open stopped brick");
        store.debug_set_pv_usage("keep", 12_345, 2).unwrap();
    }
    for b in &mut set.bricks {
        b.restart();
    }
    set.wait_leader(Duration::from_secs(30))
        .expect("leader after restart");
    assert_eq!(q.get("keep").unwrap().bytes_used, 12_345);
    let drift = q.recount("keep").unwrap();
    assert_eq!(drift.len(), 1);
    assert_eq!((drift[0].bytes_before, drift[0].inodes_before), (12_345, 2));
    assert_eq!(
        (drift[0].bytes_after, drift[0].inodes_after),
        (before.bytes_used, before.inodes_used)
    );
    assert_eq!(q.get("keep").unwrap(), before);
    // Every brick holds the repaired usage: the trees agree.
    set.wait_converged(&[0, 1, 2], Duration::from_secs(30))
        .expect("bricks converge after recount");
}

#[test]
fn delete_archive_and_retain_do_what_they_say() {
    let set = ReplicaSet::start();
    let mut q = QuotaAdmin::new(&set.addrs());
    let root = Mount::start(&set.addrs(), &MountOptions::replica3());
    for name in ["gone", "kept", "saved"] {
        let pv = q.create(name, 16 * MIB, 0).unwrap();
        // Creating again with the same size is the same PV; another size is refused.
        assert_eq!(q.create(name, 16 * MIB, 0).unwrap().dir_id, pv.dir_id);
        let err = q.create(name, 32 * MIB, 0).unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
        std::fs::create_dir(root.path().join(name).join("sub")).unwrap();
        std::fs::write(root.path().join(name).join("sub/file"), name).unwrap();
    }
    let err = q.create("Bad_Name", MIB, 0).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let r = q.delete("gone", ReclaimPolicy::Delete).unwrap();
    assert!(r.existed);
    // The mount's kernel cache may hold the name for its entry TTL.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!root.path().join("gone").exists());
    assert_eq!(q.get("gone").unwrap_err().code(), tonic::Code::NotFound);
    // Idempotent: deleting again succeeds and says it was not there.
    assert!(!q.delete("gone", ReclaimPolicy::Delete).unwrap().existed);

    let r = q.delete("saved", ReclaimPolicy::Archive).unwrap();
    assert_eq!(r.archived_as, "archived-saved");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read(root.path().join("archived-saved/sub/file")).unwrap(),
        b"saved"
    );
    assert!(!root.path().join("saved").exists());

    let r = q.delete("kept", ReclaimPolicy::Retain).unwrap();
    assert!(r.existed);
    assert_eq!(
        std::fs::read(root.path().join("kept/sub/file")).unwrap(),
        b"kept"
    );
    let names: Vec<String> = q.list().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, vec!["kept".to_string()]);
    let cap = q.capacity().unwrap();
    assert_eq!(cap.pv_count, 1);
    assert!(cap.fs_free_bytes > 0 && cap.fs_total_bytes >= cap.fs_free_bytes);
}
