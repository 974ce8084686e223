//! The open gate: files an image header names are untrusted paths. A data file outside the
//! image's directory (absolute, `..`, or a symlink leading out) is read or written only
//! with `--allow-external-data-file` (`info` and `check` may measure it); names that are
//! not regular files are refused (devices, FIFOs, directories); bases may lie anywhere,
//! like qemu-img's backing files, and are only read — except by `commit`, which says which
//! file it writes before writing it.

mod common;

use common::*;
use fvd_core::fvd::header::{set_name_field, NAME_FIELD_LEN};
use fvd_core::fvd::RawHeader;
use std::fs;
use std::mem::offset_of;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const BASE_IMG: usize = offset_of!(RawHeader, base_img);
const DATA_FILE: usize = offset_of!(RawHeader, data_file);

/// Rewrites the name field at `offset` of the FVD header of `path` to `name`, as a
/// hostile image would carry it.
fn forge(path: &Path, offset: usize, name: &str) {
    let mut bytes = fs::read(path).unwrap();
    assert!(set_name_field(
        &mut bytes[offset..offset + NAME_FIELD_LEN],
        name.as_bytes()
    ));
    fs::write(path, bytes).unwrap();
}

/// A 1 MiB file of `byte` at `path`.
fn filled(path: &Path, byte: u8) {
    fs::write(path, vec![byte; 1 << 20]).unwrap();
}

/// An image `img.fvd` in `d` with a data file whose header is then made to name `name`.
fn image_naming_data_file(d: &Path, name: &str) {
    create_fvd(d, &["-o", "data_file=img.data", "img.fvd", "1M"]);
    forge(&d.join("img.fvd"), DATA_FILE, name);
}

/// Requires a refusal that explains how to allow an external data file.
fn refused_external(d: &Path, args: &[&str]) {
    let run = fvd_img(d, args);
    assert_ne!(run.code, 0, "{args:?} succeeded: {run:?}");
    assert_contains(&run.stderr, "outside the image's directory");
    assert_contains(&run.stderr, "--allow-external-data-file");
}

#[test]
fn an_external_data_file_is_not_read_into_an_output_without_allow() {
    let outside = scratch();
    let secret = outside.path().join("secret");
    filled(&secret, 0x5e);
    let dir = scratch();
    let d = dir.path();
    image_naming_data_file(d, secret.to_str().unwrap());
    create_fvd(d, &["other.fvd", "1M"]);
    for args in [
        &["convert", "-O", "raw", "img.fvd", "out.raw"][..],
        &["compare", "img.fvd", "other.fvd"][..],
        &["map", "img.fvd"][..],
        &["io", "-r", "-c", "read 0 4k", "img.fvd"][..],
    ] {
        refused_external(d, args);
    }
    assert!(!d.join("out.raw").exists());
    // Allowed explicitly, it is used: the guest disk of a plain (not compact) image is
    // its data file, here the file from elsewhere, which is what the refusal keeps out of
    // an output nobody asked to contain it.
    ok(
        d,
        &[
            "convert",
            "--allow-external-data-file",
            "-O",
            "raw",
            "img.fvd",
            "out.raw",
        ],
    );
    assert!(fs::read(d.join("out.raw")).unwrap() == vec![0x5e; 1 << 20]);
}

#[test]
fn an_external_data_file_is_not_written_without_allow() {
    let outside = scratch();
    let target = outside.path().join("victim");
    filled(&target, 0x5e);
    let dir = scratch();
    let d = dir.path();
    image_naming_data_file(d, target.to_str().unwrap());
    for args in [
        &["io", "-c", "write -P 0x77 0 64k", "img.fvd"][..],
        &["check", "-r", "all", "img.fvd"][..],
        &["prefetch", "img.fvd"][..],
    ] {
        refused_external(d, args);
    }
    assert!(fs::read(&target).unwrap() == vec![0x5e; 1 << 20]);
    ok(
        d,
        &[
            "io",
            "--allow-external-data-file",
            "-c",
            "write -q -P 0x77 0 64k",
            "img.fvd",
        ],
    );
    assert!(fs::read(&target).unwrap()[..65536] == vec![0x77; 65536]);
}

