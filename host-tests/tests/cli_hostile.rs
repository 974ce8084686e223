//! Hostile and unusual input through `fvd-img`, run as a user would (the real binary in
//! scratch directories): growing a raw base keeps it sparse, persistent I/O errors end a
//! command with a clear error instead of a spin, requests and outputs stay bounded in
//! memory, probing never mistakes a damaged image for raw data, every geometry `create`
//! accepts opens, and each failure names its real cause. Commands that could hang run
//! under `timeout`, so a regression fails instead of hanging the suite.

mod common;

use common::{assert_contains, create_fvd, fails, ok, run_tool, scratch, sparse_file, Run};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const M: u64 = 1 << 20;

/// Runs `fvd-img ARGS` in `cwd` under `timeout`: a command still running after 60 s is
/// killed and the test fails, instead of hanging.
fn bounded(cwd: &Path, args: &[&str]) -> Run {
    let mut all = vec!["60", env!("CARGO_BIN_EXE_fvd-img")];
    all.extend_from_slice(args);
    let run = run_tool("timeout", cwd, &all);
    assert_ne!(run.code, 124, "fvd-img {args:?} did not end within 60 s");
    run
}

/// Like [`bounded`], requiring exit status 1 and returning the stderr lines.
fn bounded_failure(cwd: &Path, args: &[&str]) -> Vec<String> {
    let run = bounded(cwd, args);
    assert_eq!(run.code, 1, "fvd-img {args:?} should fail: {run:#?}");
    let lines: Vec<String> = run.stderr.lines().map(str::to_string).collect();
    assert!(!lines.is_empty(), "fvd-img {args:?}: no message: {run:#?}");
    for line in &lines {
        assert!(line.starts_with("fvd-img: "), "{run:#?}");
    }
    lines
}

/// Sets header field `offset` (a u64) of the FVD image at `path` to `value`.
fn poke_u64(path: &Path, offset: u64, value: u64) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&value.to_le_bytes(), offset).unwrap();
}

/// `data_offset`'s place in the FVD header (FORMAT.md §3).
const DATA_OFFSET_FIELD: u64 = 24;

/// An image `top.fvd` of 4 MiB over a 1 MiB raw base of pattern data, whose data is
/// stored at 2^55 bytes into the image file: every write of guest data fails with EFBIG.
fn image_whose_writes_fail(d: &Path) {
    sparse_file(&d.join("base.raw"), M);
    ok(
        d,
        &["io", "-f", "raw", "-c", "write -q -P 1 0 1M", "base.raw"],
    );
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "top.fvd", "4M"]);
    poke_u64(&d.join("top.fvd"), DATA_OFFSET_FIELD, 1 << 55);
}

/// Bytes the file at `path` really occupies on disk (`st_blocks` × 512).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn commit_into_a_smaller_raw_base_keeps_the_grown_base_sparse() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), M);
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "top.fvd", "2G"]);
    // One piece of data far past the old end of the base, and nothing else.
    ok(d, &["io", "-c", "write -q -P 0x5a 1536M 64k", "top.fvd"]);
    let run = ok(d, &["commit", "top.fvd"]);
    assert!(
        run.stdout.ends_with("\nImage committed.\n"),
        "{}",
        run.stdout
    );
    let base = d.join("base.raw");
    assert_eq!(fs::metadata(&base).unwrap().len(), 2 << 30);
    // The overlay's 64 KiB is all the base may gain (plus file-system slack).
    assert!(
        allocated(&base) <= M,
        "a 2 GiB commit of 64 KiB of data allocated {} bytes in the base",
        allocated(&base)
    );
    let file = fs::File::open(&base).unwrap();
    let mut data = vec![0u8; 64 << 10];
    file.read_exact_at(&mut data, 1536 * M).unwrap();
    assert!(data.iter().all(|&b| b == 0x5a));
    file.read_exact_at(&mut data, 1536 * M + (64 << 10))
        .unwrap();
    assert!(data.iter().all(|&b| b == 0));
}

