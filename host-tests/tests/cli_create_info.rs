//! `fvd-img create` and `fvd-img info`, driven as a user would: the real binary, run in
//! scratch directories, its files read back with `fvd_core::fvd::parse`.

mod common;

use common::{
    assert_contains, fails, header_of, header_str, info_json, listing, ok, scratch, sparse_file,
};
use fvd_core::fvd::create::metadata_len;
use std::fs;
use std::os::unix::fs::FileExt;

#[test]
fn plain_image_header_and_length() {
    let dir = scratch();
    let run = ok(dir.path(), &["create", "-f", "fvd", "plain.fvd", "10G"]);
    assert!(
        run.stdout
            .starts_with("Formatting 'plain.fvd', fmt=fvd size=10737418240 "),
        "{}",
        run.stdout
    );
    assert_contains(&run.stdout, " compact_image=off");
    assert_eq!(run.stdout.lines().count(), 1);

    let (h, layout, len) = header_of(&dir.path().join("plain.fvd"));
    assert_eq!(h.virtual_disk_size.get(), 10 << 30);
    assert_eq!(h.header_size.get(), 8192);
    assert_eq!(h.clean_shutdown.get(), 1);
    // Guest data starts on a 64 KiB boundary (large page-cache folios).
    assert_eq!(h.data_offset.get(), 65536);
    assert_eq!(header_str(&h.base_img), "");
    assert_eq!(header_str(&h.data_file), "");
    assert!(layout.base.is_none() && layout.table.is_none() && layout.journal.is_none());
    assert_eq!(len, 8192);
    assert_eq!(len, metadata_len(&h));
    // The header area past the struct is zero padding.
    let bytes = fs::read(dir.path().join("plain.fvd")).unwrap();
    assert!(bytes[7440..8192].iter().all(|&b| b == 0));
}

