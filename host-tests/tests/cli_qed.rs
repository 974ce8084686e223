//! `fvd-img` on QED images, against qemu-img and qemu-io 10 as the oracle: `create -f qed`
//! writes the same bytes as `qemu-img create -f qed`; `info` reports what `qemu-img info`
//! reports; `check` agrees with `qemu-img check` on clean, corrupted and leaking images,
//! and its repairs leave images `qemu-img check` finds clean.

mod common;

use common::{assert_contains, fails, fvd_img, ok, qemu_img, scratch, status, Run};
use fvd_core::qed::features;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

const K64: u64 = 64 << 10;

fn qemu_io(dir: &Path, file: &str, commands: &[&str]) {
    common::qemu_io_qed(dir, file, commands);
}

/// `qemu-img create -q -f qed ARGS`, required to succeed.
fn qemu_create(dir: &Path, args: &[&str]) {
    let mut all = vec!["create", "-q", "-f", "qed"];
    all.extend_from_slice(args);
    let run = qemu_img(dir, &all);
    assert_eq!(run.code, 0, "qemu-img {all:?}: {run:?}");
}

/// `fvd-img create -q -f qed ARGS`, required to succeed.
fn create_qed(dir: &Path, args: &[&str]) {
    let mut all = vec!["create", "-q", "-f", "qed"];
    all.extend_from_slice(args);
    ok(dir, &all);
}

fn parse_json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("bad JSON {e}: {run:?}"))
}

/// `fvd-img check --output json [EXTRA] FILE`: exit status and report.
fn check_json(dir: &Path, file: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["check", "--output", "json"];
    args.extend_from_slice(extra);
    args.push(file);
    let run = fvd_img(dir, &args);
    assert!(run.stderr.is_empty(), "fvd-img {args:?}: {run:?}");
    (run.code, parse_json(&run))
}

/// `qemu-img check -f qed --output json FILE`: exit status and report.
fn qemu_check(dir: &Path, file: &str) -> (i32, Value) {
    let run = qemu_img(dir, &["check", "-f", "qed", "--output", "json", file]);
    (run.code, parse_json(&run))
}

/// A count from a check report; qemu-img leaves out the keys whose value is 0.
fn count(report: &Value, key: &str) -> u64 {
    report.get(key).map_or(0, |v| v.as_u64().unwrap())
}

/// Requires our check and qemu-img's to agree on the exit status and the counts.
fn assert_checks_agree(dir: &Path, file: &str) -> (i32, Value) {
    let (ours, report) = check_json(dir, file, &[]);
    let (theirs, qemu) = qemu_check(dir, file);
    assert_eq!(
        ours, theirs,
        "{file}: exit status\nours {report:#}\nqemu {qemu:#}"
    );
    for key in [
        "total-clusters",
        "allocated-clusters",
        "fragmented-clusters",
        "corruptions",
        "leaks",
    ] {
        assert_eq!(
            count(&report, key),
            count(&qemu, key),
            "{file}: {key}\nours {report:#}\nqemu {qemu:#}"
        );
    }
    (ours, report)
}

fn read_u64(path: &Path, offset: u64) -> u64 {
    let mut bytes = [0u8; 8];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut bytes, offset)
        .unwrap();
    u64::from_le_bytes(bytes)
}

