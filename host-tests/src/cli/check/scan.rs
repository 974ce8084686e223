//! The checks themselves, on metadata held in memory: journal replay with the engine's
//! rules (FORMAT.md §10.3–10.4) that records a bad record instead of failing, and the
//! bitmap (§7); the chunk table (§8) is [`super::table`]'s. Nothing here does I/O.

use super::load::Metadata;
use fvd_core::format::journal::{Record, SectorError, VerifiedSector, JOURNAL_SECTOR_SIZE};
use fvd_core::format::table::{TABLE_DIRTY, TABLE_EMPTY};
use fvd_core::format::ImageLayout;
use std::fmt;

/// One structural problem (a corruption in qemu-img's terms).
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A journal sector of the current epoch whose checksum is right but whose records are
    /// malformed.
    MalformedSector {
        /// Sector index.
        sector: u64,
        /// Byte of the sector where parsing failed.
        at: usize,
    },
    /// A journal record outside its region.
    RecordOutOfRange {
        /// Sector index.
        sector: u64,
        /// Record index in the sector.
        record: usize,
        /// What it addresses.
        detail: String,
    },
    /// A journal table record whose entry has bit 31 set.
    RecordDirty {
        /// Sector index.
        sector: u64,
        /// Record index in the sector.
        record: usize,
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
        record: usize,
        /// Virtual chunk.
        chunk: u64,
        /// The value the record sets.
        value: u32,
        /// The value the table (with earlier records applied) holds.
        current: u32,
    },
    /// The image is marked clean but its journal holds valid sectors of the current epoch:
    /// they were never replayed (the clean flag was forced) and a later crash could mix
    /// them with new ones.
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
    /// A stable name for JSON output.
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

    /// True for problems in the journal (a repair drops or replays the records).
    pub fn in_journal(&self) -> bool {
        matches!(
            self,
            Problem::MalformedSector { .. }
                | Problem::RecordOutOfRange { .. }
                | Problem::RecordDirty { .. }
                | Problem::RecordConflict { .. }
                | Problem::UnreplayedJournal { .. }
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
                detail,
            } => write!(
                f,
                "journal sector {sector} record {record} is out of range: {detail}"
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

/// What a journal replay found.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// Valid sectors of the current epoch.
    pub sectors: u64,
    /// Records in them.
    pub records: u64,
    /// Records applied (all but the bad ones).
    pub applied: u64,
    /// Bad sectors and records (not applied).
    pub problems: Vec<Problem>,
}

fn entry_at(table: &[u8], index: u64) -> u32 {
    let at = index as usize * 4;
    u32::from_le_bytes([table[at], table[at + 1], table[at + 2], table[at + 3]])
}

fn set_entry(table: &mut [u8], index: u64, value: u32) {
    let at = index as usize * 4;
    table[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Applies one record to `meta`, or explains why it is corrupt (then nothing is applied).
fn apply_record(
    record: &Record<'_>,
    layout: &ImageLayout,
    meta: &mut Metadata,
    sector: u64,
    index: usize,
) -> Result<(), Problem> {
    let out_of_range = |detail: String| Problem::RecordOutOfRange {
        sector,
        record: index,
        detail,
    };
    match *record {
        Record::Bitmap { byte_offset, bytes } => {
            if layout.base.is_none() {
                return Err(out_of_range(
                    "a bitmap record in an image without a bitmap".into(),
                ));
            }
            let len = meta.bitmap.len() as u64;
            match byte_offset.checked_add(bytes.len() as u64) {
                Some(end) if end <= len => {}
                _ => {
                    return Err(out_of_range(format!(
                        "bitmap bytes {byte_offset}..+{} of a {len}-byte bitmap",
                        bytes.len()
                    )))
                }
            }
            let start = byte_offset as usize;
            for (target, value) in meta.bitmap[start..].iter_mut().zip(bytes) {
                *target |= value;
            }
            Ok(())
        }
        Record::Table {
            first_entry,
            entries,
        } => {
            let Some(table) = layout.table else {
                return Err(out_of_range(
                    "a table record in an image without a table".into(),
                ));
            };
            let first = u64::from(first_entry);
            let count = (entries.len() / 4) as u64;
            if first + count > table.chunks {
                return Err(out_of_range(format!(
                    "table entries {first}..{} of {} chunks",
                    first + count,
                    table.chunks
                )));
            }
            let values: Vec<u32> = entries
                .chunks_exact(4)
                .map(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]))
                .collect();
            for (k, &value) in values.iter().enumerate() {
                let chunk = first + k as u64;
                if value == TABLE_EMPTY {
                    continue;
                }
                if value & TABLE_DIRTY != 0 {
                    return Err(Problem::RecordDirty {
                        sector,
                        record: index,
                        chunk,
                        value,
                    });
                }
                let current = entry_at(&meta.table, chunk);
                if current != TABLE_EMPTY && current != value {
                    return Err(Problem::RecordConflict {
                        sector,
                        record: index,
                        chunk,
                        value,
                        current,
                    });
                }
            }
            for (k, &value) in values.iter().enumerate() {
                let chunk = first + k as u64;
                if value != TABLE_EMPTY && entry_at(&meta.table, chunk) == TABLE_EMPTY {
                    set_entry(&mut meta.table, chunk, value);
                }
            }
            Ok(())
        }
    }
}

/// Applies every valid sector of `journal` (epoch `epoch`) to `meta`, skipping and
/// reporting bad records.
pub fn replay(journal: &[u8], epoch: u64, layout: &ImageLayout, meta: &mut Metadata) -> Replay {
    let mut result = Replay::default();
    for (n, sector) in journal.chunks_exact(JOURNAL_SECTOR_SIZE).enumerate() {
        let position = n as u64;
        match VerifiedSector::verify(sector, epoch, position) {
            Ok(verified) => {
                result.sectors += 1;
                for (index, record) in verified.records().enumerate() {
                    result.records += 1;
                    match apply_record(&record, layout, meta, position, index) {
                        Ok(()) => result.applied += 1,
                        Err(problem) => result.problems.push(problem),
                    }
                }
            }
            Err(SectorError::BadRecord { at }) => result.problems.push(Problem::MalformedSector {
                sector: position,
                at,
            }),
            Err(_) => {}
        }
    }
    result
}

/// What the bitmap says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BitmapScan {
    /// Blocks whose bit is set (data in the image).
    pub in_image: u64,
    /// Blocks whose bit is clear (data still in the base).
    pub in_base: u64,
    /// Bits set past the last block.
    pub problem: Option<Problem>,
}

