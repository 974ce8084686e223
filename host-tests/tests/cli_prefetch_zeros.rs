//! `fvd-img prefetch -r RATE` (the engine's own adaptive prefetch) keeps the image as sparse
//! as its base: base blocks that are all zero are recorded as zeros (a punched range, or
//! only the bitmap on an unallocated compact chunk), never written as data, and the image
//! still reads as the base, checks clean and is marked fully prefetched.

mod common;

use common::{fvd_img, header_of, ok, scratch};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const MIB: u64 = 1 << 20;
const BASE_SIZE: u64 = 64 * MIB;
/// Pieces of data in the base: 256 KiB at 3 MiB, 11 MiB, ... (2 MiB in all).
const PIECE: u64 = 256 * 1024;
const PIECES: u64 = 8;

/// Bytes the file takes on disk.
fn on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A 64 MiB sparse raw base: [`PIECES`] pieces of data among holes, plus 4 MiB of zeros
/// written as data (allocated but all zero, so only reading the bytes finds them).
fn sparse_base(path: &Path) {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap();
    file.set_len(BASE_SIZE).unwrap();
    for i in 0..PIECES {
        let start = (i * 8 + 3) * MIB;
        let data: Vec<u8> = (0..PIECE).map(|j| ((j + i) % 251 + 1) as u8).collect();
        file.write_all_at(&data, start).unwrap();
    }
    file.write_all_at(&vec![0u8; (4 * MIB) as usize], 40 * MIB)
        .unwrap();
    file.sync_all().unwrap();
}

#[test]
fn engine_prefetch_with_a_rate_records_all_zero_base_blocks_as_zeros() {
    let dir = scratch();
    let d = dir.path();
    sparse_base(&d.join("base.raw"));
    let data = PIECES * PIECE;
    let images = [
        ("plain.fvd", None),
        ("compact.fvd", Some("compact_image=on")),
        ("plain-64k.fvd", Some("block_size=65536")),
    ];
    for (name, opts) in images {
        let mut args = vec!["create", "-q", "-f", "fvd", "-b", "base.raw", "-F", "raw"];
        if let Some(opts) = opts {
            args.extend(["-o", opts]);
        }
        args.push(name);
        ok(d, &args);
        let before = on_disk(&d.join(name));
        let out = ok(d, &["prefetch", "-r", "1G", name]);
        assert!(out.stdout.contains("no longer needs its base"), "{out:?}");
        let grown = on_disk(&d.join(name)) - before;
        // The base's 2 MiB of data, plus the metadata prefetch changes (bitmap, table,
        // journal): not the 64 MiB the base's size would take as data.
        assert!(
            grown <= data + 512 * 1024,
            "{name}: prefetch took {grown} bytes on disk for {data} bytes of data"
        );
        let layout = header_of(&d.join(name)).1;
        assert!(layout.base_fully_prefetched, "{name}");
        // The bitmap is never read again: it holds no space (a hole, reading as zeros).
        let bitmap = layout.base.unwrap().bitmap;
        let bytes = std::fs::read(d.join(name)).unwrap();
        assert!(
            bytes[bitmap.offset as usize..][..bitmap.len as usize]
                .iter()
                .all(|&b| b == 0),
            "{name}: bitmap released"
        );
        let out = ok(d, &["check", name]);
        assert!(
            out.stdout.contains("No errors were found"),
            "{name}: {out:?}"
        );
        let out = ok(d, &["prefetch", name]);
        assert_eq!(out.stdout.trim(), "Image is already fully prefetched.");
    }
    // The images read as the base, which they no longer read.
    std::fs::rename(d.join("base.raw"), d.join("expected.raw")).unwrap();
    for (name, _) in images {
        let out = fvd_img(d, &["compare", "-F", "raw", name, "expected.raw"]);
        assert_eq!(out.code, 0, "{name}: {}{}", out.stdout, out.stderr);
    }
}
