//! `fvd-img check` and `fvd-img update`, driven as a user would: images made with
//! `fvd-img create`, filled through the library (the engine), damaged by hand on disk, then
//! checked, repaired and re-read through the library.

mod common;

use common::{
    assert_contains, compact, create, fails, fails_with, header_of, header_str, info_data, scratch,
    status,
};
use fvd_core::fvd::journal::SectorBuilder;
use fvd_core::fvd::table::{TABLE_DIRTY, TABLE_EMPTY};
use fvd_host::host::driver::DriverOptions;
use fvd_host::host::files::open_image;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

const CHUNK: u64 = 64 << 10;

/// `fvd-img check --output json ARGS`, required to exit `code` with nothing on stderr; its
/// report.
fn check_json(cwd: &Path, args: &[&str], code: i32) -> Value {
    let mut all = vec!["check", "--output", "json"];
    all.extend_from_slice(args);
    let run = status(cwd, &all, code);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("bad JSON {e}: {}", run.stdout))
}

/// Deterministic data for `seed`: each 512-byte sector differs from the next.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i / 512) as u8))
        .collect()
}

/// Writes `(offset, seed, len)` through the engine and closes cleanly.
fn write(path: &Path, writes: &[(u64, u8, usize)]) {
    let mut d = open_image(path, DriverOptions::default()).unwrap();
    for &(offset, seed, len) in writes {
        d.write(offset, &pattern(seed, len)).unwrap();
    }
    let (_, clean) = d.close().unwrap();
    assert!(clean);
}

/// Reads `len` bytes at `offset` through the engine (read-only).
fn read(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let options = DriverOptions {
        writable: false,
        ..DriverOptions::default()
    };
    let mut d = open_image(path, options).unwrap();
    d.read(offset, len).unwrap()
}

/// Table entry `chunk`, read from the file.
fn entry(path: &Path, chunk: u64) -> u32 {
    let (_, l, _) = header_of(path);
    let mut b = [0u8; 4];
    let f = fs::File::open(path).unwrap();
    f.read_exact_at(&mut b, l.table.unwrap().region.offset + chunk * 4)
        .unwrap();
    u32::from_le_bytes(b)
}

/// Overwrites table entry `chunk` in the file.
fn set_entry(path: &Path, chunk: u64, value: u32) {
    let (_, l, _) = header_of(path);
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(
        &value.to_le_bytes(),
        l.table.unwrap().region.offset + chunk * 4,
    )
    .unwrap();
}

/// Writes `bytes` at `offset` of the file at `path`.
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Sets the header's `clean_shutdown` field on disk.
fn set_clean(path: &Path, clean: bool) {
    poke(path, 2160, &u32::from(clean).to_le_bytes());
}

/// Writes journal sector `position` of the current epoch holding one table record.
fn journal_table_record(path: &Path, position: u64, first_entry: u32, values: &[u32]) {
    let (_, l, _) = header_of(path);
    let mut sector = [0u8; 512];
    let mut builder = SectorBuilder::new(&mut sector).unwrap();
    let entries: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(builder.push_table(first_entry, &entries), values.len());
    builder.finish(l.stable_journal_epoch, position);
    poke(path, l.journal.unwrap().offset + position * 512, &sector);
}

