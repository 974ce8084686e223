//! The GPT: its header (validated, with its CRC-32), its entry array (CRC-32 checked) and
//! the entries it lists.

use super::{PartitionError, ReadAt, MAX_ARRAY_BYTES, SECTOR};
use core::fmt;
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Largest GPT entry size accepted (the specification allows 128 × 2^n).
pub const MAX_ENTRY_SIZE: u32 = 4096;
/// The GPT header's `signature`.
pub const GPT_SIGNATURE: [u8; 8] = *b"EFI PART";

pub(super) const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The GPT header as stored (the first 92 bytes of its sector).
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct GptHeaderRaw {
    /// `EFI PART`.
    pub signature: [u8; 8],
    /// 0x0001_0000 for version 1.0.
    pub revision: U32,
    /// Bytes the header CRC covers.
    pub header_size: U32,
    /// CRC-32 of the header with this field zero.
    pub header_crc32: U32,
    /// Zero.
    pub reserved: U32,
    /// The LBA of this header.
    pub my_lba: U64,
    /// The LBA of the other header.
    pub alternate_lba: U64,
    /// First LBA a partition may use.
    pub first_usable_lba: U64,
    /// Last LBA a partition may use.
    pub last_usable_lba: U64,
    /// The disk's GUID.
    pub disk_guid: [u8; 16],
    /// First LBA of the entry array.
    pub partition_entry_lba: U64,
    /// Entries in the array.
    pub num_partition_entries: U32,
    /// Bytes per entry.
    pub size_of_partition_entry: U32,
    /// CRC-32 of the entry array.
    pub partition_entry_array_crc32: U32,
}
const_assert_eq!(size_of::<GptHeaderRaw>(), 92);
const_assert_eq!(offset_of!(GptHeaderRaw, header_crc32), 16);
const_assert_eq!(offset_of!(GptHeaderRaw, disk_guid), 56);
const_assert_eq!(offset_of!(GptHeaderRaw, partition_entry_array_crc32), 88);

/// One GPT entry as stored (its first 128 bytes).
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct GptEntryRaw {
    /// Partition type GUID (all zero: unused entry).
    pub type_guid: [u8; 16],
    /// Unique partition GUID.
    pub unique_guid: [u8; 16],
    /// First LBA.
    pub first_lba: U64,
    /// Last LBA (inclusive).
    pub last_lba: U64,
    /// Attribute bits.
    pub attributes: U64,
    /// UTF-16LE name, NUL padded.
    pub name: [u8; 72],
}
const_assert_eq!(size_of::<GptEntryRaw>(), 128);
const_assert_eq!(offset_of!(GptEntryRaw, first_lba), 32);
const_assert_eq!(offset_of!(GptEntryRaw, name), 56);

/// A GUID as GPT stores it (the first three groups little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// True for the all-zero GUID (an unused entry's type).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    /// Upper-case `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, as `sfdisk` and `blkid` print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let order: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
        for (i, at) in order.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{:02X}", b.get(*at).copied().unwrap_or(0))?;
        }
        Ok(())
    }
}

/// A validated GPT header: where the entry array lies and how to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptHeader {
    /// The disk's GUID.
    pub disk_guid: Guid,
    /// The LBA this header was read from.
    pub my_lba: u64,
    /// First LBA a partition may use.
    pub first_usable_lba: u64,
    /// Last LBA a partition may use.
    pub last_usable_lba: u64,
    /// First LBA of the entry array.
    pub entry_lba: u64,
    /// Entries in the array.
    pub entry_count: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// CRC-32 of the entry array.
    pub array_crc32: u32,
}

