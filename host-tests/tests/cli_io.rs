//! `fvd-img io`, `convert`, `compare` and `map`, driven as a user would: the real binary in
//! scratch directories, results checked by reading the files back, by the tool itself
//! and by QEMU's own qemu-img and qemu-io (which must be installed: a missing tool fails
//! the interop tests).

mod common;

use common::{
    assert_contains, compact, create, create_fvd, fails_with, fvd_img, info_data, info_json,
    listing, map_json, ok, run_tool, scratch, sparse_file, Run,
};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// `fvd-img io` with each of `commands` as a `-c`, before `file`.
fn io_args<'a>(pre: &[&'a str], commands: &[&'a str], file: &'a str) -> Vec<&'a str> {
    let mut args = vec!["io"];
    args.extend_from_slice(pre);
    for command in commands {
        args.push("-c");
        args.push(command);
    }
    args.push(file);
    args
}

/// Runs `fvd-img io` and requires success.
fn io_ok(cwd: &Path, pre: &[&str], commands: &[&str], file: &str) -> Run {
    ok(cwd, &io_args(pre, commands, file))
}

/// Writes `len` bytes of `byte` at `offset` of the raw file at `path`.
fn poke(path: &Path, offset: u64, len: usize, byte: u8) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![byte; len], offset).unwrap();
}

fn mapped_chunks(cwd: &Path, file: &str) -> u64 {
    info_data(cwd, file)["mapped_chunks"]
        .as_u64()
        .expect("mapped_chunks")
}

/// Creates FVD images of each kind the io tests run on: plain, compact, and a copy-on-write
/// image over a zero raw base. Returns their names.
fn each_kind(dir: &Path, size: &str) -> Vec<&'static str> {
    create_fvd(dir, &["plain.fvd", size]);
    compact(dir, "compact.fvd", size);
    let bytes = fvd_core_size(size);
    sparse_file(&dir.join("zero.raw"), bytes);
    create(dir, &["-b", "zero.raw", "-F", "raw", "cow.fvd"]);
    vec!["plain.fvd", "compact.fvd", "cow.fvd"]
}

fn fvd_core_size(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.len() - 1);
    let shift = match unit {
        "k" => 10,
        "M" => 20,
        _ => panic!("size {text}"),
    };
    number.parse::<u64>().unwrap() << shift
}

#[test]
fn io_writes_and_reads_patterns_like_qemu_io() {
    let dir = scratch();
    for image in each_kind(dir.path(), "4M") {
        let run = io_ok(
            dir.path(),
            &[],
            &[
                "write -P 0x5a 0 64k",
                "write 64k 4k",
                "read -P 0x5a 0 64k",
                "read -P 0xcd 64k 4k",
                "read -P 0 68k 1M",
            ],
            image,
        );
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 10, "{image}: {}", run.stdout);
        assert_eq!(lines[0], "wrote 65536/65536 bytes at offset 0");
        assert!(
            lines[1].starts_with("64 KiB, 1 ops; ") && lines[1].ends_with(" ops/sec)"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(" sec (") && lines[1].contains("/sec and "));
        assert_eq!(lines[2], "wrote 4096/4096 bytes at offset 65536");
        assert!(lines[3].starts_with("4 KiB, 1 ops; "));
        assert_eq!(lines[4], "read 65536/65536 bytes at offset 0");
        assert_eq!(lines[6], "read 4096/4096 bytes at offset 65536");
        assert_eq!(lines[8], "read 1048576/1048576 bytes at offset 69632");
        assert!(lines[9].starts_with("1 MiB, 1 ops; "));

        // The data is durable: a new process, opened read-only, sees it.
        let run = io_ok(
            dir.path(),
            &["-r"],
            &["read -q -P 0x5a 0 64k", "read -q -P 0xcd 64k 4k"],
            image,
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        let info = info_json(dir.path(), image);
        assert_eq!(info["dirty-flag"], false, "{image} left dirty");
    }
}

#[test]
fn pattern_mismatch_is_reported_and_the_status_is_1_but_commands_go_on() {
    let dir = scratch();
    create_fvd(dir.path(), &["t.fvd", "1M"]);
    let run = fvd_img(
        dir.path(),
        &io_args(
            &[],
            &[
                "write -P 1 0 4k",
                "read -P 2 0 4k",
                "write -P 3 8k 512",
                "read -P 3 8k 512",
            ],
            "t.fvd",
        ),
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[2],
        "Pattern verification failed at offset 0, 4096 bytes"
    );
    assert_eq!(lines[3], "read 4096/4096 bytes at offset 0");
    assert_eq!(lines[5], "wrote 512/512 bytes at offset 8192");
    assert_eq!(lines[7], "read 512/512 bytes at offset 8192");
    // The commands after the mismatch ran for real.
    io_ok(dir.path(), &[], &["read -q -P 3 8k 512"], "t.fvd");
}

#[test]
fn verbose_read_dumps_hex_like_qemu_io() {
    let dir = scratch();
    create_fvd(dir.path(), &["t.fvd", "1M"]);
    io_ok(
        dir.path(),
        &[],
        &["write 0 512", "write -P 0x41 512 512"],
        "t.fvd",
    );
    let run = io_ok(dir.path(), &[], &["read -v 0 1k"], "t.fvd");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 64 + 2);
    assert_eq!(
        lines[0],
        "00000000:  cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd  ................"
    );
    assert_eq!(
        lines[32],
        "00000200:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA"
    );
    assert_eq!(lines[64], "read 1024/1024 bytes at offset 0");
}

