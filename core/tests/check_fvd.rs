//! The FVD check as a sans-IO scanner, pumped from images held in memory with a small
//! work memory (32 KiB) and reads filled in odd-sized pieces: every finding kind with its
//! numbers and words, and the journal judged record by record with the engine's rule.

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
use fvd_core::check::fvd::{FvdCheck, FvdFiles, FvdSummary, Problem, RecordRange};
use fvd_core::check::{Checker, Finding, Report};
use fvd_core::fvd::create::{metadata_len, BaseSpec, CreateOptions};
use fvd_core::fvd::journal::SectorBuilder;
use fvd_core::fvd::table::{TABLE_DIRTY, TABLE_EMPTY};
use fvd_core::fvd::{parse, ImageLayout, RAW_HEADER_LEN};

const CHUNK: u64 = 64 << 10;
const E: u32 = TABLE_EMPTY;

/// A fresh image made as `create` makes it, with `storage` bytes of data storage after
/// the metadata.
fn create(options: &CreateOptions<'_>, storage: u64) -> (SparseFile, ImageLayout) {
    let h = fvd_core::fvd::create::plan(options).unwrap();
    let meta = metadata_len(&h);
    let data_offset = h.data_offset.get();
    let len = data_offset.max(meta) + storage;
    let mut bytes = vec![0u8; meta as usize];
    bytes[..RAW_HEADER_LEN].copy_from_slice(h.bytes());
    let (_, layout) = parse(&bytes[..RAW_HEADER_LEN], len).unwrap();
    if let Some(t) = layout.table {
        bytes[t.region.offset as usize..t.region.end() as usize].fill(0xFF);
    }
    let mut file = SparseFile::from_bytes(bytes);
    file.len = len;
    (file, layout)
}

fn compact(size: u64, storage_chunks: u64) -> (SparseFile, ImageLayout) {
    create(
        &CreateOptions {
            virtual_size: size,
            compact_image: true,
            chunk_size: Some(CHUNK),
            ..CreateOptions::default()
        },
        storage_chunks * CHUNK,
    )
}

