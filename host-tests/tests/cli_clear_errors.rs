//! Failures of `fvd-img` name their real cause: the operating system's reason rather than
//! a bare "I/O error", an option out of range rather than the storage error it would
//! cause later, what a file is rather than what it is not, and commands that work on
//! every base format they can write.

mod common;

use common::{assert_contains, create, create_fvd, fails, ok, scratch, sparse_file};
use std::fs;
use std::os::unix::fs::FileExt;

const M: u64 = 1 << 20;

#[test]
fn create_refuses_a_storage_grow_unit_past_its_bound() {
    let dir = scratch();
    let d = dir.path();
    for unit in ["15E", "2T"] {
        let option = format!("compact_image=on,storage_grow_unit={unit}");
        let line = fails(d, &["create", "-f", "fvd", "-o", &option, "c.fvd", "1G"]);
        assert_contains(&line, "storage_grow_unit");
        assert_contains(&line, "at most 1099511627776 (1 TiB)");
        assert!(!d.join("c.fvd").exists());
    }
    // A large unit within the bound is fine, and the image works.
    create_fvd(
        d,
        &["-o", "compact_image=on,storage_grow_unit=1G", "c.fvd", "1G"],
    );
    ok(
        d,
        &["io", "-c", "write -q 0 64k", "-c", "read -q 0 64k", "c.fvd"],
    );
}

#[test]
fn commit_into_a_qed_base_writes_through_the_engine() {
    let dir = scratch();
    let d = dir.path();
    create(d, &["-f", "qed", "base.qed", "4M"]);
    create_fvd(d, &["-b", "base.qed", "-F", "qed", "top.fvd", "4M"]);
    ok(d, &["io", "-c", "write -q -P 5 64k 64k", "top.fvd"]);
    let run = ok(d, &["commit", "top.fvd"]);
    assert_contains(&run.stdout, "Committing into base file");
    assert!(
        run.stdout.ends_with("\nImage committed.\n"),
        "{}",
        run.stdout
    );
    ok(
        d,
        &[
            "io",
            "-r",
            "-c",
            "read -q -P 5 64k 64k",
            "-c",
            "read -q -P 0 0 64k",
            "base.qed",
        ],
    );
    ok(d, &["check", "base.qed"]);
    // A QED base cannot grow, like an FVD one.
    create_fvd(d, &["-b", "base.qed", "-F", "qed", "big.fvd", "8M"]);
    let line = fails(d, &["commit", "big.fvd"]);
    assert_contains(&line, "a base image in qed format cannot grow");
}

#[test]
fn update_says_what_a_file_that_is_not_fvd_is() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("disk.raw"), M);
    let line = fails(d, &["update", "disk.raw", "base_img_fmt=qed"]);
    assert_eq!(
        line,
        "fvd-img: 'disk.raw' is not an FVD image: it is a raw disk image; update changes FVD \
         headers only"
    );
    create(d, &["-f", "qed", "q.qed", "1M"]);
    let line = fails(d, &["update", "q.qed", "copy_on_read=on"]);
    assert_contains(&line, "it is a QED image");
}

#[test]
fn prefetch_of_a_fifo_says_it_is_not_a_regular_file() {
    let dir = scratch();
    let d = dir.path();
    let status = std::process::Command::new("mkfifo")
        .arg(d.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let line = fails(d, &["prefetch", "pipe"]);
    assert_eq!(
        line,
        "fvd-img: Could not open 'pipe': not a regular file or block device"
    );
}

#[test]
fn a_write_past_the_largest_file_says_file_too_large() {
    let dir = scratch();
    let d = dir.path();
    create_fvd(d, &["top.fvd", "1M"]);
    // data_offset (FORMAT.md §3, offset 24) far beyond any file system's largest file.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(d.join("top.fvd"))
        .unwrap();
    file.write_all_at(&(1u64 << 55).to_le_bytes(), 24).unwrap();
    let run = common::fvd_img(d, &["io", "-c", "write 0 512", "top.fvd"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "fvd-img: write failed: File too large\n");
}
