//! The overlay driver: a medium carved into a base (the factory image, raw or FVD) and an
//! overlay partition holding an FVD image over it, presented as a block device of
//! 512-byte blocks. The base is usually a partition of the same medium, but may be any
//! byte stream (a partition of another medium, a host file, or a read-only FVD image
//! opened by core's blocking driver). Everything about the format is core's: the
//! overlay's bytes come from `fvd::create`, reads, writes, flushes and journal replay from
//! core's engine through its blocking loop. This module only lays the partitions out and
//! moves blocks.

use crate::medium::{Extent, Medium, Partition, BLOCK};
use core::cell::RefCell;
use embedded_io::{ErrorKind, Read, Seek, SeekFrom, Write};
use embedded_sdmmc::{Block, BlockCount, BlockDevice, BlockIdx};
use fvd_core::blocking::{BlockingDisk, BlockingError, NoFile};
use fvd_core::engine::Stats;
use fvd_core::fvd::create::{
    initial_bytes_at, metadata_len, plan, BaseSpec, CreateOptions, GeometryError,
};
use fvd_core::fvd::RawHeader;

/// Name of the base recorded in the overlay's header (a host reading the overlay as a
/// file finds the base beside it under this name).
pub const BASE_NAME: &[u8] = b"base.img";

/// Metadata cache pages of the engine.
pub const PAGES: usize = 16;

/// Most blocks one engine request moves: a multi-block read or write goes through a
/// bounce buffer of this many blocks (4 KiB of stack) in runs.
pub const RUN_BLOCKS: usize = 8;

/// Where the base and the overlay live on the medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The factory image (read-only).
    pub base: Extent,
    /// The FVD overlay.
    pub overlay: Extent,
}

/// How the overlay is made when it is created or reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per bitmap bit (copy-on-write unit).
    pub block_size: u64,
    /// Journal bytes (raised by core to what a commit needs).
    pub journal_size: u64,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            block_size: 4096,
            journal_size: 64 << 10,
        }
    }
}

/// Why a driver call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriverError {
    /// The partitions overlap, are empty or lie past the end of the medium.
    BadLayout,
    /// Core refused the overlay's geometry.
    Geometry(GeometryError),
    /// The overlay needs `need` bytes but its partition holds `have`.
    OverlayTooSmall {
        /// Bytes the image needs (metadata and every guest block).
        need: u64,
        /// Bytes of the partition.
        have: u64,
    },
    /// The medium failed.
    Medium,
    /// Core's engine failed (open, request, or an I/O error it saw).
    Engine(BlockingError),
    /// A block past the end of the virtual disk.
    OutOfRange,
    /// A request while another one still holds the driver (re-entrant use).
    Busy,
}

impl From<BlockingError> for DriverError {
    fn from(e: BlockingError) -> Self {
        DriverError::Engine(e)
    }
}

/// The format of the factory image the overlay stands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseFormat {
    /// Raw blocks (a FAT volume as it is).
    Raw,
    /// An FVD image (itself opened read-only by core's blocking driver).
    Fvd,
}

impl BaseFormat {
    fn name(self) -> &'static [u8] {
        match self {
            BaseFormat::Raw => b"raw",
            BaseFormat::Fvd => b"fvd",
        }
    }
}

/// What the overlay's header records about its base: the virtual disk's size (the base's
/// virtual size) and the base's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseSpecOf {
    /// Bytes of the base as a disk (its virtual size when it is an image).
    pub len: u64,
    /// Raw or FVD.
    pub format: BaseFormat,
}

type Disk<'d, 'm, D, B> = BlockingDisk<&'m mut [u8], Partition<'d, D>, NoFile, B, PAGES>;

/// The virtual disk: the base with the overlay's writes on top. `B` is what base reads
/// are served from: by default a partition of the same medium.
pub struct OverlayDisk<'d, 'm, D: Medium, B = Partition<'d, D>> {
    medium: &'d D,
    overlay: Extent,
    base: BaseSpecOf,
    disk: RefCell<Disk<'d, 'm, D, B>>,
}

