//! The FVD repair as a sans-IO scanner: the plan from a check's numbers, and the writes
//! in their crash-safe order (replay written back and flushed; dirty with the epoch moved
//! on; fixes; relocation into leaked chunks; truncation; clean), leaving an image that
//! checks clean.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::{pump, Op, Run, SparseFile};
use fvd_core::check::fvd::{plan, FvdCheck, FvdFiles, FvdSummary};
use fvd_core::check::{Checker, FileId, FixAction, Repair, RepairMode, RepairRefusal, Report};
use fvd_core::fvd::create::{metadata_len, CreateOptions};
use fvd_core::fvd::journal::{SectorBuilder, MAX_JOURNAL_EPOCH};
use fvd_core::fvd::table::TABLE_EMPTY;
use fvd_core::fvd::{parse, ImageLayout, RawHeader, RAW_HEADER_LEN};

const CHUNK: u64 = 64 << 10;
const E: u32 = TABLE_EMPTY;

fn compact(size: u64, storage_chunks: u64) -> (SparseFile, ImageLayout) {
    let h = fvd_core::fvd::create::plan(&CreateOptions {
        virtual_size: size,
        compact_image: true,
        chunk_size: Some(CHUNK),
        ..CreateOptions::default()
    })
    .unwrap();
    let meta = metadata_len(&h);
    let len = h.data_offset.get().max(meta) + storage_chunks * CHUNK;
    let mut bytes = vec![0u8; meta as usize];
    bytes[..RAW_HEADER_LEN].copy_from_slice(h.bytes());
    let (_, layout) = parse(&bytes[..RAW_HEADER_LEN], len).unwrap();
    let t = layout.table.unwrap().region;
    bytes[t.offset as usize..t.end() as usize].fill(0xFF);
    let mut file = SparseFile::from_bytes(bytes);
    file.len = len;
    (file, layout)
}

