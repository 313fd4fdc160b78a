//! The operations that change a brick, with every non-deterministic choice
//! (new ids, timestamps, the source a rename expects) already made, so applying
//! one gives the same result on every brick and on every replay. This is what
//! the brick's journal carries today (encoded by `ops_codec.rs`) and what a
//! replication log will carry.

use crate::records::Time;
use kadalu_proto::brick::Attr;
use kadalu_proto::FileId;
use prost::bytes::Bytes;

/// Identity of a client request, for at-most-once effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    pub client: u128,
    /// Never 0.
    pub seq: u64,
    /// Outcomes of this client's requests below this seq may be forgotten.
    pub ack_below: u64,
}

/// One entry of the apply path: an operation, the request it came from (if
/// any) and the time the leader chose for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub request: Option<RequestId>,
    pub now: Time,
    pub op: Operation,
}

/// Every change to a brick.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// open(O_CREAT): a new regular file `id`, or (without `exclusive`) the
    /// existing one, truncated if `truncate`.
    Create {
        parent: FileId,
        name: Bytes,
        id: FileId,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        truncate: bool,
    },
    /// `mode` is the full st_mode including the type bits.
    Mknod {
        parent: FileId,
        name: Bytes,
        id: FileId,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    Mkdir {
        parent: FileId,
        name: Bytes,
        id: FileId,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        parent: FileId,
        name: Bytes,
        id: FileId,
        target: Bytes,
        uid: u32,
        gid: u32,
    },
    Link {
        id: FileId,
        new_parent: FileId,
        new_name: Bytes,
    },
    Unlink {
        parent: FileId,
        name: Bytes,
    },
    Rmdir {
        parent: FileId,
        name: Bytes,
    },
    /// `source` is the id the leader saw under the old name: if the old name
    /// is gone and the new name already names it, the rename was applied.
    Rename {
        parent: FileId,
        name: Bytes,
        new_parent: FileId,
        new_name: Bytes,
        flags: u32,
        source: Option<FileId>,
    },
    SetAttr {
        id: FileId,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Time>,
        mtime: Option<Time>,
    },
    /// open(O_TRUNC) of an existing file.
    Truncate {
        id: FileId,
    },
    /// `append`: at the end of file as it is when applied.
    Write {
        id: FileId,
        offset: u64,
        data: Bytes,
        append: bool,
    },
    Fallocate {
        id: FileId,
        offset: u64,
        length: u64,
        mode: i32,
    },
    CopyFileRange {
        id_in: FileId,
        offset_in: u64,
        id_out: FileId,
        offset_out: u64,
        length: u64,
    },
    SetXattr {
        id: FileId,
        name: Bytes,
        value: Bytes,
        flags: i32,
    },
    RemoveXattr {
        id: FileId,
        name: Bytes,
    },
    /// Frees an inode whose last name is gone and which no handle holds.
    Reclaim {
        id: FileId,
    },
    /// Registers the PV `name`: the directory `id` under the root, with its
    /// limits (`quota.rs`). Registering it again with the same limits is done.
    CreatePv {
        name: String,
        id: FileId,
        byte_limit: u64,
        inode_limit: u64,
    },
    /// Raises a PV's limits (`inode_limit` 0 keeps the current one).
    ExpandPv {
        name: String,
        byte_limit: u64,
        inode_limit: u64,
    },
    /// Unregisters a PV and deals with its directory as `policy` says.
    DeletePv {
        name: String,
        policy: ReclaimPolicy,
    },
    /// Recomputes the usage of one PV (or of every PV: `name` empty) from
    /// its inodes and extents, and stores it.
    RecountPv {
        name: String,
    },
}

/// What DeletePv does with the PV's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimPolicy {
    /// Remove the directory and all it holds.
    Delete,
    /// Rename it to `archived-<name>` (or `archived-<name>-N`).
    Archive,
    /// Keep the directory, its data and its registration.
    Retain,
}

impl ReclaimPolicy {
    /// The stored and wire number (as `kadalu.quota.v1.ReclaimPolicy`).
    pub fn number(self) -> i32 {
        match self {
            ReclaimPolicy::Delete => 1,
            ReclaimPolicy::Archive => 2,
            ReclaimPolicy::Retain => 3,
        }
    }

    pub fn from_number(n: i32) -> Option<Self> {
        match n {
            1 => Some(ReclaimPolicy::Delete),
            2 => Some(ReclaimPolicy::Archive),
            3 => Some(ReclaimPolicy::Retain),
            _ => None,
        }
    }
}