impl GptHeader {
    /// Decodes and validates the header in `sector`, read from LBA `lba` of a disk of
    /// `disk_sectors` sectors.
    pub fn parse(sector: &[u8], lba: u64, disk_sectors: u64) -> Result<GptHeader, PartitionError> {
        let raw = GptHeaderRaw::ref_from_prefix(sector)
            .ok()
            .map(|(r, _)| r)
            .filter(|r| r.signature == GPT_SIGNATURE)
            .ok_or(PartitionError::NoGptSignature { lba })?;
        let size = raw.header_size.get();
        let covered = usize::try_from(size)
            .ok()
            .filter(|n| (92..=512).contains(n))
            .and_then(|n| sector.get(..n))
            .ok_or(PartitionError::BadHeaderSize { size })?;
        let mut digest = CRC32.digest();
        digest.update(covered.get(..16).unwrap_or_default());
        digest.update(&[0; 4]);
        digest.update(covered.get(20..).unwrap_or_default());
        let computed = digest.finalize();
        let stored = raw.header_crc32.get();
        if computed != stored {
            return Err(PartitionError::HeaderCrc {
                lba,
                stored,
                computed,
            });
        }
        if raw.my_lba.get() != lba {
            return Err(PartitionError::WrongHeaderLba {
                found: raw.my_lba.get(),
                expected: lba,
            });
        }
        let (first, last) = (raw.first_usable_lba.get(), raw.last_usable_lba.get());
        if first > last || last >= disk_sectors || first <= 1 {
            return Err(PartitionError::BadUsableRange {
                first,
                last,
                disk_sectors,
            });
        }
        let entry_size = raw.size_of_partition_entry.get();
        if !(128..=MAX_ENTRY_SIZE).contains(&entry_size) || !entry_size.is_power_of_two() {
            return Err(PartitionError::BadEntrySize { size: entry_size });
        }
        let entry_count = raw.num_partition_entries.get();
        let bytes = u64::from(entry_count).saturating_mul(u64::from(entry_size));
        if bytes > MAX_ARRAY_BYTES {
            return Err(PartitionError::ArrayTooLarge {
                count: entry_count,
                size: entry_size,
            });
        }
        let header = GptHeader {
            disk_guid: Guid(raw.disk_guid),
            my_lba: lba,
            first_usable_lba: first,
            last_usable_lba: last,
            entry_lba: raw.partition_entry_lba.get(),
            entry_count,
            entry_size,
            array_crc32: raw.partition_entry_array_crc32.get(),
        };
        let sectors = header.array_sectors();
        let end = header.entry_lba.checked_add(sectors);
        let overlaps = |a: u64, b: u64| header.entry_lba <= b && end.is_some_and(|e| a < e);
        let misplaced = header.entry_lba <= 1
            || end.is_none_or(|e| e > disk_sectors)
            || overlaps(lba, lba)
            || overlaps(first, last);
        if misplaced {
            return Err(PartitionError::ArrayMisplaced {
                lba: header.entry_lba,
                sectors,
            });
        }
        Ok(header)
    }

    /// Bytes of the entry array.
    pub fn array_bytes(&self) -> u64 {
        // At most MAX_ARRAY_BYTES once parsed.
        u64::from(self.entry_count).saturating_mul(u64::from(self.entry_size))
    }

    /// Sectors the entry array occupies.
    pub fn array_sectors(&self) -> u64 {
        self.array_bytes().div_ceil(SECTOR)
    }

    /// The read that fetches the entry array (whole sectors).
    pub fn array_read(&self) -> ReadAt {
        ReadAt {
            offset: self.entry_lba.saturating_mul(SECTOR),
            len: usize::try_from(self.array_sectors().saturating_mul(SECTOR)).unwrap_or(0),
        }
    }

    /// Checks the entry array's CRC-32 over `array` (the bytes of [`GptHeader::array_read`])
    /// and lists its used entries.
    pub fn entries<'a>(&self, array: &'a [u8]) -> Result<GptEntries<'a>, PartitionError> {
        let bytes = self.array_bytes();
        let covered = usize::try_from(bytes)
            .ok()
            .and_then(|n| array.get(..n))
            .ok_or(PartitionError::ShortRead {
                wanted: bytes,
                got: u64::try_from(array.len()).unwrap_or(u64::MAX),
            })?;
        let computed = CRC32.checksum(covered);
        if computed != self.array_crc32 {
            return Err(PartitionError::ArrayCrc {
                stored: self.array_crc32,
                computed,
            });
        }
        Ok(GptEntries {
            array: covered,
            size: usize::try_from(self.entry_size).unwrap_or(usize::MAX),
            next: 0,
            first_usable: self.first_usable_lba,
            last_usable: self.last_usable_lba,
        })
    }
}

/// One used GPT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptPartition {
    /// Its 1-based number in the array.
    pub index: u32,
    /// Type GUID.
    pub type_guid: Guid,
    /// Unique GUID.
    pub unique_guid: Guid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// UTF-16 code units of the name, NUL padded.
    pub name: [u16; 36],
}

impl GptPartition {
    /// Sectors it spans.
    pub fn sectors(&self) -> u64 {
        // first <= last is checked when the entry is listed.
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
    }

