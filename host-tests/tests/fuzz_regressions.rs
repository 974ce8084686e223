//! Rules the fuzz targets (`fuzz/`, `fvd_host::testing::fuzz`) found broken, each with the smallest
//! image that showed it. The crashing inputs themselves are kept in `fuzz/seeds/` (named
//! `crash-*`) and run by `tests/fuzz_seeds.rs`.

mod common;

use common::*;
use fvd_core::engine::{Corruption, OpenError};
use fvd_core::fvd::create::{plan, CreateOptions};
use fvd_core::fvd::journal::SectorBuilder;
use fvd_core::fvd::journal::{MAX_JOURNAL_EPOCH, MAX_WRITABLE_EPOCH};
use fvd_core::fvd::{parse, RawHeader};
use fvd_host::host::driver::DriverError;
use fvd_host::testing::fuzz::sparse::SparseStorage;
use fvd_host::testing::fuzz::{open, options};
use fvd_host::testing::newimage::initial_metadata;
use std::fs;

/// A small plain FVD image with `stable_journal_epoch` set to `epoch`, dirty or clean.
fn image_at_epoch(epoch: u64, clean: bool) -> Vec<u8> {
    let mut header = plan(&CreateOptions {
        virtual_size: 64 << 10,
        journal_size: Some(4096),
        ..Default::default()
    })
    .unwrap();
    header.stable_journal_epoch.set(epoch);
    header.clean_shutdown.set(u32::from(clean));
    initial_metadata(&header)
}

#[test]
fn no_writer_moves_the_journal_epoch_past_two_to_the_63() {
    for epoch in [
        MAX_WRITABLE_EPOCH - 1,
        MAX_WRITABLE_EPOCH,
        MAX_WRITABLE_EPOCH + 1,
        MAX_JOURNAL_EPOCH,
    ] {
        for clean in [true, false] {
            let bytes = image_at_epoch(epoch, clean);
            let storage = SparseStorage::new(&bytes, None);
            match open(storage.clone(), options(true)) {
                Ok(mut writer) => {
                    assert!(
                        epoch <= MAX_WRITABLE_EPOCH,
                        "epoch {epoch} opened for writing"
                    );
                    writer.write(0, &[0xAB; 4096]).unwrap();
                    writer.flush().unwrap();
                    let (after, closed_clean) = writer.close().unwrap();
                    assert!(closed_clean);
                    let image = after.image.to_vec();
                    let (header, layout) = parse(&image, image.len() as u64)
                        .unwrap_or_else(|e| panic!("epoch {epoch}: the writer left {e}"));
                    assert!(layout.stable_journal_epoch <= MAX_JOURNAL_EPOCH);
                    assert_eq!(header.clean_shutdown.get(), 1);
                    let mut reader = open(after, options(false)).unwrap();
                    assert_eq!(reader.read(0, 4096).unwrap(), vec![0xAB; 4096]);
                }
                Err(DriverError::Open(OpenError::EpochExhausted { epoch: found })) => {
                    assert!(epoch > MAX_WRITABLE_EPOCH, "epoch {epoch} refused");
                    assert_eq!(found, epoch);
                    // Still valid, and readable.
                    let mut reader = open(storage, options(false)).unwrap();
                    assert_eq!(reader.read(0, 512).unwrap(), vec![0; 512]);
                }
                Err(e) => panic!("epoch {epoch}: {e}"),
            }
        }
    }
}

#[test]
fn a_repair_that_would_move_the_epoch_past_two_to_the_63_writes_nothing() {
    let dir = scratch();
    let image = dir.path().join("e.fvd");
    let bytes = image_at_epoch(MAX_JOURNAL_EPOCH, false);
    RawHeader::view(&bytes).unwrap();
    fs::write(&image, &bytes).unwrap();
    let run = status(
        dir.path(),
        &["check", "-r", "all", "--output", "json", "e.fvd"],
        0,
    );
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_contains(
        report["repair-refused"].as_str().unwrap(),
        "leaves no room to move the journal epoch on",
    );
    assert_eq!(fs::read(&image).unwrap(), bytes, "a refused repair wrote");
    let err = fails(dir.path(), &["io", "-c", "write 0 4k", "e.fvd"]);
    assert_contains(&err, "can only be opened read-only");
    ok(dir.path(), &["io", "-r", "-c", "read -P 0 0 4k", "e.fvd"]);
}

/// A dirty compact image over a base whose only journal sector holds a good bitmap record
/// (block 0 in the image, so the read-only overlay visits bitmap page 0) and one at
/// `byte_offset` (two bytes).
fn image_with_bitmap_record(byte_offset: u64) -> (Vec<u8>, Vec<u8>) {
    let size = 256 << 10;
    let mut header = plan(&CreateOptions {
        virtual_size: size,
        compact_image: true,
        chunk_size: Some(16 << 10),
        block_size: Some(4096),
        journal_size: Some(8192),
        base: Some(fvd_core::fvd::create::BaseSpec {
            name: b"base",
            format: b"raw",
            size,
        }),
        ..Default::default()
    })
    .unwrap();
    header.clean_shutdown.set(0);
    header.stable_journal_epoch.set(3);
    let mut bytes = initial_metadata(&header);
    let mut sector = vec![0u8; 512];
    let mut builder = SectorBuilder::new(&mut sector).unwrap();
    assert_eq!(builder.push_bitmap(0, &[0x01]), 1);
    assert_eq!(builder.push_bitmap(byte_offset, &[0xFF, 0xFF]), 2);
    builder.finish(3, 0);
    let at = header.journal_offset.get() as usize;
    bytes[at..at + 512].copy_from_slice(&sector);
    (bytes, vec![0x77; size as usize])
}