impl Command {
    /// About how many bytes the command takes encoded: its payloads plus a
    /// bound on the rest (ids, times, flags), without encoding it.
    pub fn approx_bytes(&self) -> usize {
        const FIXED: usize = 256;
        FIXED
            + match &self.op {
                Operation::Write { data, .. } => data.len(),
                Operation::SetXattr { name, value, .. } => name.len() + value.len(),
                Operation::Symlink { name, target, .. } => name.len() + target.len(),
                Operation::Rename { name, new_name, .. } => name.len() + new_name.len(),
                Operation::Create { name, .. }
                | Operation::Mknod { name, .. }
                | Operation::Mkdir { name, .. }
                | Operation::Unlink { name, .. }
                | Operation::Rmdir { name, .. }
                | Operation::RemoveXattr { name, .. } => name.len(),
                Operation::Link { new_name, .. } => new_name.len(),
                Operation::CreatePv { name, .. }
                | Operation::ExpandPv { name, .. }
                | Operation::DeletePv { name, .. }
                | Operation::RecountPv { name } => name.len(),
                _ => 0,
            }
    }
}

/// Largest write [`Operation::inline_apply_ok`] lets a runtime worker apply.
pub const INLINE_WRITE_MAX: usize = 64 << 10;

impl Operation {
    /// Whether a runtime worker may apply this itself (`BrickService::mutate`):
    /// only what takes a short, bounded time, a small write or a change of
    /// attributes that frees nothing. Everything else goes to the apply
    /// thread: a large write, truncate, fallocate or copy (their time grows
    /// with the bytes they move or free), and the operations that do not come
    /// through `mutate` at all (names, PVs, reclaim), which are kept off this
    /// path until someone measures them (creates were tried: no gain seen).
    pub fn inline_apply_ok(&self) -> bool {
        match self {
            Operation::Write { data, .. } => data.len() <= INLINE_WRITE_MAX,
            Operation::SetAttr { size, .. } => size.is_none(),
            Operation::SetXattr { .. } | Operation::RemoveXattr { .. } => true,
            _ => false,
        }
    }

    /// A stable number per variant, recorded with deduplicated outcomes so a
    /// reused seq for a different operation is detected.
    pub fn tag(&self) -> u32 {
        match self {
            Operation::Create { .. } => 1,
            Operation::Mknod { .. } => 2,
            Operation::Mkdir { .. } => 3,
            Operation::Symlink { .. } => 4,
            Operation::Link { .. } => 5,
            Operation::Unlink { .. } => 6,
            Operation::Rmdir { .. } => 7,
            Operation::Rename { .. } => 8,
            Operation::SetAttr { .. } => 9,
            Operation::Truncate { .. } => 10,
            Operation::Write { .. } => 11,
            Operation::Fallocate { .. } => 12,
            Operation::CopyFileRange { .. } => 13,
            Operation::SetXattr { .. } => 14,
            Operation::RemoveXattr { .. } => 15,
            Operation::Reclaim { .. } => 16,
            Operation::CreatePv { .. } => 17,
            Operation::ExpandPv { .. } => 18,
            Operation::DeletePv { .. } => 19,
            Operation::RecountPv { .. } => 20,
        }
    }
}

/// What applying an operation produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The attributes of the created or changed file.
    Attr(Attr),
    /// Create: `created` is false when an existing file was opened.
    Created {
        attr: Attr,
        created: bool,
    },
    Written {
        written: u32,
        size: u64,
    },
    Copied(u64),
    /// DeletePv: whether the PV was registered, and where it was archived.
    PvDeleted {
        existed: bool,
        archived_as: String,
    },
    /// RecountPv: each PV recounted, with its usage before and after.
    Recounted(Vec<kadalu_proto::quota::PvDrift>),
    /// A name went away; `orphan` is an inode whose last name it was (nlink
    /// now 0): it must be reclaimed once no handle holds it.
    Removed {
        orphan: Option<FileId>,
    },
    Done,
}

/// An outcome as recorded for deduplication (prost-encoded in the store).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordedOutcome {
    #[prost(uint32, tag = "1")]
    pub op_tag: u32,
    /// Non-zero: the operation failed with this errno.
    #[prost(int32, tag = "2")]
    pub errno: i32,
    /// 1 Attr, 2 Created, 3 Written, 4 Copied, 5 Removed, 6 Done, 7 PvDeleted,
    /// 8 Recounted.
    #[prost(uint32, tag = "3")]
    pub kind: u32,
    #[prost(message, optional, tag = "4")]
    pub attr: Option<Attr>,
    #[prost(bool, tag = "5")]
    pub created: bool,
    #[prost(uint64, tag = "6")]
    pub count: u64,
    #[prost(uint64, tag = "7")]
    pub size: u64,
    #[prost(string, tag = "8")]
    pub text: String,
    #[prost(message, repeated, tag = "9")]
    pub drifts: Vec<kadalu_proto::quota::PvDrift>,
}

