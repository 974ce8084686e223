//! A new FVD image: a pure function from create options to a complete header (every
//! region placed, every default filled in, following the 2011 defaults unless told
//! otherwise), and the initial bytes of the file at any offset. `fvd-img create` and the
//! firmware write what this returns; nothing here touches a file. (The lints of the
//! parent module apply: every number may come from a command line.)

use crate::fvd::header::{set_name_field, RawHeader, DEFAULT_HEADER_SIZE, FVD_MAGIC, FVD_VERSION};
use crate::fvd::validate::{
    bitmap_bytes_needed, journal_bytes_needed, table_bytes_needed, BASE_FORMATS, DATA_FILE_FORMATS,
    MAX_BLOCK_SIZE, MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_STORAGE_GROW_UNIT, MAX_VIRTUAL_SIZE,
};
use crate::units::{checked_round_up, is_aligned, PAGE_SIZE, SECTOR_SIZE};
use core::fmt;
use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::IntoBytes;

/// Default chunk size of compact images.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;
/// Default storage growth step of compact images (100 MiB).
pub const DEFAULT_STORAGE_GROW_UNIT: u64 = 100 << 20;
/// Default journal size (raised to what a whole-table commit needs).
pub const DEFAULT_JOURNAL_SIZE: u64 = 16 << 20;
/// The default block size keeps the bitmap at or below this many bytes.
pub const MODERATE_BITMAP_SIZE: u64 = 4 << 20;
/// Largest journal `create` makes (4 GiB).
pub const MAX_JOURNAL_SIZE: u64 = 4 << 30;
/// Default cap on copy-on-read bytes in flight.
pub const DEFAULT_MAX_OUTSTANDING_COPY_ON_READ: u64 = 2_000_000;
/// Guest data in the image file starts at a multiple of this (a 64 KiB page-cache folio).
pub const DATA_ALIGNMENT: u64 = 64 << 10;

/// The base image an image is created over.
#[derive(Clone, Copy, Debug)]
pub struct BaseSpec<'a> {
    /// Name stored in the header (as given: relative names resolve against the image's dir).
    pub name: &'a [u8],
    /// Format name stored in the header (`raw`, `fvd`, `qed`, or empty).
    pub format: &'a [u8],
    /// The base's virtual size in bytes.
    pub size: u64,
}

/// Everything `create` can be told. `Default` gives the 2011 defaults for a plain image.
#[derive(Clone, Copy, Debug)]
pub struct CreateOptions<'a> {
    /// Guest-visible size in bytes (rounded up to 512).
    pub virtual_size: u64,
    /// Base image, if any.
    pub base: Option<BaseSpec<'a>>,
    /// Map chunks through a table and allocate storage on demand.
    pub compact_image: bool,
    /// Bytes per bitmap bit; `None` chooses one that keeps the bitmap moderate.
    pub block_size: Option<u64>,
    /// Bytes per table entry (rounded up to 4096); `None` = 1 MiB.
    pub chunk_size: Option<u64>,
    /// Growth step of a compact image's storage; `None` = 100 MiB.
    pub storage_grow_unit: Option<u64>,
    /// Journal bytes: `None` = 16 MiB; `Some(0)` = no journal. Raised to the minimum a
    /// whole-table commit needs.
    pub journal_size: Option<u64>,
    /// Default copy-on-read setting.
    pub copy_on_read: bool,
    /// Seconds before whole-image prefetch starts; <= 0 disables it.
    pub prefetch_start_delay: i64,
    /// Separate data file name.
    pub data_file: Option<&'a [u8]>,
    /// Separate data file format (`raw` or empty).
    pub data_file_fmt: &'a [u8],
    /// Never-written storage must read as zeros.
    pub need_zero_init: bool,
}

impl Default for CreateOptions<'_> {
    fn default() -> Self {
        CreateOptions {
            virtual_size: 0,
            base: None,
            compact_image: false,
            block_size: None,
            chunk_size: None,
            storage_grow_unit: None,
            journal_size: None,
            copy_on_read: false,
            prefetch_start_delay: -1,
            data_file: None,
            data_file_fmt: b"",
            need_zero_init: false,
        }
    }
}

