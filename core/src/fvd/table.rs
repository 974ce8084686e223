//! Chunk-table entries: one little-endian u32 per virtual chunk naming the physical chunk
//! that holds it. [`TABLE_EMPTY`] means never allocated (reads as zeros); bit 31 is the
//! 2011 code's in-memory DIRTY marker and is refused in anything read from disk.

/// An entry for a chunk that has never been allocated.
pub const TABLE_EMPTY: u32 = 0xFFFF_FFFF;
/// The in-memory "allocated but not yet committed" marker; never valid on disk.
pub const TABLE_DIRTY: u32 = 0x8000_0000;

/// What a table entry read from disk says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TableEntry {
    /// Never allocated: the chunk reads as zeros (or from the base where the bitmap says so).
    Empty,
    /// Stored in physical chunk `n` of the data storage.
    Mapped(u32),
    /// Carries the DIRTY bit or is otherwise impossible on disk.
    Invalid(u32),
}

impl TableEntry {
    /// Decodes a raw entry.
    pub const fn decode(raw: u32) -> Self {
        if raw == TABLE_EMPTY {
            TableEntry::Empty
        } else if raw & TABLE_DIRTY != 0 {
            TableEntry::Invalid(raw)
        } else {
            TableEntry::Mapped(raw)
        }
    }

    /// Reads entry `index` from a slice of table bytes (`None` when out of the slice).
    pub fn read(table_bytes: &[u8], index: usize) -> Option<Self> {
        let at = index.checked_mul(4)?;
        let raw = table_bytes.get(at..at.checked_add(4)?)?;
        Some(Self::decode(u32::from_le_bytes(raw.try_into().ok()?)))
    }

    /// The raw on-disk value.
    pub const fn encode(self) -> u32 {
        match self {
            TableEntry::Empty => TABLE_EMPTY,
            TableEntry::Mapped(n) | TableEntry::Invalid(n) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode() {
        assert_eq!(TableEntry::decode(TABLE_EMPTY), TableEntry::Empty);
        assert_eq!(TableEntry::decode(5), TableEntry::Mapped(5));
        assert_eq!(
            TableEntry::decode(TABLE_DIRTY | 5),
            TableEntry::Invalid(TABLE_DIRTY | 5)
        );
        assert_eq!(
            TableEntry::read(&[7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], 1),
            Some(TableEntry::Empty)
        );
        assert_eq!(TableEntry::read(&[7, 0, 0], 0), None);
        assert_eq!(TableEntry::Mapped(9).encode(), 9);
    }
}

/// How the entries of a piece of the table are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounts {
    /// Entries naming a physical chunk.
    pub mapped: u64,
    /// Entries with bit 31 set (corrupt).
    pub invalid: u64,
}

impl EntryCounts {
    /// Counts the whole entries in `table_bytes` (a piece of the table region).
    pub fn of(table_bytes: &[u8]) -> Self {
        let mut counts = EntryCounts::default();
        for entry in table_bytes.chunks_exact(4) {
            let raw = u32::from_le_bytes([
                entry.first().copied().unwrap_or(0xFF),
                entry.get(1).copied().unwrap_or(0xFF),
                entry.get(2).copied().unwrap_or(0xFF),
                entry.get(3).copied().unwrap_or(0xFF),
            ]);
            match TableEntry::decode(raw) {
                TableEntry::Empty => {}
                TableEntry::Mapped(_) => counts.mapped = counts.mapped.saturating_add(1),
                TableEntry::Invalid(_) => counts.invalid = counts.invalid.saturating_add(1),
            }
        }
        counts
    }

    /// The sum of two counts.
    pub fn plus(self, other: EntryCounts) -> EntryCounts {
        EntryCounts {
            mapped: self.mapped.saturating_add(other.mapped),
            invalid: self.invalid.saturating_add(other.invalid),
        }
    }
}
