//! QED header validation: turns an untrusted [`QedHeader`] read from a file of known length
//! into a [`QedLayout`] whose numbers are all known to be in range, so nothing downstream
//! re-checks them. Every rule has its own [`QedHeaderError`]; all arithmetic on header
//! values is checked.
//!
//! The rules are QEMU's (`block/qed.c`, `docs/interop/qed_spec`) with three additions:
//! the header area must lie inside the file, a backing file name must not overlap the
//! 64 header bytes and must be non-empty, and a name without the backing-file feature bit
//! is refused. Where QEMU's own checks are wrong (it cannot open `table_size` 1 images and
//! overflows the maximum image size for large geometries) these rules follow the spec.

use super::error::QedHeaderError;
use super::header::{
    features, QedHeader, MAX_BACKING_NAME_LEN, MAX_CLUSTER_SIZE, MAX_TABLE_SIZE, MIN_CLUSTER_SIZE,
    MIN_TABLE_SIZE, QED_HEADER_LEN, QED_MAGIC,
};
use super::table::{self, L1Entry, L2Entry, TableIndex};
use crate::fvd::Region;
use crate::units::{is_aligned, SECTOR_SIZE};

/// Where the backing file's name lies and how to open the backing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BackingFile {
    /// The name's bytes in the file (inside the header area, after the 64 header bytes;
    /// never empty, at most [`MAX_BACKING_NAME_LEN`]).
    pub name: Region,
    /// [`features::BACKING_FORMAT_NO_PROBE`]: the backing file is raw, never probe it.
    pub raw: bool,
}

/// A validated QED header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QedLayout {
    /// Bytes per cluster (a power of two, 4 KiB ..= 64 MiB).
    pub cluster_size: u64,
    /// `log2(cluster_size)`.
    pub cluster_bits: u32,
    /// Clusters per table (a power of two, 1 ..= 16).
    pub table_size: u64,
    /// Bytes per table: `table_size × cluster_size`.
    pub table_len: u64,
    /// Entries per table: `table_len / 8` (a power of two).
    pub table_entries: u64,
    /// Bytes of the header area: `header_size × cluster_size` (at most `u32::MAX`, inside
    /// the file).
    pub header_len: u64,
    /// The L1 table: cluster aligned, after the header area, inside the file.
    pub l1_table: Region,
    /// Guest-visible size: a multiple of 512 the tables can address.
    pub image_size: u64,
    /// Present with [`features::BACKING_FILE`].
    pub backing: Option<BackingFile>,
    /// [`features::NEED_CHECK`]: the image was not closed cleanly.
    pub need_check: bool,
    /// The `features` field (only known bits).
    pub features: u64,
    /// The `compat_features` field (bit 0: copy on read by default); unknown bits are
    /// ignored.
    pub compat_features: u64,
    /// Auto-clear bits this version does not know: a writer clears them (see
    /// [`QedHeader::clear_unknown_autoclear`]) before it changes the image.
    pub unknown_autoclear_features: u64,
}

impl QedLayout {
    /// Splits a guest offset into table indices; `None` past what the L1 table addresses
    /// (never for offsets below `image_size`).
    pub const fn index(&self, guest_offset: u64) -> Option<TableIndex> {
        TableIndex::split(guest_offset, self.cluster_size, self.table_entries)
    }

    /// Decodes a raw L1 entry.
    pub const fn decode_l1(&self, raw: u64) -> L1Entry {
        L1Entry::decode(raw, self.cluster_size)
    }

    /// Decodes a raw L2 entry.
    pub const fn decode_l2(&self, raw: u64) -> L2Entry {
        L2Entry::decode(raw, self.cluster_size)
    }

    /// True when a data cluster at `offset` (cluster aligned) lies after the header area
    /// and wholly inside a file of `file_len` bytes.
    pub const fn cluster_in_file(&self, offset: u64, file_len: u64) -> bool {
        self.span_in_file(offset, self.cluster_size, file_len)
    }

