//! Images of formats this project does not read (qcow2, vmdk, vdi, vpc, vhdx made by the
//! real qemu-img) are named and refused by every command that would otherwise take them
//! for raw data: compare, convert, create -b, info, check, io. `-f raw` / `-F raw` still
//! say otherwise on purpose. A QED image never records an FVD base, which QEMU, QED's
//! other reader, would show to the guest as raw bytes.

mod common;

use common::{assert_contains, create_fvd, fails, fails_with, ok, qemu_img, scratch};
use std::fs;
use std::path::Path;

/// Makes `name` of 1 MiB in `format` with qemu-img; false when this qemu-img cannot.
fn foreign(dir: &Path, format: &str, name: &str) -> bool {
    qemu_img(dir, &["create", "-q", "-f", format, name, "1M"]).code == 0
}

#[test]
fn commands_name_a_qcow2_image_instead_of_reading_its_container_as_raw() {
    let dir = scratch();
    let d = dir.path();
    assert!(foreign(d, "qcow2", "disk.qcow2"));
    fs::write(d.join("base.raw"), vec![0u8; 1 << 20]).unwrap();

    // compare's status for an error is 2, as qemu-img's.
    let compare = fails_with(d, 2, &["compare", "base.raw", "disk.qcow2"]);
    assert_contains(&compare, "qcow2 image");
    assert_contains(&compare, "qemu-img convert");

    let convert = fails(d, &["convert", "-O", "fvd", "disk.qcow2", "out.fvd"]);
    assert_contains(&convert, "qcow2 image");
    assert!(!d.join("out.fvd").exists(), "convert left an output behind");

    let create = fails(d, &["create", "-b", "disk.qcow2", "top.fvd"]);
    assert_contains(&create, "qcow2 image");
    assert!(!d.join("top.fvd").exists());

    for command in ["info", "check"] {
        let refused = fails(d, &[command, "disk.qcow2"]);
        assert_contains(&refused, "a qcow2 image, a format this tool does not read");
    }
    let io = common::fvd_img(d, &["io", "-c", "read 0 512", "disk.qcow2"]);
    assert_ne!(io.code, 0, "{io:?}");
    assert_contains(&io.stderr, "qcow2 image");
}

#[test]
fn every_format_qemu_img_makes_here_is_recognised_by_name() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![0u8; 1 << 20]).unwrap();
    let mut seen = 0;
    for (format, name) in [
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vdi", "vdi"),
        ("vpc", "vpc"),
        ("vhdx", "vhdx"),
        ("parallels", "parallels"),
    ] {
        let file = format!("disk.{format}");
        if !foreign(d, format, &file) {
            continue;
        }
        seen += 1;
        let refused = fails_with(d, 2, &["compare", "base.raw", &file]);
        assert_contains(&refused, &format!("a {name} image"));
    }
    assert!(seen >= 4, "qemu-img made only {seen} of the formats");
}

#[test]
fn raw_named_on_the_command_line_still_reads_any_bytes_as_raw() {
    let dir = scratch();
    let d = dir.path();
    assert!(foreign(d, "qcow2", "disk.qcow2"));
    ok(d, &["create", "-b", "disk.qcow2", "-F", "raw", "top.fvd"]);
    let run = ok(d, &["info", "--output", "json", "top.fvd"]);
    assert_contains(&run.stdout, "\"backing-filename-format\": \"raw\"");
    ok(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "fvd",
            "disk.qcow2",
            "copy.fvd",
        ],
    );
}

#[test]
fn a_qed_image_never_records_an_fvd_base_that_qemu_would_read_as_raw() {
    let dir = scratch();
    let d = dir.path();
    create_fvd(d, &["base.fvd", "1M"]);
    for extra in [&["-F", "fvd"][..], &[][..]] {
        let mut args = vec!["create", "-f", "qed", "-b", "base.fvd"];
        args.extend_from_slice(extra);
        args.push("top.qed");
        let refused = fails(d, &args);
        assert_contains(&refused, "QEMU cannot read an FVD base");
        assert!(!d.join("top.qed").exists());
    }
}