impl RecordedOutcome {
    pub fn from_result(op_tag: u32, r: &Result<Outcome, i32>) -> Self {
        let mut rec = RecordedOutcome {
            op_tag,
            ..Default::default()
        };
        match r {
            Err(errno) => rec.errno = *errno,
            Ok(Outcome::Attr(a)) => {
                rec.kind = 1;
                rec.attr = Some(a.clone());
            }
            Ok(Outcome::Created { attr, created }) => {
                rec.kind = 2;
                rec.attr = Some(attr.clone());
                rec.created = *created;
            }
            Ok(Outcome::Written { written, size }) => {
                rec.kind = 3;
                rec.count = *written as u64;
                rec.size = *size;
            }
            Ok(Outcome::Copied(n)) => {
                rec.kind = 4;
                rec.count = *n;
            }
            // The orphan was dealt with when first applied.
            Ok(Outcome::Removed { .. }) => rec.kind = 5,
            Ok(Outcome::Done) => rec.kind = 6,
            Ok(Outcome::PvDeleted {
                existed,
                archived_as,
            }) => {
                rec.kind = 7;
                rec.created = *existed;
                rec.text = archived_as.clone();
            }
            Ok(Outcome::Recounted(d)) => {
                rec.kind = 8;
                rec.drifts = d.clone();
            }
        }
        rec
    }

    /// The recorded result; `None` if the record is not understood.
    pub fn to_result(&self) -> Option<Result<Outcome, i32>> {
        if self.errno != 0 {
            return Some(Err(self.errno));
        }
        Some(Ok(match self.kind {
            1 => Outcome::Attr(self.attr.clone()?),
            2 => Outcome::Created {
                attr: self.attr.clone()?,
                created: self.created,
            },
            3 => Outcome::Written {
                written: u32::try_from(self.count).ok()?,
                size: self.size,
            },
            4 => Outcome::Copied(self.count),
            5 => Outcome::Removed { orphan: None },
            6 => Outcome::Done,
            7 => Outcome::PvDeleted {
                existed: self.created,
                archived_as: self.text.clone(),
            },
            8 => Outcome::Recounted(self.drifts.clone()),
            _ => return None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_outcomes_round_trip() {
        let attr = Attr {
            nlink: 3,
            ..Default::default()
        };
        for r in [
            Ok(Outcome::Attr(attr.clone())),
            Ok(Outcome::Created {
                attr: attr.clone(),
                created: true,
            }),
            Ok(Outcome::Written {
                written: 7,
                size: 9,
            }),
            Ok(Outcome::Copied(5)),
            Ok(Outcome::Removed { orphan: None }),
            Ok(Outcome::Done),
            Ok(Outcome::PvDeleted {
                existed: true,
                archived_as: "archived-a".into(),
            }),
            Ok(Outcome::Recounted(vec![kadalu_proto::quota::PvDrift {
                name: "a".into(),
                bytes_before: 1,
                bytes_after: 2,
                inodes_before: 3,
                inodes_after: 4,
            }])),
            Err(libc::EEXIST),
        ] {
            let rec = RecordedOutcome::from_result(3, &r);
            let back: RecordedOutcome =
                prost::Message::decode(prost::Message::encode_to_vec(&rec).as_slice()).unwrap();
            assert_eq!(back.to_result(), Some(r));
        }
    }

    #[test]
    fn only_short_bounded_commands_are_applied_inline() {
        let id = FileId::from_parts(1, 2);
        let write = |n: usize| Operation::Write {
            id,
            offset: 0,
            data: Bytes::from(vec![0u8; n]),
            append: false,
        };
        assert!(write(4096).inline_apply_ok());
        assert!(write(INLINE_WRITE_MAX).inline_apply_ok());
        assert!(!write(INLINE_WRITE_MAX + 1).inline_apply_ok());
        let setattr = |size| Operation::SetAttr {
            id,
            mode: Some(0o644),
            uid: None,
            gid: None,
            size,
            atime: None,
            mtime: None,
        };
        assert!(setattr(None).inline_apply_ok());
        assert!(
            !setattr(Some(0)).inline_apply_ok(),
            "a truncate frees blocks"
        );
        let unlink = Operation::Unlink {
            parent: id,
            name: Bytes::from_static(b"a"),
        };
        assert!(!unlink.inline_apply_ok(), "may remove a large file");
        assert!(!Operation::Truncate { id }.inline_apply_ok());
    }
}
