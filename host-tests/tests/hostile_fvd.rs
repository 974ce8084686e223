//! FVD images crafted to make offsets wrap, chunks repeat or the allocator run off the end
//! of the table: each must be refused with a typed error, or served without touching a
//! byte the guest did not ask to change (the hostile-input issue, bugs 1 and 4).

mod common;

use common::*;
use fvd_core::fvd::journal::SectorBuilder;
use fvd_core::fvd::{parse, ImageLayout, RawHeader};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Rewrites the header of the FVD image at `path` through `change`.
fn patch_header(path: &Path, change: impl FnOnce(&mut RawHeader)) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut bytes = vec![0u8; fvd_core::fvd::RAW_HEADER_LEN];
    file.read_exact_at(&mut bytes, 0).unwrap();
    let header = RawHeader::view_mut(&mut bytes).unwrap();
    change(header);
    file.write_all_at(&bytes, 0).unwrap();
}

/// The validated layout of the FVD image at `path` (reads only its header, so it works on
/// huge sparse files).
fn layout_of(path: &Path) -> ImageLayout {
    let file = fs::File::open(path).unwrap();
    let mut bytes = vec![0u8; fvd_core::fvd::RAW_HEADER_LEN];
    file.read_exact_at(&mut bytes, 0).unwrap();
    parse(&bytes, file.metadata().unwrap().len()).unwrap().1
}

/// Writes table entry `chunk` of the compact FVD image at `path`.
fn set_table_entry(path: &Path, chunk: u64, value: u32) {
    let table = layout_of(path).table.unwrap();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&value.to_le_bytes(), table.region.offset + 4 * chunk)
        .unwrap();
}

#[test]
fn a_storage_grow_unit_above_one_tebibyte_is_refused_by_create() {
    let dir = scratch();
    let err = fails(
        dir.path(),
        &[
            "create",
            "-f",
            "fvd",
            "-o",
            "compact_image=on,journal_size=4k,storage_grow_unit=18446744073709494272",
            "c",
            "64M",
        ],
    );
    assert_contains(&err, "storage_grow_unit");
    assert!(!dir.path().join("c").exists());
}

#[test]
fn a_header_whose_grow_unit_wraps_the_storage_length_is_refused_and_left_untouched() {
    let dir = scratch();
    create_fvd(
        dir.path(),
        &["-o", "compact_image=on,journal_size=4k", "c", "64M"],
    );
    let image = dir.path().join("c");
    patch_header(&image, |h| {
        h.storage_grow_unit.set(18_446_744_073_709_494_272);
    });
    let before = fs::read(&image).unwrap();
    let err = fails(dir.path(), &["io", "-c", "write -P 0xab 0 4k", "c"]);
    assert_contains(&err, "storage_grow_unit");
    assert_eq!(
        fs::read(&image).unwrap(),
        before,
        "a refused image must not change"
    );
}

#[test]
fn a_data_offset_that_lets_a_chunk_wrap_onto_the_header_is_refused() {
    let dir = scratch();
    create_fvd(
        dir.path(),
        &["-o", "compact_image=on,chunk_size=1M", "c", "64M"],
    );
    let image = dir.path().join("c");
    // data_offset + 0x7FFFFFFF * 1 MiB wraps to 0: entry 0x7FFFFFFF would map the header.
    let wrap = 0u64.wrapping_sub(0x7FFF_FFFF * (1 << 20));
    set_table_entry(&image, 0, 0x7FFF_FFFF);
    patch_header(&image, |h| h.data_offset.set(wrap));
    let before = fs::read(&image).unwrap();
    for command in ["read 0 4k", "write -P 0xab 0 4k"] {
        let err = fails(dir.path(), &["io", "-c", command, "c"]);
        assert_contains(&err, "data_offset");
    }
    let err = fails(dir.path(), &["check", "c"]);
    assert_contains(&err, "data_offset");
    assert_eq!(
        fs::read(&image).unwrap(),
        before,
        "a refused image must not change"
    );
}

