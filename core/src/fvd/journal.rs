//! The metadata journal's sector and record format (ours: the 2011 format is lost).
//!
//! The journal region is an array of self-contained 512-byte sectors. Within one epoch
//! sectors are appended from index 0 and never rewritten. A sector is trusted only when its
//! magic, CRC-32C and epoch all check out, so a torn, stale or foreign sector is skipped.
//! Records are patches whose replay is monotonic (bitmap bytes are OR-ed in, table entries
//! only fill EMPTY slots), which makes replay idempotent and independent of which subset
//! of sectors survived a power cut.

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes per journal sector.
pub const JOURNAL_SECTOR_SIZE: usize = 512;
/// `magic` of a journal sector: the bytes `F V D J`.
pub const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"FVDJ");
/// Bytes of a sector available to records.
pub const RECORD_AREA: usize = JOURNAL_SECTOR_SIZE - size_of::<SectorHeader>();
/// Record kind: OR these bytes into the bitmap.
pub const RECORD_BITMAP: u8 = 1;
/// Record kind: fill these EMPTY table entries.
pub const RECORD_TABLE: u8 = 2;
/// Most table entries one sector can carry.
pub const TABLE_ENTRIES_PER_SECTOR: usize = (RECORD_AREA - size_of::<TableRecordHeader>()) / 4;
/// Most bitmap bytes one sector can carry.
pub const BITMAP_BYTES_PER_SECTOR: usize = RECORD_AREA - size_of::<BitmapRecordHeader>();

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Largest `stable_journal_epoch` a header may hold (validation refuses more).
pub const MAX_JOURNAL_EPOCH: u64 = 1 << 63;
/// Largest `stable_journal_epoch` a writer opens: a read-write session moves the epoch on
/// at open and again at a clean close, and neither move may leave an epoch validation
/// refuses (FORMAT.md §10.5).
pub const MAX_WRITABLE_EPOCH: u64 = MAX_JOURNAL_EPOCH - 2;
/// The epoch a writer moves to from `stable` when the journal holds intact sectors of
/// epochs up to `highest_seen` (of any epoch, see [`SectorHeader::intact_epoch`]): above
/// both, so that no sector already on disk can become current by the move (a repaired or
/// reopened image never replays records nobody wrote in its current epoch). A sector
/// epoch above [`MAX_JOURNAL_EPOCH`] is ignored: no valid header can ever reach it. `None`
/// when the move would pass [`MAX_JOURNAL_EPOCH`]: the writer must not move on (and so
/// must not write), because the header it wrote would be refused.
pub const fn next_epoch(stable: u64, highest_seen: u64) -> Option<u64> {
    let floor = if highest_seen <= MAX_JOURNAL_EPOCH && highest_seen > stable {
        highest_seen
    } else {
        stable
    };
    match floor.checked_add(1) {
        Some(next) if next <= MAX_JOURNAL_EPOCH => Some(next),
        _ => None,
    }
}

/// `highest_seen` with the epoch of one more intact sector folded in, for [`next_epoch`]:
/// the highest epoch seen that a header can reach (at most [`MAX_JOURNAL_EPOCH`]; a
/// sector above it can never be current, and must not hide a lower one).
pub const fn fold_seen(highest_seen: u64, sector_epoch: u64) -> u64 {
    if sector_epoch <= MAX_JOURNAL_EPOCH && sector_epoch > highest_seen {
        sector_epoch
    } else {
        highest_seen
    }
}

/// True when a read-write session can move the epoch on from `stable` (with intact
/// sectors up to `highest_seen` in the journal) at open and again at its clean close.
pub const fn room_for_session(stable: u64, highest_seen: u64) -> bool {
    match next_epoch(stable, highest_seen) {
        Some(opened) => next_epoch(opened, 0).is_some(),
        None => false,
    }
}

