//! Calls to the `Quota` service of one replica set: tries the bricks in turn,
//! follows "not the leader" hints, retries while an election runs, and stamps
//! every change with a request header so a retried change applies once.
//! Every call has a deadline, and so does the whole retry loop.

use crate::error::CsiError;
use kadalu_proto::brick::RequestHeader;
use kadalu_proto::quota::quota_client::QuotaClient;
use kadalu_proto::transport::Transport;
use kadalu_proto::LEADER_HINT_KEY;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one driver call keeps looking for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Identity of this driver process for request deduplication.
pub struct Requester {
    client_id: [u8; 16],
    seq: AtomicU64,
}

impl Requester {
    pub fn new() -> Arc<Requester> {
        Arc::new(Requester {
            client_id: rand::random(),
            seq: AtomicU64::new(0),
        })
    }

    pub fn header(&self) -> Option<RequestHeader> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Some(RequestHeader {
            client_id: self.client_id.to_vec().into(),
            seq,
            // Calls are awaited one by one per request; nothing older needs keeping.
            ack_below: seq,
        })
    }
}

/// Channels to bricks, one per address, shared by every call: a tonic channel
/// multiplexes calls over one HTTP/2 connection, and a new connection (a TLS handshake,
/// with mutual TLS) per call would cost more than most calls.
pub struct Connector {
    transport: Transport,
    channels: Mutex<HashMap<String, Channel>>,
}

/// Addresses change as pools grow and bricks are replaced; the cache is cleared past this.
const MAX_CACHED_CHANNELS: usize = 256;

impl Connector {
    pub fn new(transport: Transport) -> Arc<Connector> {
        Arc::new(Connector {
            transport,
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// The client of one replica set, whose bricks are `addrs`.
    pub fn set(self: &Arc<Self>, addrs: Vec<String>) -> SetClient {
        SetClient {
            addrs,
            conn: self.clone(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        if map.len() >= MAX_CACHED_CHANNELS {
            map.clear();
        }
        // Lazy: a brick that is down costs nothing here, and its calls fail as
        // UNAVAILABLE, which the loop below retries on the next brick.
        let ch = self
            .transport
            .endpoint(addr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// One replica set's bricks.
#[derive(Clone)]
pub struct SetClient {
    addrs: Vec<String>,
    conn: Arc<Connector>,
}

impl SetClient {
    /// Runs `f` on the set's leader. A file-system or argument answer is
    /// returned as it is; unavailability is retried until [`LEADER_WAIT`].
    pub async fn call<R, F, Fut>(&self, f: F) -> Result<R, Status>
    where
        F: Fn(QuotaClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        if self.addrs.is_empty() {
            return Err(Status::unavailable("replica set without bricks"));
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        loop {
            let addr = hint.take().unwrap_or_else(|| {
                let a = self.addrs[next % self.addrs.len()].clone();
                next += 1;
                a
            });
            let result = async {
                let ch = self.conn.channel(&addr)?;
                tokio::time::timeout(CONNECT_TIMEOUT + CALL_TIMEOUT, f(QuotaClient::new(ch)))
                    .await
                    .map_err(|_| Status::deadline_exceeded(format!("{addr} did not answer")))?
            }
            .await;
            match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if retryable(&s) && Instant::now() < deadline => {
                    hint = s
                        .metadata()
                        .get(LEADER_HINT_KEY)
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| !v.is_empty())
                        .map(str::to_string);
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(s) => return Err(s),
            }
        }
    }
}

fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    ) && kadalu_proto::errno::errno_of(s).is_none()
}

/// A brick's answer as the driver's error, keeping its message.
pub fn from_status(s: Status) -> CsiError {
    let m = s.message().to_string();
    match s.code() {
        Code::InvalidArgument => CsiError::InvalidArgument(m),
        Code::NotFound => CsiError::NotFound(m),
        Code::AlreadyExists => CsiError::AlreadyExists(m),
        Code::FailedPrecondition => CsiError::FailedPrecondition(m),
        Code::Unavailable | Code::DeadlineExceeded => {
            CsiError::Unavailable(format!("replica set unreachable: {m}"))
        }
        _ => CsiError::Internal(m),
    }
}