#[test]
fn overlapping_aio_writes_complete_in_order_and_the_last_submitted_wins() {
    let dir = scratch();
    for image in each_kind(dir.path(), "4M") {
        let run = io_ok(
            dir.path(),
            &[],
            &[
                "aio_write -P 1 0 64k",
                "aio_write -P 2 32k 64k",
                "aio_write -P 3 0 4k",
                "aio_write -z 36k 4k",
                "aio_read -P 0 1M 4k",
                "aio_flush",
                "read -P 3 0 4k",
                "read -P 1 4k 28k",
                "read -P 2 32k 4k",
                "read -P 0 36k 4k",
                "read -P 2 40k 56k",
                "read -P 0 96k 4k",
            ],
            image,
        );
        let reports: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| l.contains(" bytes at offset "))
            .collect();
        assert_eq!(
            &reports[..5],
            [
                "wrote 65536/65536 bytes at offset 0",
                "wrote 65536/65536 bytes at offset 32768",
                "wrote 4096/4096 bytes at offset 0",
                "wrote 4096/4096 bytes at offset 36864",
                "read 4096/4096 bytes at offset 1048576",
            ],
            "{image}: {}",
            run.stdout
        );
    }
}

#[test]
fn more_aio_requests_than_the_engine_has_slots() {
    let dir = scratch();
    compact(dir.path(), "c.fvd", "16M");
    // 100 writes to the same block and 100 to distinct chunks, all queued at once.
    let mut commands: Vec<String> = (0..100)
        .map(|i| format!("aio_write -q -P {} 0 4k", i + 1))
        .collect();
    commands.extend((0..100).map(|i| format!("aio_write -q -P {} {}k 4k", i + 1, 64 * (i + 1))));
    commands.push("aio_flush".into());
    commands.push("read -q -P 100 0 4k".into());
    commands.extend((0..100).map(|i| format!("read -q -P {} {}k 4k", i + 1, 64 * (i + 1))));
    let refs: Vec<&str> = commands.iter().map(String::as_str).collect();
    let run = io_ok(dir.path(), &[], &refs, "c.fvd");
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(mapped_chunks(dir.path(), "c.fvd"), 101);
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeros() {
    let dir = scratch();
    for image in each_kind(dir.path(), "4M") {
        let run = io_ok(
            dir.path(),
            &[],
            &[
                "write -P 7 0 1M",
                "discard 64k 64k",
                "write -z 256k 8k",
                "read -P 7 0 64k",
                "read -P 0 64k 64k",
                "read -P 7 128k 128k",
                "read -P 0 256k 8k",
                "read -P 7 264k 760k",
            ],
            image,
        );
        assert_contains(
            &run.stdout,
            "discard 65536/65536 bytes at offset 65536\n64 KiB, 1 ops; ",
        );
        assert!(run
            .stdout
            .contains("wrote 8192/8192 bytes at offset 262144\n"));
        io_ok(dir.path(), &["-r"], &["read -q -P 0 64k 64k"], image);
    }
}

#[test]
fn discard_over_a_base_reads_zeros_not_the_base() {
    let dir = scratch();
    sparse_file(&dir.path().join("base.raw"), 1 << 20);
    poke(&dir.path().join("base.raw"), 0, 1 << 20, 0x11);
    create(dir.path(), &["-b", "base.raw", "-F", "raw", "ov.fvd"]);
    io_ok(
        dir.path(),
        &[],
        &["read -q -P 0x11 0 1M", "discard 4k 4k", "write -z 64k 4k"],
        "ov.fvd",
    );
    io_ok(
        dir.path(),
        &["-r"],
        &[
            "read -q -P 0x11 0 4k",
            "read -q -P 0 4k 4k",
            "read -q -P 0x11 8k 56k",
            "read -q -P 0 64k 4k",
            "read -q -P 0x11 68k 956k",
        ],
        "ov.fvd",
    );
    // The base is untouched.
    let base = fs::read(dir.path().join("base.raw")).unwrap();
    assert!(base.iter().all(|&b| b == 0x11));
}

#[test]
fn read_only_refuses_writes_and_the_status_is_1() {
    let dir = scratch();
    create_fvd(dir.path(), &["t.fvd", "1M"]);
    io_ok(dir.path(), &[], &["write -P 5 0 4k"], "t.fvd");
    let before = fs::read(dir.path().join("t.fvd")).unwrap();
    for command in [
        "write -P 6 0 4k",
        "write -z 0 4k",
        "discard 0 4k",
        "aio_write 0 4k",
    ] {
        let run = fvd_img(
            dir.path(),
            &io_args(&["-r"], &[command, "read -P 5 0 4k"], "t.fvd"),
        );
        assert_eq!(run.code, 1, "{command}: {run:?}");
        let verb = command.split(' ').next().unwrap();
        assert_eq!(
            run.stderr,
            format!("fvd-img: {verb} failed: image is opened read-only\n"),
            "{command}"
        );
        // The read after the refused write ran.
        assert!(run.stdout.starts_with("read 4096/4096 bytes at offset 0\n"));
    }
    assert_eq!(fs::read(dir.path().join("t.fvd")).unwrap(), before);
}

#[test]
fn io_errors_are_one_clear_line_each() {
    let dir = scratch();
    create_fvd(dir.path(), &["t.fvd", "1M"]);
    for (command, needle) in [
        // Synchronous requests of any alignment are read-modify-write; queued ones are
        // sector-aligned on images.
        (
            "aio_read 1000 512",
            "aio_read: offset 1000 is not a multiple of 512",
        ),
        (
            "aio_write 0 100",
            "aio_write: length 100 is not a multiple of 512",
        ),
        (
            "read 1M 512",
            "read failed: request extends past the end of the disk",
        ),
        (
            "write 1020k 8k",
            "write failed: request extends past the end of the disk",
        ),
        ("read -P 0x100 0 512", "0x100 is not a valid pattern byte"),
        (
            "write -P 1 -z 0 512",
            "write: -z and -P/-s cannot be specified at the same time",
        ),
        ("read 0", "read: expected OFF and LEN, got 1 argument"),
        ("read -x 0 512", "read: invalid option -- 'x'"),
        ("read 0 1Q", "read: invalid length"),
        ("frobnicate", "command \"frobnicate\" not found"),
    ] {
        let line = fails_with(dir.path(), 1, &io_args(&[], &[command], "t.fvd"));
        assert!(line.contains(needle), "{command}: {line}");
    }
    let line = fails_with(dir.path(), 1, &["io", "-c", "read 0 512", "missing.fvd"]);
    assert_eq!(
        line,
        "fvd-img: Could not open 'missing.fvd': No such file or directory"
    );
    let line = fails_with(dir.path(), 1, &["io", "-f", "qcow2", "t.fvd"]);
    assert_eq!(line, "fvd-img: Unknown file format 'qcow2'");
}

#[test]
fn raw_files_probed_or_forced_and_commands_from_stdin() {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    sparse_file(&raw, 1 << 20);
    // Raw files are byte-addressed, like qemu-io; a probed one opened for writing gets
    // qemu-io's warning.
    let run = fvd_img(
        dir.path(),
        &io_args(
            &[],
            &["write -P 0x61 100 3", "read -P 0x61 100 3"],
            "disk.raw",
        ),
    );
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr.starts_with(
            "WARNING: Image format was not specified for 'disk.raw' and probing guessed raw."
        ),
        "{run:#?}"
    );
    let bytes = fs::read(&raw).unwrap();
    assert_eq!(&bytes[99..104], &[0, 0x61, 0x61, 0x61, 0]);
    assert_eq!(bytes.len(), 1 << 20);

    // An FVD image forced to raw is its file's bytes.
    create_fvd(dir.path(), &["t.fvd", "1M"]);
    let run = io_ok(dir.path(), &["-f", "raw", "-r"], &["read -v 0 16"], "t.fvd");
    assert!(
        run.stdout.starts_with("00000000:  46 56 44 00 "),
        "{}",
        run.stdout
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_fvd-img"))
        .args(["io", "-t", "none", "t.fvd"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"# comment\n\nwrite -P 9 0 4k\nread -P 9 0 4k\nquit\nwrite 0 4k\n")
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    // `quit` stopped before the last write.
    io_ok(dir.path(), &["-r"], &["read -q -P 9 0 4k"], "t.fvd");
}

/// A 64 MiB raw file with patterns at a few places, mostly holes. Returns the written
/// ranges.
fn patterned_raw(path: &Path) -> Vec<(u64, usize, u8)> {
    let ranges = vec![
        (0, 64 << 10, 0x11),
        (10 << 20, 1 << 20, 0x22),
        ((40 << 20) + 4096, 4096, 0x33),
        ((64 << 20) - 512, 512, 0x44),
    ];
    sparse_file(path, 64 << 20);
    for &(offset, len, byte) in &ranges {
        poke(path, offset, len, byte);
    }
    ranges
}

#[test]
fn convert_raw_to_fvd_plain_and_compact_and_back() {
    let dir = scratch();
    let d = dir.path();
    patterned_raw(&d.join("src.raw"));
    // Written zeros in the source must not be copied either.
    poke(&d.join("src.raw"), 20 << 20, 2 << 20, 0);
    ok(d, &["convert", "-O", "fvd", "src.raw", "plain.fvd"]);
    ok(
        d,
        &[
            "convert",
            "-O",
            "fvd",
            "-o",
            "compact_image=on",
            "src.raw",
            "compact.fvd",
        ],
    );
    for image in ["plain.fvd", "compact.fvd"] {
        let info = info_json(d, image);
        assert_eq!(info["virtual-size"], 64 << 20);
        assert_eq!(info["dirty-flag"], false);
        assert!(info.get("backing-filename").is_none());
        let run = ok(d, &["compare", "src.raw", image]);
        assert_eq!(run.stdout, "Images are identical.\n");
        let run = ok(d, &["compare", image, "src.raw"]);
        assert_eq!(run.stdout, "Images are identical.\n");

        let back = format!("{image}.raw");
        ok(d, &["convert", "-O", "raw", image, &back]);
        assert_eq!(
            fs::read(d.join("src.raw")).unwrap(),
            fs::read(d.join(&back)).unwrap(),
            "{image} -> raw differs"
        );
    }
    // Three chunks of 1 MiB hold data (the 0x33 and 0x44 runs share none).
    assert_eq!(mapped_chunks(d, "compact.fvd"), 4);
    // The plain image and the raw copies stay sparse too.
    let allocated = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(d.join(name)).unwrap().blocks() * 512
    };
    assert!(
        allocated("plain.fvd") < 4 << 20,
        "{}",
        allocated("plain.fvd")
    );
    assert!(allocated("compact.fvd.raw") < 4 << 20);
    // fvd -> fvd as well.
    ok(d, &["convert", "-O", "fvd", "compact.fvd", "again.fvd"]);
    ok(d, &["compare", "-q", "again.fvd", "src.raw"]);
}

#[test]
fn convert_keeps_compact_images_sparse() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "src.fvd", "32M");
    io_ok(
        d,
        &[],
        &[
            "write -P 1 0 4k",
            "write -P 2 1M 64k",
            "write -P 0 2M 1M",
            "write -z 4M 1M",
            "write -P 3 31M 4k",
        ],
        "src.fvd",
    );
    // Zeros written as data take chunks; write -z on unallocated chunks does not.
    assert_eq!(mapped_chunks(d, "src.fvd"), 1 + 1 + 16 + 1);
    ok(
        d,
        &[
            "convert",
            "-O",
            "fvd",
            "-o",
            "compact_image=on,chunk_size=64k",
            "src.fvd",
            "dst.fvd",
        ],
    );
    // Zero-mapped chunks are skipped, and so are chunks holding only zeros.
    assert_eq!(mapped_chunks(d, "dst.fvd"), 3);
    ok(d, &["compare", "src.fvd", "dst.fvd"]);
    // The map shows exactly those chunks as local (the unwritten part of a chunk may be
    // reported as a zero-reading hole of the host file: merge before comparing).
    let map = map_json(d, "dst.fvd");
    let mut local: Vec<(u64, u64)> = Vec::new();
    for e in map.iter().filter(|e| e["kind"] == "local") {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match local.last_mut() {
            Some(last) if last.1 == start => last.1 += len,
            _ => local.push((start, start + len)),
        }
    }
    assert_eq!(
        local,
        [
            (0, 64 << 10),
            (1 << 20, (1 << 20) + (64 << 10)),
            (31 << 20, (31 << 20) + (64 << 10))
        ]
    );
    for (start, len) in [(0u64, 4096u64), (1 << 20, 64 << 10), (31 << 20, 4096)] {
        assert!(
            data_ranges(&map)
                .iter()
                .any(|&(s, e)| s <= start && start + len <= e),
            "{start}: {map:?}"
        );
        let written = map
            .iter()
            .find(|e| e["start"] == start)
            .unwrap_or_else(|| panic!("no run at {start}: {map:?}"));
        assert_eq!(
            (written["kind"].as_str(), written["zero"].as_bool()),
            (Some("local"), Some(false))
        );
    }
}