/// The first 32 bytes of every journal sector.
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SectorHeader {
    /// [`JOURNAL_MAGIC`].
    pub magic: U32,
    /// CRC-32C (Castagnoli) of bytes 8..512 of the sector.
    pub crc: U32,
    /// Must equal the header's `stable_journal_epoch` for the sector to be replayed.
    pub epoch: U64,
    /// The sector's index in the journal region (a misplaced copy is refused).
    pub sequence: U64,
    /// Bytes of the record area in use.
    pub used: U16,
    /// Records in the sector.
    pub records: U16,
    /// Zero.
    pub reserved: U32,
}
const_assert_eq!(size_of::<SectorHeader>(), 32);
const_assert_eq!(offset_of!(SectorHeader, magic), 0);
const_assert_eq!(offset_of!(SectorHeader, crc), 4);
const_assert_eq!(offset_of!(SectorHeader, epoch), 8);
const_assert_eq!(offset_of!(SectorHeader, sequence), 16);
const_assert_eq!(offset_of!(SectorHeader, used), 24);
const_assert_eq!(offset_of!(SectorHeader, records), 26);
const_assert_eq!(offset_of!(SectorHeader, reserved), 28);

impl SectorHeader {
    /// The epoch of `sector` when it is an intact journal sector (magic and checksum
    /// right), whatever its epoch and position; `None` for a torn, foreign or unwritten one.
    pub fn intact_epoch(sector: &[u8]) -> Option<u64> {
        if sector.len() != JOURNAL_SECTOR_SIZE {
            return None;
        }
        let (header, _) = SectorHeader::ref_from_prefix(sector).ok()?;
        let intact = header.magic.get() == JOURNAL_MAGIC
            && CRC32C.checksum(sector.get(8..)?) == header.crc.get();
        intact.then(|| header.epoch.get())
    }
}

/// Header of a bitmap record; `len` bitmap bytes follow.
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BitmapRecordHeader {
    /// [`RECORD_BITMAP`].
    pub kind: u8,
    /// Zero.
    pub reserved: u8,
    /// Bytes that follow.
    pub len: U16,
    /// Byte offset inside the bitmap region of the first byte.
    pub byte_offset: U64,
}
const_assert_eq!(size_of::<BitmapRecordHeader>(), 12);
const_assert_eq!(offset_of!(BitmapRecordHeader, kind), 0);
const_assert_eq!(offset_of!(BitmapRecordHeader, len), 2);
const_assert_eq!(offset_of!(BitmapRecordHeader, byte_offset), 4);

/// Header of a table record; `count` u32 entries follow.
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TableRecordHeader {
    /// [`RECORD_TABLE`].
    pub kind: u8,
    /// Zero.
    pub reserved: u8,
    /// Entries that follow.
    pub count: U16,
    /// Index of the first entry.
    pub first_entry: U32,
}
const_assert_eq!(size_of::<TableRecordHeader>(), 8);
const_assert_eq!(offset_of!(TableRecordHeader, kind), 0);
const_assert_eq!(offset_of!(TableRecordHeader, count), 2);
const_assert_eq!(offset_of!(TableRecordHeader, first_entry), 4);

/// Why a journal sector is not replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SectorError {
    /// The slice is not exactly one sector.
    WrongLength,
    /// No journal magic: never written, or not a journal sector.
    NoMagic,
    /// The checksum does not match: torn or corrupted.
    BadChecksum,
    /// Written in another epoch: stale.
    StaleEpoch {
        /// The sector's epoch.
        found: u64,
    },
    /// The sector claims another position.
    Misplaced {
        /// The position it claims.
        sequence: u64,
    },
    /// The record area is malformed (checksum right, content wrong: a bug, not a crash).
    BadRecord {
        /// Byte offset of the bad record in the sector.
        at: usize,
    },
}

impl core::fmt::Display for SectorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            SectorError::WrongLength => write!(f, "journal sector is not 512 bytes"),
            SectorError::NoMagic => write!(f, "journal sector has no magic"),
            SectorError::BadChecksum => write!(f, "journal sector checksum mismatch"),
            SectorError::StaleEpoch { found } => write!(f, "journal sector from epoch {found}"),
            SectorError::Misplaced { sequence } => {
                write!(f, "journal sector claims position {sequence}")
            }
            SectorError::BadRecord { at } => write!(f, "malformed journal record at byte {at}"),
        }
    }
}

