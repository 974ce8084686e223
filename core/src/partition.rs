//! The partition table inside a virtual disk: an MBR's four primary entries (an extended
//! entry is marked, its logical partitions are not walked) or a GPT (protective MBR, the
//! header at LBA 1 with its CRC-32, the backup header at the last LBA when the primary is
//! damaged, and the entry array with its CRC-32). Sans-IO: [`Scan`] says which sectors of
//! the virtual disk to read and decodes them; the host reads them through its engine and
//! keeps the entry array's bytes to list the partitions ([`GptHeader::entries`]).
//! Logical sectors are 512 bytes (what every virtual disk here presents).

// Every byte here comes from a guest's disk: arithmetic is checked, casts are fallible and
// slices are taken with `get`.
#![cfg_attr(
    not(test),
    deny(
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation,
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use core::fmt;
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes per logical sector.
pub const SECTOR: u64 = 512;
/// Largest GPT entry array read (count × entry size), so a hostile header cannot make a
/// host read or hold more.
pub const MAX_ARRAY_BYTES: u64 = 1 << 20;
/// Largest GPT entry size accepted (the specification allows 128 × 2^n).
pub const MAX_ENTRY_SIZE: u32 = 4096;
/// The GPT header's `signature`.
pub const GPT_SIGNATURE: [u8; 8] = *b"EFI PART";
/// MBR type of a GPT's protective entry.
pub const PROTECTIVE_TYPE: u8 = 0xee;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const MBR_TABLE: usize = 446;
const MBR_DISK_ID: usize = 440;

/// One MBR partition entry as stored.
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MbrEntryRaw {
    /// 0x80 when bootable.
    pub status: u8,
    /// CHS address of the first sector (ignored: LBA is used).
    pub chs_first: [u8; 3],
    /// Partition type.
    pub kind: u8,
    /// CHS address of the last sector (ignored).
    pub chs_last: [u8; 3],
    /// First sector.
    pub first_lba: U32,
    /// Sectors.
    pub sectors: U32,
}
const_assert_eq!(size_of::<MbrEntryRaw>(), 16);
const_assert_eq!(offset_of!(MbrEntryRaw, first_lba), 8);

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

/// One used primary MBR entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MbrPartition {
    /// 1 to 4.
    pub index: u8,
    /// The partition type byte.
    pub kind: u8,
    /// The boot flag (0x80) is set.
    pub bootable: bool,
    /// First sector.
    pub first_lba: u32,
    /// Sectors.
    pub sectors: u32,
}

impl MbrPartition {
    /// An extended partition (its logical partitions live inside it).
    pub fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }

    /// The last sector (inclusive); never overflows, both fields are 32-bit.
    pub fn last_lba(&self) -> u64 {
        u64::from(self.first_lba)
            .saturating_add(u64::from(self.sectors))
            .saturating_sub(1)
    }

    /// The partition's type in words, when the byte is a common one.
    pub fn type_name(&self) -> Option<&'static str> {
        mbr_type_name(self.kind)
    }
}

/// The MBR: its disk identifier and its used primary entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mbr {
    /// The 32-bit disk identifier at byte 440.
    pub disk_id: u32,
    /// Entries 1 to 4; `None` where the type is 0 or the size is 0.
    pub entries: [Option<MbrPartition>; 4],
}

impl Mbr {
    /// Decodes sector 0; `None` without the 0x55 0xAA boot signature (no MBR).
    pub fn parse(sector: &[u8]) -> Option<Mbr> {
        if sector.get(510..512)? != [0x55, 0xaa] {
            return None;
        }
        let id = sector.get(MBR_DISK_ID..MBR_DISK_ID.checked_add(4)?)?;
        let disk_id = u32::from_le_bytes(id.try_into().ok()?);
        let mut entries = [None; 4];
        for (i, slot) in entries.iter_mut().enumerate() {
            let at = MBR_TABLE.checked_add(i.checked_mul(16)?)?;
            let raw = MbrEntryRaw::read_from_bytes(sector.get(at..at.checked_add(16)?)?).ok()?;
            if raw.kind != 0 && raw.sectors.get() != 0 {
                *slot = Some(MbrPartition {
                    index: u8::try_from(i.checked_add(1)?).ok()?,
                    kind: raw.kind,
                    bootable: raw.status & 0x80 != 0,
                    first_lba: raw.first_lba.get(),
                    sectors: raw.sectors.get(),
                });
            }
        }
        Some(Mbr { disk_id, entries })
    }

