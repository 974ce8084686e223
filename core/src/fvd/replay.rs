//! How a journal record is laid over the bitmap and the table (FORMAT.md §10.3–10.4): the
//! one rule the engine's replay, its read-only overlay and `check` all apply.
//!
//! [`Record::span`] says which bytes of which region a record patches, or why it lies
//! outside its structure. [`Record::apply_to`] lays the record over any slice of that
//! region (a cache page, a check page): bitmap bytes are ORed in, table entries fill EMPTY
//! slots. A table entry with bit 31, or one contradicting the slot it fills, is a fault.
//! Records are applied atomically per [`APPLY_UNIT`] bytes of their region: a unit holding
//! a fault is left untouched, the record's other units are applied. So a reader that lays
//! records over 512-byte pages and one that uses 4 KiB pages see the same metadata, even
//! for a damaged record. Nothing here does I/O.

use super::journal::Record;
use super::table::{TABLE_DIRTY, TABLE_EMPTY};
use super::ImageLayout;

/// Bytes of a region within which a record is applied all or nothing (one sector, the
/// engine's page size).
pub const APPLY_UNIT: u64 = 512;

/// The region a record patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RecordTarget {
    /// The bitmap region.
    Bitmap,
    /// The table region.
    Table,
}

/// The bytes `[start, end)` of its region a record patches (never empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RecordSpan {
    /// The region.
    pub target: RecordTarget,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl RecordSpan {
    /// The first and last page of `page_size` bytes the span touches.
    pub fn pages(&self, page_size: u64) -> (u64, u64) {
        let first = self.start.checked_div(page_size).unwrap_or(0);
        let last = self
            .end
            .saturating_sub(1)
            .checked_div(page_size)
            .unwrap_or(0);
        (first, last)
    }

    /// The guest bytes `[start, end)` whose metadata the span patches (the blocks of its
    /// bitmap bits, the chunks of its table entries), clamped to the disk; `None` when the
    /// layout has no such region or a product overflows.
    pub fn guest_range(&self, layout: &ImageLayout) -> Option<(u64, u64)> {
        let (start, end, limit) = match self.target {
            RecordTarget::Bitmap => {
                let base = layout.base?;
                let unit = layout.block_size.checked_mul(8)?;
                let start = self.start.checked_mul(unit)?;
                let end = self.end.checked_mul(unit)?;
                (start, end, base.size)
            }
            RecordTarget::Table => {
                let table = layout.table?;
                let start = self.start.checked_div(4)?.checked_mul(table.chunk_size)?;
                let end = self.end.div_ceil(4).checked_mul(table.chunk_size)?;
                (start, end, layout.virtual_size)
            }
        };
        let end = end.min(limit);
        Some((start.min(end), end))
    }
}

/// Why a record, or a part of it, is not applied (corruption: no writer produces it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RecordFault {
    /// A bitmap record in an image without a bitmap.
    NoBitmap,
    /// A table record in an image without a table.
    NoTable,
    /// Bitmap bytes past the end of the bitmap region.
    BitmapOutOfRange {
        /// Offset of the first byte.
        byte_offset: u64,
        /// Bytes in the record.
        len: u64,
        /// Length of the bitmap region.
        bitmap_len: u64,
    },
    /// Table entries past the last chunk.
    TableOutOfRange {
        /// First entry.
        first: u64,
        /// One past the last entry.
        end: u64,
        /// Chunks of the table.
        chunks: u64,
    },
    /// A table entry with bit 31 set.
    DirtyEntry {
        /// The chunk.
        chunk: u64,
        /// The entry value.
        value: u32,
    },
    /// A table entry contradicting the entry already in its slot.
    Conflict {
        /// The chunk.
        chunk: u64,
        /// The value the record sets.
        value: u32,
        /// The value the slot holds.
        current: u32,
    },
}

