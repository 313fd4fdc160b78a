//! Rough timing of the apply path (not a test): creates and writes N files,
//! once straight into the state machine (no journal) and once through the
//! applier (journal append + apply), which is what the service does.
use kadalu_proto::{FileId, ROOT_ID};
use kadalu_server::applier::Applier;
use kadalu_server::apply::StateMachine;
use kadalu_server::ops::{Command, Operation, Outcome};
use kadalu_server::records::Time;
use kadalu_server::store::Store;
use kadalu_server::FsResult;
use prost::bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn create(i: u64, hi: u64) -> Command {
    Command {
        request: if std::env::var_os("NODEDUPE").is_some() {
            None
        } else {
            Some(kadalu_server::ops::RequestId {
                client: hi as u128,
                seq: i + 1,
                ack_below: i,
            })
        },
        now: Time::new(2, 0),
        op: Operation::Create {
            parent: ROOT_ID,
            name: Bytes::from(format!("f{hi}-{i}")),
            id: FileId::from_parts(hi, i + 10),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            truncate: false,
        },
    }
}

fn write(id: FileId, offset: u64, data: &Bytes) -> Command {
    Command {
        request: None,
        now: Time::new(3, 0),
        op: Operation::Write {
            id,
            offset,
            data: data.clone(),
            append: false,
        },
    }
}

/// Runs `n` commands through `apply` and prints the time per command.
fn time(
    label: &str,
    n: u64,
    mut apply: impl FnMut(&Command) -> FsResult<Outcome>,
    cmd: impl Fn(u64) -> Command,
) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        apply(&cmd(i)).unwrap();
    }
    let per = t.elapsed() / n as u32;
    println!("{label}: {per:?} per op");
    per
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 0o755, Time::new(1, 0)).unwrap());
    let data = Bytes::from(vec![1u8; 4096]);
    let big = Bytes::from(vec![2u8; 1 << 20]);
    let big_n = (n / 20).max(10);
    let first = FileId::from_parts(9, 10);
    {
        let mut sm = StateMachine::new(store.clone()).unwrap();
        time(
            "create (state machine only)",
            n,
            |c| sm.apply(c),
            |i| create(i, 9),
        );
        let t = Instant::now();
        for i in 0..n {
            store.lookup(ROOT_ID, format!("f9-{i}").as_bytes()).unwrap();
        }
        println!("lookup: {:?} per op", t.elapsed() / n as u32);
        time(
            "write 4k (state machine only)",
            n,
            |c| sm.apply(c),
            |i| write(first, i * 4096, &data),
        );
        time(
            "write 1M (state machine only)",
            big_n,
            |c| sm.apply(c),
            |i| write(FileId::from_parts(9, 11), i << 20, &big),
        );
        let t = Instant::now();
        sm.make_durable().unwrap();
        println!("durable: {:?}", t.elapsed());
    }
    let applier = Applier::open(store.clone(), Time::new(1, 0), 1).unwrap();
    time(
        "create (applier: journal + apply)",
        n,
        |c| applier.apply(c),
        |i| create(i, 8),
    );
    let second = FileId::from_parts(8, 10);
    time(
        "write 4k (applier: journal + apply)",
        n,
        |c| applier.apply(c),
        |i| write(second, i * 4096, &data),
    );
    time(
        "write 1M (applier: journal + apply)",
        big_n,
        |c| applier.apply(c),
        |i| write(FileId::from_parts(8, 11), i << 20, &big),
    );
    let t = Instant::now();
    applier.make_durable().unwrap();
    println!("checkpoint: {:?}", t.elapsed());
    let rounds = 200u32;
    let t = Instant::now();
    for i in 0..rounds {
        applier
            .apply(&write(first, i as u64 * 4096, &data))
            .unwrap();
        applier.fsync(first, false).unwrap();
    }
    println!("write 4k + fsync: {:?} per op", t.elapsed() / rounds);
    let t = Instant::now();
    for _ in 0..rounds {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.object_path(first))
            .unwrap();
        std::os::unix::fs::FileExt::write_at(&f, &data, 0).unwrap();
        f.sync_all().unwrap();
    }
    println!("bare pwrite + fsync: {:?} per op", t.elapsed() / rounds);
}
