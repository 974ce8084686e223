//! The check's memory is what the caller gives, never what the image needs: with a small
//! work memory the scanners walk the metadata in windows (of physical chunks, of
//! clusters), resolve first owners in several map loads, and lay the journal over units
//! by extra passes, and still find exactly what one window finds; a 1 TiB image (a
//! simulated sparse file: unwritten table ranges read as EMPTY) is checked in 256 KiB.

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
use fvd_core::check::fvd::{FvdCheck, FvdFiles, FvdSummary};
use fvd_core::check::qed::{memory_needed, QedCheck, QedSummary};
use fvd_core::check::{Checker, Report};
use fvd_core::fvd::create::{plan, CreateOptions};
use fvd_core::fvd::journal::SectorBuilder;
use fvd_core::fvd::table::{TABLE_DIRTY, TABLE_EMPTY};
use fvd_core::fvd::{parse, ImageLayout, RAW_HEADER_LEN};
use fvd_core::qed::QedCreateOptions;

const KIB: usize = 1 << 10;
const TIB: u64 = 1 << 40;

/// A compact image whose metadata is never materialized: the header is written, the
/// table region reads as EMPTY (0xFF), everything else as zeros.
fn sparse_compact(size: u64, chunk: u64, storage: u64) -> (SparseFile, ImageLayout) {
    let h = plan(&CreateOptions {
        virtual_size: size,
        compact_image: true,
        chunk_size: Some(chunk),
        ..CreateOptions::default()
    })
    .unwrap();
    let len = h.data_offset.get() + storage;
    let (_, l) = parse(h.bytes(), len).unwrap();
    let table = l.table.unwrap().region;
    let mut file = SparseFile::zeros(len);
    file.filler = Box::new(move |offset, buf| {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if (table.offset..table.end()).contains(&at) {
                0xFF
            } else {
                0
            };
        }
    });
    file.write(0, h.bytes());
    (file, l)
}

fn set_entry(file: &mut SparseFile, l: &ImageLayout, chunk: u64, value: u32) {
    file.write(
        l.table.unwrap().region.offset + chunk * 4,
        &value.to_le_bytes(),
    );
}

fn check_fvd(file: &mut SparseFile, memory: usize) -> (Run, FvdSummary) {
    let mut header = vec![0u8; RAW_HEADER_LEN];
    file.read(0, &mut header);
    let files = FvdFiles {
        image_len: file.len,
        data_len: None,
    };
    let check = FvdCheck::new(&header, files, vec![0u8; memory]).unwrap();
    let run = pump(&mut Checker::Fvd(check), file, None, 64 * KIB);
    match run.report {
        Some(Report::Fvd(s)) => (run, s),
        ref other => panic!("{other:?}"),
    }
}

fn sorted(run: &Run) -> Vec<String> {
    let mut v: Vec<String> = run.findings.iter().map(|f| format!("{f:?}")).collect();
    v.sort();
    v
}

/// The numbers that do not depend on how the check walked.
fn counts(s: &FvdSummary) -> FvdSummary {
    FvdSummary {
        table_walks: 0,
        journal_passes: 0,
        ..*s
    }
}

/// A pseudo-random table with EMPTY, DIRTY and out-of-storage entries, and many physical
/// chunks named twice.
fn scrambled(file: &mut SparseFile, l: &ImageLayout, storage_chunks: u64) {
    let chunks = l.table.unwrap().chunks;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut named = Vec::new();
    let mut table = Vec::with_capacity(chunks as usize * 4);
    for _ in 0..chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let value = match x % 100 {
            0..=4 => TABLE_EMPTY,
            5 => TABLE_DIRTY | ((x >> 40) as u32 & 0xFFFF),
            6 => (storage_chunks + (x >> 40) % 1000) as u32,
            7..=16 if !named.is_empty() => named[(x >> 20) as usize % named.len()],
            _ => ((x >> 24) % storage_chunks) as u32,
        };
        named.push(value);
        table.extend_from_slice(&value.to_le_bytes());
    }
    file.write(l.table.unwrap().region.offset, &table);
}

