//! Assembling and running a brick: opens (or formats) the brick directory,
//! recovers from the previous run (replaying its journal), serves the Brick
//! service on a listener until told to stop, and checkpoints (makes the store
//! durable, empties the journal) every second and at the end.

use crate::applier::Applier;
use crate::error::FsResult;
use crate::prepare::{first_ino_of_set, Clock, IdAllocator, Preparer, SystemClock};
use crate::quota_service::QuotaService;
use crate::raft::admin::AdminService;
use crate::raft::network::RaftService;
use crate::raft::node::{RaftNode, RaftOptions};
use crate::records::Time;
use crate::service::BrickService;
use crate::store::Store;
use kadalu_proto::brick::brick_server::BrickServer;
use kadalu_proto::quota::quota_server::QuotaServer;
use kadalu_proto::raft::raft_admin_server::RaftAdminServer;
use kadalu_proto::raft::raft_server::RaftServer;
use kadalu_proto::{MAX_MESSAGE_SIZE, MAX_RAFT_MESSAGE_SIZE};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often the store is made durable and the journal emptied. Crashes
/// lose nothing either way; this bounds the journal and the replay at start.
pub const DURABILITY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest any request may take on the server.
/// How long requests in flight may finish after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Inode numbers skipped at each start: more than a brick creates between
/// two durable commits, so ids a power loss takes (with the un-synced end of
/// the journal) are never handed out again.
pub const INO_GAP_PER_START: u64 = 1 << 24;

/// An opened brick, ready to serve.
pub struct Brick {
    pub applier: Arc<Applier>,
    pub preparer: Arc<Preparer>,
    /// Replica3: this brick's membership of its replica set.
    pub raft: Option<Arc<RaftNode>>,
    pub apply_thread: Arc<crate::apply_thread::ApplyThread>,
    /// Plain or mutual TLS on the listener (Replica3: the same as for peers).
    pub transport: kadalu_proto::transport::Transport,
}

impl Brick {
    /// Opens the brick in `dir` (formatting an empty one with a root of
    /// `root_mode`) and reclaims what the previous run left behind.
    pub fn open(dir: &Path, root_mode: u32) -> FsResult<Brick> {
        Brick::open_in_set(dir, root_mode, 0)
    }

    /// [`Brick::open`] for the brick of replica set `set_index` of a pool
    /// (its inode numbers start at `set_index << 48`).
    pub fn open_in_set(dir: &Path, root_mode: u32, set_index: u64) -> FsResult<Brick> {
        let clock = SystemClock;
        std::fs::create_dir_all(dir)?;
        let store = Arc::new(Store::open(dir, root_mode, clock.now())?);
        // Handles of a previous run must not name opens of this one.
        let handle_base = rand::random::<u64>() >> 1;
        let applier = Applier::open(store.clone(), clock.now(), handle_base)?;
        let ids = IdAllocator::new(
            store
                .reserve_inos(INO_GAP_PER_START)?
                .max(first_ino_of_set(set_index)),
        );
        Ok(Brick {
            applier: Arc::new(applier),
            preparer: Arc::new(Preparer::new(Box::new(clock), Box::new(ids))),
            raft: None,
            apply_thread: Arc::new(crate::apply_thread::ApplyThread::start()?),
            transport: Default::default(),
        })
    }