/// One record of a verified sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// OR `bytes` into the bitmap starting at `byte_offset`.
    Bitmap {
        /// Offset in the bitmap region.
        byte_offset: u64,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// Fill EMPTY table entries from `first_entry` on with `entries` (little-endian u32s).
    Table {
        /// Index of the first entry.
        first_entry: u32,
        /// The entries' bytes, 4 per entry.
        entries: &'a [u8],
    },
}

/// A sector whose magic, checksum, epoch and position have been verified.
pub struct VerifiedSector<'a> {
    records: &'a [u8],
    count: u16,
}

impl<'a> VerifiedSector<'a> {
    /// Verifies `sector` as the one at `position` of a journal in epoch `epoch`.
    pub fn verify(sector: &'a [u8], epoch: u64, position: u64) -> Result<Self, SectorError> {
        if sector.len() != JOURNAL_SECTOR_SIZE {
            return Err(SectorError::WrongLength);
        }
        let (header, rest) =
            SectorHeader::ref_from_prefix(sector).map_err(|_| SectorError::WrongLength)?;
        if header.magic.get() != JOURNAL_MAGIC {
            return Err(SectorError::NoMagic);
        }
        if CRC32C.checksum(sector.get(8..).unwrap_or_default()) != header.crc.get() {
            return Err(SectorError::BadChecksum);
        }
        if header.epoch.get() != epoch {
            return Err(SectorError::StaleEpoch {
                found: header.epoch.get(),
            });
        }
        if header.sequence.get() != position {
            return Err(SectorError::Misplaced {
                sequence: header.sequence.get(),
            });
        }
        let used = usize::from(header.used.get());
        if used > RECORD_AREA {
            return Err(SectorError::BadRecord {
                at: size_of::<SectorHeader>(),
            });
        }
        let verified = VerifiedSector {
            records: rest.get(..used).ok_or(SectorError::WrongLength)?,
            count: header.records.get(),
        };
        // Walk once so that iteration afterwards cannot fail.
        let mut seen = 0u16;
        let mut at = 0;
        while at < verified.records.len() {
            let (_, next) = parse_record(verified.records, at).ok_or(SectorError::BadRecord {
                at: at.saturating_add(size_of::<SectorHeader>()),
            })?;
            at = next;
            seen = seen.wrapping_add(1);
        }
        if seen != verified.count {
            return Err(SectorError::BadRecord {
                at: size_of::<SectorHeader>(),
            });
        }
        Ok(verified)
    }

    /// The sector's records in order.
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        let area = self.records;
        let mut at = 0;
        core::iter::from_fn(move || {
            let (record, next) = parse_record(area, at)?;
            at = next;
            Some(record)
        })
    }
}

fn parse_record(area: &[u8], at: usize) -> Option<(Record<'_>, usize)> {
    let rest = area.get(at..)?;
    match *rest.first()? {
        RECORD_BITMAP => {
            let (h, body) = BitmapRecordHeader::ref_from_prefix(rest).ok()?;
            let len = usize::from(h.len.get());
            if len == 0 || h.reserved != 0 {
                return None;
            }
            let bytes = body.get(..len)?;
            Some((
                Record::Bitmap {
                    byte_offset: h.byte_offset.get(),
                    bytes,
                },
                at.checked_add(size_of::<BitmapRecordHeader>())?
                    .checked_add(len)?,
            ))
        }
        RECORD_TABLE => {
            let (h, body) = TableRecordHeader::ref_from_prefix(rest).ok()?;
            let len = usize::from(h.count.get()).checked_mul(4)?;
            if len == 0 || h.reserved != 0 {
                return None;
            }
            let entries = body.get(..len)?;
            Some((
                Record::Table {
                    first_entry: h.first_entry.get(),
                    entries,
                },
                at.checked_add(size_of::<TableRecordHeader>())?
                    .checked_add(len)?,
            ))
        }
        _ => None,
    }
}

/// Builds one journal sector in a caller-owned 512-byte buffer.
pub struct SectorBuilder<'a> {
    sector: &'a mut [u8],
    used: usize,
    records: u16,
}

