//! The QED check as a sans-IO scanner, pumped from images held in memory: every finding
//! kind with the owner it names, leaks, the repair's writes in their crash-safe order,
//! windowed checks finding what a single window finds, and a 1 TiB image in a few
//! hundred KiB.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::{pump, Run, SparseFile};
use fvd_core::check::qed::{memory_needed, plan, Fault, Owner, Place, QedCheck, QedSummary};
use fvd_core::check::{Checker, FileId, Finding, FixAction, Repair, RepairMode, Report};
use fvd_core::qed::{features, QedCreateOptions};

const CS: u64 = 64 << 10;

/// A 4 MiB default-geometry image: header, L1 table at 64 KiB, an L2 table at 0x50000
/// (four clusters) named by L1 entry 0, one data cluster at 0x90000 mapped by L2 entry 0.
fn image() -> SparseFile {
    image_of_size(4 << 20, 0xa0000)
}

fn image_of_size(size: u64, len: u64) -> SparseFile {
    let plan = fvd_core::qed::plan(&QedCreateOptions {
        size,
        ..QedCreateOptions::default()
    })
    .unwrap();
    let mut bytes = vec![0u8; 0xa0000];
    plan.write_header_area(&mut bytes[..CS as usize]).unwrap();
    let mut file = SparseFile::from_bytes(bytes);
    file.len = len;
    put(&mut file, CS, 0x50000);
    put(&mut file, 0x50000, 0x90000);
    file
}

fn put(file: &mut SparseFile, at: u64, value: u64) {
    file.write(at, &value.to_le_bytes());
}

fn header(file: &SparseFile) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    file.read(0, &mut h);
    h
}

fn check_with(file: &mut SparseFile, memory: usize) -> Run {
    let check = QedCheck::new(&header(file), file.len, vec![0u8; memory]).unwrap();
    pump(&mut Checker::Qed(check), file, None, 1000)
}

fn check(file: &mut SparseFile) -> Run {
    check_with(file, 256 << 10)
}

fn summary(run: &Run) -> QedSummary {
    match run.report {
        Some(Report::Qed(s)) => s,
        ref other => panic!("not a QED report: {other:?}"),
    }
}

