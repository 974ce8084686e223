//! Changing an image's virtual size (`fvd-img resize`): which new sizes each format
//! allows and what the files must undergo, as plans a host carries out. No I/O.
//!
//! - FVD grows to any sector-aligned size its header can describe; a compact image only
//!   as far as its chunk table region has entries (the table is never moved), and the
//!   entries the new size brings into use are rewritten as EMPTY first, whatever the region's
//!   slack held. FVD shrinks (when the caller allows it) only a plain image, and never below
//!   its base range. A plain image's data storage is cut at the smaller of the two ends
//!   before the header changes, so bytes past the old end never show up in a grown disk
//!   and bytes a shrink drops never come back. A compact image cannot release its chunks,
//!   so it does not shrink.
//! - QED grows as far as its L1/L2 tables reach and does not shrink, as QEMU's driver.
//!
//! Every new header is checked by the format's validation before a plan is returned.


use crate::fvd::{validate, HeaderError, RawHeader};
use crate::qed::error::QedHeaderError;
use crate::qed::header::QedHeader;
use crate::units::SECTOR_SIZE;
use core::fmt;
use zerocopy::little_endian::U64;

/// Why a resize is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResizeError {
    /// The new size is not a multiple of 512.
    Unaligned {
        /// The size asked for.
        size: u64,
    },
    /// The new size is smaller and shrinking was not allowed (`--shrink`).
    ShrinkNotAllowed,
    /// This image cannot shrink.
    ShrinkNotSupported {
        /// Why.
        reason: &'static str,
    },
    /// Shrinking would cut into the range the base provides.
    BelowBase {
        /// The base range in bytes.
        base_size: u64,
    },
    /// A compact image's chunk table has no entries for the new size.
    TableFull {
        /// The largest size the table can describe.
        max_size: u64,
    },
    /// The image was not closed cleanly: replay its journal (open it) first.
    NotClean,
    /// The FVD header with the new size is not valid.
    Fvd(HeaderError),
    /// The QED header with the new size is not valid.
    Qed(QedHeaderError),
}

impl fmt::Display for ResizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeError::Unaligned { size } => {
                write!(
                    f,
                    "the new size {size} is not a multiple of {SECTOR_SIZE} bytes"
                )
            }
            ResizeError::ShrinkNotAllowed => {
                f.write_str("Use the --shrink option to perform a shrink operation.")
            }
            ResizeError::ShrinkNotSupported { reason } => {
                write!(f, "Shrinking this image is not supported: {reason}")
            }
            ResizeError::BelowBase { base_size } => write!(
                f,
                "cannot shrink below the {base_size} bytes the base image provides"
            ),
            ResizeError::TableFull { max_size } => write!(
                f,
                "the chunk table of this compact image describes at most {max_size} bytes \
                 (convert it into a new image to grow further)"
            ),
            ResizeError::NotClean => {
                f.write_str("the image was not closed cleanly; its journal must be replayed first")
            }
            ResizeError::Fvd(err) => write!(f, "Invalid image size specified: {err}"),
            ResizeError::Qed(err) => write!(f, "Invalid image size specified: {err}"),
        }
    }
}

/// What resizing an FVD image takes, in this order: rewrite the table entries, cut the
/// data storage, write the header.
#[derive(Clone)]
pub struct FvdResize {
    /// The new header (only `virtual_disk_size` differs).
    pub header: RawHeader,
    /// Table entries `[first, end)` to set EMPTY before the header is written (growth of a
    /// compact image).
    pub empty_entries: Option<(u64, u64)>,
    /// Byte offset of table entry `first` in the image file.
    pub entries_at: u64,
    /// The data storage's new length when it must be cut (before the header is written).
    pub storage_len: Option<u64>,
}

/// Plans the resize of the FVD image whose header is `old` (in a file of `file_len`
/// bytes, data storage of `storage_len` bytes) to `new_size`.
pub fn fvd_plan(
    old: &RawHeader,
    file_len: u64,
    storage_len: u64,
    new_size: u64,
    allow_shrink: bool,
) -> Result<FvdResize, ResizeError> {
    let layout = validate(old, file_len).map_err(ResizeError::Fvd)?;
    if !layout.clean_shutdown {
        return Err(ResizeError::NotClean);
    }
    if new_size % SECTOR_SIZE != 0 {
        return Err(ResizeError::Unaligned { size: new_size });
    }
    let shrinking = new_size < layout.virtual_size;
    if shrinking {
        if !allow_shrink {
            return Err(ResizeError::ShrinkNotAllowed);
        }
        if layout.table.is_some() {
            return Err(ResizeError::ShrinkNotSupported {
                reason: "a compact image cannot release its chunks (convert it instead)",
            });
        }
        if let Some(base) = layout.base {
            if new_size < base.size {
                return Err(ResizeError::BelowBase {
                    base_size: base.size,
                });
            }
        }
    }
    let mut header = old.clone();
    header.virtual_disk_size = U64::new(new_size);
    let mut empty_entries = None;
    let mut entries_at = 0;
    if let Some(table) = layout.table {
        let capacity = table.region.len / 4;
        let chunks = new_size.div_ceil(table.chunk_size);
        if chunks > capacity {
            return Err(ResizeError::TableFull {
                max_size: capacity.saturating_mul(table.chunk_size),
            });
        }
        if chunks > table.chunks {
            empty_entries = Some((table.chunks, chunks));
            entries_at = table
                .region
                .offset
                .checked_add(table.chunks.saturating_mul(4))
                .ok_or(ResizeError::TableFull { max_size: 0 })?;
        }
    }
    validate(&header, file_len).map_err(ResizeError::Fvd)?;
    let storage_end = layout
        .data_offset
        .saturating_add(new_size.min(layout.virtual_size));
    let storage_len = (layout.table.is_none() && storage_len > storage_end).then_some(storage_end);
    Ok(FvdResize {
        header,
        empty_entries,
        entries_at,
        storage_len,
    })
}

