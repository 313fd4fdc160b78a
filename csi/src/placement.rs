//! Which replica set a new PV goes to: pure arithmetic over each set's
//! capacity, unit- and property-tested.
//!
//! A set's available space is its file system's free bytes, minus what its
//! PVs have been promised and not yet used (limit − usage, summed), minus a
//! reserve that is 0 unless configured ("no hidden reserve"). A PV goes to
//! the set with the most available space that can hold it whole; ties go to
//! the lowest set index.

/// The space of one replica set (from `Quota.Capacity` of its leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetSpace {
    pub set_index: u32,
    pub fs_free_bytes: u64,
    pub promised_bytes: u64,
}

impl SetSpace {
    pub fn available(&self, reserve: u64) -> u64 {
        self.fs_free_bytes
            .saturating_sub(self.promised_bytes)
            .saturating_sub(reserve)
    }
}

/// No set can hold the PV; `largest` is the most any one set has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub largest: u64,
}

/// The set for a PV of `size` bytes.
pub fn place(sets: &[SetSpace], size: u64, reserve: u64) -> Result<u32, NoRoom> {
    let mut best: Option<(u64, u32)> = None;
    for s in sets {
        let a = s.available(reserve);
        let better = match best {
            None => true,
            Some((ba, bi)) => a > ba || (a == ba && s.set_index < bi),
        };
        if better {
            best = Some((a, s.set_index));
        }
    }
    match best {
        Some((a, i)) if a >= size => Ok(i),
        Some((a, _)) => Err(NoRoom { largest: a }),
        None => Err(NoRoom { largest: 0 }),
    }
}

/// GetCapacity's two numbers: the total a pool could still give out, and the
/// largest single volume it can create now.
pub fn capacity(sets: &[SetSpace], reserve: u64) -> (u64, u64) {
    let total = sets
        .iter()
        .map(|s| s.available(reserve))
        .fold(0u64, u64::saturating_add);
    let largest = sets.iter().map(|s| s.available(reserve)).max().unwrap_or(0);
    (total, largest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(i: u32, free: u64, promised: u64) -> SetSpace {
        SetSpace {
            set_index: i,
            fs_free_bytes: free,
            promised_bytes: promised,
        }
    }

    #[test]
    fn picks_most_available_and_names_the_largest_when_full() {
        let sets = [set(0, 100, 50), set(1, 100, 10), set(2, 90, 0)];
        assert_eq!(place(&sets, 80, 0), Ok(1));
        assert_eq!(place(&sets, 90, 0), Ok(1));
        assert_eq!(place(&sets, 91, 0), Err(NoRoom { largest: 90 }));
        assert_eq!(place(&sets, 80, 20), Err(NoRoom { largest: 70 }));
        assert_eq!(place(&[], 1, 0), Err(NoRoom { largest: 0 }));
        // Ties: the lowest index.
        assert_eq!(place(&[set(3, 10, 0), set(1, 10, 0)], 5, 0), Ok(1));
        assert_eq!(capacity(&sets, 0), (50 + 90 + 90, 90));
    }

    proptest! {
        #[test]
        fn placement_is_the_maximum_that_fits(
            spaces in proptest::collection::vec((0u64..1000, 0u64..1000), 0..6),
            size in 0u64..1200, reserve in 0u64..100,
        ) {
            let sets: Vec<SetSpace> = spaces.iter().enumerate()
                .map(|(i, (f, p))| set(i as u32, *f, *p)).collect();
            let max = sets.iter().map(|s| s.available(reserve)).max().unwrap_or(0);
            match place(&sets, size, reserve) {
                Ok(i) => {
                    let chosen = sets.iter().find(|s| s.set_index == i).unwrap();
                    prop_assert!(chosen.available(reserve) >= size);
                    prop_assert_eq!(chosen.available(reserve), max);
                }
                Err(NoRoom { largest }) => {
                    prop_assert!(largest < size || sets.is_empty());
                    prop_assert_eq!(largest, max);
                }
            }
        }
    }
}