    /// True when a table at `offset` (cluster aligned) lies after the header area and
    /// wholly inside a file of `file_len` bytes.
    pub const fn table_in_file(&self, offset: u64, file_len: u64) -> bool {
        self.span_in_file(offset, self.table_len, file_len)
    }

    /// True when an entry naming `offset` (a table or cluster of `len` bytes) would be
    /// valid in a longer file: aligned, after the header, but not wholly inside a file of
    /// `file_len` bytes. A crash can leave such an entry (QEMU writes a new cluster and
    /// its entry without a flush between them); no writer ever produces a misaligned one
    /// or one inside the header.
    pub const fn beyond_file(&self, offset: u64, len: u64, file_len: u64) -> bool {
        is_aligned(offset, self.cluster_size)
            && offset >= self.header_len
            && !self.span_in_file(offset, len, file_len)
    }

    /// True for an L2 entry no writer ever produces, crash or not: misaligned (other than
    /// the zero-cluster marker) or naming a cluster inside the header area. A table holding
    /// one is not what it claims to be (perhaps guest data an L1 entry points at): the
    /// engine refuses to repair it at open, and `check` blames the L1 entry when the
    /// "table" is another table's data.
    pub const fn l2_entry_impossible(&self, raw: u64) -> bool {
        match self.decode_l2(raw) {
            L2Entry::Invalid(_) => true,
            L2Entry::Cluster(data) => data < self.header_len,
            L2Entry::Unallocated | L2Entry::Zero => false,
        }
    }

    const fn span_in_file(&self, offset: u64, len: u64, file_len: u64) -> bool {
        is_aligned(offset, self.cluster_size)
            && offset >= self.header_len
            && offset <= file_len
            && len <= file_len.saturating_sub(offset)
    }

    /// The backing file name, sliced from the first bytes of the file (at least the
    /// header area). `None` without a backing file or when `header_area` is too short.
    pub fn backing_name<'a>(&self, header_area: &'a [u8]) -> Option<&'a [u8]> {
        let name = self.backing?.name;
        let start = usize::try_from(name.offset).ok()?;
        let end = usize::try_from(name.end()).ok()?;
        header_area.get(start..end)
    }
}

/// True for powers of two in `min..=max`.
const fn power_of_two_in(value: u32, min: u32, max: u32) -> bool {
    value.is_power_of_two() && value >= min && value <= max
}

