//! The connection layer: a set of brick addresses, one lazily connected gRPC
//! channel per brick, and the policy that decides, after each failed attempt,
//! whether the failure is the brick's answer or a reason to try again (perhaps on
//! another brick) within the unavailable wait.
//!
//! Replica3 bricks answer "not the leader" (`Unavailable` with the leader's
//! address in `x-kadalu-leader`): [`Bricks::call`] goes straight to that brick,
//! a few times without pausing, and otherwise moves on as for any brick that
//! cannot serve. A mutation retried this way carries the same request header,
//! so the replica set applies it at most once.

use crate::error::ClientError;
use kadalu_proto::brick::brick_client::BrickClient;
use kadalu_proto::transport::Transport;
use kadalu_proto::wire::WireChannel;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Timing of requests: a deadline per attempt and how long to keep retrying while
/// no brick answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Deadline of one attempt of one RPC.
    pub rpc_timeout: Duration,
    /// How long a request keeps retrying while no brick is reachable.
    pub unavailable_wait: Duration,
    /// First pause between attempts.
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            rpc_timeout: Duration::from_secs(10),
            unavailable_wait: Duration::from_secs(20),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// Pause before attempt number `attempt + 1` (attempt counts from 0): doubling
    /// from `backoff_initial`, capped at `backoff_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }

    /// Given that `elapsed` has passed since the request started, how long to sleep
    /// before the next attempt, or `None` when the unavailable wait is used up.
    /// The last pause is shortened so the final attempt starts within the window.
    pub fn next_pause(&self, attempt: u32, elapsed: Duration) -> Option<Duration> {
        if elapsed >= self.unavailable_wait {
            return None;
        }
        let left = self.unavailable_wait - elapsed;
        Some(self.backoff(attempt).min(left))
    }
}

/// What a failed attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The brick answered: hand the error to the caller.
    Answer,
    /// The brick could not be reached or did not answer in time: try again,
    /// preferably on another brick, after a pause.
    TryElsewhere,
}

/// Decides what a failed attempt means. `has_errno`: the status carries `x-errno`
/// (a file-system answer). `local`: the status was made on this side from a
/// transport error (it has a source error) rather than sent by the brick.
pub fn classify(code: Code, has_errno: bool, local: bool) -> Verdict {
    if has_errno {
        return Verdict::Answer;
    }
    match code {
        // Connection refused/reset, our own deadline, a cancelled stream: the brick
        // may be restarting or gone.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Verdict::TryElsewhere,
        // Broken HTTP/2 streams surface as Unknown/Internal made locally; the same
        // codes sent by a brick are real (if unexpected) answers.
        Code::Unknown | Code::Internal if local => Verdict::TryElsewhere,
        _ => Verdict::Answer,
    }
}

/// Redirects followed at once, without a pause, within one call: more means
/// leadership is moving, and the normal backoff applies.
const MAX_QUICK_REDIRECTS: u32 = 3;

/// The leader a "not the leader" answer names, if any.
fn leader_hint(status: &tonic::Status) -> Option<&str> {
    if status.code() != Code::Unavailable || kadalu_proto::errno::errno_of(status).is_some() {
        return None;
    }
    status
        .metadata()
        .get(kadalu_proto::LEADER_HINT_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// Whether two brick addresses name the same brick (`http://` optional).
fn same_address(a: &str, b: &str) -> bool {
    a.trim_start_matches("http://") == b.trim_start_matches("http://")
}

/// Short name of a request type for logs ("LookupRequest").
fn rpc_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

fn classify_status(status: &tonic::Status) -> Verdict {
    use std::error::Error;
    classify(
        status.code(),
        kadalu_proto::errno::errno_of(status).is_some(),
        status.source().is_some(),
    )
}

/// How requests travel to bricks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// gRPC over HTTP/2 (plain or TLS).
    #[default]
    Grpc,
    /// The same messages framed over plain TCP (`kadalu_proto::wire`): fewer writes and
    /// wake-ups per request. No TLS, and no keepalive PINGs: a brick that freezes with
    /// its connection open is noticed at each request's deadline.
    Wire,
}

/// What the generated client runs on: an HTTP/2 channel or a wire channel.
#[derive(Clone)]
pub enum BrickChannel {
    H2(Channel),
    Wire(WireChannel),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for BrickChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            BrickChannel::H2(c) => c.poll_ready(cx).map_err(Into::into),
            BrickChannel::Wire(w) => w.poll_ready(cx),
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            BrickChannel::H2(c) => {
                let f = c.call(req);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            BrickChannel::Wire(w) => w.call(req),
        }
    }
}

/// One brick: its endpoint and the channel currently used to reach it.
struct BrickSlot {
    address: String,
    endpoint: Endpoint,
    protocol: Protocol,
    channel: Mutex<Option<BrickChannel>>,
}