fn write_u64(path: &Path, offset: u64, value: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&value.to_le_bytes(), offset)
        .unwrap();
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[test]
fn create_writes_what_qemu_img_writes() {
    let ours = scratch();
    let theirs = scratch();
    for dir in [ours.path(), theirs.path()] {
        fs::File::create(dir.join("base.raw"))
            .unwrap()
            .set_len(3 << 20)
            .unwrap();
    }
    let cases: [(&str, &[&str]); 9] = [
        ("plain.qed", &["plain.qed", "10M"]),
        ("odd.qed", &["odd.qed", "1000000"]),
        (
            "small.qed",
            &["-o", "cluster_size=4k,table_size=2", "small.qed", "1M"],
        ),
        (
            "big.qed",
            &["-o", "cluster_size=1M,table_size=16", "big.qed", "5G"],
        ),
        ("t8.qed", &["-o", "table_size=8", "t8.qed", "1T"]),
        (
            "over.qed",
            &["-b", "base.raw", "-F", "raw", "over.qed", "8M"],
        ),
        // SIZE omitted: the backing file's size.
        ("sized.qed", &["-b", "base.raw", "-F", "raw", "sized.qed"]),
        ("chain.qed", &["-b", "plain.qed", "-F", "qed", "chain.qed"]),
        (
            "opt.qed",
            &[
                "-o",
                "backing_file=base.raw,backing_fmt=raw,cluster_size=16k",
                "opt.qed",
                "2M",
            ],
        ),
    ];
    for (file, args) in cases {
        create_qed(ours.path(), args);
        qemu_create(theirs.path(), args);
        let a = fs::read(ours.path().join(file)).unwrap();
        let b = fs::read(theirs.path().join(file)).unwrap();
        assert_eq!(a.len(), b.len(), "{args:?}: file length");
        assert!(
            a == b,
            "{args:?}: fvd-img and qemu-img wrote different bytes"
        );
    }
    // The size came from the backing files.
    let info = parse_json(&ok(ours.path(), &["info", "--output", "json", "sized.qed"]));
    assert_eq!(info["virtual-size"], 3 << 20);
    let info = parse_json(&ok(ours.path(), &["info", "--output", "json", "chain.qed"]));
    assert_eq!(info["virtual-size"], 10 << 20);
    assert_eq!(
        read_u64(&ours.path().join("chain.qed"), 16),
        features::BACKING_FILE
    );
    assert_eq!(
        read_u64(&ours.path().join("over.qed"), 16),
        features::BACKING_FILE | features::BACKING_FORMAT_NO_PROBE
    );
}

#[test]
fn create_prints_the_formatting_line_and_refuses_bad_requests() {
    let dir = scratch();
    let d = dir.path();
    let run = ok(
        d,
        &[
            "create",
            "-f",
            "qed",
            "-o",
            "cluster_size=4k",
            "a.qed",
            "1M",
        ],
    );
    assert_eq!(
        run.stdout,
        "Formatting 'a.qed', fmt=qed size=1048576 cluster_size=4096\n"
    );
    let before = fs::read(d.join("a.qed")).unwrap();

    // Never over an existing file without --force; --force replaces it.
    let line = fails(d, &["create", "-f", "qed", "a.qed", "2M"]);
    assert_contains(&line, "already exists");
    assert_eq!(fs::read(d.join("a.qed")).unwrap(), before);
    create_qed(d, &["--force", "a.qed", "2M"]);
    let info = parse_json(&ok(d, &["info", "--output", "json", "a.qed"]));
    assert_eq!(info["virtual-size"], 2 << 20);
    assert_eq!(info["cluster-size"], K64);

    for (args, needle) in [
        (
            &["-o", "cluster_size=3k", "b.qed", "1M"][..],
            "cluster size",
        ),
        (
            &["-o", "cluster_size=128M", "b.qed", "1M"][..],
            "cluster size",
        ),
        (&["-o", "table_size=32", "b.qed", "1M"][..], "table size"),
        (&["-o", "table_size=3", "b.qed", "1M"][..], "table size"),
        (
            &["-o", "cluster_size=4k,table_size=1", "b.qed", "1T"][..],
            "too large",
        ),
        (
            &["-o", "compact_image=on", "b.qed", "1M"][..],
            "compact_image",
        ),
        (&["b.qed"][..], "size"),
        (&["-F", "raw", "b.qed", "1M"][..], "-F"),
        (
            &["-b", "missing.raw", "-F", "raw", "b.qed", "1M"][..],
            "missing.raw",
        ),
    ] {
        let mut all = vec!["create", "-f", "qed"];
        all.extend_from_slice(args);
        let line = fails(d, &all);
        assert_contains(&line, needle);
        assert!(!d.join("b.qed").exists(), "{args:?} left a file behind");
    }
    // No temporary file is left over either.
    let names: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.qed"]);

    let help = ok(d, &["create", "-f", "qed", "-o", "help"]).stdout;
    for option in ["backing_file", "backing_fmt", "cluster_size", "table_size"] {
        assert_contains(&help, option);
    }
}

