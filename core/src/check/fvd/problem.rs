//! What can be wrong with an FVD image (FORMAT.md §7, §8, §10), with the numbers that
//! explain it and the words a report shows.

use crate::fvd::replay::RecordFault;
use core::fmt;

/// Why a journal record lies outside its structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RecordRange {
    /// A bitmap record in an image without a bitmap.
    NoBitmap,
    /// A table record in an image without a table.
    NoTable,
    /// Bitmap bytes past the bitmap region.
    Bitmap {
        /// First byte.
        byte_offset: u64,
        /// Bytes.
        len: u64,
        /// Length of the bitmap region.
        bitmap_len: u64,
    },
    /// Table entries past the last chunk.
    Table {
        /// First entry.
        first: u64,
        /// One past the last.
        end: u64,
        /// Chunks of the table.
        chunks: u64,
    },
}

impl fmt::Display for RecordRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecordRange::NoBitmap => write!(f, "a bitmap record in an image without a bitmap"),
            RecordRange::NoTable => write!(f, "a table record in an image without a table"),
            RecordRange::Bitmap {
                byte_offset,
                len,
                bitmap_len,
            } => write!(
                f,
                "bitmap bytes {byte_offset}..+{len} of a {bitmap_len}-byte bitmap"
            ),
            RecordRange::Table { first, end, chunks } => {
                write!(f, "table entries {first}..{end} of {chunks} chunks")
            }
        }
    }
}

/// One structural problem of an FVD image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Problem {
    /// A table entry with bit 31 (the 2011 DIRTY marker) set.
    DirtyEntry {
        /// Virtual chunk.
        chunk: u64,
        /// The raw entry.
        entry: u32,
    },
    /// A table entry naming a physical chunk that does not lie inside the data storage.
    BeyondStorage {
        /// Virtual chunk.
        chunk: u64,
        /// Physical chunk it names.
        physical: u64,
        /// Where that chunk ends in the data storage (`None`: beyond 2^64).
        end: Option<u64>,
        /// Length of the data storage.
        storage_len: u64,
    },
    /// Two table entries naming the same physical chunk.
    SharedChunk {
        /// The later virtual chunk (the one a repair unmaps).
        chunk: u64,
        /// The first virtual chunk naming it (kept by a repair).
        first: u64,
        /// The physical chunk.
        physical: u64,
    },
    /// Bitmap bits set past the last block of the base.
    StrayBits {
        /// First stray bit.
        first: u64,
        /// How many are set.
        count: u64,
        /// Blocks the bitmap covers.
        blocks: u64,
    },
    /// A journal sector of the current epoch whose checksum is right but whose records
    /// are malformed.
    MalformedSector {
        /// Sector index.
        sector: u64,
        /// Byte of the sector where parsing failed.
        at: u64,
    },
    /// A journal record outside its structure.
    RecordOutOfRange {
        /// Sector index.
        sector: u64,
        /// Record index in the sector.
        record: u64,
        /// What it addresses.
        range: RecordRange,
    },
    /// A journal table record whose entry has bit 31 set.
    RecordDirty {
        /// Sector index.
        sector: u64,
        /// Record index in the sector.
        record: u64,
        /// Virtual chunk.
        chunk: u64,
        /// The entry value.
        value: u32,
    },
    /// A journal table record contradicting the table.
    RecordConflict {
        /// Sector index.
        sector: u64,
        /// Record index in the sector.
        record: u64,
        /// Virtual chunk.
        chunk: u64,
        /// The value the record sets.
        value: u32,
        /// The value the table (with earlier records applied) holds.
        current: u32,
    },
    /// The image is marked clean but its journal holds valid sectors of the current
    /// epoch: they were never replayed (the clean flag was forced) and a later crash could
    /// mix them with new ones.
    UnreplayedJournal {
        /// Valid sectors.
        sectors: u64,
        /// Records in them.
        records: u64,
    },
    /// The image is dirty, has metadata and no journal: the engine refuses to open it for
    /// writing, since nothing tells whether its metadata is complete.
    DirtyWithoutJournal,
}

