//! The stored form of a [`Command`]: prost messages written by hand (in the
//! manner of `records.rs`), so that the journal can keep a command and give
//! back exactly the same one, and so that a replication log can later carry
//! the same bytes. Fields may be added; tags are never reused.
//!
//! Decoding checks what the in-memory types guarantee (ids are 16 bytes, the
//! time and the operation are present), so a damaged or foreign entry turns
//! into an error, never into a different command.

use crate::error::{FsError, FsResult};
use crate::ops::{Command, Operation, RequestId};
use crate::records::Time;
use kadalu_proto::FileId;
use prost::bytes::Bytes;
use prost::Message;

/// A [`Command`] as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommandMsg {
    #[prost(message, optional, tag = "1")]
    pub request: Option<RequestMsg>,
    #[prost(message, optional, tag = "2")]
    pub now: Option<Time>,
    /// Tag = 9 + [`Operation::tag`].
    #[prost(
        oneof = "OpMsg",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29"
    )]
    pub op: Option<OpMsg>,
}

/// A [`RequestId`] as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub client: Bytes,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, tag = "3")]
    pub ack_below: u64,
}

/// One [`Operation`] as stored.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OpMsg {
    #[prost(message, tag = "10")]
    Create(CreateMsg),
    #[prost(message, tag = "11")]
    Mknod(MknodMsg),
    #[prost(message, tag = "12")]
    Mkdir(MkdirMsg),
    #[prost(message, tag = "13")]
    Symlink(SymlinkMsg),
    #[prost(message, tag = "14")]
    Link(LinkMsg),
    #[prost(message, tag = "15")]
    Unlink(IdNameMsg),
    #[prost(message, tag = "16")]
    Rmdir(IdNameMsg),
    #[prost(message, tag = "17")]
    Rename(RenameMsg),
    #[prost(message, tag = "18")]
    SetAttr(SetAttrMsg),
    #[prost(message, tag = "19")]
    Truncate(IdMsg),
    #[prost(message, tag = "20")]
    Write(WriteMsg),
    #[prost(message, tag = "21")]
    Fallocate(FallocateMsg),
    #[prost(message, tag = "22")]
    CopyFileRange(CopyMsg),
    #[prost(message, tag = "23")]
    SetXattr(SetXattrMsg),
    #[prost(message, tag = "24")]
    RemoveXattr(IdNameMsg),
    #[prost(message, tag = "25")]
    Reclaim(IdMsg),
    #[prost(message, tag = "26")]
    CreatePv(PvMsg),
    #[prost(message, tag = "27")]
    ExpandPv(PvMsg),
    #[prost(message, tag = "28")]
    DeletePv(PvMsg),
    #[prost(message, tag = "29")]
    RecountPv(PvMsg),
}

/// The PV operations as stored (fields unused by an operation stay default).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PvMsg {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub id: Bytes,
    #[prost(uint64, tag = "3")]
    pub byte_limit: u64,
    #[prost(uint64, tag = "4")]
    pub inode_limit: u64,
    #[prost(int32, tag = "5")]
    pub policy: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub parent: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub id: Bytes,
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    #[prost(bool, tag = "7")]
    pub exclusive: bool,
    #[prost(bool, tag = "8")]
    pub truncate: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MknodMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub parent: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub id: Bytes,
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    #[prost(uint64, tag = "5")]
    pub rdev: u64,
    #[prost(uint32, tag = "6")]
    pub uid: u32,
    #[prost(uint32, tag = "7")]
    pub gid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MkdirMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub parent: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub id: Bytes,
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SymlinkMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub parent: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub id: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub target: Bytes,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinkMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub new_parent: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub new_name: Bytes,
}

/// An id and a name: unlink and rmdir (parent, entry), removexattr (file, attribute).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdNameMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RenameMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub parent: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub new_parent: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub new_name: Bytes,
    #[prost(uint32, tag = "5")]
    pub flags: u32,
    #[prost(bytes = "bytes", optional, tag = "6")]
    pub source: Option<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetAttrMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(uint32, optional, tag = "2")]
    pub mode: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub uid: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    pub gid: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    pub size: Option<u64>,
    #[prost(message, optional, tag = "6")]
    pub atime: Option<Time>,
    #[prost(message, optional, tag = "7")]
    pub mtime: Option<Time>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IdMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
    #[prost(bool, tag = "4")]
    pub append: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FallocateMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(uint64, tag = "3")]
    pub length: u64,
    #[prost(int32, tag = "4")]
    pub mode: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CopyMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id_in: Bytes,
    #[prost(uint64, tag = "2")]
    pub offset_in: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub id_out: Bytes,
    #[prost(uint64, tag = "4")]
    pub offset_out: u64,
    #[prost(uint64, tag = "5")]
    pub length: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetXattrMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub value: Bytes,
    #[prost(int32, tag = "4")]
    pub flags: i32,
}

