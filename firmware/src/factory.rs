//! A factory image kept as an FVD image instead of raw blocks: a compact FVD image (storage
//! only for the chunks written) made in a partition from core's create bytes, filled once
//! through core's engine, then opened read-only as the base the overlay stands on. The
//! overlay's reads of it go through that second engine (core's blocking driver is itself
//! a byte stream), so no format rule lives here either.

use crate::driver::{write_new_image, DriverError, Geometry, PAGES};
use crate::medium::{Extent, Medium, Partition};
use fvd_core::blocking::{BlockingDisk, NoFile};
use fvd_core::fvd::create::{metadata_len, plan, CreateOptions};

/// The factory image opened through core's engine.
pub type FactoryDisk<'d, 'm, D> =
    BlockingDisk<&'m mut [u8], Partition<'d, D>, NoFile, NoFile, PAGES>;

/// Bytes per table entry of the factory image: its smallest chunk, so that a sparse
/// volume (a FAT with few files) takes little storage.
pub const FACTORY_CHUNK: u64 = 4096;

/// Makes an empty compact FVD image of `virtual_size` bytes, with no base, in `extent` of
/// `medium` (same cut-safe order as the overlay's create).
pub fn create_factory<D: Medium>(
    medium: &D,
    extent: Extent,
    virtual_size: u64,
    geometry: Geometry,
) -> Result<(), DriverError> {
    let options = CreateOptions {
        virtual_size,
        compact_image: true,
        block_size: Some(geometry.block_size),
        chunk_size: Some(FACTORY_CHUNK.max(geometry.block_size)),
        storage_grow_unit: Some(FACTORY_CHUNK.max(geometry.block_size)),
        journal_size: Some(geometry.journal_size),
        ..CreateOptions::default()
    };
    let header = plan(&options).map_err(DriverError::Geometry)?;
    write_new_image(medium, extent, &header, metadata_len(&header))
}

/// Opens the factory image in `extent` of `medium`: writable to fill it at the factory,
/// read-only as the overlay's base.
pub fn open_factory<'d, 'm, D: Medium>(
    medium: &'d D,
    extent: Extent,
    memory: &'m mut [u8],
    cache_bytes: usize,
    writable: bool,
) -> Result<FactoryDisk<'d, 'm, D>, DriverError> {
    let image = Partition::new(medium, extent);
    Ok(BlockingDisk::open(
        memory,
        image,
        NoFile,
        NoFile,
        writable,
        cache_bytes,
    )?)
}
