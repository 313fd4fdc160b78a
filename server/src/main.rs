//! `kadalu-server`: serves one brick directory over gRPC.

use anyhow::Context;
use clap::Parser;
use kadalu_server::raft::node::RaftOptions;
use kadalu_server::server::Brick;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// The request path allocates per message (frames, buffers, futures) on
// several threads at once, where glibc's allocator spent about a tenth of the
// brick's CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// openraft logs every failed heartbeat to a dead peer at WARN and ERROR,
/// several times a second; a brick reports peer trouble through `Status`
/// and `HealInfo` instead, so those lines are off unless RUST_LOG asks.
const DEFAULT_LOG_FILTER: &str =
    "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

#[derive(Parser, Debug)]
#[command(name = "kadalu-server", about = "Serve one kadalu brick over gRPC")]
struct Args {
    /// Directory holding the brick (created and formatted if empty).
    #[arg(long, env = "KADALU_BRICK_DIR")]
    brick_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Mode of the root directory when the brick is formatted (octal).
    #[arg(long, default_value = "0755", value_parser = parse_octal)]
    root_mode: u32,
    /// Replica3: the addresses of every brick of this replica set, this one
    /// included, comma-separated. Without it the brick serves alone (Replica1).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Replica3: the address the other bricks reach this one at (default:
    /// --listen, which then must not use port 0).
    #[arg(long)]
    advertise: Option<String>,
    /// The replica set's place in its pool (0, 1, ...): a pool of several sets
    /// keeps inode numbers unique by giving set K the numbers from K << 48.
    #[arg(long, default_value_t = 0)]
    set_index: u64,
    /// Replica3: the replica set's id; a brick refuses traffic for another set.
    #[arg(long, default_value = "set0")]
    set_id: String,
    /// Replica3: fsync the Raft log before acknowledging a write (on by
    /// default). `false` keeps acknowledged writes in the page cache of a
    /// majority: safe against process crashes and the loss of one machine,
    /// not against power loss of two at once.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    log_sync: bool,
    /// Replica3: build a snapshot after this many log entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Replica3: log entries kept behind the last snapshot, so that a brick
    /// away for a short while heals from the log instead of a full copy.
    #[arg(long, default_value_t = 5_000)]
    keep_entries: u64,
    /// Replica3: election timeout range in milliseconds, "MIN-MAX".
    #[arg(long, default_value = "1000-2000")]
    election_timeout_ms: String,
    /// Replica3: heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g.
    /// 0.0.0.0:9100. Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve (and, Replica3, reach peers) with mutual TLS, using `ca.crt`, `tls.crt`
    /// and `tls.key` from this directory (a mounted kadalu TLS Secret). Every client must
    /// then present a certificate signed by the same CA.
    #[arg(long, env = "KADALU_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Replica3, tests only: accept the SetFaults admin call that cuts links.
    #[arg(long)]
    fault_injection: bool,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("not an octal mode: {s}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

fn raft_options(args: &Args, bound: SocketAddr) -> anyhow::Result<RaftOptions> {
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None if args.listen.port() == 0 => anyhow::bail!(
            "--peers needs a fixed address: give --listen with a port, or --advertise"
        ),
        None => bound.to_string(),
    };
    let (min, max) = args
        .election_timeout_ms
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .context("--election-timeout-ms takes MIN-MAX, for example 1000-2000")?;
    let mut opts = RaftOptions::new(args.peers.clone(), advertise, args.set_id.clone());
    opts.log_sync = args.log_sync;
    opts.set_index = args.set_index;
    opts.fault_injection = args.fault_injection;
    opts.snapshot_every = args.snapshot_every.max(1);
    opts.keep_entries = args.keep_entries;
    opts.heartbeat = Duration::from_millis(args.heartbeat_ms);
    opts.election_min = Duration::from_millis(min);
    opts.election_max = Duration::from_millis(max);
    opts.validate().map_err(anyhow::Error::msg)?;
    Ok(opts)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        // Logging is best effort. By default tracing-subscriber reports a
        // failed write with eprintln!, which panics when stderr itself is what
        // failed (a log file on a disk that filled up or turned read-only, a
        // closed pipe), in whatever task logged: openraft's core among them,
        // which then stops without a word, and the brick neither applies nor
        // reports its fault. Lost log lines are the lesser harm; faults are
        // reported through `RaftAdmin.Status`.
        .log_internal_errors(false)
        .init();
    let args = Args::parse();
    let dir = args.brick_dir.clone();
    let root_mode = args.root_mode;
    // Bound before the brick opens, so peers can reach it as soon as Raft
    // starts talking.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let metrics = match args.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding --metrics-listen {a}"))?,
        ),
        None => None,
    };
    let transport = kadalu_proto::transport::Transport::from_optional_dir(args.tls_dir.as_deref())?;
    let set_index = args.set_index;
    if set_index > kadalu_server::prepare::MAX_SET_INDEX {
        anyhow::bail!(
            "--set-index must be at most {}",
            kadalu_server::prepare::MAX_SET_INDEX
        );
    }
    let mut brick = match args.peers.is_empty() {
        true => tokio::task::spawn_blocking(move || Brick::open_in_set(&dir, root_mode, set_index))
            .await?
            .with_context(|| format!("opening brick {}", args.brick_dir.display()))?,
        false => {
            let mut opts = raft_options(&args, addr)?;
            opts.transport = transport.clone();
            Brick::open_replicated(&dir, root_mode, opts)
                .await
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("opening brick {}", args.brick_dir.display()))?
        }
    };
    brick.transport = transport;
    println!("kadalu-server listening on {addr}");
    std::io::stdout().flush()?;
    if let Some(m) = &metrics {
        println!(
            "kadalu-server metrics on http://{}/metrics",
            m.local_addr()?
        );
    }
    std::io::stdout().flush()?;
    brick
        .serve_with_metrics(listener, metrics, shutdown_signal())
        .await?;
    Ok(())
}