/// The length of the file at `path`.
fn storage_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// The `kind` of each finding of a check report.
fn kinds(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn clean_images_of_every_kind_check_clean() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), pattern(7, 3 << 20)).unwrap();
    let kinds: [(&str, Vec<&str>); 9] = [
        ("plain.fvd", vec!["plain.fvd", "4M"]),
        (
            "plain-data.fvd",
            vec!["-o", "data_file=plain.data", "plain-data.fvd", "4M"],
        ),
        (
            "base.fvd",
            vec![
                "-b",
                "base.raw",
                "-F",
                "raw",
                "-o",
                "block_size=4k",
                "base.fvd",
                "4M",
            ],
        ),
        (
            "compact.fvd",
            vec!["-o", "compact_image=on,chunk_size=64k", "compact.fvd", "4M"],
        ),
        (
            "compact-base.fvd",
            vec![
                "-b",
                "base.raw",
                "-F",
                "raw",
                "-o",
                "compact_image=on,chunk_size=64k,block_size=4k",
                "compact-base.fvd",
                "4M",
            ],
        ),
        (
            "compact-data.fvd",
            vec![
                "-o",
                "compact_image=on,chunk_size=64k,data_file=compact.data",
                "compact-data.fvd",
                "4M",
            ],
        ),
        (
            "compact-nojournal.fvd",
            vec![
                "-o",
                "compact_image=on,chunk_size=64k,journal_size=0",
                "compact-nojournal.fvd",
                "4M",
            ],
        ),
        (
            "base-nojournal.fvd",
            vec![
                "-b",
                "base.raw",
                "-o",
                "journal_size=0",
                "base-nojournal.fvd",
                "4M",
            ],
        ),
        (
            "chain.fvd",
            vec![
                "-b",
                "base.fvd",
                "-F",
                "fvd",
                "-o",
                "compact_image=on",
                "chain.fvd",
            ],
        ),
    ];
    for (name, args) in &kinds {
        create(d, args);
        let fresh = status(d, &["check", name], 0);
        assert!(
            fresh
                .stdout
                .contains("No errors were found on the image.\n"),
            "{name}: {}",
            fresh.stdout
        );
        write(
            &d.join(name),
            &[
                (0, 1, 4096),
                (100 << 10, 2, 8192),
                ((1 << 20) + 512, 3, 512),
                ((3 << 20) + 4096, 4, CHUNK as usize),
            ],
        );
        let run = status(d, &["check", "-f", "fvd", name], 0);
        assert!(
            run.stdout
                .starts_with("No errors were found on the image.\n")
                || run
                    .stdout
                    .contains("\nNo errors were found on the image.\n"),
            "{name}: {}",
            run.stdout
        );
        assert!(run.stdout.contains("Image end offset: "), "{name}");
        let report = check_json(d, &[name], 0);
        assert_eq!(common::count(&report, "corruptions"), 0, "{name}: {report}");
        assert_eq!(common::count(&report, "leaks"), 0, "{name}: {report}");
        assert_eq!(report["dirty"], false, "{name}");
        assert!(
            report["allocated-clusters"].as_u64().unwrap() > 0,
            "{name}: {report}"
        );
        if name.starts_with("compact") {
            // Chunks 0, 1 (the 100k write), 16 (1M) and 48-49 (3M+4k, 64k long).
            assert_eq!(report["allocated-clusters"], 5, "{name}: {report}");
        }
        if *name == "chain.fvd" {
            // 1 MiB chunks 0, 1 and 3; 153 of the base's 512-byte blocks were written.
            assert_eq!(report["allocated-clusters"], 3, "{name}: {report}");
            assert_eq!(report["blocks-in-image"], 8 + 16 + 1 + 128, "{report}");
        }
    }
}

#[test]
fn json_report_has_qemu_img_keys() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    write(&d.join("c.fvd"), &[(0, 1, 4096), (5 * CHUNK, 2, 4096)]);
    let report = check_json(d, &["c.fvd"], 0);
    for key in [
        "image-end-offset",
        "total-clusters",
        "allocated-clusters",
        "check-errors",
        "filename",
        "format",
        "dirty",
        "journal-records",
    ] {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    // qemu-img leaves a counter out when it is zero; so does fvd-img.
    for key in [
        "fragmented-clusters",
        "corruptions",
        "leaks",
        "corruptions-fixed",
        "leaks-fixed",
    ] {
        assert!(report.get(key).is_none(), "zero {key} is printed: {report}");
    }
    let (_, l, _) = header_of(&d.join("c.fvd"));
    assert_eq!(report["filename"], "c.fvd");
    assert_eq!(report["format"], "fvd");
    assert_eq!(report["total-clusters"], 16);
    assert_eq!(report["allocated-clusters"], 2);
    assert_eq!(common::count(&report, "check-errors"), 0);
    assert_eq!(report["image-end-offset"], l.data_offset + 2 * CHUNK);
    let human = status(d, &["check", "c.fvd"], 0).stdout;
    assert!(
        human.contains("2/16 = 12.50% allocated, 0.00% fragmented, 0.00% compressed clusters"),
        "{human}"
    );
    assert!(human.contains(&format!("Image end offset: {}", l.data_offset + 2 * CHUNK)));
}

#[test]
fn what_is_not_an_image_cannot_be_checked() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("junk"), vec![0x5a; 10000]).unwrap();
    // Raw data: qemu-img's message and status 63.
    let line = fails_with(d, 63, &["check", "junk"]);
    assert_eq!(line, "fvd-img: This image format does not support checks");
    let line = fails(d, &["check", "-f", "fvd", "junk"]);
    assert!(
        line.contains("is not an FVD image: it is a raw disk image"),
        "{line}"
    );
    let line = fails(d, &["check", "missing.fvd"]);
    assert!(line.contains("Could not open 'missing.fvd'"), "{line}");
    let line = fails(d, &["check", "-f", "qcow2", "junk"]);
    assert!(line.contains("Unknown file format 'qcow2'"), "{line}");
    // A compact image whose data file is gone cannot be checked either.
    create(
        d,
        &["-o", "compact_image=on,data_file=gone.data", "x.fvd", "1M"],
    );
    fs::remove_file(d.join("gone.data")).unwrap();
    let line = fails(d, &["check", "x.fvd"]);
    assert!(line.contains("gone.data"), "{line}");
}

