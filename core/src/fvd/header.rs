//! The FVD header exactly as it lies on disk: the seed's packed, little-endian
//! `FvdHeader`, field for field and byte for byte. This module only describes bytes;
//! [`fn@super::validate`] decides whether a header is acceptable.

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `magic`: the bytes `F V D NUL`, read as a little-endian u32.
pub const FVD_MAGIC: u32 = u32::from_le_bytes(*b"FVD\0");

/// The format version this implementation writes into `create_version` and
/// `last_open_version`. Readers accept any non-zero version: compatibility is decided by
/// `incompatible_features`, not by the version number.
pub const FVD_VERSION: u32 = 1;

/// Bytes reserved for incompatible-feature bits at the end of the header.
pub const INCOMPATIBLE_FEATURES_SPACE: usize = 4096;

/// Length of the file-name fields (`data_file`, `base_img`, `add_storage_cmd`).
pub const NAME_FIELD_LEN: usize = 1024;

/// Length of the format-name fields (`data_file_fmt`, `base_img_fmt`).
pub const FORMAT_FIELD_LEN: usize = 16;

/// The on-disk FVD header (7440 bytes, stored padded with zeros to `header_size`).
///
/// Booleans are u32 0/1. Sizes and offsets are bytes. See docs/FORMAT.md for every field.
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeader {
    /// [`FVD_MAGIC`].
    pub magic: U32,
    /// Size of the header area in bytes, a multiple of 4096 and at least `size_of::<RawHeader>()`.
    pub header_size: U32,
    /// Version of the software that created the image.
    pub create_version: U32,
    /// Version of the software that opened the image for writing most recently.
    pub last_open_version: U32,
    /// Disk size seen by the guest, bytes, multiple of 512.
    pub virtual_disk_size: U64,
    /// Where guest data begins in the data storage (this file, or `data_file`).
    pub data_offset: U64,
    /// Separate data file name, NUL-terminated; empty = data lives in this file.
    pub data_file: [u8; NAME_FIELD_LEN],
    /// Format of the data file (`raw` or empty).
    pub data_file_fmt: [u8; FORMAT_FIELD_LEN],
    /// Base (backing) image name, NUL-terminated; empty = no base.
    pub base_img: [u8; NAME_FIELD_LEN],
    /// Format of the base image (`raw`, `fvd`, `qed` or empty = probe).
    pub base_img_fmt: [u8; FORMAT_FIELD_LEN],
    /// Bytes of the guest disk that the base covers, multiple of 512.
    pub base_img_size: U64,
    /// Start of the bitmap region.
    pub bitmap_offset: U64,
    /// Length of the bitmap region, multiple of 4096.
    pub bitmap_size: U64,
    /// Guest bytes covered by one bitmap bit.
    pub block_size: U64,
    /// Start of the journal region.
    pub journal_offset: U64,
    /// Length of the journal region, multiple of 4096; 0 = no journal.
    pub journal_size: U64,
    /// 1 when the image was closed cleanly, 0 while open for writing.
    pub clean_shutdown: U32,
    /// Journal sectors whose epoch differs from this value are never replayed.
    pub stable_journal_epoch: U64,
    /// Hint: bytes of journal the engine may buffer in memory (0 = engine default).
    pub journal_buf_size: U64,
    /// Hint: longest time, ms, metadata may stay buffered before a commit (0 = until flush).
    pub journal_clean_buf_period: U64,
    /// Start of the chunk table region (compact images).
    pub table_offset: U64,
    /// Length of the chunk table region, multiple of 4096; 0 = not a compact image.
    pub table_size: U64,
    /// Guest bytes mapped by one table entry.
    pub chunk_size: U64,
    /// Bytes the data storage grows by when a compact image runs out of room.
    pub storage_grow_unit: U64,
    /// Command a host may run to grow a block device; never run by the engine.
    pub add_storage_cmd: [u8; NAME_FIELD_LEN],
    /// 1 once a leaked physical chunk has been reused (storage no longer reads as zero).
    pub chunks_relocated: U32,
    /// Default for copy-on-read (a runtime option overrides it).
    pub copy_on_read: U32,
    /// Cap on copy-on-read bytes in flight.
    pub max_outstanding_copy_on_read_data: U64,
    /// Seconds after open before whole-image prefetch starts; <= 0 disables it.
    pub prefetch_start_delay: I64,
    /// 1 once every base block has been copied into the image.
    pub base_img_fully_prefetched: U32,
    /// Prefetch units in flight at once.
    pub num_prefetch_slots: U32,
    /// Bytes copied per prefetch unit, multiple of 512.
    pub bytes_per_prefetch: U64,
    /// Window, ms, over which prefetch read throughput is measured.
    pub prefetch_read_throughput_measure_time: U64,
    /// Window, ms, over which prefetch write throughput is measured.
    pub prefetch_write_throughput_measure_time: U64,
    /// KB/s below which prefetch reads back off.
    pub prefetch_min_read_throughput: U64,
    /// KB/s below which prefetch writes back off.
    pub prefetch_min_write_throughput: U64,
    /// KB/s prefetch reads never exceed.
    pub prefetch_max_read_throughput: U64,
    /// KB/s prefetch writes never exceed.
    pub prefetch_max_write_throughput: U64,
    /// Upper bound, ms, of the randomised back-off pause.
    pub prefetch_throttle_time: U64,
    /// 1 when never-written data storage must read as zeros.
    pub need_zero_init: U32,
    /// Incompatible-feature bits; any set bit this version does not know refuses the image.
    pub incompatible_features: [u8; INCOMPATIBLE_FEATURES_SPACE],
}

