//! `check -r leaks` of images with many leaks, with the smallest work memory the check
//! takes: the window of chunks or clusters it marks at a time holds fewer than are in use,
//! so the repair takes more passes over the tables (never more memory) and still releases
//! every leak; qemu-img check and compare agree with the result.

mod relocation_support;

use fvd_core::check::fvd::{FvdCheck, FvdFiles};
use fvd_core::check::qed::{memory_needed, QedCheck};
use fvd_core::check::{Checker, Repair, RepairMode, Report, Step};
use fvd_core::fvd::create::{plan, CreateOptions};
use fvd_core::fvd::table::TABLE_EMPTY;
use fvd_core::qed::QedCreateOptions;
use fvd_host::host::driver::DriverOptions;
use fvd_host::host::files::open_image;
use fvd_host::testing::newimage::initial_metadata;
use relocation_support::*;
use std::os::unix::fs::FileExt;

/// Runs `checker` to its end over the file at `path`; also counts the reads at
/// `watch` (the start of the table: one per table walk).
fn drive_file(
    checker: Checker<Vec<u8>>,
    path: &std::path::Path,
    watch: u64,
) -> (Vec<Repair>, Report, u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let (mut lines, mut walks) = (Vec::new(), 0);
    let mut checker = checker;
    loop {
        match checker.poll() {
            Step::Read { offset, .. } => {
                walks += u64::from(offset == watch);
                let buf = checker.io_mut();
                buf.fill(0);
                let mut done = 0;
                while done < buf.len() {
                    match file
                        .read_at(&mut buf[done..], offset + done as u64)
                        .unwrap()
                    {
                        0 => break,
                        n => done += n,
                    }
                }
            }
            Step::Write { offset, .. } => file.write_all_at(checker.io(), offset).unwrap(),
            Step::Flush { .. } => file.sync_data().unwrap(),
            Step::SetLength { len, .. } => file.set_len(len).unwrap(),
            Step::Repaired(r) => {
                lines.push(r);
                continue;
            }
            Step::Done(report) => return (lines, report, walks),
            _ => continue,
        }
        checker.complete();
    }
}

fn fvd_file_check(
    path: &std::path::Path,
    repair: Option<RepairMode>,
) -> (Vec<Repair>, Report, u64) {
    let bytes = std::fs::read(path).unwrap();
    let header = &bytes[..bytes.len().min(64 << 10)];
    let files = FvdFiles {
        image_len: bytes.len() as u64,
        data_len: None,
    };
    let check = FvdCheck::new(header, files, vec![0u8; SMALL]).unwrap();
    let table = check.layout().table.unwrap().region.offset;
    let (_, first, walks) = drive_file(Checker::Fvd(check), path, table);
    let Some(mode) = repair else {
        return (Vec::new(), first, walks);
    };
    let Report::Fvd(first) = first else {
        panic!("{first:?}")
    };
    let plan = fvd_core::check::fvd::plan(&first, mode, true);
    let scanner = FvdCheck::repair(header, files, vec![0u8; SMALL], plan).unwrap();
    drive_file(Checker::Fvd(scanner), path, table)
}