#[test]
fn table_entry_past_the_storage_is_corruption_and_repairable() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    write(&path, &[(0, 1, CHUNK as usize), (CHUNK, 2, 4096)]);
    set_entry(&path, 2, 5000);
    let run = status(d, &["check", "c.fvd"], 2);
    assert_contains(&run.stdout, "ERROR chunk 2 maps to physical chunk 5000");
    assert_contains(&run.stdout, "past the end of the data storage");
    assert_contains(
        &run.stdout,
        "\n1 errors were found on the image.\n\
             Data may be corrupted, or further writes to the image may corrupt it.\n",
    );
    let report = check_json(d, &["c.fvd"], 2);
    assert_eq!(report["corruptions"], 1);
    assert_eq!(kinds(&report), ["table-entry-beyond-storage"]);

    let run = status(d, &["check", "-r", "all", "c.fvd"], 0);
    assert_contains(
        &run.stdout,
        "Repairing chunk 2: unmapped, its data is lost (chunk 2 maps to physical chunk 5000",
    );
    assert_contains(&run.stdout, "    1 corruptions\n");
    assert!(
        run.stdout.ends_with(&format!(
            "No errors were found on the image.\n2/16 = 12.50% allocated, 0.00% fragmented, \
         0.00% compressed clusters\nImage end offset: {}\n",
            header_of(&path).1.data_offset + 2 * CHUNK
        )),
        "{}",
        run.stdout
    );
    assert_eq!(entry(&path, 2), TABLE_EMPTY);
    status(d, &["check", "c.fvd"], 0);
    assert_eq!(read(&path, 0, CHUNK as usize), pattern(1, CHUNK as usize));
    assert_eq!(read(&path, CHUNK, 4096), pattern(2, 4096));
    assert_eq!(read(&path, 2 * CHUNK, 4096), vec![0; 4096]);
}

#[test]
fn duplicate_mapping_names_both_chunks_and_repair_keeps_the_first() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    write(
        &path,
        &[(0, 1, 4096), (CHUNK, 2, 4096), (2 * CHUNK, 3, 4096)],
    );
    assert_eq!(
        (entry(&path, 0), entry(&path, 1), entry(&path, 2)),
        (0, 1, 2)
    );
    set_entry(&path, 2, 0);
    let run = status(d, &["check", "c.fvd"], 2);
    assert_contains(
        &run.stdout,
        "ERROR chunks 0 and 2 both map to physical chunk 0",
    );
    let report = check_json(d, &["c.fvd"], 2);
    assert_eq!(kinds(&report), ["table-entry-duplicate"]);

    // -r leaks does not touch an image with errors.
    let before = fs::read(&path).unwrap();
    let run = status(d, &["check", "-r", "leaks", "c.fvd"], 2);
    assert_contains(
        &run.stdout,
        "Leaks were not repaired because the image has errors",
    );
    assert_eq!(fs::read(&path).unwrap(), before);

    let report = check_json(d, &["-r", "all", "c.fvd"], 0);
    assert_eq!(common::count(&report, "corruptions"), 0);
    assert_eq!(report["corruptions-fixed"], 1);
    assert_eq!(entry(&path, 2), TABLE_EMPTY);
    assert_eq!(read(&path, 0, 4096), pattern(1, 4096));
    assert_eq!(read(&path, CHUNK, 4096), pattern(2, 4096));
    assert_eq!(read(&path, 2 * CHUNK, 4096), vec![0; 4096]);
    // Physical chunk 2 lay past the new frontier: the storage now ends after chunk 1.
    assert_eq!(
        storage_len(&path),
        header_of(&path).1.data_offset + 2 * CHUNK
    );
    status(d, &["check", "c.fvd"], 0);
}

#[test]
fn dirty_bit_in_a_table_entry_is_corruption() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    write(&path, &[(0, 1, 4096), (CHUNK, 2, 4096)]);
    set_entry(&path, 1, TABLE_DIRTY | 1);
    let run = status(d, &["check", "c.fvd"], 2);
    assert_contains(
        &run.stdout,
        "ERROR chunk 1: table entry 0x80000001 has the DIRTY bit (bit 31) set",
    );
    // The engine refuses the image; check -r all makes it usable again.
    assert!(open_image(&path, DriverOptions::default()).is_err());
    status(d, &["check", "-r", "all", "c.fvd"], 0);
    status(d, &["check", "c.fvd"], 0);
    write(&path, &[(CHUNK, 9, 4096)]);
    assert_eq!(read(&path, 0, 4096), pattern(1, 4096));
    assert_eq!(read(&path, CHUNK, 4096), pattern(9, 4096));
}