fn check_layout<D: Medium>(medium: &D, layout: &Layout) -> Result<(), DriverError> {
    let blocks = medium.num_blocks().map_err(|_| DriverError::Medium)?.0;
    let fits = |e: &Extent| !e.is_empty() && e.end().is_some_and(|end| end <= blocks);
    if !fits(&layout.base) || !fits(&layout.overlay) || layout.base.overlaps(&layout.overlay) {
        return Err(DriverError::BadLayout);
    }
    Ok(())
}

/// Writes the overlay's first block (the header's) from core's create bytes, or zeros.
fn write_block<D: Medium>(
    image: &mut Partition<'_, D>,
    offset: u64,
    bytes: &[u8; Block::LEN],
) -> Result<(), DriverError> {
    image
        .seek(SeekFrom::Start(offset))
        .map_err(|_| DriverError::Medium)?;
    image.write_all(bytes).map_err(|_| DriverError::Medium)
}

/// Makes a new overlay over the base in the overlay partition. The header block is
/// zeroed first and written last, each step flushed: a cut leaves either the old image,
/// an overlay with no header (empty: [`OverlayDisk::open_or_create`] makes it again) or
/// the new image, never a header over half-written metadata.
pub fn create<D: Medium>(
    medium: &D,
    layout: Layout,
    geometry: Geometry,
) -> Result<(), DriverError> {
    check_layout(medium, &layout)?;
    let base = BaseSpecOf {
        len: layout.base.len(),
        format: BaseFormat::Raw,
    };
    create_over(medium, layout.overlay, base, geometry)
}

/// Makes a new overlay in `overlay` of `medium` over a base described by `base` (which
/// may live anywhere), with the same cut-safe order as [`create`].
pub fn create_over<D: Medium>(
    medium: &D,
    overlay: Extent,
    base: BaseSpecOf,
    geometry: Geometry,
) -> Result<(), DriverError> {
    let options = CreateOptions {
        virtual_size: base.len,
        base: Some(BaseSpec {
            name: BASE_NAME,
            format: base.format.name(),
            size: base.len,
        }),
        block_size: Some(geometry.block_size),
        journal_size: Some(geometry.journal_size),
        ..CreateOptions::default()
    };
    let header = plan(&options).map_err(DriverError::Geometry)?;
    let need = header
        .data_offset
        .get()
        .checked_add(base.len)
        .ok_or(DriverError::BadLayout)?;
    write_new_image(medium, overlay, &header, need)
}

/// Writes a new image planned as `header` into `extent` of `medium`, which must hold
/// `need` bytes: the header block zeroed first and written last, each step flushed.
pub(crate) fn write_new_image<D: Medium>(
    medium: &D,
    extent: Extent,
    header: &RawHeader,
    need: u64,
) -> Result<(), DriverError> {
    let blocks = medium.num_blocks().map_err(|_| DriverError::Medium)?.0;
    if extent.is_empty() || extent.end().is_none_or(|end| end > blocks) {
        return Err(DriverError::BadLayout);
    }
    let metadata = metadata_len(header);
    let have = extent.len();
    if need.max(metadata) > have {
        return Err(DriverError::OverlayTooSmall {
            need: need.max(metadata),
            have,
        });
    }
    let mut image = Partition::new(medium, extent);
    let mut bytes = [0u8; Block::LEN];
    write_block(&mut image, 0, &bytes)?;
    image.flush().map_err(|_| DriverError::Medium)?;
    let mut offset = BLOCK;
    while offset < metadata {
        initial_bytes_at(header, offset, &mut bytes);
        write_block(&mut image, offset, &bytes)?;
        offset += BLOCK;
    }
    image.flush().map_err(|_| DriverError::Medium)?;
    initial_bytes_at(header, 0, &mut bytes);
    write_block(&mut image, 0, &bytes)?;
    image.flush().map_err(|_| DriverError::Medium)
}

