//! Create geometry: a pure function from create options to the bytes `qemu-img create -f
//! qed` writes. The file is one header cluster (the 64-byte header, the backing file name
//! right after it at byte 64, zeros) followed by an all-zero L1 table of `table_size`
//! clusters at offset `cluster_size`; nothing else. Nothing here touches a file.

use super::header::{
    features, QedHeader, DEFAULT_CLUSTER_SIZE, DEFAULT_TABLE_SIZE, MAX_BACKING_NAME_LEN,
    MAX_CLUSTER_SIZE, MAX_TABLE_SIZE, MIN_CLUSTER_SIZE, MIN_TABLE_SIZE, QED_HEADER_LEN, QED_MAGIC,
};
use super::table;
use crate::fvd::Region;
use crate::units::{checked_round_up, SECTOR_SIZE};
use core::fmt;
use zerocopy::little_endian::{U32, U64};

/// Where `qemu-img create` puts the backing name: right after the 64-byte header.
const NAME_OFFSET: u32 = 64;
const _: () = assert!(NAME_OFFSET as usize == QED_HEADER_LEN);

/// The backing file an image is created over.
#[derive(Clone, Copy, Debug)]
pub struct QedBacking<'a> {
    /// Name stored in the header, as given (relative names resolve against the image's
    /// directory).
    pub name: &'a [u8],
    /// Format of the backing file. Only `raw` is recorded (as
    /// [`features::BACKING_FORMAT_NO_PROBE`]); any other name, or empty, leaves the format
    /// to be probed at open, exactly as qemu-img does.
    pub format: &'a [u8],
}

/// Everything QED `create` can be told. `Default` gives qemu-img's defaults.
#[derive(Clone, Copy, Debug)]
pub struct QedCreateOptions<'a> {
    /// Guest-visible size in bytes (rounded up to 512).
    pub size: u64,
    /// Bytes per cluster: a power of two, 4 KiB ..= 64 MiB (default 64 KiB).
    pub cluster_size: u64,
    /// Clusters per table: a power of two, 1 ..= 16 (default 4).
    pub table_size: u64,
    /// Backing file, if any.
    pub backing: Option<QedBacking<'a>>,
}

impl Default for QedCreateOptions<'_> {
    fn default() -> Self {
        QedCreateOptions {
            size: 0,
            cluster_size: u64::from(DEFAULT_CLUSTER_SIZE),
            table_size: u64::from(DEFAULT_TABLE_SIZE),
            backing: None,
        }
    }
}

/// Why a set of create options cannot make a QED image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QedCreateError {
    /// `cluster_size` is not a power of two from 4 KiB to 64 MiB.
    BadClusterSize {
        /// Requested value.
        size: u64,
    },
    /// `table_size` is not a power of two from 1 to 16.
    BadTableSize {
        /// Requested value.
        size: u64,
    },
    /// The size (rounded up to 512) exceeds what the tables can address.
    SizeTooLarge {
        /// Requested size.
        size: u64,
        /// The largest this cluster and table size allow.
        max: u64,
    },
    /// The backing file name is empty.
    BackingNameEmpty,
    /// The backing file name contains a NUL byte.
    BackingNameHasNul,
    /// Copy-on-read was asked for an image without a backing file.
    CopyOnReadWithoutBacking,
    /// The backing file name does not fit the header cluster, or exceeds what readers accept.
    BackingNameTooLong {
        /// Its length.
        len: u64,
        /// The longest that fits.
        max: u64,
    },
}

impl fmt::Display for QedCreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use QedCreateError::*;
        match *self {
            BadClusterSize { size } => write!(
                f,
                "invalid QED cluster size {size}: must be a power of two from {MIN_CLUSTER_SIZE} to {MAX_CLUSTER_SIZE} bytes"
            ),
            BadTableSize { size } => write!(
                f,
                "invalid QED table size {size}: must be a power of two from 1 to {MAX_TABLE_SIZE} clusters"
            ),
            SizeTooLarge { size, max } => write!(
                f,
                "QED image size {size} is too large: this cluster size and table size address at most {max} bytes"
            ),
            BackingNameEmpty => write!(f, "the QED backing file name is empty"),
            CopyOnReadWithoutBacking => {
                write!(f, "QED copy-on-read needs a backing file (-b)")
            }
            BackingNameHasNul => write!(f, "the QED backing file name contains a NUL byte"),
            BackingNameTooLong { len, max } => write!(
                f,
                "the QED backing file name is {len} bytes; with this cluster size at most {max} fit"
            ),
        }
    }
}