#[test]
fn prefetch_from_a_base_that_is_a_directory_ends_at_once_with_a_clear_error() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), M);
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "top.fvd", "4M"]);
    fs::create_dir(d.join("dir")).unwrap();
    ok(d, &["update", "top.fvd", "base_img=dir"]);
    // The open gate refuses a base that is not a regular file before anything runs.
    let lines = bounded_failure(d, &["prefetch", "top.fvd"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_contains(&lines[0], "it is a directory, not a regular file");
}

#[test]
fn prefetch_into_a_data_file_that_is_a_device_ends_at_once_with_a_clear_error() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), M);
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "data_file=data.raw",
            "top.fvd",
            "4M",
        ],
    );
    ok(d, &["update", "top.fvd", "data_file=/dev/zero"]);
    // The open gate refuses a data file that is a device before anything runs.
    let lines = bounded_failure(d, &["prefetch", "-q", "top.fvd"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_contains(&lines[0], "it is a character device, not a regular file");
}

#[test]
fn prefetch_whose_copies_cannot_be_written_ends_with_the_os_error() {
    let dir = scratch();
    let d = dir.path();
    image_whose_writes_fail(d);
    let lines = bounded_failure(d, &["prefetch", "top.fvd"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_contains(&lines[0], "File too large");
}

#[test]
fn io_reports_each_request_that_keeps_failing_and_goes_on() {
    let dir = scratch();
    let d = dir.path();
    image_whose_writes_fail(d);
    let run = bounded(
        d,
        &[
            "io",
            "-c",
            "write 0 64k",
            "-c",
            "aio_write 64k 64k",
            "-c",
            "aio_write 128k 64k",
            "-c",
            "aio_flush",
            "-c",
            "read -P 1 0 64k",
            "top.fvd",
        ],
    );
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(
        run.stderr,
        "fvd-img: write failed: File too large\n\
         fvd-img: aio_write failed: File too large\n\
         fvd-img: aio_write failed: File too large\n"
    );
    // The read after the failures still runs (and sees the base).
    assert_contains(&run.stdout, "read 65536/65536 bytes at offset 0");

    fs::create_dir(d.join("dir")).unwrap();
    ok(d, &["update", "top.fvd", "base_img=dir"]);
    let run = bounded(
        d,
        &[
            "io",
            "-c",
            "read 0 64k",
            "-c",
            "aio_read 64k 64k",
            "-c",
            "length",
            "top.fvd",
        ],
    );
    // A base that is a directory is refused by the open gate, before any request.
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(
        run.stderr,
        "fvd-img: Could not open 'dir' (the base of 'top.fvd'): it is a directory, not a regular file\n"
    );
    assert_eq!(run.stdout, "");
}

#[test]
fn rebase_whose_writes_keep_failing_ends_with_the_os_error() {
    let dir = scratch();
    let d = dir.path();
    image_whose_writes_fail(d);
    sparse_file(&d.join("new.raw"), 4 * M);
    for args in [
        ["rebase", "-b", "new.raw", "-F", "raw", "top.fvd"].as_slice(),
        ["rebase", "-b", "", "top.fvd"].as_slice(),
    ] {
        let lines = bounded_failure(d, args);
        assert_eq!(
            lines,
            ["fvd-img: Could not rebase 'top.fvd': File too large"],
            "{args:?}"
        );
    }
}

#[test]
fn every_block_size_create_accepts_opens_over_a_base() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), 16 * M);
    ok(
        d,
        &["io", "-f", "raw", "-c", "write -q -P 7 0 16M", "base.raw"],
    );
    for block in ["4M", "8M", "16M", "64M"] {
        let image = format!("top-{block}.fvd");
        let option = format!("block_size={block}");
        create_fvd(
            d,
            &["-b", "base.raw", "-F", "raw", "-o", &option, &image, "128M"],
        );
        // Copy-on-read fills whole blocks through engine memory sized for them.
        ok(
            d,
            &[
                "io",
                "--cor",
                "-c",
                "read -q -P 7 0 64k",
                "-c",
                "write -q -P 3 15M 512",
                &image,
            ],
        );
        ok(d, &["prefetch", "-q", &image]);
        ok(
            d,
            &[
                "io",
                "-r",
                "-c",
                "read -q -P 7 0 15M",
                "-c",
                "read -q -P 3 15M 512",
                &image,
            ],
        );
        ok(d, &["check", &image]);
    }
}

