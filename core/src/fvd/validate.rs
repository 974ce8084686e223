//! Header validation: turns an untrusted [`RawHeader`] into an [`ImageLayout`] whose
//! numbers are all known to be in range, so nothing downstream re-checks them. Every rule
//! has its own [`HeaderError`]; all arithmetic on header values is checked.

use super::error::{HeaderError, RegionKind};
use super::header::{name_field, RawHeader, FVD_MAGIC, RAW_HEADER_LEN};
use crate::units::{checked_round_up, div_ceil, is_aligned, PAGE_SIZE, SECTOR_SIZE};

/// Largest virtual disk this implementation addresses (64 PiB).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 56;
/// Largest `block_size` accepted (64 MiB).
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;
/// Largest `chunk_size` accepted (1 GiB).
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// Most chunks a table may have: physical chunk indices are 31-bit.
pub const MAX_CHUNKS: u64 = 0x7FFF_FFFF;
/// Largest physical chunk index a table entry may name (entries are 31-bit).
pub const MAX_PHYSICAL_CHUNK: u64 = 0x7FFF_FFFF;
/// Largest `storage_grow_unit` accepted (1 TiB).
pub const MAX_STORAGE_GROW_UNIT: u64 = 1 << 40;
/// Largest length any data storage may reach: file offsets are signed 64-bit on every
/// host, so no byte of guest data may lie at or past 2^63 - 1.
pub const MAX_STORAGE_LEN: u64 = i64::MAX as u64;
/// Largest `header_size` accepted (1 MiB).
pub const MAX_HEADER_SIZE: u64 = 1 << 20;
/// Largest `num_prefetch_slots` accepted.
pub const MAX_PREFETCH_SLOTS: u64 = 1024;
/// Largest `bytes_per_prefetch` accepted (256 MiB).
pub const MAX_BYTES_PER_PREFETCH: u64 = 256 << 20;
/// Largest measure or throttle time accepted, ms (one day).
pub const MAX_TUNING_TIME_MS: u64 = 86_400_000;
/// Format names a base image may have (empty = probe).
pub const BASE_FORMATS: [&[u8]; 4] = [b"", b"raw", b"fvd", b"qed"];
/// Format names a separate data file may have (empty = raw).
pub const DATA_FILE_FORMATS: [&[u8]; 2] = [b"", b"raw"];

/// A byte range of the image file holding one kind of metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    /// One past the last byte (never overflows for a validated region; saturates for
    /// one built by hand).
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// The base image's share of the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BaseLayout {
    /// Guest bytes `[0, size)` that may still come from the base.
    pub size: u64,
    /// Number of bitmap bits in use: `ceil(size / block_size)`.
    pub blocks: u64,
    /// The bitmap region.
    pub bitmap: Region,
}

/// The chunk table's share of the layout (compact images).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TableLayout {
    /// The table region.
    pub region: Region,
    /// Guest bytes per chunk.
    pub chunk_size: u64,
    /// Entries in use: `ceil(virtual_size / chunk_size)`.
    pub chunks: u64,
    /// Bytes the data storage grows by at a time.
    pub storage_grow_unit: u64,
}

/// A validated header: every number in range, every region aligned, in the file and
/// disjoint from the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ImageLayout {
    /// Bytes of the header area.
    pub header_size: u64,
    /// Guest-visible disk size.
    pub virtual_size: u64,
    /// Guest bytes per bitmap bit (also the copy-on-write unit).
    pub block_size: u64,
    /// Where guest data begins in the data storage.
    pub data_offset: u64,
    /// True when guest data lives in a separate data file.
    pub separate_data_file: bool,
    /// Present when the image has a base image.
    pub base: Option<BaseLayout>,
    /// Present when the image has a journal.
    pub journal: Option<Region>,
    /// Present for compact images.
    pub table: Option<TableLayout>,
    /// First byte after every metadata region (the header included).
    pub metadata_end: u64,
    /// The journal epoch records must carry to be replayed.
    pub stable_journal_epoch: u64,
    /// The image was closed cleanly.
    pub clean_shutdown: bool,
    /// Default copy-on-read setting.
    pub copy_on_read: bool,
    /// A leaked chunk has been reused.
    pub chunks_relocated: bool,
    /// Every base block has been copied in; the base is no longer read.
    pub base_fully_prefetched: bool,
    /// Never-written data storage must read as zeros.
    pub need_zero_init: bool,
}