#[test]
fn stray_bitmap_bits_are_corruption_and_blocks_are_counted() {
    let dir = scratch();
    let d = dir.path();
    // 10 blocks of 4 KiB in the base.
    fs::write(d.join("base.raw"), pattern(5, 40960)).unwrap();
    create(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=4k",
            "b.fvd",
            "1M",
        ],
    );
    let path = d.join("b.fvd");
    write(&path, &[(0, 1, 4096), (8192, 2, 512)]);
    let report = check_json(d, &["b.fvd"], 0);
    assert_eq!(report["blocks-in-image"], 2);
    assert_eq!(report["blocks-in-base"], 8);
    let run = status(d, &["check", "b.fvd"], 0);
    assert_contains(
        &run.stdout,
        "Bitmap: 2 block(s) in the image, 8 still in the base",
    );

    let bitmap = header_of(&path).1.base.unwrap().bitmap.offset;
    let mut byte = [0u8; 1];
    fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut byte, bitmap + 1)
        .unwrap();
    poke(&path, bitmap + 1, &[byte[0] | 0b0001_0000]); // bit 12
    poke(&path, bitmap + 100, &[0x01]); // bit 800
    let run = status(d, &["check", "b.fvd"], 2);
    assert_contains(
        &run.stdout,
        "ERROR bitmap has 2 bit(s) set past its last block 9 (first: bit 12)",
    );
    assert_eq!(
        kinds(&check_json(d, &["b.fvd"], 2)),
        ["bitmap-bits-past-end"]
    );
    status(d, &["check", "-r", "all", "b.fvd"], 0);
    let report = check_json(d, &["b.fvd"], 0);
    assert_eq!(report["blocks-in-image"], 2);
    assert_eq!(read(&path, 0, 4096), pattern(1, 4096));
    let mut expect = pattern(5, 40960)[8192..12288].to_vec();
    expect[..512].copy_from_slice(&pattern(2, 512));
    assert_eq!(read(&path, 8192, 4096), expect);
}

#[test]
fn corrupt_journal_records_with_valid_checksums_are_corruption() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    write(&path, &[(0, 1, 4096), (CHUNK, 2, 4096)]);
    let pristine = fs::read(&path).unwrap();

    // A record past the last chunk (16 chunks).
    set_clean(&path, false);
    journal_table_record(&path, 0, 16, &[3]);
    let run = status(d, &["check", "c.fvd"], 2);
    assert_contains(
        &run.stdout,
        "ERROR journal sector 0 record 0 is out of range: table entries 16..17 of 16 chunks",
    );
    assert_contains(
        &run.stdout,
        "Image is dirty; journal has 1 records to replay",
    );
    // The engine refuses to replay it.
    assert!(open_image(&path, DriverOptions::default()).is_err());

    // A record contradicting the table, after a good one.
    fs::write(&path, &pristine).unwrap();
    set_clean(&path, false);
    journal_table_record(&path, 0, 2, &[2]);
    journal_table_record(&path, 1, 0, &[7]);
    let run = status(d, &["check", "c.fvd"], 2);
    assert_contains(&run.stdout, "ERROR journal sector 1 record 0 maps chunk 0 to physical chunk 7, but the table maps it to 0");
    let report = check_json(d, &["c.fvd"], 2);
    assert_eq!(kinds(&report), ["journal-record-conflict"]);
    assert_eq!(report["journal-records"], 2);
    assert_eq!(report["dirty"], true);

    // -r all replays the good record, drops the bad one and marks the image clean.
    let run = status(d, &["check", "-r", "all", "c.fvd"], 0);
    assert_contains(&run.stdout, "Replaying 1 journal record(s)");
    assert_contains(&run.stdout, "dropped the record");
    let report = check_json(d, &["c.fvd"], 0);
    assert_eq!(report["dirty"], false);
    assert_eq!(common::count(&report, "journal-records"), 0);
    assert_eq!(entry(&path, 0), 0);
    assert_eq!(entry(&path, 2), 2);
    assert_eq!(read(&path, 0, 4096), pattern(1, 4096));

    // A clean image whose journal was never replayed (clean_shutdown forced on).
    fs::write(&path, &pristine).unwrap();
    journal_table_record(&path, 0, 3, &[2]);
    let report = check_json(d, &["c.fvd"], 2);
    assert_eq!(kinds(&report), ["journal-not-replayed"]);
    status(d, &["check", "-r", "all", "c.fvd"], 0);
    assert_eq!(entry(&path, 3), 2);
    status(d, &["check", "c.fvd"], 0);
}

