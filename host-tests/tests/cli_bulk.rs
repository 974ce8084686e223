//! The bulk commands (convert, rebase -b '', prefetch) keep their outputs sparse: holes and
//! all-zero blocks of the source are recorded as zeros, never written as data; and they
//! show qemu-img's progress line with `-p`.

mod common;

use common::{assert_contains, fvd_img, ok, qemu_img, scratch};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Bytes the file takes on disk.
fn on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A 16 MiB sparse raw disk: 1 MiB of data at 2 MiB and at 9 MiB, 2 MiB of zeros written
/// as data at 5 MiB (allocated, but all zero), holes elsewhere; returns its bytes.
fn sparse_source(path: &Path) -> Vec<u8> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap();
    file.set_len(16 * MIB).unwrap();
    let mut bytes = vec![0u8; (16 * MIB) as usize];
    for start in [2 * MIB, 9 * MIB] {
        let data: Vec<u8> = (0..MIB).map(|i| ((i + start) % 251 + 1) as u8).collect();
        file.write_all_at(&data, start).unwrap();
        bytes[start as usize..(start + MIB) as usize].copy_from_slice(&data);
    }
    file.write_all_at(&vec![0u8; (2 * MIB) as usize], 5 * MIB)
        .unwrap();
    file.sync_all().unwrap();
    bytes
}

/// Flattens an overlay of a sparse base with `command` and checks that the image took
/// (about) only the base's 2 MiB of data, and reads as the base without it.
fn flattening_stays_sparse(command: &[&str]) {
    let dir = scratch();
    let d = dir.path();
    let expected = sparse_source(&d.join("base.raw"));
    std::fs::write(d.join("expected.raw"), &expected).unwrap();
    for (name, opts) in [
        ("plain.fvd", "block_size=65536"),
        ("compact.fvd", "compact_image=on,block_size=65536"),
    ] {
        ok(
            d,
            &[
                "create", "-q", "-f", "fvd", "-b", "base.raw", "-F", "raw", "-o", opts, name,
            ],
        );
        let before = on_disk(&d.join(name));
        let mut args = command.to_vec();
        args.push(name);
        ok(d, &args);
        let grown = on_disk(&d.join(name)) - before;
        // 2 MiB of data, plus the metadata the copy changes (bitmap, table, journal).
        assert!(
            grown <= 2 * MIB + 256 * 1024,
            "{name}: {command:?} took {grown} more bytes on disk for 2 MiB of data"
        );
    }
    std::fs::remove_file(d.join("base.raw")).unwrap();
    for name in ["plain.fvd", "compact.fvd"] {
        let out = fvd_img(d, &["compare", "-F", "raw", name, "expected.raw"]);
        assert_eq!(out.code, 0, "{name}: {}{}", out.stdout, out.stderr);
    }
}

#[test]
fn prefetch_leaves_all_zero_base_blocks_unwritten() {
    flattening_stays_sparse(&["prefetch", "-q"]);
}

#[test]
fn rebase_without_base_leaves_all_zero_base_blocks_unwritten() {
    flattening_stays_sparse(&["rebase", "-q", "-b", ""]);
}

#[test]
fn prefetch_prints_progress_with_p() {
    let dir = scratch();
    let d = dir.path();
    sparse_source(&d.join("base.raw"));
    for rate in [None, Some("1G")] {
        ok(d, &["create", "-q", "-b", "base.raw", "-F", "raw", "t.fvd"]);
        let mut args = vec!["prefetch", "-p"];
        if let Some(rate) = rate {
            args.extend(["-r", rate]);
        }
        args.push("t.fvd");
        let run = ok(d, &args);
        assert_contains(&run.stdout, "    (0.00/100%)\r");
        assert_contains(&run.stdout, "    (100.00/100%)\r\n");
        assert_contains(&run.stdout, "no longer needs its base");
        std::fs::remove_file(d.join("t.fvd")).unwrap();
    }
    ok(d, &["create", "-q", "-b", "base.raw", "-F", "raw", "t.fvd"]);
    let quiet = ok(d, &["prefetch", "-q", "-p", "t.fvd"]);
    assert!(quiet.stdout.is_empty(), "{}", quiet.stdout);
}