#[test]
fn a_journal_record_whose_end_wraps_is_corruption_not_an_overflow() {
    for byte_offset in [u64::MAX - 1, u64::MAX, 4095, 1 << 40] {
        let (bytes, base) = image_with_bitmap_record(byte_offset);
        let storage = SparseStorage::new(&bytes, Some(&base));
        // Read-only: the journal is laid over the bitmap; the bad record is skipped.
        let mut reader = open(storage.clone(), options(false)).unwrap();
        assert_eq!(reader.read(0, 4096).unwrap(), vec![0; 4096]);
        assert_eq!(reader.read(4096, 4096).unwrap(), vec![0x77; 4096]);
        let map = reader.map(4096, 252 << 10).unwrap();
        assert_eq!(map.mapping, fvd_core::engine::Mapping::Base);
        // Read-write: replay refuses the record.
        match open(storage, options(true)) {
            Err(DriverError::Open(OpenError::Corrupt(Corruption::BadJournalRecord {
                sector: 0,
            }))) => {}
            Err(e) => panic!("offset {byte_offset}: {e}"),
            Ok(_) => panic!("offset {byte_offset}: a record past the bitmap was replayed"),
        }
    }
}

/// A dirty compact image at `epoch` whose chunk 0 maps physical chunk 0, with an intact
/// journal sector of epoch `epoch + 1` that would map chunk 1 onto physical chunk 0 too
/// (and, with `unreachable`, an intact sector of epoch 2^64 - 1, which no header reaches).
fn image_with_future_sector(epoch: u64, unreachable: bool) -> Vec<u8> {
    let mut header = plan(&CreateOptions {
        virtual_size: 64 << 10,
        compact_image: true,
        chunk_size: Some(4096),
        storage_grow_unit: Some(4096),
        journal_size: Some(4096),
        ..Default::default()
    })
    .unwrap();
    header.clean_shutdown.set(0);
    header.stable_journal_epoch.set(epoch);
    let mut bytes = initial_metadata(&header);
    let table = header.table_offset.get() as usize;
    bytes[table..table + 4].copy_from_slice(&0u32.to_le_bytes());
    let mut sector = vec![0u8; 512];
    let mut builder = SectorBuilder::new(&mut sector).unwrap();
    assert_eq!(builder.push_table(1, &0u32.to_le_bytes()), 1);
    builder.finish(epoch + 1, 3);
    let at = header.journal_offset.get() as usize + 3 * 512;
    bytes[at..at + 512].copy_from_slice(&sector);
    if unreachable {
        let mut sector = vec![0u8; 512];
        let mut builder = SectorBuilder::new(&mut sector).unwrap();
        assert_eq!(builder.push_table(2, &1u32.to_le_bytes()), 1);
        builder.finish(u64::MAX, 1);
        let at = header.journal_offset.get() as usize + 512;
        bytes[at..at + 512].copy_from_slice(&sector);
    }
    let data = header.data_offset.get() as usize;
    bytes.resize(data + 4096, 0x5A);
    bytes
}

fn corruptions(dir: &std::path::Path, file: &str) -> u64 {
    let run = status(dir, &["check", "--output", "json", file], 0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    // Left out when zero, as qemu-img leaves it out.
    report.get("corruptions").map_or(0, |n| n.as_u64().unwrap())
}

#[test]
fn no_writer_makes_a_journal_sector_of_any_reachable_epoch_current() {
    // Found by fuzz target check twice: sector epochs above 2^62 were not honoured when
    // the epoch moved on (a header can hold any epoch up to 2^63), and then an intact
    // sector of an unreachable epoch hid every lower one.
    for unreachable in [false, true] {
        for epoch in [7, 1 << 62, (1 << 62) + 1, MAX_WRITABLE_EPOCH - 2] {
            let dir = scratch();
            let bytes = image_with_future_sector(epoch, unreachable);
            fs::write(dir.path().join("a.fvd"), &bytes).unwrap();
            fs::write(dir.path().join("b.fvd"), &bytes).unwrap();
            assert_eq!(corruptions(dir.path(), "a.fvd"), 0, "epoch {epoch}");
            // A repair moves the epoch above the sector.
            ok(dir.path(), &["check", "-r", "all", "a.fvd"]);
            assert_eq!(
                corruptions(dir.path(), "a.fvd"),
                0,
                "epoch {epoch}, repaired"
            );
            // So does a read-write open (replay) and its close.
            ok(dir.path(), &["io", "-c", "read -P 0x5a 0 4k", "b.fvd"]);
            assert_eq!(
                corruptions(dir.path(), "b.fvd"),
                0,
                "epoch {epoch}, reopened"
            );
            let (_, layout, _) = header_of(&dir.path().join("b.fvd"));
            assert!(layout.stable_journal_epoch > epoch + 1, "epoch {epoch}");
        }
    }
}

#[test]
fn a_journal_sector_at_the_last_epochs_leaves_the_image_read_only() {
    // The new epoch must pass the sector's, and then close must move on once more.
    let dir = scratch();
    let bytes = image_with_future_sector(MAX_WRITABLE_EPOCH, false);
    fs::write(dir.path().join("c.fvd"), &bytes).unwrap();
    let err = fails(dir.path(), &["io", "-c", "read 0 4k", "c.fvd"]);
    assert_contains(&err, "can only be opened read-only");
    assert_eq!(fs::read(dir.path().join("c.fvd")).unwrap(), bytes);
    ok(
        dir.path(),
        &["io", "-r", "-c", "read -P 0x5a 0 4k", "c.fvd"],
    );
}
