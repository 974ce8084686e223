//! Why a partition table could not be read: one variant per rule, with the numbers that
//! explain it.

use super::gpt::MAX_ENTRY_SIZE;
use super::{MAX_ARRAY_BYTES, SECTOR};
use core::fmt;

/// Why a partition table could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PartitionError {
    /// The host handed back fewer bytes than the read asked for.
    ShortRead {
        /// Bytes asked for.
        wanted: u64,
        /// Bytes given.
        got: u64,
    },
    /// The protective MBR promises a GPT, but the sector has no `EFI PART` signature.
    NoGptSignature {
        /// The LBA read.
        lba: u64,
    },
    /// `header_size` is below 92 or above one sector.
    BadHeaderSize {
        /// The value found.
        size: u32,
    },
    /// The header's CRC-32 does not match its bytes.
    HeaderCrc {
        /// The LBA of the header.
        lba: u64,
        /// The CRC stored.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// `my_lba` is not the sector the header was read from.
    WrongHeaderLba {
        /// The value found.
        found: u64,
        /// The sector read.
        expected: u64,
    },
    /// The usable range is empty or reaches past the disk.
    BadUsableRange {
        /// First usable LBA.
        first: u64,
        /// Last usable LBA.
        last: u64,
        /// Sectors on the disk.
        disk_sectors: u64,
    },
    /// The entry size is not 128 × 2^n up to [`MAX_ENTRY_SIZE`].
    BadEntrySize {
        /// The value found.
        size: u32,
    },
    /// The entry array is larger than [`MAX_ARRAY_BYTES`].
    ArrayTooLarge {
        /// Entries.
        count: u32,
        /// Bytes per entry.
        size: u32,
    },
    /// The entry array lies outside the disk, over a header or over the usable range.
    ArrayMisplaced {
        /// Its first LBA.
        lba: u64,
        /// Its sectors.
        sectors: u64,
    },
    /// The entry array's CRC-32 does not match its bytes.
    ArrayCrc {
        /// The CRC stored.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// A used entry's range is reversed or outside the usable range.
    EntryOutOfRange {
        /// Its 1-based number.
        index: u32,
        /// Its first LBA.
        first: u64,
        /// Its last LBA.
        last: u64,
    },
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ShortRead { wanted, got } => {
                write!(f, "partition table read returned {got} of {wanted} bytes")
            }
            Self::NoGptSignature { lba } => write!(
                f,
                "the MBR is a GPT's protective MBR, but LBA {lba} holds no GPT header"
            ),
            Self::BadHeaderSize { size } => write!(
                f,
                "GPT header size {size} is not between 92 and {SECTOR} bytes"
            ),
            Self::HeaderCrc {
                lba,
                stored,
                computed,
            } => write!(
                f,
                "GPT header at LBA {lba} has CRC-32 {stored:#010x} but its bytes give {computed:#010x}"
            ),
            Self::WrongHeaderLba { found, expected } => write!(
                f,
                "GPT header read from LBA {expected} says it is at LBA {found}"
            ),
            Self::BadUsableRange {
                first,
                last,
                disk_sectors,
            } => write!(
                f,
                "GPT usable sectors {first}..={last} do not fit a disk of {disk_sectors} sectors"
            ),
            Self::BadEntrySize { size } => write!(
                f,
                "GPT entry size {size} is not 128 × 2^n bytes up to {MAX_ENTRY_SIZE}"
            ),
            Self::ArrayTooLarge { count, size } => write!(
                f,
                "GPT entry array of {count} entries of {size} bytes exceeds {MAX_ARRAY_BYTES} bytes"
            ),
            Self::ArrayMisplaced { lba, sectors } => write!(
                f,
                "GPT entry array at LBA {lba} ({sectors} sectors) lies outside the disk or over a header or the partitions' area"
            ),
            Self::ArrayCrc { stored, computed } => write!(
                f,
                "GPT entry array has CRC-32 {stored:#010x} but its bytes give {computed:#010x}"
            ),
            Self::EntryOutOfRange { index, first, last } => write!(
                f,
                "GPT partition {index} spans LBA {first}..={last}, outside the usable sectors"
            ),
        }
    }
}