#[test]
fn leaked_chunks_exit_3_until_repair_relocates_them_and_the_next_check_exits_0() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    write(
        &path,
        &[(0, 1, 4096), (CHUNK, 2, 4096), (2 * CHUNK, 3, 4096)],
    );
    let data_offset = header_of(&path).1.data_offset;
    // The storage grew by a whole storage_grow_unit (100 MiB, sparse).
    assert!(storage_len(&path) > data_offset + 3 * CHUNK);
    set_entry(&path, 0, TABLE_EMPTY);
    let guest = |path: &Path| read(path, 0, 4 * CHUNK as usize);
    let before = guest(&path);

    let run = status(d, &["check", "c.fvd"], 3);
    assert_contains(&run.stdout, "Leaked chunk 0: no table entry maps it\n");
    assert_contains(
        &run.stdout,
        "\n1 leaked clusters were found on the image.\n\
             This means waste of disk space, but no harm to data.\n",
    );
    let report = check_json(d, &["c.fvd"], 3);
    assert_eq!(report["leaks"], 1);
    assert_eq!(common::count(&report, "corruptions"), 0);
    assert_eq!(report["leaked-clusters"][0]["start"], 0);

    // -r leaks moves physical chunk 2 (guest chunk 2) down into the leaked chunk 0 and
    // releases everything past the two chunks in use.
    fs::copy(&path, d.join("j.fvd")).unwrap();
    let report = check_json(d, &["-r", "leaks", "j.fvd"], 0);
    assert_eq!(
        (
            common::count(&report, "leaks-fixed"),
            common::count(&report, "leaks")
        ),
        (1, 0),
        "{report:#}"
    );
    let run = status(d, &["check", "-r", "leaks", "c.fvd"], 0);
    assert_contains(
        &run.stdout,
        "Relocated 1 chunk(s) into leaked chunks below them",
    );
    assert_contains(&run.stdout, "Released ");
    assert_contains(&run.stdout, "    1 leaked clusters\n");
    assert_contains(&run.stdout, "No errors were found on the image.");
    assert_eq!(storage_len(&path), data_offset + 2 * CHUNK);
    assert_eq!(entry(&path, 2), 0);
    assert_eq!(entry(&path, 1), 1);
    assert_eq!(info_data(d, "c.fvd")["chunks_relocated"], true);
    let report = check_json(d, &["c.fvd"], 0);
    assert_eq!(common::count(&report, "leaks"), 0);
    assert_eq!(report["dirty"], false);
    assert_eq!(guest(&path), before, "the guest data is unchanged");

    // The next new chunk goes to the frontier.
    write(&path, &[(10 * CHUNK, 4, 4096)]);
    assert_eq!(entry(&path, 10), 2);
    check_json(d, &["c.fvd"], 0);
    assert_eq!(read(&path, 10 * CHUNK, 4096), pattern(4, 4096));
    assert_eq!(read(&path, 2 * CHUNK, 4096), pattern(3, 4096));
}

#[test]
fn leaked_chunks_of_a_separate_data_file_are_relocated_and_released() {
    let dir = scratch();
    let d = dir.path();
    create(
        d,
        &[
            "-o",
            "compact_image=on,chunk_size=64k,data_file=c.data",
            "c.fvd",
            "1M",
        ],
    );
    let path = d.join("c.fvd");
    write(
        &path,
        &[
            (0, 1, 4096),
            (CHUNK, 2, 4096),
            (2 * CHUNK, 3, 4096),
            (5 * CHUNK, 4, 4096),
        ],
    );
    set_entry(&path, 1, TABLE_EMPTY);
    let before = read(&path, 0, 8 * CHUNK as usize);
    assert_eq!(check_json(d, &["c.fvd"], 3)["leaks"], 1);
    let image_len = storage_len(&path);

    let run = status(d, &["check", "-r", "leaks", "c.fvd"], 0);
    assert_contains(
        &run.stdout,
        "Relocated 1 chunk(s) into leaked chunks below them",
    );
    assert_contains(&run.stdout, "'c.data' is now 196608 bytes");
    assert_eq!(storage_len(&d.join("c.data")), 3 * CHUNK);
    assert_eq!(storage_len(&path), image_len);
    assert_eq!(entry(&path, 5), 1);
    let report = check_json(d, &["c.fvd"], 0);
    assert_eq!(
        (common::count(&report, "leaks"), report["dirty"].as_bool()),
        (0, Some(false))
    );
    assert_eq!(
        read(&path, 0, 8 * CHUNK as usize),
        before,
        "the guest data is unchanged"
    );
}

