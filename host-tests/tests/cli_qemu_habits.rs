//! Flags and commands scripts written for qemu-img use, run side by side with qemu-img on
//! the same inputs (qcow2 for qemu-img where it has no FVD): the exit status agrees and
//! the result is what the flag promises.

mod common;

use common::{assert_contains, create_fvd, fails, info_json, ok, qemu_img, scratch};

#[test]
fn create_u_records_a_base_that_does_not_exist_yet_as_qemu_img_does() {
    let dir = scratch();
    let d = dir.path();
    let qemu = qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "later.raw",
            "-F",
            "raw",
            "q.qcow2",
            "1M",
        ],
    );
    assert_eq!(qemu.code, 0, "{qemu:?}");
    for format in ["fvd", "qed"] {
        let file = format!("top.{format}");
        ok(
            d,
            &[
                "create",
                "-q",
                "-f",
                format,
                "-u",
                "-b",
                "later.raw",
                "-F",
                "raw",
                &file,
                "1M",
            ],
        );
        let info = info_json(d, &file);
        assert_eq!(info["backing-filename"], "later.raw");
        assert_eq!(info["backing-filename-format"], "raw");
        assert_eq!(info["virtual-size"], 1 << 20);
    }
    // Both refuse -u without a size or without a base format.
    for args in [
        &[
            "create",
            "-q",
            "-u",
            "-b",
            "later.raw",
            "-F",
            "raw",
            "x.fvd",
        ][..],
        &["create", "-q", "-u", "-b", "later.raw", "y.fvd", "1M"][..],
    ] {
        let message = fails(d, args);
        assert_contains(&message, "-u");
        assert!(!d.join(args[args.len() - 1]).exists() && !d.join("y.fvd").exists());
    }
    let qemu = qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "later.raw",
            "n.qcow2",
            "1M",
        ],
    );
    assert_eq!(qemu.code, 1, "{qemu:?}");
}

#[test]
fn amend_sets_the_same_fields_update_does() {
    let dir = scratch();
    let d = dir.path();
    std::fs::write(d.join("base.raw"), vec![7u8; 1 << 20]).unwrap();
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "a.fvd"]);
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "b.fvd"]);
    ok(
        d,
        &[
            "amend",
            "-o",
            "copy_on_read=on,prefetch_start_delay=5",
            "a.fvd",
        ],
    );
    ok(
        d,
        &[
            "update",
            "b.fvd",
            "copy_on_read=on",
            "prefetch_start_delay=5",
        ],
    );
    let (a, b) = (info_json(d, "a.fvd"), info_json(d, "b.fvd"));
    assert_eq!(a["format-specific"]["data"]["copy_on_read"], true);
    assert_eq!(
        a["format-specific"]["data"]["prefetch_start_delay"],
        b["format-specific"]["data"]["prefetch_start_delay"]
    );
    assert_eq!(a["format-specific"], b["format-specific"]);
    let refused = fails(d, &["amend", "-o", "no_such_key=1", "a.fvd"]);
    assert_contains(&refused, "no_such_key");
}

/// A 1 MiB raw source: pattern data at 64 KiB and at the last 4 KiB, zeros elsewhere.
fn patterned_source(d: &std::path::Path) {
    let mut bytes = vec![0u8; 1 << 20];
    bytes[64 << 10..128 << 10].fill(0x5a);
    bytes[(1 << 20) - 4096..].fill(0xc3);
    std::fs::write(d.join("src.raw"), bytes).unwrap();
}

#[test]
fn convert_n_overwrites_an_existing_target_including_its_zero_ranges() {
    let dir = scratch();
    let d = dir.path();
    patterned_source(d);
    for (format, target) in [("fvd", "dst.fvd"), ("qed", "dst.qed"), ("raw", "dst.raw")] {
        ok(d, &["create", "-q", "-f", format, target, "1M"]);
        // Old data everywhere, which the copy must replace, zeros included.
        ok(
            d,
            &["io", "-f", format, "-c", "write -q -P 0xee 0 1M", target],
        );
        ok(d, &["convert", "-n", "-O", format, "src.raw", target]);
        ok(
            d,
            &["compare", "-f", "raw", "-F", format, "src.raw", target],
        );
    }
    // As with qemu-img, -n needs the target to exist, and refuses -o.
    fails(d, &["convert", "-n", "-O", "fvd", "src.raw", "missing.fvd"]);
    let refused = fails(
        d,
        &[
            "convert",
            "-n",
            "-O",
            "fvd",
            "-o",
            "block_size=4k",
            "src.raw",
            "dst.fvd",
        ],
    );
    assert_contains(&refused, "-n");
    ok(d, &["create", "-q", "-f", "fvd", "small.fvd", "512k"]);
    let small = fails(d, &["convert", "-n", "-O", "fvd", "src.raw", "small.fvd"]);
    assert_contains(&small, "smaller than the source");
}