impl ImageLayout {
    /// Where physical chunk `p` of a compact image starts in the data storage; `None` for
    /// an image without a table or a `p` no table entry can name. Validation guarantees no
    /// overflow for any valid `p`; the arithmetic is checked regardless.
    pub fn chunk_offset(&self, p: u64) -> Option<u64> {
        let table = self.table?;
        if p > MAX_PHYSICAL_CHUNK {
            return None;
        }
        p.checked_mul(table.chunk_size)?
            .checked_add(self.data_offset)
    }

    /// One past the last byte of physical chunk `p` in the data storage.
    pub fn chunk_end(&self, p: u64) -> Option<u64> {
        self.chunk_offset(p)?.checked_add(self.table?.chunk_size)
    }

    /// True when physical chunk `p` lies wholly inside a data storage of `storage_len`
    /// bytes: the rule every table entry must pass before it is used (FORMAT.md §8).
    pub fn chunk_in_storage(&self, p: u64, storage_len: u64) -> bool {
        self.chunk_end(p).is_some_and(|end| end <= storage_len)
    }

    /// The length the data storage grows to so that physical chunk `p` fits: the data
    /// offset plus `(p + 1) * chunk_size` rounded up to `storage_grow_unit` (FORMAT.md §8).
    pub fn grown_storage_len(&self, p: u64) -> Option<u64> {
        let table = self.table?;
        let need = self.chunk_end(p)?.checked_sub(self.data_offset)?;
        checked_round_up(need, table.storage_grow_unit)?.checked_add(self.data_offset)
    }
}

fn boolean(field: &'static str, value: u32) -> Result<bool, HeaderError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(HeaderError::NotBoolean { field, value }),
    }
}

fn name<'a>(field: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], HeaderError> {
    name_field(bytes).ok_or(HeaderError::UnterminatedName { field })
}

fn format_name(field: &'static str, bytes: &[u8], allowed: &[&[u8]]) -> Result<(), HeaderError> {
    let value = name(field, bytes)?;
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(HeaderError::UnsupportedFormatName { field })
    }
}

/// Checks one region's shape; returns it when present (`size != 0`).
fn region(
    kind: RegionKind,
    offset: u64,
    size: u64,
    present: bool,
) -> Result<Option<Region>, HeaderError> {
    if !present {
        return if offset == 0 && size == 0 {
            Ok(None)
        } else {
            Err(HeaderError::RegionMisplaced {
                region: kind,
                offset,
                size,
            })
        };
    }
    if offset == 0 || size == 0 {
        return Err(HeaderError::RegionMisplaced {
            region: kind,
            offset,
            size,
        });
    }
    if !is_aligned(offset, PAGE_SIZE) || !is_aligned(size, PAGE_SIZE) {
        return Err(HeaderError::RegionUnaligned {
            region: kind,
            offset,
            size,
        });
    }
    if offset.checked_add(size).is_none() {
        return Err(HeaderError::RegionOverflow { region: kind });
    }
    Ok(Some(Region { offset, len: size }))
}

fn needed_size(kind: RegionKind, region: Region, needed: Option<u64>) -> Result<(), HeaderError> {
    let needed = needed.ok_or(HeaderError::RegionOverflow { region: kind })?;
    if region.len < needed {
        Err(HeaderError::RegionTooSmall {
            region: kind,
            size: region.len,
            needed,
        })
    } else {
        Ok(())
    }
}

