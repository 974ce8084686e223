//! L1 and L2 tables: arrays of little-endian u64 byte offsets, `table_size` clusters long,
//! and the arithmetic that splits a guest offset into an L1 index, an L2 index and an offset
//! inside the data cluster.
//!
//! Entry values: 0 is unallocated (an L2 table not yet created; a data cluster that reads
//! from the backing file, or zeros without one); 1 in an L2 table is a zero cluster (reads
//! as zeros even over a backing file); anything else is the cluster-aligned byte offset of
//! an L2 table or a data cluster. A misaligned value, and 1 in the L1 table, are invalid.
//!
//! Everything here is total: zero or overflowing sizes give `None`, never a panic.

/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 8;
/// [`ENTRY_SIZE`] as a slice length.
const ENTRY_BYTES: usize = 8;
const _: () = assert!(ENTRY_BYTES as u64 == ENTRY_SIZE);
/// Entry value of an unallocated L2 table or data cluster.
pub const UNALLOCATED: u64 = 0;
/// L2 entry value of a zero cluster.
pub const ZERO_CLUSTER: u64 = 1;

/// What an L1 entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum L1Entry {
    /// No L2 table yet: every cluster it would map is unallocated.
    Unallocated,
    /// The L2 table starts at this (cluster-aligned, non-zero) byte offset.
    Table(u64),
    /// Misaligned, or the zero-cluster marker (meaningless in the L1 table).
    Invalid(u64),
}

impl L1Entry {
    /// Decodes a raw L1 entry of an image with `cluster_size`-byte clusters. With a zero
    /// `cluster_size` every non-zero entry is invalid.
    pub const fn decode(raw: u64, cluster_size: u64) -> Self {
        if raw == UNALLOCATED {
            L1Entry::Unallocated
        } else if is_cluster_aligned(raw, cluster_size) {
            L1Entry::Table(raw)
        } else {
            L1Entry::Invalid(raw)
        }
    }

    /// The raw on-disk value.
    pub const fn encode(self) -> u64 {
        match self {
            L1Entry::Unallocated => UNALLOCATED,
            L1Entry::Table(offset) | L1Entry::Invalid(offset) => offset,
        }
    }
}

/// What an L2 entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum L2Entry {
    /// Never written: reads from the backing file, or as zeros without one.
    Unallocated,
    /// Reads as zeros, whatever the backing file holds.
    Zero,
    /// The data cluster starts at this (cluster-aligned, non-zero) byte offset.
    Cluster(u64),
    /// Not cluster aligned (and not the zero marker).
    Invalid(u64),
}

impl L2Entry {
    /// Decodes a raw L2 entry of an image with `cluster_size`-byte clusters. With a zero
    /// `cluster_size` every entry other than 0 and 1 is invalid.
    pub const fn decode(raw: u64, cluster_size: u64) -> Self {
        if raw == UNALLOCATED {
            L2Entry::Unallocated
        } else if raw == ZERO_CLUSTER {
            L2Entry::Zero
        } else if is_cluster_aligned(raw, cluster_size) {
            L2Entry::Cluster(raw)
        } else {
            L2Entry::Invalid(raw)
        }
    }

    /// The raw on-disk value.
    pub const fn encode(self) -> u64 {
        match self {
            L2Entry::Unallocated => UNALLOCATED,
            L2Entry::Zero => ZERO_CLUSTER,
            L2Entry::Cluster(offset) | L2Entry::Invalid(offset) => offset,
        }
    }
}

const fn is_cluster_aligned(offset: u64, cluster_size: u64) -> bool {
    matches!(offset.checked_rem(cluster_size), Some(0))
}