#[test]
fn a_data_file_leaving_the_directory_by_dotdot_or_symlink_is_external() {
    let top = scratch();
    let d = top.path().join("images");
    fs::create_dir_all(d.join("sub")).unwrap();
    filled(&top.path().join("outside.raw"), 1);
    std::os::unix::fs::symlink("../outside.raw", d.join("link.raw")).unwrap();
    for name in ["../outside.raw", "link.raw", "sub/../../outside.raw"] {
        image_naming_data_file(&d, name);
        refused_external(&d, &["io", "-c", "write 0 512", "img.fvd"]);
        fs::remove_file(d.join("img.fvd")).unwrap();
        fs::remove_file(d.join("img.data")).unwrap();
    }
    // Below the image's directory, or named absolutely but inside it, is not external:
    // where the file is counts, not how the name is spelt.
    filled(&d.join("sub/inside.raw"), 0);
    let absolute = d.join("sub/inside.raw").canonicalize().unwrap();
    for name in ["sub/inside.raw", absolute.to_str().unwrap()] {
        image_naming_data_file(&d, name);
        ok(&d, &["io", "-c", "write -q -P 0x12 0 4k", "img.fvd"]);
        ok(&d, &["io", "-r", "-c", "read -q -P 0x12 0 4k", "img.fvd"]);
        fs::remove_file(d.join("img.fvd")).unwrap();
        fs::remove_file(d.join("img.data")).unwrap();
    }
}

#[test]
fn info_and_check_measure_an_external_data_file_without_allow() {
    let outside = scratch();
    let data = outside.path().join("data.raw");
    filled(&data, 0);
    let dir = scratch();
    let d = dir.path();
    image_naming_data_file(d, data.to_str().unwrap());
    let info = info_data(d, "img.fvd");
    assert_eq!(info["data_file_length"], 1 << 20);
    ok(d, &["check", "img.fvd"]);
}

#[test]
fn files_an_image_names_must_be_regular_files() {
    let dir = scratch();
    let d = dir.path();
    fs::create_dir(d.join("adir")).unwrap();
    let fifo = d.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    for (name, kind) in [
        ("/dev/zero", "a character device"),
        ("fifo", "a FIFO"),
        ("adir", "a directory"),
    ] {
        // As a data file (opening a FIFO must not hang) ...
        image_naming_data_file(d, name);
        for args in [
            &["io", "-r", "-c", "read 0 512", "img.fvd"][..],
            &["info", "img.fvd"][..],
        ] {
            let line = fails(d, args);
            assert_contains(&line, &format!("it is {kind}, not a regular file"));
        }
        fs::remove_file(d.join("img.fvd")).unwrap();
        fs::remove_file(d.join("img.data")).unwrap();
        // ... and as a base.
        filled(&d.join("base.raw"), 0);
        create_fvd(d, &["-b", "base.raw", "-F", "raw", "img.fvd", "1M"]);
        forge(&d.join("img.fvd"), BASE_IMG, name);
        for args in [
            &["io", "-r", "-c", "read 0 512", "img.fvd"][..],
            &["commit", "img.fvd"][..],
        ] {
            let line = fails(d, args);
            assert_contains(&line, &format!("it is {kind}, not a regular file"));
        }
        fs::remove_file(d.join("img.fvd")).unwrap();
    }
}

#[test]
fn bases_may_lie_anywhere_and_are_only_read() {
    let outside = scratch();
    let base = outside.path().join("base.raw");
    filled(&base, 0x42);
    // Read-only for its owner too: the image never opens it for writing.
    fs::set_permissions(&base, fs::Permissions::from_mode(0o444)).unwrap();
    let dir = scratch();
    let d = dir.path();
    let name = base.to_str().unwrap();
    create_fvd(d, &["-b", name, "-F", "raw", "img.fvd", "1M"]);
    ok(d, &["io", "-c", "read -q -P 0x42 0 64k", "img.fvd"]);
    ok(d, &["io", "-c", "write -q -P 0x43 0 4k", "img.fvd"]);
    ok(d, &["io", "-r", "-c", "read -q -P 0x43 0 4k", "img.fvd"]);
    ok(d, &["convert", "-O", "raw", "img.fvd", "out.raw"]);
    assert!(fs::read(&base).unwrap() == vec![0x42; 1 << 20]);
}

#[test]
fn commit_names_the_base_file_before_writing_it() {
    let outside = scratch();
    let base = outside.path().join("base.raw");
    filled(&base, 0x42);
    let dir = scratch();
    let d = dir.path();
    create_fvd(
        d,
        &["-b", base.to_str().unwrap(), "-F", "raw", "img.fvd", "1M"],
    );
    ok(d, &["io", "-c", "write -q -P 0x43 0 4k", "img.fvd"]);
    let run = ok(d, &["commit", "img.fvd"]);
    let real = base.canonicalize().unwrap();
    assert_eq!(
        run.stdout,
        format!(
            "Committing into base file '{}'\nImage committed.\n",
            real.display()
        )
    );
    let bytes = fs::read(&base).unwrap();
    assert!(bytes[..4096].iter().all(|&b| b == 0x43));
    assert!(bytes[4096..].iter().all(|&b| b == 0x42));
}