#[test]
fn convert_reads_through_the_base_chain_into_a_standalone_image() {
    let dir = scratch();
    let d = dir.path();
    patterned_raw(&d.join("base.raw"));
    create(d, &["-b", "base.raw", "-F", "raw", "mid.fvd"]);
    io_ok(d, &[], &["write -P 0x55 32k 64k"], "mid.fvd");
    create(d, &["-b", "mid.fvd", "-o", "compact_image=on", "top.fvd"]);
    io_ok(d, &[], &["write -P 0x66 10M 4k"], "top.fvd");
    ok(d, &["convert", "top.fvd", "flat.raw"]);
    let mut expected = fs::read(d.join("base.raw")).unwrap();
    expected[32 << 10..96 << 10].fill(0x55);
    expected[10 << 20..(10 << 20) + 4096].fill(0x66);
    assert_eq!(fs::read(d.join("flat.raw")).unwrap(), expected);

    ok(
        d,
        &[
            "convert",
            "-O",
            "fvd",
            "-o",
            "compact_image=on",
            "top.fvd",
            "flat.fvd",
        ],
    );
    let info = info_json(d, "flat.fvd");
    assert!(info.get("backing-filename").is_none(), "{info}");
    fs::remove_file(d.join("base.raw")).unwrap();
    ok(d, &["compare", "flat.fvd", "flat.raw"]);
}

