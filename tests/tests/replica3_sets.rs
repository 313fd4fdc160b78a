//! A pool of two Replica3 sets (six bricks) mounted as one file system:
//! names under the root spread over both sets, every file lives wholly in
//! one, inode numbers are unique across the pool, the root lists every
//! entry of both, `df` adds them up, and rename or link across sets is
//! EXDEV (which `mv` and `cp` handle by copying).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use kadalu_e2e::{Mount, MountOptions, ReplicaSet};

const SET_SHIFT: u32 = kadalu_proto::SET_SHIFT;

#[test]
fn two_sets_make_one_namespace() {
    let s0 = ReplicaSet::start_with(3, &["--set-index", "0"]);
    let s1 = ReplicaSet::start_with(3, &["--set-index", "1"]);
    let mut addrs = s0.addrs();
    addrs.extend(s1.addrs());
    let opts = MountOptions {
        set_size: Some(3),
        entry_ttl: Some(0.2),
        attr_ttl: Some(0.2),
        ..MountOptions::default()
    };
    let m = Mount::start(&addrs, &opts);
    let root = m.path();

    let mut inos = HashSet::new();
    let mut set_of_dir = Vec::new();
    for i in 0..24 {
        let d = root.join(format!("dir-{i}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("file"), format!("in {i}")).unwrap();
        let dm = std::fs::metadata(&d).unwrap();
        let fm = std::fs::metadata(d.join("file")).unwrap();
        // A file lives in its directory's set.
        assert_eq!(dm.ino() >> SET_SHIFT, fm.ino() >> SET_SHIFT, "dir-{i}");
        assert!(
            inos.insert(dm.ino()) && inos.insert(fm.ino()),
            "inode reused"
        );
        set_of_dir.push(dm.ino() >> SET_SHIFT);
    }
    let in_set1 = set_of_dir.iter().filter(|&&s| s == 1).count();
    assert!(
        in_set1 > 0 && in_set1 < 24,
        "names did not spread over the sets: {set_of_dir:?}"
    );

    // The root lists both sets' entries, each once.
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..24).map(|i| format!("dir-{i}")).collect();
    want.sort();
    assert_eq!(names, want);

    // Creating an existing name fails whichever set holds it.
    for i in 0..24 {
        let e = std::fs::create_dir(root.join(format!("dir-{i}"))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "dir-{i}");
    }

    // Across sets: EXDEV; within a set: fine.
    let a = set_of_dir.iter().position(|&s| s == 0).unwrap();
    let b = set_of_dir.iter().position(|&s| s == 1).unwrap();
    let from = root.join(format!("dir-{a}/file"));
    let e = std::fs::rename(&from, root.join(format!("dir-{b}/moved"))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    let e = std::fs::hard_link(&from, root.join(format!("dir-{b}/linked"))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    let a2 = set_of_dir.iter().rposition(|&s| s == 0).unwrap();
    std::fs::rename(&from, root.join(format!("dir-{a2}/moved"))).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join(format!("dir-{a2}/moved"))).unwrap(),
        format!("in {a}")
    );
    // A top-level rename keeps the entry in its set and findable.
    std::fs::rename(root.join(format!("dir-{b}")), root.join("renamed-top")).unwrap();
    assert!(root.join("renamed-top/file").exists());
    assert!(!root.join(format!("dir-{b}")).exists());

    // df adds both sets up: more than one set alone.
    let whole = nix::sys::statvfs::statvfs(root).unwrap();
    let one = nix::sys::statvfs::statvfs(s0.bricks[0].dir().as_path()).unwrap();
    assert!(
        whole.blocks() as u128 * whole.fragment_size() as u128
            > one.blocks() as u128 * one.fragment_size() as u128,
        "df of the pool is not the sum of its sets"
    );

    // Each set keeps its three bricks identical.
    s0.wait_converged(&[0, 1, 2], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("set 0: {e}"));
    s1.wait_converged(&[0, 1, 2], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("set 1: {e}"));
}
