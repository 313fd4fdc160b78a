//! The 128-bit file id: how it is encoded on the wire and how it maps to a FUSE
//! inode number.

use std::fmt;

/// Id of a brick's root directory.
pub const ROOT_ID: FileId = FileId(1);

/// A file's identity, stable across renames and hard links and equal on every
/// brick of a replica set. The low 64 bits are unique within a pool, so they
/// double as the inode number a client reports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub u128);

/// A byte string on the wire that is not a 16-byte file id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file id must be 16 bytes, got {0}")]
pub struct BadFileId(pub usize);

impl FileId {
    /// Builds an id from its two halves.
    pub fn from_parts(hi: u64, lo: u64) -> Self {
        FileId(((hi as u128) << 64) | lo as u128)
    }

    /// Inode number for this id: the low 64 bits (the root is 1).
    pub fn ino(self) -> u64 {
        self.0 as u64
    }

    /// The high 64 bits (random, chosen with the id).
    pub fn hi(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// Big-endian wire form.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Wire form as an owned buffer, for building messages.
    pub fn to_wire(self) -> prost::bytes::Bytes {
        prost::bytes::Bytes::copy_from_slice(&self.to_bytes())
    }

    /// Parses the wire form; anything but exactly 16 bytes is refused.
    pub fn from_wire(b: &[u8]) -> Result<Self, BadFileId> {
        let arr: [u8; 16] = b.try_into().map_err(|_| BadFileId(b.len()))?;
        Ok(FileId(u128::from_be_bytes(arr)))
    }

    /// Lower-case hex, 32 digits (used for object file names).
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({:032x})", self.0)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn wire_round_trip(v in any::<u128>()) {
            let id = FileId(v);
            prop_assert_eq!(FileId::from_wire(&id.to_bytes()).unwrap(), id);
            prop_assert_eq!(FileId::from_parts(id.hi(), id.ino()), id);
        }

        #[test]
        fn wrong_lengths_are_refused(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assume!(b.len() != 16);
            prop_assert_eq!(FileId::from_wire(&b), Err(BadFileId(b.len())));
        }
    }

    #[test]
    fn root_is_inode_one() {
        assert_eq!(ROOT_ID.ino(), 1);
    }
}
