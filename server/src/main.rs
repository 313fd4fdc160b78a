//! `kadalu-server`: serves one brick directory over gRPC.

use anyhow::Context;
use clap::Parser;
use kadalu_server::server::Brick;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

// The request path allocates per message (frames, buffers, futures) on
// several threads at once, where glibc's allocator spent about a tenth of the
// brick's CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let dir = args.brick_dir.clone();
    let root_mode = args.root_mode;
    let brick = tokio::task::spawn_blocking(move || Brick::open(&dir, root_mode))
        .await?
        .with_context(|| format!("opening brick {}", args.brick_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("kadalu-server listening on {addr}");
    std::io::stdout().flush()?;
    brick.serve(listener, shutdown_signal()).await?;
    Ok(())
}