#[test]
fn repair_releases_unused_storage_of_a_separate_data_file() {
    let dir = scratch();
    let d = dir.path();
    create(
        d,
        &[
            "-o",
            "compact_image=on,chunk_size=64k,data_file=c.data",
            "c.fvd",
            "1M",
        ],
    );
    let path = d.join("c.fvd");
    write(&path, &[(0, 1, 4096), (3 * CHUNK, 2, 4096)]);
    assert!(storage_len(&d.join("c.data")) > 2 * CHUNK);
    let image_before = fs::read(&path).unwrap();
    let report = check_json(d, &["-r", "leaks", "c.fvd"], 0);
    assert_eq!(common::count(&report, "leaks"), 0);
    assert_eq!(storage_len(&d.join("c.data")), 2 * CHUNK);
    // Only header sector 4 was rewritten, and it is back to what it was (epoch moved on).
    let image_after = fs::read(&path).unwrap();
    assert_eq!(image_before.len(), image_after.len());
    let differing: Vec<usize> = (0..image_before.len())
        .filter(|&i| image_before[i] != image_after[i])
        .collect();
    assert!(
        differing.iter().all(|&i| (2164..2172).contains(&i)),
        "{differing:?}"
    );
    assert_eq!(read(&path, 3 * CHUNK, 4096), pattern(2, 4096));
    // Nothing left to do: a second repair writes nothing.
    let before = fs::read(&path).unwrap();
    status(d, &["check", "-r", "all", "c.fvd"], 0);
    assert_eq!(fs::read(&path).unwrap(), before);
}

/// Opens `path` read-write, writes, flushes and drops the driver without closing it, as a
/// crash would: `clean_shutdown` stays 0 and the mapping lives in the journal.
fn crash_after_flush(path: &Path, writes: &[(u64, u8, usize)]) {
    let mut d = open_image(path, DriverOptions::default()).unwrap();
    for &(offset, seed, len) in writes {
        d.write(offset, &pattern(seed, len)).unwrap();
    }
    d.flush().unwrap();
    drop(d);
}

#[test]
fn dirty_image_checks_clean_with_a_note_and_repair_replays_it() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), pattern(9, 1 << 20)).unwrap();
    create(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "compact_image=on,chunk_size=64k,block_size=4k",
            "c.fvd",
            "2M",
        ],
    );
    let path = d.join("c.fvd");
    let writes = [
        (4096, 1, 4096),
        (5 * CHUNK + 512, 2, 1024),
        (20 * CHUNK, 3, 8192),
    ];
    crash_after_flush(&path, &writes);
    let (h, _, _) = header_of(&path);
    assert_eq!(h.clean_shutdown.get(), 0);
    // The mappings are only in the journal so far.
    assert_eq!(entry(&path, 0), TABLE_EMPTY);

    let run = status(d, &["check", "c.fvd"], 0);
    assert_contains(&run.stdout, "No errors were found on the image.");
    assert_contains(&run.stdout, "Image is dirty; journal has ");
    assert_contains(&run.stdout, " records to replay");
    let report = check_json(d, &["c.fvd"], 0);
    assert_eq!(report["dirty"], true);
    assert!(report["journal-records"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["allocated-clusters"], 3);
    // Blocks 1 and 80; the third write lies past the 1 MiB base.
    assert_eq!(report["blocks-in-image"], 2);

    // The same crashed image, recovered by the engine and by check -r all, ends up with
    // the same metadata.
    fs::copy(&path, d.join("engine.fvd")).unwrap();
    let (_, clean) = open_image(&d.join("engine.fvd"), DriverOptions::default())
        .unwrap()
        .close()
        .unwrap();
    assert!(clean);

    let run = status(d, &["check", "-r", "all", "c.fvd"], 0);
    assert_contains(&run.stdout, "Replaying ");
    assert_contains(&run.stdout, "Marked the image clean");
    let report = check_json(d, &["c.fvd"], 0);
    assert_eq!(report["dirty"], false);
    assert_eq!(common::count(&report, "journal-records"), 0);
    assert_eq!(info_data(d, "c.fvd")["clean_shutdown"], true);

    let (_, l, _) = header_of(&path);
    let ours = fs::read(&path).unwrap();
    let engine = fs::read(d.join("engine.fvd")).unwrap();
    for region in [l.table.unwrap().region, l.base.unwrap().bitmap] {
        let r = region.offset as usize..region.end() as usize;
        assert_eq!(ours[r.clone()], engine[r], "{region:?}");
    }
    for &(offset, seed, len) in &writes {
        assert_eq!(read(&path, offset, len), pattern(seed, len));
    }
    assert_eq!(read(&path, 0, 4096), pattern(9, 4096));
}