/// Why a set of create options cannot make an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum GeometryError {
    /// The size exceeds the supported maximum.
    SizeTooLarge {
        /// Requested size.
        size: u64,
        /// Largest accepted.
        max: u64,
    },
    /// `block_size` is zero, not a multiple of 512 or too large.
    BadBlockSize {
        /// Requested value.
        size: u64,
    },
    /// `chunk_size` is zero, too large, or not a multiple of `block_size`.
    BadChunkSize {
        /// Requested value (after rounding up to 4096).
        size: u64,
        /// The block size.
        block_size: u64,
    },
    /// The image would need more chunks than a table addresses.
    TooManyChunks {
        /// Chunks needed.
        chunks: u64,
    },
    /// `storage_grow_unit` is smaller than a chunk or larger than [`MAX_STORAGE_GROW_UNIT`].
    BadStorageGrowUnit {
        /// Requested value.
        unit: u64,
        /// The chunk size.
        chunk_size: u64,
    },
    /// A name does not fit its header field (or contains NUL).
    NameTooLong {
        /// The option.
        field: &'static str,
    },
    /// A format name this implementation cannot use there.
    UnsupportedFormat {
        /// The option.
        field: &'static str,
    },
    /// `journal_size` is larger than [`MAX_JOURNAL_SIZE`].
    JournalTooLarge {
        /// Requested value.
        size: u64,
    },
    /// Prefetch or copy-on-read needs a base image.
    NeedsBase {
        /// The option.
        option: &'static str,
    },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GeometryError::SizeTooLarge { size, max } => {
                write!(f, "image size {size} exceeds the supported maximum {max}")
            }
            GeometryError::BadBlockSize { size } => write!(
                f,
                "invalid block_size {size}: must be a non-zero multiple of 512 of at most {MAX_BLOCK_SIZE}"
            ),
            GeometryError::BadChunkSize { size, block_size } => write!(
                f,
                "invalid chunk_size {size}: must be at most {MAX_CHUNK_SIZE} and a multiple of block_size {block_size}"
            ),
            GeometryError::TooManyChunks { chunks } => {
                write!(f, "image needs {chunks} chunks, more than {MAX_CHUNKS}: use a larger chunk_size")
            }
            GeometryError::BadStorageGrowUnit { unit, chunk_size } => {
                write!(
                    f,
                    "invalid storage_grow_unit {unit}: must be at least chunk_size {chunk_size} and at most {MAX_STORAGE_GROW_UNIT} (1 TiB)"
                )
            }
            GeometryError::NameTooLong { field } => {
                write!(f, "{field} is too long for the header or contains a NUL byte")
            }
            GeometryError::NeedsBase { option } => write!(f, "{option} needs a base image (-b)"),
            GeometryError::UnsupportedFormat { field } => {
                write!(f, "unsupported {field}: bases may be raw, fvd or qed, data files raw")
            }
            GeometryError::JournalTooLarge { size } => {
                write!(f, "journal_size {size} exceeds the maximum {MAX_JOURNAL_SIZE}")
            }
        }
    }
}

impl core::error::Error for GeometryError {}

/// [`DEFAULT_HEADER_SIZE`] as the header's u32 field.
#[allow(clippy::cast_possible_truncation)] // 8192: checked at compile time below.
const HEADER_SIZE_FIELD: u32 = DEFAULT_HEADER_SIZE as u32;
const _: () = assert!(HEADER_SIZE_FIELD as u64 == DEFAULT_HEADER_SIZE);

/// The block size the 2011 code picks: the smallest power of two from 512 up that keeps
/// the bitmap for `base_size` bytes at or below [`MODERATE_BITMAP_SIZE`].
///
/// Kept on purpose (issue #18 asked whether copy-on-read needs larger blocks): small blocks
/// spare a guest write the copy-on-write base reads of a partial block, and copy-on-read
/// does not depend on the block size, since one fill copies every whole block a guest read
/// covers with a single base read (BENCHMARKS.md section 6 measures 512-byte and 64 KiB
/// blocks alike).
pub fn default_block_size(base_size: u64) -> u64 {
    let mut block = SECTOR_SIZE;
    while block < MAX_BLOCK_SIZE && base_size.div_ceil(block).div_ceil(8) > MODERATE_BITMAP_SIZE {
        block = block.saturating_mul(2);
    }
    block
}