impl Problem {
    /// The problem journal record `record` of sector `sector` has.
    pub fn of_record(sector: u64, record: u64, fault: RecordFault) -> Self {
        let range = |range| Problem::RecordOutOfRange {
            sector,
            record,
            range,
        };
        match fault {
            RecordFault::NoBitmap => range(RecordRange::NoBitmap),
            RecordFault::NoTable => range(RecordRange::NoTable),
            RecordFault::BitmapOutOfRange {
                byte_offset,
                len,
                bitmap_len,
            } => range(RecordRange::Bitmap {
                byte_offset,
                len,
                bitmap_len,
            }),
            RecordFault::TableOutOfRange { first, end, chunks } => {
                range(RecordRange::Table { first, end, chunks })
            }
            RecordFault::DirtyEntry { chunk, value } => Problem::RecordDirty {
                sector,
                record,
                chunk,
                value,
            },
            RecordFault::Conflict {
                chunk,
                value,
                current,
            } => Problem::RecordConflict {
                sector,
                record,
                chunk,
                value,
                current,
            },
        }
    }

    /// A stable name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::DirtyEntry { .. } => "table-entry-dirty",
            Problem::BeyondStorage { .. } => "table-entry-beyond-storage",
            Problem::SharedChunk { .. } => "table-entry-duplicate",
            Problem::StrayBits { .. } => "bitmap-bits-past-end",
            Problem::MalformedSector { .. } => "journal-sector-malformed",
            Problem::RecordOutOfRange { .. } => "journal-record-out-of-range",
            Problem::RecordDirty { .. } => "journal-record-dirty",
            Problem::RecordConflict { .. } => "journal-record-conflict",
            Problem::UnreplayedJournal { .. } => "journal-not-replayed",
            Problem::DirtyWithoutJournal => "dirty-without-journal",
        }
    }

    /// The virtual chunk of a table problem (the entry a repair unmaps).
    pub fn chunk(&self) -> Option<u64> {
        match *self {
            Problem::DirtyEntry { chunk, .. }
            | Problem::BeyondStorage { chunk, .. }
            | Problem::SharedChunk { chunk, .. } => Some(chunk),
            _ => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::DirtyEntry { chunk, entry } => write!(
                f,
                "chunk {chunk}: table entry {entry:#010x} has the DIRTY bit (bit 31) set"
            ),
            Problem::BeyondStorage {
                chunk,
                physical,
                end,
                storage_len,
            } => match end {
                Some(end) => write!(
                    f,
                    "chunk {chunk} maps to physical chunk {physical}, which ends at byte {end}, \
                     past the end of the data storage ({storage_len} bytes)"
                ),
                None => write!(
                    f,
                    "chunk {chunk} maps to physical chunk {physical}, which ends past 2^64 bytes"
                ),
            },
            Problem::SharedChunk {
                chunk,
                first,
                physical,
            } => write!(
                f,
                "chunks {first} and {chunk} both map to physical chunk {physical}"
            ),
            Problem::StrayBits {
                first,
                count,
                blocks,
            } => write!(
                f,
                "bitmap has {count} bit(s) set past its last block {} (first: bit {first})",
                blocks.saturating_sub(1)
            ),
            Problem::MalformedSector { sector, at } => write!(
                f,
                "journal sector {sector} has a valid checksum but malformed records (at byte {at})"
            ),
            Problem::RecordOutOfRange {
                sector,
                record,
                range,
            } => write!(
                f,
                "journal sector {sector} record {record} is out of range: {range}"
            ),
            Problem::RecordDirty {
                sector,
                record,
                chunk,
                value,
            } => write!(
                f,
                "journal sector {sector} record {record} maps chunk {chunk} to {value:#010x}, \
                 which has the DIRTY bit set"
            ),
            Problem::RecordConflict {
                sector,
                record,
                chunk,
                value,
                current,
            } => write!(
                f,
                "journal sector {sector} record {record} maps chunk {chunk} to physical chunk \
                 {value}, but the table maps it to {current}"
            ),
            Problem::UnreplayedJournal { sectors, records } => write!(
                f,
                "the image is marked clean but its journal holds {records} record(s) in \
                 {sectors} sector(s) of the current epoch that were never replayed"
            ),
            Problem::DirtyWithoutJournal => write!(
                f,
                "the image was not closed cleanly and has no journal, so its metadata cannot \
                 be recovered; it will not open for writing"
            ),
        }
    }
}