#[test]
fn compact_image_has_table_of_empty_entries_and_journal() {
    let dir = scratch();
    let run = ok(
        dir.path(),
        &["create", "-o", "compact_image=on", "c.fvd", "1G"],
    );
    assert!(run.stdout.contains(" compact_image=on chunk_size=1048576 "));

    let path = dir.path().join("c.fvd");
    let (h, layout, len) = header_of(&path);
    let table = layout.table.expect("compact image has a table");
    assert_eq!(table.chunk_size, 1 << 20);
    assert_eq!(table.chunks, 1024);
    assert_eq!(table.storage_grow_unit, 100 << 20);
    assert_eq!(h.table_offset.get(), 8192);
    assert_eq!(h.table_size.get(), 4096);
    let journal = layout.journal.expect("compact image has a journal");
    assert_eq!(journal.len, 16 << 20);
    assert_eq!(len, metadata_len(&h));
    assert_eq!(h.data_offset.get(), len.div_ceil(65536) * 65536);

    let bytes = fs::read(&path).unwrap();
    let t = table.region;
    assert!(bytes[t.offset as usize..t.end() as usize]
        .iter()
        .all(|&b| b == 0xFF));
    assert!(bytes[journal.offset as usize..journal.end() as usize]
        .iter()
        .all(|&b| b == 0));

    let info = info_json(dir.path(), "c.fvd");
    let data = &info["format-specific"]["data"];
    assert_eq!(data["compact_image"], true);
    assert_eq!(data["chunks"], 1024);
    assert_eq!(data["mapped_chunks"], 0);
    assert_eq!(data["chunk_size"], 1 << 20);
    assert_eq!(data["table_size"], 4096);
    assert_eq!(data["journal_size"], 16 << 20);
    let regions: Vec<&str> = data["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["header", "table", "journal", "data"]);
}

#[test]
fn raw_base_gives_size_and_bitmap() {
    let dir = scratch();
    sparse_file(&dir.path().join("base.raw"), 100 << 20);
    let run = ok(
        dir.path(),
        &["create", "-f", "fvd", "-b", "base.raw", "ov.fvd"],
    );
    assert_contains(
        &run.stdout,
        "size=104857600 backing_file=base.raw backing_fmt=raw",
    );

    let (h, layout, len) = header_of(&dir.path().join("ov.fvd"));
    assert_eq!(h.virtual_disk_size.get(), 100 << 20);
    assert_eq!(header_str(&h.base_img), "base.raw");
    assert_eq!(header_str(&h.base_img_fmt), "raw");
    assert_eq!(h.base_img_size.get(), 100 << 20);
    let base = layout.base.expect("base layout");
    assert_eq!(base.bitmap.offset, 8192);
    // 204800 blocks of 512 bytes = 25600 bitmap bytes, rounded up to 4096.
    assert_eq!(base.blocks, 204_800);
    assert_eq!(base.bitmap.len, 28_672);
    assert!(layout.journal.is_some());
    assert_eq!(len, metadata_len(&h));

    let info = info_json(dir.path(), "ov.fvd");
    assert_eq!(info["backing-filename"], "base.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(info["full-backing-filename"], "base.raw");
    assert_eq!(info["virtual-size"], 100u64 << 20);
    let data = &info["format-specific"]["data"];
    assert_eq!(data["base_blocks"], 204_800);
    assert_eq!(data["base_blocks_in_image"], 0);
    assert_eq!(data["compact_image"], false);
}

#[test]
fn base_smaller_than_the_image_and_unaligned_base() {
    let dir = scratch();
    sparse_file(&dir.path().join("small.raw"), 1000);
    ok(
        dir.path(),
        &["create", "-b", "small.raw", "-F", "raw", "a.fvd", "1M"],
    );
    let (h, _, _) = header_of(&dir.path().join("a.fvd"));
    assert_eq!(h.virtual_disk_size.get(), 1 << 20);
    assert_eq!(h.base_img_size.get(), 1024);

    ok(dir.path(), &["create", "-b", "small.raw", "b.fvd"]);
    let (h, _, _) = header_of(&dir.path().join("b.fvd"));
    assert_eq!(h.virtual_disk_size.get(), 1024);
    assert_eq!(h.base_img_size.get(), 1024);
}

#[test]
fn fvd_base_is_probed_and_measured_by_its_header() {
    let dir = scratch();
    ok(dir.path(), &["create", "base.fvd", "2G"]);
    ok(dir.path(), &["create", "-b", "base.fvd", "ov.fvd"]);
    let (h, _, _) = header_of(&dir.path().join("ov.fvd"));
    assert_eq!(h.virtual_disk_size.get(), 2 << 30);
    assert_eq!(h.base_img_size.get(), 2 << 30);
    assert_eq!(header_str(&h.base_img_fmt), "fvd");

    // -F fvd says the same explicitly; -F raw forces the file length (8192 bytes).
    ok(
        dir.path(),
        &["create", "-b", "base.fvd", "-F", "fvd", "ov2.fvd"],
    );
    let (h, _, _) = header_of(&dir.path().join("ov2.fvd"));
    assert_eq!(h.virtual_disk_size.get(), 2 << 30);
    ok(
        dir.path(),
        &["create", "-b", "base.fvd", "-F", "raw", "ov3.fvd"],
    );
    let (h, _, _) = header_of(&dir.path().join("ov3.fvd"));
    assert_eq!(h.virtual_disk_size.get(), 8192);
    assert_eq!(header_str(&h.base_img_fmt), "raw");

    // -F fvd on a raw file is refused.
    sparse_file(&dir.path().join("r.raw"), 1 << 20);
    let line = fails(dir.path(), &["create", "-b", "r.raw", "-F", "fvd", "x.fvd"]);
    assert!(line.contains("'r.raw' is not an FVD image"), "{line}");
    assert!(!dir.path().join("x.fvd").exists());

    let info = info_json(dir.path(), "ov.fvd");
    assert_eq!(info["backing-filename-format"], "fvd");
}

#[test]
fn backing_options_are_aliases_of_b_and_capital_f() {
    let dir = scratch();
    sparse_file(&dir.path().join("base.img"), 4 << 20);
    ok(
        dir.path(),
        &[
            "create",
            "-o",
            "backing_file=base.img,backing_fmt=raw",
            "o.fvd",
        ],
    );
    let (h, _, _) = header_of(&dir.path().join("o.fvd"));
    assert_eq!(header_str(&h.base_img), "base.img");
    assert_eq!(header_str(&h.base_img_fmt), "raw");
    assert_eq!(h.virtual_disk_size.get(), 4 << 20);
}

#[test]
fn compact_image_over_a_base_with_custom_block_and_chunk_sizes() {
    let dir = scratch();
    sparse_file(&dir.path().join("base.raw"), 64 << 20);
    ok(
        dir.path(),
        &[
            "create",
            "-b",
            "base.raw",
            "-o",
            "compact_image=on,block_size=64k",
            "-o",
            "chunk_size=256K,storage_grow_unit=1M,journal_size=1M",
            "cb.fvd",
            "1G",
        ],
    );
    let (h, layout, len) = header_of(&dir.path().join("cb.fvd"));
    assert_eq!(h.block_size.get(), 64 << 10);
    assert_eq!(h.chunk_size.get(), 256 << 10);
    assert_eq!(h.storage_grow_unit.get(), 1 << 20);
    assert_eq!(h.journal_size.get(), 1 << 20);
    assert_eq!(h.base_img_size.get(), 64 << 20);
    let table = layout.table.unwrap();
    assert_eq!(table.chunks, 4096);
    assert_eq!(table.region.len, 16384);
    let base = layout.base.unwrap();
    assert_eq!(base.blocks, 1024);
    assert_eq!(len, metadata_len(&h));

    let info = info_json(dir.path(), "cb.fvd");
    let data = &info["format-specific"]["data"];
    assert_eq!(data["block_size"], 64 << 10);
    assert_eq!(data["chunk_size"], 256 << 10);
    assert_eq!(data["storage_grow_unit"], 1 << 20);
    assert_eq!(data["chunks"], 4096);
    assert_eq!(data["base_blocks"], 1024);
}

#[test]
fn large_chunks_get_a_grow_unit_of_at_least_one_chunk() {
    let dir = scratch();
    ok(
        dir.path(),
        &[
            "create",
            "-o",
            "compact_image=on,chunk_size=256M",
            "big.fvd",
            "4G",
        ],
    );
    let (h, layout, _) = header_of(&dir.path().join("big.fvd"));
    assert_eq!(h.chunk_size.get(), 256 << 20);
    assert_eq!(h.storage_grow_unit.get(), 256 << 20);
    assert_eq!(layout.table.unwrap().chunks, 16);
}

#[test]
fn journal_size_zero_means_no_journal() {
    let dir = scratch();
    let run = ok(
        dir.path(),
        &[
            "create",
            "-o",
            "compact_image=on,journal_size=0",
            "nj.fvd",
            "1G",
        ],
    );
    assert_contains(&run.stdout, " journal_size=0 ");
    let (h, layout, len) = header_of(&dir.path().join("nj.fvd"));
    assert!(layout.journal.is_none());
    assert_eq!(h.journal_size.get(), 0);
    assert_eq!(h.journal_offset.get(), 0);
    assert_eq!(len, 8192 + 4096);
    let info = info_json(dir.path(), "nj.fvd");
    assert_eq!(info["format-specific"]["data"]["journal_size"], 0);
}

#[test]
fn separate_data_file_is_created_empty() {
    let dir = scratch();
    let run = ok(
        dir.path(),
        &[
            "create",
            "-o",
            "data_file=guest.raw,data_file_fmt=raw",
            "d.fvd",
            "1G",
        ],
    );
    assert_contains(&run.stdout, " data_file=guest.raw data_file_fmt=raw");
    let (h, layout, len) = header_of(&dir.path().join("d.fvd"));
    assert!(layout.separate_data_file);
    assert_eq!(header_str(&h.data_file), "guest.raw");
    assert_eq!(header_str(&h.data_file_fmt), "raw");
    assert_eq!(h.data_offset.get(), 0);
    assert_eq!(len, 8192);
    assert_eq!(fs::metadata(dir.path().join("guest.raw")).unwrap().len(), 0);

    let info = info_json(dir.path(), "d.fvd");
    let data = &info["format-specific"]["data"];
    assert_eq!(data["data_file"], "guest.raw");
    assert_eq!(data["data_file_length"], 0);
    assert_eq!(data["data_file_actual_size"], 0);
    let regions = data["regions"].as_array().unwrap();
    let data_region = regions.last().unwrap();
    assert_eq!(data_region["name"], "data");
    assert_eq!(data_region["file"], "data_file");
    assert_eq!(data_region["offset"], 0);

    // An existing data file is not replaced without --force.
    fs::write(dir.path().join("keep.raw"), b"precious").unwrap();
    let line = fails(
        dir.path(),
        &["create", "-o", "data_file=keep.raw", "e.fvd", "1M"],
    );
    assert!(line.contains("already exists"), "{line}");
    assert!(!dir.path().join("e.fvd").exists());
    assert_eq!(fs::read(dir.path().join("keep.raw")).unwrap(), b"precious");
    ok(
        dir.path(),
        &[
            "create",
            "--force",
            "-o",
            "data_file=keep.raw",
            "e.fvd",
            "1M",
        ],
    );
    assert_eq!(fs::metadata(dir.path().join("keep.raw")).unwrap().len(), 0);
}

#[test]
fn size_suffixes() {
    let dir = scratch();
    for (i, (size, expected)) in [
        ("512", 512u64),
        ("3000", 3072),
        ("1b", 512),
        ("1k", 1024),
        ("4K", 4096),
        ("1.5M", 1536 << 10),
        ("64m", 64 << 20),
        ("2G", 2 << 30),
        ("3g", 3 << 30),
        ("1T", 1 << 40),
        ("1t", 1 << 40),
        ("0x100000", 1 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let file = format!("s{i}.fvd");
        ok(dir.path(), &["create", &file, size]);
        let (h, _, _) = header_of(&dir.path().join(&file));
        assert_eq!(h.virtual_disk_size.get(), expected, "size {size}");
        let info = info_json(dir.path(), &file);
        assert_eq!(info["virtual-size"], expected, "size {size}");
    }
}

#[test]
fn copy_on_read_prefetch_and_zero_init_options() {
    let dir = scratch();
    sparse_file(&dir.path().join("b.raw"), 8 << 20);
    ok(
        dir.path(),
        &[
            "create",
            "-b",
            "b.raw",
            "-o",
            "copy_on_read=on,prefetch_start_delay=30,need_zero_init=on",
            "o.fvd",
        ],
    );
    let (h, layout, _) = header_of(&dir.path().join("o.fvd"));
    assert!(layout.copy_on_read && layout.need_zero_init);
    assert_eq!(h.prefetch_start_delay.get(), 30);

    ok(
        dir.path(),
        &[
            "create",
            "-o",
            "prefetch_start_delay=-5,need_zero_init=off",
            "p.fvd",
            "1M",
        ],
    );
    let (h, layout, _) = header_of(&dir.path().join("p.fvd"));
    assert!(h.prefetch_start_delay.get() <= 0);
    assert!(!layout.need_zero_init && !layout.copy_on_read);

    let info = info_json(dir.path(), "o.fvd");
    let data = &info["format-specific"]["data"];
    assert_eq!(data["copy_on_read"], true);
    assert_eq!(data["need_zero_init"], true);
    assert_eq!(data["prefetch_start_delay"], 30);
}

#[test]
fn info_json_has_qemu_img_keys_and_every_header_field() {
    let dir = scratch();
    ok(dir.path(), &["create", "plain.fvd", "10G"]);
    let info = info_json(dir.path(), "plain.fvd");
    assert_eq!(info["filename"], "plain.fvd");
    assert_eq!(info["format"], "fvd");
    assert_eq!(info["virtual-size"], 10u64 << 30);
    assert!(info["actual-size"].is_u64());
    assert_eq!(info["dirty-flag"], false);
    assert!(info.get("backing-filename").is_none());
    assert!(info.get("backing-filename-format").is_none());
    assert!(info.get("full-backing-filename").is_none());
    assert_eq!(info["format-specific"]["type"], "fvd");
    let data = info["format-specific"]["data"].as_object().unwrap();
    for key in [
        "magic",
        "header_size",
        "create_version",
        "last_open_version",
        "virtual_disk_size",
        "data_offset",
        "data_file",
        "data_file_fmt",
        "base_img",
        "base_img_fmt",
        "base_img_size",
        "bitmap_offset",
        "bitmap_size",
        "block_size",
        "journal_offset",
        "journal_size",
        "clean_shutdown",
        "stable_journal_epoch",
        "journal_buf_size",
        "journal_clean_buf_period",
        "table_offset",
        "table_size",
        "chunk_size",
        "storage_grow_unit",
        "add_storage_cmd",
        "chunks_relocated",
        "copy_on_read",
        "max_outstanding_copy_on_read_data",
        "prefetch_start_delay",
        "base_img_fully_prefetched",
        "num_prefetch_slots",
        "bytes_per_prefetch",
        "prefetch_read_throughput_measure_time",
        "prefetch_write_throughput_measure_time",
        "prefetch_min_read_throughput",
        "prefetch_min_write_throughput",
        "prefetch_max_read_throughput",
        "prefetch_max_write_throughput",
        "prefetch_throttle_time",
        "need_zero_init",
        "incompatible_features",
        "compact_image",
        "dirty",
        "file_length",
        "regions",
    ] {
        assert!(data.contains_key(key), "missing {key}: {data:?}");
    }
    assert_eq!(data["magic"], u32::from_le_bytes(*b"FVD\0"));
    assert_eq!(data["header_size"], 8192);
    assert_eq!(data["clean_shutdown"], true);
    assert_eq!(data["file_length"], 8192);
    assert_eq!(data["incompatible_features"], serde_json::json!([]));
    assert_eq!(
        data["regions"],
        serde_json::json!([
            {"name": "header", "file": "image", "offset": 0, "length": 8192},
            {"name": "data", "file": "image", "offset": 65536, "length": 0},
        ])
    );
    // Pretty-printed with a four-space indent, like qemu-img.
    let run = ok(dir.path(), &["info", "--output=json", "plain.fvd"]);
    assert!(run.stdout.starts_with("{\n    \""), "{}", run.stdout);
}

#[test]
fn info_reports_mapped_chunks_bitmap_use_and_dirty_flag() {
    let dir = scratch();
    sparse_file(&dir.path().join("base.raw"), 1 << 20);
    ok(
        dir.path(),
        &[
            "create",
            "-b",
            "base.raw",
            "-o",
            "compact_image=on,chunk_size=64k",
            "m.fvd",
            "1M",
        ],
    );
    let path = dir.path().join("m.fvd");
    let (h, layout, _) = header_of(&path);
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Map virtual chunks 3 and 5 to physical chunks 0 and 1.
    let table = layout.table.unwrap().region.offset;
    file.write_all_at(&0u32.to_le_bytes(), table + 3 * 4)
        .unwrap();
    file.write_all_at(&1u32.to_le_bytes(), table + 5 * 4)
        .unwrap();
    // Mark base blocks 0, 1 and 9 as living in the image.
    let bitmap = layout.base.unwrap().bitmap.offset;
    file.write_all_at(&[0b0000_0011, 0b0000_0010], bitmap)
        .unwrap();
    // Open for writing and never closed: clean_shutdown = 0 (offset 2160).
    assert_eq!(h.clean_shutdown.get(), 1);
    file.write_all_at(&0u32.to_le_bytes(), 2160).unwrap();
    drop(file);

    let info = info_json(dir.path(), "m.fvd");
    assert_eq!(info["dirty-flag"], true);
    let data = &info["format-specific"]["data"];
    assert_eq!(data["dirty"], true);
    assert_eq!(data["clean_shutdown"], false);
    assert_eq!(data["chunks"], 16);
    assert_eq!(data["mapped_chunks"], 2);
    assert_eq!(data["invalid_table_entries"], 0);
    assert_eq!(data["base_blocks"], 2048);
    assert_eq!(data["base_blocks_in_image"], 3);

    let human = ok(dir.path(), &["info", "m.fvd"]).stdout;
    assert!(human.contains("\n    mapped_chunks: 2\n"), "{human}");
    assert!(human.contains("\n    dirty: true\n"), "{human}");
}

#[test]
fn info_human_output_looks_like_qemu_img() {
    let dir = scratch();
    fs::create_dir(dir.path().join("vm")).unwrap();
    sparse_file(&dir.path().join("vm/base.raw"), 10 << 30);
    ok(dir.path(), &["create", "-b", "base.raw", "vm/ov.fvd"]);
    let text = ok(dir.path(), &["info", "vm/ov.fvd"]).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "image: vm/ov.fvd");
    assert_eq!(lines[1], "file format: fvd");
    assert_eq!(lines[2], "virtual size: 10 GiB (10737418240 bytes)");
    assert!(lines[3].starts_with("disk size: "), "{text}");
    assert_eq!(
        lines[4],
        "backing file: base.raw (actual path: vm/base.raw)"
    );
    assert_eq!(lines[5], "backing file format: raw");
    assert_eq!(lines[6], "Format specific information:");
    assert!(lines[7..].iter().all(|l| l.starts_with("    ")), "{text}");
    assert!(text.contains("\n    block_size: 512\n"), "{text}");
    assert!(text.contains("\n    clean_shutdown: true\n"), "{text}");
    assert!(
        text.contains("\n        header: offset 0, length 8192\n"),
        "{text}"
    );
    // -f fvd is accepted, -f anything else is not.
    assert_eq!(
        ok(dir.path(), &["info", "-f", "fvd", "vm/ov.fvd"]).stdout,
        text
    );
    let line = fails(dir.path(), &["info", "-f", "qcow2", "vm/ov.fvd"]);
    assert_eq!(line, "fvd-img: Unknown file format 'qcow2'");
}

#[test]
fn info_reports_raw_files_as_qemu_img_does_and_refuses_what_is_no_disk() {
    let dir = scratch();
    sparse_file(&dir.path().join("disk.raw"), 1 << 20);
    fs::write(dir.path().join("empty"), b"").unwrap();
    fs::create_dir(dir.path().join("adir")).unwrap();

    // A file with no image magic is a raw disk, as qemu-img info says.
    let run = ok(dir.path(), &["info", "disk.raw"]);
    assert!(
        run.stdout
            .starts_with("image: disk.raw\nfile format: raw\n"),
        "{run:?}"
    );
    let json = info_json(dir.path(), "disk.raw");
    assert_eq!(json["format"], "raw");
    assert_eq!(json["virtual-size"], 1 << 20);
    // Asked to read it as FVD, the refusal says what it is.
    let line = fails(dir.path(), &["info", "-f", "fvd", "disk.raw"]);
    assert!(
        line.starts_with("fvd-img: 'disk.raw' is not an FVD image: it is a raw disk image"),
        "{line}"
    );
    assert!(line.contains("magic"), "{line}");
    let line = fails(dir.path(), &["info", "-f", "fvd", "empty"]);
    assert!(
        line.starts_with("fvd-img: 'empty' is not an FVD image: "),
        "{line}"
    );
    let line = fails(dir.path(), &["info", "adir"]);
    assert!(
        line.starts_with("fvd-img: Could not open 'adir': "),
        "{line}"
    );
    let line = fails(dir.path(), &["info", "missing.fvd"]);
    assert_eq!(
        line,
        "fvd-img: Could not open 'missing.fvd': No such file or directory"
    );
    // The same in JSON mode: nothing on stdout.
    fails(
        dir.path(),
        &["info", "--output", "json", "-f", "fvd", "disk.raw"],
    );
}

#[test]
fn info_refuses_corrupt_and_truncated_images() {
    let dir = scratch();
    ok(
        dir.path(),
        &["create", "-o", "compact_image=on", "c.fvd", "1G"],
    );
    let path = dir.path().join("c.fvd");

    // block_size = 0 (offset 2136).
    fs::copy(&path, dir.path().join("bad.fvd")).unwrap();
    let bad = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("bad.fvd"))
        .unwrap();
    bad.write_all_at(&0u64.to_le_bytes(), 2136).unwrap();
    let line = fails(dir.path(), &["info", "bad.fvd"]);
    assert!(line.contains("block_size"), "{line}");

    // Cut short before the journal ends.
    fs::copy(&path, dir.path().join("short.fvd")).unwrap();
    let short = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("short.fvd"))
        .unwrap();
    short.set_len(16384).unwrap();
    let line = fails(dir.path(), &["info", "short.fvd"]);
    assert!(line.contains("past the end"), "{line}");
}