/// Bytes the file at `path` occupies on disk.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn convert_s_0_writes_every_byte_while_the_default_leaves_zero_blocks_as_holes() {
    let dir = scratch();
    let d = dir.path();
    patterned_source(d);
    ok(d, &["convert", "-O", "raw", "src.raw", "sparse.raw"]);
    ok(
        d,
        &["convert", "-S", "0", "-O", "raw", "src.raw", "full.raw"],
    );
    assert!(
        allocated(&d.join("sparse.raw")) < 512 << 10,
        "default output not sparse"
    );
    assert!(
        allocated(&d.join("full.raw")) >= 1 << 20,
        "-S 0 output has holes"
    );
    for file in ["sparse.raw", "full.raw"] {
        ok(d, &["compare", "src.raw", file]);
    }
    let qemu = qemu_img(d, &["convert", "-S", "0", "-O", "raw", "src.raw", "q.raw"]);
    assert_eq!(qemu.code, 0, "{qemu:?}");
    assert!(allocated(&d.join("q.raw")) >= 1 << 20);
    assert_contains(
        &fails(d, &["convert", "-S", "1000", "src.raw", "x.raw"]),
        "sparse",
    );
}

#[test]
fn convert_flags_qemu_img_takes_are_accepted_or_refused_by_name() {
    let dir = scratch();
    let d = dir.path();
    patterned_source(d);
    ok(
        d,
        &[
            "convert",
            "-t",
            "none",
            "-T",
            "writeback",
            "-W",
            "-m",
            "8",
            "-O",
            "fvd",
            "src.raw",
            "a.fvd",
        ],
    );
    ok(d, &["compare", "src.raw", "a.fvd"]);
    for (args, says) in [
        (
            &["convert", "-c", "-O", "qed", "src.raw", "c.qed"][..],
            "Compression",
        ),
        (
            &["convert", "-B", "src.raw", "-O", "fvd", "src.raw", "b.fvd"][..],
            "-B",
        ),
        (
            &["convert", "-t", "bogus", "-O", "fvd", "src.raw", "t.fvd"][..],
            "cache",
        ),
        (
            &["convert", "-m", "17", "-O", "fvd", "src.raw", "m.fvd"][..],
            "coroutines",
        ),
    ] {
        assert_contains(&fails(d, args), says);
        assert!(!d.join(args[args.len() - 1]).exists());
    }
    // qemu-img refuses the same bad values.
    for args in [
        &[
            "convert", "-t", "bogus", "-O", "qcow2", "src.raw", "t.qcow2",
        ][..],
        &["convert", "-m", "17", "-O", "qcow2", "src.raw", "m.qcow2"][..],
    ] {
        assert_eq!(qemu_img(d, args).code, 1);
    }
}

/// The same writes through qemu-io on QED image `file` over a raw base.
fn qed_overlay_with_writes(d: &std::path::Path, base: &str, file: &str) {
    std::fs::write(d.join(base), vec![7u8; 1 << 20]).unwrap();
    ok(
        d,
        &["create", "-q", "-f", "qed", "-b", base, "-F", "raw", file],
    );
    common::qemu_io_qed(
        d,
        file,
        &[
            "write -q -P 1 0 64k",
            "write -q -z 128k 64k",
            "write -q -P 9 900k 3k",
        ],
    );
}

