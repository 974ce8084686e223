//! Support for the relocating-repair tests (`check_relocation_*.rs`): small FVD and QED
//! images in memory with leaks made on purpose, and a loop that drives the core check
//! scanner over in-memory files (stopping after a number of writes, flushes and length
//! changes, as a power cut would), plus the check and guest-data reads that judge the
//! result.
#![allow(dead_code)]

use fvd_core::check::fvd::{FvdCheck, FvdFiles};
use fvd_core::check::qed::{memory_needed, QedCheck};
use fvd_core::check::{CheckCounts, Checker, Repair, RepairMode, Report, Step};
use fvd_core::fvd::create::{plan, CreateOptions};
use fvd_core::fvd::table::TABLE_EMPTY;
use fvd_core::qed::{QedCreateOptions, QedLayout};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::storage::Storage;
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;

pub const K4: u64 = 4096;
/// The smallest work memory an FVD check takes.
pub const SMALL: usize = fvd_core::check::fvd::MIN_MEMORY;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An FVD image.
    Fvd,
    /// A QED image.
    Qed,
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as u8).wrapping_mul(37).wrapping_add((i / 512) as u8) | 1)
        .collect()
}

pub fn storage_of(image: Vec<u8>) -> MemStorage {
    MemStorage {
        image: MemFile::new(image),
        data: None,
        base: None,
        writes: 0,
    }
}

/// A scanner over `storage` (a repair as `mode` says, planned from a check first).
pub fn scanner(
    format: Format,
    storage: &mut MemStorage,
    memory: usize,
    mode: Option<RepairMode>,
) -> Checker<Vec<u8>> {
    let bytes = storage.image.current.clone();
    let len = bytes.len() as u64;
    match format {
        Format::Fvd => {
            let files = FvdFiles {
                image_len: len,
                data_len: None,
            };
            let check = FvdCheck::new(&bytes, files, vec![0u8; memory]).unwrap();
            let Some(mode) = mode else {
                return Checker::Fvd(check);
            };
            let Some(Report::Fvd(first)) =
                drive(Checker::Fvd(check), storage, usize::MAX, &mut Vec::new())
            else {
                panic!("the check did not end with its summary");
            };
            let plan = fvd_core::check::fvd::plan(&first, mode, true);
            Checker::Fvd(FvdCheck::repair(&bytes, files, vec![0u8; memory], plan).unwrap())
        }
        Format::Qed => {
            let (_, layout) = fvd_core::qed::parse(&bytes, len).unwrap();
            let memory = memory.max(memory_needed(&layout));
            let check = QedCheck::new(&bytes, len, vec![0u8; memory]).unwrap();
            let Some(mode) = mode else {
                return Checker::Qed(check);
            };
            let Some(Report::Qed(first)) =
                drive(Checker::Qed(check), storage, usize::MAX, &mut Vec::new())
            else {
                panic!("the check did not end with its summary");
            };
            let plan = fvd_core::check::qed::plan(&first, mode);
            Checker::Qed(QedCheck::repair(&bytes, len, vec![0u8; memory], plan).unwrap())
        }
    }
}

/// Runs `checker` over `storage`, performing at most `budget` writes, flushes and length
/// changes (`None`: the budget ran out first, the storage is left as the cut found it).
pub fn drive(
    mut checker: Checker<Vec<u8>>,
    storage: &mut MemStorage,
    budget: usize,
    lines: &mut Vec<Repair>,
) -> Option<Report> {
    let mut done = 0;
    loop {
        let step = checker.poll();
        match step {
            Step::Read { file, offset, .. } => {
                storage.read_at(file, offset, checker.io_mut()).unwrap();
            }
            Step::Write { file, offset, .. } => {
                if done == budget {
                    return None;
                }
                done += 1;
                let bytes = checker.io().to_vec();
                storage.write_at(file, offset, &bytes).unwrap();
            }
            Step::Flush { file } => {
                if done == budget {
                    return None;
                }
                done += 1;
                storage.flush(file).unwrap();
            }
            Step::SetLength { file, len } => {
                if done == budget {
                    return None;
                }
                done += 1;
                storage.set_len(file, len).unwrap();
                storage.flush(file).unwrap();
            }
            Step::Repaired(r) => {
                lines.push(r);
                continue;
            }
            Step::Done(report) => return Some(report),
            _ => continue,
        }
        checker.complete();
    }
}

