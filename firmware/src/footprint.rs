//! What the footprint binaries (`fp-medium`, `fp-driver`, `fp-driver-check`) run: the same
//! small medium exercised directly, through the overlay driver (create, open with replay,
//! read, write, flush, statistics, close or factory reset), and through the driver plus
//! core's check. The flash and RAM the driver and engine cost is the size of the second
//! (or third) ELF minus the first (BENCHMARKS.md). Inputs pass through `black_box` so the
//! optimizer keeps every path.

use crate::check::check;
use crate::driver::{DriverError, Geometry, Layout, OverlayDisk};
use crate::medium::{Extent, Medium};
use crate::ram::RamMedium;
use core::hint::black_box;
use embedded_sdmmc::{Block, BlockDevice, BlockIdx};

/// Blocks of the factory image on the footprint medium.
pub const BASE_BLOCKS: u32 = 128;
/// Blocks of the overlay partition (metadata with a 16 KiB journal, and the base's size).
pub const OVERLAY_BLOCKS: u32 = 512;
/// Bytes of the footprint medium.
pub const MEDIUM_BYTES: usize = (BASE_BLOCKS + OVERLAY_BLOCKS) as usize * 512;
/// Metadata cache of the footprint driver: 4 KiB (8 pages of 512 bytes).
pub const CACHE_BYTES: usize = 4096;
/// Engine memory for 4 KiB copy-on-write blocks and a 4 KiB cache: what
/// `fvd_core::engine::memory_needed` asks for this overlay (a host test checks it):
/// 8 KiB header area, 4 KiB scratch, the cache, and two blocks of bounce space.
pub const ENGINE_BYTES: usize = 24_576;

/// The overlay's geometry: 4 KiB copy-on-write blocks, a 16 KiB journal.
pub const GEOMETRY: Geometry = Geometry {
    block_size: 4096,
    journal_size: 16 << 10,
};

/// Where the base and the overlay sit on the footprint medium.
pub const LAYOUT: Layout = Layout {
    base: Extent {
        first: 0,
        blocks: BASE_BLOCKS,
    },
    overlay: Extent {
        first: BASE_BLOCKS,
        blocks: OVERLAY_BLOCKS,
    },
};

/// The medium alone: a block read, written back changed, flushed.
pub fn exercise_medium(bytes: &mut [u8]) -> bool {
    let medium = RamMedium::<0>::new(bytes);
    let mut blocks = [Block::new()];
    let at = black_box(3u32);
    let ok = medium.read(&mut blocks, BlockIdx(at)).is_ok();
    blocks[0].contents[0] ^= 1;
    ok && medium.write(&blocks, BlockIdx(at + 1)).is_ok() && medium.flush().is_ok()
}

/// The driver exercise, with its error.
pub fn driver(bytes: &mut [u8], engine: &mut [u8]) -> Result<(), DriverError> {
    let medium = RamMedium::<0>::new(bytes);
    let disk = OverlayDisk::open_or_create(&medium, LAYOUT, GEOMETRY, engine, CACHE_BYTES)?;
    let mut blocks = [Block::new()];
    let at = black_box(3u32);
    disk.read(&mut blocks, BlockIdx(at))?;
    blocks[0].contents[0] ^= 1;
    disk.write(&blocks, BlockIdx(at + 1))?;
    disk.flush()?;
    black_box(disk.stats());
    if black_box(false) {
        disk.factory_reset(GEOMETRY)
    } else {
        disk.close().map(|_| ())
    }
}

/// The same through the overlay driver.
pub fn exercise_driver(bytes: &mut [u8], engine: &mut [u8]) -> bool {
    driver(bytes, engine).is_ok()
}

/// The driver, then core's check of the overlay in `check_memory`.
pub fn exercise_driver_and_check(
    bytes: &mut [u8],
    engine: &mut [u8],
    check_memory: &mut [u8],
) -> bool {
    if driver(&mut *bytes, engine).is_err() {
        return false;
    }
    let medium = RamMedium::<0>::new(bytes);
    check(&medium, LAYOUT, check_memory).is_ok_and(|o| o.is_clean())
}