#[test]
fn chunks_allocated_over_a_table_naming_the_last_physical_chunk_never_carry_bit_31() {
    let dir = scratch();
    create_fvd(
        dir.path(),
        &[
            "-o",
            "compact_image=on,chunk_size=4k,storage_grow_unit=4k,journal_size=0",
            "c",
            "1M",
        ],
    );
    let image = dir.path().join("c");
    let layout = layout_of(&image);
    // Chunk 0 holds the last physical chunk an entry can name (0x7FFFFFFF); the sparse
    // storage ends right after it, so every chunk below is a leaked one.
    let last = 0x7FFF_FFFFu64;
    set_table_entry(&image, 0, last as u32);
    let end = layout.chunk_end(last).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(end)
        .unwrap();
    ok(dir.path(), &["io", "-c", "write -P 0x5a 0 4k", "c"]);
    for chunk in 1..5u64 {
        let command = format!("write -P {chunk} {}k 4k", chunk * 4);
        ok(dir.path(), &["io", "-c", &command, "c"]);
    }
    let mut reads = vec!["read -P 0x5a 0 4k".to_string()];
    reads.extend((1..5u64).map(|chunk| format!("read -P {chunk} {}k 4k", chunk * 4)));
    reads.push("read -P 0 20k 4k".to_string());
    let mut args = vec!["io"];
    for read in &reads {
        args.extend(["-c", read.as_str()]);
    }
    args.push("c");
    ok(dir.path(), &args);
    let after = layout_of(&image);
    assert_eq!(after.data_offset, layout.data_offset);
    assert_eq!(
        fs::metadata(&image).unwrap().len(),
        end,
        "the storage did not grow"
    );
    // Every entry is EMPTY or a distinct physical chunk without bit 31.
    let table = after.table.unwrap();
    let mut entries = vec![0u8; 4 * table.chunks as usize];
    fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut entries, table.region.offset)
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries.chunks(4) {
        let value = u32::from_le_bytes(entry.try_into().unwrap());
        if value != u32::MAX {
            assert_eq!(value & 0x8000_0000, 0, "entry {value:#x}");
            assert!(seen.insert(value), "physical chunk {value:#x} mapped twice");
        }
    }
    assert_eq!(seen.len(), 5);
}

/// Writes `sector` into journal position `position` of the FVD image at `path`.
fn plant_journal_sector(path: &Path, position: u64, sector: &[u8]) {
    let journal = layout_of(path).journal.unwrap();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(sector, journal.offset + 512 * position)
        .unwrap();
}

/// A well-formed journal sector of `epoch` at `position` whose one table record maps
/// virtual chunk `chunk` onto physical chunk `physical`.
fn table_sector(epoch: u64, position: u64, chunk: u32, physical: u32) -> Vec<u8> {
    let mut sector = vec![0u8; 512];
    let mut builder = SectorBuilder::new(&mut sector).unwrap();
    assert_eq!(builder.push_table(chunk, &physical.to_le_bytes()), 1);
    builder.finish(epoch, position);
    sector
}

#[test]
fn repair_never_makes_a_sector_of_a_future_epoch_current() {
    let dir = scratch();
    create_fvd(
        dir.path(),
        &[
            "-o",
            "compact_image=on,chunk_size=64k,journal_size=64k",
            "c",
            "16M",
        ],
    );
    let image = dir.path().join("c");
    ok(dir.path(), &["io", "-c", "write -P 0x11 0 64k", "c"]);
    let stable = layout_of(&image).stable_journal_epoch;
    // A dirty image whose journal holds one intact sector of the epoch after the current
    // one: it maps chunk 1 onto chunk 0's physical chunk.
    patch_header(&image, |h| h.clean_shutdown.set(0));
    plant_journal_sector(&image, 0, &table_sector(stable + 1, 0, 1, 0));
    let before = ok(dir.path(), &["check", "c"]);
    ok(dir.path(), &["check", "-r", "all", "c"]);
    let after = ok(dir.path(), &["check", "c"]);
    assert_eq!(after.code, before.code);
    let repaired = layout_of(&image);
    assert!(repaired.clean_shutdown);
    assert!(
        repaired.stable_journal_epoch > stable + 1,
        "moved past the planted sector"
    );
    // Chunk 1 still reads as zeros and chunk 0 keeps its data, after a write to chunk 1.
    ok(dir.path(), &["io", "-c", "read -P 0 64k 64k", "c"]);
    ok(dir.path(), &["io", "-c", "write -P 0x22 64k 4k", "c"]);
    ok(
        dir.path(),
        &[
            "io",
            "-c",
            "read -P 0x11 0 64k",
            "-c",
            "read -P 0x22 64k 4k",
            "c",
        ],
    );
}