    /// Opens the brick in `dir` as a member of a replica set and starts its
    /// Raft node. An empty directory is formatted with a root whose times are
    /// 0, so that every member starts from the same tree; the log changes it
    /// from there.
    pub async fn open_replicated(
        dir: &Path,
        root_mode: u32,
        opts: RaftOptions,
    ) -> Result<Brick, String> {
        let d = dir.to_path_buf();
        let set_index = opts.set_index;
        let transport = opts.transport.clone();
        let (applier, ids) = tokio::task::spawn_blocking(move || -> FsResult<_> {
            std::fs::create_dir_all(&d)?;
            let store = Arc::new(Store::open(&d, root_mode, Time::new(0, 0))?);
            // A snapshot install a crash interrupted is finished before
            // anything reads the brick.
            if crate::raft::snapshot::resume_install(&store)? {
                tracing::info!("finished a snapshot install a restart interrupted");
            }
            let handle_base = rand::random::<u64>() >> 1;
            let applier = Arc::new(Applier::open_replicated(store.clone(), handle_base)?);
            let ids = Arc::new(IdAllocator::new(
                store.next_ino()?.max(first_ino_of_set(set_index)),
            ));
            Ok((applier, ids))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let node = RaftNode::start(dir, applier.clone(), ids.clone(), opts).await?;
        Ok(Brick {
            applier,
            preparer: Arc::new(Preparer::new(Box::new(SystemClock), Box::new(ids))),
            raft: Some(node),
            apply_thread: Arc::new(
                crate::apply_thread::ApplyThread::start().map_err(|e| e.to_string())?,
            ),
            transport,
        })
    }

    /// Serves until `shutdown` resolves, then makes everything durable.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        self.serve_with_metrics(listener, None, shutdown).await
    }

    /// [`Brick::serve`], with Prometheus metrics on `metrics` when given.
    pub async fn serve_with_metrics(
        self,
        listener: tokio::net::TcpListener,
        metrics: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let latencies = Arc::new(crate::metrics::Latencies::default());
        let metrics_task = metrics.map(|l| {
            tokio::spawn(crate::metrics::serve(
                l,
                crate::metrics::Sources {
                    store: self.applier.store().clone(),
                    raft: self.raft.clone(),
                    latencies: latencies.clone(),
                },
            ))
        });
        let apply_thread = self.apply_thread.clone();
        let brick_service = match &self.raft {
            Some(node) => BrickService::replicated(
                self.applier.clone(),
                self.preparer.clone(),
                node.clone(),
                apply_thread,
            ),
            None => BrickService::new(self.applier.clone(), self.preparer.clone(), apply_thread),
        };
        let quota_service = QuotaServer::new(QuotaService::new(
            brick_service.clone(),
            self.applier.store().clone(),
        ));
        let fast_write_service = brick_service.clone();
        let service = BrickServer::new(brick_service)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let (raft_service, admin_service) = match &self.raft {
            Some(node) => (
                Some(
                    RaftServer::new(RaftService {
                        raft: node.raft.clone(),
                        me: node.me.clone(),
                        votes_from: std::time::Instant::now() + node.opts.election_max,
                    })
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_SIZE),
                ),
                Some(RaftAdminServer::new(AdminService { node: node.clone() })),
            ),
            None => (None, None),
        };
        let applier = self.applier.clone();
        let flusher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(DURABILITY_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let a = applier.clone();
                match tokio::task::spawn_blocking(move || a.make_durable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("making the store durable: {e}"),
                    Err(e) => tracing::error!("durability task: {e}"),
                }
            }
        });
        // Without TLS the port also speaks the wire transport (kadalu_proto::wire): each
        // connection is sniffed, wire ones are served here and the rest go to the
        // HTTP/2 server. With TLS there is no plain wire: everything is HTTP/2 over TLS.
        let wire_routes = (!self.transport.is_tls()).then(|| {
            use tower::Layer;
            crate::metrics::LatencyLayer(latencies.clone()).layer(
                crate::fast_write::FastWrite::new(
                    tonic::service::Routes::new(service.clone()),
                    fast_write_service,
                ),
            )
        });
        let (incoming, acceptor) = match wire_routes {
            None => (
                boxed_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
                None,
            ),
            Some(routes) => {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                (
                    boxed_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    Some(tokio::spawn(accept_sniffing(listener, tx, routes))),
                )
            }
        };
        // A graceful stop waits for every connection to close, and the other
        // bricks of a replica set keep theirs open for good: after the signal,
        // requests in flight get SHUTDOWN_GRACE, then the server stops anyway.
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let stopping = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let mut grace_rx = stop_rx.clone();
        let grace = async move {
            let _ = grace_rx.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.transport.server_config() {
            builder = builder.tls_config(tls)?;
        }
        let serving = builder
            .layer(crate::metrics::LatencyLayer(latencies))
            .timeout(REQUEST_TIMEOUT)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(service)
            .add_service(quota_service)
            .add_optional_service(raft_service)
            .add_optional_service(admin_service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            });
        let result = tokio::select! {
            r = serving => r,
            _ = async { tokio::join!(stopping, grace) } => {
                tracing::info!("connections still open after the shutdown grace; stopping");
                Ok(())
            }
        };
        flusher.abort();
        if let Some(a) = acceptor {
            a.abort();
        }
        if let Some(t) = metrics_task {
            t.abort();
        }
        if let Some(node) = &self.raft {
            if let Err(e) = node.raft.shutdown().await {
                tracing::error!("stopping raft: {e}");
            }
        }
        let applier = self.applier.clone();
        match tokio::task::spawn_blocking(move || applier.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("final flush: {e}"),
            Err(e) => tracing::error!("final flush task: {e}"),
        }
        result
    }
}

type Incoming = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> + Send>,
>;

/// Either source of HTTP/2 connections, as one type for the server.
fn boxed_incoming(
    s: impl tokio_stream::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> + Send + 'static,
) -> Incoming {
    Box::pin(s)
}

/// Accepts connections and tells the two transports apart by their first byte, each
/// connection in its own task so that a silent one delays no other.
async fn accept_sniffing(
    listener: tokio::net::TcpListener,
    h2: tokio::sync::mpsc::Sender<Result<tokio::net::TcpStream, std::io::Error>>,
    routes: impl kadalu_proto::wire::WireService + Sync,
) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let h2 = h2.clone();
        let routes = routes.clone();
        tokio::spawn(async move {
            match kadalu_proto::wire::sniff(&mut stream).await {
                Ok(true) => kadalu_proto::wire::serve_connection(stream, routes).await,
                Ok(false) => {
                    let _ = stream.set_nodelay(true);
                    let _ = h2.send(Ok(stream)).await;
                }
                Err(e) => tracing::debug!("dropped a connection: {e}"),
            }
        });
    }
}