#[test]
fn convert_refuses_existing_targets_and_leaves_nothing_on_failure() {
    let dir = scratch();
    let d = dir.path();
    patterned_raw(&d.join("src.raw"));
    fs::write(d.join("taken.fvd"), b"keep me").unwrap();
    let line = fails_with(d, 1, &["convert", "-O", "fvd", "src.raw", "taken.fvd"]);
    assert_eq!(
        line,
        "fvd-img: 'taken.fvd' already exists; use --force to overwrite it"
    );
    assert_eq!(fs::read(d.join("taken.fvd")).unwrap(), b"keep me");
    ok(
        d,
        &["convert", "--force", "-O", "fvd", "src.raw", "taken.fvd"],
    );
    ok(d, &["compare", "taken.fvd", "src.raw"]);

    // A source whose table turns out corrupt half-way: no target, no temporary file.
    create(d, &["-o", "compact_image=on", "bad.fvd", "8M"]);
    io_ok(d, &[], &["write -P 9 0 2M", "write -P 8 4M 1M"], "bad.fvd");
    let table = info_json(d, "bad.fvd")["format-specific"]["data"]["table_offset"]
        .as_u64()
        .unwrap();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(d.join("bad.fvd"))
        .unwrap();
    file.write_all_at(&0x8000_0001u32.to_le_bytes(), table + 4 * 4)
        .unwrap();
    drop(file);
    let before = listing(d);
    for format in ["raw", "fvd"] {
        let line = fails_with(d, 1, &["convert", "-O", format, "bad.fvd", "out.img"]);
        assert!(line.contains("corrupt table entry"), "{line}");
        assert_eq!(listing(d), before, "convert -O {format} left files behind");
    }

    for (args, needle) in [
        (
            vec!["convert", "-O", "qcow2", "src.raw", "x"],
            "Unknown file format 'qcow2'",
        ),
        (
            vec![
                "convert",
                "-O",
                "fvd",
                "-o",
                "backing_file=src.raw",
                "src.raw",
                "x",
            ],
            "-o backing_file is not supported by convert",
        ),
        (
            vec!["convert", "-O", "fvd", "-o", "nope=1", "src.raw", "x"],
            "Invalid parameter 'nope'",
        ),
        (
            vec!["convert", "-o", "compact_image=on", "src.raw", "x"],
            "Invalid parameter",
        ),
        (
            vec!["convert", "src.raw"],
            "Expecting a source and a target",
        ),
        (
            vec!["convert", "src.raw", "src.raw", "--force"],
            "is the source itself",
        ),
    ] {
        let line = fails_with(d, 1, &args);
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    assert!(!d.join("x").exists());
    let run = ok(d, &["convert", "-O", "fvd", "-o", "help"]);
    assert_contains(&run.stdout, "compact_image=");
}

#[test]
fn compare_exit_codes_and_messages() {
    let dir = scratch();
    let d = dir.path();
    patterned_raw(&d.join("a.raw"));
    ok(
        d,
        &[
            "convert",
            "-O",
            "fvd",
            "-o",
            "compact_image=on",
            "a.raw",
            "a.fvd",
        ],
    );
    fs::copy(d.join("a.raw"), d.join("b.raw")).unwrap();
    poke(&d.join("b.raw"), 5000, 1, 0x77);

    let run = ok(d, &["compare", "-f", "raw", "-F", "fvd", "a.raw", "a.fvd"]);
    assert_eq!(run.stdout, "Images are identical.\n");
    let run = fvd_img(d, &["compare", "a.fvd", "b.raw"]);
    assert_eq!(run.code, 1, "{run:?}");
    // The first differing sector, as qemu-img reports it.
    assert_eq!(run.stdout, "Content mismatch at offset 4608!\n");
    assert!(run.stderr.is_empty());
    let run = fvd_img(d, &["compare", "-q", "b.raw", "a.fvd"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (1, "", "")
    );
    let run = fvd_img(d, &["compare", "-q", "a.raw", "a.fvd"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""));

    // Errors exit 2, usage errors included.
    let line = fails_with(d, 2, &["compare", "a.raw", "missing.raw"]);
    assert_eq!(
        line,
        "fvd-img: Could not open 'missing.raw': No such file or directory"
    );
    fails_with(d, 2, &["compare", "a.raw"]);
    fails_with(d, 2, &["compare", "-f", "qcow2", "a.raw", "a.fvd"]);
    fails_with(d, 2, &["compare", "-f", "fvd", "a.raw", "a.fvd"]);
}

#[test]
fn compare_disks_of_different_sizes() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("small.raw"), 1 << 20);
    poke(&d.join("small.raw"), 0, 4096, 1);
    create(d, &["-o", "compact_image=on", "big.fvd", "3M"]);
    io_ok(d, &[], &["write -P 1 0 4k", "write -z 2M 4k"], "big.fvd");

    for (a, b) in [("small.raw", "big.fvd"), ("big.fvd", "small.raw")] {
        let run = ok(d, &["compare", a, b]);
        assert_eq!(
            run.stdout,
            "Warning: Image size mismatch!\nImages are identical.\n"
        );
        let run = fvd_img(d, &["compare", "-s", a, b]);
        assert_eq!(run.code, 1);
        assert_eq!(run.stdout, "Strict mode: Image size mismatch!\n");
    }
    // Data past the end of the smaller disk is a difference.
    io_ok(d, &[], &["write -P 2 2052k 512"], "big.fvd");
    let run = fvd_img(d, &["compare", "small.raw", "big.fvd"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "Warning: Image size mismatch!\nContent mismatch at offset 2101248!\n"
    );
    // A difference in the common part is found first.
    io_ok(d, &[], &["write -P 3 8k 512"], "big.fvd");
    let run = fvd_img(d, &["compare", "small.raw", "big.fvd"]);
    assert_eq!(run.stdout, "Content mismatch at offset 8192!\n");
}

#[test]
fn map_of_a_cow_image_over_a_raw_base() {
    let dir = scratch();
    let d = dir.path();
    sparse_file(&d.join("base.raw"), 4 << 20);
    poke(&d.join("base.raw"), 0, 1 << 20, 0x11);
    create(d, &["-b", "base.raw", "-F", "raw", "ov.fvd"]);
    io_ok(
        d,
        &[],
        &["write -P 0x22 64k 64k", "write -P 0x33 2M 4k"],
        "ov.fvd",
    );

    let map = map_json(d, "ov.fvd");
    let covered: u64 = map.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(covered, 4 << 20);
    let mut next = 0;
    for e in &map {
        assert_eq!(
            e["start"].as_u64().unwrap(),
            next,
            "runs are contiguous: {map:?}"
        );
        next += e["length"].as_u64().unwrap();
        assert_eq!(e["present"], true);
    }
    let find = |start: u64| {
        map.iter()
            .find(|e| e["start"] == start)
            .unwrap_or_else(|| panic!("no run at {start}: {map:?}"))
    };
    let first = find(0);
    assert_eq!(
        (
            first["kind"].as_str(),
            first["depth"].as_u64(),
            first["length"].as_u64()
        ),
        (Some("base"), Some(1), Some(64 << 10))
    );
    assert_eq!(
        (first["data"].as_bool(), first["offset"].as_u64()),
        (Some(true), Some(0))
    );

    let ov = fs::File::open(d.join("ov.fvd")).unwrap();
    for (start, len, byte) in [(64u64 << 10, 64u64 << 10, 0x22u8), (2 << 20, 4096, 0x33)] {
        let run = find(start);
        assert_eq!(run["kind"], "local");
        assert_eq!(run["depth"], 0);
        assert_eq!(
            (run["data"].as_bool(), run["zero"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(run["length"].as_u64(), Some(len));
        // The offset is where the data really is in the image file.
        let offset = run["offset"].as_u64().unwrap();
        let mut buf = vec![0u8; len as usize];
        ov.read_exact_at(&mut buf, offset).unwrap();
        assert!(buf.iter().all(|&b| b == byte), "data at {offset}");
    }
    let after = find(128 << 10);
    assert_eq!(
        (after["kind"].as_str(), after["offset"].as_u64()),
        (Some("base"), Some(128 << 10))
    );
    // Holes of the raw base read as zeros.
    let hole = find(1 << 20);
    assert_eq!(
        (
            hole["kind"].as_str(),
            hole["zero"].as_bool(),
            hole["data"].as_bool()
        ),
        (Some("base"), Some(true), Some(false))
    );

    let run = ok(d, &["map", "ov.fvd"]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "Offset          Length          Mapped to       File"
    );
    assert_eq!(
        lines[1],
        "0               0x10000         0               base.raw"
    );
    assert!(
        lines[2].starts_with("0x10000         0x10000         0x"),
        "{}",
        run.stdout
    );
    assert!(lines[2].ends_with("ov.fvd"));
    assert_eq!(
        lines[3],
        "0x20000         0xe0000         0x20000         base.raw"
    );
    assert!(
        lines[4].starts_with("0x200000        0x1000          0x") && lines[4].ends_with("ov.fvd")
    );
    assert_eq!(lines.len(), 5, "{}", run.stdout);
}

#[test]
fn map_of_compact_images_shows_zero_runs_and_merges() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "c.fvd", "1M");
    io_ok(d, &[], &["write 0 128k", "write 512k 64k"], "c.fvd");
    let map = map_json(d, "c.fvd");
    let summary: Vec<(u64, u64, &str)> = map
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, 128 << 10, "local"),
            (128 << 10, 384 << 10, "unallocated"),
            (512 << 10, 64 << 10, "local"),
            (576 << 10, 448 << 10, "unallocated"),
        ]
    );
    assert!(map[1].get("offset").is_none());
    // Never-written chunks of an image without a base: zeros, and not present (as
    // qemu-img map says of unallocated clusters).
    assert_eq!(
        (
            map[1]["zero"].as_bool(),
            map[1]["data"].as_bool(),
            map[1]["present"].as_bool()
        ),
        (Some(true), Some(false), Some(false))
    );
    assert_eq!(map[0]["present"].as_bool(), Some(true));
    let run = ok(
        d,
        &[
            "map",
            "--start-offset",
            "512k",
            "--max-length",
            "64k",
            "c.fvd",
        ],
    );
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert!(run
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("0x80000         0x10000 "));
}

