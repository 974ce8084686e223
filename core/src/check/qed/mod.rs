//! The QED check and its repair as a sans-IO scanner, judging an image the way
//! `qemu-img check` does, with the placement rules the engine uses
//! ([`QedLayout::table_in_file`], [`QedLayout::cluster_in_file`]).
//!
//! Corruptions: an L1 or L2 entry that is not cluster aligned, points into the header
//! area or past the end of the file, an L1 entry holding the zero-cluster marker 1, and
//! L2 tables or data clusters that overlap each other, the header or the L1 table (the
//! reference met later in table order is the one reported). A data cluster overlapping an
//! L2 table is blamed on the data entry, except that an L1 entry whose "table" holds
//! entries no writer produces and is another table's data is blamed itself
//! ([`Fault::NotATable`]). Leaks: clusters from the end of the header area to the end of
//! the file that nothing references. Allocated and fragmented clusters count every L2
//! entry other than 0 and 1, fragmentation within each L2 table, as qemu-img does.
//!
//! Passes (`passes.rs`), each over the L1 table (and the L2 tables it names, read in units
//! of a buffer): the L2 tables' claims, per window of file clusters (`tables.rs`: a counting
//! walk, then a reporting walk that resolves the first claimant of each doubly-claimed
//! cluster in a map); the entries no writer produces, counted per table; when some table
//! has them, whose data lies in such a table (per window); then the data clusters' claims
//! per window (`data.rs`), counted and reported the same way, and each window's leaks.
//!
//! Cost: a window holds `2 × W` clusters for `W` bytes of window memory (what is left
//! after two I/O buffers and two bits per L1 entry, which [`memory_needed`] counts). A
//! healthy image costs, per window, three L1 passes and one pass over its L2 tables, plus
//! one more pass over them in all. A 1 TiB file of 64 KiB clusters (16 Mi clusters)
//! checked with 256 KiB takes about 43 windows (131 L1 passes); a file a few GiB long,
//! one. When more than one window or map load is needed, each window's findings come in
//! table order, window after window.

mod data;
mod passes;
mod problem;
mod relocate;
pub mod repair;
mod tables;

pub use problem::{Fault, Owner, Place, QedProblem};
pub use repair::{plan, QedRepairPlan};

use super::memory::{Area, Bits, Carver, OwnerMap};
use super::walk::Walk;
use super::{CheckCounts, CheckError, Core, Report, Step};
use crate::qed::{parse, QedLayout, QED_HEADER_LEN};
use passes::Pass;

/// Largest unit of an L1 or L2 walk.
const MAX_UNIT: usize = 64 << 10;
/// Smallest unit.
const MIN_UNIT: usize = 4 << 10;
/// Smallest window area.
const MIN_WINDOW: usize = 4 << 10;

/// What a check of a QED image found, in numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QedSummary {
    /// The counts qemu-img reports (`dirty`: the need-check flag).
    pub counts: CheckCounts,
    /// Length of the file.
    pub file_len: u64,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Passes over the L1 table.
    pub l1_passes: u64,
}

/// Bytes of work memory a check of an image with `layout` needs at least.
pub fn memory_needed(layout: &QedLayout) -> usize {
    let states = usize::try_from(layout.table_entries.div_ceil(4)).unwrap_or(usize::MAX);
    states.saturating_add(2 * MIN_UNIT + MIN_WINDOW + 64)
}

/// The QED check (or repair) scanner. `M` is its work memory.
pub struct QedCheck<M> {
    pub(crate) core: Core<M>,
    pub(crate) layout: QedLayout,
    pub(crate) header: [u8; QED_HEADER_LEN],
    pub(crate) file_len: u64,
    pub(crate) l1_buf: Area,
    pub(crate) l2_buf: Area,
    /// Two bits per L1 entry: its table is walked; its table holds entries no writer
    /// produces.
    pub(crate) states: Bits,
    /// Window bitsets: clusters claimed by the header, L1 and L2 tables; by data; twice.
    pub(crate) t: Bits,
    pub(crate) s: Bits,
    pub(crate) d: Bits,
    pub(crate) map: OwnerMap,
    pub(crate) pass: Pass,
    pub(crate) l1: Walk,
    pub(crate) nested: Option<passes::Nested>,
    pub(crate) scan: passes::Scan,
    pub(crate) repair: Option<repair::Repairing>,
    pub(crate) relocation: relocate::Relocation,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> QedCheck<M> {
    /// A check of the image whose first bytes (at least the 64-byte header) are `header`,
    /// in a file of `file_len` bytes.
    pub fn new(header: &[u8], file_len: u64, memory: M) -> Result<Self, CheckError> {
        let (raw, layout) = parse(header, file_len).map_err(CheckError::QedHeader)?;
        let given = memory.as_ref().len();
        let needed = memory_needed(&layout);
        let too_small = CheckError::MemoryTooSmall { given, needed };
        if given < needed {
            return Err(too_small);
        }
        let states_len =
            usize::try_from(layout.table_entries.div_ceil(4)).map_err(|_| too_small)?;
        let unit = ((given - states_len) / 8 / MIN_UNIT * MIN_UNIT).clamp(MIN_UNIT, MAX_UNIT);
        let mut carver = Carver::new(0, given);
        let l1_buf = carver.take(unit).ok_or(too_small)?;
        let l2_buf = carver.take(unit).ok_or(too_small)?;
        let states = Bits(carver.take(states_len).ok_or(too_small)?);
        let rest = carver.left();
        let map_len = rest / 4 / 16 * 16;
        let bits_len = (rest - map_len) / 3 / 8 * 8;
        let t = Bits(carver.take(bits_len).ok_or(too_small)?);
        let s = Bits(carver.take(bits_len).ok_or(too_small)?);
        let d = Bits(carver.take(bits_len).ok_or(too_small)?);
        let map = OwnerMap::new(carver.take(map_len).ok_or(too_small)?);
        let mut bytes = [0u8; QED_HEADER_LEN];
        bytes.copy_from_slice(raw.bytes());
        let mut check = QedCheck {
            core: Core {
                mem: memory,
                io: None,
            },
            layout,
            header: bytes,
            file_len,
            l1_buf,
            l2_buf,
            states,
            t,
            s,
            d,
            map,
            pass: Pass::Done,
            l1: Walk::default(),
            nested: None,
            scan: passes::Scan::default(),
            repair: None,
            relocation: relocate::Relocation::default(),
        };
        check.start(false);
        Ok(check)
    }

    /// The validated layout.
    pub fn layout(&self) -> &QedLayout {
        &self.layout
    }

    /// One move; `Some` when the host must act.
    pub(crate) fn step(&mut self) -> Option<Step> {
        match self.pass {
            Pass::Done => match self.repair {
                Some(_) => self.step_repair(),
                None => Some(Step::Done(Report::Qed(self.summary()))),
            },
            _ => self.step_pass(),
        }
    }

    /// The check's numbers.
    pub fn summary(&self) -> QedSummary {
        let cs = self.layout.cluster_size;
        let sc = &self.scan;
        let end = sc
            .last_used
            .map_or(0, |c| c.saturating_add(1).saturating_mul(cs))
            .min(self.file_len);
        QedSummary {
            counts: CheckCounts {
                image_end_offset: end,
                total_clusters: self.layout.image_size.div_ceil(cs),
                allocated_clusters: sc.allocated,
                fragmented_clusters: sc.fragmented,
                corruptions: sc.problems,
                leaks: sc.leaked,
                dirty: self.layout.need_check,
            },
            file_len: self.file_len,
            cluster_size: cs,
            l1_passes: sc.l1_passes,
        }
    }
}