/// Size of [`RawHeader`] in bytes.
pub const RAW_HEADER_LEN: usize = size_of::<RawHeader>();

/// The header area every image created by this version reserves (`header_size`).
pub const DEFAULT_HEADER_SIZE: u64 = 8192;

const_assert_eq!(RAW_HEADER_LEN, 7440);
const_assert_eq!(offset_of!(RawHeader, magic), 0);
const_assert_eq!(offset_of!(RawHeader, header_size), 4);
const_assert_eq!(offset_of!(RawHeader, create_version), 8);
const_assert_eq!(offset_of!(RawHeader, last_open_version), 12);
const_assert_eq!(offset_of!(RawHeader, virtual_disk_size), 16);
const_assert_eq!(offset_of!(RawHeader, data_offset), 24);
const_assert_eq!(offset_of!(RawHeader, data_file), 32);
const_assert_eq!(offset_of!(RawHeader, data_file_fmt), 1056);
const_assert_eq!(offset_of!(RawHeader, base_img), 1072);
const_assert_eq!(offset_of!(RawHeader, base_img_fmt), 2096);
const_assert_eq!(offset_of!(RawHeader, base_img_size), 2112);
const_assert_eq!(offset_of!(RawHeader, bitmap_offset), 2120);
const_assert_eq!(offset_of!(RawHeader, bitmap_size), 2128);
const_assert_eq!(offset_of!(RawHeader, block_size), 2136);
const_assert_eq!(offset_of!(RawHeader, journal_offset), 2144);
const_assert_eq!(offset_of!(RawHeader, journal_size), 2152);
const_assert_eq!(offset_of!(RawHeader, clean_shutdown), 2160);
const_assert_eq!(offset_of!(RawHeader, stable_journal_epoch), 2164);
const_assert_eq!(offset_of!(RawHeader, journal_buf_size), 2172);
const_assert_eq!(offset_of!(RawHeader, journal_clean_buf_period), 2180);
const_assert_eq!(offset_of!(RawHeader, table_offset), 2188);
const_assert_eq!(offset_of!(RawHeader, table_size), 2196);
const_assert_eq!(offset_of!(RawHeader, chunk_size), 2204);
const_assert_eq!(offset_of!(RawHeader, storage_grow_unit), 2212);
const_assert_eq!(offset_of!(RawHeader, add_storage_cmd), 2220);
const_assert_eq!(offset_of!(RawHeader, chunks_relocated), 3244);
const_assert_eq!(offset_of!(RawHeader, copy_on_read), 3248);
const_assert_eq!(
    offset_of!(RawHeader, max_outstanding_copy_on_read_data),
    3252
);
const_assert_eq!(offset_of!(RawHeader, prefetch_start_delay), 3260);
const_assert_eq!(offset_of!(RawHeader, base_img_fully_prefetched), 3268);
const_assert_eq!(offset_of!(RawHeader, num_prefetch_slots), 3272);
const_assert_eq!(offset_of!(RawHeader, bytes_per_prefetch), 3276);
const_assert_eq!(
    offset_of!(RawHeader, prefetch_read_throughput_measure_time),
    3284
);
const_assert_eq!(
    offset_of!(RawHeader, prefetch_write_throughput_measure_time),
    3292
);
const_assert_eq!(offset_of!(RawHeader, prefetch_min_read_throughput), 3300);
const_assert_eq!(offset_of!(RawHeader, prefetch_min_write_throughput), 3308);
const_assert_eq!(offset_of!(RawHeader, prefetch_max_read_throughput), 3316);
const_assert_eq!(offset_of!(RawHeader, prefetch_max_write_throughput), 3324);
const_assert_eq!(offset_of!(RawHeader, prefetch_throttle_time), 3332);
const_assert_eq!(offset_of!(RawHeader, need_zero_init), 3340);
const_assert_eq!(offset_of!(RawHeader, incompatible_features), 3344);