/// Runs `program ARGS` (arguments as raw bytes) in `cwd`.
fn run_bytes(program: &str, cwd: &Path, args: &[&[u8]]) -> Run {
    let output = std::process::Command::new(program)
        .args(args.iter().map(|a| OsStr::from_bytes(a)))
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn base_names_that_are_not_utf8_are_found_byte_for_byte() {
    let dir = scratch();
    let d = dir.path();
    let fvd_img = env!("CARGO_BIN_EXE_fvd-img");
    let base: &[u8] = b"base-\xff\xfe.raw";
    let other: &[u8] = b"other-\xe9.raw";
    let base_path = d.join(OsStr::from_bytes(base));
    fs::write(&base_path, vec![9u8; M as usize]).unwrap();
    sparse_file(&d.join(OsStr::from_bytes(other)), M);
    for (format, image) in [("fvd", "top.fvd"), ("qed", "top.qed")] {
        let run = run_bytes(
            fvd_img,
            d,
            &[
                b"create",
                b"-q",
                b"-f",
                format.as_bytes(),
                b"-b",
                base,
                b"-F",
                b"raw",
                image.as_bytes(),
                b"2M",
            ],
        );
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:#?}");
        // The stored name leads to the base, not to a lossy look-alike.
        ok(
            d,
            &[
                "io",
                "-c",
                "read -q -P 9 0 1M",
                "-c",
                "read -q -P 0 1M 1M",
                image,
            ],
        );
        ok(d, &["map", image]);
        ok(d, &["info", image]);
    }
    // qemu-io finds the same base through the QED header.
    let run = run_tool(
        "qemu-io",
        d,
        &["-f", "qed", "-c", "read -P 9 0 64k", "top.qed"],
    );
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(!run.stdout.contains("failed"), "{run:#?}");
    // A new non-UTF-8 name is stored byte for byte by rebase, and commit writes into it.
    let run = run_bytes(
        fvd_img,
        d,
        &[b"rebase", b"-u", b"-b", other, b"-F", b"raw", b"top.fvd"],
    );
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:#?}");
    ok(
        d,
        &[
            "io",
            "-c",
            "write -q -P 4 0 64k",
            "-c",
            "read -q -P 0 64k 64k",
            "top.fvd",
        ],
    );
    ok(d, &["commit", "-q", "top.fvd"]);
    let committed = fs::read(d.join(OsStr::from_bytes(other))).unwrap();
    assert!(committed[..64 << 10].iter().all(|&b| b == 4));
}

/// Overwrites bytes of the file at `path` at `offset`.
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

#[test]
fn a_damaged_or_2011_image_is_refused_as_what_it_seems_never_written_as_raw() {
    let dir = scratch();
    let d = dir.path();
    create_fvd(d, &["damaged.fvd", "1M"]);
    poke(&d.join("damaged.fvd"), 1, b"X");
    create_fvd(d, &["old.fvd", "1M"]);
    // The January 2011 driver's magic, as it lies on disk.
    poke(&d.join("old.fvd"), 0, &[0xA9, 0xF5, 0x43, 0x51]);
    common::create(d, &["-f", "qed", "damaged.qed", "1M"]);
    poke(&d.join("damaged.qed"), 0, b"q");
    let cases = [
        (
            "damaged.fvd",
            "seems to be an FVD image whose magic is damaged",
        ),
        (
            "old.fvd",
            "seems to be an FVD image of the January 2011 format",
        ),
        (
            "damaged.qed",
            "seems to be a QED image whose magic is damaged",
        ),
    ];
    for (file, seems) in cases {
        let before = fs::read(d.join(file)).unwrap();
        for command in ["io", "map", "convert"] {
            let args: Vec<&str> = match command {
                "io" => vec!["io", "-c", "write 0 512", file],
                "convert" => vec!["convert", "-O", "raw", file, "out.raw"],
                _ => vec![command, file],
            };
            let line = fails(d, &args);
            assert_contains(&line, seems);
            assert_contains(&line, "it is not opened as raw data (-f raw forces that)");
        }
        assert_eq!(fs::read(d.join(file)).unwrap(), before, "{file} changed");
        // The header checks say what is wrong with it.
        let line = fails(d, &["info", file]);
        assert!(
            line.contains("magic is") || line.contains("January 2011 format"),
            "{line}"
        );
        // Asked for explicitly, it is raw data like any file.
        ok(d, &["io", "-f", "raw", "-r", "-c", "read -q 0 512", file]);
    }
}

#[test]
fn a_probed_raw_file_warns_like_qemu_and_guards_its_first_sector() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("disk.raw"), M);
    // The warning is QEMU's, word for word; ordinary writes to sector 0 still work.
    let ours = bounded(d, &["io", "-c", "write -q -P 0x61 0 512", "disk.raw"]);
    assert_eq!(ours.code, 0, "{ours:#?}");
    let qemu = run_tool("qemu-io", d, &["-c", "write -q -P 0x61 0 512", "disk.raw"]);
    assert_eq!(qemu.code, 0, "{qemu:#?}");
    assert_eq!(ours.stderr, qemu.stderr);
    assert_contains(&ours.stderr, "probing guessed raw");
    // Read-only, or with the format given, there is nothing to warn about.
    ok(d, &["io", "-r", "-c", "read -q -P 0x61 0 512", "disk.raw"]);
    ok(
        d,
        &[
            "io",
            "-f",
            "raw",
            "-c",
            "write -q -P 0x61 0 512",
            "disk.raw",
        ],
    );

    // A file one byte short of looking like an FVD header: completing it through a probed
    // raw open is refused with qemu-io's error, and nothing is written.
    create_fvd(d, &["model.fvd", "1M"]);
    let mut header = fs::read(d.join("model.fvd")).unwrap()[..512].to_vec();
    header[..4].fill(0);
    header[8] = 0; // create_version 0: not an FVD header yet.
    let path = d.join("almost.raw");
    sparse_file(&path, M);
    poke(&path, 0, &header);
    let run = bounded(
        d,
        &[
            "io",
            "-c",
            "write -P 1 8 1",
            "-c",
            "read -q -P 0 8 1",
            "almost.raw",
        ],
    );
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr
            .ends_with("fvd-img: write failed: Operation not permitted\n"),
        "{run:#?}"
    );
    assert_eq!(fs::read(&path).unwrap()[..512], header[..]);
    // With -f raw the caller said what the file is: the write goes through.
    ok(
        d,
        &["io", "-f", "raw", "-c", "write -q -P 1 8 1", "almost.raw"],
    );
    assert_eq!(fs::read(&path).unwrap()[8], 1);
}