    /// The used entries in order.
    pub fn partitions(&self) -> impl Iterator<Item = &MbrPartition> {
        self.entries.iter().flatten()
    }

    /// A GPT's protective MBR: an entry of type 0xEE.
    pub fn is_protective(&self) -> bool {
        self.partitions().any(|p| p.kind == PROTECTIVE_TYPE)
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

/// A read of the virtual disk the scan needs: whole sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadAt {
    /// First byte.
    pub offset: u64,
    /// Bytes (a multiple of [`SECTOR`], at most [`MAX_ARRAY_BYTES`]).
    pub len: usize,
}

/// What the disk's partition table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// No MBR boot signature: no partition table.
    None,
    /// An MBR (not a protective one).
    Mbr(Mbr),
    /// A GPT; its entries are in the bytes of the last read
    /// ([`GptHeader::entries`]), whose CRC has been checked.
    Gpt {
        /// The protective MBR.
        mbr: Mbr,
        /// The header used.
        header: GptHeader,
        /// The primary header was damaged and the backup at the last LBA was used.
        from_backup: bool,
    },
}

/// What the scan wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Read these bytes of the virtual disk and [`Scan::feed`] them.
    Read(ReadAt),
    /// The table is known.
    Done(Table),
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    Mbr,
    Primary(Mbr),
    Backup(Mbr, PartitionError),
    Array(Mbr, GptHeader, bool),
    Done,
}

/// Finds and decodes the partition table of a virtual disk of a given size, one read at a
/// time: start with [`Scan::first_read`], feed each read's bytes to [`Scan::feed`].
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    disk_sectors: u64,
    stage: Stage,
}

impl Scan {
    /// A scan of a virtual disk of `disk_size` bytes.
    pub fn new(disk_size: u64) -> Scan {
        Scan {
            disk_sectors: disk_size / SECTOR,
            stage: Stage::Mbr,
        }
    }

    /// The first read (sector 0), or `None` when the disk is smaller than one sector.
    pub fn first_read(&self) -> Option<ReadAt> {
        (self.disk_sectors > 0).then_some(ReadAt {
            offset: 0,
            len: 512,
        })
    }

    /// Takes the bytes of the read asked for last and says what comes next.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Feed, PartitionError> {
        let sector = |n: u64| ReadAt {
            offset: n.saturating_mul(SECTOR),
            len: 512,
        };
        let last = self.disk_sectors.saturating_sub(1);
        let (stage, feed) = match self.stage {
            Stage::Mbr => match Mbr::parse(bytes) {
                None => (Stage::Done, Ok(Feed::Done(Table::None))),
                Some(mbr) if mbr.is_protective() && self.disk_sectors > 2 => {
                    (Stage::Primary(mbr), Ok(Feed::Read(sector(1))))
                }
                Some(mbr) => (Stage::Done, Ok(Feed::Done(Table::Mbr(mbr)))),
            },
            Stage::Primary(mbr) => match GptHeader::parse(bytes, 1, self.disk_sectors) {
                Ok(h) => (Stage::Array(mbr, h, false), Ok(Feed::Read(h.array_read()))),
                Err(e) => (Stage::Backup(mbr, e), Ok(Feed::Read(sector(last)))),
            },
            Stage::Backup(mbr, primary) => match GptHeader::parse(bytes, last, self.disk_sectors) {
                Ok(h) => (Stage::Array(mbr, h, true), Ok(Feed::Read(h.array_read()))),
                Err(_) => (Stage::Done, Err(primary)),
            },
            Stage::Array(mbr, header, from_backup) => (
                Stage::Done,
                header.entries(bytes).map(|_| {
                    Feed::Done(Table::Gpt {
                        mbr,
                        header,
                        from_backup,
                    })
                }),
            ),
            Stage::Done => (Stage::Done, Ok(Feed::Done(Table::None))),
        };
        self.stage = stage;
        feed
    }
}

/// Common MBR type bytes in words (as `sfdisk` names them).
pub fn mbr_type_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x05 => "Extended",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0f => "W95 Ext'd (LBA)",
        0x82 => "Linux swap / Solaris",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xee => "GPT",
        0xef => "EFI (FAT-12/16/32)",
        0xfd => "Linux raid autodetect",
        _ => return None,
    })
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
const fn le_guid(a: u32, b: u16, c: u16, d: u16, e: u64) -> [u8; 16] {
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

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;