#[test]
fn repair_refuses_a_read_only_image() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    crash_after_flush(&path, &[(0, 1, 4096)]);
    let before = fs::read(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
    let line = fails(d, &["check", "-r", "all", "c.fvd"]);
    assert!(
        line.contains("Cannot repair 'c.fvd'") && line.contains("read-only"),
        "{line}"
    );
    // Checking without -r still works.
    status(d, &["check", "c.fvd"], 0);
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn dirty_image_without_journal_is_an_error_that_repair_clears() {
    let dir = scratch();
    let d = dir.path();
    create(
        d,
        &[
            "-o",
            "compact_image=on,chunk_size=64k,journal_size=0",
            "c.fvd",
            "1M",
        ],
    );
    let path = d.join("c.fvd");
    write(&path, &[(0, 1, 4096)]);
    set_clean(&path, false);
    let report = check_json(d, &["c.fvd"], 2);
    assert_eq!(kinds(&report), ["dirty-without-journal"]);
    status(d, &["check", "-r", "all", "c.fvd"], 0);
    status(d, &["check", "c.fvd"], 0);
    assert_eq!(read(&path, 0, 4096), pattern(1, 4096));
    // A plain image has nothing to recover: dirty is only a note.
    create(d, &["p.fvd", "1M"]);
    set_clean(&d.join("p.fvd"), false);
    let run = status(d, &["check", "p.fvd"], 0);
    assert_contains(&run.stdout, "Image is dirty");
}

// ---------------------------------------------------------------------------------------
// update

#[test]
fn update_round_trips_every_field_through_info() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![0u8; 1 << 20]).unwrap();
    fs::write(d.join("other.raw"), vec![0u8; 1 << 20]).unwrap();
    create(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "compact_image=on,data_file=d.raw",
            "u.fvd",
        ],
    );
    let run = status(
        d,
        &[
            "update",
            "u.fvd",
            "copy_on_read=on",
            "need_zero_init=on",
            "max_outstanding_copy_on_read_data=4M",
            "prefetch_start_delay=30",
            "num_prefetch_slots=5",
            "bytes_per_prefetch=64k",
            "prefetch_min_read_throughput=100",
            "prefetch_min_write_throughput=200",
            "prefetch_max_read_throughput=300",
            "prefetch_max_write_throughput=0",
            "prefetch_read_throughput_measure_time=250",
            "prefetch_write_throughput_measure_time=350",
            "prefetch_throttle_time=1000",
            "base_img=other.raw",
            "base_img_fmt=raw",
            "data_file=e.raw",
        ],
        0,
    );
    assert!(run.stdout.is_empty());
    let info = info_data_no_data_file(d, "u.fvd");
    for (key, want) in [
        ("copy_on_read", Value::from(true)),
        ("need_zero_init", true.into()),
        ("max_outstanding_copy_on_read_data", (4u64 << 20).into()),
        ("prefetch_start_delay", 30.into()),
        ("num_prefetch_slots", 5.into()),
        ("bytes_per_prefetch", 65536.into()),
        ("prefetch_min_read_throughput", 100.into()),
        ("prefetch_min_write_throughput", 200.into()),
        ("prefetch_max_read_throughput", 300.into()),
        ("prefetch_max_write_throughput", 0.into()),
        ("prefetch_read_throughput_measure_time", 250.into()),
        ("prefetch_write_throughput_measure_time", 350.into()),
        ("prefetch_throttle_time", 1000.into()),
        ("base_img", "other.raw".into()),
        ("base_img_fmt", "raw".into()),
        ("data_file", "e.raw".into()),
    ] {
        assert_eq!(info[key], want, "{key}: {info}");
    }
    // The image is still usable once its files match the new names.
    fs::rename(d.join("d.raw"), d.join("e.raw")).unwrap();
    status(d, &["check", "u.fvd"], 0);
    status(
        d,
        &[
            "update",
            "u.fvd",
            "prefetch_start_delay=-1",
            "copy_on_read=off",
        ],
        0,
    );
    let info = info_data(d, "u.fvd");
    assert_eq!(info["prefetch_start_delay"], -1);
    assert_eq!(info["copy_on_read"], false);
}

