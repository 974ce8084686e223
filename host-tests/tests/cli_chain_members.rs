//! The files of one image's chain — the image, its data file, every base at any depth and
//! their data files — must be different files, compared by device and inode (a symlink or
//! a hard link to the image is the image). A header naming the image itself as its base or
//! data file, or one file as both, is refused before anything is written: no command may
//! write the image's header as data, or write a base through a data file. `update`,
//! `rebase` and `create` refuse to record such a header in the first place.

mod common;

use common::*;
use fvd_core::fvd::header::{set_name_field, NAME_FIELD_LEN};
use fvd_core::fvd::RawHeader;
use std::fs;
use std::mem::offset_of;
use std::path::Path;

/// Rewrites the name field at `offset` of the FVD header of `path` to `name`, as a hostile
/// image would carry it (nothing checks it).
fn forge(path: &Path, offset: usize, name: &str) {
    let mut bytes = fs::read(path).unwrap();
    assert!(set_name_field(
        &mut bytes[offset..offset + NAME_FIELD_LEN],
        name.as_bytes()
    ));
    fs::write(path, bytes).unwrap();
}

const BASE_IMG: usize = offset_of!(RawHeader, base_img);
const DATA_FILE: usize = offset_of!(RawHeader, data_file);

/// Snapshot of every file of `dir`, to prove a refusal changed nothing.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    listing(dir)
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Requires every command of `commands` to fail naming the same-file rule, and to leave
/// every file of `dir` as it was.
fn all_refused(dir: &Path, commands: &[&[&str]], needle: &str) {
    let before = contents(dir);
    for args in commands {
        let run = fvd_img(dir, args);
        assert_ne!(run.code, 0, "{args:?} succeeded: {run:?}");
        assert_contains(&run.stderr, "is the same file as");
        assert_contains(&run.stderr, needle);
        assert!(contents(dir) == before, "{args:?} changed a file");
    }
}

#[test]
fn chain_members_must_be_distinct_files_a_base_that_is_the_image() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![7u8; 1 << 20]).unwrap();
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "img.fvd", "1M"]);
    ok(d, &["io", "-c", "write -q -P 0x55 0 64k", "img.fvd"]);

    // update will not record it, by name, through a symlink or through a hard link.
    fs::hard_link(d.join("img.fvd"), d.join("hard.fvd")).unwrap();
    std::os::unix::fs::symlink("img.fvd", d.join("soft.fvd")).unwrap();
    for name in ["img.fvd", "soft.fvd", "hard.fvd", "./img.fvd"] {
        let setting = format!("base_img={name}");
        let before = contents(d);
        let line = fails(d, &["update", "img.fvd", &setting]);
        assert_contains(&line, "is the same file as 'img.fvd' (the image)");
        assert!(contents(d) == before, "{name}");
    }

    // A header that says so anyway (hard link: the name differs, the file does not) is
    // refused by every command that opens the chain, commit first of all.
    forge(&d.join("img.fvd"), BASE_IMG, "hard.fvd");
    all_refused(
        d,
        &[
            &["commit", "img.fvd"],
            &["io", "-c", "write 0 512", "img.fvd"],
            &["io", "-r", "-c", "read 0 512", "img.fvd"],
            &["convert", "-O", "raw", "img.fvd", "out.raw"],
            &["map", "img.fvd"],
            &["rebase", "-b", "base.raw", "img.fvd"],
            &["prefetch", "img.fvd"],
        ],
        "the base of 'img.fvd'",
    );
}

#[test]
fn chain_members_must_be_distinct_files_a_data_file_that_is_the_image() {
    let dir = scratch();
    let d = dir.path();
    create_fvd(d, &["-o", "data_file=img.data", "img.fvd", "1M"]);
    ok(d, &["io", "-c", "write -q -P 0x55 0 64k", "img.fvd"]);
    let line = fails(d, &["update", "img.fvd", "data_file=img.fvd"]);
    assert_contains(&line, "'img.fvd' (the data file of 'img.fvd')");

    forge(&d.join("img.fvd"), DATA_FILE, "img.fvd");
    // The first write would have gone over the image's own header.
    all_refused(
        d,
        &[
            &["io", "-c", "write -P 0x66 0 4k", "img.fvd"],
            &["io", "-r", "-c", "read 0 4k", "img.fvd"],
            &["check", "-r", "all", "img.fvd"],
            &["check", "img.fvd"],
            &["info", "img.fvd"],
            &["convert", "-O", "raw", "img.fvd", "out.raw"],
        ],
        "the data file of 'img.fvd'",
    );
}

#[test]
fn chain_members_must_be_distinct_files_a_data_file_that_is_the_base() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![7u8; 1 << 20]).unwrap();
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "data_file=img.data",
            "img.fvd",
            "1M",
        ],
    );
    let line = fails(d, &["update", "img.fvd", "data_file=base.raw"]);
    assert_contains(&line, "is the same file as 'base.raw'");

    forge(&d.join("img.fvd"), DATA_FILE, "base.raw");
    // Writes to the data file would have changed the base under every image over it.
    all_refused(
        d,
        &[
            &["io", "-c", "write -P 0x66 0 4k", "img.fvd"],
            &["prefetch", "img.fvd"],
            &["commit", "img.fvd"],
        ],
        "'base.raw'",
    );
}

#[test]
fn chain_members_must_be_distinct_files_across_bases() {
    let dir = scratch();
    let d = dir.path();
    // a.fvd over b.fvd over a.fvd: a loop is the same file twice.
    fs::write(d.join("base.raw"), vec![7u8; 1 << 20]).unwrap();
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "b.fvd", "1M"]);
    create_fvd(d, &["-b", "b.fvd", "-F", "fvd", "a.fvd", "1M"]);
    forge(&d.join("b.fvd"), BASE_IMG, "a.fvd");
    all_refused(
        d,
        &[&["io", "-c", "write 0 512", "a.fvd"], &["commit", "a.fvd"]],
        "'a.fvd' (the base of 'b.fvd') is the same file as 'a.fvd' (the image)",
    );
}

#[test]
fn rebase_and_create_refuse_a_base_that_is_the_data_file() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![7u8; 1 << 20]).unwrap();
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "data_file=img.data",
            "img.fvd",
            "1M",
        ],
    );
    fs::write(d.join("img.data"), vec![0u8; 1 << 20]).unwrap();
    let before = contents(d);
    let line = fails(d, &["rebase", "-u", "-b", "img.data", "img.fvd"]);
    assert_contains(&line, "'img.data': that is its own data file");
    let line = fails(
        d,
        &[
            "create",
            "--force",
            "-b",
            "base.raw",
            "-o",
            "data_file=base.raw",
            "new.fvd",
        ],
    );
    assert_contains(&line, "is the backing file 'base.raw'");
    assert!(contents(d) == before);
}

#[test]
fn chain_members_must_be_distinct_files_for_qed_backing_files() {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("base.raw"), vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("base.raw", d.join("link")).unwrap();
    let run = qemu_img(
        d,
        &[
            "create", "-q", "-f", "qed", "-b", "link", "-F", "raw", "a.qed", "1M",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    // The name stays; the file it leads to becomes the image itself.
    fs::remove_file(d.join("link")).unwrap();
    std::os::unix::fs::symlink("a.qed", d.join("link")).unwrap();
    all_refused(
        d,
        &[
            &["io", "-c", "write 0 512", "a.qed"],
            &["convert", "-O", "raw", "a.qed", "out.raw"],
        ],
        "'link' (the base of 'a.qed') is the same file as 'a.qed' (the image)",
    );
}