fn w(id: FileId) -> Bytes {
    id.to_wire()
}

fn id(b: &[u8]) -> FsResult<FileId> {
    FileId::from_wire(b).map_err(|_| FsError::Store(format!("stored id of {} bytes", b.len())))
}

impl From<&Command> for CommandMsg {
    fn from(cmd: &Command) -> Self {
        CommandMsg {
            request: cmd.request.map(|r| RequestMsg {
                client: FileId(r.client).to_wire(),
                seq: r.seq,
                ack_below: r.ack_below,
            }),
            now: Some(cmd.now),
            op: Some(OpMsg::from(&cmd.op)),
        }
    }
}

impl From<&Operation> for OpMsg {
    fn from(op: &Operation) -> Self {
        match op {
            Operation::Create {
                parent,
                name,
                id,
                mode,
                uid,
                gid,
                exclusive,
                truncate,
            } => OpMsg::Create(CreateMsg {
                parent: w(*parent),
                name: name.clone(),
                id: w(*id),
                mode: *mode,
                uid: *uid,
                gid: *gid,
                exclusive: *exclusive,
                truncate: *truncate,
            }),
            Operation::Mknod {
                parent,
                name,
                id,
                mode,
                rdev,
                uid,
                gid,
            } => OpMsg::Mknod(MknodMsg {
                parent: w(*parent),
                name: name.clone(),
                id: w(*id),
                mode: *mode,
                rdev: *rdev,
                uid: *uid,
                gid: *gid,
            }),
            Operation::Mkdir {
                parent,
                name,
                id,
                mode,
                uid,
                gid,
            } => OpMsg::Mkdir(MkdirMsg {
                parent: w(*parent),
                name: name.clone(),
                id: w(*id),
                mode: *mode,
                uid: *uid,
                gid: *gid,
            }),
            Operation::Symlink {
                parent,
                name,
                id,
                target,
                uid,
                gid,
            } => OpMsg::Symlink(SymlinkMsg {
                parent: w(*parent),
                name: name.clone(),
                id: w(*id),
                target: target.clone(),
                uid: *uid,
                gid: *gid,
            }),
            Operation::Link {
                id,
                new_parent,
                new_name,
            } => OpMsg::Link(LinkMsg {
                id: w(*id),
                new_parent: w(*new_parent),
                new_name: new_name.clone(),
            }),
            Operation::Unlink { parent, name } => OpMsg::Unlink(IdNameMsg {
                id: w(*parent),
                name: name.clone(),
            }),
            Operation::Rmdir { parent, name } => OpMsg::Rmdir(IdNameMsg {
                id: w(*parent),
                name: name.clone(),
            }),
            Operation::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                source,
            } => OpMsg::Rename(RenameMsg {
                parent: w(*parent),
                name: name.clone(),
                new_parent: w(*new_parent),
                new_name: new_name.clone(),
                flags: *flags,
                source: source.map(w),
            }),
            Operation::SetAttr {
                id,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            } => OpMsg::SetAttr(SetAttrMsg {
                id: w(*id),
                mode: *mode,
                uid: *uid,
                gid: *gid,
                size: *size,
                atime: *atime,
                mtime: *mtime,
            }),
            Operation::Truncate { id } => OpMsg::Truncate(IdMsg { id: w(*id) }),
            Operation::Write {
                id,
                offset,
                data,
                append,
            } => OpMsg::Write(WriteMsg {
                id: w(*id),
                offset: *offset,
                data: data.clone(),
                append: *append,
            }),
            Operation::Fallocate {
                id,
                offset,
                length,
                mode,
            } => OpMsg::Fallocate(FallocateMsg {
                id: w(*id),
                offset: *offset,
                length: *length,
                mode: *mode,
            }),
            Operation::CopyFileRange {
                id_in,
                offset_in,
                id_out,
                offset_out,
                length,
            } => OpMsg::CopyFileRange(CopyMsg {
                id_in: w(*id_in),
                offset_in: *offset_in,
                id_out: w(*id_out),
                offset_out: *offset_out,
                length: *length,
            }),
            Operation::SetXattr {
                id,
                name,
                value,
                flags,
            } => OpMsg::SetXattr(SetXattrMsg {
                id: w(*id),
                name: name.clone(),
                value: value.clone(),
                flags: *flags,
            }),
            Operation::RemoveXattr { id, name } => OpMsg::RemoveXattr(IdNameMsg {
                id: w(*id),
                name: name.clone(),
            }),
            Operation::Reclaim { id } => OpMsg::Reclaim(IdMsg { id: w(*id) }),
            Operation::CreatePv {
                name,
                id,
                byte_limit,
                inode_limit,
            } => OpMsg::CreatePv(PvMsg {
                name: name.clone(),
                id: w(*id),
                byte_limit: *byte_limit,
                inode_limit: *inode_limit,
                policy: 0,
            }),
            Operation::ExpandPv {
                name,
                byte_limit,
                inode_limit,
            } => OpMsg::ExpandPv(PvMsg {
                name: name.clone(),
                byte_limit: *byte_limit,
                inode_limit: *inode_limit,
                ..Default::default()
            }),
            Operation::DeletePv { name, policy } => OpMsg::DeletePv(PvMsg {
                name: name.clone(),
                policy: policy.number(),
                ..Default::default()
            }),
            Operation::RecountPv { name } => OpMsg::RecountPv(PvMsg {
                name: name.clone(),
                ..Default::default()
            }),
        }
    }
}