#[test]
fn commit_of_a_qed_image_leaves_the_base_qemu_img_commit_leaves() {
    let dir = scratch();
    let d = dir.path();
    qed_overlay_with_writes(d, "ours.raw", "ours.qed");
    qed_overlay_with_writes(d, "theirs.raw", "theirs.qed");
    let run = ok(d, &["commit", "-p", "ours.qed"]);
    assert_contains(&run.stdout, "(100.00/100%)");
    assert_contains(&run.stdout, "Image committed.");
    let qemu = qemu_img(d, &["commit", "-q", "-d", "theirs.qed"]);
    assert_eq!(qemu.code, 0, "{qemu:?}");
    assert!(
        std::fs::read(d.join("ours.raw")).unwrap() == std::fs::read(d.join("theirs.raw")).unwrap(),
        "the committed bases differ"
    );
    // -b names the base to commit into: the image's own base works, another is refused.
    ok(d, &["commit", "-q", "-b", "ours.raw", "ours.qed"]);
    assert_contains(
        &fails(d, &["commit", "-b", "theirs.raw", "ours.qed"]),
        "not the backing file",
    );
}

#[test]
fn rebase_p_reports_progress_of_the_copy() {
    let dir = scratch();
    let d = dir.path();
    std::fs::write(d.join("b.raw"), vec![7u8; 1 << 20]).unwrap();
    ok(d, &["create", "-q", "-b", "b.raw", "-F", "raw", "t.fvd"]);
    let run = ok(d, &["rebase", "-p", "-b", "", "t.fvd"]);
    assert_contains(&run.stdout, "(100.00/100%)");
    std::fs::remove_file(d.join("b.raw")).unwrap();
    ok(d, &["io", "-c", "read -q -P 7 0 1M", "t.fvd"]);
    let quiet = ok(d, &["rebase", "-q", "-p", "-b", "", "t.fvd"]);
    assert!(quiet.stdout.is_empty());
}

#[test]
fn resize_grows_both_formats_and_shrinks_what_can_shrink_as_qemu_img_does() {
    let dir = scratch();
    let d = dir.path();
    // QED: grown by us, read by QEMU; shrinking refused by both.
    ok(d, &["create", "-q", "-f", "qed", "a.qed", "1M"]);
    common::qemu_io_qed(d, "a.qed", &["write -q -P 0x5 0 1M"]);
    assert_contains(&ok(d, &["resize", "a.qed", "+1M"]).stdout, "Image resized.");
    assert_eq!(info_json(d, "a.qed")["virtual-size"], 2 << 20);
    common::qemu_io_qed(d, "a.qed", &["read -q -P 0x5 0 1M", "read -q -P 0 1M 1M"]);
    assert_eq!(qemu_img(d, &["check", "a.qed"]).code, 0);
    assert_contains(&fails(d, &["resize", "a.qed", "1M"]), "--shrink");
    assert_eq!(qemu_img(d, &["resize", "a.qed", "1M"]).code, 1);
    assert_contains(
        &fails(d, &["resize", "--shrink", "a.qed", "1M"]),
        "only grow",
    );
    assert_eq!(qemu_img(d, &["resize", "--shrink", "a.qed", "1M"]).code, 1);

    // Plain FVD: the grown part reads as zeros, and so does a part shrunk away and grown back.
    ok(d, &["create", "-q", "p.fvd", "1M"]);
    ok(d, &["io", "-c", "write -q -P 0x7 0 1M", "p.fvd"]);
    ok(d, &["resize", "-q", "p.fvd", "2M"]);
    ok(
        d,
        &[
            "io",
            "-c",
            "read -q -P 0x7 0 1M",
            "-c",
            "read -q -P 0 1M 1M",
            "p.fvd",
        ],
    );
    ok(d, &["resize", "-q", "--shrink", "p.fvd", "--", "-1536k"]);
    assert_eq!(info_json(d, "p.fvd")["virtual-size"], 512 << 10);
    ok(d, &["resize", "-q", "p.fvd", "1M"]);
    ok(
        d,
        &[
            "io",
            "-c",
            "read -q -P 0x7 0 512k",
            "-c",
            "read -q -P 0 512k 512k",
            "p.fvd",
        ],
    );
    ok(d, &["check", "p.fvd"]);

    // Compact FVD: grows within its table, never shrinks.
    ok(
        d,
        &["create", "-q", "-o", "compact_image=on", "c.fvd", "1M"],
    );
    ok(d, &["io", "-c", "write -q -P 0x3 0 1M", "c.fvd"]);
    ok(d, &["resize", "-q", "c.fvd", "3M"]);
    ok(
        d,
        &[
            "io",
            "-c",
            "read -q -P 0x3 0 1M",
            "-c",
            "read -q -P 0 1M 2M",
            "c.fvd",
        ],
    );
    ok(d, &["check", "c.fvd"]);
    assert_contains(&fails(d, &["resize", "--shrink", "c.fvd", "1M"]), "compact");
    assert_contains(&fails(d, &["resize", "c.fvd", "1T"]), "chunk table");

    // Raw, beside qemu-img.
    ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    std::fs::copy(d.join("r.raw"), d.join("q.raw")).unwrap();
    ok(d, &["resize", "-q", "r.raw", "3M"]);
    assert_eq!(
        qemu_img(d, &["resize", "-q", "-f", "raw", "q.raw", "3M"]).code,
        0
    );
    ok(d, &["resize", "-q", "--shrink", "r.raw", "512k"]);
    assert_eq!(std::fs::metadata(d.join("r.raw")).unwrap().len(), 512 << 10);
    assert_contains(&fails(d, &["resize", "r.raw", "x"]), "Invalid image size");
}