fn set_entries(file: &mut SparseFile, l: &ImageLayout, first: u64, values: &[u32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    file.write(l.table.unwrap().region.offset + first * 4, &bytes);
}

fn set_clean(file: &mut SparseFile, clean: bool) {
    file.write(2160, &u32::from(clean).to_le_bytes());
}

/// Writes journal sector `position` of the current epoch with the records `build` adds.
fn journal(
    file: &mut SparseFile,
    l: &ImageLayout,
    position: u64,
    build: impl FnOnce(&mut SectorBuilder),
) {
    let mut sector = [0u8; 512];
    let mut b = SectorBuilder::new(&mut sector).unwrap();
    build(&mut b);
    b.finish(l.stable_journal_epoch, position);
    file.write(l.journal.unwrap().offset + position * 512, &sector);
}

fn table_record(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn header(file: &SparseFile) -> Vec<u8> {
    let mut h = vec![0u8; RAW_HEADER_LEN];
    file.read(0, &mut h);
    h
}

fn check_with(file: &mut SparseFile, memory: usize) -> Run {
    let files = FvdFiles {
        image_len: file.len,
        data_len: None,
    };
    let check = FvdCheck::new(&header(file), files, vec![0u8; memory]).unwrap();
    pump(&mut Checker::Fvd(check), file, None, 333)
}

fn check(file: &mut SparseFile) -> Run {
    check_with(file, 32 << 10)
}

fn summary(run: &Run) -> FvdSummary {
    match run.report {
        Some(Report::Fvd(s)) => s,
        ref other => panic!("not an FVD check report: {other:?}"),
    }
}

fn problems(run: &Run) -> Vec<Problem> {
    run.findings
        .iter()
        .map(|f| match f {
            Finding::Fvd(p) => *p,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn table_entries_shared_dirty_or_past_the_storage_are_reported_in_chunk_order() {
    let (mut file, l) = compact(1 << 20, 6);
    set_entries(&mut file, &l, 0, &[0, E, 3, 0, 0x8000_0001, 99, 5]);
    let run = check(&mut file);
    let storage_len = file.len;
    assert_eq!(
        problems(&run),
        [
            Problem::SharedChunk {
                chunk: 3,
                first: 0,
                physical: 0
            },
            Problem::DirtyEntry {
                chunk: 4,
                entry: 0x8000_0001
            },
            Problem::BeyondStorage {
                chunk: 5,
                physical: 99,
                end: Some(l.data_offset + 100 * CHUNK),
                storage_len
            },
        ]
    );
    assert_eq!(run.leaks, [(1, 3), (4, 5)]);
    let s = summary(&run);
    assert_eq!(s.counts.corruptions, 3);
    assert_eq!(s.counts.leaks, 3);
    assert_eq!(s.counts.allocated_clusters, 4);
    assert_eq!(s.counts.fragmented_clusters, 3);
    assert_eq!(s.frontier, Some(6));
    assert_eq!(s.counts.image_end_offset, l.data_offset + 6 * CHUNK);
    assert_eq!(s.table_walks, 2);
}

/// A sector whose checksum is right but whose record area holds an unknown record kind.
fn malformed_sector(file: &mut SparseFile, l: &ImageLayout, position: u64) {
    let mut sector = [0u8; 512];
    let mut b = SectorBuilder::new(&mut sector).unwrap();
    b.push_table(0, &table_record(&[1]));
    b.finish(l.stable_journal_epoch, position);
    sector[32] = 9;
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&sector[8..]);
    sector[4..8].copy_from_slice(&crc.to_le_bytes());
    file.write(l.journal.unwrap().offset + position * 512, &sector);
}

#[test]
fn journal_records_are_judged_in_journal_order_and_the_good_ones_replayed() {
    let (mut file, l) = compact(1 << 20, 4);
    set_entries(&mut file, &l, 0, &[0, 1]);
    set_clean(&mut file, false);
    journal(&mut file, &l, 0, |b| {
        b.push_table(2, &table_record(&[2]));
        b.push_table(16, &table_record(&[3]));
        b.push_bitmap(0, &[1]);
    });
    journal(&mut file, &l, 1, |b| {
        b.push_table(0, &table_record(&[7]));
        b.push_table(3, &table_record(&[0x8000_0005]));
    });
    malformed_sector(&mut file, &l, 2);
    // A sector of another epoch is stale: skipped silently.
    let mut stale = [0u8; 512];
    let mut b = SectorBuilder::new(&mut stale).unwrap();
    b.push_table(5, &table_record(&[3]));
    b.finish(l.stable_journal_epoch + 7, 3);
    file.write(l.journal.unwrap().offset + 3 * 512, &stale);

    let run = check(&mut file);
    assert_eq!(
        problems(&run),
        [
            Problem::RecordOutOfRange {
                sector: 0,
                record: 1,
                range: RecordRange::Table {
                    first: 16,
                    end: 17,
                    chunks: 16
                }
            },
            Problem::RecordOutOfRange {
                sector: 0,
                record: 2,
                range: RecordRange::NoBitmap
            },
            Problem::RecordConflict {
                sector: 1,
                record: 0,
                chunk: 0,
                value: 7,
                current: 0
            },
            Problem::RecordDirty {
                sector: 1,
                record: 1,
                chunk: 3,
                value: 0x8000_0005
            },
            Problem::MalformedSector { sector: 2, at: 32 },
        ]
    );
    assert_eq!(
        run.messages()[..3],
        [
            "journal sector 0 record 1 is out of range: table entries 16..17 of 16 chunks",
            "journal sector 0 record 2 is out of range: a bitmap record in an image without \
             a bitmap",
            "journal sector 1 record 0 maps chunk 0 to physical chunk 7, but the table maps it to 0",
        ]
    );
    let s = summary(&run);
    assert_eq!((s.journal_sectors, s.journal_records), (2, 5));
    assert_eq!(s.journal_applied, 1);
    assert!(s.counts.dirty);
    // The good record mapped chunk 2: checked as a read-write open sees it after replay.
    assert_eq!(s.counts.allocated_clusters, 3);
    assert_eq!(s.counts.corruptions, 5);
    assert!(run.leaks.is_empty(), "{:?}", run.leaks);
    // The disk is unchanged: a check never writes.
    assert!(run.writes.is_empty());
    assert_eq!(file.u32_at(l.table.unwrap().region.offset + 8), E);
}

#[test]
fn a_clean_image_with_a_journal_is_reported_unreplayed_and_checked_as_on_disk() {
    let (mut file, l) = compact(1 << 20, 4);
    set_entries(&mut file, &l, 0, &[0]);
    journal(&mut file, &l, 0, |b| {
        b.push_table(1, &table_record(&[1]));
        b.push_table(1, &table_record(&[2]));
    });
    let run = check(&mut file);
    assert_eq!(
        problems(&run),
        [
            Problem::UnreplayedJournal {
                sectors: 1,
                records: 2
            },
            Problem::RecordConflict {
                sector: 0,
                record: 1,
                chunk: 1,
                value: 2,
                current: 1
            }
        ]
    );
    let s = summary(&run);
    assert_eq!(s.counts.allocated_clusters, 1, "as on disk");
    assert!(!s.counts.dirty);
    assert_eq!(s.head_problems, 2);
}

#[test]
fn a_dirty_image_with_metadata_and_no_journal_cannot_be_recovered() {
    let (mut file, l) = create(
        &CreateOptions {
            virtual_size: 1 << 20,
            compact_image: true,
            chunk_size: Some(CHUNK),
            journal_size: Some(0),
            ..CreateOptions::default()
        },
        CHUNK,
    );
    set_entries(&mut file, &l, 0, &[0]);
    set_clean(&mut file, false);
    let run = check(&mut file);
    assert_eq!(problems(&run), [Problem::DirtyWithoutJournal]);
    assert_eq!(run.findings[0].kind(), "dirty-without-journal");
    // A plain image has nothing to recover: dirty is only a state.
    let (mut plain, _) = create(
        &CreateOptions {
            virtual_size: 1 << 20,
            ..CreateOptions::default()
        },
        0,
    );
    set_clean(&mut plain, false);
    let run = check(&mut plain);
    assert!(run.findings.is_empty());
    assert!(summary(&run).counts.dirty);
}

fn based(blocks: u64) -> (SparseFile, ImageLayout) {
    create(
        &CreateOptions {
            virtual_size: 1 << 20,
            block_size: Some(4096),
            base: Some(BaseSpec {
                name: b"base.raw",
                format: b"raw",
                size: blocks * 4096,
            }),
            ..CreateOptions::default()
        },
        1 << 20,
    )
}

#[test]
fn bitmap_blocks_are_counted_and_bits_past_the_last_block_are_corruption() {
    let (mut file, l) = based(10);
    let bitmap = l.base.unwrap().bitmap;
    file.write(bitmap.offset, &[0b0000_0101, 0b0001_0010]);
    file.write(bitmap.offset + 100, &[0x01]);
    let run = check(&mut file);
    assert_eq!(
        problems(&run),
        [Problem::StrayBits {
            first: 12,
            count: 2,
            blocks: 10
        }]
    );
    assert_eq!(
        run.messages(),
        ["bitmap has 2 bit(s) set past its last block 9 (first: bit 12)"]
    );
    let s = summary(&run);
    assert_eq!(s.bitmap, Some((3, 7)));
    assert_eq!(s.counts.total_clusters, 256);
    assert_eq!(s.counts.allocated_clusters, 256 - 7);
}

#[test]
fn a_dirty_image_is_checked_with_its_bitmap_records_replayed() {
    let (mut file, l) = based(100);
    set_clean(&mut file, false);
    journal(&mut file, &l, 0, |b| {
        b.push_bitmap(1, &[0xFF, 0x01]);
    });
    journal(&mut file, &l, 1, |b| {
        b.push_bitmap(4095, &[0x01, 0x01]);
    });
    let run = check(&mut file);
    assert_eq!(
        problems(&run),
        [Problem::RecordOutOfRange {
            sector: 1,
            record: 0,
            range: RecordRange::Bitmap {
                byte_offset: 4095,
                len: 2,
                bitmap_len: 4096
            }
        }]
    );
    assert_eq!(summary(&run).bitmap, Some((9, 91)));
    assert_eq!(
        file.u32_at(l.base.unwrap().bitmap.offset),
        0,
        "never written"
    );
}

#[test]
fn a_findings_message_carries_its_numbers() {
    for (problem, text) in [
        (
            Problem::DirtyEntry {
                chunk: 1,
                entry: TABLE_DIRTY | 1,
            },
            "chunk 1: table entry 0x80000001 has the DIRTY bit (bit 31) set",
        ),
        (
            Problem::BeyondStorage {
                chunk: 2,
                physical: u64::from(u32::MAX >> 1),
                end: None,
                storage_len: 5,
            },
            "chunk 2 maps to physical chunk 2147483647, which ends past 2^64 bytes",
        ),
        (
            Problem::RecordOutOfRange {
                sector: 3,
                record: 4,
                range: RecordRange::NoTable,
            },
            "journal sector 3 record 4 is out of range: a table record in an image without a table",
        ),
    ] {
        assert_eq!(problem.to_string(), text);
        assert_eq!(Finding::Fvd(problem).to_string(), text);
    }
}
