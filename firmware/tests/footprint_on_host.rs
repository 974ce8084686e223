//! The footprint binaries' exercises work (so their sizes measure code that runs): the
//! medium alone, the overlay driver over it, and the driver with core's check; and the
//! engine memory they give is what core asks for that overlay.

use fvd_firmware::footprint::{self, CACHE_BYTES, ENGINE_BYTES, LAYOUT, MEDIUM_BYTES};
use fvd_firmware::ram::RamMedium;

#[test]
fn the_footprint_exercises_succeed_with_the_memory_they_are_given() {
    let mut bytes = vec![0u8; MEDIUM_BYTES];
    assert!(footprint::exercise_medium(&mut bytes));
    let mut bytes = vec![0u8; MEDIUM_BYTES];
    let mut engine = vec![0u8; ENGINE_BYTES];
    footprint::driver(&mut bytes, &mut engine).unwrap();
    let start = (LAYOUT.overlay.first as usize) * 512;
    let header = bytes[start..start + 4096].to_vec();
    let need = fvd_core::engine::memory_needed(&header, CACHE_BYTES, 0);
    assert_eq!(need, ENGINE_BYTES, "core asks {need}");
    let mut bytes = vec![0u8; MEDIUM_BYTES];
    let mut check = vec![0u8; fvd_core::check::fvd::MIN_MEMORY];
    assert!(footprint::exercise_driver_and_check(
        &mut bytes,
        &mut engine,
        &mut check
    ));
}

/// Engine memory core asks for the footprint overlay with `block_size` copy-on-write
/// blocks and `cache` bytes of metadata cache.
fn engine_memory(block_size: u64, cache: usize) -> usize {
    let mut bytes = vec![0u8; MEDIUM_BYTES];
    let medium = RamMedium::<0>::new(&mut bytes);
    let geometry = fvd_firmware::Geometry {
        block_size,
        ..footprint::GEOMETRY
    };
    fvd_firmware::create(&medium, LAYOUT, geometry).unwrap();
    drop(medium);
    let start = (LAYOUT.overlay.first as usize) * 512;
    fvd_core::engine::memory_needed(&bytes[start..start + 4096], cache, 0)
}

#[test]
fn the_engine_fits_16_kib_of_ram_only_with_small_blocks_and_the_least_cache() {
    for block_size in [512u64, 1024, 4096] {
        for cache in [0usize, 4096, 16384] {
            println!(
                "block {block_size} B, cache {cache} B: engine memory {} B",
                engine_memory(block_size, cache)
            );
        }
    }
    // Header area, scratch, the least cache (4 pages) and two 512-byte bounce blocks.
    assert_eq!(engine_memory(512, 0), 15_360);
    assert!(engine_memory(4096, 0) > 16 << 10);
}