#[test]
fn relative_backing_names_resolve_against_the_image_directory() {
    let dir = scratch();
    let d = dir.path();
    fs::create_dir(d.join("vm")).unwrap();
    fs::File::create(d.join("vm/base.raw"))
        .unwrap()
        .set_len(5 << 20)
        .unwrap();
    let run = ok(d, &["create", "-f", "qed", "-b", "base.raw", "vm/top.qed"]);
    assert_eq!(
        run.stdout,
        "Formatting 'vm/top.qed', fmt=qed size=5242880 backing_file=base.raw backing_fmt=raw \
         cluster_size=65536\n"
    );
    let info = parse_json(&ok(d, &["info", "--output", "json", "vm/top.qed"]));
    assert_eq!(info["backing-filename"], "base.raw");
    assert_eq!(info["full-backing-filename"], "vm/base.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    // qemu-img finds the same file.
    let qemu = parse_json(&qemu_img(d, &["info", "--output", "json", "vm/top.qed"]));
    assert_eq!(qemu["full-backing-filename"], "vm/base.raw");
}

#[test]
fn info_reports_what_qemu_img_info_reports() {
    let dir = scratch();
    let d = dir.path();
    fs::File::create(d.join("base.raw"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    qemu_create(d, &["plain.qed", "10M"]);
    qemu_create(
        d,
        &["-o", "cluster_size=4k,table_size=2", "small.qed", "3M"],
    );
    qemu_create(d, &["-b", "base.raw", "-F", "raw", "over.qed"]);
    qemu_create(d, &["-b", "plain.qed", "-F", "qed", "chain.qed", "20M"]);
    qemu_io(d, "plain.qed", &["write -P 7 0 200k", "write -z 1M 64k"]);
    qemu_io(d, "small.qed", &["write -P 1 100k 10k"]);
    for file in ["plain.qed", "small.qed", "over.qed", "chain.qed"] {
        // No -f: the format is probed from the magic.
        let ours = parse_json(&ok(d, &["info", "--output", "json", file]));
        let qemu = parse_json(&qemu_img(d, &["info", "--output", "json", file]));
        for key in [
            "filename",
            "format",
            "virtual-size",
            "cluster-size",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
            "dirty-flag",
        ] {
            assert_eq!(ours.get(key), qemu.get(key), "{file}: {key}");
        }
        assert_eq!(ours["format"], "qed");
        assert!(ours["actual-size"].as_u64().unwrap() > 0, "{file}");
        assert_eq!(ours["format-specific"]["type"], "qed");
    }
    let data = &parse_json(&ok(
        d,
        &["info", "--output", "json", "-f", "qed", "plain.qed"],
    ))["format-specific"]["data"];
    assert_eq!(data["l2_tables"], 1);
    assert_eq!(data["data_clusters"], 4);
    assert_eq!(data["zero_clusters"], 1);
    assert_eq!(data["invalid_table_entries"], 0);
    assert_eq!(data["table_size"], 4);
    assert_eq!(data["need_check"], false);

    let text = ok(d, &["info", "over.qed"]).stdout;
    for line in [
        "file format: qed",
        "virtual size: 4 MiB (4194304 bytes)",
        "cluster_size: 65536",
        "backing file: base.raw",
        "backing file format: raw",
        "features: 0x5 (backing_file, backing_format_no_probe)",
    ] {
        assert_contains(&text, line);
    }

    // The need-check bit is the dirty flag (qemu-img never shows it).
    write_u64(&d.join("plain.qed"), 16, features::NEED_CHECK);
    let info = parse_json(&ok(d, &["info", "--output", "json", "plain.qed"]));
    assert_eq!(info["dirty-flag"], true);
    assert_eq!(info["format-specific"]["data"]["need_check"], true);

    // -f qed on something else explains itself.
    fs::write(d.join("junk"), vec![0x5a; 8192]).unwrap();
    let line = fails(d, &["info", "-f", "qed", "junk"]);
    assert_contains(
        &line,
        "'junk' is not a valid QED image: it is a raw disk image; magic is 0x5a5a5a5a",
    );
}

#[test]
fn an_fvd_image_may_name_a_qed_base() {
    let dir = scratch();
    let d = dir.path();
    qemu_create(d, &["base.qed", "6M"]);
    let run = ok(d, &["create", "-f", "fvd", "-b", "base.qed", "top.fvd"]);
    assert_contains(&run.stdout, "backing_file=base.qed backing_fmt=qed");
    let info = parse_json(&ok(d, &["info", "--output", "json", "top.fvd"]));
    assert_eq!(info["virtual-size"], 6 << 20);
    assert_eq!(info["backing-filename-format"], "qed");
}

#[test]
fn check_agrees_with_qemu_img_on_images_qemu_io_wrote() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![0x33u8; 2 << 20]).unwrap();
    let images: [(&str, &[&str], &[&str]); 5] = [
        ("new.qed", &["new.qed", "10M"], &[]),
        (
            "plain.qed",
            &["plain.qed", "64M"],
            &[
                "write -P 1 0 200k",
                "write -P 2 10M 4k",
                "write -P 3 5M 1M",
                "write -P 4 100k 8k",
                "write -z 40M 128k",
            ],
        ),
        (
            "small.qed",
            &["-o", "cluster_size=4k,table_size=2", "small.qed", "8M"],
            &["write -P 1 0 20k", "write -P 2 6M 64k", "write -P 3 3M 4k"],
        ),
        (
            "wide.qed",
            &["-o", "cluster_size=1M,table_size=16", "wide.qed", "1G"],
            &["write -P 1 0 3M", "write -P 2 500M 4k"],
        ),
        (
            "over.qed",
            &["-b", "base.raw", "-F", "raw", "over.qed"],
            &[
                "write -P 9 4k 4k",
                "write -z 1M 64k",
                "write -P 8 1536k 100k",
            ],
        ),
    ];
    for (file, create, writes) in images {
        qemu_create(d, create);
        if !writes.is_empty() {
            qemu_io(d, file, writes);
        }
        let (code, report) = assert_checks_agree(d, file);
        assert_eq!(code, 0, "{file}: {report:#}");
        assert_eq!(report["format"], "qed");
        assert_eq!(report["dirty"], false);
        assert_eq!(common::count(&report, "leaks"), 0);
        assert_eq!(common::count(&report, "corruptions"), 0);
        let text = ok(d, &["check", file]).stdout;
        assert_contains(&text, "No errors were found on the image.");
    }
    let (_, report) = check_json(d, "plain.qed", &[]);
    // 200k + 4k + 1M + (8k inside the first write's clusters): 4 + 1 + 16 clusters.
    assert_eq!(report["allocated-clusters"], 21);
    assert_eq!(report["total-clusters"], 1024);
}

/// An image with two data clusters: guest 0 and guest 1 MiB, laid out by qemu-io as the
/// first data cluster at 0x50000, the L2 table at 0x60000 (four clusters), and the second
/// data cluster at the end of the file, 0xa0000. Returns the offset of the L2 table.
fn two_cluster_image(dir: &Path, file: &str) -> u64 {
    qemu_create(dir, &[file, "4M"]);
    qemu_io(dir, file, &["write -P 0x11 0 64k", "write -P 0x22 1M 64k"]);
    let path = dir.join(file);
    let l2 = read_u64(&path, K64);
    assert_eq!(l2, 0x60000, "qemu-io laid the image out differently");
    assert_eq!(read_u64(&path, l2), 0x50000);
    assert_eq!(read_u64(&path, l2 + 16 * 8), 0xa0000);
    assert_eq!(file_len(&path), 0xb0000);
    l2
}

#[test]
fn corruptions_are_found_and_repaired() {
    let dir = scratch();
    let d = dir.path();
    // (name, entry offset in the file, value, finding kind). The L2 cases break the entry
    // of guest 1 MiB, whose cluster is the last of the file; the L1 cases add an entry.
    let l2 = 0x60000u64;
    let cases = [
        (
            "misaligned.qed",
            l2 + 16 * 8,
            0xa0200,
            "l2-entry-misaligned",
        ),
        ("past-eof.qed", l2 + 16 * 8, 0x100_0000, "l2-entry-past-end"),
        ("overlap.qed", l2 + 16 * 8, 0x50000, "data-cluster-overlap"),
        ("on-l1.qed", l2 + 16 * 8, K64, "data-cluster-overlap"),
        ("l1-marker.qed", K64 + 8, 1, "l1-entry-zero-marker"),
        ("l1-misaligned.qed", K64 + 8, 0x60100, "l1-entry-misaligned"),
        ("l1-past-eof.qed", K64 + 8, 0x100_0000, "l1-entry-past-end"),
    ];
    for (file, at, value, kind) in cases {
        assert_eq!(two_cluster_image(d, file), l2);
        let path = d.join(file);
        write_u64(&path, at, value);
        let (code, report) = check_json(d, file, &[]);
        assert_eq!(code, 2, "{file}: {report:#}");
        assert_eq!(report["corruptions"], 1, "{file}: {report:#}");
        assert_eq!(report["findings"][0]["kind"], kind, "{file}: {report:#}");
        let (qemu_code, qemu) = qemu_check(d, file);
        assert_eq!(qemu_code, 2, "{file}: {qemu:#}");
        assert_eq!(count(&qemu, "corruptions"), 1, "{file}: {qemu:#}");
        let text = fvd_img(d, &["check", file]).stdout;
        assert_contains(&text, "ERROR ");
        assert_contains(&text, "1 errors were found on the image.");

        // -r leaks does not touch an image with errors.
        let before = fs::read(&path).unwrap();
        let (code, report) = check_json(d, file, &["-r", "leaks"]);
        assert_eq!(code, 2, "{file}: {report:#}");
        assert!(report["repair-refused"].is_string(), "{report:#}");
        assert_eq!(fs::read(&path).unwrap(), before, "{file}: -r leaks wrote");

        // -r all: the entry becomes 0, the cluster it no longer references (at the end
        // of the file) is truncated away, and qemu-img finds nothing left.
        let (code, report) = check_json(d, file, &["-r", "all"]);
        assert_eq!(code, 0, "{file}: {report:#}");
        assert_eq!(report["corruptions-fixed"], 1, "{file}: {report:#}");
        assert_eq!(read_u64(&path, at), 0, "{file}");
        assert_eq!(read_u64(&path, 16) & features::NEED_CHECK, 0, "{file}");
        let (qemu_code, qemu) = qemu_check(d, file);
        assert_eq!(qemu_code, 0, "{file} after repair: {qemu:#}");
        assert_eq!(status(d, &["check", file], 0).code, 0);
        // The first cluster kept its data; a repaired L2 entry reads as zeros.
        let l2_case = at != K64 + 8;
        let second = if l2_case {
            assert_eq!(file_len(&path), 0xa0000, "{file}");
            "read -P 0 1M 64k"
        } else {
            assert_eq!(file_len(&path), 0xb0000, "{file}");
            "read -P 0x22 1M 64k"
        };
        qemu_io(
            d,
            file,
            &["read -P 0x11 0 64k", second, "read -P 0 64k 64k"],
        );
    }
    // An untouched copy is clean.
    two_cluster_image(d, "clean.qed");
    let (code, _) = assert_checks_agree(d, "clean.qed");
    assert_eq!(code, 0);
}

#[test]
fn an_l2_table_overlapping_another_is_reported() {
    let dir = scratch();
    let d = dir.path();
    two_cluster_image(d, "t.qed");
    let path = d.join("t.qed");
    // L1 entry 1 names the same L2 table as entry 0.
    write_u64(&path, K64 + 8, 0x60000);
    let (code, report) = check_json(d, "t.qed", &[]);
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(report["findings"][0]["kind"], "l2-table-overlap");
    assert_contains(
        report["findings"][0]["message"].as_str().unwrap(),
        "overlaps the L2 table of L1 entry 0",
    );
    // qemu-img counts one corruption per overlapping cluster; it agrees there is some.
    let (qemu_code, qemu) = qemu_check(d, "t.qed");
    assert_eq!(qemu_code, 2);
    assert_eq!(count(&qemu, "corruptions"), 4);
    let (code, _) = check_json(d, "t.qed", &["-r", "all"]);
    assert_eq!(code, 0);
    assert_eq!(read_u64(&path, K64 + 8), 0);
    assert_eq!(read_u64(&path, K64), 0x60000);
    assert_eq!(qemu_check(d, "t.qed").0, 0);
}

#[test]
fn leaked_clusters_are_released_even_before_used_ones() {
    let dir = scratch();
    let d = dir.path();
    two_cluster_image(d, "tail.qed");
    let path = d.join("tail.qed");
    // Two clusters appended: leaked at the end of the file.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0xb0000 + 2 * K64)
        .unwrap();
    let (code, report) = assert_checks_agree(d, "tail.qed");
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["leaks"], 2);
    assert_eq!(report["leaked-clusters"][0]["start"], 11);
    assert_eq!(report["leaked-clusters"][0]["count"], 2);
    let text = fvd_img(d, &["check", "tail.qed"]).stdout;
    assert_contains(&text, "Leaked clusters 11-12 (offset 720896)");
    assert_contains(&text, "2 leaked clusters were found on the image.");

    let run = status(d, &["check", "-r", "leaks", "tail.qed"], 0);
    assert_contains(&run.stdout, "Released 2 leaked cluster(s)");
    assert_contains(&run.stdout, "No errors were found on the image.");
    assert_eq!(file_len(&path), 0xb0000);
    assert_eq!(qemu_check(d, "tail.qed").0, 0);
    qemu_io(
        d,
        "tail.qed",
        &["read -P 0x11 0 64k", "read -P 0x22 1M 64k"],
    );

    // A partial cluster past the end is one leaked cluster too (qemu-img counts whole
    // clusters of the file only, and misses it).
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0xb0000 + 512)
        .unwrap();
    let (code, report) = check_json(d, "tail.qed", &[]);
    assert_eq!((code, report["leaks"].as_u64()), (3, Some(1)));
    assert_eq!(qemu_check(d, "tail.qed").0, 0);
    let (code, report) = check_json(d, "tail.qed", &["-r", "all"]);
    assert_eq!((code, report["leaks-fixed"].as_u64()), (0, Some(1)));
    assert_eq!(file_len(&path), 0xb0000);

    // A leak before used clusters (cluster 5, the data cluster of guest offset 0, whose
    // L2 entry is gone) is filled with the data cluster after it, then truncated away.
    two_cluster_image(d, "middle.qed");
    let path = d.join("middle.qed");
    write_u64(&path, 0x60000, 0);
    let guest = d.join("guest.raw");
    let run = qemu_img(d, &["convert", "-O", "raw", "middle.qed", "guest.raw"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let (code, report) = assert_checks_agree(d, "middle.qed");
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["leaked-clusters"][0]["start"], 5);
    let run = status(d, &["check", "-r", "leaks", "middle.qed"], 0);
    assert_contains(&run.stdout, "Relocated 1 data cluster(s) and 0 L2 table(s)");
    assert_contains(&run.stdout, "Released 1 leaked cluster(s)");
    assert_contains(&run.stdout, "    1 leaked clusters\n");
    assert_contains(&run.stdout, "No errors were found on the image.");
    assert_eq!(file_len(&path), 0xa0000);
    let (code, report) = check_json(d, "middle.qed", &[]);
    assert_eq!(
        (code, common::count(&report, "leaks")),
        (0, 0),
        "{report:#}"
    );
    assert_eq!(report["dirty"], false);
    assert_eq!(qemu_check(d, "middle.qed").0, 0);
    let run = qemu_img(
        d,
        &[
            "compare",
            "-f",
            "qed",
            "-F",
            "raw",
            "middle.qed",
            "guest.raw",
        ],
    );
    assert_eq!(run.code, 0, "the guest data is unchanged: {run:#?}");
    qemu_io(d, "middle.qed", &["read -P 0x22 1M 64k", "read -P 0 0 64k"]);
    let _ = fs::remove_file(guest);
}