impl<'a> SectorBuilder<'a> {
    /// Starts an empty sector in `sector` (which must be 512 bytes; returns `None` otherwise).
    pub fn new(sector: &'a mut [u8]) -> Option<Self> {
        if sector.len() != JOURNAL_SECTOR_SIZE {
            return None;
        }
        sector.fill(0);
        Some(SectorBuilder {
            sector,
            used: 0,
            records: 0,
        })
    }

    /// Free bytes left in the record area.
    pub fn free(&self) -> usize {
        RECORD_AREA.saturating_sub(self.used)
    }

    /// True when no record has been added.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Appends one record (`header` then `body`) to the record area; false when it does
    /// not fit (the sector is left as it was).
    fn append(&mut self, header: &[u8], body: &[u8]) -> bool {
        let Some(start) = size_of::<SectorHeader>().checked_add(self.used) else {
            return false;
        };
        let Some(len) = header.len().checked_add(body.len()) else {
            return false;
        };
        let Some(records) = self.records.checked_add(1) else {
            return false;
        };
        let Some(slot) = start
            .checked_add(len)
            .and_then(|end| self.sector.get_mut(start..end))
        else {
            return false;
        };
        let (head, tail) = slot.split_at_mut(header.len());
        head.copy_from_slice(header);
        tail.copy_from_slice(body);
        self.used = self.used.saturating_add(len);
        self.records = records;
        true
    }

    /// Appends as many of `bytes` (bitmap bytes starting at `byte_offset`) as fit; returns
    /// how many were taken (0 when not even one fits).
    pub fn push_bitmap(&mut self, byte_offset: u64, bytes: &[u8]) -> usize {
        let room = self.free().saturating_sub(size_of::<BitmapRecordHeader>());
        let take = bytes.len().min(room).min(usize::from(u16::MAX));
        let (Ok(len), Some(body)) = (u16::try_from(take), bytes.get(..take)) else {
            return 0;
        };
        if take == 0 {
            return 0;
        }
        let header = BitmapRecordHeader {
            kind: RECORD_BITMAP,
            reserved: 0,
            len: U16::new(len),
            byte_offset: U64::new(byte_offset),
        };
        if self.append(header.as_bytes(), body) {
            take
        } else {
            0
        }
    }

    /// Appends as many whole entries of `entries` (little-endian u32s for table indices
    /// from `first_entry`) as fit; returns how many entries were taken.
    pub fn push_table(&mut self, first_entry: u32, entries: &[u8]) -> usize {
        let room = self.free().saturating_sub(size_of::<TableRecordHeader>()) / 4;
        let take = (entries.len() / 4).min(room);
        let body = take.checked_mul(4).and_then(|len| entries.get(..len));
        let (Ok(count), Some(body)) = (u16::try_from(take), body) else {
            return 0;
        };
        if take == 0 {
            return 0;
        }
        let header = TableRecordHeader {
            kind: RECORD_TABLE,
            reserved: 0,
            count: U16::new(count),
            first_entry: U32::new(first_entry),
        };
        if self.append(header.as_bytes(), body) {
            take
        } else {
            0
        }
    }

