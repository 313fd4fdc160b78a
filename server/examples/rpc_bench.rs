//! Measures one gRPC round trip to a running brick (GetAttr of the root, one
//! at a time): the transport's floor under every latency-bound file-system
//! operation. `cargo run --release -p kadalu-server --example rpc_bench -- HOST:PORT`.

use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::brick::GetAttrRequest;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .ok_or("usage: rpc_bench HOST:PORT (a running kadalu-server)")?;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut c = BrickClient::new(ch);
    let n = 5000;
    let t = Instant::now();
    for _ in 0..n {
        c.get_attr(GetAttrRequest {
            id: kadalu_proto::ROOT_ID.to_wire(),
        })
        .await?;
    }
    println!(
        "GetAttr round trip: {:.0} us",
        t.elapsed().as_micros() as f64 / n as f64
    );
    Ok(())
}