#[test]
fn leaked_l2_tables_are_filled_by_moving_later_tables_and_qemu_agrees() {
    let dir = scratch();
    let d = dir.path();
    // 4 KiB clusters, 2-cluster L2 tables (4 MiB of guest each).
    qemu_create(d, &["-o", "cluster_size=4096,table_size=2", "t.qed", "16M"]);
    let m4 = 4 << 20;
    let writes: Vec<String> = [0, 4096, m4, m4 + 4096, 2 * m4, 3 * m4, 3 * m4 + 4096]
        .iter()
        .enumerate()
        .map(|(i, at)| format!("write -P {} {at} 4k", 0x31 + i))
        .collect();
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(d, "t.qed", &writes);
    let path = d.join("t.qed");
    let len = file_len(&path);
    // Leak the L2 table of the second 4 MiB (and its two data clusters) and the data
    // cluster of guest 4 KiB: the tables and data of the third and fourth 4 MiB lie after.
    let l1 = 4096;
    let l2 = read_u64(&path, l1);
    write_u64(&path, l2 + 8, 0);
    write_u64(&path, l1 + 8, 0);
    let (code, report) = assert_checks_agree(d, "t.qed");
    assert_eq!((code, report["leaks"].as_u64()), (3, Some(5)), "{report:#}");
    let run = qemu_img(d, &["convert", "-O", "raw", "t.qed", "guest.raw"]);
    assert_eq!(run.code, 0, "{run:#?}");

    let run = status(d, &["check", "-r", "leaks", "t.qed"], 0);
    assert_contains(&run.stdout, "L2 table(s) into leaked clusters before them");
    assert_contains(&run.stdout, "Released 5 leaked cluster(s)");
    assert_contains(&run.stdout, "No errors were found on the image.");
    assert_eq!(file_len(&path), len - 5 * 4096);
    let (code, report) = assert_checks_agree(d, "t.qed");
    assert_eq!(
        (code, common::count(&report, "leaks")),
        (0, 0),
        "{report:#}"
    );
    assert_eq!(report["dirty"], false);
    let run = qemu_img(
        d,
        &["compare", "-f", "qed", "-F", "raw", "t.qed", "guest.raw"],
    );
    assert_eq!(run.code, 0, "the guest data is unchanged: {run:#?}");
    qemu_io(
        d,
        "t.qed",
        &[
            "read -P 0x31 0 4k",
            "read -P 0 4k 4k",
            "read -P 0 4M 8k",
            "read -P 0x35 8M 4k",
            "read -P 0x36 12M 4k",
            "read -P 0x37 12292k 4k",
        ],
    );
}

