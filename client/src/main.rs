//! `kadalu-mount`: mounts a kadalu pool (or one directory of it) with FUSE and
//! serves it until unmounted or told to stop (SIGTERM/SIGINT unmount cleanly).

use anyhow::{bail, Context};
use clap::Parser;
use fuser::{Config, MountOption, Session, SessionACL};
use kadalu_client::connection::{Bricks, RetryPolicy};
use kadalu_client::fs::{FsOptions, KadaluFs};
use kadalu_client::mount::{parse_mount_options, raise_readahead, resolve_root};
use kadalu_client::pool::Pool;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

// The request path allocates per message (frames, buffers, futures) on
// several threads at once, where glibc's allocator spent about a tenth of the
// brick's CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mount a kadalu pool with FUSE.
#[derive(Debug, Parser)]
#[command(name = "kadalu-mount", version)]
struct Args {
    /// Brick address host:port (repeat for each brick of the pool).
    #[arg(long = "brick", required = true, value_name = "HOST:PORT")]
    bricks: Vec<String>,
    /// Bricks per replica set (3 for Replica3): the bricks are taken in order,
    /// set 0 first. Default: all bricks form one set.
    #[arg(long, value_name = "N")]
    set_size: Option<usize>,
    /// Mount only this directory of the pool (a path inside it).
    #[arg(long)]
    subdir: Option<String>,
    /// Seconds the kernel may cache a name → file entry.
    #[arg(long, default_value_t = 1.0)]
    entry_ttl: f64,
    /// Seconds the kernel may cache file attributes.
    #[arg(long, default_value_t = 1.0)]
    attr_ttl: f64,
    /// Seconds one RPC may take before it counts as failed.
    #[arg(long, default_value_t = 10.0)]
    rpc_timeout: f64,
    /// Seconds a request keeps retrying while no brick is reachable before it
    /// fails with ETIMEDOUT.
    #[arg(long, default_value_t = 20.0)]
    unavailable_wait: f64,
    /// FUSE request loops.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Threads running the RPCs (tokio workers). One by default: a request then
    /// crosses threads only between its FUSE loop and this one, instead of also
    /// between workers (its task, the channel's buffer task and the connection's
    /// task were woken on different workers). On a 2-core VM that cut context
    /// switches per file created, read and deleted by about 30% (51 -> 36, 34 -> 26,
    /// 27 -> 19). More helps only when one core cannot keep up with the RPCs
    /// themselves (large sequential I/O on fast storage).
    #[arg(long, default_value_t = 1)]
    io_threads: usize,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Send every write to the brick before acknowledging it, instead of
    /// acknowledging at once and sending in the background (write-behind).
    #[arg(long)]
    no_write_behind: bool,
    /// Reach the bricks over mutual TLS with `ca.crt`, `tls.crt` and `tls.key` from this
    /// directory (a mounted kadalu TLS Secret).
    #[arg(long, env = "KADALU_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// How requests reach the bricks: `grpc` (HTTP/2, plain or TLS), `wire` (the same
    /// messages framed over plain TCP, with fewer writes and wake-ups per request; no
    /// TLS), or `auto`: wire without --tls-dir, gRPC with it.
    #[arg(long, env = "KADALU_PROTOCOL", default_value = "auto", value_parser = ["auto", "grpc", "wire"])]
    protocol: String,
    /// Extra mount options, comma separated (as mount -o).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (the only mode; accepted for compatibility).
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Where to mount.
    mountpoint: PathBuf,
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KADALU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let policy = RetryPolicy {
        rpc_timeout: seconds("rpc-timeout", args.rpc_timeout)?,
        unavailable_wait: seconds("unavailable-wait", args.unavailable_wait)?,
        ..RetryPolicy::default()
    };
    if policy.rpc_timeout.is_zero() {
        bail!("--rpc-timeout must be positive");
    }
    let opts = FsOptions {
        entry_ttl: seconds("entry-ttl", args.entry_ttl)?,
        attr_ttl: seconds("attr-ttl", args.attr_ttl)?,
        write_behind: !args.no_write_behind,
    };
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;