fn faults(run: &Run) -> Vec<(Place, Fault)> {
    run.findings
        .iter()
        .map(|f| match f {
            Finding::Qed(p) => (p.place, p.fault),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn l2(index: u64) -> Place {
    Place::L2 {
        l1: 0,
        index,
        guest: index * CS,
    }
}

#[test]
fn a_clean_image_has_no_findings() {
    let mut file = image();
    put(&mut file, 0x50000 + 3 * 8, 1);
    let run = check(&mut file);
    assert!(run.findings.is_empty(), "{:?}", run.findings);
    assert!(run.leaks.is_empty());
    let s = summary(&run);
    assert_eq!(
        s.counts.allocated_clusters, 1,
        "the zero marker is not allocated"
    );
    assert_eq!(s.counts.total_clusters, 64);
    assert_eq!(s.counts.image_end_offset, 0xa0000);
}

#[test]
fn a_data_cluster_inside_an_l2_table_is_blamed_on_the_data_entry() {
    let mut file = image();
    put(&mut file, 0x50008, 0x60000);
    let run = check(&mut file);
    assert_eq!(
        faults(&run),
        [(l2(1), Fault::Overlap(Owner::L2Table { l1: 0 }))]
    );
    let Finding::Qed(p) = run.findings[0] else {
        unreachable!()
    };
    assert_eq!(p.entry_at, 0x50008);
    assert_eq!(p.kind(), "data-cluster-overlap");
    assert_eq!(
        p.to_string(),
        "L2 entry 1 of L1 entry 0 (guest offset 65536, 0x60000): the data cluster \
         overlaps the L2 table of L1 entry 0"
    );
    let s = summary(&run);
    assert_eq!(
        (s.counts.allocated_clusters, s.counts.fragmented_clusters),
        (2, 1)
    );
}

#[test]
fn every_entry_fault_names_its_entry() {
    let cases: [(u64, u64, Place, Fault); 7] = [
        (0x50000 + 16 * 8, 0xa0200, l2(16), Fault::Misaligned),
        (0x50000 + 16 * 8, 0x100_0000, l2(16), Fault::PastEnd),
        (
            0x50000 + 16 * 8,
            0x90000,
            l2(16),
            Fault::Overlap(Owner::Data { guest: 0 }),
        ),
        (0x50000 + 16 * 8, CS, l2(16), Fault::Overlap(Owner::L1Table)),
        (CS + 8, 1, Place::L1 { index: 1 }, Fault::ZeroMarkerInL1),
        (CS + 8, 0x60100, Place::L1 { index: 1 }, Fault::Misaligned),
        (CS + 8, 0x100_0000, Place::L1 { index: 1 }, Fault::PastEnd),
    ];
    for (at, value, place, fault) in cases {
        let mut file = image();
        put(&mut file, at, value);
        let run = check(&mut file);
        assert_eq!(faults(&run), [(place, fault)], "{value:#x} at {at:#x}");
        assert_eq!(summary(&run).counts.corruptions, 1);
    }
}

#[test]
fn an_l2_table_named_twice_overlaps_the_first() {
    let mut file = image();
    put(&mut file, CS + 8, 0x50000);
    let run = check(&mut file);
    assert_eq!(
        faults(&run),
        [(
            Place::L1 { index: 1 },
            Fault::Overlap(Owner::L2Table { l1: 0 })
        )]
    );
    assert_eq!(run.findings[0].kind(), "l2-table-overlap");
}

#[test]
fn an_l1_entry_pointing_at_guest_data_is_not_a_table() {
    // L1 entry 1 names the data cluster 0x90000 as a table (four clusters: the file
    // grows to 0xd0000); the data holds misaligned values no writer produces.
    let mut file = image();
    file.len = 0xd0000;
    put(&mut file, CS + 8, 0x90000);
    for k in 0..10 {
        put(&mut file, 0x90000 + k * 8, 0x1234);
    }
    let run = check(&mut file);
    assert_eq!(
        faults(&run),
        [(Place::L1 { index: 1 }, Fault::NotATable(10))]
    );
    assert_eq!(run.leaks, [(10, 13)]);
}

#[test]
fn unreferenced_clusters_are_leaks_in_runs() {
    let mut file = image();
    put(&mut file, 0x50000, 0);
    let run = check(&mut file);
    assert!(run.findings.is_empty());
    assert_eq!(run.leaks, [(9, 10)]);
    let s = summary(&run);
    assert_eq!(s.counts.leaks, 1);
    assert_eq!(s.counts.image_end_offset, 0x90000);
}

fn repair(file: &mut SparseFile, mode: RepairMode) -> Run {
    let first = summary(&check(file));
    let plan = plan(&first, mode);
    let check = QedCheck::repair(&header(file), file.len, vec![0u8; 256 << 10], plan).unwrap();
    pump(&mut Checker::Qed(check), file, None, 4096)
}

#[test]
fn a_repair_sets_need_check_zeroes_the_entries_truncates_and_clears_need_check() {
    let mut file = image();
    put(&mut file, CS + 8, 0x50000);
    put(&mut file, 0x50000 + 16 * 8, 0xa0200);
    let refused = repair(&mut file, RepairMode::Leaks);
    assert!(refused.writes.is_empty() && refused.repairs.is_empty());
    let run = repair(&mut file, RepairMode::All);
    // Need-check set and flushed first; the entries zeroed; need-check cleared last.
    assert_eq!(run.writes[0], (FileId::Image, 16, 24));
    assert_eq!(run.writes.last(), Some(&(FileId::Image, 16, 24)));
    assert_eq!(file.u64_at(16) & features::NEED_CHECK, 0);
    assert_eq!(file.u64_at(CS + 8), 0);
    assert_eq!(file.u64_at(0x50000 + 16 * 8), 0);
    let actions: Vec<_> = run
        .repairs
        .iter()
        .map(|r| match r {
            Repair::Fixed { action, .. } => *action,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(actions, [FixAction::ZeroedL1, FixAction::ZeroedL2]);
    assert!(matches!(
        run.report,
        Some(Report::Repaired(c)) if c.corruptions_fixed == 2
    ));
    let after = check(&mut file);
    assert!(after.findings.is_empty(), "{:?}", after.findings);
}

#[test]
fn too_little_work_memory_is_refused_with_what_is_needed() {
    let file = image();
    let (_, layout) = fvd_core::qed::parse(&header(&file), file.len).unwrap();
    let needed = memory_needed(&layout);
    let err = QedCheck::new(&header(&file), file.len, vec![0u8; needed - 1]).err();
    assert_eq!(
        err,
        Some(fvd_core::check::CheckError::MemoryTooSmall {
            given: needed - 1,
            needed
        })
    );
    assert!(QedCheck::new(&header(&file), file.len, vec![0u8; needed]).is_ok());
    // A header that does not validate is the header's error.
    let mut bad = header(&file);
    bad[4..8].copy_from_slice(&3000u32.to_le_bytes());
    assert!(matches!(
        QedCheck::new(&bad, file.len, vec![0u8; needed]).err(),
        Some(fvd_core::check::CheckError::QedHeader(_))
    ));
}

#[test]
fn entries_inside_a_two_cluster_header_are_in_header() {
    // header_size 2: the header area is clusters 0-1, the L1 table 2-5, an L2 table 6-9.
    let mut file = image();
    file.write(12, &2u32.to_le_bytes());
    file.write(40, &(2 * CS).to_le_bytes());
    file.len = 0xb0000;
    put(&mut file, 0x50000, 0);
    put(&mut file, 2 * CS, 0x60000);
    put(&mut file, 2 * CS + 8, CS);
    put(&mut file, 0x60000, 0xa0000);
    put(&mut file, 0x60008, CS);
    let run = check(&mut file);
    assert_eq!(
        faults(&run),
        [
            (Place::L1 { index: 1 }, Fault::InHeader),
            (l2(1), Fault::InHeader)
        ]
    );
    assert_eq!(run.kinds(), ["l1-entry-in-header", "l2-entry-in-header"]);
    assert_eq!(
        run.messages()[1],
        "L2 entry 1 of L1 entry 0 (guest offset 65536, 0x10000): the data cluster lies \
         inside the header area"
    );
}