/// Reads raw entry `index` from a slice of table bytes (`None` when out of the slice).
pub fn read_entry(table_bytes: &[u8], index: u64) -> Option<u64> {
    let at = usize::try_from(index.checked_mul(ENTRY_SIZE)?).ok()?;
    let raw = table_bytes.get(at..at.checked_add(ENTRY_BYTES)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// Stores raw entry `index` into a slice of table bytes; `None` (nothing written) when out
/// of the slice.
pub fn write_entry(table_bytes: &mut [u8], index: u64, raw: u64) -> Option<()> {
    let at = usize::try_from(index.checked_mul(ENTRY_SIZE)?).ok()?;
    let end = at.checked_add(ENTRY_BYTES)?;
    table_bytes
        .get_mut(at..end)?
        .copy_from_slice(&raw.to_le_bytes());
    Some(())
}

/// Bytes of one table: `table_size × cluster_size`.
pub const fn table_bytes(cluster_size: u64, table_size: u64) -> Option<u64> {
    cluster_size.checked_mul(table_size)
}

/// Entries in one L1 or L2 table: `table_size × cluster_size / 8`. `None` on overflow.
pub const fn entries_per_table(cluster_size: u64, table_size: u64) -> Option<u64> {
    match table_bytes(cluster_size, table_size) {
        Some(bytes) => Some(bytes / ENTRY_SIZE),
        None => None,
    }
}

/// Guest bytes one L2 table maps: `entries × cluster_size`. `None` on overflow.
pub const fn bytes_per_l2_table(cluster_size: u64, table_size: u64) -> Option<u64> {
    match entries_per_table(cluster_size, table_size) {
        Some(entries) => entries.checked_mul(cluster_size),
        None => None,
    }
}

/// The largest image the tables can address: `entries² × cluster_size`. `None` when that
/// exceeds `u64::MAX` (then every `u64` size is addressable).
pub const fn max_image_size(cluster_size: u64, table_size: u64) -> Option<u64> {
    match (
        entries_per_table(cluster_size, table_size),
        bytes_per_l2_table(cluster_size, table_size),
    ) {
        (Some(entries), Some(per_l2)) => entries.checked_mul(per_l2),
        _ => None,
    }
}

/// Byte offset of `guest_offset` inside its data cluster. `None` for a zero `cluster_size`.
pub const fn offset_in_cluster(guest_offset: u64, cluster_size: u64) -> Option<u64> {
    guest_offset.checked_rem(cluster_size)
}

/// Index of `guest_offset`'s entry in its L2 table (`entries` per table). `None` for zero
/// sizes.
pub const fn l2_index(guest_offset: u64, cluster_size: u64, entries: u64) -> Option<u64> {
    match guest_offset.checked_div(cluster_size) {
        Some(cluster) => cluster.checked_rem(entries),
        None => None,
    }
}

/// Index of `guest_offset`'s entry in the L1 table (`entries` per table). `None` for zero
/// sizes and for offsets beyond what the L1 table addresses (index `>= entries`).
pub const fn l1_index(guest_offset: u64, cluster_size: u64, entries: u64) -> Option<u64> {
    let index = match guest_offset.checked_div(cluster_size) {
        Some(cluster) => match cluster.checked_div(entries) {
            Some(index) => index,
            None => return None,
        },
        None => return None,
    };
    if index < entries {
        Some(index)
    } else {
        None
    }
}

/// Where a guest offset lives in the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TableIndex {
    /// Entry in the L1 table naming the L2 table.
    pub l1: u64,
    /// Entry in that L2 table naming the data cluster.
    pub l2: u64,
    /// Byte inside the data cluster.
    pub in_cluster: u64,
}

impl TableIndex {
    /// Splits `guest_offset` for `cluster_size`-byte clusters and `entries` entries per
    /// table; `None` for zero sizes or an offset the L1 table cannot address.
    pub const fn split(guest_offset: u64, cluster_size: u64, entries: u64) -> Option<Self> {
        match (
            l1_index(guest_offset, cluster_size, entries),
            l2_index(guest_offset, cluster_size, entries),
            offset_in_cluster(guest_offset, cluster_size),
        ) {
            (Some(l1), Some(l2), Some(in_cluster)) => Some(TableIndex { l1, l2, in_cluster }),
            _ => None,
        }
    }

    /// The guest offset this index names (the inverse of [`TableIndex::split`]); `None`
    /// when a part is out of range or the result overflows.
    pub const fn join(self, cluster_size: u64, entries: u64) -> Option<u64> {
        if self.l1 >= entries || self.l2 >= entries || self.in_cluster >= cluster_size {
            return None;
        }
        let Some(cluster) = self.l1.checked_mul(entries) else {
            return None;
        };
        let Some(cluster) = cluster.checked_add(self.l2) else {
            return None;
        };
        let Some(offset) = cluster.checked_mul(cluster_size) else {
            return None;
        };
        offset.checked_add(self.in_cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;

    #[test]
    fn entries_decode() {
        assert_eq!(L2Entry::decode(0, 64 * KIB), L2Entry::Unallocated);
        assert_eq!(L2Entry::decode(1, 64 * KIB), L2Entry::Zero);
        assert_eq!(
            L2Entry::decode(0x50000, 64 * KIB),
            L2Entry::Cluster(0x50000)
        );
        assert_eq!(
            L2Entry::decode(0x50200, 64 * KIB),
            L2Entry::Invalid(0x50200)
        );
        assert_eq!(L2Entry::decode(4096, 0), L2Entry::Invalid(4096));
        assert_eq!(L1Entry::decode(0, 64 * KIB), L1Entry::Unallocated);
        assert_eq!(L1Entry::decode(1, 64 * KIB), L1Entry::Invalid(1));
        assert_eq!(L1Entry::decode(0x40000, 64 * KIB), L1Entry::Table(0x40000));
        for raw in [0, 1, 0x50000, 0x50200] {
            assert_eq!(L2Entry::decode(raw, 64 * KIB).encode(), raw);
            assert_eq!(L1Entry::decode(raw, 64 * KIB).encode(), raw);
        }
    }

    #[test]
    fn entries_read_and_write() {
        let mut table = [0u8; 24];
        assert_eq!(write_entry(&mut table, 1, 0x1_0000_0000), Some(()));
        assert_eq!(read_entry(&table, 1), Some(0x1_0000_0000));
        assert_eq!(read_entry(&table, 0), Some(0));
        assert_eq!(read_entry(&table, 3), None);
        assert_eq!(write_entry(&mut table, 3, 5), None);
        assert_eq!(read_entry(&table, u64::MAX), None);
    }

    #[test]
    fn index_math() {
        // Default geometry: 64 KiB clusters, 4-cluster tables: 32768 entries.
        let entries = entries_per_table(64 * KIB, 4).unwrap();
        assert_eq!(entries, 32768);
        assert_eq!(bytes_per_l2_table(64 * KIB, 4), Some(2 << 30));
        assert_eq!(max_image_size(64 * KIB, 4), Some(64 << 40));
        let at = (3 << 31) + 5 * 64 * KIB + 17;
        let index = TableIndex::split(at, 64 * KIB, entries).unwrap();
        assert_eq!(
            index,
            TableIndex {
                l1: 3,
                l2: 5,
                in_cluster: 17
            }
        );
        assert_eq!(index.join(64 * KIB, entries), Some(at));
        // Past the last L1 entry.
        assert_eq!(l1_index(64 << 40, 64 * KIB, entries), None);
        assert_eq!(
            l1_index((64 << 40) - 1, 64 * KIB, entries),
            Some(entries - 1)
        );
        // Zero sizes never divide.
        assert_eq!(TableIndex::split(5, 0, entries), None);
        assert_eq!(TableIndex::split(5, 4096, 0), None);
        // 64 MiB clusters and 16-cluster tables address more than u64 can hold.
        assert_eq!(max_image_size(64 << 20, 16), None);
        assert_eq!(max_image_size(u64::MAX, 2), None);
    }
}

/// How the entries of an L2 table (or a piece of one) are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Counts {
    /// Entries naming a data cluster.
    pub data: u64,
    /// Zero-cluster markers.
    pub zero: u64,
    /// Misaligned entries.
    pub invalid: u64,
}

impl L2Counts {
    /// Counts the whole entries in `table_bytes` of an image with `cluster_size`-byte
    /// clusters.
    pub fn of(table_bytes: &[u8], cluster_size: u64) -> Self {
        let mut counts = L2Counts::default();
        for entry in table_bytes.chunks_exact(8) {
            let raw = u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]));
            match L2Entry::decode(raw, cluster_size) {
                L2Entry::Unallocated => {}
                L2Entry::Zero => counts.zero = counts.zero.saturating_add(1),
                L2Entry::Cluster(_) => counts.data = counts.data.saturating_add(1),
                L2Entry::Invalid(_) => counts.invalid = counts.invalid.saturating_add(1),
            }
        }
        counts
    }
}