/// The lines of a qemu-io-style run, without the timing lines.
fn untimed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|line| !line.contains(" ops; "))
        .map(str::to_string)
        .collect()
}

#[test]
fn io_commands_print_what_qemu_io_prints_on_the_same_qed_image() {
    let dir = scratch();
    let d = dir.path();
    std::fs::write(d.join("src.bin"), b"hello\n").unwrap();
    for file in ["ours.qed", "theirs.qed"] {
        assert_eq!(
            qemu_img(d, &["create", "-q", "-f", "qed", file, "1M"]).code,
            0
        );
    }
    let commands = [
        "write -P 1 1 100",
        "read -v 0 16",
        "write -P 0x22 1000 3000",
        "read -P 0x22 1000 3000",
        "alloc 0 64k",
        "alloc 64k",
        "map",
        "info",
        "readv -P 0 8192 512 512",
        "writev -P 3 4096 512 1k",
        "write -s src.bin 70000 6",
        "read -v 70000 8",
        "write -z -u 0 64k",
        "read -P 0 0 64k",
        "truncate 2M",
        "length",
        "map",
    ];
    let mut ours_args = vec!["io", "-f", "qed"];
    let mut theirs_args = vec!["-f", "qed"];
    for command in &commands {
        ours_args.extend(["-c", command]);
        theirs_args.extend(["-c", command]);
    }
    ours_args.push("ours.qed");
    theirs_args.push("theirs.qed");
    let ours = ok(d, &ours_args);
    let theirs = common::run_tool("qemu-io", d, &theirs_args);
    assert_eq!(theirs.code, 0, "{theirs:?}");
    assert_eq!(untimed(&ours.stdout), untimed(&theirs.stdout));
    assert_eq!(
        qemu_img(
            d,
            &[
                "compare",
                "-f",
                "qed",
                "-F",
                "qed",
                "ours.qed",
                "theirs.qed"
            ]
        )
        .code,
        0
    );
    assert_eq!(qemu_img(d, &["check", "ours.qed"]).code, 0);
    // Both refuse compressed writes.
    let refused = common::fvd_img(d, &["io", "-c", "write -c 0 64k", "ours.qed"]);
    assert_eq!(refused.code, 1);
    assert_contains(&refused.stderr, "not supported");
}

#[test]
fn io_takes_qemu_io_cache_modes_and_nocache() {
    let dir = scratch();
    let d = dir.path();
    ok(d, &["create", "-q", "-f", "qed", "a.qed", "1M"]);
    for extra in [
        &["-t", "none"][..],
        &["-t", "directsync"][..],
        &["-t", "unsafe"][..],
        &["-t", "writethrough"][..],
        &["-n"][..],
    ] {
        let mut args = vec!["io"];
        args.extend_from_slice(extra);
        args.extend([
            "-c",
            "write -q -P 7 0 4k",
            "-c",
            "read -q -P 7 0 4k",
            "a.qed",
        ]);
        ok(d, &args);
    }
}

