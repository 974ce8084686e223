//! The FVD check (FORMAT.md §7–§10) and its repair, as a sans-IO scanner.
//!
//! A check runs these passes, each streaming what it finds:
//!
//! 1. The journal (`journal.rs`): one pass counts the valid sectors of the current epoch
//!    and marks which metadata pages their records touch (a filter, exact when it fits);
//!    then the touched pages are loaded into replay pages, as many at a time as fit, and
//!    one journal pass per batch lays the records over them with the engine's rule
//!    ([`crate::fvd::replay`]), reporting each bad record once, in journal order when
//!    one batch holds every touched page (the usual case).
//! 2. The table (`table.rs`), of a compact image, read in units of the I/O buffer, with
//!    the journal laid over the units of a dirty image (from the replay pages, or by a
//!    journal pass per unit when they did not all fit). Physical chunks are checked in
//!    windows: one table walk per window marks the chunks named (a bitset) and those named
//!    twice (a second bitset), and counts; a second walk reports bad entries and shared
//!    chunks in chunk order, the first namer of each shared chunk recorded in a map when
//!    met (more walks, each over a part of the window, when the map cannot hold them all).
//!    Leaked chunks are the unmarked ones below the frontier.
//! 3. The bitmap (`bitmap.rs`), of an image with a base: one walk.
//!
//! Cost: one window holds `3 × W` physical chunks for `W` bytes of window memory (what is
//! left after the I/O buffer, a quarter of the memory up to 256 KiB, the journal buffer
//! and the replay pages): a frontier of `F` chunks takes `ceil(F / 3W)` windows of one
//! table walk each, plus a reporting walk for each window with findings. The journal is
//! read once to scan it and once per batch of replay pages (once when they all fit). A
//! 1 TiB image of 64 KiB chunks (16 Mi chunks, a 64 MiB table, a 71 MiB journal) checked
//! with 256 KiB takes 9 table walks when its frontier is at 4 Mi chunks (about 32 when
//! every chunk is mapped), one when the frontier is small.
//! Order: when more than one window or sub-window is needed, each window's findings come
//! in chunk order, window after window, each window's leaks after its findings.
//!
//! A repair ([`repair`]) is a scanner too: it replays the journal back into the regions,
//! moves the epoch on, unmaps bad entries, clears stray bits, moves the chunks above
//! leaked ones down into them (`relocate.rs`), truncates the data storage and marks the
//! image clean, yielding the writes in that crash-safe order.

mod bitmap;
mod journal;
mod problem;
mod relocate;
pub mod repair;
mod table;
mod walk;

pub use problem::{Problem, RecordRange};
pub use repair::{plan, FvdRepairPlan};

use super::memory::{Area, Bits, Carver};
use super::{CheckCounts, CheckError, Core, FileId, Report, Step};
use crate::fvd::header::mutable_sectors;
use crate::fvd::journal::{next_epoch, JOURNAL_SECTOR_SIZE};
use crate::fvd::{parse, ImageLayout, RAW_HEADER_LEN};
use journal::{Journal, ReplayPages};
use table::TableScan;

/// Smallest work memory a check accepts.
pub const MIN_MEMORY: usize = 32 << 10;
/// Bytes of a replay page (and of the journal filter's page).
pub(crate) const PAGE_LEN: usize = 4096;
/// [`PAGE_LEN`] as a file offset or length.
pub(crate) const PAGE: u64 = PAGE_LEN as u64;
/// Largest I/O unit.
const MAX_UNIT: usize = 256 << 10;

/// The lengths of the files a check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FvdFiles {
    /// Length of the image file.
    pub image_len: u64,
    /// Length of the separate data file, when the image names one.
    pub data_len: Option<u64>,
}

/// What a check of an FVD image found, in numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FvdSummary {
    /// The counts qemu-img reports.
    pub counts: CheckCounts,
    /// Valid journal sectors of the current epoch.
    pub journal_sectors: u64,
    /// Records in them.
    pub journal_records: u64,
    /// Of those, the ones applied without a fault.
    pub journal_applied: u64,
    /// Problems of the image as a whole and of its journal.
    pub head_problems: u64,
    /// Corrupt table entries.
    pub table_corruptions: u64,
    /// The bitmap has bits set past its last block.
    pub stray_bits: bool,
    /// Blocks whose data is in the image and still in the base (images with a base).
    pub bitmap: Option<(u64, u64)>,
    /// One past the highest physical chunk mapped (compact images).
    pub frontier: Option<u64>,
    /// Where that chunk ends in the data storage (compact images).
    pub data_end: Option<u64>,
    /// Length of the data storage.
    pub storage_len: u64,
    /// Walks over the table.
    pub table_walks: u64,
    /// Passes over the journal.
    pub journal_passes: u64,
    /// The header's journal epoch.
    pub journal_epoch: u64,
    /// The epoch a repair moves the journal to: above the header's and above every intact
    /// sector's that a header can reach (`None` when no such epoch is left).
    pub next_epoch: Option<u64>,
}

