//! Large directories list completely, and listings stay exact for every entry
//! that existed throughout, while other entries come and go.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kadalu_e2e::sys;
use kadalu_e2e::{MountOptions, Pool};

/// Names of `dir` without `.` and `..`, with how often each was returned.
fn counted_names(dir: &Path) -> BTreeMap<Vec<u8>, usize> {
    let mut counts = BTreeMap::new();
    for (name, _) in sys::read_dir(dir).expect("readdir") {
        if name != b"." && name != b".." {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

/// Creates `names` in `dir`, split across `threads` threads, each with open+close.
fn create_all(dir: &Path, names: &[String], threads: usize) {
    std::thread::scope(|s| {
        for chunk in names.chunks(names.len().div_ceil(threads)) {
            s.spawn(move || {
                for n in chunk {
                    let fd = sys::open(
                        &dir.join(n),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                        0o644,
                    )
                    .unwrap_or_else(|e| panic!("create {n}: {e}"));
                    sys::close(fd).unwrap_or_else(|e| panic!("close {n}: {e}"));
                }
            });
        }
    });
}

fn assert_exact(listing: &BTreeMap<Vec<u8>, usize>, expected: &BTreeSet<Vec<u8>>, what: &str) {
    let dups: Vec<_> = listing.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        dups.is_empty(),
        "{what}: names returned more than once, e.g. {dups:?}"
    );
    let got: BTreeSet<Vec<u8>> = listing.keys().cloned().collect();
    let missing: Vec<_> = expected
        .difference(&got)
        .take(5)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    let extra: Vec<_> = got
        .difference(expected)
        .take(5)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} listed, {} expected; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
        got.len(),
        expected.len()
    );
}

#[test]
fn ten_thousand_entries_list_completely() {
    let mut pool = Pool::start();
    let dir = pool.path().join("big");
    sys::mkdir(&dir, 0o755).unwrap();
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("file-{i:05}-{}", "x".repeat(i % 40)))
        .collect();
    let started = Instant::now();
    create_all(&dir, &names, 4);
    eprintln!("created 10,000 files in {:?}", started.elapsed());
    let expected: BTreeSet<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();

    let started = Instant::now();
    assert_exact(
        &counted_names(&dir),
        &expected,
        "listing on the creating mount",
    );
    eprintln!("listed 10,000 entries in {:?}", started.elapsed());
    assert_eq!(
        sys::read_dir(&dir).unwrap().len(),
        10_002,
        "count including . and .."
    );

    // A fresh client has nothing cached: the listing comes from the server alone.
    let fresh = pool.add_mount(&MountOptions::default()).path().join("big");
    assert_exact(
        &counted_names(&fresh),
        &expected,
        "listing on a fresh mount",
    );

    // Remove every tenth entry and list again: cursors must skip the holes.
    let dir = pool.path().join("big");
    for n in names.iter().step_by(10) {
        sys::unlink(&dir.join(n)).unwrap();
    }
    let remaining: BTreeSet<Vec<u8>> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, n)| n.as_bytes().to_vec())
        .collect();
    assert_exact(
        &counted_names(&dir),
        &remaining,
        "listing after removing a tenth",
    );
    assert_exact(
        &counted_names(&fresh),
        &remaining,
        "fresh mount after removing a tenth",
    );
}

#[test]
fn listing_is_exact_while_entries_come_and_go() {
    let pool = Pool::start_with(2, &MountOptions::default());
    let dir_a = pool.mount(0).path().join("busy");
    let dir_b = pool.mount(1).path().join("busy");
    sys::mkdir(&dir_a, 0o755).unwrap();
    let stable: Vec<String> = (0..2000).map(|i| format!("stable-{i:04}")).collect();
    create_all(&dir_a, &stable, 2);
    let expected: BTreeSet<Vec<u8>> = stable.iter().map(|n| n.as_bytes().to_vec()).collect();

    // Churn through the other client so that the changes reach the server
    // concurrently with the listing, not serialized behind it in one kernel.
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, churned, dir) = (Arc::clone(&stop), Arc::clone(&churned), dir_b.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                // Names are never reused, so a churn name seen twice is a real duplicate.
                let fd = sys::open(
                    &dir.join(format!("churn-{n:06}")),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o644,
                )
                .expect("churn create");
                sys::close(fd).expect("churn close");
                if n >= 20 {
                    sys::unlink(&dir.join(format!("churn-{:06}", n - 20))).expect("churn unlink");
                }
                n += 1;
                churned.store(n, Ordering::Relaxed);
            }
        })
    };

    // Keep listing until enough listings overlapped enough churn (a listing is
    // much faster than the churn's creates), within a bound.
    let started = Instant::now();
    let mut listings = 0;
    let mut overlapped = 0;
    while (listings < 3 || overlapped < 100) && started.elapsed() < Duration::from_secs(30) {
        let before = churned.load(Ordering::Relaxed);
        let listing = counted_names(&dir_a);
        let during = churned.load(Ordering::Relaxed) - before;
        overlapped += during;
        let dups: Vec<_> = listing.iter().filter(|(_, c)| **c > 1).take(5).collect();
        assert!(dups.is_empty(), "listing {listings}: duplicates {dups:?}");
        let stable_seen: BTreeSet<Vec<u8>> = listing
            .keys()
            .filter(|n| n.starts_with(b"stable-"))
            .cloned()
            .collect();
        let missing: Vec<_> = expected.difference(&stable_seen).take(5).collect();
        assert!(
            missing.is_empty(),
            "listing {listings}: {} stable entries missing, e.g. {missing:?}",
            expected.len() - stable_seen.len()
        );
        assert!(
            listing
                .keys()
                .all(|n| n.starts_with(b"stable-") || n.starts_with(b"churn-")),
            "listing {listings}: names that never existed"
        );
        eprintln!(
            "listing {listings}: {} entries, {during} churn ops during it",
            listing.len()
        );
        listings += 1;
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().expect("churn thread");
    eprintln!("{listings} listings overlapping {overlapped} churn operations");
    assert!(listings >= 3, "only {listings} listings in 30 s");
    assert!(
        overlapped >= 20,
        "only {overlapped} churn operations overlapped a listing; the test proved nothing"
    );

    // Once quiet, the listing is exact again: stable names plus the last 20 churn names.
    let total = churned.load(Ordering::Relaxed);
    let mut quiet = expected.clone();
    for n in total.saturating_sub(20)..total {
        quiet.insert(format!("churn-{n:06}").into_bytes());
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_exact(&counted_names(&dir_a), &quiet, "quiet listing after churn");
}
