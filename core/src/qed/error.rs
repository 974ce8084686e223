//! Why a QED header was refused: one variant per validation rule, carrying the numbers that
//! explain it, with a message written for the person who runs the tool.

use super::header::{
    MAX_CLUSTER_SIZE, MAX_TABLE_SIZE, MIN_CLUSTER_SIZE, QED_HEADER_LEN, QED_MAGIC,
};
use core::fmt;

/// Every reason a QED header can be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QedHeaderError {
    /// Fewer bytes than one header.
    TooShort {
        /// Bytes available.
        len: u64,
        /// Bytes a header needs.
        needed: u64,
    },
    /// The magic is not `QED\0`.
    BadMagic {
        /// The magic found, as a little-endian u32.
        found: u32,
    },
    /// An incompatible feature bit this version does not know is set.
    UnknownIncompatibleFeature {
        /// The lowest unknown bit.
        bit: u32,
        /// The whole `features` field.
        features: u64,
    },
    /// `cluster_size` is not a power of two from 4 KiB to 64 MiB.
    BadClusterSize {
        /// The value found.
        size: u32,
    },
    /// `table_size` is not a power of two from 1 to 16.
    BadTableSize {
        /// The value found.
        size: u32,
    },
    /// `header_size` is zero, or the header area is larger than 32-bit offsets reach.
    BadHeaderSize {
        /// The value found, in clusters.
        clusters: u32,
        /// The cluster size.
        cluster_size: u32,
    },
    /// The header area ends past the end of the file.
    HeaderBeyondFile {
        /// Bytes of the header area.
        header_len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// `image_size` is not a multiple of 512.
    ImageSizeUnaligned {
        /// The value found.
        size: u64,
    },
    /// `image_size` exceeds what the L1 and L2 tables can address.
    ImageSizeTooLarge {
        /// The value found.
        size: u64,
        /// The largest addressable: entries² × cluster_size.
        max: u64,
    },
    /// `l1_table_offset` is not a multiple of the cluster size.
    L1TableUnaligned {
        /// The value found.
        offset: u64,
        /// The cluster size.
        cluster_size: u32,
    },
    /// The L1 table starts inside the header area.
    L1TableInHeader {
        /// The value found.
        offset: u64,
        /// Bytes of the header area.
        header_len: u64,
    },
    /// The L1 table ends past the end of the file.
    L1TableBeyondFile {
        /// Its offset.
        offset: u64,
        /// Its length (`table_size × cluster_size`).
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A backing file name is recorded but the backing-file feature bit is clear.
    BackingNameWithoutFeature {
        /// `backing_filename_size`.
        size: u32,
    },
    /// The backing-file feature bit is set but the name is empty.
    BackingNameMissing,
    /// The backing file name is longer than this version accepts.
    BackingNameTooLong {
        /// `backing_filename_size`.
        size: u32,
        /// The longest accepted.
        max: u32,
    },
    /// The backing file name overlaps the header fields or extends past the header area.
    BackingNameOutsideHeader {
        /// `backing_filename_offset`.
        offset: u32,
        /// `backing_filename_size`.
        size: u32,
        /// Bytes of the header area.
        header_len: u64,
    },
}

impl fmt::Display for QedHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use QedHeaderError::*;
        match *self {
            TooShort { len, needed } => write!(
                f,
                "file too short for a QED header: {len} bytes, need at least {needed}"
            ),
            BadMagic { found } => write!(
                f,
                "not a QED image: magic is {found:#010x}, expected {QED_MAGIC:#010x} (\"QED\\0\")"
            ),
            UnknownIncompatibleFeature { bit, features } => write!(
                f,
                "QED image uses incompatible feature bit {bit} (features {features:#x}), which this version does not support"
            ),
            BadClusterSize { size } => write!(
                f,
                "invalid QED cluster size {size}: must be a power of two from {MIN_CLUSTER_SIZE} to {MAX_CLUSTER_SIZE} bytes"
            ),
            BadTableSize { size } => write!(
                f,
                "invalid QED table size {size}: must be a power of two from 1 to {MAX_TABLE_SIZE} clusters"
            ),
            BadHeaderSize { clusters, cluster_size } => write!(
                f,
                "invalid QED header size of {clusters} clusters of {cluster_size} bytes: must be at least 1 cluster and at most {} bytes",
                u32::MAX
            ),
            HeaderBeyondFile { header_len, file_len } => write!(
                f,
                "QED header area is {header_len} bytes, longer than the {file_len}-byte file"
            ),
            ImageSizeUnaligned { size } => {
                write!(f, "QED image size {size} is not a multiple of 512")
            }
            ImageSizeTooLarge { size, max } => write!(
                f,
                "QED image size {size} exceeds {max}, the most this cluster size and table size can address"
            ),
            L1TableUnaligned { offset, cluster_size } => write!(
                f,
                "QED L1 table offset {offset} is not a multiple of the cluster size {cluster_size}"
            ),
            L1TableInHeader { offset, header_len } => write!(
                f,
                "QED L1 table offset {offset} lies inside the {header_len}-byte header area"
            ),
            L1TableBeyondFile { offset, len, file_len } => write!(
                f,
                "QED L1 table at offset {offset} ({len} bytes) extends past the end of the {file_len}-byte file"
            ),
            BackingNameWithoutFeature { size } => write!(
                f,
                "QED header records a {size}-byte backing file name but its backing-file feature bit is clear"
            ),
            BackingNameMissing => write!(
                f,
                "QED backing-file feature bit is set but the backing file name is empty"
            ),
            BackingNameTooLong { size, max } => write!(
                f,
                "QED backing file name is {size} bytes, longer than the {max} supported"
            ),
            BackingNameOutsideHeader { offset, size, header_len } => write!(
                f,
                "QED backing file name (offset {offset}, {size} bytes) must lie after the {QED_HEADER_LEN}-byte header fields and inside the {header_len}-byte header area"
            ),
        }
    }
}

impl core::error::Error for QedHeaderError {}