/// Where the scanner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    JournalScan,
    Head(u8),
    Replay,
    Table,
    Bitmap,
    Relocate,
    Repair(repair::Stage),
    Done,
}

/// The FVD check (or repair) scanner. `M` is its work memory.
pub struct FvdCheck<M> {
    pub(crate) core: Core<M>,
    pub(crate) layout: ImageLayout,
    pub(crate) files: FvdFiles,
    /// The header sector holding `clean_shutdown` and `stable_journal_epoch`.
    pub(crate) state_sector: [u8; 512],
    /// The header sector holding `chunks_relocated`.
    pub(crate) relocation_sector: [u8; 512],
    /// The I/O buffer (units of the table and bitmap, header writes).
    pub(crate) unit: Area,
    pub(crate) phase: Phase,
    pub(crate) journal: Journal,
    pub(crate) pages: ReplayPages,
    pub(crate) table: TableScan,
    pub(crate) bitmap: bitmap::BitmapScan,
    /// Memory left for replay pages and table windows.
    pub(crate) rest: Area,
    pub(crate) repair: Option<repair::Repairing>,
    pub(crate) relocation: relocate::Relocation,
}

fn floor_to(value: usize, unit: usize) -> usize {
    value / unit * unit
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> FvdCheck<M> {
    /// A check of the image whose first bytes (at least the header) are `header`.
    pub fn new(header: &[u8], files: FvdFiles, memory: M) -> Result<Self, CheckError> {
        let bytes = header.get(..RAW_HEADER_LEN).unwrap_or(header);
        let (_, layout) = parse(bytes, files.image_len).map_err(CheckError::Header)?;
        if layout.separate_data_file != files.data_len.is_some() {
            return Err(CheckError::DataFileMismatch);
        }
        let given = memory.as_ref().len();
        if given < MIN_MEMORY {
            return Err(CheckError::MemoryTooSmall {
                given,
                needed: MIN_MEMORY,
            });
        }
        let mut carver = Carver::new(0, given);
        let unit_len = floor_to(given / 4, PAGE_LEN).clamp(PAGE_LEN, MAX_UNIT);
        let journal_len = floor_to(given / 16, JOURNAL_SECTOR_SIZE).clamp(512, 16 << 10);
        let pages_total = journal::page_count(&layout);
        let filter_len = usize::try_from(pages_total.div_ceil(8))
            .unwrap_or(usize::MAX)
            .clamp(8, given / 16);
        let too_small = CheckError::MemoryTooSmall {
            given,
            needed: MIN_MEMORY,
        };
        let unit = carver.take(unit_len).ok_or(too_small)?;
        let journal_buf = carver.take(journal_len).ok_or(too_small)?;
        let filter = Bits(carver.take(filter_len).ok_or(too_small)?);
        let rest = carver.take(carver.left()).ok_or(too_small)?;
        let start = mutable_sectors::SHUTDOWN_AND_EPOCH * 512;
        let mut state_sector = [0u8; 512];
        if let Some(sector) = bytes.get(start..start + 512) {
            state_sector.copy_from_slice(sector);
        }
        let start = mutable_sectors::RELOCATION_AND_PREFETCH * 512;
        let mut relocation_sector = [0u8; 512];
        if let Some(sector) = bytes.get(start..start + 512) {
            relocation_sector.copy_from_slice(sector);
        }
        let mut check = FvdCheck {
            core: Core {
                mem: memory,
                io: None,
            },
            layout,
            files,
            state_sector,
            relocation_sector,
            unit,
            phase: Phase::JournalScan,
            journal: Journal::new(&layout, journal_buf, filter, pages_total),
            pages: ReplayPages::default(),
            table: TableScan::default(),
            bitmap: bitmap::BitmapScan::default(),
            rest,
            repair: None,
            relocation: relocate::Relocation::default(),
        };
        filter.clear(check.core.mem.as_mut());
        Ok(check)
    }

    /// The validated layout.
    pub fn layout(&self) -> &ImageLayout {
        &self.layout
    }

    /// Length of the data storage.
    pub(crate) fn storage_len(&self) -> u64 {
        self.files.data_len.unwrap_or(self.files.image_len)
    }

    /// The file holding guest data.
    pub(crate) fn storage_file(&self) -> FileId {
        match self.files.data_len {
            Some(_) => FileId::Data,
            None => FileId::Image,
        }
    }

    /// The image was not closed cleanly.
    pub(crate) fn dirty(&self) -> bool {
        !self.layout.clean_shutdown
    }

    /// Journal records are laid over the metadata read: a dirty image, checked as a
    /// read-write open would see it after replay (never in a repair's later passes, which
    /// read what the replay wrote back).
    pub(crate) fn overlay(&self) -> bool {
        self.dirty() && self.journal.sectors > 0 && self.repair.is_none()
    }

    /// One move; `Some` when the host must act.
    pub(crate) fn step(&mut self) -> Option<Step> {
        match self.phase {
            Phase::JournalScan => self.step_journal_scan(),
            Phase::Head(n) => self.step_head(n),
            Phase::Replay => self.step_replay(),
            Phase::Table => self.step_table(),
            Phase::Bitmap => self.step_bitmap(),
            Phase::Relocate => self.step_relocation(),
            Phase::Repair(stage) => self.step_repair(stage),
            Phase::Done => Some(Step::Done(self.report())),
        }
    }

    /// The head findings: the image's state and the journal counts (a repair first
    /// announces the replay).
    fn step_head(&mut self, n: u8) -> Option<Step> {
        self.phase = Phase::Head(n + 1);
        let has_metadata = self.layout.base.is_some() || self.layout.table.is_some();
        let finding = match n {
            0 => return self.replaying(),
            1 if self.dirty() && self.layout.journal.is_none() && has_metadata => {
                Problem::DirtyWithoutJournal
            }
            2 if !self.dirty() && self.journal.sectors > 0 => Problem::UnreplayedJournal {
                sectors: self.journal.sectors,
                records: self.journal.records,
            },
            1 | 2 => return None,
            _ => {
                self.after_head();
                return None;
            }
        };
        self.journal.head_problems += 1;
        Some(self.found(finding))
    }

    /// After the head findings: replay the journal (if anything to report or lay over),
    /// then the table or the bitmap.
    fn after_head(&mut self) {
        if self.journal.replay_needed() {
            self.start_replay();
        } else {
            self.after_replay();
        }
    }

    /// After the journal: the table of a compact image, else the bitmap.
    pub(crate) fn after_replay(&mut self) {
        if self.repair.is_some() {
            self.phase = Phase::Repair(repair::Stage::FlushReplay);
        } else if self.layout.table.is_some() {
            self.start_table();
        } else {
            self.start_bitmap();
        }
    }

    /// A finding as the step reporting it (a repair line in a repair).
    pub(crate) fn found(&mut self, problem: Problem) -> Step {
        match self.repair.as_mut() {
            Some(r) => r.fixed(problem),
            None => Step::Finding(super::Finding::Fvd(problem)),
        }
    }

    /// The check's numbers.
    pub fn summary(&self) -> FvdSummary {
        let l = &self.layout;
        let head = self.journal.head_problems + self.journal.record_problems;
        let stray = self.bitmap.stray.is_some();
        let corruptions = head + self.table.corruptions + u64::from(stray);
        let blocks = l.virtual_size.div_ceil(l.block_size);
        let (total, allocated, fragmented) = match l.table {
            Some(t) => (t.chunks, self.table.mapped, self.table.fragmented),
            None => {
                let from_base = match l.base {
                    Some(_) if !l.base_fully_prefetched => self.bitmap.in_base(l),
                    _ => 0,
                };
                (blocks, blocks - from_base.min(blocks), 0)
            }
        };
        let data_end = l.table.map(|t| {
            l.data_offset
                .saturating_add(self.table.frontier.saturating_mul(t.chunk_size))
        });
        let image_end_offset = match data_end {
            Some(end) if !l.separate_data_file => end,
            _ => self.files.image_len,
        };
        FvdSummary {
            counts: CheckCounts {
                image_end_offset,
                total_clusters: total,
                allocated_clusters: allocated,
                fragmented_clusters: fragmented,
                corruptions,
                leaks: self.table.leaked,
                dirty: self.dirty(),
            },
            journal_sectors: self.journal.sectors,
            journal_records: self.journal.records,
            journal_applied: self
                .journal
                .records
                .saturating_sub(self.journal.bad_records),
            head_problems: head,
            table_corruptions: self.table.corruptions,
            stray_bits: stray,
            // A fully prefetched image has every block (its bitmap, maybe punched to
            // zeros, is not consulted: FORMAT.md §7).
            bitmap: l.base.map(|b| {
                if l.base_fully_prefetched {
                    (b.blocks, 0)
                } else {
                    (self.bitmap.in_image, self.bitmap.in_base(l))
                }
            }),
            frontier: l.table.map(|_| self.table.frontier),
            data_end,
            storage_len: self.storage_len(),
            table_walks: self.table.walks,
            journal_passes: self.journal.passes,
            journal_epoch: l.stable_journal_epoch,
            next_epoch: next_epoch(l.stable_journal_epoch, self.journal.highest_epoch),
        }
    }

    fn report(&self) -> Report {
        match &self.repair {
            Some(r) => Report::Repaired(r.counts),
            None => Report::Fvd(self.summary()),
        }
    }
}