#[test]
fn create_never_overwrites_without_force() {
    let dir = scratch();
    ok(dir.path(), &["create", "img.fvd", "1G"]);
    let path = dir.path().join("img.fvd");
    let before = fs::read(&path).unwrap();

    let line = fails(dir.path(), &["create", "img.fvd", "2G"]);
    assert_eq!(
        line,
        "fvd-img: 'img.fvd' already exists; use --force to overwrite it"
    );
    assert_eq!(fs::read(&path).unwrap(), before);

    // A non-image file is protected the same way.
    fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
    fails(dir.path(), &["create", "notes.txt", "1M"]);
    assert_eq!(fs::read(dir.path().join("notes.txt")).unwrap(), b"keep me");

    ok(dir.path(), &["create", "--force", "img.fvd", "2G"]);
    let (h, _, _) = header_of(&path);
    assert_eq!(h.virtual_disk_size.get(), 2 << 30);
    assert_eq!(
        listing(dir.path()),
        ["img.fvd", "notes.txt"].map(String::from).into()
    );
}

#[test]
fn failing_create_leaves_nothing_behind() {
    let dir = scratch();
    sparse_file(&dir.path().join("base.raw"), 1 << 20);
    fs::create_dir(dir.path().join("adir")).unwrap();
    let before = listing(dir.path());
    for (args, needle) in [
        (
            &["create", "-o", "compact_image=maybe", "n.fvd", "1G"][..],
            "compact_image",
        ),
        (
            &["create", "-o", "block_size=abc", "n.fvd", "1G"][..],
            "block_size",
        ),
        (
            &["create", "-o", "no_such_option=1", "n.fvd", "1G"][..],
            "no_such_option",
        ),
        (&["create", "-b", "missing.raw", "n.fvd"][..], "missing.raw"),
        (
            &["create", "-o", "block_size=1000", "n.fvd", "1G"][..],
            "block_size",
        ),
        (
            &["create", "-o", "block_size=128M", "n.fvd", "1G"][..],
            "block_size",
        ),
        (
            &[
                "create",
                "-b",
                "base.raw",
                "-o",
                "compact_image=on,block_size=64k,chunk_size=96k",
                "n.fvd",
            ][..],
            "chunk_size",
        ),
        (
            &[
                "create",
                "-o",
                "compact_image=on,chunk_size=1M,storage_grow_unit=64k",
                "n.fvd",
                "1G",
            ][..],
            "storage_grow_unit",
        ),
        (
            &["create", "-o", "chunk_size=64k", "n.fvd", "1G"][..],
            "chunk_size",
        ),
        (
            &["create", "-o", "copy_on_read=on", "n.fvd", "1G"][..],
            "copy_on_read",
        ),
        (
            &[
                "create",
                "-o",
                "data_file_fmt=qcow2,data_file=d",
                "n.fvd",
                "1G",
            ][..],
            "data_file_fmt",
        ),
        (&["create", "-f", "qcow2", "n.fvd", "1G"][..], "qcow2"),
        (&["create", "n.fvd", "1Q"][..], "size"),
        (&["create", "n.fvd", "1.5"][..], "size"),
        (&["create", "n.fvd", "65E"][..], "size"),
        (&["create", "n.fvd", "128P"][..], "size"),
        (&["create", "n.fvd"][..], "size"),
        (&["create", "-F", "raw", "n.fvd", "1G"][..], "backing"),
        (
            &["create", "-b", "base.raw", "-F", "vmdk", "n.fvd"][..],
            "vmdk",
        ),
        (&["create", "-b", "adir", "n.fvd"][..], "adir"),
        (&["create", "adir", "1G"][..], "adir"),
        (&["create", "--force", "adir", "1G"][..], "adir"),
        (
            &["create", "-o", "data_file=n.fvd", "n.fvd", "1G"][..],
            "data file",
        ),
        (&["create"][..], "file name"),
        (&["create", "--bogus", "n.fvd", "1G"][..], "--bogus"),
    ] {
        let line = fails(dir.path(), args);
        assert!(line.contains(needle), "{args:?}: {line}");
        assert_eq!(listing(dir.path()), before, "{args:?} left files behind");
    }
}