impl<'d, 'm, D: Medium> OverlayDisk<'d, 'm, D> {
    /// Opens the overlay (replaying its journal after a cut) with `memory` for the engine
    /// (see [`fvd_core::engine::memory_needed`]) and `cache_bytes` of metadata cache.
    pub fn open(
        medium: &'d D,
        layout: Layout,
        memory: &'m mut [u8],
        cache_bytes: usize,
    ) -> Result<Self, DriverError> {
        check_layout(medium, &layout)?;
        let base = Partition::new(medium, layout.base);
        let spec = BaseSpecOf {
            len: layout.base.len(),
            format: BaseFormat::Raw,
        };
        Self::open_over(medium, layout.overlay, base, spec, memory, cache_bytes)
    }

    /// Opens the overlay, first creating it when its partition starts with an empty
    /// block (a new medium, or a create or reset the power cut interrupted). Any other
    /// content that is not a valid image is an error, never silently replaced.
    pub fn open_or_create(
        medium: &'d D,
        layout: Layout,
        geometry: Geometry,
        memory: &'m mut [u8],
        cache_bytes: usize,
    ) -> Result<Self, DriverError> {
        check_layout(medium, &layout)?;
        if overlay_is_blank(medium, layout.overlay)? {
            create(medium, layout, geometry)?;
        }
        Self::open(medium, layout, memory, cache_bytes)
    }
}

/// Whether the overlay partition starts with an all-zero block (no image yet).
fn overlay_is_blank<D: Medium>(medium: &D, overlay: Extent) -> Result<bool, DriverError> {
    let mut first = [Block::new()];
    medium
        .read(&mut first, BlockIdx(overlay.first))
        .map_err(|_| DriverError::Medium)?;
    Ok(first[0].contents.iter().all(|b| *b == 0))
}

impl<'d, 'm, D, B> OverlayDisk<'d, 'm, D, B>
where
    D: Medium,
    B: Read + Seek + embedded_io::ErrorType<Error = ErrorKind>,
{
    /// Opens the overlay in `overlay` of `medium` over `base`, a byte stream anywhere (a
    /// partition of another medium, a host file, a read-only image); `spec` describes the
    /// base for a later [`OverlayDisk::factory_reset`].
    pub fn open_over(
        medium: &'d D,
        overlay: Extent,
        base: B,
        spec: BaseSpecOf,
        memory: &'m mut [u8],
        cache_bytes: usize,
    ) -> Result<Self, DriverError> {
        let image = Partition::new(medium, overlay);
        let disk = BlockingDisk::open(memory, image, NoFile, base, true, cache_bytes)?;
        Ok(OverlayDisk {
            medium,
            overlay,
            base: spec,
            disk: RefCell::new(disk),
        })
    }

    /// [`OverlayDisk::open_over`], first creating the overlay over `spec` when its
    /// partition starts with an empty block.
    pub fn open_or_create_over(
        medium: &'d D,
        overlay: Extent,
        base: B,
        spec: BaseSpecOf,
        geometry: Geometry,
        memory: &'m mut [u8],
        cache_bytes: usize,
    ) -> Result<Self, DriverError> {
        if overlay_is_blank(medium, overlay)? {
            create_over(medium, overlay, spec, geometry)?;
        }
        Self::open_over(medium, overlay, base, spec, memory, cache_bytes)
    }

    /// Factory reset: drops the engine (nothing written back) and makes a new, empty
    /// overlay in its place, discarding every write; the base is untouched. Open again to
    /// use the disk.
    pub fn factory_reset(self, geometry: Geometry) -> Result<(), DriverError> {
        let OverlayDisk {
            medium,
            overlay,
            base,
            ..
        } = self;
        create_over(medium, overlay, base, geometry)
    }

    /// Makes every completed write durable on the medium.
    pub fn flush(&self) -> Result<(), DriverError> {
        let mut disk = self.disk.try_borrow_mut().map_err(|_| DriverError::Busy)?;
        Ok(disk.flush()?)
    }

    /// What the engine did so far.
    pub fn stats(&self) -> Stats {
        self.disk
            .try_borrow()
            .map(|d| d.engine().stats())
            .unwrap_or_default()
    }

    /// The overlay's blocks on its medium.
    pub fn overlay(&self) -> Extent {
        self.overlay
    }

    /// The base the overlay stands on.
    pub fn base(&self) -> BaseSpecOf {
        self.base
    }

    /// Closes the image (metadata written back, marked clean); `true` when it was
    /// marked clean. Dropping the driver instead is a power cut as far as the overlay is
    /// concerned: the next open replays the journal.
    pub fn close(self) -> Result<bool, DriverError> {
        let (_, _, _, clean) = self.disk.into_inner().close()?;
        Ok(clean)
    }

    /// Bytes of the virtual disk (the overlay header's virtual size).
    fn size(&self) -> Result<u64, DriverError> {
        let disk = self.disk.try_borrow().map_err(|_| DriverError::Busy)?;
        Ok(disk.engine().virtual_size().unwrap_or(0))
    }

    fn span(&self, blocks: usize, start: BlockIdx) -> Result<u64, DriverError> {
        let size = self.size()?;
        let offset = u64::from(start.0) * BLOCK;
        let end = (blocks as u64)
            .checked_mul(BLOCK)
            .and_then(|len| offset.checked_add(len))
            .ok_or(DriverError::OutOfRange)?;
        if end > size {
            return Err(DriverError::OutOfRange);
        }
        Ok(offset)
    }
}