#[test]
fn repair_clears_the_need_check_flag() {
    let dir = scratch();
    let d = dir.path();
    two_cluster_image(d, "n.qed");
    let path = d.join("n.qed");
    write_u64(&path, 16, features::NEED_CHECK);
    let (code, report) = check_json(d, "n.qed", &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["dirty"], true);
    assert_contains(&ok(d, &["check", "n.qed"]).stdout, "need-check flag set");
    // A plain check writes nothing.
    assert_eq!(read_u64(&path, 16), features::NEED_CHECK);
    let run = ok(d, &["check", "-r", "leaks", "n.qed"]);
    assert_contains(&run.stdout, "Cleared the need-check flag");
    assert_eq!(read_u64(&path, 16), 0);
    let (_, report) = check_json(d, "n.qed", &[]);
    assert_eq!(report["dirty"], false);
}

#[test]
fn check_refuses_what_it_cannot_check() {
    let dir = scratch();
    let d = dir.path();
    qemu_create(d, &["a.qed", "1M"]);
    // A read-only image is not repaired.
    let path = d.join("a.qed");
    let mut perms = fs::metadata(&path).unwrap().permissions();
    perms.set_readonly(true);
    fs::set_permissions(&path, perms).unwrap();
    let line = fails(d, &["check", "-r", "all", "a.qed"]);
    assert_contains(&line, "read-only");
    // A header that fails validation: exit 1, the reason given.
    fs::write(d.join("bad.qed"), {
        let mut bytes = fs::read(&path).unwrap();
        bytes[4..8].copy_from_slice(&3000u32.to_le_bytes());
        bytes
    })
    .unwrap();
    let line = fails(d, &["check", "bad.qed"]);
    assert_contains(
        &line,
        "'bad.qed' is not a valid QED image: invalid QED cluster size 3000",
    );
    // -f qed on an FVD image.
    ok(d, &["create", "-q", "-f", "fvd", "x.fvd", "1M"]);
    let line = fails(d, &["check", "-f", "qed", "x.fvd"]);
    assert_contains(&line, "is not a valid QED image");
}

