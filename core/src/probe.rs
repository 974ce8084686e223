//! What a file is, judged from its first bytes, the way `qemu-img` probes a format: an
//! FVD or a QED image by its magic; a file that looks like one of them but cannot be
//! opened as one (the January 2011 FVD magic, which FORMAT.md §5 refuses, or a damaged
//! magic in front of a header whose other fields are those of an FVD or QED header); or
//! raw data. Hosts refuse the look-alikes with [`Probe`]'s message instead of treating
//! them as raw disks, so a damaged image is never overwritten as raw data. No I/O.

use crate::fvd::header::RawHeader;
use crate::fvd::validate::{MAX_HEADER_SIZE, MAX_VIRTUAL_SIZE};
use crate::fvd::FVD_MAGIC;
use crate::qed::header::{
    features, QedHeader, MAX_CLUSTER_SIZE, MAX_TABLE_SIZE, MIN_CLUSTER_SIZE, MIN_TABLE_SIZE,
};
use crate::qed::QED_MAGIC;
use core::fmt;
use core::mem::offset_of;

/// Bytes [`probe`] looks at (fewer are fine: missing bytes count as zeros).
pub const PROBE_LEN: usize = 64;

/// The magic of the January 2011 FVD driver's header (bytes `A9 F5 43 51`).
pub const FVD_2011_MAGIC: u32 = 0x5143_F5A9;

/// What the first bytes of a file say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Probe {
    /// An FVD image (its magic).
    Fvd,
    /// A QED image (its magic).
    Qed,
    /// An FVD image of the January 2011 driver, whose format this implementation refuses.
    Fvd2011,
    /// An FVD header whose magic is damaged (it reads `magic`).
    DamagedFvd {
        /// The first four bytes, little-endian.
        magic: u32,
    },
    /// A QED header whose magic is damaged (it reads `magic`).
    DamagedQed {
        /// The first four bytes, little-endian.
        magic: u32,
    },
    /// None of the above: raw data.
    Raw,
}

impl Probe {
    /// True for a file that may be taken as a raw disk.
    pub const fn is_raw(self) -> bool {
        matches!(self, Probe::Raw)
    }

    /// True for a file that looks like an FVD or QED image but cannot be opened as one.
    pub const fn is_look_alike(self) -> bool {
        matches!(
            self,
            Probe::Fvd2011 | Probe::DamagedFvd { .. } | Probe::DamagedQed { .. }
        )
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Fvd => f.write_str("an FVD image"),
            Probe::Qed => f.write_str("a QED image"),
            Probe::Fvd2011 => write!(
                f,
                "an FVD image of the January 2011 format (magic {FVD_2011_MAGIC:#010x}), which \
                 this version refuses"
            ),
            Probe::DamagedFvd { magic } => write!(
                f,
                "an FVD image whose magic is damaged ({magic:#010x} instead of {FVD_MAGIC:#010x})"
            ),
            Probe::DamagedQed { magic } => write!(
                f,
                "a QED image whose magic is damaged ({magic:#010x} instead of {QED_MAGIC:#010x})"
            ),
            Probe::Raw => f.write_str("a raw disk image"),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        word.copy_from_slice(src);
    }
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        word.copy_from_slice(src);
    }
    u64::from_le_bytes(word)
}

/// The fields after an FVD magic hold values only an FVD header has: a header size in
/// its range, both version fields set and small, a sector-aligned non-zero size within
/// the limit, a page-aligned data offset.
fn fvd_fields(bytes: &[u8]) -> bool {
    let header_size = u64::from(u32_at(bytes, offset_of!(RawHeader, header_size)));
    let created = u32_at(bytes, offset_of!(RawHeader, create_version));
    let opened = u32_at(bytes, offset_of!(RawHeader, last_open_version));
    let size = u64_at(bytes, offset_of!(RawHeader, virtual_disk_size));
    let data_offset = u64_at(bytes, offset_of!(RawHeader, data_offset));
    header_size % 4096 == 0
        && (8192..=MAX_HEADER_SIZE).contains(&header_size)
        && (1..=255).contains(&created)
        && (1..=255).contains(&opened)
        && size != 0
        && size % 512 == 0
        && size <= MAX_VIRTUAL_SIZE
        && data_offset % 4096 == 0
}

