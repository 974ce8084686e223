//! The QED header exactly as it lies at the start of cluster 0: QEMU's `QEDHeader`, field
//! for field, little-endian. This module only describes bytes; [`super::validate()`] decides
//! whether a header is acceptable.

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `magic`: the bytes `Q E D NUL`, read as a little-endian u32.
pub const QED_MAGIC: u32 = u32::from_le_bytes(*b"QED\0");

/// Bits of the `features` field (incompatible features: an unknown bit refuses the image).
pub mod features {
    /// The image has a backing file, named by `backing_filename_offset/size`.
    pub const BACKING_FILE: u64 = 1 << 0;
    /// The image was not closed cleanly: its tables must be checked before use.
    pub const NEED_CHECK: u64 = 1 << 1;
    /// The backing file is raw: never probe its format.
    pub const BACKING_FORMAT_NO_PROBE: u64 = 1 << 2;
    /// Every incompatible feature bit this implementation understands.
    pub const KNOWN_INCOMPATIBLE: u64 = BACKING_FILE | NEED_CHECK | BACKING_FORMAT_NO_PROBE;
    /// Compatible feature: copy on read by default (the 2011 RFC's `QED_CF_COPY_ON_READ`;
    /// readers that do not know it simply do not copy).
    pub const COMPAT_COPY_ON_READ: u64 = 1 << 0;
    /// Every compatible feature bit this implementation understands (unknown ones are
    /// ignored).
    pub const KNOWN_COMPAT: u64 = COMPAT_COPY_ON_READ;
    /// Every auto-clear feature bit this implementation understands (none are defined; a
    /// writer clears the unknown ones).
    pub const KNOWN_AUTOCLEAR: u64 = 0;
}

/// Smallest `cluster_size` (4 KiB).
pub const MIN_CLUSTER_SIZE: u32 = 4 << 10;
/// Largest `cluster_size` (64 MiB).
pub const MAX_CLUSTER_SIZE: u32 = 64 << 20;
/// The `cluster_size` qemu-img and [`super::create`] use unless told otherwise (64 KiB).
pub const DEFAULT_CLUSTER_SIZE: u32 = 64 << 10;
/// Smallest `table_size`, in clusters.
pub const MIN_TABLE_SIZE: u32 = 1;
/// Largest `table_size`, in clusters.
pub const MAX_TABLE_SIZE: u32 = 16;
/// The `table_size` qemu-img and [`super::create`] use unless told otherwise.
pub const DEFAULT_TABLE_SIZE: u32 = 4;
/// Longest backing file name accepted, bytes (QEMU reads names into a PATH_MAX buffer
/// with room for a NUL, so it refuses anything longer).
pub const MAX_BACKING_NAME_LEN: u32 = 4095;

/// The on-disk QED header (64 bytes, at offset 0 of the file; the rest of the header area,
/// `header_size` clusters, holds the backing file name and zeros).
#[derive(Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct QedHeader {
    /// [`QED_MAGIC`].
    pub magic: U32,
    /// Bytes per cluster: a power of two, [`MIN_CLUSTER_SIZE`] ..= [`MAX_CLUSTER_SIZE`].
    pub cluster_size: U32,
    /// Clusters per L1 or L2 table: a power of two, [`MIN_TABLE_SIZE`] ..= [`MAX_TABLE_SIZE`].
    pub table_size: U32,
    /// Clusters in the header area (at least 1).
    pub header_size: U32,
    /// Incompatible feature bits ([`features`]).
    pub features: U64,
    /// Compatible feature bits: unknown ones are ignored.
    pub compat_features: U64,
    /// Auto-clear feature bits: a writer that does not know a bit clears it.
    pub autoclear_features: U64,
    /// Byte offset of the L1 table, cluster aligned.
    pub l1_table_offset: U64,
    /// Guest-visible size in bytes, a multiple of 512.
    pub image_size: U64,
    /// Byte offset of the backing file name from the start of the file (used only with
    /// [`features::BACKING_FILE`]).
    pub backing_filename_offset: U32,
    /// Length of the backing file name in bytes, no NUL (used only with
    /// [`features::BACKING_FILE`]).
    pub backing_filename_size: U32,
}

/// Size of [`QedHeader`] in bytes.
pub const QED_HEADER_LEN: usize = size_of::<QedHeader>();

const_assert_eq!(QED_HEADER_LEN, 64);
const_assert_eq!(offset_of!(QedHeader, magic), 0);
const_assert_eq!(offset_of!(QedHeader, cluster_size), 4);
const_assert_eq!(offset_of!(QedHeader, table_size), 8);
const_assert_eq!(offset_of!(QedHeader, header_size), 12);
const_assert_eq!(offset_of!(QedHeader, features), 16);
const_assert_eq!(offset_of!(QedHeader, compat_features), 24);
const_assert_eq!(offset_of!(QedHeader, autoclear_features), 32);
const_assert_eq!(offset_of!(QedHeader, l1_table_offset), 40);
const_assert_eq!(offset_of!(QedHeader, image_size), 48);
const_assert_eq!(offset_of!(QedHeader, backing_filename_offset), 56);
const_assert_eq!(offset_of!(QedHeader, backing_filename_size), 60);
// The whole header lies in the first sector, so rewriting it (the need-check bit, cleared
// auto-clear bits) is a single atomic sector write.
const_assert_eq!(QED_HEADER_LEN.saturating_sub(1) / 512, 0);

impl QedHeader {
    /// A header with every byte zero.
    pub fn zeroed() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }

    /// Views the first [`QED_HEADER_LEN`] bytes of `bytes` as a header, or `None` if
    /// `bytes` is shorter than that.
    pub fn view(bytes: &[u8]) -> Option<&Self> {
        Self::ref_from_prefix(bytes).ok().map(|(header, _)| header)
    }

    /// The header's bytes as they are stored on disk.
    pub fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    /// Clears every auto-clear feature bit this implementation does not know, as a writer
    /// must before it modifies the image. Returns true when a bit was cleared (the header
    /// then needs rewriting).
    pub fn clear_unknown_autoclear(&mut self) -> bool {
        let old = self.autoclear_features.get();
        let new = old & features::KNOWN_AUTOCLEAR;
        self.autoclear_features = U64::new(new);
        new != old
    }
}

/// True when `bytes` (the start of a file) looks like a QED image: at least a whole header
/// and the `QED\0` magic. Says nothing about whether the header is valid.
pub fn probe(bytes: &[u8]) -> bool {
    QedHeader::view(bytes).is_some_and(|h| h.magic.get() == QED_MAGIC)
}