#[test]
fn qed_images_open_with_their_backing_file_and_no_data_file() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![7u8; 3 << 20]).unwrap();
    qemu_create(d, &["-b", "base.raw", "-F", "raw", "over.qed"]);
    let storage = fvd_host::host::files::open_storage(
        &d.join("over.qed"),
        fvd_host::host::driver::DriverOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(storage.data.is_none());
    let base = storage.base.as_ref().expect("the backing file is opened");
    assert_eq!(base.len(), Some(3 << 20));

    // A broken QED header is reported as such.
    let mut bytes = fs::read(d.join("over.qed")).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    fs::write(d.join("broken.qed"), bytes).unwrap();
    let err = fvd_host::host::files::open_storage(
        &d.join("broken.qed"),
        fvd_host::host::driver::DriverOptions::default(),
    )
    .err()
    .expect("refused");
    assert_contains(&err.to_string(), "'");
    assert_contains(
        &err.to_string(),
        "is not a valid QED image: invalid QED table size 3",
    );
}

/// Data clusters `fvd-img map` reports (runs with `data: true`), in bytes.
fn mapped_data(dir: &Path, file: &str) -> u64 {
    common::map_json(dir, file)
        .iter()
        .filter(|run| run["data"] == Value::Bool(true) && run["depth"] == 0)
        .map(|run| run["length"].as_u64().unwrap())
        .sum()
}

