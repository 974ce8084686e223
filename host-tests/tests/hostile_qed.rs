//! QED images whose tables are not what they claim to be: the need-check repair of a
//! writable open resets only entries a crash can leave (past the end of the file), with
//! the rule `check` and QEMU use (tables and clusters wholly inside the file), and never
//! rewrites a "table" that is really guest data (the hostile-input issue, bug 2).

mod common;

use common::*;
use fvd_core::qed::{features, parse, QedLayout};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MIB: u64 = 1 << 20;

fn layout_of(path: &Path) -> QedLayout {
    let bytes = fs::read(path).unwrap();
    parse(&bytes, bytes.len() as u64).unwrap().1
}

fn read_u64(path: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u64::from_le_bytes(b)
}

fn write_u64(path: &Path, at: u64, value: u64) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&value.to_le_bytes(), at).unwrap();
}

/// Sets the need-check bit, as a crash during a write leaves it.
fn set_need_check(path: &Path) {
    let features_at = 16;
    let value = read_u64(path, features_at) | features::NEED_CHECK;
    write_u64(path, features_at, value);
}

/// A 4 GiB QED image (64 KiB clusters, 2 GiB per L2 table) with 0xab at guest 1 MiB, and
/// the byte offset of that data cluster (the last cluster of the file).
fn image_with_data_at_one_mib(dir: &Path) -> (std::path::PathBuf, u64) {
    create(dir, &["-f", "qed", "-o", "cluster_size=64k", "q", "4G"]);
    ok(dir, &["io", "-f", "qed", "-c", "write -P 0xab 1M 64k", "q"]);
    let image = dir.join("q");
    let layout = layout_of(&image);
    let table = read_u64(&image, layout.l1_table.offset);
    let data = read_u64(&image, table + 8 * (MIB / (64 << 10)));
    assert_eq!(data + (64 << 10), fs::metadata(&image).unwrap().len());
    (image, data)
}

#[test]
fn need_check_repair_drops_an_l1_entry_whose_table_runs_past_the_end_and_keeps_the_data() {
    let dir = scratch();
    let (image, data) = image_with_data_at_one_mib(dir.path());
    let layout = layout_of(&image);
    // L1[1] points at the data cluster: as a table it would run past the end of the file.
    write_u64(&image, layout.l1_table.offset + 8, data);
    set_need_check(&image);
    // A read-only open reads guest 1 MiB right; so does a writable open that only reads.
    ok(
        dir.path(),
        &["io", "-f", "qed", "-r", "-c", "read -P 0xab 1M 64k", "q"],
    );
    ok(
        dir.path(),
        &["io", "-f", "qed", "-c", "read -P 0xab 1M 64k", "q"],
    );
    let repaired = layout_of(&image);
    assert_eq!(
        read_u64(&image, repaired.l1_table.offset + 8),
        0,
        "the bad L1 entry is gone"
    );
    assert_eq!(repaired.features & features::NEED_CHECK, 0);
    // A write in L1[1]'s range gets a table of its own and leaves the data alone.
    ok(
        dir.path(),
        &["io", "-f", "qed", "-c", "write -P 0xcd 2G 64k", "q"],
    );
    ok(
        dir.path(),
        &[
            "io",
            "-f",
            "qed",
            "-c",
            "read -P 0xab 1M 64k",
            "-c",
            "read -P 0xcd 2G 64k",
            "q",
        ],
    );
    let check = qemu_img(dir.path(), &["check", "-f", "qed", "q"]);
    assert_eq!(check.code, 0, "{check:#?}");
}

#[test]
fn need_check_repair_never_rewrites_a_table_that_holds_entries_no_writer_produces() {
    let dir = scratch();
    let (image, data) = image_with_data_at_one_mib(dir.path());
    let layout = layout_of(&image);
    // Make the "table" at the data cluster lie wholly inside the file, so only its
    // contents (0xab bytes: misaligned entries) show it is not a table.
    let len = fs::metadata(&image).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(len + layout.table_len)
        .unwrap();
    write_u64(&image, layout.l1_table.offset + 8, data);
    set_need_check(&image);
    let before = fs::read(&image).unwrap();
    let err = fails(
        dir.path(),
        &["io", "-f", "qed", "-c", "read -P 0xab 1M 64k", "q"],
    );
    assert_contains(&err, "L2");
    assert!(
        fs::read(&image).unwrap() == before,
        "a refused image must not change"
    );
    // Read-only access still works, and check -r all repairs it for writing.
    ok(
        dir.path(),
        &["io", "-f", "qed", "-r", "-c", "read -P 0xab 1M 64k", "q"],
    );
    ok(dir.path(), &["check", "-r", "all", "q"]);
    ok(
        dir.path(),
        &["io", "-f", "qed", "-c", "write -P 0xcd 2G 64k", "q"],
    );
    ok(
        dir.path(),
        &[
            "io",
            "-f",
            "qed",
            "-c",
            "read -P 0xab 1M 64k",
            "-c",
            "read -P 0xcd 2G 64k",
            "q",
        ],
    );
}
