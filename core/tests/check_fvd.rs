//! The FVD check as a sans-IO scanner, pumped from images held in memory with a small
//! work memory: every finding kind, the journal replayed as the engine replays it, the
//! repair's writes in their crash-safe order, and a 1 TiB image in a few hundred KiB.

mod common;

use common::{pump, Run, SparseFile};
use fvd_core::check::fvd::{plan, FvdCheck, FvdFiles, FvdSummary, Problem, RecordRange};
use fvd_core::check::{Checker, Finding, RepairMode, Report};
use fvd_core::format::journal::SectorBuilder;
use fvd_core::format::table::{TABLE_DIRTY, TABLE_EMPTY};
use fvd_core::format::{parse, ImageLayout, RAW_HEADER_LEN};
use fvd_core::geometry::{metadata_len, BaseSpec, CreateOptions};

const CHUNK: u64 = 64 << 10;
const E: u32 = TABLE_EMPTY;

/// A fresh image made as `create` makes it, with `storage` bytes of data storage after
/// the metadata.
fn create(options: &CreateOptions<'_>, storage: u64) -> (SparseFile, ImageLayout) {
    let h = fvd_core::geometry::plan(options).unwrap();
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

fn repair(file: &mut SparseFile, mode: RepairMode) -> Run {
    let first = summary(&check(file));
    let plan = plan(&first, mode, true);
    let files = FvdFiles {
        image_len: file.len,
        data_len: None,
    };
    let check = FvdCheck::repair(&header(file), files, vec![0u8; 32 << 10], plan).unwrap();
    pump(&mut Checker::Fvd(check), file, None, 4096)
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