/// Counts the first `blocks` bits of `bitmap` and looks for bits set past them.
pub fn scan_bitmap(bitmap: &[u8], blocks: u64) -> BitmapScan {
    let mut in_image = 0u64;
    let mut stray_first = None;
    let mut stray_count = 0u64;
    for (index, &byte) in bitmap.iter().enumerate() {
        let first_bit = index as u64 * 8;
        let used = blocks.saturating_sub(first_bit).min(8);
        let used_mask = if used == 8 { 0xFF } else { (1u8 << used) - 1 };
        in_image += u64::from((byte & used_mask).count_ones());
        let stray = byte & !used_mask;
        if stray != 0 {
            stray_first.get_or_insert(first_bit + u64::from(stray.trailing_zeros()));
            stray_count += u64::from(stray.count_ones());
        }
    }
    BitmapScan {
        in_image,
        in_base: blocks - in_image.min(blocks),
        problem: stray_first.map(|first| Problem::StrayBits {
            first,
            count: stray_count,
            blocks,
        }),
    }
}

/// Clears every bit of `bitmap` past the first `blocks`.
pub fn clear_stray_bits(bitmap: &mut [u8], blocks: u64) {
    for (index, byte) in bitmap.iter_mut().enumerate() {
        let used = blocks.saturating_sub(index as u64 * 8).min(8);
        if used < 8 {
            *byte &= (1u8 << used) - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_counts_and_strays() {
        let scan = scan_bitmap(&[0b0000_0101, 0b0000_0010, 0, 0x80], 10);
        assert_eq!(scan.in_image, 3);
        assert_eq!(scan.in_base, 7);
        assert_eq!(
            scan.problem,
            Some(Problem::StrayBits {
                first: 31,
                count: 1,
                blocks: 10
            })
        );
        let mut bytes = vec![0xFF, 0xFF, 0xFF];
        clear_stray_bits(&mut bytes, 10);
        assert_eq!(bytes, [0xFF, 0x03, 0]);
        assert_eq!(scan_bitmap(&bytes, 10).problem, None);
        assert_eq!(scan_bitmap(&[0xFF], 8).problem, None);
    }
}