#[test]
fn copy_on_read_is_a_create_option_that_io_can_override() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![0x5au8; 1 << 20]).unwrap();
    // Needs a backing file.
    let msg = fails(
        d,
        &[
            "create",
            "-f",
            "qed",
            "-o",
            "copy_on_read=on",
            "x.qed",
            "1M",
        ],
    );
    assert_contains(&msg, "backing file");
    create_qed(
        d,
        &[
            "-o",
            "copy_on_read=on",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "cor.qed",
        ],
    );
    let header = fs::read(d.join("cor.qed")).unwrap();
    let compat = u64::from_le_bytes(header[24..32].try_into().unwrap());
    assert_eq!(compat, features::COMPAT_COPY_ON_READ);
    // qemu-img ignores the compatible bit and finds the image clean.
    assert_eq!(qemu_img(d, &["check", "-f", "qed", "cor.qed"]).code, 0);
    fs::copy(d.join("cor.qed"), d.join("off.qed")).unwrap();
    // The header's default copies what is read; --no-cor does not.
    ok(d, &["io", "-c", "read -P 0x5a 0 128k", "cor.qed"]);
    assert_eq!(mapped_data(d, "cor.qed"), 128 << 10);
    ok(
        d,
        &["io", "--no-cor", "-c", "read -P 0x5a 0 128k", "off.qed"],
    );
    assert_eq!(mapped_data(d, "off.qed"), 0);
    // --cor on an image without the bit copies too.
    create_qed(d, &["-b", "base.raw", "-F", "raw", "plain.qed"]);
    ok(
        d,
        &["io", "--cor", "-c", "read -P 0x5a 64k 64k", "plain.qed"],
    );
    assert_eq!(mapped_data(d, "plain.qed"), 64 << 10);
    assert_eq!(qemu_img(d, &["check", "-f", "qed", "cor.qed"]).code, 0);
    assert_eq!(
        qemu_img(
            d,
            &["compare", "-f", "qed", "-F", "raw", "cor.qed", "base.raw"]
        )
        .code,
        0
    );
}