#[test]
fn sub_sector_writes_to_an_fvd_image_keep_the_rest_of_their_sectors() {
    let dir = scratch();
    let d = dir.path();
    std::fs::write(d.join("b.raw"), vec![0x44u8; 1 << 20]).unwrap();
    ok(d, &["create", "-q", "-b", "b.raw", "-F", "raw", "t.fvd"]);
    ok(
        d,
        &[
            "io",
            "-c",
            "write -q -P 1 1 100",
            "-c",
            "write -q -P 2 1000 3000",
            "-c",
            "write -q -z 5000 10",
            "-c",
            "read -q -P 0x44 0 1",
            "-c",
            "read -q -P 1 1 100",
            "-c",
            "read -q -P 0x44 101 899",
            "-c",
            "read -q -P 2 1000 3000",
            "-c",
            "read -q -P 0x44 4000 1000",
            "-c",
            "read -q -P 0 5000 10",
            "-c",
            "read -q -P 0x44 5010 1000",
            "t.fvd",
        ],
    );
    ok(d, &["check", "t.fvd"]);
}

/// (required, fully-allocated) from `fvd-img measure --output json ARGS`.
fn measured(d: &std::path::Path, args: &[&str]) -> (u64, u64) {
    let mut all = vec!["measure", "--output", "json"];
    all.extend_from_slice(args);
    let run = ok(d, &all);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(run.stdout.find("required") < run.stdout.find("fully-allocated"));
    (
        value["required"].as_u64().unwrap(),
        value["fully-allocated"].as_u64().unwrap(),
    )
}

#[test]
fn measure_gives_the_size_convert_then_produces() {
    let dir = scratch();
    let d = dir.path();
    let source = d.join("src.raw");
    let file = std::fs::File::create(&source).unwrap();
    file.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&vec![0x11u8; 3 << 20], 0).unwrap();
    file.write_all_at(&vec![0x22u8; 100_000], 40 << 20).unwrap();
    drop(file);
    for (format, options, file) in [
        ("qed", "", "a.qed"),
        ("fvd", "", "a.fvd"),
        (
            "fvd",
            "compact_image=on,chunk_size=64k,storage_grow_unit=64k",
            "c.fvd",
        ),
    ] {
        let mut args = vec!["-O", format];
        let mut convert = vec!["convert", "-O", format];
        if !options.is_empty() {
            args.extend(["-o", options]);
            convert.extend(["-o", options]);
        }
        args.push("src.raw");
        convert.extend(["src.raw", file]);
        let (required, full) = measured(d, &args);
        ok(d, &convert);
        let meta = std::fs::metadata(d.join(file)).unwrap();
        // What convert made takes exactly the required bytes: as file length where the
        // format appends (QED, compact), as allocated bytes where it places data (plain).
        let used = if format == "fvd" && options.is_empty() {
            allocated(&d.join(file))
        } else {
            meta.len()
        };
        assert_eq!(used, required, "{format} {options}");
        assert!(full >= required && full >= 64 << 20);
    }
    // An empty disk of a given size, and raw.
    let (required, full) = measured(d, &["-O", "qed", "--size", "1G"]);
    assert!(required < 1 << 20 && full > 1 << 30);
    assert_eq!(measured(d, &["--size", "1G"]), (1 << 30, 1 << 30));
    assert_contains(&fails(d, &["measure", "-O", "qed"]), "--size");
}