impl BrickSlot {
    fn channel(&self) -> BrickChannel {
        let mut slot = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| match self.protocol {
            Protocol::Grpc => BrickChannel::H2(self.endpoint.connect_lazy()),
            Protocol::Wire => {
                BrickChannel::Wire(WireChannel::new(&self.address, WIRE_CONNECT_TIMEOUT))
            }
        })
        .clone()
    }

    /// Drops the channel so the next attempt builds a fresh one: a channel whose
    /// connection broke in a way it cannot recover from must not be reused forever.
    fn reset(&self) {
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The bricks of a pool and the retry policy used to talk to them.
pub struct Bricks {
    slots: Vec<BrickSlot>,
    preferred: AtomicUsize,
    policy: RetryPolicy,
}

impl std::fmt::Debug for Bricks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bricks")
            .field(
                "addresses",
                &self.slots.iter().map(|s| &s.address).collect::<Vec<_>>(),
            )
            .field("policy", &self.policy)
            .finish()
    }
}

/// How often a connection with requests in flight is checked with a PING,
/// and how long the answer may take before the connection counts as dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 flow-control windows large enough for several 1 MiB writes in flight.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// How long opening a wire connection may take.
const WIRE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Bricks {
    /// A brick set for `addresses` (`host:port` or `http://host:port`).
    pub fn new(
        addresses: &[String],
        policy: RetryPolicy,
        transport: &Transport,
        protocol: Protocol,
    ) -> Result<Self, ClientError> {
        if protocol == Protocol::Wire && transport.is_tls() {
            return Err(ClientError::Invalid(
                "the wire protocol has no TLS: use gRPC with --tls-dir",
            ));
        }
        if addresses.is_empty() {
            return Err(ClientError::Invalid("at least one brick address is needed"));
        }
        let mut slots = Vec::with_capacity(addresses.len());
        for a in addresses {
            let endpoint = transport
                .endpoint(a)
                .map_err(|_| ClientError::Invalid("bad brick address"))?
                .connect_timeout(policy.rpc_timeout.min(Duration::from_secs(5)))
                .tcp_nodelay(true)
                // A brick that stops answering with its connection open (a
                // frozen process, a node gone without a reset) is noticed by
                // its missing PING answers, within KEEPALIVE_* while requests
                // are in flight, rather than only at each request's deadline;
                // a slow request on a live brick still has its whole deadline.
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(false)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW);
            slots.push(BrickSlot {
                address: a.clone(),
                endpoint,
                protocol,
                channel: Mutex::new(None),
            });
        }
        Ok(Bricks {
            slots,
            preferred: AtomicUsize::new(0),
            policy,
        })
    }

    /// The retry policy in force.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Runs one RPC: `attempt` gets a client and the request (with its deadline set)
    /// and performs the call. Retries on transport failures, moving to the next brick,
    /// until `unavailable_wait` has passed; then fails with
    /// [`ClientError::Unreachable`]. The message is cloned for each attempt, so a
    /// retried mutation carries the same request header.
    pub async fn call<M, T, F, Fut>(&self, msg: M, attempt: F) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(BrickClient<BrickChannel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let rpc = rpc_name::<M>();
        tracing::trace!(rpc, "call");
        let mut tries: u32 = 0;
        let mut redirects: u32 = 0;
        loop {
            let index = self.preferred.load(Ordering::Relaxed) % self.slots.len();
            let slot = &self.slots[index];
            let client = BrickClient::new(slot.channel())
                .max_decoding_message_size(kadalu_proto::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(kadalu_proto::MAX_MESSAGE_SIZE);
            let mut request = tonic::Request::new(msg.clone());
            request.set_timeout(self.policy.rpc_timeout);
            let outcome =
                match tokio::time::timeout(self.policy.rpc_timeout, attempt(client, request)).await
                {
                    Ok(result) => result,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "no reply from {} within {:?}",
                        slot.address, self.policy.rpc_timeout
                    ))),
                };
            let status = match outcome {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => status,
            };
            if classify_status(&status) == Verdict::Answer {
                return Err(ClientError::from_answer(&status));
            }
            if let Some(leader) = leader_hint(&status) {
                let found = self
                    .slots
                    .iter()
                    .position(|s| same_address(&s.address, leader));
                if let (Some(to), true) = (found, redirects < MAX_QUICK_REDIRECTS) {
                    tracing::debug!(rpc, from = %slot.address, to = leader, "not the leader; redirected");
                    redirects += 1;
                    self.preferred.store(to, Ordering::Relaxed);
                    continue;
                }
            }
            tracing::debug!(rpc, brick = %slot.address, code = ?status.code(), message = status.message(), "brick unreachable, retrying");
            if leader_hint(&status).is_none() {
                slot.reset();
            }
            // Move on to the next brick unless another request already did.
            let _ = self.preferred.compare_exchange(
                index,
                (index + 1) % self.slots.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            match self.policy.next_pause(tries, started.elapsed()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => {
                    tracing::warn!(rpc, brick = %slot.address, "giving up after {:?}: {}", started.elapsed(), status.message());
                    return Err(ClientError::Unreachable {
                        waited: started.elapsed(),
                        last: format!("{}: {}", slot.address, status.message()),
                    });
                }
            }
            tries = tries.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_system_answers_are_never_retried() {
        for code in [
            Code::Unavailable,
            Code::NotFound,
            Code::Internal,
            Code::Unknown,
        ] {
            assert_eq!(classify(code, true, false), Verdict::Answer);
            assert_eq!(classify(code, true, true), Verdict::Answer);
        }
    }

    #[test]
    fn transport_failures_are_retried() {
        assert_eq!(
            classify(Code::Unavailable, false, true),
            Verdict::TryElsewhere
        );
        assert_eq!(
            classify(Code::Unavailable, false, false),
            Verdict::TryElsewhere
        );
        assert_eq!(
            classify(Code::DeadlineExceeded, false, false),
            Verdict::TryElsewhere
        );
        assert_eq!(
            classify(Code::Cancelled, false, true),
            Verdict::TryElsewhere
        );
        assert_eq!(classify(Code::Unknown, false, true), Verdict::TryElsewhere);
        assert_eq!(classify(Code::Internal, false, true), Verdict::TryElsewhere);
    }

    #[test]
    fn odd_statuses_sent_by_the_brick_are_answers() {
        assert_eq!(classify(Code::Internal, false, false), Verdict::Answer);
        assert_eq!(classify(Code::Unknown, false, false), Verdict::Answer);
        assert_eq!(
            classify(Code::InvalidArgument, false, true),
            Verdict::Answer
        );
        assert_eq!(classify(Code::Unimplemented, false, false), Verdict::Answer);
    }

    #[test]
    fn leader_hints_come_only_with_unavailable_and_no_errno() {
        let mut s = tonic::Status::unavailable("not the leader");
        s.metadata_mut().insert(
            kadalu_proto::LEADER_HINT_KEY,
            "127.0.0.1:7001".parse().unwrap(),
        );
        assert_eq!(leader_hint(&s), Some("127.0.0.1:7001"));
        let mut empty = tonic::Status::unavailable("election");
        empty
            .metadata_mut()
            .insert(kadalu_proto::LEADER_HINT_KEY, "".parse().unwrap());
        assert_eq!(leader_hint(&empty), None);
        let mut other = tonic::Status::internal("x");
        other.metadata_mut().insert(
            kadalu_proto::LEADER_HINT_KEY,
            "127.0.0.1:7001".parse().unwrap(),
        );
        assert_eq!(leader_hint(&other), None);
        assert!(same_address("http://127.0.0.1:1", "127.0.0.1:1"));
        assert!(!same_address("127.0.0.1:1", "127.0.0.1:2"));
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0), Duration::from_millis(50));
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(10), Duration::from_secs(1));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn the_wait_ends_retries() {
        let p = RetryPolicy {
            unavailable_wait: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.next_pause(0, Duration::ZERO),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            p.next_pause(10, Duration::from_millis(1900)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(p.next_pause(0, Duration::from_secs(2)), None);
        let none = RetryPolicy {
            unavailable_wait: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(none.next_pause(0, Duration::ZERO), None);
    }

    proptest! {
        /// Simulated retry loop: total time slept never overshoots the wait, and the
        /// loop always ends.
        #[test]
        fn retries_stay_within_the_wait(
            wait_ms in 0u64..60_000,
            initial_ms in 1u64..1_000,
            max_ms in 1u64..5_000,
            attempt_ms in 0u64..3_000,
        ) {
            let p = RetryPolicy {
                rpc_timeout: Duration::from_secs(10),
                unavailable_wait: Duration::from_millis(wait_ms),
                backoff_initial: Duration::from_millis(initial_ms),
                backoff_max: Duration::from_millis(max_ms.max(initial_ms)),
            };
            let mut elapsed = Duration::ZERO;
            let mut attempt = 0u32;
            let mut slept = Duration::ZERO;
            loop {
                elapsed += Duration::from_millis(attempt_ms);
                match p.next_pause(attempt, elapsed) {
                    Some(pause) => {
                        prop_assert!(!pause.is_zero());
                        prop_assert!(elapsed + pause <= p.unavailable_wait);
                        elapsed += pause;
                        slept += pause;
                    }
                    None => break,
                }
                attempt += 1;
                prop_assert!(attempt < 1_000_000);
            }
            prop_assert!(slept <= p.unavailable_wait);
        }
    }

    #[test]
    fn empty_brick_set_is_refused() {
        assert!(Bricks::new(
            &[],
            RetryPolicy::default(),
            &Transport::plain(),
            Protocol::Grpc
        )
        .is_err());
    }

    #[tokio::test]
    async fn unreachable_brick_fails_after_the_wait() {
        // A port nobody listens on: bind, note the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let policy = RetryPolicy {
            rpc_timeout: Duration::from_secs(2),
            unavailable_wait: Duration::from_millis(400),
            ..RetryPolicy::default()
        };
        let bricks = Bricks::new(
            &[format!("127.0.0.1:{port}")],
            policy,
            &Transport::plain(),
            Protocol::Grpc,
        )
        .unwrap();
        let started = Instant::now();
        let req = kadalu_proto::brick::GetAttrRequest {
            id: kadalu_proto::ROOT_ID.to_wire(),
        };
        let err = bricks
            .call(req, |mut c, r| async move { c.get_attr(r).await })
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert_eq!(err.errno(), libc::ETIMEDOUT);
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}
