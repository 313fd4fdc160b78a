//! Raft traffic between the bricks of a replica set: the sending side
//! (openraft's `RaftNetworkFactory`/`RaftNetwork`, over tonic) and the
//! receiving gRPC service, plus the fault filter tests use to cut links.
//!
//! openraft's messages travel bincode-encoded inside `RaftBytes`; decoding is
//! bounded by `types::codec`. Each call names the replica set and both node
//! ids in its metadata: a brick refuses traffic for another set or for a node
//! id that is not its own (a wiped brick at an old address comes back as a
//! new node and must not take its predecessor's place by accident).

use crate::raft::types::{decode, encode, NodeId, Raft, TypeConfig};
use kadalu_proto::raft::raft_client::RaftClient;
use kadalu_proto::raft::raft_server;
use kadalu_proto::raft::RaftBytes;
use kadalu_proto::transport::{Transport, TransportError};
use kadalu_proto::MAX_RAFT_MESSAGE_SIZE;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

pub const SET_KEY: &str = "x-kadalu-set";
pub const FROM_KEY: &str = "x-raft-from";
pub const TARGET_KEY: &str = "x-raft-target";

/// Links cut on purpose (tests, `--fault-injection`): traffic to or from a
/// blocked node is dropped on both the sending and the receiving side.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: RwLock<BTreeSet<NodeId>>,
}

impl Faults {
    pub fn set_blocked(&self, nodes: impl IntoIterator<Item = NodeId>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = nodes.into_iter().collect();
    }

    pub fn is_blocked(&self, node: NodeId) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&node)
    }
}

/// Who is talking: this node, its replica set, and the fault filter.
#[derive(Clone)]
pub struct Identity {
    pub node_id: NodeId,
    pub set_id: String,
    pub faults: Arc<Faults>,
}

/// Makes peer clients for openraft.
///
/// openraft asks for a new client for every read-index round (0.9 sends its
/// confirming heartbeats through fresh clients), so channels are kept per
/// address and shared: a tonic channel multiplexes any number of calls over
/// one HTTP/2 connection, and a new TCP connection per read would cost more
/// than the read.
pub struct Network {
    pub me: Identity,
    transport: Transport,
    channels: std::sync::Mutex<std::collections::HashMap<String, Channel>>,
}

impl Network {
    pub fn new(me: Identity, transport: Transport) -> Self {
        Network {
            me,
            transport,
            channels: Default::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        // Bounded: a set has at most a few members, but addresses change
        // with replacements over a long life.
        if map.len() >= 64 {
            map.clear();
        }
        let c = endpoint(&self.transport, addr)
            .map(|e| e.connect_lazy())
            .map_err(|e| format!("bad peer address {addr}: {e}"))?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            me: self.me.clone(),
            target,
            addr: node.addr.clone(),
            channel: self.channel(&node.addr),
        }
    }
}

/// One peer, reached over a lazily connected channel.
pub struct PeerClient {
    me: Identity,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
}

/// Builds the endpoint of a brick address (`host:port` or a URI).
pub fn endpoint(transport: &Transport, addr: &str) -> Result<Endpoint, TransportError> {
    Ok(transport
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Plain(String);

impl PeerClient {
    /// Sends one encoded message and decodes the peer's `Result`.
    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.me.faults.is_blocked(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&Plain(format!(
                "link to node {} cut by fault injection",
                self.target
            )))));
        }
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Plain(e))))?;
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = Request::new(RaftBytes {
            payload: payload.into(),
        });
        request.set_timeout(timeout);
        let md = request.metadata_mut();
        for (k, v) in [
            (SET_KEY, self.me.set_id.clone()),
            (FROM_KEY, self.me.node_id.to_string()),
            (TARGET_KEY, self.target.to_string()),
        ] {
            let v = v
                .parse()
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            md.insert(k, v);
        }
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_SIZE);
        let call = async {
            match action {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.me.node_id,
                    target: self.target,
                    timeout,
                }))
            }
            Ok(Err(status)) => {
                return Err(match status.code() {
                    tonic::Code::DeadlineExceeded => RPCError::Timeout(Timeout {
                        action,
                        id: self.me.node_id,
                        target: self.target,
                        timeout,
                    }),
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                        RPCError::Unreachable(Unreachable::new(&Plain(format!(
                            "{}: {}",
                            self.addr,
                            status.message()
                        ))))
                    }
                    _ => RPCError::Network(NetworkError::new(&status)),
                })
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Exponential from 100 ms to 2 s: a dead peer costs little, a peer
        // back from a restart is found again quickly.
        openraft::network::Backoff::new(
            (0..).map(|i: u32| {
                Duration::from_millis(100u64.saturating_mul(1 << i.min(5)).min(2000))
            }),
        )
    }
}

/// The receiving side: hands decoded messages to the local Raft.
pub struct RaftService {
    pub raft: Raft,
    pub me: Identity,
    /// No vote is granted before this: a follower promises the leader not to
    /// vote for another for the election timeout after each heartbeat, and a
    /// restart must not forget that promise (the leader serves reads on it).
    pub votes_from: std::time::Instant,
}

impl RaftService {
    /// Refuses traffic for another set or node, or over a cut link.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let md = req.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
        if get(SET_KEY) != self.me.set_id {
            return Err(Status::failed_precondition(format!(
                "this brick belongs to replica set {:?}, not {:?}",
                self.me.set_id,
                get(SET_KEY)
            )));
        }
        if get(TARGET_KEY) != self.me.node_id.to_string() {
            return Err(Status::failed_precondition(format!(
                "this brick is node {}, not {}",
                self.me.node_id,
                get(TARGET_KEY)
            )));
        }
        if let Ok(from) = get(FROM_KEY).parse::<NodeId>() {
            if self.me.faults.is_blocked(from) {
                return Err(Status::unavailable("link cut by fault injection"));
            }
        }
        Ok(())
    }
}

fn decoded<T: DeserializeOwned>(req: Request<RaftBytes>) -> Result<T, Status> {
    decode(&req.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encoded<T: Serialize>(v: &T) -> Result<Response<RaftBytes>, Status> {
    let payload = encode(v).map_err(|e| Status::internal(format!("encoding reply: {e}")))?;
    Ok(Response::new(RaftBytes {
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        self.check(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decoded(request)?;
        encoded(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        self.check(&request)?;
        if std::time::Instant::now() < self.votes_from {
            return Err(Status::unavailable("brick just started; not voting yet"));
        }
        let rpc: VoteRequest<NodeId> = decoded(request)?;
        encoded(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        self.check(&request)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decoded(request)?;
        encoded(&self.raft.install_snapshot(rpc).await)
    }
}