#[test]
fn many_fvd_leaks_with_a_small_work_memory_take_several_windows_and_are_all_released() {
    // 128 Ki chunks mapped in order (a sparse file), every 50th leaked: the smallest work
    // memory holds a window of fewer chunks than are in use, so the repair takes several.
    let chunks: u64 = 128 << 10;
    let options = CreateOptions {
        virtual_size: chunks * K4,
        compact_image: true,
        chunk_size: Some(K4),
        storage_grow_unit: Some(K4),
        journal_size: Some(chunks * 4),
        ..Default::default()
    };
    let header = plan(&options).unwrap();
    let mut bytes = initial_metadata(&header);
    let (_, layout) = fvd_core::fvd::parse(&bytes, bytes.len() as u64).unwrap();
    let table = layout.table.unwrap().region.offset as usize;
    let data = layout.data_offset;
    let leaked = |i: u64| i % 50 == 7;
    for i in 0..chunks {
        let entry = if leaked(i) { TABLE_EMPTY } else { i as u32 };
        bytes[table + i as usize * 4..][..4].copy_from_slice(&entry.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.fvd");
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(data + chunks * K4).unwrap();
    // Guest data in some chunks that stay and in the chunks that move.
    let written = |i: u64| !leaked(i) && (i % 997 == 0 || i >= chunks - 3000);
    for i in (0..chunks).filter(|&i| written(i)) {
        file.write_all_at(&pattern(i, K4 as usize), data + i * K4)
            .unwrap();
    }
    drop(file);
    let leaks = chunks.div_ceil(50);
    let Report::Fvd(first) = fvd_file_check(&path, None).1 else {
        panic!("no summary")
    };
    assert_eq!(first.counts.leaks, leaks);

    let (lines, report, walks) = fvd_file_check(&path, Some(RepairMode::Leaks));
    // Every leaked chunk below the chunks in use is filled; those above are truncated.
    let used = chunks - leaks;
    let holes = (0..used).filter(|&i| leaked(i)).count() as u64;
    assert!(
        lines.contains(&Repair::RelocatedChunks { chunks: holes }),
        "{lines:?}"
    );
    assert_eq!(
        report,
        Report::Repaired(fvd_core::check::RepairCounts {
            corruptions_fixed: 0,
            leaks_fixed: leaks
        })
    );
    // The window (a bit per chunk in half of what the I/O buffers leave of 32 KiB) holds
    // fewer chunks than are in use: besides the check's walk, the count and the recount,
    // a marking and a moving walk per window, in several windows.
    assert!(walks >= 3 + 2 * 2, "{walks} table walks");
    let Report::Fvd(last) = fvd_file_check(&path, None).1 else {
        panic!("no summary")
    };
    assert_eq!((last.counts.corruptions, last.counts.leaks), (0, 0));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        data + (chunks - leaks) * K4
    );
    let options = DriverOptions {
        writable: false,
        ..DriverOptions::default()
    };
    let mut d = open_image(&path, options).unwrap();
    for i in (0..chunks).filter(|&i| written(i) || i % 101 == 0) {
        let want = if written(i) {
            pattern(i, K4 as usize)
        } else {
            vec![0; K4 as usize]
        };
        assert!(
            d.read(i * K4, K4 as usize).unwrap() == want,
            "guest chunk {i}"
        );
    }
}

fn qed_file_repair(path: &std::path::Path, memory: usize) -> (Vec<Repair>, Report, u64) {
    let bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    let (_, layout) = fvd_core::qed::parse(&bytes, len).unwrap();
    let memory = memory.max(memory_needed(&layout));
    let l1 = layout.l1_table.offset;
    let check = QedCheck::new(&bytes, len, vec![0u8; memory]).unwrap();
    let (_, first, _) = drive_file(Checker::Qed(check), path, l1);
    let Report::Qed(first) = first else {
        panic!("no summary")
    };
    let plan = fvd_core::check::qed::plan(&first, RepairMode::Leaks);
    let scanner = QedCheck::repair(&bytes, len, vec![0u8; memory], plan).unwrap();
    drive_file(Checker::Qed(scanner), path, l1)
}

/// A QED image of 4 KiB clusters and two-cluster tables (qemu opens no image with
/// one-cluster tables), laid out by hand: the L2 tables after the L1 table, then the data cluster of each of the first
/// `clusters` guest clusters in order, every 40th of them leaked (its L2 entry 0).
fn qed_many_leaks(path: &std::path::Path, clusters: u64) -> u64 {
    let options = QedCreateOptions {
        size: 64 << 20,
        cluster_size: K4,
        table_size: 2,
        backing: None,
    };
    let plan = fvd_core::qed::plan(&options).unwrap();
    let mut image = vec![0u8; plan.file_len as usize];
    plan.write_header_area(&mut image).unwrap();
    let l1 = plan.l1_table.offset;
    let table_len = 2 * K4;
    let per_table = table_len / 8;
    let tables = clusters.div_ceil(per_table);
    let first_table = plan.file_len;
    let first_data = first_table + tables * table_len;
    image.resize((first_data + clusters * K4) as usize, 0);
    let mut put = |at: u64, value: u64| {
        image[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
    };
    for t in 0..tables {
        put(l1 + t * 8, first_table + t * table_len);
    }
    for i in (0..clusters).filter(|i| i % 40 != 3) {
        let table = first_table + (i / per_table) * table_len;
        put(table + (i % per_table) * 8, first_data + i * K4);
    }
    std::fs::write(path, &image).unwrap();
    // Guest data in clusters that move and in some that stay.
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for i in (0..clusters).filter(|i| i % 40 != 3 && (i % 301 == 0 || *i >= clusters - 600)) {
        file.write_all_at(&pattern(i, K4 as usize), first_data + i * K4)
            .unwrap();
    }
    clusters.div_ceil(40)
}

/// qemu-img check's leaked clusters of `name`, required to find no corruption.
fn qemu_leaks(run: &dyn Fn(&[&str]) -> (i32, String), name: &str) -> u64 {
    let (code, text) = run(&["check", "-f", "qed", "--output", "json", name]);
    assert!(code == 0 || code == 3, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["check-errors"], 0, "{text}");
    assert!(report["corruptions"].as_u64().unwrap_or(0) == 0, "{text}");
    report["leaks"].as_u64().unwrap_or(0)
}

/// The leaks qemu-img check (10.0.2 here) reports in a QED file of `len` bytes of 4 KiB
/// clusters that has none: one for each cluster whose index is a multiple of 4096 (it does
/// so for an image only qemu-io ever wrote, too). Other versions may not.
fn quirk(len: u64) -> u64 {
    len.div_ceil(K4).saturating_sub(1) / 4096
}

/// qemu-img check finds `want` leaks, give or take its [`quirk`].
fn assert_qemu_leaks(run: &dyn Fn(&[&str]) -> (i32, String), name: &str, want: u64, len: u64) {
    let found = qemu_leaks(run, name);
    assert!(
        (want..=want + quirk(len)).contains(&found),
        "{name}: qemu-img check found {found} leaks, {want} expected"
    );
}

#[test]
fn many_qed_leaks_with_a_small_work_memory_take_more_passes_not_more_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clusters = 12 << 10;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let mut walks = Vec::new();
    for (name, memory) in [("small.qed", 0), ("large.qed", 16 << 20)] {
        let path = d.join(name);
        let leaks = qed_many_leaks(&path, clusters);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_qemu_leaks(&run, name, leaks, len);
        assert_eq!(
            run(&["convert", "-f", "qed", "-O", "raw", name, "guest.raw"]).0,
            0
        );
        let (lines, report, l1_reads) = qed_file_repair(&path, memory);
        assert!(
            lines
                .iter()
                .any(|l| matches!(l, Repair::RelocatedClusters { .. })),
            "{lines:?}"
        );
        assert_eq!(
            report,
            Report::Repaired(fvd_core::check::RepairCounts {
                corruptions_fixed: 0,
                leaks_fixed: leaks
            })
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len - leaks * K4);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_qemu_leaks(&run, name, 0, len);
        let bytes = std::fs::read(&path).unwrap();
        let (_, layout) = fvd_core::qed::parse(&bytes, len).unwrap();
        let check = QedCheck::new(&bytes, len, vec![0u8; memory_needed(&layout)]).unwrap();
        let (_, last, _) = drive_file(Checker::Qed(check), &path, 0);
        let Report::Qed(last) = last else {
            panic!("no summary")
        };
        assert_eq!(
            (
                last.counts.corruptions,
                last.counts.leaks,
                last.counts.dirty
            ),
            (0, 0, false)
        );
        let (code, text) = run(&["compare", "-f", "qed", "-F", "raw", name, "guest.raw"]);
        assert_eq!(code, 0, "the guest data is unchanged: {text}");
        walks.push(l1_reads);
    }
    // The smallest memory holds a window of fewer clusters than are in use: the same
    // repair, in more passes over the tables.
    assert!(
        walks[0] > walks[1],
        "L1 passes: small memory {}, large {}",
        walks[0],
        walks[1]
    );
}