impl TryFrom<CommandMsg> for Command {
    type Error = FsError;

    fn try_from(m: CommandMsg) -> FsResult<Command> {
        let request = match m.request {
            None => None,
            Some(r) => Some(RequestId {
                client: id(&r.client)?.0,
                seq: r.seq,
                ack_below: r.ack_below,
            }),
        };
        let now = m
            .now
            .ok_or_else(|| FsError::Store("stored command without a time".into()))?;
        let op =
            m.op.ok_or_else(|| FsError::Store("stored command of an unknown operation".into()))?;
        Ok(Command {
            request,
            now,
            op: Operation::try_from(op)?,
        })
    }
}

impl TryFrom<OpMsg> for Operation {
    type Error = FsError;

    fn try_from(m: OpMsg) -> FsResult<Operation> {
        Ok(match m {
            OpMsg::Create(m) => Operation::Create {
                parent: id(&m.parent)?,
                name: m.name,
                id: id(&m.id)?,
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                exclusive: m.exclusive,
                truncate: m.truncate,
            },
            OpMsg::Mknod(m) => Operation::Mknod {
                parent: id(&m.parent)?,
                name: m.name,
                id: id(&m.id)?,
                mode: m.mode,
                rdev: m.rdev,
                uid: m.uid,
                gid: m.gid,
            },
            OpMsg::Mkdir(m) => Operation::Mkdir {
                parent: id(&m.parent)?,
                name: m.name,
                id: id(&m.id)?,
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
            },
            OpMsg::Symlink(m) => Operation::Symlink {
                parent: id(&m.parent)?,
                name: m.name,
                id: id(&m.id)?,
                target: m.target,
                uid: m.uid,
                gid: m.gid,
            },
            OpMsg::Link(m) => Operation::Link {
                id: id(&m.id)?,
                new_parent: id(&m.new_parent)?,
                new_name: m.new_name,
            },
            OpMsg::Unlink(m) => Operation::Unlink {
                parent: id(&m.id)?,
                name: m.name,
            },
            OpMsg::Rmdir(m) => Operation::Rmdir {
                parent: id(&m.id)?,
                name: m.name,
            },
            OpMsg::Rename(m) => Operation::Rename {
                parent: id(&m.parent)?,
                name: m.name,
                new_parent: id(&m.new_parent)?,
                new_name: m.new_name,
                flags: m.flags,
                source: m.source.as_deref().map(id).transpose()?,
            },
            OpMsg::SetAttr(m) => Operation::SetAttr {
                id: id(&m.id)?,
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                size: m.size,
                atime: m.atime,
                mtime: m.mtime,
            },
            OpMsg::Truncate(m) => Operation::Truncate { id: id(&m.id)? },
            OpMsg::Write(m) => Operation::Write {
                id: id(&m.id)?,
                offset: m.offset,
                data: m.data,
                append: m.append,
            },
            OpMsg::Fallocate(m) => Operation::Fallocate {
                id: id(&m.id)?,
                offset: m.offset,
                length: m.length,
                mode: m.mode,
            },
            OpMsg::CopyFileRange(m) => Operation::CopyFileRange {
                id_in: id(&m.id_in)?,
                offset_in: m.offset_in,
                id_out: id(&m.id_out)?,
                offset_out: m.offset_out,
                length: m.length,
            },
            OpMsg::SetXattr(m) => Operation::SetXattr {
                id: id(&m.id)?,
                name: m.name,
                value: m.value,
                flags: m.flags,
            },
            OpMsg::RemoveXattr(m) => Operation::RemoveXattr {
                id: id(&m.id)?,
                name: m.name,
            },
            OpMsg::Reclaim(m) => Operation::Reclaim { id: id(&m.id)? },
            OpMsg::CreatePv(m) => Operation::CreatePv {
                id: id(&m.id)?,
                name: m.name,
                byte_limit: m.byte_limit,
                inode_limit: m.inode_limit,
            },
            OpMsg::ExpandPv(m) => Operation::ExpandPv {
                name: m.name,
                byte_limit: m.byte_limit,
                inode_limit: m.inode_limit,
            },
            OpMsg::DeletePv(m) => Operation::DeletePv {
                policy: crate::ops::ReclaimPolicy::from_number(m.policy).ok_or_else(|| {
                    FsError::Store(format!("stored DeletePv with policy {}", m.policy))
                })?,
                name: m.name,
            },
            OpMsg::RecountPv(m) => Operation::RecountPv { name: m.name },
        })
    }
}