#[test]
fn option_help_lists_every_option_and_needs_no_file() {
    let dir = scratch();
    for args in [
        &["create", "-o", "help"][..],
        &["create", "-f", "fvd", "-o", "?"][..],
        &["create", "-o", "compact_image=on,help", "x.fvd", "1G"][..],
    ] {
        let run = ok(dir.path(), args);
        assert!(
            run.stdout.starts_with("Supported fvd options:\n"),
            "{}",
            run.stdout
        );
        for key in [
            "compact_image",
            "block_size",
            "chunk_size",
            "storage_grow_unit",
            "journal_size",
            "copy_on_read",
            "prefetch_start_delay",
            "data_file",
            "data_file_fmt",
            "need_zero_init",
            "backing_file",
            "backing_fmt",
        ] {
            assert!(
                run.stdout
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{key}=<"))),
                "{key} missing from {}",
                run.stdout
            );
        }
        assert!(run.stdout.lines().skip(1).all(|l| l.contains(" - ")));
    }
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn relative_base_resolves_against_the_image_directory() {
    let dir = scratch();
    let images = dir.path().join("images");
    fs::create_dir(&images).unwrap();
    sparse_file(&images.join("base.raw"), 3 << 20);
    // A decoy of another size in the working directory must not be used.
    sparse_file(&dir.path().join("base.raw"), 5 << 20);

    ok(dir.path(), &["create", "-b", "base.raw", "images/ov.fvd"]);
    let (h, _, _) = header_of(&images.join("ov.fvd"));
    assert_eq!(header_str(&h.base_img), "base.raw");
    assert_eq!(h.virtual_disk_size.get(), 3 << 20);

    let info = info_json(dir.path(), "images/ov.fvd");
    assert_eq!(info["backing-filename"], "base.raw");
    assert_eq!(info["full-backing-filename"], "images/base.raw");

    // A base that exists only relative to the working directory is not found.
    sparse_file(&dir.path().join("only-here.raw"), 1 << 20);
    let line = fails(
        dir.path(),
        &["create", "-b", "only-here.raw", "images/x.fvd"],
    );
    assert!(line.contains("images/only-here.raw"), "{line}");
    assert!(!images.join("x.fvd").exists());

    // An absolute base path is used as is.
    let abs = dir.path().join("only-here.raw");
    ok(
        dir.path(),
        &["create", "-b", abs.to_str().unwrap(), "images/abs.fvd"],
    );
    let (h, _, _) = header_of(&images.join("abs.fvd"));
    assert_eq!(header_str(&h.base_img), abs.to_str().unwrap());
    assert_eq!(h.virtual_disk_size.get(), 1 << 20);
}

#[test]
fn usage_errors_exit_1_with_one_line() {
    let dir = scratch();
    let line = fails(dir.path(), &[]);
    assert!(line.contains("--help"), "{line}");
    let line = fails(dir.path(), &["frobnicate"]);
    assert!(line.contains("frobnicate"), "{line}");
    let line = fails(dir.path(), &["info"]);
    assert!(
        line.contains("FILE") && line.contains("fvd-img info --help"),
        "{line}"
    );
    let line = fails(dir.path(), &["info", "--output", "xml", "x.fvd"]);
    assert!(line.contains("xml") && line.contains("json"), "{line}");

    let help = ok(dir.path(), &["create", "--help"]).stdout;
    assert!(help.contains("--force"), "{help}");
    assert!(help.contains("-o help"), "{help}");
    assert!(ok(dir.path(), &["--help"]).stdout.contains("info"));
}

#[test]
fn quiet_create_prints_nothing() {
    let dir = scratch();
    let run = ok(dir.path(), &["create", "-q", "q.fvd", "1M"]);
    assert!(run.stdout.is_empty());
    header_of(&dir.path().join("q.fvd"));
}

#[test]
fn base_cannot_be_the_image_itself() {
    let dir = scratch();
    ok(dir.path(), &["create", "self.fvd", "1M"]);
    let before = fs::read(dir.path().join("self.fvd")).unwrap();
    let line = fails(
        dir.path(),
        &["create", "--force", "-b", "self.fvd", "self.fvd"],
    );
    assert!(line.contains("backing file"), "{line}");
    assert_eq!(fs::read(dir.path().join("self.fvd")).unwrap(), before);
}