impl core::error::Error for QedCreateError {}

/// What `create` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QedPlan<'a> {
    /// The 64-byte header.
    pub header: QedHeader,
    /// The backing file name stored right after it (empty without a backing file).
    pub backing_name: &'a [u8],
    /// Bytes of the header area (one cluster).
    pub header_len: u64,
    /// The L1 table: all zeros, at offset `cluster_size`.
    pub l1_table: Region,
    /// Length of the new file: the header cluster plus the L1 table.
    pub file_len: u64,
}

impl QedPlan<'_> {
    /// Marks the image to copy on read by default (`-o copy_on_read`, the compatible
    /// feature bit of the 2011 RFC); only an image with a backing file can.
    pub fn set_copy_on_read(&mut self) -> Result<(), QedCreateError> {
        if self.header.features.get() & features::BACKING_FILE == 0 {
            return Err(QedCreateError::CopyOnReadWithoutBacking);
        }
        let bits = self.header.compat_features.get() | features::COMPAT_COPY_ON_READ;
        self.header.compat_features = U64::new(bits);
        Ok(())
    }

    /// Bytes of the header area that are not zero padding: header plus name.
    pub const fn header_used_len(&self) -> usize {
        QED_HEADER_LEN.saturating_add(self.backing_name.len())
    }

    /// Writes the start of the header area into `out`: the header, the backing name, then
    /// zeros to the end of `out`. Pass a whole header cluster ([`QedPlan::header_len`]
    /// bytes) to get it byte for byte. Returns the bytes that are not padding, or `None`
    /// (nothing written) when `out` is shorter than that.
    pub fn write_header_area(&self, out: &mut [u8]) -> Option<usize> {
        let used = self.header_used_len();
        if out.len() < used {
            return None;
        }
        let (header, rest) = out.split_at_mut(QED_HEADER_LEN);
        header.copy_from_slice(self.header.bytes());
        let (name, padding) = rest.split_at_mut(self.backing_name.len());
        name.copy_from_slice(self.backing_name);
        padding.fill(0);
        Some(used)
    }
}

/// The header of an existing QED image (`header`, validated) put over another backing
/// file, or over none, as `qemu-img rebase` rewrites it: the name at byte 64 of the header
/// area (which must hold it: `header_size` clusters less the 64-byte header), the
/// backing-file feature bits set for `backing` (with `BACKING_FORMAT_NO_PROBE` for a raw
/// one) or cleared without. Every other field is kept. The host writes the returned header
/// and the name in one write, with zeros over the rest of the old name.
pub fn rebased_header(
    header: &QedHeader,
    backing: Option<QedBacking<'_>>,
) -> Result<QedHeader, QedCreateError> {
    let mut new = header.clone();
    let mut bits =
        header.features.get() & !(features::BACKING_FILE | features::BACKING_FORMAT_NO_PROBE);
    match backing {
        None => {
            new.backing_filename_offset = U32::new(0);
            new.backing_filename_size = U32::new(0);
        }
        Some(backing) => {
            let name = backing.name;
            if name.is_empty() {
                return Err(QedCreateError::BackingNameEmpty);
            }
            if name.contains(&0) {
                return Err(QedCreateError::BackingNameHasNul);
            }
            let area = u64::from(header.cluster_size.get())
                .saturating_mul(u64::from(header.header_size.get()));
            let max_name = area
                .saturating_sub(QED_HEADER_LEN as u64)
                .min(u64::from(MAX_BACKING_NAME_LEN));
            let len = name.len() as u64;
            let Some(stored_len) = u32::try_from(len).ok().filter(|_| len <= max_name) else {
                return Err(QedCreateError::BackingNameTooLong { len, max: max_name });
            };
            bits |= features::BACKING_FILE;
            if backing.format == b"raw" {
                bits |= features::BACKING_FORMAT_NO_PROBE;
            }
            new.backing_filename_offset = U32::new(NAME_OFFSET);
            new.backing_filename_size = U32::new(stored_len);
        }
    }
    new.features = U64::new(bits);
    Ok(new)
}

fn power_of_two_in(value: u64, min: u32, max: u32) -> bool {
    value.is_power_of_two() && value >= u64::from(min) && value <= u64::from(max)
}