/// The stored bytes of a command.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    CommandMsg::from(cmd).encode_to_vec()
}

/// A command from its stored bytes. `Bytes` input lets names and data share
/// the buffer instead of being copied.
pub fn decode_command(bytes: Bytes) -> FsResult<Command> {
    Command::try_from(CommandMsg::decode(bytes)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = FileId> {
        any::<u128>().prop_map(FileId)
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_time() -> impl Strategy<Value = Time> {
        (any::<i64>(), any::<u32>()).prop_map(|(s, n)| Time::new(s, n))
    }

    /// Every variant of [`Operation`], with every field arbitrary.
    pub(crate) fn arb_operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            (
                arb_id(),
                arb_bytes(300),
                arb_id(),
                any::<(u32, u32, u32, bool, bool)>()
            )
                .prop_map(
                    |(parent, name, id, (mode, uid, gid, exclusive, truncate))| {
                        Operation::Create {
                            parent,
                            name,
                            id,
                            mode,
                            uid,
                            gid,
                            exclusive,
                            truncate,
                        }
                    }
                ),
            (
                arb_id(),
                arb_bytes(300),
                arb_id(),
                any::<(u32, u64, u32, u32)>()
            )
                .prop_map(|(parent, name, id, (mode, rdev, uid, gid))| {
                    Operation::Mknod {
                        parent,
                        name,
                        id,
                        mode,
                        rdev,
                        uid,
                        gid,
                    }
                }),
            (arb_id(), arb_bytes(300), arb_id(), any::<(u32, u32, u32)>()).prop_map(
                |(parent, name, id, (mode, uid, gid))| Operation::Mkdir {
                    parent,
                    name,
                    id,
                    mode,
                    uid,
                    gid,
                }
            ),
            (
                arb_id(),
                arb_bytes(300),
                arb_id(),
                arb_bytes(5000),
                any::<(u32, u32)>()
            )
                .prop_map(|(parent, name, id, target, (uid, gid))| {
                    Operation::Symlink {
                        parent,
                        name,
                        id,
                        target,
                        uid,
                        gid,
                    }
                }),
            (arb_id(), arb_id(), arb_bytes(300)).prop_map(|(id, new_parent, new_name)| {
                Operation::Link {
                    id,
                    new_parent,
                    new_name,
                }
            }),
            (arb_id(), arb_bytes(300))
                .prop_map(|(parent, name)| Operation::Unlink { parent, name }),
            (arb_id(), arb_bytes(300)).prop_map(|(parent, name)| Operation::Rmdir { parent, name }),
            (
                arb_id(),
                arb_bytes(300),
                arb_id(),
                arb_bytes(300),
                any::<u32>(),
                proptest::option::of(arb_id())
            )
                .prop_map(|(parent, name, new_parent, new_name, flags, source)| {
                    Operation::Rename {
                        parent,
                        name,
                        new_parent,
                        new_name,
                        flags,
                        source,
                    }
                }),
            (
                arb_id(),
                any::<(Option<u32>, Option<u32>, Option<u32>, Option<u64>)>(),
                proptest::option::of(arb_time()),
                proptest::option::of(arb_time())
            )
                .prop_map(|(id, (mode, uid, gid, size), atime, mtime)| {
                    Operation::SetAttr {
                        id,
                        mode,
                        uid,
                        gid,
                        size,
                        atime,
                        mtime,
                    }
                }),
            arb_id().prop_map(|id| Operation::Truncate { id }),
            (arb_id(), any::<u64>(), arb_bytes(70_000), any::<bool>()).prop_map(
                |(id, offset, data, append)| Operation::Write {
                    id,
                    offset,
                    data,
                    append,
                }
            ),
            (arb_id(), any::<(u64, u64, i32)>()).prop_map(|(id, (offset, length, mode))| {
                Operation::Fallocate {
                    id,
                    offset,
                    length,
                    mode,
                }
            }),
            (arb_id(), arb_id(), any::<(u64, u64, u64)>()).prop_map(
                |(id_in, id_out, (offset_in, offset_out, length))| Operation::CopyFileRange {
                    id_in,
                    offset_in,
                    id_out,
                    offset_out,
                    length,
                }
            ),
            (arb_id(), arb_bytes(300), arb_bytes(70_000), any::<i32>()).prop_map(
                |(id, name, value, flags)| Operation::SetXattr {
                    id,
                    name,
                    value,
                    flags,
                }
            ),
            (arb_id(), arb_bytes(300)).prop_map(|(id, name)| Operation::RemoveXattr { id, name }),
            arb_id().prop_map(|id| Operation::Reclaim { id }),
            ("[a-z0-9.-]{0,20}", arb_id(), any::<(u64, u64)>()).prop_map(|(name, id, (b, i))| {
                Operation::CreatePv {
                    name,
                    id,
                    byte_limit: b,
                    inode_limit: i,
                }
            }),
            ("[a-z0-9.-]{0,20}", any::<(u64, u64)>()).prop_map(|(name, (b, i))| {
                Operation::ExpandPv {
                    name,
                    byte_limit: b,
                    inode_limit: i,
                }
            }),
            ("[a-z0-9.-]{0,20}", 1i32..=3).prop_map(|(name, p)| Operation::DeletePv {
                name,
                policy: crate::ops::ReclaimPolicy::from_number(p).unwrap(),
            }),
            "[a-z0-9.-]{0,20}".prop_map(|name| Operation::RecountPv { name }),
        ]
    }

    pub(crate) fn arb_command() -> impl Strategy<Value = Command> {
        (
            proptest::option::of(any::<(u128, u64, u64)>()),
            arb_time(),
            arb_operation(),
        )
            .prop_map(|(request, now, op)| Command {
                request: request.map(|(client, seq, ack_below)| RequestId {
                    client,
                    seq,
                    ack_below,
                }),
                now,
                op,
            })
    }

    proptest! {
        /// The proposer's batch budget uses the estimate: it must not undercount.
        #[test]
        fn the_size_estimate_covers_the_encoding(cmd in arb_command()) {
            prop_assert!(encode_command(&cmd).len() <= cmd.approx_bytes());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_command_round_trips(cmd in arb_command()) {
            let bytes = encode_command(&cmd);
            prop_assert_eq!(decode_command(Bytes::from(bytes)).unwrap(), cmd);
        }

        #[test]
        fn damaged_bytes_never_panic(cmd in arb_command(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let mut bytes = encode_command(&cmd);
            let i = flip.0.index(bytes.len().max(1));
            if let Some(b) = bytes.get_mut(i) {
                *b ^= flip.1 | 1;
            }
            let n = cut.index(bytes.len() + 1);
            // Either an error or some well-formed command; never a panic.
            let _ = decode_command(Bytes::copy_from_slice(&bytes[..n]));
        }
    }

    #[test]
    fn every_variant_is_generated() {
        // The round-trip property only covers what the strategy makes: make sure
        // that is every operation, so a new variant cannot slip past it.
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = arb_operation();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            seen.insert(strategy.new_tree(&mut runner).unwrap().current().tag());
        }
        assert_eq!(seen, (1..=20).collect());
    }

    #[test]
    fn refuses_what_is_not_a_command() {
        let mut msg = CommandMsg::from(&Command {
            request: None,
            now: Time::new(1, 2),
            op: Operation::Truncate { id: FileId(7) },
        });
        msg.op = Some(OpMsg::Truncate(IdMsg {
            id: Bytes::from_static(b"short"),
        }));
        assert!(decode_command(Bytes::from(msg.encode_to_vec())).is_err());
        msg.op = None;
        assert!(decode_command(Bytes::from(msg.encode_to_vec())).is_err());
        assert!(decode_command(Bytes::from_static(b"\xff\xff\xff")).is_err());
    }
}