// --- interoperability with QEMU's own tools -------------------------------------------

fn qemu(program: &str, cwd: &Path, args: &[&str]) -> Run {
    let run = run_tool(program, cwd, args);
    assert_eq!(run.code, 0, "{program} {args:?} failed: {run:?}");
    run
}

#[test]
fn qemu_io_written_raw_converts_to_fvd_and_compares_identical() {
    let dir = scratch();
    let d = dir.path();
    qemu(
        "qemu-img",
        d,
        &["create", "-q", "-f", "raw", "q.raw", "32M"],
    );
    qemu(
        "qemu-io",
        d,
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xa1 0 128k",
            "-c",
            "write -P 0xa2 5M 1M",
            "-c",
            "write -P 0xa3 31M 4k",
            "-c",
            "write -P 0xa4 20M 64k",
            "q.raw",
        ],
    );
    for options in ["compact_image=on", "compact_image=off"] {
        fs::remove_file(d.join("q.fvd")).ok();
        ok(
            d,
            &["convert", "-O", "fvd", "-o", options, "q.raw", "q.fvd"],
        );
        let run = ok(d, &["compare", "q.fvd", "q.raw"]);
        assert_eq!(run.stdout, "Images are identical.\n", "{options}");
        io_ok(
            d,
            &["-r"],
            &[
                "read -q -P 0xa4 20M 64k",
                "read -q -P 0 21M 10M",
                "read -q -P 0xa3 31M 4k",
            ],
            "q.fvd",
        );
    }
}