impl core::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NoBitmap => write!(f, "bitmap record in an image without a bitmap"),
            Self::NoTable => write!(f, "table record in an image without a table"),
            Self::BitmapOutOfRange {
                byte_offset,
                len,
                bitmap_len,
            } => write!(
                f,
                "bitmap bytes {byte_offset}+{len} past the {bitmap_len}-byte bitmap"
            ),
            Self::TableOutOfRange { first, end, chunks } => write!(
                f,
                "table entries {first}..{end} past the last of {chunks} chunks"
            ),
            Self::DirtyEntry { chunk, value } => {
                write!(f, "table entry {value:#x} for chunk {chunk} has bit 31 set")
            }
            Self::Conflict {
                chunk,
                value,
                current,
            } => write!(
                f,
                "table entry {value:#x} for chunk {chunk} contradicts {current:#x} already there"
            ),
        }
    }
}

/// What laying a record over a slice did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Some byte of the slice changed.
    pub changed: bool,
    /// The first fault met, in entry order (its unit was left untouched).
    pub fault: Option<RecordFault>,
}

fn entry(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

impl Record<'_> {
    /// The part of its region the record patches, or why it lies outside its structure
    /// (a bitmap record past the bitmap region, a table record past the last chunk).
    pub fn span(&self, layout: &ImageLayout) -> Result<RecordSpan, RecordFault> {
        match *self {
            Record::Bitmap { byte_offset, bytes } => {
                let base = layout.base.ok_or(RecordFault::NoBitmap)?;
                let len = bytes.len() as u64;
                let fault = RecordFault::BitmapOutOfRange {
                    byte_offset,
                    len,
                    bitmap_len: base.bitmap.len,
                };
                match byte_offset.checked_add(len) {
                    Some(end) if end <= base.bitmap.len && len > 0 => Ok(RecordSpan {
                        target: RecordTarget::Bitmap,
                        start: byte_offset,
                        end,
                    }),
                    _ => Err(fault),
                }
            }
            Record::Table {
                first_entry,
                entries,
            } => {
                let table = layout.table.ok_or(RecordFault::NoTable)?;
                let first = u64::from(first_entry);
                let count = (entries.len() / 4) as u64;
                // first < 2^32 and count < 2^16: neither sum nor product overflows.
                let end = first.saturating_add(count);
                if end > table.chunks || count == 0 {
                    return Err(RecordFault::TableOutOfRange {
                        first,
                        end,
                        chunks: table.chunks,
                    });
                }
                Ok(RecordSpan {
                    target: RecordTarget::Table,
                    start: first.saturating_mul(4),
                    end: end.saturating_mul(4),
                })
            }
        }
    }

    /// Lays the record over `bytes`, which hold the bytes of region `target` from byte
    /// `offset` on (a record for the other region changes nothing). Each [`APPLY_UNIT`]
    /// of the region is applied all or nothing; the first fault is returned with the rest
    /// applied.
    pub fn apply_to(&self, target: RecordTarget, offset: u64, bytes: &mut [u8]) -> Applied {
        let mut applied = Applied::default();
        let (start, body) = match (*self, target) {
            (Record::Bitmap { byte_offset, bytes }, RecordTarget::Bitmap) => (byte_offset, bytes),
            (
                Record::Table {
                    first_entry,
                    entries,
                },
                RecordTarget::Table,
            ) => (u64::from(first_entry).saturating_mul(4), entries),
            _ => return applied,
        };
        let Some(end) = start.checked_add(body.len() as u64) else {
            return applied;
        };
        let slice_end = offset.saturating_add(bytes.len() as u64);
        let mut at = start.max(offset);
        let stop = end.min(slice_end);
        while at < stop {
            // One unit: [at, unit_end).
            let unit_end = at
                .saturating_add(APPLY_UNIT)
                .checked_div(APPLY_UNIT)
                .map_or(stop, |u| u.saturating_mul(APPLY_UNIT))
                .min(stop);
            let (Ok(src), Ok(dst), Ok(len)) = (
                usize::try_from(at.saturating_sub(start)),
                usize::try_from(at.saturating_sub(offset)),
                usize::try_from(unit_end.saturating_sub(at)),
            ) else {
                return applied;
            };
            let (Some(src), Some(dst)) = (
                body.get(src..src.saturating_add(len)),
                bytes.get_mut(dst..dst.saturating_add(len)),
            ) else {
                return applied;
            };
            match target {
                RecordTarget::Bitmap => {
                    for (target, &value) in dst.iter_mut().zip(src) {
                        if *target | value != *target {
                            *target |= value;
                            applied.changed = true;
                        }
                    }
                }
                RecordTarget::Table => match fill_entries(src, dst, at / 4) {
                    Ok(changed) => applied.changed |= changed,
                    Err(fault) => {
                        applied.fault.get_or_insert(fault);
                    }
                },
            }
            at = unit_end;
        }
        applied
    }
}