/// Bytes of bitmap needed for `base_size` guest bytes at `block_size` per bit.
pub fn bitmap_bytes_needed(base_size: u64, block_size: u64) -> Option<u64> {
    let blocks = div_ceil(base_size, block_size)?;
    checked_round_up(div_ceil(blocks, 8)?, PAGE_SIZE)
}

/// Bytes of table needed for `virtual_size` guest bytes at `chunk_size` per entry.
pub fn table_bytes_needed(virtual_size: u64, chunk_size: u64) -> Option<u64> {
    checked_round_up(
        div_ceil(virtual_size, chunk_size)?.checked_mul(4)?,
        PAGE_SIZE,
    )
}

/// Smallest journal that can log a whole table at once (so a commit never has to wait
/// for more room than the journal has): what the geometry raises journals to.
pub fn journal_bytes_needed(table_chunks: u64) -> Option<u64> {
    let sectors = div_ceil(
        table_chunks,
        super::journal::TABLE_ENTRIES_PER_SECTOR as u64,
    )?;
    checked_round_up(sectors.checked_mul(SECTOR_SIZE)?.max(PAGE_SIZE), PAGE_SIZE)
}

fn tuning(field: &'static str, value: u64, ok: bool) -> Result<(), HeaderError> {
    if ok {
        Ok(())
    } else {
        Err(HeaderError::BadTuning { field, value })
    }
}

