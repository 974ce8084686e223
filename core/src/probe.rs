//! What a file is, judged from its first sector, the way `qemu-img` probes a format: an
//! FVD or a QED image by its magic; a file that looks like one of them but cannot be
//! opened as one (the January 2011 FVD magic, which FORMAT.md §5 refuses, or a damaged
//! magic in front of a header whose other fields are those of an FVD or QED header); an
//! image of another format QEMU knows (qcow2, vmdk, vdi, ...), which this project does not
//! read; or raw data. Hosts refuse everything but FVD, QED and raw with [`Probe`]'s
//! message instead of treating it as a raw disk, so neither a damaged image nor another
//! format's container is ever read or overwritten as guest data. No I/O.

use crate::fvd::header::RawHeader;
use crate::fvd::validate::{MAX_HEADER_SIZE, MAX_VIRTUAL_SIZE};
use crate::fvd::FVD_MAGIC;
use crate::qed::header::{
    features, QedHeader, MAX_CLUSTER_SIZE, MAX_TABLE_SIZE, MIN_CLUSTER_SIZE, MIN_TABLE_SIZE,
};
use crate::qed::QED_MAGIC;
use core::fmt;
use core::mem::offset_of;

/// Bytes [`probe`] looks at: the first sector, as QEMU probes (fewer are fine: missing
/// bytes count as zeros).
pub const PROBE_LEN: usize = 512;

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
    /// An image of a format QEMU reads and this project does not.
    Foreign(ForeignFormat),
    /// None of the above: raw data.
    Raw,
}

/// Image formats recognised by their signature so that they are refused by name rather
/// than read as raw data. Names are qemu-img's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ForeignFormat {
    /// QEMU's original copy-on-write format (`QFI\xfb`, version 1).
    Qcow,
    /// QEMU copy-on-write version 2 or 3 (`QFI\xfb`).
    Qcow2,
    /// VMware: a sparse extent (`KDMV`), a hosted sparse extent (`COWD`) or a descriptor
    /// file (`# Disk DescriptorFile`).
    Vmdk,
    /// VirtualBox (signature `0xbeda107f` at byte 64).
    Vdi,
    /// Virtual PC / Hyper-V dynamic VHD (`conectix`); qemu-img calls it `vpc`.
    Vpc,
    /// Hyper-V VHDX (`vhdxfile`).
    Vhdx,
    /// A LUKS encrypted volume (`LUKS\xba\xbe`).
    Luks,
    /// Parallels (`WithoutFreeSpace` or `WithouFreSpacExt`).
    Parallels,
    /// Bochs growing image (`Bochs Virtual HD Image`).
    Bochs,
}

impl ForeignFormat {
    /// The name qemu-img gives the format (`-f`/`-O`).
    pub const fn name(self) -> &'static str {
        match self {
            ForeignFormat::Qcow => "qcow",
            ForeignFormat::Qcow2 => "qcow2",
            ForeignFormat::Vmdk => "vmdk",
            ForeignFormat::Vdi => "vdi",
            ForeignFormat::Vpc => "vpc",
            ForeignFormat::Vhdx => "vhdx",
            ForeignFormat::Luks => "luks",
            ForeignFormat::Parallels => "parallels",
            ForeignFormat::Bochs => "bochs",
        }
    }

    /// The format whose signature `bytes` (a file's first sector) carries, if any.
    fn recognise(bytes: &[u8]) -> Option<Self> {
        let starts = |prefix: &[u8]| bytes.starts_with(prefix);
        if starts(b"QFI\xfb") {
            return Some(if u32_at(bytes, 4) == 1u32.to_be() {
                ForeignFormat::Qcow
            } else {
                ForeignFormat::Qcow2
            });
        }
        const SIGNATURES: [(&[u8], ForeignFormat); 9] = [
            (b"KDMV", ForeignFormat::Vmdk),
            (b"COWD", ForeignFormat::Vmdk),
            (b"# Disk DescriptorFile", ForeignFormat::Vmdk),
            (b"conectix", ForeignFormat::Vpc),
            (b"vhdxfile", ForeignFormat::Vhdx),
            (b"LUKS\xba\xbe", ForeignFormat::Luks),
            (b"WithoutFreeSpace", ForeignFormat::Parallels),
            (b"WithouFreSpacExt", ForeignFormat::Parallels),
            (b"Bochs Virtual HD Image", ForeignFormat::Bochs),
        ];
        if let Some((_, format)) = SIGNATURES.iter().find(|(magic, _)| starts(magic)) {
            return Some(*format);
        }
        (u32_at(bytes, VDI_SIGNATURE_AT) == VDI_SIGNATURE).then_some(ForeignFormat::Vdi)
    }
}

/// Where a VDI header keeps its signature, and the signature.
const VDI_SIGNATURE_AT: usize = 64;
const VDI_SIGNATURE: u32 = 0xbeda_107f;

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
            Probe::Foreign(format) => write!(
                f,
                "a {} image, a format this tool does not read (convert it first, e.g. \
                 `qemu-img convert -O qed` or `-O raw`)",
                format.name()
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
        FVD_MAGIC => return Probe::Fvd,
        QED_MAGIC => return Probe::Qed,
        FVD_2011_MAGIC => return Probe::Fvd2011,
        _ => {}
    }
    if let Some(format) = ForeignFormat::recognise(bytes) {
        Probe::Foreign(format)
    } else if fvd_fields(bytes) {
        Probe::DamagedFvd { magic }
    } else if qed_fields(bytes) {
        Probe::DamagedQed { magic }
    } else {
        Probe::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fvd::create::{plan, CreateOptions};
    use crate::qed::{plan as qed_plan, QedCreateOptions};
    use std::string::ToString;
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
        let header = plan.header.as_bytes();
        bytes[..header.len()].copy_from_slice(header);
        assert_eq!(probe(&bytes), Probe::Qed);
        bytes[0] = b'X';
        assert!(matches!(probe(&bytes), Probe::DamagedQed { .. }));
        assert!(probe(&bytes).is_look_alike());
    }

    #[test]
    fn other_formats_are_named_not_taken_for_raw() {
        let cases: [(&[u8], usize, ForeignFormat); 11] = [
            (b"QFI\xfb\0\0\0\x01", 0, ForeignFormat::Qcow),
            (b"QFI\xfb\0\0\0\x02", 0, ForeignFormat::Qcow2),
            (b"QFI\xfb\0\0\0\x03", 0, ForeignFormat::Qcow2),
            (b"KDMV", 0, ForeignFormat::Vmdk),
            (b"# Disk DescriptorFile\n", 0, ForeignFormat::Vmdk),
            (b"conectix", 0, ForeignFormat::Vpc),
            (b"vhdxfile", 0, ForeignFormat::Vhdx),
            (b"LUKS\xba\xbe\0\x01", 0, ForeignFormat::Luks),
            (b"WithoutFreeSpace", 0, ForeignFormat::Parallels),
            (b"Bochs Virtual HD Image", 0, ForeignFormat::Bochs),
            (
                &[0x7f, 0x10, 0xda, 0xbe],
                VDI_SIGNATURE_AT,
                ForeignFormat::Vdi,
            ),
        ];
        for (signature, at, format) in cases {
            let mut sector = [0u8; PROBE_LEN];
            sector[at..at + signature.len()].copy_from_slice(signature);
            assert_eq!(probe(&sector), Probe::Foreign(format), "{}", format.name());
            assert!(!probe(&sector).is_raw());
            assert!(probe(&sector).to_string().contains(format.name()));
        }
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
