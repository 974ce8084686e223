//! Why a header was refused: one variant per validation rule, carrying the numbers that
//! explain it, with a message written for the person who runs the tool.

use core::fmt;

/// A metadata region of an FVD image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RegionKind {
    /// The header area `[0, header_size)`.
    Header,
    /// The base-image bitmap.
    Bitmap,
    /// The metadata journal.
    Journal,
    /// The chunk table of a compact image.
    Table,
}

impl RegionKind {
    /// The region's name as the docs and messages spell it.
    pub const fn name(self) -> &'static str {
        match self {
            RegionKind::Header => "header",
            RegionKind::Bitmap => "bitmap",
            RegionKind::Journal => "journal",
            RegionKind::Table => "table",
        }
    }
}

/// A header field that must hold a boolean (u32 0 or 1).
pub type FieldName = &'static str;

/// Every reason a header can be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than one header.
    TooShort {
        /// Bytes available.
        len: u64,
        /// Bytes a header needs.
        needed: u64,
    },
    /// The magic is not `FVD\0`.
    BadMagic {
        /// The magic found, as a little-endian u32.
        found: u32,
    },
    /// A version field is zero.
    BadVersion {
        /// `create_version` or `last_open_version`.
        field: FieldName,
        /// The value found.
        value: u32,
    },
    /// `header_size` is not a multiple of 4096 of at least the header's length.
    BadHeaderSize {
        /// The value found.
        size: u32,
    },
    /// A boolean field holds something other than 0 or 1.
    NotBoolean {
        /// The field.
        field: FieldName,
        /// The value found.
        value: u32,
    },
    /// A name field has no terminating NUL.
    UnterminatedName {
        /// The field.
        field: FieldName,
    },
    /// A format-name field names a format this version cannot use there.
    UnsupportedFormatName {
        /// The field.
        field: FieldName,
    },
    /// An incompatible-feature bit this version does not know is set.
    UnknownIncompatibleFeature {
        /// Bit number: byte index * 8 + bit within the byte.
        bit: u32,
    },
    /// `virtual_disk_size` is not a multiple of 512.
    VirtualSizeUnaligned {
        /// The value found.
        size: u64,
    },
    /// `virtual_disk_size` exceeds what this implementation addresses.
    VirtualSizeTooLarge {
        /// The value found.
        size: u64,
        /// The largest accepted.
        max: u64,
    },
    /// `block_size` is zero, not a multiple of 512, or too large.
    BadBlockSize {
        /// The value found.
        size: u64,
    },
    /// `base_img_size` is set without a base image.
    BaseSizeWithoutBase {
        /// The value found.
        size: u64,
    },
    /// `base_img_size` is unaligned or larger than the virtual disk.
    BadBaseSize {
        /// The value found.
        size: u64,
        /// The virtual disk size.
        virtual_size: u64,
    },
    /// `chunk_size` is zero, not a multiple of 4096 (and of `block_size` with a base), or too large.
    BadChunkSize {
        /// The value found.
        size: u64,
        /// The image's block size.
        block_size: u64,
    },
    /// The virtual disk needs more chunks than a table entry can address.
    TooManyChunks {
        /// Chunks needed.
        chunks: u64,
        /// The largest accepted.
        max: u64,
    },
    /// `storage_grow_unit` is smaller than a chunk or not a multiple of 512.
    BadStorageGrowUnit {
        /// The value found.
        unit: u64,
        /// The chunk size.
        chunk_size: u64,
    },
    /// A region's offset or size is not a multiple of 4096.
    RegionUnaligned {
        /// The region.
        region: RegionKind,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// A region has an offset but no size, or a size but no offset, or exists where the
    /// image's kind has none (a bitmap without a base image).
    RegionMisplaced {
        /// The region.
        region: RegionKind,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// A region is smaller than what it must hold.
    RegionTooSmall {
        /// The region.
        region: RegionKind,
        /// Its size.
        size: u64,
        /// The size it needs.
        needed: u64,
    },
    /// `offset + size` of a region overflows.
    RegionOverflow {
        /// The region.
        region: RegionKind,
    },
    /// Two regions share bytes.
    RegionOverlap {
        /// One region.
        a: RegionKind,
        /// The other.
        b: RegionKind,
    },
    /// A region ends past the end of the file.
    RegionBeyondFile {
        /// The region.
        region: RegionKind,
        /// Where it ends.
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// `data_offset` is unaligned, or inside the metadata when data shares the file.
    BadDataOffset {
        /// The value found.
        offset: u64,
        /// The first byte after the metadata (0 with a separate data file).
        metadata_end: u64,
    },
    /// Guest data could reach past the largest addressable storage length: `data_offset`
    /// plus the virtual size (plain images) or plus every physical chunk and one growth
    /// step (compact images) exceeds 2^63 - 1.
    DataBeyondAddressable {
        /// The value found.
        offset: u64,
        /// The largest storage length allowed.
        max: u64,
    },
    /// `stable_journal_epoch` is above 2^63, leaving no room to move it on.
    BadJournalEpoch {
        /// The value found.
        epoch: u64,
    },
    /// A prefetch or copy-on-read tuning field is out of range.
    BadTuning {
        /// The field.
        field: FieldName,
        /// The value found.
        value: u64,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HeaderError::*;
        match *self {
            TooShort { len, needed } => write!(
                f,
                "file too short for an FVD header: {len} bytes, need at least {needed}"
            ),
            BadMagic { found } => write!(
                f,
                "not an FVD image: magic is {found:#010x}, expected {:#010x} (\"FVD\\0\")",
                super::header::FVD_MAGIC
            ),
            BadVersion { field, value } => write!(f, "invalid {field} {value}: must be at least 1"),
            BadHeaderSize { size } => write!(
                f,
                "invalid header_size {size}: must be a multiple of 4096 and at least {}",
                super::header::RAW_HEADER_LEN
            ),
            NotBoolean { field, value } => write!(f, "invalid {field} {value}: must be 0 or 1"),
            UnterminatedName { field } => write!(f, "header field {field} is not NUL-terminated"),
            UnsupportedFormatName { field } => {
                write!(f, "header field {field} names a format this version cannot use")
            }
            UnknownIncompatibleFeature { bit } => write!(
                f,
                "image uses incompatible feature bit {bit}, which this version does not support"
            ),
            VirtualSizeUnaligned { size } => {
                write!(f, "virtual disk size {size} is not a multiple of 512")
            }
            VirtualSizeTooLarge { size, max } => {
                write!(f, "virtual disk size {size} exceeds the supported maximum {max}")
            }
            BadBlockSize { size } => write!(
                f,
                "invalid block_size {size}: must be a non-zero multiple of 512 of at most {}",
                super::validate::MAX_BLOCK_SIZE
            ),
            BaseSizeWithoutBase { size } => {
                write!(f, "base_img_size is {size} but the image names no base image")
            }
            BadBaseSize { size, virtual_size } => write!(
                f,
                "invalid base_img_size {size}: must be a multiple of 512 no larger than the virtual size {virtual_size}"
            ),
            BadChunkSize { size, block_size } => write!(
                f,
                "invalid chunk_size {size}: must be a non-zero multiple of 4096 and of block_size {block_size}, at most {}",
                super::validate::MAX_CHUNK_SIZE
            ),
            TooManyChunks { chunks, max } => write!(
                f,
                "virtual disk needs {chunks} chunks, more than the {max} a table can address"
            ),
            BadStorageGrowUnit { unit, chunk_size } => write!(
                f,
                "invalid storage_grow_unit {unit}: must be a multiple of 512, at least chunk_size {chunk_size} and at most 1 TiB"
            ),
            RegionUnaligned { region, offset, size } => write!(
                f,
                "{} region (offset {offset}, size {size}) is not aligned to 4096 bytes",
                region.name()
            ),
            RegionMisplaced { region, offset, size } => write!(
                f,
                "{} region (offset {offset}, size {size}) does not fit this kind of image",
                region.name()
            ),
            RegionTooSmall { region, size, needed } => write!(
                f,
                "{} region is {size} bytes but must be at least {needed}",
                region.name()
            ),
            RegionOverflow { region } => {
                write!(f, "{} region offset plus size overflows", region.name())
            }
            RegionOverlap { a, b } => {
                write!(f, "{} and {} regions overlap", a.name(), b.name())
            }
            RegionBeyondFile { region, end, file_len } => write!(
                f,
                "{} region ends at byte {end}, past the end of the {file_len}-byte file",
                region.name()
            ),
            BadDataOffset { offset, metadata_end } => write!(
                f,
                "invalid data_offset {offset}: must be 4096-aligned and not below the metadata end {metadata_end}"
            ),
            DataBeyondAddressable { offset, max } => write!(
                f,
                "invalid data_offset {offset}: guest data could reach past {max} bytes, the largest storage length"
            ),
            BadJournalEpoch { epoch } => write!(
                f,
                "invalid stable_journal_epoch {epoch}: must be at most 2^63"
            ),
            BadTuning { field, value } => write!(f, "invalid {field} {value}: out of range"),
        }
    }
}

impl core::error::Error for HeaderError {}