/// Validates `raw`, read from a file of `file_len` bytes.
pub fn validate(raw: &RawHeader, file_len: u64) -> Result<ImageLayout, HeaderError> {
    let magic = raw.magic.get();
    if magic != FVD_MAGIC {
        return Err(HeaderError::BadMagic { found: magic });
    }
    for (field, value) in [
        ("create_version", raw.create_version.get()),
        ("last_open_version", raw.last_open_version.get()),
    ] {
        if value == 0 {
            return Err(HeaderError::BadVersion { field, value });
        }
    }
    let header_size = u64::from(raw.header_size.get());
    if header_size < RAW_HEADER_LEN as u64
        || !is_aligned(header_size, PAGE_SIZE)
        || header_size > MAX_HEADER_SIZE
    {
        return Err(HeaderError::BadHeaderSize {
            size: raw.header_size.get(),
        });
    }
    if let Some((byte, value)) = raw
        .incompatible_features
        .iter()
        .enumerate()
        .find(|(_, b)| **b != 0)
    {
        // The array has 4096 bytes: the bit index fits a u32.
        let bit = u32::try_from(byte)
            .unwrap_or(u32::MAX / 8)
            .saturating_mul(8)
            .saturating_add(value.trailing_zeros());
        return Err(HeaderError::UnknownIncompatibleFeature { bit });
    }

    let clean_shutdown = boolean("clean_shutdown", raw.clean_shutdown.get())?;
    let copy_on_read = boolean("copy_on_read", raw.copy_on_read.get())?;
    let chunks_relocated = boolean("chunks_relocated", raw.chunks_relocated.get())?;
    let base_fully_prefetched = boolean(
        "base_img_fully_prefetched",
        raw.base_img_fully_prefetched.get(),
    )?;
    let need_zero_init = boolean("need_zero_init", raw.need_zero_init.get())?;

    let data_file = name("data_file", &raw.data_file)?;
    format_name("data_file_fmt", &raw.data_file_fmt, &DATA_FILE_FORMATS)?;
    let base_img = name("base_img", &raw.base_img)?;
    format_name("base_img_fmt", &raw.base_img_fmt, &BASE_FORMATS)?;
    name("add_storage_cmd", &raw.add_storage_cmd)?;

    let virtual_size = raw.virtual_disk_size.get();
    if !is_aligned(virtual_size, SECTOR_SIZE) {
        return Err(HeaderError::VirtualSizeUnaligned { size: virtual_size });
    }
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(HeaderError::VirtualSizeTooLarge {
            size: virtual_size,
            max: MAX_VIRTUAL_SIZE,
        });
    }
    let block_size = raw.block_size.get();
    if block_size == 0 || !is_aligned(block_size, SECTOR_SIZE) || block_size > MAX_BLOCK_SIZE {
        return Err(HeaderError::BadBlockSize { size: block_size });
    }

    // Base image and its bitmap.
    let has_base = !base_img.is_empty();
    let base_size = raw.base_img_size.get();
    if !has_base && base_size != 0 {
        return Err(HeaderError::BaseSizeWithoutBase { size: base_size });
    }
    if !is_aligned(base_size, SECTOR_SIZE) || base_size > virtual_size {
        return Err(HeaderError::BadBaseSize {
            size: base_size,
            virtual_size,
        });
    }
    let bitmap = region(
        RegionKind::Bitmap,
        raw.bitmap_offset.get(),
        raw.bitmap_size.get(),
        has_base,
    )?;
    let base = match bitmap {
        Some(bitmap) => {
            needed_size(
                RegionKind::Bitmap,
                bitmap,
                bitmap_bytes_needed(base_size, block_size),
            )?;
            Some(BaseLayout {
                size: base_size,
                blocks: base_size.div_ceil(block_size),
                bitmap,
            })
        }
        None => None,
    };

    // Chunk table.
    let table_size = raw.table_size.get();
    let table = match region(
        RegionKind::Table,
        raw.table_offset.get(),
        table_size,
        table_size != 0,
    )? {
        Some(table_region) => {
            let chunk_size = raw.chunk_size.get();
            let chunk_ok = chunk_size != 0
                && is_aligned(chunk_size, PAGE_SIZE)
                && chunk_size <= MAX_CHUNK_SIZE
                && (!has_base || is_aligned(chunk_size, block_size));
            if !chunk_ok {
                return Err(HeaderError::BadChunkSize {
                    size: chunk_size,
                    block_size,
                });
            }
            let chunks = virtual_size.div_ceil(chunk_size);
            if chunks > MAX_CHUNKS {
                return Err(HeaderError::TooManyChunks {
                    chunks,
                    max: MAX_CHUNKS,
                });
            }
            needed_size(
                RegionKind::Table,
                table_region,
                table_bytes_needed(virtual_size, chunk_size),
            )?;
            let unit = raw.storage_grow_unit.get();
            if unit < chunk_size || !is_aligned(unit, SECTOR_SIZE) || unit > MAX_STORAGE_GROW_UNIT {
                return Err(HeaderError::BadStorageGrowUnit { unit, chunk_size });
            }
            Some(TableLayout {
                region: table_region,
                chunk_size,
                chunks,
                storage_grow_unit: unit,
            })
        }
        None => None,
    };

    // Journal.
    let journal_size = raw.journal_size.get();
    let journal = region(
        RegionKind::Journal,
        raw.journal_offset.get(),
        journal_size,
        journal_size != 0,
    )?;

    // Regions: after the header, disjoint, inside the file.
    let header = Region {
        offset: 0,
        len: header_size,
    };
    let regions = [
        (RegionKind::Header, Some(header)),
        (RegionKind::Bitmap, bitmap),
        (RegionKind::Journal, journal),
        (RegionKind::Table, table.map(|t| t.region)),
    ];
    let mut metadata_end = header_size;
    for (i, (kind_a, a)) in regions.iter().enumerate() {
        let Some(a) = a else { continue };
        metadata_end = metadata_end.max(a.end());
        if a.end() > file_len {
            return Err(HeaderError::RegionBeyondFile {
                region: *kind_a,
                end: a.end(),
                file_len,
            });
        }
        for (kind_b, b) in regions.iter().skip(i.saturating_add(1)) {
            if let Some(b) = b {
                if a.offset < b.end() && b.offset < a.end() {
                    return Err(HeaderError::RegionOverlap {
                        a: *kind_a,
                        b: *kind_b,
                    });
                }
            }
        }
    }

    let separate_data_file = !data_file.is_empty();
    let data_offset = raw.data_offset.get();
    let data_floor = if separate_data_file { 0 } else { metadata_end };
    if !is_aligned(data_offset, PAGE_SIZE)
        || data_offset < data_floor
        || data_offset.checked_add(virtual_size).is_none()
    {
        return Err(HeaderError::BadDataOffset {
            offset: data_offset,
            metadata_end: data_floor,
        });
    }
    // The farthest byte guest data can ever reach must be addressable, so that no offset
    // computed from a table entry or a growth step can wrap around onto the metadata.
    let data_reach = match table {
        Some(t) => (MAX_PHYSICAL_CHUNK + 1)
            .checked_mul(t.chunk_size)
            .and_then(|end| end.checked_add(t.storage_grow_unit)),
        None => Some(virtual_size),
    };
    let data_end = data_reach.and_then(|reach| data_offset.checked_add(reach));
    if data_end.is_none_or(|end| end > MAX_STORAGE_LEN) {
        return Err(HeaderError::DataBeyondAddressable {
            offset: data_offset,
            max: MAX_STORAGE_LEN,
        });
    }

    let stable_journal_epoch = raw.stable_journal_epoch.get();
    if stable_journal_epoch > super::journal::MAX_JOURNAL_EPOCH {
        return Err(HeaderError::BadJournalEpoch {
            epoch: stable_journal_epoch,
        });
    }

    // Copy-on-read and prefetch tuning.
    let prefetch_enabled = raw.prefetch_start_delay.get() > 0;
    let slots = u64::from(raw.num_prefetch_slots.get());
    tuning(
        "num_prefetch_slots",
        slots,
        slots <= MAX_PREFETCH_SLOTS && (!prefetch_enabled || slots >= 1),
    )?;
    let unit = raw.bytes_per_prefetch.get();
    tuning(
        "bytes_per_prefetch",
        unit,
        is_aligned(unit, SECTOR_SIZE)
            && unit <= MAX_BYTES_PER_PREFETCH
            && (!prefetch_enabled || unit > 0),
    )?;
    for (field, value) in [
        (
            "prefetch_read_throughput_measure_time",
            raw.prefetch_read_throughput_measure_time.get(),
        ),
        (
            "prefetch_write_throughput_measure_time",
            raw.prefetch_write_throughput_measure_time.get(),
        ),
        ("prefetch_throttle_time", raw.prefetch_throttle_time.get()),
    ] {
        tuning(field, value, value <= MAX_TUNING_TIME_MS)?;
    }
    for (field, min, max) in [
        (
            "prefetch_min_read_throughput",
            raw.prefetch_min_read_throughput.get(),
            raw.prefetch_max_read_throughput.get(),
        ),
        (
            "prefetch_min_write_throughput",
            raw.prefetch_min_write_throughput.get(),
            raw.prefetch_max_write_throughput.get(),
        ),
    ] {
        tuning(field, min, max == 0 || min <= max)?;
    }

    Ok(ImageLayout {
        header_size,
        virtual_size,
        block_size,
        data_offset,
        separate_data_file,
        base,
        journal,
        table,
        metadata_end,
        stable_journal_epoch,
        clean_shutdown,
        copy_on_read,
        chunks_relocated,
        base_fully_prefetched,
        need_zero_init,
    })
}

/// Views and validates the header at the start of `bytes`, the first bytes of a file of
/// `file_len` bytes.
pub fn parse(bytes: &[u8], file_len: u64) -> Result<(&RawHeader, ImageLayout), HeaderError> {
    let raw = RawHeader::view(bytes).ok_or(HeaderError::TooShort {
        len: bytes.len() as u64,
        needed: RAW_HEADER_LEN as u64,
    })?;
    let layout = validate(raw, file_len)?;
    Ok((raw, layout))
}