/// Plans the resize of the QED image whose header is `old` (in a file of `file_len`
/// bytes) to `new_size`: the new header. QED only grows.
pub fn qed_plan(
    old: &QedHeader,
    file_len: u64,
    new_size: u64,
    allow_shrink: bool,
) -> Result<QedHeader, ResizeError> {
    let layout = crate::qed::validate::validate(old, file_len).map_err(ResizeError::Qed)?;
    if new_size % SECTOR_SIZE != 0 {
        return Err(ResizeError::Unaligned { size: new_size });
    }
    if new_size < layout.image_size {
        return Err(if allow_shrink {
            ResizeError::ShrinkNotSupported {
                reason: "QED images only grow (as with QEMU)",
            }
        } else {
            ResizeError::ShrinkNotAllowed
        });
    }
    let mut header = old.clone();
    header.image_size = U64::new(new_size);
    crate::qed::validate::validate(&header, file_len).map_err(ResizeError::Qed)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fvd::create::{metadata_len, plan, BaseSpec, CreateOptions};
    use crate::qed::{plan as qed_create, QedCreateOptions};

    const M: u64 = 1 << 20;

    /// The error of a plan that must fail.
    fn refused<T>(result: Result<T, ResizeError>) -> ResizeError {
        match result {
            Err(err) => err,
            Ok(_) => panic!("the resize was allowed"),
        }
    }

    fn fvd(compact: bool, base: Option<u64>) -> (RawHeader, u64) {
        let h = plan(&CreateOptions {
            virtual_size: 64 * M,
            compact_image: compact,
            chunk_size: compact.then_some(M),
            base: base.map(|size| BaseSpec {
                name: b"b.raw",
                format: b"raw",
                size,
            }),
            ..Default::default()
        })
        .unwrap();
        let len = metadata_len(&h);
        (h, len)
    }

    #[test]
    fn a_plain_fvd_image_grows_and_shrinks_with_its_storage_cut() {
        let (h, len) = fvd(false, None);
        let grown = fvd_plan(&h, len, len, 100 * M, false).unwrap();
        assert_eq!(grown.header.virtual_disk_size.get(), 100 * M);
        assert_eq!((grown.empty_entries, grown.storage_len), (None, None));
        assert_eq!(
            refused(fvd_plan(&h, len, len, 32 * M, false)),
            ResizeError::ShrinkNotAllowed
        );
        let data_end = h.data_offset.get() + 64 * M;
        let shrunk = fvd_plan(&h, len, data_end, 32 * M, true).unwrap();
        assert_eq!(shrunk.storage_len, Some(h.data_offset.get() + 32 * M));
        // Bytes past the old end (a longer file) are cut before a grown disk can show them.
        let grown = fvd_plan(&h, len, data_end + M, 100 * M, false).unwrap();
        assert_eq!(grown.storage_len, Some(data_end));
        assert_eq!(
            refused(fvd_plan(&h, len, len, 1000, true)),
            ResizeError::Unaligned { size: 1000 }
        );
    }

    #[test]
    fn fvd_never_shrinks_into_its_base_range_or_a_compact_image() {
        let (h, len) = fvd(false, Some(48 * M));
        assert_eq!(
            refused(fvd_plan(&h, len, len, 32 * M, true)),
            ResizeError::BelowBase { base_size: 48 * M }
        );
        assert!(fvd_plan(&h, len, len, 48 * M, true).is_ok());
        let (c, len) = fvd(true, None);
        assert!(matches!(
            refused(fvd_plan(&c, len, len, 32 * M, true)),
            ResizeError::ShrinkNotSupported { .. }
        ));
    }

    #[test]
    fn a_compact_image_grows_within_its_table_and_empties_the_new_entries() {
        let (c, len) = fvd(true, None);
        let capacity = c.table_size.get() / 4;
        let grown = fvd_plan(&c, len, len, capacity * M, false).unwrap();
        assert_eq!(grown.empty_entries, Some((64, capacity)));
        assert_eq!(grown.entries_at, c.table_offset.get() + 64 * 4);
        assert_eq!(
            refused(fvd_plan(&c, len, len, (capacity + 1) * M, false)),
            ResizeError::TableFull {
                max_size: capacity * M
            }
        );
    }

    #[test]
    fn an_unclean_fvd_image_is_not_resized() {
        let (mut h, len) = fvd(false, None);
        h.clean_shutdown = zerocopy::little_endian::U32::new(0);
        assert_eq!(
            refused(fvd_plan(&h, len, len, 128 * M, false)),
            ResizeError::NotClean
        );
    }

    #[test]
    fn qed_grows_to_its_table_reach_and_never_shrinks() {
        let plan = qed_create(&QedCreateOptions {
            size: 64 * M,
            ..Default::default()
        })
        .unwrap();
        let len = 1 << 20;
        let grown = qed_plan(&plan.header, len, 128 * M, false).unwrap();
        assert_eq!(grown.image_size.get(), 128 * M);
        assert_eq!(
            refused(qed_plan(&plan.header, len, 32 * M, false)),
            ResizeError::ShrinkNotAllowed
        );
        assert!(matches!(
            refused(qed_plan(&plan.header, len, 32 * M, true)),
            ResizeError::ShrinkNotSupported { .. }
        ));
        assert!(matches!(
            refused(qed_plan(&plan.header, len, 1 << 60, false)),
            ResizeError::Qed(_)
        ));
    }
}
