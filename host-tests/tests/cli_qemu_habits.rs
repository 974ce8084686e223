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