    /// The type in words, when the GUID is a common one.
    pub fn type_name(&self) -> Option<&'static str> {
        gpt_type_name(&self.type_guid)
    }

    /// The name, up to its first NUL (unpaired surrogates as U+FFFD).
    pub fn name(&self) -> GptName<'_> {
        GptName(&self.name)
    }
}

/// A GPT partition name, displayed as text.
pub struct GptName<'a>(&'a [u16; 36]);

impl fmt::Display for GptName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = self.0.iter().copied().take_while(|u| *u != 0);
        for c in char::decode_utf16(units) {
            fmt::Write::write_char(f, c.unwrap_or(char::REPLACEMENT_CHARACTER))?;
        }
        Ok(())
    }
}

/// The used entries of a GPT entry array whose CRC checked out; an entry whose range is
/// reversed or outside the usable sectors is an error item (the listing goes on).
pub struct GptEntries<'a> {
    array: &'a [u8],
    size: usize,
    next: usize,
    first_usable: u64,
    last_usable: u64,
}

impl Iterator for GptEntries<'_> {
    type Item = Result<GptPartition, PartitionError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let at = self.next.checked_mul(self.size)?;
            let bytes = self.array.get(at..at.checked_add(self.size)?)?;
            self.next = self.next.checked_add(1)?;
            let (raw, _) = GptEntryRaw::ref_from_prefix(bytes).ok()?;
            if raw.type_guid == [0; 16] {
                continue;
            }
            let index = u32::try_from(self.next).unwrap_or(u32::MAX);
            let (first, last) = (raw.first_lba.get(), raw.last_lba.get());
            if first > last || first < self.first_usable || last > self.last_usable {
                return Some(Err(PartitionError::EntryOutOfRange { index, first, last }));
            }
            let mut name = [0u16; 36];
            for (unit, pair) in name.iter_mut().zip(raw.name.chunks_exact(2)) {
                *unit = u16::from_le_bytes([
                    pair.first().copied().unwrap_or(0),
                    pair.get(1).copied().unwrap_or(0),
                ]);
            }
            return Some(Ok(GptPartition {
                index,
                type_guid: Guid(raw.type_guid),
                unique_guid: Guid(raw.unique_guid),
                first_lba: first,
                last_lba: last,
                attributes: raw.attributes.get(),
                name,
            }));
        }
    }
}

/// Common GPT type GUIDs in words (as `sfdisk` names them).
pub fn gpt_type_name(guid: &Guid) -> Option<&'static str> {
    const NAMES: &[([u8; 16], &str)] = &[
        (
            le_guid(0xC12A7328, 0xF81F, 0x11D2, 0xBA4B, 0x00A0C93EC93B),
            "EFI System",
        ),
        (
            le_guid(0x21686148, 0x6449, 0x6E6F, 0x744E, 0x656564454649),
            "BIOS boot",
        ),
        (
            le_guid(0x0FC63DAF, 0x8483, 0x4772, 0x8E79, 0x3D69D8477DE4),
            "Linux filesystem",
        ),
        (
            le_guid(0x0657FD6D, 0xA4AB, 0x43C4, 0x84E5, 0x0933C84B4F4F),
            "Linux swap",
        ),
        (
            le_guid(0xE6D6D379, 0xF507, 0x44C2, 0xA23C, 0x238F2A3DF928),
            "Linux LVM",
        ),
        (
            le_guid(0x4F68BCE3, 0xE8CD, 0x4DB1, 0x96E7, 0xFBCAF984B709),
            "Linux root (x86-64)",
        ),
        (
            le_guid(0x933AC7E1, 0x2EB4, 0x4F13, 0xB844, 0x0E14E2AEF915),
            "Linux home",
        ),
        (
            le_guid(0xEBD0A0A2, 0xB9E5, 0x4433, 0x87C0, 0x68B6B72699C7),
            "Microsoft basic data",
        ),
        (
            le_guid(0xE3C9E316, 0x0B5C, 0x4DB8, 0x817D, 0xF92DF00215AE),
            "Microsoft reserved",
        ),
    ];
    NAMES
        .iter()
        .find(|(bytes, _)| *bytes == guid.0)
        .map(|(_, name)| *name)
}

/// A GUID written as its text groups, in GPT's byte order.
#[allow(clippy::cast_possible_truncation)] // const bit slicing of literal groups
pub(super) const fn le_guid(a: u32, b: u16, c: u16, d: u16, e: u64) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    let d = d.to_be_bytes();
    let e = e.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], e[2], e[3], e[4], e[5], e[6],
        e[7],
    ]
}