#[test]
fn replay_moves_the_epoch_past_every_intact_sector() {
    let dir = scratch();
    create_fvd(
        dir.path(),
        &[
            "-o",
            "compact_image=on,chunk_size=64k,journal_size=64k",
            "c",
            "16M",
        ],
    );
    let image = dir.path().join("c");
    ok(dir.path(), &["io", "-c", "write -P 0x11 0 64k", "c"]);
    let stable = layout_of(&image).stable_journal_epoch;
    patch_header(&image, |h| h.clean_shutdown.set(0));
    plant_journal_sector(&image, 5, &table_sector(stable + 3, 5, 1, 0));
    // A writable open replays (nothing current) and moves the epoch beyond stable + 3.
    ok(dir.path(), &["io", "-c", "read -P 0x11 0 64k", "c"]);
    assert!(layout_of(&image).stable_journal_epoch > stable + 3);
    ok(dir.path(), &["io", "-c", "read -P 0 64k 64k", "c"]);
}

#[test]
fn an_image_with_two_entries_naming_one_physical_chunk_is_refused_for_writing() {
    let dir = scratch();
    create_fvd(
        dir.path(),
        &["-o", "compact_image=on,chunk_size=64k", "c", "16M"],
    );
    let image = dir.path().join("c");
    ok(dir.path(), &["io", "-c", "write -P 0x11 0 64k", "c"]);
    // Chunk 5 names chunk 0's physical chunk.
    set_table_entry(&image, 5, 0);
    let before = fs::read(&image).unwrap();
    let err = fails(dir.path(), &["io", "-c", "write -P 0x55 320k 4k", "c"]);
    assert_contains(&err, "physical chunk 0");
    assert!(
        fs::read(&image).unwrap() == before,
        "a refused image must not change"
    );
    // Reading is harmless and allowed; check names the problem.
    ok(dir.path(), &["io", "-r", "-c", "read -P 0x11 0 64k", "c"]);
    let report = status(dir.path(), &["check", "c"], 2);
    assert_contains(&report.stdout, "chunk");
    // After the repair, a write to chunk 5 leaves chunk 0 alone.
    ok(dir.path(), &["check", "-r", "all", "c"]);
    ok(dir.path(), &["io", "-c", "write -P 0x55 320k 4k", "c"]);
    ok(
        dir.path(),
        &[
            "io",
            "-c",
            "read -P 0x11 0 64k",
            "-c",
            "read -P 0x55 320k 4k",
            "c",
        ],
    );
}

#[test]
fn a_replayed_record_mapping_a_chunk_onto_a_mapped_one_is_refused() {
    let dir = scratch();
    create_fvd(
        dir.path(),
        &[
            "-o",
            "compact_image=on,chunk_size=64k,journal_size=64k",
            "c",
            "16M",
        ],
    );
    let image = dir.path().join("c");
    ok(dir.path(), &["io", "-c", "write -P 0x11 0 64k", "c"]);
    let stable = layout_of(&image).stable_journal_epoch;
    // A crash left a current-epoch record that maps chunk 5 onto physical chunk 0.
    patch_header(&image, |h| h.clean_shutdown.set(0));
    plant_journal_sector(&image, 0, &table_sector(stable, 0, 5, 0));
    let err = fails(dir.path(), &["io", "-c", "write -P 0x55 320k 4k", "c"]);
    assert_contains(&err, "physical chunk 0");
    ok(dir.path(), &["io", "-r", "-c", "read -P 0x11 0 64k", "c"]);
    ok(dir.path(), &["check", "-r", "all", "c"]);
    ok(dir.path(), &["io", "-c", "write -P 0x55 320k 4k", "c"]);
    ok(
        dir.path(),
        &[
            "io",
            "-c",
            "read -P 0x11 0 64k",
            "-c",
            "read -P 0x55 320k 4k",
            "c",
        ],
    );
}

#[test]
fn a_base_whose_magic_is_damaged_is_never_read_as_raw_data() {
    let dir = scratch();
    create_fvd(dir.path(), &["base.fvd", "1M"]);
    ok(dir.path(), &["io", "-c", "write -P 0x33 0 64k", "base.fvd"]);
    create_fvd(
        dir.path(),
        &["-b", "base.fvd", "-F", "fvd", "top.fvd", "1M"],
    );
    // The header no longer says the base's format: it is probed, as qemu-img probes.
    ok(dir.path(), &["update", "top.fvd", "base_img_fmt="]);
    ok(
        dir.path(),
        &["io", "-r", "-c", "read -P 0x33 0 64k", "top.fvd"],
    );
    let base = dir.path().join("base.fvd");
    let file = fs::OpenOptions::new().write(true).open(&base).unwrap();
    file.write_all_at(b"FVX\0", 0).unwrap();
    let err = fails(dir.path(), &["io", "-r", "-c", "read 0 64k", "top.fvd"]);
    assert_contains(&err, "seems to be an FVD image whose magic is damaged");
    assert_contains(&err, "not read as raw data");
}