/// Validates `raw`, read from the start of a file of `file_len` bytes.
pub fn validate(raw: &QedHeader, file_len: u64) -> Result<QedLayout, QedHeaderError> {
    let magic = raw.magic.get();
    if magic != QED_MAGIC {
        return Err(QedHeaderError::BadMagic { found: magic });
    }
    let feature_bits = raw.features.get();
    let unknown = feature_bits & !features::KNOWN_INCOMPATIBLE;
    if unknown != 0 {
        return Err(QedHeaderError::UnknownIncompatibleFeature {
            bit: unknown.trailing_zeros(),
            features: feature_bits,
        });
    }

    let cluster_size32 = raw.cluster_size.get();
    if !power_of_two_in(cluster_size32, MIN_CLUSTER_SIZE, MAX_CLUSTER_SIZE) {
        return Err(QedHeaderError::BadClusterSize {
            size: cluster_size32,
        });
    }
    let cluster_size = u64::from(cluster_size32);
    let table_size32 = raw.table_size.get();
    if !power_of_two_in(table_size32, MIN_TABLE_SIZE, MAX_TABLE_SIZE) {
        return Err(QedHeaderError::BadTableSize { size: table_size32 });
    }
    let table_size = u64::from(table_size32);
    // Both factors are at most 2^26 and 2^4: none of these products overflow.
    let table_len = cluster_size.saturating_mul(table_size);
    let table_entries = table_len / table::ENTRY_SIZE;

    let header_clusters = raw.header_size.get();
    // u32 × u32 always fits in u64.
    let header_len = u64::from(header_clusters).saturating_mul(cluster_size);
    if header_clusters == 0 || header_len > u64::from(u32::MAX) {
        return Err(QedHeaderError::BadHeaderSize {
            clusters: header_clusters,
            cluster_size: cluster_size32,
        });
    }
    if header_len > file_len {
        return Err(QedHeaderError::HeaderBeyondFile {
            header_len,
            file_len,
        });
    }

    let image_size = raw.image_size.get();
    if !is_aligned(image_size, SECTOR_SIZE) {
        return Err(QedHeaderError::ImageSizeUnaligned { size: image_size });
    }
    if let Some(max) = table::max_image_size(cluster_size, table_size) {
        if image_size > max {
            return Err(QedHeaderError::ImageSizeTooLarge {
                size: image_size,
                max,
            });
        }
    }

    let l1_offset = raw.l1_table_offset.get();
    if !is_aligned(l1_offset, cluster_size) {
        return Err(QedHeaderError::L1TableUnaligned {
            offset: l1_offset,
            cluster_size: cluster_size32,
        });
    }
    if l1_offset < header_len {
        return Err(QedHeaderError::L1TableInHeader {
            offset: l1_offset,
            header_len,
        });
    }
    if l1_offset > file_len || table_len > file_len.saturating_sub(l1_offset) {
        return Err(QedHeaderError::L1TableBeyondFile {
            offset: l1_offset,
            len: table_len,
            file_len,
        });
    }

    let name_offset = raw.backing_filename_offset.get();
    let name_size = raw.backing_filename_size.get();
    let backing = if feature_bits & features::BACKING_FILE != 0 {
        if name_size == 0 {
            return Err(QedHeaderError::BackingNameMissing);
        }
        if name_size > MAX_BACKING_NAME_LEN {
            return Err(QedHeaderError::BackingNameTooLong {
                size: name_size,
                max: MAX_BACKING_NAME_LEN,
            });
        }
        let end = u64::from(name_offset).saturating_add(u64::from(name_size));
        if u64::from(name_offset) < QED_HEADER_LEN as u64 || end > header_len {
            return Err(QedHeaderError::BackingNameOutsideHeader {
                offset: name_offset,
                size: name_size,
                header_len,
            });
        }
        Some(BackingFile {
            name: Region {
                offset: u64::from(name_offset),
                len: u64::from(name_size),
            },
            raw: feature_bits & features::BACKING_FORMAT_NO_PROBE != 0,
        })
    } else {
        // QEMU leaves the offset at 64 with size 0 when a backing file is removed; the
        // offset alone means nothing. A no-probe bit without a backing file is ignored.
        if name_size != 0 {
            return Err(QedHeaderError::BackingNameWithoutFeature { size: name_size });
        }
        None
    };

    Ok(QedLayout {
        cluster_size,
        cluster_bits: cluster_size32.trailing_zeros(),
        table_size,
        table_len,
        table_entries,
        header_len,
        l1_table: Region {
            offset: l1_offset,
            len: table_len,
        },
        image_size,
        backing,
        need_check: feature_bits & features::NEED_CHECK != 0,
        features: feature_bits,
        compat_features: raw.compat_features.get(),
        unknown_autoclear_features: raw.autoclear_features.get() & !features::KNOWN_AUTOCLEAR,
    })
}

/// Views and validates the header at the start of `bytes`, the first bytes of a file of
/// `file_len` bytes.
pub fn parse(bytes: &[u8], file_len: u64) -> Result<(&QedHeader, QedLayout), QedHeaderError> {
    let raw = QedHeader::view(bytes).ok_or(QedHeaderError::TooShort {
        len: bytes.len() as u64,
        needed: QED_HEADER_LEN as u64,
    })?;
    let layout = validate(raw, file_len)?;
    Ok((raw, layout))
}
