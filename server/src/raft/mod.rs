//! Replica3: the bricks of a replica set form one Raft group (openraft 0.9).
//! Every mutation is proposed as a log entry, committed by a majority, and
//! applied in log order on every member through the same apply path Replica1
//! uses; reads are answered by the leader after a read-index round.
//!
//! Every openraft type stays inside this module, so a later openraft upgrade
//! touches nothing else.
//!
//! - `types`: the type configuration (entry payload, response).
//! - `log_store`: the Raft log and vote on disk.
//! - `state_machine`: applies committed entries; builds and installs snapshots.
//! - `snapshot`: a whole brick as one archive file.
//! - `network`: Raft traffic between bricks (client, service, fault filter).
//! - `node`: a running member: bootstrap, join, propose, read barrier.
//! - `admin`: the `RaftAdmin` service (status, heal info, digest, join).

pub mod admin;
pub mod log_store;
pub mod network;
pub mod node;
pub mod snapshot;
pub mod state_machine;
pub mod types;