#[test]
fn dd_copies_the_blocks_qemu_img_dd_copies() {
    let dir = scratch();
    let d = dir.path();
    let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("src.raw"), &bytes).unwrap();
    ok(d, &["convert", "-O", "qed", "src.raw", "src.qed"]);
    let qemu = qemu_img(
        d,
        &[
            "dd",
            "-f",
            "raw",
            "-O",
            "raw",
            "bs=4k",
            "skip=3",
            "count=10",
            "if=src.raw",
            "of=q.raw",
        ],
    );
    assert_eq!(qemu.code, 0, "{qemu:?}");
    for (input, output, format) in [("src.raw", "a.raw", "raw"), ("src.qed", "b.fvd", "fvd")] {
        let of = format!("of={output}");
        let inp = format!("if={input}");
        ok(
            d,
            &["dd", "-O", format, "bs=4k", "skip=3", "count=10", &inp, &of],
        );
        ok(d, &["compare", "q.raw", output]);
    }
    // count=10 with skip=3 ends at input block 10, as qemu-img has it.
    assert!(std::fs::read(d.join("a.raw")).unwrap() == bytes[3 * 4096..10 * 4096]);
    // Without count, to the end; an unknown operand is refused and nothing is made.
    ok(d, &["dd", "bs=1M", "if=src.qed", "of=all.raw"]);
    assert!(std::fs::read(d.join("all.raw")).unwrap() == bytes);
    assert_contains(
        &fails(d, &["dd", "conv=notrunc", "if=src.raw", "of=x.raw"]),
        "operand",
    );
    assert!(!d.join("x.raw").exists());
}