pub fn counts(format: Format, storage: &MemStorage, memory: usize) -> CheckCounts {
    let mut storage = storage.clone();
    let checker = scanner(format, &mut storage, memory, None);
    match drive(checker, &mut storage, 0, &mut Vec::new()) {
        Some(Report::Fvd(s)) => s.counts,
        Some(Report::Qed(s)) => s.counts,
        other => panic!("a check wrote something or ended without a summary: {other:?}"),
    }
}

pub fn guest(storage: &MemStorage, size: u64) -> Vec<u8> {
    let options = DriverOptions {
        writable: false,
        ..DriverOptions::default()
    };
    let mut d = Driver::open(storage.clone(), options).unwrap();
    d.read(0, size as usize).unwrap()
}

/// Repairs `storage` to the end; returns what the repair said.
pub fn repair(format: Format, storage: &mut MemStorage, memory: usize) -> (Vec<Repair>, Report) {
    let checker = scanner(format, storage, memory, Some(RepairMode::Leaks));
    let mut lines = Vec::new();
    let report = drive(checker, storage, usize::MAX, &mut lines).unwrap();
    (lines, report)
}

/// A compact FVD image of 4 KiB chunks with guest chunks `0..written` written (each to
/// the physical chunk of the same number), then the entries of `unmapped` set EMPTY: their
/// physical chunks are leaked.
pub fn fvd_image(chunks: u64, written: u64, unmapped: &[u64]) -> MemStorage {
    let options = CreateOptions {
        virtual_size: chunks * K4,
        compact_image: true,
        chunk_size: Some(K4),
        storage_grow_unit: Some(K4),
        journal_size: Some(8192),
        ..Default::default()
    };
    let header = plan(&options).unwrap();
    let mut d = Driver::open(
        storage_of(initial_metadata(&header)),
        DriverOptions::default(),
    )
    .unwrap();
    for i in 0..written {
        d.write(i * K4, &pattern(i, K4 as usize)).unwrap();
    }
    let (storage, clean) = d.close().unwrap();
    assert!(clean);
    let mut bytes = storage.image.current;
    let (_, layout) = fvd_core::fvd::parse(&bytes, bytes.len() as u64).unwrap();
    let table = layout.table.unwrap().region.offset as usize;
    for &chunk in unmapped {
        let at = table + chunk as usize * 4;
        assert_eq!(
            bytes[at..at + 4],
            (chunk as u32).to_le_bytes(),
            "chunks are laid out in order"
        );
        bytes[at..at + 4].copy_from_slice(&TABLE_EMPTY.to_le_bytes());
    }
    storage_of(bytes)
}

/// A QED image of 4 KiB clusters and 2-cluster L2 tables (each mapping 4 MiB), written at
/// `writes` (guest offsets, 4 KiB each), then the L1 and L2 entries at the file offsets
/// that `leak` picks set to 0 (what they named is leaked).
pub fn qed_image(
    size: u64,
    writes: &[u64],
    leak: impl Fn(&QedLayout, &[u8]) -> Vec<u64>,
) -> MemStorage {
    let options = QedCreateOptions {
        size,
        cluster_size: K4,
        table_size: 2,
        backing: None,
    };
    let plan = fvd_core::qed::plan(&options).unwrap();
    let mut image = vec![0u8; plan.file_len as usize];
    plan.write_header_area(&mut image).unwrap();
    let mut d = Driver::open(storage_of(image), DriverOptions::default()).unwrap();
    for &offset in writes {
        d.write(offset, &pattern(offset / K4, K4 as usize)).unwrap();
    }
    let (storage, clean) = d.close().unwrap();
    assert!(clean);
    let mut bytes = storage.image.current;
    let (_, layout) = fvd_core::qed::parse(&bytes, bytes.len() as u64).unwrap();
    for at in leak(&layout, &bytes) {
        bytes[at as usize..at as usize + 8].fill(0);
    }
    storage_of(bytes)
}

pub fn u64_at(bytes: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}
