//! The openraft type configuration of a replica set: what a log entry carries
//! (a batch of [`Command`]s, encoded as the journal encodes them) and what
//! applying one returns.

use crate::ops::{Command, Outcome, RecordedOutcome};
use crate::ops_codec::{decode_command, encode_command};
use prost::bytes::Bytes;
use prost::Message;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Node ids are random, non-zero, made when a brick directory is first used
/// for Raft and never reused: a wiped brick comes back as a new node.
pub type NodeId = u64;

/// Most commands one log entry carries.
pub const MAX_BATCH_COMMANDS: usize = 256;

/// The payload of one normal log entry: commands applied in order, each as if
/// it were an entry of its own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    pub cmds: Vec<Command>,
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded: Vec<serde_bytes_vec::ByteBuf> = self
            .cmds
            .iter()
            .map(|c| serde_bytes_vec::ByteBuf(encode_command(c)))
            .collect();
        encoded.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let encoded = Vec::<serde_bytes_vec::ByteBuf>::deserialize(d)?;
        if encoded.len() > MAX_BATCH_COMMANDS {
            return Err(D::Error::custom("batch has too many commands"));
        }
        let cmds = encoded
            .into_iter()
            .map(|b| decode_command(Bytes::from(b.0)).map_err(D::Error::custom))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batch { cmds })
    }
}

/// What applying one entry gave, one result per command (a file-system
/// answer's errno on failure). Faults of the brick are not here: they stop
/// the node instead (`state_machine.rs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied(pub Vec<Result<Outcome, i32>>);

impl Serialize for Applied {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Answers only travel inside one process (openraft hands them to the
        // proposer); encoded as dedupe records for completeness.
        let encoded: Vec<serde_bytes_vec::ByteBuf> = self
            .0
            .iter()
            .map(|r| serde_bytes_vec::ByteBuf(RecordedOutcome::from_result(0, r).encode_to_vec()))
            .collect();
        encoded.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Applied {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let encoded = Vec::<serde_bytes_vec::ByteBuf>::deserialize(d)?;
        let out = encoded
            .into_iter()
            .map(|b| {
                RecordedOutcome::decode(b.0.as_slice())
                    .ok()
                    .and_then(|r| r.to_result())
                    .ok_or_else(|| D::Error::custom("undecodable outcome"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Applied(out))
    }
}

/// A byte buffer that serde encodes as bytes, not as a sequence of numbers.
mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub struct ByteBuf(pub Vec<u8>);

    impl Serialize for ByteBuf {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

openraft::declare_raft_types!(
    /// The Raft types of a kadalu replica set.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Raft = openraft::Raft<TypeConfig>;

/// bincode options every Raft encoding uses: a bound on what one decode may
/// allocate, so a corrupt length on disk or on the wire cannot exhaust memory.
pub fn codec() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(kadalu_proto::MAX_RAFT_MESSAGE_SIZE as u64)
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// Encodes any Raft value with [`codec`].
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    use bincode::Options;
    codec().serialize(v)
}

/// Decodes a Raft value encoded by [`encode`]; bounded by [`codec`]'s limit.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    codec().deserialize(b)
}
