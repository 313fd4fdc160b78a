//! Replica3 end to end: three real bricks on loopback in one Raft group,
//! mounted through FUSE. Writers keep writing checksummed records while
//! bricks are killed, paused, cut off and wiped; afterwards every
//! acknowledged record is intact and the three brick trees are identical
//! (sha256 digests of content and metadata). Every wait is bounded.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kadalu_e2e::{Mount, MountOptions, ReplicaSet};
use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::brick::{GetAttrRequest, MkdirRequest, RequestHeader};
use sha2::{Digest, Sha256};

const RECORD: usize = 4096;
/// Longest a whole test scenario may take to converge after the faults end.
const CONVERGE: Duration = Duration::from_secs(60);

fn mount_opts() -> MountOptions {
    MountOptions::replica3()
}

/// A record: sequence number, writer id, sha256 of the rest, filler.
fn record(writer: u32, seq: u64) -> Vec<u8> {
    let mut body = vec![0u8; RECORD - 32];
    body[..8].copy_from_slice(&seq.to_le_bytes());
    body[8..12].copy_from_slice(&writer.to_le_bytes());
    for (i, b) in body[12..].iter_mut().enumerate() {
        *b = (seq as usize * 31 + i * 7 + writer as usize) as u8;
    }
    let mut out = Sha256::digest(&body).to_vec();
    out.extend_from_slice(&body);
    out
}

fn check_record(writer: u32, seq: u64, got: &[u8]) -> Result<(), String> {
    if got.len() != RECORD {
        return Err(format!(
            "record {seq} of writer {writer}: {} bytes",
            got.len()
        ));
    }
    if Sha256::digest(&got[32..]).as_slice() != &got[..32] {
        return Err(format!(
            "record {seq} of writer {writer}: checksum mismatch"
        ));
    }
    if got != record(writer, seq).as_slice() {
        return Err(format!("record {seq} of writer {writer}: wrong content"));
    }
    Ok(())
}

/// What a writer did: records acknowledged (written and fsync'd), errors
/// seen, and the longest a single record took.
struct WriterReport {
    acked: u64,
    errors: Vec<String>,
    longest: Duration,
}

/// A thread writing records at fixed offsets of its own file, fsync after
/// each, until told to stop.
fn writer(dir: PathBuf, id: u32, stop: Arc<AtomicBool>) -> JoinHandle<WriterReport> {
    std::thread::spawn(move || {
        let path = dir.join(format!("writer-{id}"));
        let mut report = WriterReport {
            acked: 0,
            errors: Vec::new(),
            longest: Duration::ZERO,
        };
        let f = match OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                report.errors.push(format!("open: {e}"));
                return report;
            }
        };
        let mut seq = 0u64;
        // Bounded: a writer never runs more than 5 minutes.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let started = Instant::now();
            let rec = record(id, seq);
            let r = f
                .write_all_at(&rec, seq * RECORD as u64)
                .and_then(|_| f.sync_data());
            report.longest = report.longest.max(started.elapsed());
            match r {
                Ok(()) => {
                    seq += 1;
                    report.acked = seq;
                }
                Err(e) => {
                    report.errors.push(format!("record {seq}: {e}"));
                    if report.errors.len() > 20 {
                        break;
                    }
                }
            }
        }
        report
    })
}