/// Fills the EMPTY entries of `dst` (table bytes from entry `chunk` on) with the values of
/// `src`, unless one of them is a fault: then nothing changes.
fn fill_entries(src: &[u8], dst: &mut [u8], chunk: u64) -> Result<bool, RecordFault> {
    let mut k = 0usize;
    while let (Some(value), Some(current)) = (entry(src, k), entry(dst, k)) {
        let chunk = chunk.saturating_add((k / 4) as u64);
        if value != TABLE_EMPTY {
            if value & TABLE_DIRTY != 0 {
                return Err(RecordFault::DirtyEntry { chunk, value });
            }
            if current != TABLE_EMPTY && current != value {
                return Err(RecordFault::Conflict {
                    chunk,
                    value,
                    current,
                });
            }
        }
        k = k.saturating_add(4);
    }
    let mut changed = false;
    for (value, slot) in src.chunks_exact(4).zip(dst.chunks_exact_mut(4)) {
        if value != TABLE_EMPTY.to_le_bytes() && slot == TABLE_EMPTY.to_le_bytes() {
            slot.copy_from_slice(value);
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fvd::{BaseLayout, Region, TableLayout};

    fn layout(chunks: u64, bitmap_len: u64) -> ImageLayout {
        ImageLayout {
            header_size: 8192,
            virtual_size: chunks * 65536,
            block_size: 4096,
            data_offset: 1 << 20,
            separate_data_file: false,
            base: Some(BaseLayout {
                size: bitmap_len * 8 * 4096,
                blocks: bitmap_len * 8,
                bitmap: Region {
                    offset: 8192,
                    len: bitmap_len,
                },
            }),
            journal: None,
            table: Some(TableLayout {
                region: Region {
                    offset: 16384,
                    len: 4096,
                },
                chunk_size: 65536,
                chunks,
                storage_grow_unit: 65536,
            }),
            metadata_end: 20480,
            stable_journal_epoch: 1,
            clean_shutdown: false,
            copy_on_read: false,
            chunks_relocated: false,
            base_fully_prefetched: false,
            need_zero_init: false,
        }
    }

    fn entries(values: &[u32]) -> std::vec::Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn spans_stay_inside_their_structure() {
        let l = layout(1000, 4096);
        let e = entries(&[1, 2]);
        let record = Record::Table {
            first_entry: 998,
            entries: &e,
        };
        assert_eq!(
            record.span(&l),
            Ok(RecordSpan {
                target: RecordTarget::Table,
                start: 3992,
                end: 4000
            })
        );
        assert_eq!(record.span(&l).unwrap().pages(512), (7, 7));
        let past = Record::Table {
            first_entry: 999,
            entries: &e,
        };
        assert_eq!(
            past.span(&l),
            Err(RecordFault::TableOutOfRange {
                first: 999,
                end: 1001,
                chunks: 1000
            })
        );
        let bitmap = Record::Bitmap {
            byte_offset: u64::MAX,
            bytes: &[1],
        };
        assert_eq!(
            bitmap.span(&l),
            Err(RecordFault::BitmapOutOfRange {
                byte_offset: u64::MAX,
                len: 1,
                bitmap_len: 4096
            })
        );
        let mut no_base = l;
        no_base.base = None;
        assert_eq!(bitmap.span(&no_base), Err(RecordFault::NoBitmap));
    }

    #[test]
    fn a_fault_leaves_its_unit_untouched_and_the_other_unit_applied() {
        // Entries 126..130 straddle the 512-byte unit boundary at entry 128.
        let e = entries(&[5, 6, 7, 0x8000_0009]);
        let record = Record::Table {
            first_entry: 126,
            entries: &e,
        };
        // A 4 KiB page, or two 512-byte pages: the same result.
        let mut page = [0xFFu8; 4096];
        let applied = record.apply_to(RecordTarget::Table, 0, &mut page);
        assert!(applied.changed);
        assert_eq!(
            applied.fault,
            Some(RecordFault::DirtyEntry {
                chunk: 129,
                value: 0x8000_0009
            })
        );
        let mut small = [[0xFFu8; 512]; 2];
        for (n, p) in small.iter_mut().enumerate() {
            record.apply_to(RecordTarget::Table, 512 * n as u64, p);
        }
        assert_eq!(page[..1024], small.concat()[..]);
        assert_eq!(entry(&page, 126 * 4), Some(5));
        assert_eq!(entry(&page, 128 * 4), Some(TABLE_EMPTY));
    }

    #[test]
    fn entries_fill_only_empty_slots_and_conflicts_are_faults() {
        let e = entries(&[TABLE_EMPTY, 3, 4]);
        let record = Record::Table {
            first_entry: 0,
            entries: &e,
        };
        let mut page = entries(&[9, 3, TABLE_EMPTY]);
        let applied = record.apply_to(RecordTarget::Table, 0, &mut page);
        assert_eq!(applied.fault, None);
        assert_eq!(page, entries(&[9, 3, 4]));
        // Applying again changes nothing: replay is idempotent.
        assert!(!record.apply_to(RecordTarget::Table, 0, &mut page).changed);
        let mut other = entries(&[9, 8, TABLE_EMPTY]);
        let applied = record.apply_to(RecordTarget::Table, 0, &mut other);
        assert_eq!(
            applied.fault,
            Some(RecordFault::Conflict {
                chunk: 1,
                value: 3,
                current: 8
            })
        );
        assert_eq!(other, entries(&[9, 8, TABLE_EMPTY]));
        // The other region, or bytes outside the slice, change nothing.
        let bitmap = Record::Bitmap {
            byte_offset: 4096,
            bytes: &[0x0F],
        };
        let mut page = [0u8; 4096];
        assert_eq!(
            bitmap.apply_to(RecordTarget::Bitmap, 0, &mut page),
            Applied::default()
        );
        let applied = bitmap.apply_to(RecordTarget::Bitmap, 4096, &mut page);
        assert!(applied.changed);
        assert_eq!(page[0], 0x0F);
        assert!(
            !bitmap
                .apply_to(RecordTarget::Table, 4096, &mut page)
                .changed
        );
    }

    #[test]
    fn a_record_names_the_guest_bytes_whose_metadata_it_patches() {
        let l = layout(10, 2);
        let e = entries(&[7, 8]);
        let table = Record::Table {
            first_entry: 3,
            entries: &e,
        };
        let span = table.span(&l).unwrap();
        assert_eq!(span.guest_range(&l), Some((3 * 65536, 5 * 65536)));
        let bits = [0xff];
        let bitmap = Record::Bitmap {
            byte_offset: 1,
            bytes: &bits,
        };
        // Byte 1 holds blocks 8..16 of 4 KiB; the base is 16 blocks long.
        let span = bitmap.span(&l).unwrap();
        assert_eq!(span.guest_range(&l), Some((8 * 4096, 16 * 4096)));
        // A span past the disk is clamped to it, never wrapped.
        let far = RecordSpan {
            target: RecordTarget::Table,
            start: u64::MAX - 3,
            end: u64::MAX,
        };
        assert_eq!(far.guest_range(&l), None);
        let past = RecordSpan {
            target: RecordTarget::Table,
            start: 40,
            end: 48,
        };
        assert_eq!(past.guest_range(&l), Some((10 * 65536, 10 * 65536)));
    }
}