#[test]
fn fvd_converted_to_raw_is_identical_for_qemu_img_compare() {
    let dir = scratch();
    let d = dir.path();
    compact(d, "v.fvd", "16M");
    io_ok(
        d,
        &[],
        &[
            "write -P 0xb1 0 64k",
            "write -P 0xb2 3M 512",
            "aio_write -P 0xb3 15M 1M",
            "aio_flush",
        ],
        "v.fvd",
    );
    ok(d, &["convert", "v.fvd", "v.raw"]);
    // The same writes made by qemu-io into a raw file.
    qemu(
        "qemu-img",
        d,
        &["create", "-q", "-f", "raw", "ref.raw", "16M"],
    );
    qemu(
        "qemu-io",
        d,
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xb1 0 64k",
            "-c",
            "write -P 0xb2 3M 512",
            "-c",
            "write -P 0xb3 15M 1M",
            "ref.raw",
        ],
    );
    let run = qemu(
        "qemu-img",
        d,
        &["compare", "-f", "raw", "-F", "raw", "v.raw", "ref.raw"],
    );
    assert_eq!(run.stdout, "Images are identical.\n");
    // And a difference is seen by both tools at the same offset.
    io_ok(d, &["-f", "raw"], &["write -P 0xee 3M 512"], "v.raw");
    let theirs = run_tool(
        "qemu-img",
        d,
        &["compare", "-f", "raw", "-F", "raw", "v.raw", "ref.raw"],
    );
    let ours = fvd_img(d, &["compare", "v.raw", "ref.raw"]);
    assert_eq!((theirs.code, ours.code), (1, 1));
    assert_eq!(theirs.stdout, ours.stdout);
    assert_eq!(ours.stdout, "Content mismatch at offset 3145728!\n");
}

