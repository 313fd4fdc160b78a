//! Rough timing of the apply path (not a test): creates and writes N files.
use kadalu_proto::{FileId, ROOT_ID};
use kadalu_server::apply::StateMachine;
use kadalu_server::ops::{Command, Operation};
use kadalu_server::records::Time;
use kadalu_server::store::Store;
use prost::bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 0o755, Time::new(1, 0)).unwrap());
    let mut sm = StateMachine::new(store.clone());
    let t = Instant::now();
    for i in 0..n {
        let cmd = Command {
            request: if std::env::var_os("NODEDUPE").is_some() {
                None
            } else {
                Some(kadalu_server::ops::RequestId {
                    client: 1,
                    seq: i + 1,
                    ack_below: i,
                })
            },
            now: Time::new(2, 0),
            op: Operation::Create {
                parent: ROOT_ID,
                name: Bytes::from(format!("f{i}")),
                id: FileId::from_parts(9, i + 10),
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive: true,
                truncate: false,
            },
        };
        sm.apply(&cmd).unwrap();
    }
    let el = t.elapsed();
    println!("create: {:?} per op", el / n as u32);
    let t = Instant::now();
    for i in 0..n {
        store.lookup(ROOT_ID, format!("f{i}").as_bytes()).unwrap();
    }
    println!("lookup: {:?} per op", t.elapsed() / n as u32);
    let t = Instant::now();
    let data = Bytes::from(vec![1u8; 4096]);
    for i in 0..n {
        sm.apply(&Command {
            request: None,
            now: Time::new(3, 0),
            op: Operation::Write {
                id: FileId::from_parts(9, 10),
                offset: i * 4096,
                data: data.clone(),
                append: false,
            },
        })
        .unwrap();
    }
    println!("write 4k: {:?} per op", t.elapsed() / n as u32);
    let t = Instant::now();
    sm.make_durable().unwrap();
    println!("durable: {:?}", t.elapsed());
    let applier = kadalu_server::applier::Applier::new(sm, 1);
    let id = FileId::from_parts(9, 10);
    let rounds = 200u32;
    let t = Instant::now();
    for i in 0..rounds {
        applier
            .apply(&Command {
                request: None,
                now: Time::new(4, 0),
                op: Operation::Write {
                    id,
                    offset: i as u64 * 4096,
                    data: data.clone(),
                    append: false,
                },
            })
            .unwrap();
        applier.fsync(id, false).unwrap();
    }
    println!("write 4k + fsync: {:?} per op", t.elapsed() / rounds);
    let t = Instant::now();
    for _ in 0..rounds {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.object_path(id))
            .unwrap();
        std::os::unix::fs::FileExt::write_at(&f, &data, 0).unwrap();
        f.sync_all().unwrap();
    }
    println!("bare pwrite + fsync: {:?} per op", t.elapsed() / rounds);
}
