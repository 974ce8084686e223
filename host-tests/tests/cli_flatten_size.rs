//! Issue #18: an FVD image flattened by `rebase -b ''` or `prefetch` holds no more on disk
//! than the qcow2 `qemu-img rebase -b ''` leaves for the same data. Its bitmap is punched
//! once the header marking it fully prefetched is durable (FORMAT.md §7) and its journal at
//! the clean close (§10.5); `check` and `info` still see every block in the image.

mod common;

use common::{fvd_img, header_of, info_data, qemu_img, run_tool, scratch};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The base: `SIZE` bytes, sparse, with 1 MiB of data every 4 MiB (a smaller copy of
/// scripts/bench-bulk.sh's source; the default block size of 512 bytes gives a bitmap of
/// `SIZE / 4096` bytes, 64 KiB here).
const SIZE: u64 = 256 << 20;
const RUNS: u64 = 16;

fn make_base(dir: &Path) {
    let file = std::fs::File::create(dir.join("src.raw")).unwrap();
    file.set_len(SIZE).unwrap();
    use std::os::unix::fs::FileExt;
    for run in 0..RUNS {
        let bytes: Vec<u8> = (0..1u32 << 20)
            .map(|i| ((i ^ run as u32).wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        file.write_all_at(&bytes, run * (4 << 20)).unwrap();
    }
}

/// The overlay's own writes, as qemu-io / fvd-img io commands: 64 KiB every 8 MiB, inside
/// the base's data (so the flattened data is the base's: `RUNS` MiB).
const SMALL_EVERY: u64 = 8 << 20;

fn small_writes() -> Vec<String> {
    let mut args = Vec::new();
    for i in 0..RUNS * (4 << 20) / SMALL_EVERY {
        args.push("-c".to_string());
        args.push(format!("write -q -P 0x5a {} 64k", i * SMALL_EVERY));
    }
    args
}

fn on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn run_ok(run: common::Run, what: &str) {
    assert_eq!(run.code, 0, "{what}: {}{}", run.stdout, run.stderr);
}

/// The qcow2 that qemu-img flattens the same way: its bytes on disk.
fn qcow2_flattened(dir: &Path) -> u64 {
    run_ok(
        qemu_img(
            dir,
            &[
                "create", "-q", "-f", "qcow2", "-b", "src.raw", "-F", "raw", "ov.qcow2",
            ],
        ),
        "qemu-img create",
    );
    let mut args = small_writes();
    args.push("ov.qcow2".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(run_tool("qemu-io", dir, &args), "qemu-io");
    run_ok(
        qemu_img(dir, &["rebase", "-b", "", "ov.qcow2"]),
        "qemu-img rebase",
    );
    on_disk(&dir.join("ov.qcow2"))
}

/// An FVD overlay with default options, written like the qcow2, flattened by `command`.
fn fvd_flattened(dir: &Path, name: &str, command: &[&str]) {
    run_ok(
        fvd_img(
            dir,
            &[
                "create", "-q", "-f", "fvd", "-b", "src.raw", "-F", "raw", name,
            ],
        ),
        "fvd-img create",
    );
    let mut args = vec!["io".to_string()];
    args.extend(small_writes());
    args.push(name.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(fvd_img(dir, &args), "fvd-img io");
    let mut args = command.to_vec();
    args.push(name);
    run_ok(fvd_img(dir, &args), "flatten");
}

fn zeros(path: &Path, offset: u64, len: u64) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes[offset as usize..(offset + len) as usize]
        .iter()
        .all(|&b| b == 0)
}

#[test]
fn a_flattened_image_holds_no_more_on_disk_than_qemu_imgs_rebased_qcow2() {
    let dir = scratch();
    make_base(dir.path());
    let qcow2 = qcow2_flattened(dir.path());
    let data = on_disk(&dir.path().join("src.raw"));
    for (name, command) in [
        ("rebased.fvd", &["rebase", "-b", ""][..]),
        ("prefetched.fvd", &["prefetch", "-q"][..]),
    ] {
        fvd_flattened(dir.path(), name, command);
        let path = dir.path().join(name);
        let fvd = on_disk(&path);
        let (_, layout, _) = header_of(&path);
        assert!(layout.base_fully_prefetched, "{name}");
        let bitmap = layout.base.unwrap().bitmap;
        assert!(
            fvd <= qcow2,
            "{name}: {fvd} bytes on disk, the qcow2 {qcow2} (the data: {data})"
        );
        // Less than one bitmap over the data: the bitmap is not on disk any more.
        assert!(
            fvd < data + bitmap.len,
            "{name}: {fvd} bytes on disk for {data} bytes of data, bitmap {}",
            bitmap.len
        );
        assert!(
            zeros(&path, bitmap.offset, bitmap.len),
            "{name}: bitmap punched"
        );
        let journal = layout.journal.unwrap();
        assert!(
            zeros(&path, journal.offset, journal.len),
            "{name}: journal punched"
        );
    }
}

#[test]
fn check_and_info_of_a_flattened_image_with_a_punched_bitmap_see_every_block_in_it() {
    let dir = scratch();
    make_base(dir.path());
    fvd_flattened(dir.path(), "ov.fvd", &["rebase", "-b", ""]);
    let path = dir.path().join("ov.fvd");
    let (_, layout, _) = header_of(&path);
    let base = layout.base.unwrap();
    assert!(zeros(&path, base.bitmap.offset, base.bitmap.len));
    let run = fvd_img(dir.path(), &["check", "ov.fvd"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "Bitmap: {} block(s) in the image, 0 still in the base",
            base.blocks
        )),
        "{}",
        run.stdout
    );
    let info = info_data(dir.path(), "ov.fvd");
    assert_eq!(info["base_blocks_in_image"], base.blocks, "{info}");
    // Without the base, the image still reads as the base with the overlay's writes.
    let mut expected = std::fs::read(dir.path().join("src.raw")).unwrap();
    for i in 0..RUNS * (4 << 20) / SMALL_EVERY {
        let at = (i * SMALL_EVERY) as usize;
        expected[at..at + (64 << 10)].fill(0x5a);
    }
    std::fs::write(dir.path().join("expected.raw"), &expected).unwrap();
    drop(expected);
    std::fs::remove_file(dir.path().join("src.raw")).unwrap();
    let run = fvd_img(
        dir.path(),
        &["compare", "-F", "raw", "ov.fvd", "expected.raw"],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // A rebase onto another base keeps the image independent (the flag stays set).
    std::fs::write(dir.path().join("other.raw"), vec![0x11u8; 1 << 20]).unwrap();
    let run = fvd_img(
        dir.path(),
        &["rebase", "-b", "other.raw", "-F", "raw", "ov.fvd"],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(header_of(&path).1.base_fully_prefetched);
    let run = fvd_img(
        dir.path(),
        &["compare", "-F", "raw", "ov.fvd", "expected.raw"],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = fvd_img(dir.path(), &["check", "ov.fvd"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}