#[test]
fn io_refuses_requests_longer_than_qemu_io_does_with_its_messages() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("big.raw"), 3 << 30);
    create_fvd(d, &["big.fvd", "3G"]);
    for command in [
        "read 0 2G",
        "write 0 2G",
        "write -z 0 2G",
        "discard 0 2G",
        "aio_read 0 2G",
        "aio_write 0 2G",
        "aio_read 0 2147483648",
    ] {
        let qemu = run_tool("qemu-io", d, &["-f", "raw", "-c", command, "big.raw"]);
        assert_eq!(qemu.code, 1, "qemu-io {command}: {qemu:#?}");
        let expected = format!("fvd-img: {}", qemu.stdout);
        for (format, file) in [("raw", "big.raw"), ("fvd", "big.fvd")] {
            let run = bounded(d, &["io", "-f", format, "-c", command, file]);
            assert_eq!(run.code, 1, "{command} on {file}: {run:#?}");
            assert_eq!(run.stderr, expected, "{command} on {file}");
            assert_eq!(run.stdout, "", "{command} on {file}");
        }
    }
    // The longest request qemu-io takes is served.
    ok(
        d,
        &["io", "-f", "raw", "-c", "read -q 0 2147483136", "big.raw"],
    );
    assert_eq!(allocated(&d.join("big.raw")), 0);
}
