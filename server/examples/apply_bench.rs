//! Measures the brick's apply path alone (no gRPC, no FUSE): how many 4 KiB
//! random overwrites, creates and unlinks one applier does per second on a
//! brick directory. `cargo run --release -p kadalu-server --example apply_bench [DIR]`.

use kadalu_proto::{FileId, ROOT_ID};
use kadalu_server::applier::Applier;
use kadalu_server::ops::{Command, Operation};
use kadalu_server::records::Time;
use kadalu_server::store::Store;
use prost::bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base)?;
    let store = Arc::new(Store::open(dir.path(), 0o755, Time::new(1, 0))?);
    let applier = Applier::open(store, Time::new(1, 0), 1)?;
    let mut t = 10i64;
    let mut cmd = |op| {
        t += 1;
        Command {
            request: None,
            now: Time::new(t, 0),
            op,
        }
    };
    let file = FileId::from_parts(0, 1000);
    applier.apply(&cmd(Operation::Create {
        parent: ROOT_ID,
        name: Bytes::from_static(b"f"),
        id: file,
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
        truncate: false,
    }))?;
    let data = Bytes::from(vec![1u8; 4096]);
    let n = 50_000u64;
    let start = Instant::now();
    let mut x = 12345u64;
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let block = (x >> 33) % 65536;
        applier.apply(&cmd(Operation::Write {
            id: file,
            offset: block * 4096,
            data: data.clone(),
            append: false,
        }))?;
    }
    let el = start.elapsed();
    println!(
        "4k writes: {:.0}/s ({:.1} us each)",
        n as f64 / el.as_secs_f64(),
        el.as_micros() as f64 / n as f64
    );
    let start = Instant::now();
    let files = 20_000u64;
    for i in 0..files {
        applier.apply(&cmd(Operation::Create {
            parent: ROOT_ID,
            name: Bytes::from(format!("c{i}")),
            id: FileId::from_parts(0, 2000 + i),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            truncate: false,
        }))?;
    }
    let el = start.elapsed();
    println!("creates: {:.0}/s", files as f64 / el.as_secs_f64());
    let start = Instant::now();
    for i in 0..files {
        applier.apply(&cmd(Operation::Unlink {
            parent: ROOT_ID,
            name: Bytes::from(format!("c{i}")),
        }))?;
    }
    let el = start.elapsed();
    println!("unlinks: {:.0}/s", files as f64 / el.as_secs_f64());
    Ok(())
}