/// `info` needs the data file; this reads the header fields without it.
fn info_data_no_data_file(dir: &Path, file: &str) -> Value {
    let (h, _, _) = header_of(&dir.join(file));
    let name = |field: &[u8]| Value::from(header_str(field));
    serde_json::json!({
        "copy_on_read": h.copy_on_read.get() == 1,
        "need_zero_init": h.need_zero_init.get() == 1,
        "max_outstanding_copy_on_read_data": h.max_outstanding_copy_on_read_data.get(),
        "prefetch_start_delay": h.prefetch_start_delay.get(),
        "num_prefetch_slots": h.num_prefetch_slots.get(),
        "bytes_per_prefetch": h.bytes_per_prefetch.get(),
        "prefetch_min_read_throughput": h.prefetch_min_read_throughput.get(),
        "prefetch_min_write_throughput": h.prefetch_min_write_throughput.get(),
        "prefetch_max_read_throughput": h.prefetch_max_read_throughput.get(),
        "prefetch_max_write_throughput": h.prefetch_max_write_throughput.get(),
        "prefetch_read_throughput_measure_time": h.prefetch_read_throughput_measure_time.get(),
        "prefetch_write_throughput_measure_time": h.prefetch_write_throughput_measure_time.get(),
        "prefetch_throttle_time": h.prefetch_throttle_time.get(),
        "base_img": name(&h.base_img),
        "base_img_fmt": name(&h.base_img_fmt),
        "data_file": name(&h.data_file),
    })
}

#[test]
fn update_refuses_bad_settings_and_leaves_the_file_untouched() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    let before = fs::read(&path).unwrap();
    for (args, needle) in [
        (vec!["nonsense=1"], "Invalid parameter 'nonsense'"),
        (vec!["size=2M"], "size cannot be changed"),
        (vec!["virtual_disk_size=2M"], "size cannot be changed"),
        (vec!["block_size=4096"], "Invalid parameter 'block_size'"),
        (vec!["copy_on_read"], "Expecting KEY=VALUE"),
        (vec!["need_zero_init=maybe"], "expects 'on' or 'off'"),
        (vec!["num_prefetch_slots=0"], "at least 1"),
        (vec!["num_prefetch_slots=5000"], "num_prefetch_slots"),
        (vec!["bytes_per_prefetch=1000"], "multiple of 512"),
        (vec!["bytes_per_prefetch=512"], "at least 4096"),
        (vec!["bytes_per_prefetch=1G"], "bytes_per_prefetch"),
        (vec!["prefetch_throttle_time=-5"], "non-negative"),
        (
            vec!["prefetch_throttle_time=100000000"],
            "prefetch_throttle_time",
        ),
        (
            vec![
                "prefetch_min_read_throughput=10",
                "prefetch_max_read_throughput=5",
            ],
            "would be invalid",
        ),
        (vec!["copy_on_read=on"], "copy_on_read needs a base image"),
        (vec!["prefetch_start_delay=10"], "needs a base image"),
        (vec!["base_img=base.raw"], "base_img cannot be added"),
        (vec!["data_file=x.raw"], "data_file cannot be added"),
        (vec!["base_img_fmt=vmdk"], "would be invalid"),
        // A valid setting followed by a bad one writes nothing either.
        (
            vec!["need_zero_init=on", "num_prefetch_slots=x"],
            "num_prefetch_slots",
        ),
    ] {
        let mut all = vec!["update", "c.fvd"];
        all.extend_from_slice(&args);
        let line = fails(d, &all);
        assert!(line.contains(needle), "{args:?}: {line}");
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "{args:?} changed the file"
        );
    }
    let line = fails(d, &["update", "c.fvd"]);
    assert!(line.contains("KEY=VAL"), "{line}");
    fs::write(d.join("junk"), vec![1u8; 8192]).unwrap();
    let line = fails(d, &["update", "junk", "copy_on_read=off"]);
    assert!(line.contains("is not an FVD image"), "{line}");
    assert_eq!(fs::read(d.join("junk")).unwrap(), vec![1u8; 8192]);
}

#[test]
fn update_can_force_the_clean_flag_and_check_sees_it() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    let path = d.join("c.fvd");
    write(&path, &[(0, 1, 4096)]);
    status(d, &["update", "c.fvd", "clean_shutdown=off"], 0);
    assert_eq!(info_data(d, "c.fvd")["dirty"], true);
    let run = status(d, &["check", "c.fvd"], 0);
    assert_contains(&run.stdout, "Image is dirty");
    status(d, &["update", "c.fvd", "clean_shutdown=on"], 0);
    assert_eq!(info_data(d, "c.fvd")["dirty"], false);

    // Forcing a crashed image clean leaves its journal unreplayed: check says so.
    crash_after_flush(&path, &[(CHUNK, 2, 4096)]);
    status(d, &["update", "c.fvd", "clean_shutdown=on"], 0);
    let report = check_json(d, &["c.fvd"], 2);
    assert_eq!(kinds(&report), ["journal-not-replayed"]);
    status(d, &["check", "-r", "all", "c.fvd"], 0);
    assert_eq!(read(&path, CHUNK, 4096), pattern(2, 4096));
}