/// The 512-byte header sectors the engine rewrites while an image is in use. Each field it
/// updates lies inside one of them, so each update is a single atomic sector write.
pub mod mutable_sectors {
    use super::*;
    /// Sector holding `last_open_version`.
    pub const VERSION: usize = offset_of!(RawHeader, last_open_version) / 512;
    /// Sector holding `clean_shutdown` and `stable_journal_epoch` (updated together).
    pub const SHUTDOWN_AND_EPOCH: usize = offset_of!(RawHeader, clean_shutdown) / 512;
    /// Sector holding `chunks_relocated` and `base_img_fully_prefetched`.
    pub const RELOCATION_AND_PREFETCH: usize = offset_of!(RawHeader, chunks_relocated) / 512;
}
const_assert_eq!(
    mutable_sectors::SHUTDOWN_AND_EPOCH,
    offset_of!(RawHeader, stable_journal_epoch).saturating_add(7) / 512
);
const_assert_eq!(
    mutable_sectors::RELOCATION_AND_PREFETCH,
    offset_of!(RawHeader, base_img_fully_prefetched).saturating_add(3) / 512
);

impl RawHeader {
    /// A header with every byte zero, the starting point for [`crate::fvd::create`].
    pub fn zeroed() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }

    /// Views the first [`RAW_HEADER_LEN`] bytes of `bytes` as a header, or `None` if
    /// `bytes` is shorter than that.
    pub fn view(bytes: &[u8]) -> Option<&Self> {
        Self::ref_from_prefix(bytes).ok().map(|(header, _)| header)
    }

    /// Views the first [`RAW_HEADER_LEN`] bytes of `bytes` as a header to change in place
    /// (for tools that rewrite fields), or `None` if `bytes` is shorter than that.
    pub fn view_mut(bytes: &mut [u8]) -> Option<&mut Self> {
        Self::mut_from_prefix(bytes).ok().map(|(header, _)| header)
    }

    /// The header's bytes as they are stored on disk.
    pub fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Reads a NUL-terminated name field. Returns `None` when the field has no NUL (invalid).
pub fn name_field(field: &[u8]) -> Option<&[u8]> {
    field
        .iter()
        .position(|&b| b == 0)
        .and_then(|end| field.get(..end))
}

/// Stores `value` into a name field, NUL-padded. Returns `false` (and leaves the field
/// untouched) when `value` does not fit with its terminator or contains a NUL.
pub fn set_name_field(field: &mut [u8], value: &[u8]) -> bool {
    if value.len() >= field.len() || value.contains(&0) {
        return false;
    }
    field.fill(0);
    match field.get_mut(..value.len()) {
        Some(head) => {
            head.copy_from_slice(value);
            true
        }
        None => false,
    }
}