fn round(value: u64, unit: u64) -> Result<u64, GeometryError> {
    checked_round_up(value, unit).ok_or(GeometryError::SizeTooLarge {
        size: value,
        max: MAX_VIRTUAL_SIZE,
    })
}

/// Computes the complete header for `options`. The result always passes
/// [`fn@crate::fvd::validate`] for a file at least `data_offset` (or metadata) long.
pub fn plan(options: &CreateOptions<'_>) -> Result<RawHeader, GeometryError> {
    let virtual_size = round(options.virtual_size, SECTOR_SIZE)?;
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(GeometryError::SizeTooLarge {
            size: virtual_size,
            max: MAX_VIRTUAL_SIZE,
        });
    }
    if options.base.is_none() {
        if options.copy_on_read {
            return Err(GeometryError::NeedsBase {
                option: "copy_on_read",
            });
        }
        if options.prefetch_start_delay > 0 {
            return Err(GeometryError::NeedsBase {
                option: "prefetch_start_delay",
            });
        }
    }
    let base_size = match options.base {
        Some(base) => round(base.size.min(virtual_size), SECTOR_SIZE)?,
        None => 0,
    };
    let block_size = match options.block_size {
        Some(size) => size,
        None => default_block_size(base_size),
    };
    if block_size == 0 || !is_aligned(block_size, SECTOR_SIZE) || block_size > MAX_BLOCK_SIZE {
        return Err(GeometryError::BadBlockSize { size: block_size });
    }

    let mut h = RawHeader::zeroed();
    h.magic = U32::new(FVD_MAGIC);
    h.header_size = U32::new(HEADER_SIZE_FIELD);
    h.create_version = U32::new(FVD_VERSION);
    h.last_open_version = U32::new(FVD_VERSION);
    h.virtual_disk_size = U64::new(virtual_size);
    h.block_size = U64::new(block_size);
    h.clean_shutdown = U32::new(1);
    h.need_zero_init = U32::new(options.need_zero_init as u32);
    h.copy_on_read = U32::new(options.copy_on_read as u32);
    h.max_outstanding_copy_on_read_data = U64::new(DEFAULT_MAX_OUTSTANDING_COPY_ON_READ);
    h.prefetch_start_delay = I64::new(options.prefetch_start_delay.max(-1));
    h.num_prefetch_slots = U32::new(2);
    h.bytes_per_prefetch = U64::new(round(1 << 20, block_size)?);
    h.prefetch_read_throughput_measure_time = U64::new(100);
    h.prefetch_write_throughput_measure_time = U64::new(100);
    h.prefetch_min_read_throughput = U64::new(5120);
    h.prefetch_min_write_throughput = U64::new(5120);
    h.prefetch_max_read_throughput = U64::new(1_000_000_000);
    h.prefetch_max_write_throughput = U64::new(1_000_000_000);
    h.prefetch_throttle_time = U64::new(30_000);

    let mut cursor = DEFAULT_HEADER_SIZE;
    if let Some(base) = options.base {
        if !set_name_field(&mut h.base_img, base.name) || base.name.is_empty() {
            return Err(GeometryError::NameTooLong {
                field: "backing file",
            });
        }
        if !BASE_FORMATS.contains(&base.format) {
            return Err(GeometryError::UnsupportedFormat {
                field: "backing format",
            });
        }
        set_name_field(&mut h.base_img_fmt, base.format);
        let bitmap = bitmap_bytes_needed(base_size, block_size)
            .ok_or(GeometryError::SizeTooLarge {
                size: base_size,
                max: MAX_VIRTUAL_SIZE,
            })?
            .max(PAGE_SIZE);
        h.base_img_size = U64::new(base_size);
        h.bitmap_offset = U64::new(cursor);
        h.bitmap_size = U64::new(bitmap);
        cursor = cursor
            .checked_add(bitmap)
            .ok_or(GeometryError::SizeTooLarge {
                size: virtual_size,
                max: MAX_VIRTUAL_SIZE,
            })?;
    }

    let mut chunks = 0;
    if options.compact_image {
        let chunk_size = round(options.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE), PAGE_SIZE)?;
        let needs_block_multiple = options.base.is_some();
        if chunk_size == 0
            || chunk_size > MAX_CHUNK_SIZE
            || (needs_block_multiple && !is_aligned(chunk_size, block_size))
        {
            return Err(GeometryError::BadChunkSize {
                size: chunk_size,
                block_size,
            });
        }
        chunks = virtual_size.div_ceil(chunk_size);
        if chunks > MAX_CHUNKS {
            return Err(GeometryError::TooManyChunks { chunks });
        }
        let grow = round(
            options
                .storage_grow_unit
                .unwrap_or(DEFAULT_STORAGE_GROW_UNIT),
            SECTOR_SIZE,
        )?;
        if grow < chunk_size || grow > MAX_STORAGE_GROW_UNIT {
            return Err(GeometryError::BadStorageGrowUnit {
                unit: grow,
                chunk_size,
            });
        }
        let table = table_bytes_needed(virtual_size, chunk_size)
            .ok_or(GeometryError::TooManyChunks { chunks })?
            .max(PAGE_SIZE);
        h.table_offset = U64::new(cursor);
        h.table_size = U64::new(table);
        h.chunk_size = U64::new(chunk_size);
        h.storage_grow_unit = U64::new(grow);
        cursor = cursor
            .checked_add(table)
            .ok_or(GeometryError::SizeTooLarge {
                size: virtual_size,
                max: MAX_VIRTUAL_SIZE,
            })?;
    }

    let has_metadata = options.base.is_some() || options.compact_image;
    let journal = match options.journal_size {
        Some(0) => 0,
        _ if !has_metadata => 0,
        requested => {
            let requested = requested.unwrap_or(DEFAULT_JOURNAL_SIZE);
            if requested > MAX_JOURNAL_SIZE {
                return Err(GeometryError::JournalTooLarge { size: requested });
            }
            let wanted = round(requested, PAGE_SIZE)?;
            let needed =
                journal_bytes_needed(chunks).ok_or(GeometryError::TooManyChunks { chunks })?;
            wanted.max(needed)
        }
    };
    if journal > 0 {
        h.journal_offset = U64::new(cursor);
        h.journal_size = U64::new(journal);
        cursor = cursor
            .checked_add(journal)
            .ok_or(GeometryError::SizeTooLarge {
                size: virtual_size,
                max: MAX_VIRTUAL_SIZE,
            })?;
    }

    match options.data_file {
        Some(name) => {
            if name.is_empty() || !set_name_field(&mut h.data_file, name) {
                return Err(GeometryError::NameTooLong { field: "data_file" });
            }
            if !DATA_FILE_FORMATS.contains(&options.data_file_fmt) {
                return Err(GeometryError::UnsupportedFormat {
                    field: "data_file_fmt",
                });
            }
            set_name_field(&mut h.data_file_fmt, options.data_file_fmt);
            h.data_offset = U64::new(0);
        }
        // Guest data starts on a 64 KiB boundary: reads and writes of aligned guest
        // ranges then fall on whole large page-cache folios of the host (measured: 64 KiB
        // reads 0.84-0.91x raw at 8 KiB alignment, 0.95x at 64 KiB; BENCHMARKS.md).
        None => h.data_offset = U64::new(round(cursor, DATA_ALIGNMENT)?),
    }
    Ok(h)
}