    /// Seals the sector for position `sequence` of epoch `epoch`.
    pub fn finish(self, epoch: u64, sequence: u64) {
        let header = SectorHeader {
            magic: U32::new(JOURNAL_MAGIC),
            crc: U32::new(0),
            epoch: U64::new(epoch),
            sequence: U64::new(sequence),
            // At most RECORD_AREA (480) bytes are ever used.
            used: U16::new(u16::try_from(self.used).unwrap_or(u16::MAX)),
            records: U16::new(self.records),
            reserved: U32::new(0),
        };
        if let Some(head) = self.sector.get_mut(..size_of::<SectorHeader>()) {
            head.copy_from_slice(header.as_bytes());
        }
        let crc = CRC32C.checksum(self.sector.get(8..).unwrap_or_default());
        if let Some(field) = self.sector.get_mut(4..8) {
            field.copy_from_slice(&crc.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(records: impl FnOnce(&mut SectorBuilder)) -> [u8; 512] {
        let mut sector = [0u8; 512];
        let mut b = SectorBuilder::new(&mut sector).unwrap();
        records(&mut b);
        b.finish(7, 3);
        sector
    }

    #[test]
    fn records_round_trip() {
        let sector = build(|b| {
            assert_eq!(b.push_bitmap(40, &[0xff, 0x01]), 2);
            assert_eq!(b.push_table(9, &[1, 0, 0, 0, 2, 0, 0, 0]), 2);
        });
        let v = VerifiedSector::verify(&sector, 7, 3).unwrap();
        let got: std::vec::Vec<_> = v.records().collect();
        assert_eq!(
            got,
            [
                Record::Bitmap {
                    byte_offset: 40,
                    bytes: &[0xff, 0x01]
                },
                Record::Table {
                    first_entry: 9,
                    entries: &[1, 0, 0, 0, 2, 0, 0, 0]
                },
            ]
        );
    }

    #[test]
    fn a_full_sector_holds_the_advertised_entries() {
        let entries = [0xAAu8; 4 * 200];
        let sector = build(|b| assert_eq!(b.push_table(0, &entries), TABLE_ENTRIES_PER_SECTOR));
        assert!(VerifiedSector::verify(&sector, 7, 3).is_ok());
        let bytes = [1u8; 600];
        let sector = build(|b| assert_eq!(b.push_bitmap(0, &bytes), BITMAP_BYTES_PER_SECTOR));
        assert!(VerifiedSector::verify(&sector, 7, 3).is_ok());
    }

    #[test]
    fn an_epoch_never_moves_past_the_largest_valid_one() {
        assert_eq!(next_epoch(5, 0), Some(6));
        assert_eq!(next_epoch(5, 9), Some(10));
        // Every sector epoch a header can reach is honoured; one no header can reach is
        // ignored.
        assert_eq!(next_epoch(5, (1 << 62) + 1), Some((1 << 62) + 2));
        assert_eq!(
            next_epoch(5, MAX_JOURNAL_EPOCH - 1),
            Some(MAX_JOURNAL_EPOCH)
        );
        assert_eq!(next_epoch(5, MAX_JOURNAL_EPOCH), None);
        assert_eq!(next_epoch(5, MAX_JOURNAL_EPOCH + 1), Some(6));
        assert_eq!(
            next_epoch(MAX_JOURNAL_EPOCH - 1, 0),
            Some(MAX_JOURNAL_EPOCH)
        );
        assert_eq!(next_epoch(MAX_JOURNAL_EPOCH, 0), None);
        assert_eq!(next_epoch(u64::MAX, 0), None);
        // A session needs room for two moves: open and close.
        assert!(room_for_session(MAX_WRITABLE_EPOCH, 0));
        assert!(!room_for_session(MAX_WRITABLE_EPOCH + 1, 0));
        assert!(room_for_session(5, MAX_WRITABLE_EPOCH));
        assert!(!room_for_session(5, MAX_WRITABLE_EPOCH + 1));
        assert!(room_for_session(5, u64::MAX));
        // An unreachable sector epoch does not hide a reachable one seen before or after.
        let seen = [9, u64::MAX, 12, MAX_JOURNAL_EPOCH + 1]
            .into_iter()
            .fold(0, fold_seen);
        assert_eq!(seen, 12);
        assert_eq!(next_epoch(5, seen), Some(13));
    }

    #[test]
    fn torn_stale_and_misplaced_sectors_are_refused() {
        let sector = build(|b| {
            b.push_bitmap(0, &[1]);
        });
        assert_eq!(
            VerifiedSector::verify(&sector, 8, 3).err(),
            Some(SectorError::StaleEpoch { found: 7 })
        );
        assert_eq!(
            VerifiedSector::verify(&sector, 7, 4).err(),
            Some(SectorError::Misplaced { sequence: 3 })
        );
        let mut torn = sector;
        torn[300] ^= 1;
        assert_eq!(
            VerifiedSector::verify(&torn, 7, 3).err(),
            Some(SectorError::BadChecksum)
        );
        assert_eq!(
            VerifiedSector::verify(&[0u8; 512], 7, 3).err(),
            Some(SectorError::NoMagic)
        );
    }
}