#[test]
fn a_base_without_a_format_is_probed_only_among_our_formats_and_said_so() {
    let dir = scratch();
    let d = dir.path();
    std::fs::write(d.join("b.raw"), vec![0u8; 1 << 20]).unwrap();
    // qemu-img refuses; fvd-img probes among raw, fvd and qed and names the result.
    assert_eq!(
        qemu_img(d, &["create", "-f", "qcow2", "-b", "b.raw", "q.qcow2"]).code,
        1
    );
    let run = ok(d, &["create", "-b", "b.raw", "t.fvd"]);
    assert_contains(&run.stdout, "backing_fmt=raw");
    assert_eq!(info_json(d, "t.fvd")["backing-filename-format"], "raw");
    let help = ok(d, &["create", "--help"]);
    assert_contains(&help.stdout, "probed among these three");
    // A base of another format is not probed as raw.
    assert_eq!(
        qemu_img(d, &["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]).code,
        0
    );
    assert_contains(&fails(d, &["create", "-b", "q.qcow2", "u.fvd"]), "qcow2");
}

#[test]
fn info_and_check_treat_raw_files_as_qemu_img_does() {
    let dir = scratch();
    let d = dir.path();
    ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    let ours = info_json(d, "r.raw");
    let theirs: serde_json::Value =
        serde_json::from_str(&qemu_img(d, &["info", "--output", "json", "r.raw"]).stdout).unwrap();
    for key in ["format", "virtual-size", "filename", "dirty-flag"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    // qemu-img 8 and later list the protocol node as the "file" child.
    assert_eq!(ours["children"][0]["name"], "file");
    assert_eq!(ours["children"][0]["info"]["format"], "file");
    let qemu = qemu_img(d, &["check", "r.raw"]);
    let run = common::fvd_img(d, &["check", "r.raw"]);
    assert_eq!((run.code, qemu.code), (63, 63));
    assert_contains(&run.stderr, "This image format does not support checks");
    // -q prints nothing whatever the result.
    ok(d, &["create", "-q", "-f", "qed", "a.qed", "1M"]);
    assert_eq!(ok(d, &["check", "-q", "a.qed"]).stdout, "");
}

#[test]
fn info_backing_chain_lists_every_image_as_qemu_img_does() {
    let dir = scratch();
    let d = dir.path();
    ok(d, &["create", "-q", "-f", "raw", "base.raw", "1M"]);
    ok(
        d,
        &[
            "create", "-q", "-f", "qed", "-b", "base.raw", "-F", "raw", "mid.qed",
        ],
    );
    ok(
        d,
        &[
            "create", "-q", "-f", "qed", "-b", "mid.qed", "-F", "qed", "top.qed",
        ],
    );
    let ours = ok(
        d,
        &["info", "--backing-chain", "--output", "json", "top.qed"],
    );
    let theirs = qemu_img(
        d,
        &["info", "--backing-chain", "--output", "json", "top.qed"],
    );
    let names = |text: &str| -> Vec<(String, String)> {
        let list: serde_json::Value = serde_json::from_str(text).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|i| (i["filename"].to_string(), i["format"].to_string()))
            .collect()
    };
    assert_eq!(names(&ours.stdout), names(&theirs.stdout));
    let human = ok(d, &["info", "--backing-chain", "top.qed"]).stdout;
    let images: Vec<&str> = human.lines().filter(|l| l.starts_with("image: ")).collect();
    assert_eq!(
        images,
        ["image: top.qed", "image: mid.qed", "image: base.raw"]
    );
    // An FVD image made independent of its base shows no backing file any more.
    ok(
        d,
        &[
            "create", "-q", "-f", "fvd", "-b", "base.raw", "-F", "raw", "f.fvd",
        ],
    );
    ok(d, &["rebase", "-b", "", "f.fvd"]);
    let info = info_json(d, "f.fvd");
    assert!(info.get("backing-filename").is_none(), "{info}");
    let chain = ok(d, &["info", "--backing-chain", "f.fvd"]).stdout;
    assert_eq!(
        chain.lines().filter(|l| l.starts_with("image: ")).count(),
        1
    );
}

/// Guest bytes of `file` (any format fvd-img reads), through convert.
fn guest_bytes(d: &std::path::Path, file: &str) -> Vec<u8> {
    let out = format!("{file}.flat");
    ok(d, &["convert", "-O", "raw", file, &out]);
    let bytes = std::fs::read(d.join(&out)).unwrap();
    std::fs::remove_file(d.join(&out)).unwrap();
    bytes
}

#[test]
fn rebase_of_a_qed_image_keeps_its_guest_view_and_qemu_reads_the_result() {
    let dir = scratch();
    let d = dir.path();
    let old: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 7) as u8 + 1).collect();
    let mut new = old.clone();
    new[200_000..300_000].fill(0x99);
    std::fs::write(d.join("old.raw"), &old).unwrap();
    std::fs::write(d.join("new.raw"), &new).unwrap();
    ok(
        d,
        &[
            "create", "-q", "-f", "qed", "-b", "old.raw", "-F", "raw", "t.qed",
        ],
    );
    common::qemu_io_qed(d, "t.qed", &["write -q -P 0x5 0 64k"]);
    let before = guest_bytes(d, "t.qed");

    // Safe mode: same guest bytes over the new base, and QEMU agrees.
    let run = ok(d, &["rebase", "-p", "-b", "new.raw", "-F", "raw", "t.qed"]);
    assert_contains(&run.stdout, "(100.00/100%)");
    assert!(
        guest_bytes(d, "t.qed") == before,
        "safe rebase changed the guest view"
    );
    assert_eq!(info_json(d, "t.qed")["backing-filename"], "new.raw");
    assert_eq!(qemu_img(d, &["check", "t.qed"]).code, 0);
    std::fs::write(d.join("flat.raw"), &before).unwrap();
    let qemu = qemu_img(
        d,
        &["compare", "-f", "qed", "-F", "raw", "t.qed", "flat.raw"],
    );
    assert_eq!(qemu.code, 0, "{qemu:?}");

    // -u renames only; -b '' drops the base and keeps the bytes.
    std::fs::copy(d.join("new.raw"), d.join("moved.raw")).unwrap();
    ok(
        d,
        &["rebase", "-u", "-b", "moved.raw", "-F", "raw", "t.qed"],
    );
    assert_eq!(info_json(d, "t.qed")["backing-filename"], "moved.raw");
    ok(d, &["rebase", "-b", "", "t.qed"]);
    assert!(info_json(d, "t.qed").get("backing-filename").is_none());
    std::fs::remove_file(d.join("moved.raw")).unwrap();
    assert!(guest_bytes(d, "t.qed") == before);
    assert_eq!(
        qemu_img(
            d,
            &["compare", "-f", "qed", "-F", "raw", "t.qed", "flat.raw"]
        )
        .code,
        0
    );

    // A base added to an image that had none does not show through.
    ok(d, &["create", "-q", "-f", "qed", "z.qed", "1M"]);
    ok(d, &["rebase", "-b", "new.raw", "-F", "raw", "z.qed"]);
    assert!(guest_bytes(d, "z.qed").iter().all(|&b| b == 0));
    // Never an FVD base under QED.
    ok(d, &["create", "-q", "-f", "fvd", "b.fvd", "1M"]);
    assert_contains(
        &fails(d, &["rebase", "-b", "b.fvd", "-F", "fvd", "z.qed"]),
        "FVD base",
    );
}