/// Bytes `create` writes to the image file: the header and every metadata region
/// (bitmap zeroed, table filled with EMPTY, journal zeroed). Saturates on absurd headers.
pub fn metadata_len(header: &RawHeader) -> u64 {
    [
        u64::from(header.header_size.get()),
        header
            .bitmap_offset
            .get()
            .saturating_add(header.bitmap_size.get()),
        header
            .table_offset
            .get()
            .saturating_add(header.table_size.get()),
        header
            .journal_offset
            .get()
            .saturating_add(header.journal_size.get()),
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// The bytes of a new image's metadata (`[0, metadata_len(header))`: the header padded
/// with zeros, the bitmap zeroed, the table filled with EMPTY entries, the journal zeroed)
/// that fall in `[offset, offset + out.len())`, written into `out`; bytes past the
/// metadata are zeros. A host writes the metadata in pieces of any size (a firmware
/// sector by sector onto a raw medium), so creating an FVD image needs no buffer as
/// large as the metadata. Every host creates FVD images from these bytes.
pub fn initial_bytes_at(header: &RawHeader, offset: u64, out: &mut [u8]) {
    out.fill(0);
    let out_end = offset.saturating_add(out.len() as u64);
    // The part of `[start, end)` (file offsets) that `out` holds, as indices into `out`.
    let window = |start: u64, end: u64| -> Option<(usize, usize)> {
        let from = start.max(offset).checked_sub(offset)?;
        let to = end.min(out_end).checked_sub(offset)?;
        (from < to).then(|| Some((usize::try_from(from).ok()?, usize::try_from(to).ok()?)))?
    };
    let header_bytes = header.as_bytes();
    if let Some((from, to)) = window(0, header_bytes.len() as u64) {
        let source = usize::try_from(offset).ok().and_then(|first| {
            header_bytes.get(first.saturating_add(from)..first.saturating_add(to))
        });
        if let (Some(target), Some(source)) = (out.get_mut(from..to), source) {
            target.copy_from_slice(source);
        }
    }
    let table_end = header
        .table_offset
        .get()
        .saturating_add(header.table_size.get());
    if let Some((from, to)) = window(header.table_offset.get(), table_end) {
        if let Some(target) = out.get_mut(from..to) {
            target.fill(0xFF);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test images are a few KiB
mod tests {
    use super::*;
    use crate::fvd::validate;

    #[test]
    fn initial_bytes_are_the_same_whatever_the_piece_size() {
        let h = plan(&CreateOptions {
            virtual_size: 64 << 20,
            compact_image: true,
            chunk_size: Some(64 << 10),
            base: Some(BaseSpec {
                name: b"b.raw",
                format: b"raw",
                size: 32 << 20,
            }),
            ..Default::default()
        })
        .unwrap();
        let len = metadata_len(&h) as usize;
        let mut whole = std::vec![0u8; len + 100];
        initial_bytes_at(&h, 0, &mut whole);
        assert_eq!(&whole[..7440], h.as_bytes());
        let table = h.table_offset.get() as usize;
        let table_len = h.table_size.get() as usize;
        assert!(whole[table..table + table_len].iter().all(|&b| b == 0xFF));
        assert!(whole[..table].iter().skip(7440).all(|&b| b == 0));
        assert!(whole[table + table_len..].iter().all(|&b| b == 0));
        for piece in [1usize, 512, 4096, 7000] {
            let mut at = 0;
            while at < whole.len() {
                let n = piece.min(whole.len() - at);
                let mut out = std::vec![0xAAu8; n];
                initial_bytes_at(&h, at as u64, &mut out);
                assert_eq!(out, whole[at..at + n], "piece {piece} at {at}");
                at += n;
            }
        }
    }

    #[test]
    fn default_block_size_follows_the_2011_rule() {
        assert_eq!(default_block_size(10 << 30), 512);
        assert_eq!(default_block_size(100 << 30), 4096);
        assert_eq!(default_block_size(1 << 40), 32 << 10);
        assert_eq!(default_block_size(4 << 40), 128 << 10);
    }

    #[test]
    fn a_plain_image_has_no_metadata_regions() {
        let h = plan(&CreateOptions {
            virtual_size: 1000,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(h.virtual_disk_size.get(), 1024);
        assert_eq!(h.journal_size.get(), 0);
        assert_eq!(
            h.data_offset.get(),
            DATA_ALIGNMENT,
            "data starts on a 64 KiB boundary"
        );
        let layout = validate(&h, metadata_len(&h)).unwrap();
        assert!(layout.base.is_none() && layout.table.is_none() && layout.journal.is_none());
    }

    #[test]
    fn the_journal_is_raised_to_hold_a_whole_table() {
        let h = plan(&CreateOptions {
            virtual_size: 1 << 40,
            compact_image: true,
            chunk_size: Some(64 << 10),
            journal_size: Some(4096),
            ..Default::default()
        })
        .unwrap();
        let chunks = (1u64 << 40) / (64 << 10);
        assert!(h.journal_size.get() >= chunks.div_ceil(118) * 512);
        validate(&h, metadata_len(&h)).unwrap();
    }

    #[test]
    fn copy_on_read_without_base_is_refused() {
        let err = plan(&CreateOptions {
            virtual_size: 1 << 20,
            copy_on_read: true,
            ..Default::default()
        });
        assert_eq!(
            err.err(),
            Some(GeometryError::NeedsBase {
                option: "copy_on_read"
            })
        );
    }
}
