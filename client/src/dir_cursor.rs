//! How FUSE directory offsets map onto brick readdir cursors.
//!
//! The kernel resumes a listing at the offset of the last entry it consumed. We
//! synthesise "." (offset 1) and ".." (offset 2), then the brick's entries, each
//! with offset `cursor + 2`. The shift keeps the two kinds of offset apart
//! whatever numbers the brick starts its cursors at, so "resume after offset k"
//! (k ≥ 2) is "resume after brick cursor k − 2" exactly. Brick cursors are stable
//! while the directory changes, so are these offsets.

/// Kernel offset of ".".
pub const DOT_OFFSET: u64 = 1;
/// Kernel offset of "..".
pub const DOTDOT_OFFSET: u64 = 2;

/// Where a readdir at kernel offset `offset` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Emit "." first.
    pub dot: bool,
    /// Emit ".." first (after "." when both).
    pub dotdot: bool,
    /// Ask the brick for entries after this cursor (0 = from the start).
    pub brick_cursor: u64,
}

/// Where to resume for a kernel offset.
pub fn resume(offset: u64) -> Resume {
    Resume {
        dot: offset < DOT_OFFSET,
        dotdot: offset < DOTDOT_OFFSET,
        brick_cursor: offset.saturating_sub(DOTDOT_OFFSET),
    }
}

/// The kernel offset of a brick entry with cursor `cursor`, or `None` for a cursor
/// too large to shift (the brick would have to hand out 2^64 − 2 cursors).
pub fn kernel_offset(cursor: u64) -> Option<u64> {
    cursor.checked_add(DOTDOT_OFFSET)
}

/// Smallest space one entry takes in a `readdir` reply (a 24-byte header plus a
/// name padded to 8 bytes).
const MIN_DIRENT: u32 = 32;
/// Same for `readdirplus` (the entry-out block of 128 bytes comes first).
const MIN_DIRENT_PLUS: u32 = 24 + 128 + 8;

/// How many entries to ask the brick for, to fill a kernel buffer of `size` bytes
/// without fetching much that cannot be sent.
pub fn batch_size(size: u32, plus: bool, most: u32) -> u32 {
    let per = if plus { MIN_DIRENT_PLUS } else { MIN_DIRENT };
    (size / per).clamp(1, most.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn start_emits_dot_entries_then_everything() {
        assert_eq!(
            resume(0),
            Resume {
                dot: true,
                dotdot: true,
                brick_cursor: 0
            }
        );
        assert_eq!(
            resume(DOT_OFFSET),
            Resume {
                dot: false,
                dotdot: true,
                brick_cursor: 0
            }
        );
        assert_eq!(
            resume(DOTDOT_OFFSET),
            Resume {
                dot: false,
                dotdot: false,
                brick_cursor: 0
            }
        );
    }

    #[test]
    fn batches_fit_the_buffer() {
        assert_eq!(batch_size(4096, false, 4096), 128);
        assert_eq!(batch_size(4096, true, 4096), 25);
        assert_eq!(batch_size(1 << 20, false, 4096), 4096);
        assert_eq!(batch_size(0, false, 4096), 1);
    }

    proptest! {
        /// Resuming at the offset we gave an entry continues right after its cursor,
        /// and offsets of brick entries never collide with "." and "..".
        #[test]
        fn offsets_round_trip(cursor in 0u64..u64::MAX - 2) {
            let off = kernel_offset(cursor).unwrap();
            prop_assert!(off > DOTDOT_OFFSET || cursor == 0);
            let r = resume(off);
            prop_assert!(!r.dot && !r.dotdot);
            prop_assert_eq!(r.brick_cursor, cursor);
        }

        #[test]
        fn offsets_keep_cursor_order(a in 0u64..u64::MAX - 2, b in 0u64..u64::MAX - 2) {
            prop_assert_eq!(a.cmp(&b), kernel_offset(a).cmp(&kernel_offset(b)));
        }
    }
}
