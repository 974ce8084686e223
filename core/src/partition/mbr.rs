//! The MBR in sector 0: its disk identifier and four primary entries.

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// MBR type of a GPT's protective entry.
pub const PROTECTIVE_TYPE: u8 = 0xee;
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