/// The fields after a QED magic hold values only a QED header has: cluster and table
/// sizes powers of two in their ranges, a small header, known feature bits, a cluster-
/// aligned L1 table and a sector-aligned size.
fn qed_fields(bytes: &[u8]) -> bool {
    let cluster = u32_at(bytes, offset_of!(QedHeader, cluster_size));
    let table = u32_at(bytes, offset_of!(QedHeader, table_size));
    let header = u32_at(bytes, offset_of!(QedHeader, header_size));
    let feature_bits = u64_at(bytes, offset_of!(QedHeader, features));
    let l1 = u64_at(bytes, offset_of!(QedHeader, l1_table_offset));
    let size = u64_at(bytes, offset_of!(QedHeader, image_size));
    cluster.is_power_of_two()
        && (MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cluster)
        && table.is_power_of_two()
        && (MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&table)
        && (1..=MAX_TABLE_SIZE).contains(&header)
        && feature_bits & !features::KNOWN_INCOMPATIBLE == 0
        && l1 != 0
        && l1 % u64::from(cluster) == 0
        && size % 512 == 0
}

/// What the file starting with `bytes` (its first [`PROBE_LEN`] bytes, or all of a
/// shorter file) is.
pub fn probe(bytes: &[u8]) -> Probe {
    if bytes.len() < 4 {
        return Probe::Raw;
    }
    let magic = u32_at(bytes, 0);
    match magic {
        FVD_MAGIC => Probe::Fvd,
        QED_MAGIC => Probe::Qed,
        FVD_2011_MAGIC => Probe::Fvd2011,
        _ if fvd_fields(bytes) => Probe::DamagedFvd { magic },
        _ if qed_fields(bytes) => Probe::DamagedQed { magic },
        _ => Probe::Raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fvd::create::{plan, CreateOptions};
    use crate::qed::{plan as qed_plan, QedCreateOptions};
    use zerocopy::IntoBytes;

    fn fvd_header() -> [u8; PROBE_LEN] {
        let raw = plan(&CreateOptions {
            virtual_size: 1 << 30,
            ..Default::default()
        })
        .unwrap();
        raw.as_bytes()[..PROBE_LEN].try_into().unwrap()
    }

    #[test]
    fn magics_and_damaged_magics_are_told_apart() {
        let mut fvd = fvd_header();
        assert_eq!(probe(&fvd), Probe::Fvd);
        fvd[2] ^= 0x20;
        assert!(matches!(probe(&fvd), Probe::DamagedFvd { .. }));
        fvd[..4].copy_from_slice(&FVD_2011_MAGIC.to_le_bytes());
        assert_eq!(probe(&fvd), Probe::Fvd2011);
        assert_eq!(&fvd[..4], &[0xA9, 0xF5, 0x43, 0x51]);
        fvd[..4].fill(0);
        assert!(matches!(probe(&fvd), Probe::DamagedFvd { magic: 0 }));
    }

    #[test]
    fn a_damaged_qed_magic_is_still_a_qed_look_alike() {
        let plan = qed_plan(&QedCreateOptions {
            size: 1 << 30,
            ..Default::default()
        })
        .unwrap();
        let mut bytes = [0u8; PROBE_LEN];
        bytes.copy_from_slice(&plan.header.as_bytes()[..PROBE_LEN]);
        assert_eq!(probe(&bytes), Probe::Qed);
        bytes[0] = b'X';
        assert!(matches!(probe(&bytes), Probe::DamagedQed { .. }));
        assert!(probe(&bytes).is_look_alike());
    }

    #[test]
    fn ordinary_data_is_raw() {
        assert_eq!(probe(&[0u8; PROBE_LEN]), Probe::Raw);
        assert_eq!(probe(&[0xCD; PROBE_LEN]), Probe::Raw);
        assert_eq!(probe(b"FVD"), Probe::Raw);
        // A DOS boot sector.
        let mut mbr = [0u8; PROBE_LEN];
        mbr[..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        mbr[3..11].copy_from_slice(b"MSDOS5.0");
        assert_eq!(probe(&mbr), Probe::Raw);
        assert!(probe(&mbr).is_raw());
    }
}