fn set_entries(file: &mut SparseFile, l: &ImageLayout, first: u64, values: &[u32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    file.write(l.table.unwrap().region.offset + first * 4, &bytes);
}

fn header(file: &SparseFile) -> Vec<u8> {
    let mut h = vec![0u8; RAW_HEADER_LEN];
    file.read(0, &mut h);
    h
}

fn files(file: &SparseFile) -> FvdFiles {
    FvdFiles {
        image_len: file.len,
        data_len: None,
    }
}

fn check(file: &mut SparseFile) -> FvdSummary {
    let c = FvdCheck::new(&header(file), files(file), vec![0u8; 32 << 10]).unwrap();
    match pump(&mut Checker::Fvd(c), file, None, 512).report {
        Some(Report::Fvd(s)) => s,
        other => panic!("{other:?}"),
    }
}

fn repair(file: &mut SparseFile, mode: RepairMode) -> Run {
    let first = check(file);
    let plan = plan(&first, mode, true);
    let c = FvdCheck::repair(&header(file), files(file), vec![0u8; 32 << 10], plan).unwrap();
    pump(&mut Checker::Fvd(c), file, None, 512)
}

#[test]
fn a_crashed_image_is_replayed_then_moved_on_then_fixed_then_relocated_then_truncated_then_marked_clean(
) {
    let (mut file, l) = compact(1 << 20, 8);
    set_entries(&mut file, &l, 0, &[0, 1, 0]);
    file.write(2160, &0u32.to_le_bytes());
    let mut sector = [0u8; 512];
    let mut b = SectorBuilder::new(&mut sector).unwrap();
    b.push_table(5, &4u32.to_le_bytes());
    b.push_table(1, &9u32.to_le_bytes());
    b.finish(l.stable_journal_epoch, 0);
    file.write(l.journal.unwrap().offset, &sector);
    let table = l.table.unwrap().region.offset;

    let run = repair(&mut file, RepairMode::All);
    let state = Op::Write(FileId::Image, 2048, 512);
    let data = l.data_offset;
    // After the fixes, chunks 0, 1 and 4 are in use: chunk 4 (guest chunk 5) moves into
    // leaked chunk 2, copied in pieces of the copy buffer and flushed before the table
    // sector naming it is written; the table is flushed before the truncation.
    let (head, rest) = run.ops.split_at(8);
    assert_eq!(
        head,
        [
            Op::Write(FileId::Image, table, 4096),
            Op::Flush,
            state,
            Op::Flush,
            Op::Write(FileId::Image, table, 64),
            Op::Flush,
            Op::Write(FileId::Image, 3072, 512),
            Op::Flush,
        ]
    );
    let (copy, tail) = rest.split_at(rest.len() - 6);
    let mut at = data + 2 * CHUNK;
    for op in copy {
        let Op::Write(FileId::Image, offset, len) = *op else {
            panic!("{op:?} while copying")
        };
        assert_eq!(offset, at);
        at += len as u64;
    }
    assert_eq!(at, data + 3 * CHUNK, "the whole chunk was copied");
    assert_eq!(
        tail,
        [
            Op::Flush,
            Op::Write(FileId::Image, table, 512),
            Op::Flush,
            Op::SetLength(FileId::Image, data + 3 * CHUNK),
            state,
            Op::Flush,
        ]
    );
    let lines: Vec<String> = run
        .repairs
        .iter()
        .map(|r| match r {
            Repair::Replaying { records, sectors } => format!("replay {records} {sectors}"),
            Repair::Fixed { finding, action } => format!("{action:?}: {finding}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        lines,
        [
            "replay 1 1".to_string(),
            "DroppedRecord: journal sector 0 record 1 maps chunk 1 to physical chunk 9, but \
             the table maps it to 1"
                .into(),
            format!(
                "{:?}: chunks 0 and 2 both map to physical chunk 0",
                FixAction::Unmapped
            ),
            format!("{:?}", Repair::RelocatedChunks { chunks: 1 }),
            format!(
                "{:?}",
                Repair::ReleasedStorage {
                    file: FileId::Image,
                    bytes: 5 * CHUNK,
                    len: l.data_offset + 3 * CHUNK
                }
            ),
            format!("{:?}", Repair::MarkedClean),
        ]
    );
    assert!(matches!(
        run.report,
        Some(Report::Repaired(c)) if c.corruptions_fixed == 2 && c.leaks_fixed == 2
    ));
    // Clean, with the epoch above every sector: the journal is stale.
    let (_, after) = parse(&header(&file), file.len).unwrap();
    assert!(after.clean_shutdown);
    assert_eq!(after.stable_journal_epoch, l.stable_journal_epoch + 1);
    assert_eq!(
        file.u32_at(table + 5 * 4),
        2,
        "the good record was replayed, and its chunk moved into leaked chunk 2"
    );
    assert_eq!(
        file.u32_at(table + 2 * 4),
        E,
        "the later namer was unmapped"
    );
    let s = check(&mut file);
    assert_eq!(s.counts.corruptions, 0);
    assert_eq!(s.counts.leaks, 0, "physical chunks 2 and 3 were released");
}

#[test]
fn repairing_leaks_refuses_an_image_with_errors_and_writes_nothing() {
    let (mut file, l) = compact(1 << 20, 4);
    set_entries(&mut file, &l, 0, &[0, 0]);
    let first = check(&mut file);
    let plan = plan(&first, RepairMode::Leaks, true);
    assert_eq!(plan.refused, Some(RepairRefusal::CorruptionsNeedAll));
    let run = repair(&mut file, RepairMode::Leaks);
    assert!(run.ops.is_empty() && run.repairs.is_empty());
}

#[test]
fn a_repair_never_writes_a_header_whose_epoch_validation_refuses() {
    // A dirty image at the highest epoch a header may hold: the repair would have to move
    // the epoch past it, so it writes nothing and says why.
    let (mut file, l) = compact(1 << 20, 4);
    set_entries(&mut file, &l, 0, &[0, 1]);
    let epoch_at = std::mem::offset_of!(RawHeader, stable_journal_epoch) as u64;
    let clean_at = std::mem::offset_of!(RawHeader, clean_shutdown) as u64;
    file.write(epoch_at, &MAX_JOURNAL_EPOCH.to_le_bytes());
    file.write(clean_at, &0u32.to_le_bytes());
    let before = header(&file);
    let first = check(&mut file);
    assert_eq!(first.next_epoch, None);
    let refusal = plan(&first, RepairMode::All, true).refused;
    assert_eq!(
        refusal,
        Some(RepairRefusal::EpochExhausted {
            epoch: MAX_JOURNAL_EPOCH
        })
    );
    assert!(refusal.unwrap().to_string().contains("no room to move"));
    let run = repair(&mut file, RepairMode::All);
    assert!(run.ops.is_empty() && run.repairs.is_empty());
    assert_eq!(header(&file), before);
}

#[test]
fn a_clean_image_with_nothing_to_release_is_left_alone() {
    let (mut file, l) = compact(1 << 20, 2);
    set_entries(&mut file, &l, 0, &[0, 1]);
    let first = check(&mut file);
    let p = plan(&first, RepairMode::All, true);
    assert!(!p.has_actions);
    let run = repair(&mut file, RepairMode::All);
    assert!(run.ops.is_empty());
    // A storage that cannot be truncated (a device) is not: only the header moves on.
    let (mut file, l) = compact(1 << 20, 6);
    set_entries(&mut file, &l, 0, &[0, 1]);
    let first = check(&mut file);
    assert!(plan(&first, RepairMode::Leaks, true).has_actions);
    assert!(!plan(&first, RepairMode::Leaks, false).has_actions);
}