    if args.io_threads == 0 {
        bail!("--io-threads must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.io_threads)
        .thread_name("kadalu-io")
        .enable_all()
        .build()
        .context("starting the runtime")?;

    let set_size = args.set_size.unwrap_or(args.bricks.len());
    if set_size == 0 || args.bricks.len() % set_size != 0 {
        anyhow::bail!(
            "{} --brick addresses do not make replica sets of --set-size {set_size}; give a multiple",
            args.bricks.len()
        );
    }
    let transport = kadalu_proto::transport::Transport::from_optional_dir(args.tls_dir.as_deref())?;
    let protocol = match (args.protocol.as_str(), transport.is_tls()) {
        ("wire", _) | ("auto", false) => kadalu_client::connection::Protocol::Wire,
        _ => kadalu_client::connection::Protocol::Grpc,
    };
    let sets = args
        .bricks
        .chunks(set_size)
        .map(|c| Bricks::new(c, policy, &transport, protocol))
        .collect::<Result<Vec<_>, _>>()?;
    let bricks = Pool::new(sets)?;
    let root = rt
        .block_on(resolve_root(&bricks, args.subdir.as_deref()))
        .with_context(|| match &args.subdir {
            Some(s) => format!("resolving --subdir {s}"),
            None => "reaching the pool".to_string(),
        })?;

    let mut mount_options = vec![
        MountOption::FSName(format!("kadalu:{}", args.bricks.join(","))),
        MountOption::Subtype("kadalu".into()),
        // The kernel checks permissions against the attributes we return, as a
        // local file system does.
        MountOption::DefaultPermissions,
    ];
    if args.read_only {
        mount_options.push(MountOption::RO);
    }
    for list in &args.options {
        for o in parse_mount_options(list) {
            if !mount_options.contains(&o) {
                mount_options.push(o);
            }
        }
    }
    let is_root = nix::unistd::geteuid().is_root();
    let allow_other = mount_options.contains(&MountOption::CUSTOM("allow_other".into()));
    mount_options.retain(|o| *o != MountOption::CUSTOM("allow_other".into()));
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if is_root || allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads);
    config.clone_fd = true;

    let fs = KadaluFs::new(bricks, root, opts, rt.handle().clone());
    let notifier_slot = fs.notifier_slot();
    let writes = fs.write_behind();
    let mut session = Session::new(fs, &mountpoint, &config)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    let _ = notifier_slot.set(session.notifier());
    let mut unmounter = session.unmount_callable();
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let (ended_async_tx, ended_async_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = ended_tx.send(r);
            let _ = ended_async_tx.send(());
        })
        .context("starting the FUSE session")?;

    if is_root {
        if let Err(e) = raise_readahead(&mountpoint, 1024) {
            tracing::info!("could not raise readahead: {e}");
        }
    }
    println!("kadalu-mount mounted at {}", mountpoint.display());
    std::io::stdout().flush().ok();

    let signalled = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok::<_, std::io::Error>(true),
            _ = int.recv() => Ok(true),
            _ = ended_async_rx => Ok(false),
        }
    })?;

    if signalled {
        tracing::info!("signal received, unmounting {}", mountpoint.display());
        if let Err(e) = unmounter.unmount() {
            // Busy: detach now, the kernel finishes when the last user lets go.
            tracing::warn!("unmount failed ({e}), detaching lazily");
            nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("detaching {}", mountpoint.display()))?;
        }
        match ended_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r.context("FUSE session")?,
            Err(_) => tracing::warn!("FUSE session still busy after unmount; exiting"),
        }
    } else if let Ok(r) = ended_rx.recv() {
        r.context("FUSE session")?;
    }
    // Writes the kernel was told are done must reach the brick before we go;
    // each one gives up by itself after the unavailable wait.
    let drain = policy.unavailable_wait + policy.rpc_timeout * 2;
    // The timer must be made inside the runtime.
    let drained = rt.block_on(async { tokio::time::timeout(drain, writes.settle_all()).await });
    if drained.is_err() {
        tracing::error!("acknowledged writes still unsent after {drain:?}; exiting without them");
    }
    // Nothing else left to finish: requests in flight died with the mount.
    rt.shutdown_background();
    Ok(())
}