fn verify_records(dir: &Path, id: u32, acked: u64) {
    let mut f = std::fs::File::open(dir.join(format!("writer-{id}"))).expect("open records");
    let mut all = Vec::new();
    f.read_to_end(&mut all).expect("read records");
    assert!(
        all.len() as u64 >= acked * RECORD as u64,
        "writer {id}: {} bytes, {acked} records acknowledged",
        all.len()
    );
    for seq in 0..acked {
        let at = seq as usize * RECORD;
        check_record(id, seq, &all[at..at + RECORD]).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A raw mkdir of `name` in the root, as client `client` (its first request).
fn mkdir_in_root(client: u8, name: &'static str) -> MkdirRequest {
    MkdirRequest {
        header: Some(RequestHeader {
            client_id: vec![client; 16].into(),
            seq: 1,
            ack_below: 0,
        }),
        parent: kadalu_proto::ROOT_ID.to_wire(),
        name: name.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

fn others(set: &ReplicaSet, but: usize) -> Vec<usize> {
    (0..set.bricks.len()).filter(|&i| i != but).collect()
}

#[test]
fn replicas_hold_the_same_tree() {
    let set = ReplicaSet::start();
    let m = Mount::start(&set.addrs(), &mount_opts());
    let root = m.path();
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    for i in 0..50 {
        std::fs::write(root.join(format!("a/f{i}")), format!("content {i}")).unwrap();
    }
    std::fs::rename(root.join("a/f1"), root.join("a/b/moved")).unwrap();
    std::fs::hard_link(root.join("a/f2"), root.join("a/b/c/link")).unwrap();
    std::os::unix::fs::symlink("../f3", root.join("a/b/sym")).unwrap();
    std::fs::remove_file(root.join("a/f4")).unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("sparse"))
        .unwrap();
    f.write_all_at(b"far away", 5 << 30).unwrap();
    drop(f);
    let mut appender = OpenOptions::new()
        .append(true)
        .create(true)
        .open(root.join("log"))
        .unwrap();
    for i in 0..20 {
        writeln!(appender, "line {i}").unwrap();
    }
    drop(appender);
    assert_eq!(
        std::fs::read_to_string(root.join("a/b/moved")).unwrap(),
        "content 1"
    );
    let lines = std::fs::read_to_string(root.join("log")).unwrap();
    assert_eq!(lines.lines().count(), 20);
    set.wait_converged(&[0, 1, 2], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_follower_refuses_and_names_the_leader() {
    let set = ReplicaSet::start();
    let leader = set.wait_leader(Duration::from_secs(20)).expect("leader");
    let follower = others(&set, leader)[0];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = format!("http://{}", set.bricks[follower].addr());
    let leader_addr = set.bricks[leader].addr().to_string();
    rt.block_on(async move {
        let mut c = BrickClient::connect(addr).await.unwrap();
        let read = c
            .get_attr(GetAttrRequest {
                id: kadalu_proto::ROOT_ID.to_wire(),
            })
            .await
            .unwrap_err();
        assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");
        let hint = read
            .metadata()
            .get(kadalu_proto::LEADER_HINT_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(hint.as_deref(), Some(leader_addr.as_str()));
        let write = c.mkdir(mkdir_in_root(7, "nope")).await.unwrap_err();
        assert_eq!(write.code(), tonic::Code::Unavailable, "{write:?}");
    });
}

/// The test: writers never see an error while one brick at a time is
/// killed -9 (the leader first, then a follower) and restarted; afterwards
/// every acknowledged record is intact and the trees are identical.
#[test]
fn writers_survive_leader_and_follower_kills() {
    let mut set = ReplicaSet::start();
    let m = Mount::start(&set.addrs(), &mount_opts());
    let dir = m.path().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| writer(dir.clone(), i, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    let leader = set.wait_leader(Duration::from_secs(10)).expect("leader");
    let killed_at = Instant::now();
    set.bricks[leader].kill();
    let next = set
        .wait_leader(Duration::from_secs(15))
        .expect("no new leader after the leader was killed");
    eprintln!("new leader after {:?}", killed_at.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    set.bricks[leader].restart();
    set.wait_converged(&[0, 1, 2], CONVERGE).ok();

    let follower = others(&set, next)[0];
    set.bricks[follower].kill();
    std::thread::sleep(Duration::from_secs(3));
    set.bricks[follower].restart();
    std::thread::sleep(Duration::from_secs(2));

    stop.store(true, Ordering::Relaxed);
    let reports: Vec<WriterReport> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "writer {i}: {} records, longest pause {:?}",
            r.acked, r.longest
        );
        assert!(r.errors.is_empty(), "writer {i} saw errors: {:?}", r.errors);
        assert!(r.acked > 10, "writer {i} made no progress");
        verify_records(&dir, i as u32, r.acked);
    }
    set.wait_converged(&[0, 1, 2], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A paused (SIGSTOP) leader: the others elect a new one and the writers go
/// on; when it resumes it steps down and catches up.
#[test]
fn a_paused_leader_is_replaced() {
    let mut set = ReplicaSet::start();
    let m = Mount::start(&set.addrs(), &mount_opts());
    let dir = m.path().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(dir.clone(), 0, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let leader = set.wait_leader(Duration::from_secs(10)).expect("leader");
    set.bricks[leader].pause();
    std::thread::sleep(Duration::from_secs(8));
    set.bricks[leader].resume();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let r = w.join().unwrap();
    eprintln!("writer: {} records, longest pause {:?}", r.acked, r.longest);
    assert!(r.errors.is_empty(), "writer saw errors: {:?}", r.errors);
    verify_records(&dir, 0, r.acked);
    set.wait_converged(&[0, 1, 2], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A leader cut off from both followers cannot write or read; the majority
/// elects a leader and carries on; after the partition heals all converge.
#[test]
fn the_minority_side_of_a_partition_refuses() {
    let set = ReplicaSet::start();
    let m = Mount::start(&set.addrs(), &mount_opts());
    std::fs::write(m.path().join("before"), b"x").unwrap();
    let leader = set.wait_leader(Duration::from_secs(10)).expect("leader");
    let ids: Vec<u64> = (0..3).map(|i| set.status(i).unwrap().node_id).collect();
    let rest = others(&set, leader);
    set.block(leader, rest.iter().map(|&i| ids[i]).collect())
        .unwrap();
    for &i in &rest {
        set.block(i, vec![ids[leader]]).unwrap();
    }
    // The old leader, asked directly, neither writes nor reads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = format!("http://{}", set.bricks[leader].addr());
    rt.block_on(async move {
        let mut c = BrickClient::connect(addr).await.unwrap();
        let write = c.mkdir(mkdir_in_root(9, "minority")).await;
        assert!(write.is_err(), "the minority wrote: {write:?}");
        let read = c
            .get_attr(GetAttrRequest {
                id: kadalu_proto::ROOT_ID.to_wire(),
            })
            .await;
        assert!(read.is_err(), "the minority answered a read: {read:?}");
    });
    // The majority carries on, through the same mount.
    std::fs::write(m.path().join("during"), b"y").unwrap();
    assert!(!m.path().join("minority").exists());
    // openraft 0.9 leaves a cut-off leader in its Leader state (it just
    // cannot commit), so look for a leader among the majority alone.
    let deadline = Instant::now() + Duration::from_secs(15);
    let majority_leader = loop {
        let l = rest
            .iter()
            .copied()
            .find(|&i| matches!(set.status(i), Ok(s) if s.state == "leader"));
        if l.is_some() || Instant::now() >= deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(majority_leader.is_some(), "no leader on the majority side");
    for i in 0..3 {
        set.block(i, vec![]).unwrap();
    }
    set.wait_converged(&[0, 1, 2], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read(m.path().join("during")).unwrap(), b"y");
}

/// A brick whose directory is wiped (a new disk) comes back as a new member
/// in the old one's place and receives a full copy: by snapshot, because the
/// log it would need has been compacted away.
#[test]
fn a_wiped_brick_is_rebuilt() {
    let mut set = ReplicaSet::start_with(3, &["--snapshot-every", "64", "--keep-entries", "16"]);
    let m = Mount::start(&set.addrs(), &mount_opts());
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 13 % 251) as u8).collect();
    for i in 0..24 {
        std::fs::write(m.path().join(format!("big-{i}")), &data).unwrap();
    }
    for i in 0..200 {
        std::fs::create_dir(m.path().join(format!("d{i}"))).unwrap();
    }
    let leader = set.wait_leader(Duration::from_secs(10)).expect("leader");
    let victim = others(&set, leader)[0];
    let old_id = set.status(victim).unwrap().node_id;
    let started = Instant::now();
    set.bricks[victim].wipe_and_restart();
    // Writes go on meanwhile.
    std::fs::write(m.path().join("while-healing"), b"z").unwrap();
    set.wait_converged(&[0, 1, 2], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    let took = started.elapsed();
    eprintln!(
        "rebuilt {} MiB in {:?} ({:.1} MiB/s)",
        24,
        took,
        24.0 / took.as_secs_f64()
    );
    let new_id = set.status(victim).unwrap().node_id;
    assert_ne!(old_id, new_id, "a wiped brick must come back as a new node");
    // The new member becomes a voter in the old one's place: the set
    // survives losing another brick.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let heal = set
            .wait_leader(Duration::from_secs(10))
            .and_then(|l| set.heal_info(l).ok());
        let done = heal.as_ref().is_some_and(|h| {
            h.members.iter().any(|mm| mm.node_id == new_id && mm.voter)
                && !h.members.iter().any(|mm| mm.node_id == old_id)
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new node did not replace the old one: {heal:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A client whose reply was lost retries on the new leader with the same
/// request id: create, append and rename take effect once, and the retry gets
/// the first attempt's answer.
#[test]
fn a_retried_mutation_applies_once_across_failover() {
    use kadalu_proto::brick::{CreateRequest, GetAttrRequest, RenameRequest, WriteRequest};
    let mut set = ReplicaSet::start();
    let leader = set.wait_leader(Duration::from_secs(20)).expect("leader");
    let client_id: prost::bytes::Bytes = vec![0x5a; 16].into();
    let header = |seq: u64| {
        Some(RequestHeader {
            client_id: client_id.clone(),
            seq,
            ack_below: 0,
        })
    };
    let root = kadalu_proto::ROOT_ID.to_wire();
    let create = CreateRequest {
        header: header(1),
        parent: root.clone(),
        name: "once".into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        flags: libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addrs = set.addrs();
    let connect = |i: usize| {
        let addr = format!("http://{}", addrs[i]);
        rt.block_on(async move { BrickClient::connect(addr).await.unwrap() })
    };
    let mut c = connect(leader);
    let first = rt.block_on(c.create(create.clone())).unwrap().into_inner();
    let id = first.attr.as_ref().unwrap().id.clone();
    let append = WriteRequest {
        header: header(2),
        id: id.clone(),
        handle: first.handle,
        offset: 0,
        data: "0123456789".into(),
        append: true,
    };
    rt.block_on(c.write(append.clone())).unwrap();
    let rename = RenameRequest {
        header: header(3),
        parent: root.clone(),
        name: "once".into(),
        new_parent: root.clone(),
        new_name: "renamed".into(),
        flags: 0,
    };
    rt.block_on(c.rename(rename.clone())).unwrap();
    drop(c);

    // Every reply "lost": the leader dies, the client retries elsewhere.
    set.bricks[leader].kill();
    let next = set
        .wait_leader(Duration::from_secs(15))
        .expect("no new leader");
    let mut c = connect(next);
    let again = rt.block_on(c.create(create)).expect("retried create");
    assert_eq!(
        again.into_inner().attr.unwrap().id,
        id,
        "the retry made another file"
    );
    rt.block_on(c.write(append)).expect("retried append");
    rt.block_on(c.rename(rename)).expect("retried rename");
    let attr = rt
        .block_on(c.get_attr(GetAttrRequest { id: id.clone() }))
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(attr.size, 10, "the append applied twice");
    let names = rt
        .block_on(c.read_dir(kadalu_proto::brick::ReadDirRequest {
            id: root,
            cursor: 0,
            max_entries: 100,
            plus: false,
        }))
        .unwrap()
        .into_inner();
    let names: Vec<_> = names.entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, vec![prost::bytes::Bytes::from("renamed")]);
}

/// A brick away for longer than the log keeps (the log was compacted past
/// where it stopped) is brought back by a snapshot over its old content,
/// then the log after it.
#[test]
fn a_brick_away_past_the_log_catches_up_by_snapshot() {
    let mut set = ReplicaSet::start_with(3, &["--snapshot-every", "32", "--keep-entries", "8"]);
    let m = Mount::start(&set.addrs(), &mount_opts());
    for i in 0..20 {
        std::fs::write(m.path().join(format!("early-{i}")), b"before").unwrap();
    }
    let leader = set.wait_leader(Duration::from_secs(10)).expect("leader");
    let away = others(&set, leader)[0];
    set.wait_converged(&[0, 1, 2], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
    set.bricks[away].kill();
    for i in 0..150 {
        std::fs::create_dir(m.path().join(format!("while-away-{i}"))).unwrap();
    }
    std::fs::remove_file(m.path().join("early-3")).unwrap();
    let present = others(&set, away);
    let heal = set
        .heal_info(set.wait_leader(Duration::from_secs(10)).unwrap())
        .unwrap();
    assert!(
        heal.members.iter().any(|mm| mm.needs_snapshot),
        "the log was not compacted past the absent brick: {heal:?}"
    );
    set.bricks[away].restart();
    set.wait_converged(&[present[0], present[1], away], CONVERGE)
        .unwrap_or_else(|e| panic!("{e}"));
}