#[test]
fn convert_output_is_no_larger_than_qemu_img_qcow2() {
    let dir = scratch();
    let d = dir.path();
    sparse_source(&d.join("src.raw"));
    let qcow2 = qemu_img(
        d,
        &["convert", "-f", "raw", "-O", "qcow2", "src.raw", "q.qcow2"],
    );
    assert_eq!(qcow2.code, 0, "{}", qcow2.stderr);
    let qed = qemu_img(
        d,
        &["convert", "-f", "raw", "-O", "qed", "src.raw", "q.qed"],
    );
    assert_eq!(qed.code, 0, "{}", qed.stderr);
    let limit = on_disk(&d.join("q.qcow2"));
    for (name, format, opts) in [
        ("plain.fvd", "fvd", "compact_image=off"),
        ("compact.fvd", "fvd", "compact_image=on"),
        ("out.qed", "qed", "cluster_size=65536"),
    ] {
        ok(
            d,
            &[
                "convert", "-f", "raw", "-O", format, "-o", opts, "src.raw", name,
            ],
        );
        let size = on_disk(&d.join(name));
        assert!(
            size <= limit,
            "{name}: {size} bytes on disk, qemu-img's qcow2 {limit}"
        );
        let back = format!("{name}.raw");
        ok(d, &["convert", "-O", "raw", name, &back]);
        let same = qemu_img(d, &["compare", "-f", "raw", "-F", "raw", "src.raw", &back]);
        assert_eq!(same.code, 0, "{name}: {}{}", same.stdout, same.stderr);
        // A raw output is as sparse as qemu-img's: the 2 MiB of data, nothing else.
        assert!(on_disk(&d.join(&back)) <= 2 * MIB + 64 * 1024);
    }
    let qed_size = on_disk(&d.join("out.qed"));
    assert!(qed_size <= on_disk(&d.join("q.qed")), "{qed_size}");
    let check = qemu_img(d, &["check", "-f", "qed", "out.qed"]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    let same = qemu_img(
        d,
        &["compare", "-f", "raw", "-F", "qed", "src.raw", "out.qed"],
    );
    assert_eq!(same.code, 0, "{}{}", same.stdout, same.stderr);
}

#[test]
fn compare_reports_the_first_differing_sector_as_qemu_img_does() {
    let dir = scratch();
    let d = dir.path();
    sparse_source(&d.join("a.raw"));
    ok(d, &["convert", "-O", "fvd", "a.raw", "a.fvd"]);
    // One byte in a hole of the source, one inside its data: the earlier one is reported.
    for (offset, other) in [(12 * MIB + 777, None), (9 * MIB + 5, Some(12 * MIB + 777))] {
        sparse_source(&d.join("b.raw"));
        let file = OpenOptions::new()
            .write(true)
            .open(d.join("b.raw"))
            .unwrap();
        for at in [Some(offset), other].into_iter().flatten() {
            file.write_all_at(b"x", at).unwrap();
        }
        let expected = format!("Content mismatch at offset {}!", offset / 512 * 512);
        for a in ["a.raw", "a.fvd"] {
            let ours = fvd_img(d, &["compare", a, "b.raw"]);
            assert_eq!(ours.code, 1, "{}", ours.stderr);
            assert_eq!(ours.stdout.trim(), expected);
        }
        let theirs = qemu_img(d, &["compare", "-f", "raw", "-F", "raw", "a.raw", "b.raw"]);
        assert_eq!(theirs.stdout.trim(), expected);
    }
    assert_eq!(fvd_img(d, &["compare", "a.fvd", "a.raw"]).code, 0);
}