/// Computes the image `options` describe, as `qemu-img create -f qed` lays it out:
/// `header_size` 1, L1 table at cluster 1, backing name at byte 64, feature bits
/// `BACKING_FILE` (plus `BACKING_FORMAT_NO_PROBE` for a raw backing file), everything else
/// zero. The plan always passes [`super::validate()`] for a file of `file_len` bytes.
pub fn plan<'a>(options: &QedCreateOptions<'a>) -> Result<QedPlan<'a>, QedCreateError> {
    let cluster_size = options.cluster_size;
    if !power_of_two_in(cluster_size, MIN_CLUSTER_SIZE, MAX_CLUSTER_SIZE) {
        return Err(QedCreateError::BadClusterSize { size: cluster_size });
    }
    let table_size = options.table_size;
    if !power_of_two_in(table_size, MIN_TABLE_SIZE, MAX_TABLE_SIZE) {
        return Err(QedCreateError::BadTableSize { size: table_size });
    }
    // Bounded above: 64 MiB × 16 clusters.
    let table_len = cluster_size.saturating_mul(table_size);
    let max = table::max_image_size(cluster_size, table_size);
    let size = checked_round_up(options.size, SECTOR_SIZE)
        .filter(|size| max.is_none_or(|max| *size <= max))
        .ok_or(QedCreateError::SizeTooLarge {
            size: options.size,
            max: max.unwrap_or(u64::MAX),
        })?;

    let mut header = QedHeader::zeroed();
    header.magic = U32::new(QED_MAGIC);
    // The range checks above make these conversions lossless.
    let (Ok(cluster_size32), Ok(table_size32)) =
        (u32::try_from(cluster_size), u32::try_from(table_size))
    else {
        return Err(QedCreateError::BadClusterSize { size: cluster_size });
    };
    header.cluster_size = U32::new(cluster_size32);
    header.table_size = U32::new(table_size32);
    header.header_size = U32::new(1);
    header.l1_table_offset = U64::new(cluster_size);
    header.image_size = U64::new(size);

    let mut backing_name: &[u8] = &[];
    if let Some(backing) = options.backing {
        let name = backing.name;
        if name.is_empty() {
            return Err(QedCreateError::BackingNameEmpty);
        }
        if name.contains(&0) {
            return Err(QedCreateError::BackingNameHasNul);
        }
        let max_name = cluster_size
            .saturating_sub(QED_HEADER_LEN as u64)
            .min(u64::from(MAX_BACKING_NAME_LEN));
        let len = name.len() as u64;
        let stored_len = u32::try_from(len).ok().filter(|_| len <= max_name);
        let Some(stored_len) = stored_len else {
            return Err(QedCreateError::BackingNameTooLong { len, max: max_name });
        };
        let mut bits = features::BACKING_FILE;
        if backing.format == b"raw" {
            bits |= features::BACKING_FORMAT_NO_PROBE;
        }
        header.features = U64::new(bits);
        header.backing_filename_offset = U32::new(NAME_OFFSET);
        header.backing_filename_size = U32::new(stored_len);
        backing_name = name;
    }

    Ok(QedPlan {
        header,
        backing_name,
        header_len: cluster_size,
        l1_table: Region {
            offset: cluster_size,
            len: table_len,
        },
        file_len: cluster_size.saturating_add(table_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebased_header_names_the_new_base_or_none_and_keeps_the_rest() {
        let p = plan(&QedCreateOptions {
            size: 1 << 30,
            backing: Some(QedBacking {
                name: b"old.raw",
                format: b"raw",
            }),
            ..Default::default()
        })
        .unwrap();
        let new = QedBacking {
            name: b"new.qed",
            format: b"qed",
        };
        let q = rebased_header(&p.header, Some(new)).unwrap();
        assert_eq!(q.backing_filename_size.get(), 7);
        assert_eq!(q.features.get(), features::BACKING_FILE);
        assert_eq!(q.image_size, p.header.image_size);
        let none = rebased_header(&p.header, None).unwrap();
        assert_eq!(none.features.get(), 0);
        assert_eq!(none.backing_filename_offset.get(), 0);
        let long = [b'a'; 70_000];
        let too_long = QedBacking {
            name: &long,
            format: b"raw",
        };
        assert!(matches!(
            rebased_header(&p.header, Some(too_long)),
            Err(QedCreateError::BackingNameTooLong { .. })
        ));
    }
}