/// The `[start, end)` ranges of JSON map entries with `data: true`.
fn data_ranges(map: &[Value]) -> Vec<(u64, u64)> {
    map.iter()
        .filter(|e| e["data"] == true)
        .map(|e| {
            let start = e["start"].as_u64().unwrap();
            (start, start + e["length"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn qemu_img_map_and_ours_agree_on_where_data_is() {
    let dir = scratch();
    let d = dir.path();
    qemu(
        "qemu-img",
        d,
        &["create", "-q", "-f", "raw", "m.raw", "64M"],
    );
    let written = [(0u64, 64u64 << 10), (7 << 20, 1 << 20), (40 << 20, 4 << 10)];
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for (offset, len) in written {
        args.push("-c".into());
        args.push(format!("write -P 0x5e {offset} {len}"));
    }
    args.push("m.raw".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    qemu("qemu-io", d, &refs);
    ok(
        d,
        &[
            "convert",
            "-O",
            "fvd",
            "-o",
            "compact_image=on,chunk_size=64k",
            "m.raw",
            "m.fvd",
        ],
    );

    let run = qemu(
        "qemu-img",
        d,
        &["map", "--output", "json", "-f", "raw", "m.raw"],
    );
    let theirs: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    let ours = map_json(d, "m.fvd");
    let covers = |ranges: &[(u64, u64)], (start, end): (u64, u64)| {
        ranges.iter().any(|&(s, e)| s <= start && end <= e)
    };
    let their_data = data_ranges(&theirs);
    let our_data = data_ranges(&ours);
    for range in written.map(|(offset, len)| (offset, offset + len)) {
        assert!(
            covers(&their_data, range),
            "qemu-img map misses {range:?}: {theirs:?}"
        );
        assert!(
            covers(&our_data, range),
            "our map misses {range:?}: {ours:?}"
        );
    }
    // Neither reports data far from what was written (allocation granularity aside).
    let near = |ranges: &[(u64, u64)]| {
        ranges.iter().all(|&(s, e)| {
            written
                .iter()
                .any(|&(o, l)| s < o + l + (1 << 20) && o < e + (1 << 20))
        })
    };
    assert!(near(&their_data), "{theirs:?}");
    assert!(near(&our_data), "{ours:?}");
    // Our map of the raw file itself agrees with qemu-img's exactly on the data runs.
    assert_eq!(data_ranges(&map_json(d, "m.raw")), their_data);
}