impl<D, B> BlockDevice for OverlayDisk<'_, '_, D, B>
where
    D: Medium,
    B: Read + Seek + embedded_io::ErrorType<Error = ErrorKind>,
{
    type Error = DriverError;

    /// One engine request per run of up to [`RUN_BLOCKS`] blocks (through a bounce
    /// buffer: the blocks are not one byte slice); a single block goes straight through.
    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), DriverError> {
        let mut offset = self.span(blocks.len(), start)?;
        let mut disk = self.disk.try_borrow_mut().map_err(|_| DriverError::Busy)?;
        if let [block] = blocks {
            return Ok(disk.read(offset, &mut block.contents)?);
        }
        let mut bounce = [0u8; RUN_BLOCKS * Block::LEN];
        for run in blocks.chunks_mut(RUN_BLOCKS) {
            let bytes = bounce
                .get_mut(..run.len() * Block::LEN)
                .ok_or(DriverError::OutOfRange)?;
            disk.read(offset, bytes)?;
            for (block, from) in run.iter_mut().zip(bytes.chunks_exact(Block::LEN)) {
                block.contents.copy_from_slice(from);
            }
            offset += bytes.len() as u64;
        }
        Ok(())
    }

    /// Like `read`: one engine request per run of up to [`RUN_BLOCKS`] blocks.
    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), DriverError> {
        let mut offset = self.span(blocks.len(), start)?;
        let mut disk = self.disk.try_borrow_mut().map_err(|_| DriverError::Busy)?;
        if let [block] = blocks {
            return Ok(disk.write(offset, &block.contents)?);
        }
        let mut bounce = [0u8; RUN_BLOCKS * Block::LEN];
        for run in blocks.chunks(RUN_BLOCKS) {
            let bytes = bounce
                .get_mut(..run.len() * Block::LEN)
                .ok_or(DriverError::OutOfRange)?;
            for (block, to) in run.iter().zip(bytes.chunks_exact_mut(Block::LEN)) {
                to.copy_from_slice(&block.contents);
            }
            disk.write(offset, bytes)?;
            offset += bytes.len() as u64;
        }
        Ok(())
    }

    fn num_blocks(&self) -> Result<BlockCount, DriverError> {
        let blocks = self.size()? / BLOCK;
        Ok(BlockCount(u32::try_from(blocks).unwrap_or(u32::MAX)))
    }
}