#[test]
fn fvd_windows_and_map_loads_find_what_one_window_finds() {
    let storage_chunks = 200_000;
    let (mut file, l) = sparse_compact(64 << 20, 4096, storage_chunks * 4096);
    scrambled(&mut file, &l, storage_chunks);
    let (one, big) = check_fvd(&mut file, 8 << 20);
    let (many, small) = check_fvd(&mut file, 32 * KIB);
    assert_eq!(
        big.table_walks, 2,
        "one window: a counting and a reporting walk"
    );
    assert!(small.table_walks > 6, "{} walks", small.table_walks);
    assert!(big.counts.corruptions > 2000, "{big:?}");
    assert_eq!(counts(&big), counts(&small));
    assert_eq!(sorted(&one), sorted(&many));
    assert_eq!(one.leaks, many.leaks, "runs are joined across windows");
    // One window reports in chunk order.
    let chunks: Vec<u64> = one
        .findings
        .iter()
        .map(|f| match f {
            fvd_core::check::Finding::Fvd(p) => p.chunk().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(chunks.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn fvd_journal_laid_over_units_when_replay_pages_do_not_fit() {
    let (mut file, l) = sparse_compact(64 << 20, 4096, 100 * 4096);
    for chunk in 0..50u64 {
        set_entry(&mut file, &l, chunk * 300, chunk as u32);
    }
    file.write(2160, &0u32.to_le_bytes());
    // Sector n fills chunk n * 300 + 1 of every table page, and contradicts chunk
    // n * 300: records on 16 pages, more than a small memory holds at once.
    for n in 0..16u64 {
        let mut sector = [0u8; 512];
        let mut b = SectorBuilder::new(&mut sector).unwrap();
        b.push_table((n * 1024 + 7) as u32, &(60 + n as u32).to_le_bytes());
        b.push_table((n * 300) as u32, &99u32.to_le_bytes());
        b.finish(l.stable_journal_epoch, n);
        file.write(l.journal.unwrap().offset + n * 512, &sector);
    }
    let (one, big) = check_fvd(&mut file, 8 << 20);
    let (many, small) = check_fvd(&mut file, 32 * KIB);
    assert_eq!(counts(&big), counts(&small));
    assert_eq!(big.counts.allocated_clusters, 50 + 16);
    assert_eq!(big.journal_applied, 16);
    assert_eq!(sorted(&one), sorted(&many));
    assert_eq!(one.findings.len(), 16);
    assert!(
        small.journal_passes > big.journal_passes,
        "{} vs {}",
        small.journal_passes,
        big.journal_passes
    );
}

#[test]
fn a_1_tib_fvd_image_checks_in_256_kib() {
    let chunk = 64 << 10;
    let frontier = 4 << 20;
    let (mut file, l) = sparse_compact(TIB, chunk, (frontier + 1) * chunk);
    let last = l.table.unwrap().chunks - 1;
    set_entry(&mut file, &l, 0, 0);
    set_entry(&mut file, &l, 1, 0);
    set_entry(&mut file, &l, 1000, frontier as u32);
    set_entry(&mut file, &l, last, 1);
    let (run, s) = check_fvd(&mut file, 256 * KIB);
    assert_eq!(
        run.messages(),
        ["chunks 0 and 1 both map to physical chunk 0"]
    );
    assert_eq!(run.leaks, [(2, frontier)]);
    assert_eq!(s.counts.allocated_clusters, 4);
    assert_eq!(s.frontier, Some(frontier + 1));
    // 4 Mi chunks in windows of about half a million: one table walk each, and one
    // reporting walk for the first.
    assert!((9..=12).contains(&s.table_walks), "{} walks", s.table_walks);
    // What was read: each walk reads the 64 MiB table; the journal (sized for a whole
    // table commit) is scanned once for sectors of the current epoch.
    let table = l.table.unwrap().region.len;
    let journal = l.journal.unwrap().len;
    assert_eq!(run.bytes_read, s.table_walks * table + journal);
    // The scanner's own state is small; all else is the memory it was given.
    assert!(std::mem::size_of::<FvdCheck<Vec<u8>>>() < 4 * KIB);

    // A sparse frontier: one window, and the dirty journal's two sectors replayed.
    let (mut file, l) = sparse_compact(TIB, chunk, 4 * chunk);
    set_entry(&mut file, &l, 0, 0);
    file.write(2160, &0u32.to_le_bytes());
    for n in 0..2u64 {
        let mut sector = [0u8; 512];
        let mut b = SectorBuilder::new(&mut sector).unwrap();
        b.push_table((last - n) as u32, &(1 + n as u32).to_le_bytes());
        b.finish(l.stable_journal_epoch, n);
        file.write(l.journal.unwrap().offset + n * 512, &sector);
    }
    let (run, s) = check_fvd(&mut file, 256 * KIB);
    assert!(run.findings.is_empty(), "{:?}", run.findings);
    assert!(run.leaks.is_empty(), "{:?}", run.leaks);
    assert_eq!((s.counts.allocated_clusters, s.frontier), (3, Some(3)));
    assert_eq!(s.table_walks, 1);
}

// ---------------------------------------------------------------------------------------
// QED

fn qed_file(size: u64, cluster: u64, table: u64, len: u64) -> SparseFile {
    let plan = fvd_core::qed::plan(&QedCreateOptions {
        size,
        cluster_size: cluster,
        table_size: table,
        ..QedCreateOptions::default()
    })
    .unwrap();
    let mut area = vec![0u8; cluster as usize];
    plan.write_header_area(&mut area).unwrap();
    let mut file = SparseFile::zeros(len);
    file.write(0, &area);
    file.len = len;
    file
}

fn put(file: &mut SparseFile, at: u64, value: u64) {
    file.write(at, &value.to_le_bytes());
}

fn check_qed(file: &mut SparseFile, memory: usize) -> (Run, QedSummary) {
    let mut header = vec![0u8; 64];
    file.read(0, &mut header);
    let check = QedCheck::new(&header, file.len, vec![0u8; memory]).unwrap();
    let run = pump(&mut Checker::Qed(check), file, None, 64 * KIB);
    match run.report {
        Some(Report::Qed(s)) => (run, s),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn qed_windows_and_map_loads_find_what_one_window_finds() {
    // 4 KiB clusters, one-cluster tables: 512 entries each. 64 MiB of file.
    let cs = 4096u64;
    let mut file = qed_file(1 << 30, cs, 1, 64 << 20);
    let l1 = cs;
    let tables = [10u64, 5000, 9000, 15000];
    for (i, &t) in tables.iter().enumerate() {
        put(&mut file, l1 + 8 * i as u64, t * cs);
    }
    put(&mut file, l1 + 8 * 4, 5000 * cs); // names table 1 again: an overlap
    put(&mut file, l1 + 8 * 5, 5000 * cs + 100); // misaligned
    put(&mut file, l1 + 8 * 6, 12000 * cs); // guest data, holding garbage
    for k in 0..20 {
        put(&mut file, 12000 * cs + 8 * k, 0x1234);
    }
    let mut x: u64 = 7;
    for (i, &t) in tables.iter().enumerate() {
        for j in 0..512u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let spread = (100 + 30 * (i as u64 * 512 + j)) % 16000 + 200;
            let spread = if tables.contains(&spread) || spread == 12000 {
                spread + 1
            } else {
                spread
            };
            let value = match (x >> 33) % 50 {
                0 => 0,
                1 => 1,
                2 if i == 3 => ((x >> 20) % (64 << 20)) | 1, // misaligned
                3 => (20000 + (x >> 40) % 100) * cs,         // past the end
                4 if i == 0 => 9000 * cs,                    // a table's cluster
                5 => 12000 * cs,                             // the not-a-table
                6..=9 => (100 + (x >> 45) % 50) * cs,        // data named twice
                _ => spread * cs,
            };
            put(&mut file, t * cs + 8 * j, value);
        }
    }
    let needed = memory_needed(
        &fvd_core::qed::parse(
            &{
                let mut h = vec![0u8; 64];
                file.read(0, &mut h);
                h
            },
            file.len,
        )
        .unwrap()
        .1,
    );
    let (one, big) = check_qed(&mut file, 4 << 20);
    let (many, small) = check_qed(&mut file, needed);
    assert!(
        small.l1_passes > big.l1_passes,
        "{} vs {}",
        small.l1_passes,
        big.l1_passes
    );
    assert!(big.counts.corruptions > 100, "{big:?}");
    assert!(one
        .findings
        .iter()
        .any(|f| f.kind() == "l1-entry-not-a-table"));
    assert!(one.findings.iter().any(|f| f.kind() == "l2-table-overlap"));
    assert_eq!(
        QedSummary {
            l1_passes: 0,
            ..big
        },
        QedSummary {
            l1_passes: 0,
            ..small
        }
    );
    assert_eq!(sorted(&one), sorted(&many));
    assert_eq!(one.leaks, many.leaks, "runs are joined across windows");
}

#[test]
fn a_1_tib_qed_image_checks_in_256_kib() {
    let cs = 64 << 10;
    let len = TIB + 64 * cs;
    let mut file = qed_file(TIB, cs, 4, len);
    // Four L2 tables after the L1 table (clusters 5..21), a few data clusters far apart,
    // one named twice.
    let clusters = len / cs;
    let data = [clusters - 1, clusters / 2, 30, clusters / 2];
    for i in 0..4u64 {
        let table = (5 + 4 * i) * cs;
        put(&mut file, cs + 8 * i, table);
        put(&mut file, table + 8 * 3, data[i as usize] * cs);
    }
    let (run, s) = check_qed(&mut file, 256 * KIB);
    assert_eq!(run.kinds(), ["data-cluster-overlap"]);
    assert_eq!(
        run.leaks,
        [
            (21, 30),
            (31, clusters / 2),
            (clusters / 2 + 1, clusters - 1)
        ]
    );
    assert_eq!(s.counts.allocated_clusters, 4);
    assert_eq!(s.counts.image_end_offset, len);
    // 16 Mi clusters in windows of a few hundred thousand: a few L1 passes each.
    assert!(
        (40..=400).contains(&s.l1_passes),
        "{} L1 passes",
        s.l1_passes
    );
    assert!(std::mem::size_of::<QedCheck<Vec<u8>>>() < 4 * KIB);
}