#[test]
fn copy_on_read_of_zero_backing_clusters_leaves_zero_clusters_that_qemu_reads_as_zeros() {
    let dir = scratch();
    let d = dir.path();
    common::sparse_file(&d.join("zb.raw"), 4 << 20);
    let raw = fs::OpenOptions::new()
        .write(true)
        .open(d.join("zb.raw"))
        .unwrap();
    raw.write_all_at(&[0x77; K64 as usize], 1 << 20).unwrap();
    drop(raw);
    qemu_create(d, &["-b", "zb.raw", "-F", "raw", "zq.qed"]);
    let before = fs::metadata(d.join("zq.qed")).unwrap().len();
    ok(d, &["io", "--cor", "-c", "read 0 4M", "zq.qed"]);
    // One data cluster and its L2 table: the zero clusters took no space.
    let grown = fs::metadata(d.join("zq.qed")).unwrap().len() - before;
    assert!(grown <= K64 + 4 * K64, "grew {grown} bytes");
    let (code, report) = qemu_check(d, "zq.qed");
    assert_eq!(code, 0, "{report:#}");
    let map = qemu_img(d, &["map", "--output", "json", "zq.qed"]);
    let runs: Value = parse_json(&map);
    let runs = runs.as_array().unwrap();
    // QEMU sees the whole disk in the image: zero runs and the one data cluster.
    assert!(runs.iter().all(|r| r["depth"] == 0), "{runs:#?}");
    let data: Vec<_> = runs.iter().filter(|r| r["data"] == true).collect();
    assert_eq!(data.len(), 1, "{runs:#?}");
    assert_eq!(
        (data[0]["start"].as_u64(), data[0]["length"].as_u64()),
        (Some(1 << 20), Some(K64))
    );
    qemu_io(
        d,
        "zq.qed",
        &[
            "read -P 0 0 1M",
            "read -P 0x77 1M 64k",
            "read -P 0 1088k 2944k",
        ],
    );
}
