//! `check -r` for QED: the plan worked out from a check's numbers, and the repair as a
//! scanner whose writes come in a crash-safe order: the need-check bit is set (and
//! flushed) before any table entry changes; a fixing run of the check sets every entry it
//! reports to 0 (L2 entries as they are reported, L1 entries in a last L1 pass), flushed;
//! a second, silent run finds what is left; when no corruption is and leaked clusters lie
//! before used ones, the need-check bit is set (if it is not) and the clusters after them
//! are moved down into them (`relocate.rs`: each copied and flushed before the one table
//! sector naming it is rewritten; flushed at the end), and the image is checked again;
//! then the file is truncated past its last used cluster and only then is the need-check
//! bit cleared (flushed).

use super::passes::Pass;
use super::relocate;
use super::{QedCheck, QedSummary};
use crate::check::memory::Area;
use crate::check::{
    CheckError, FileId, Repair, RepairCounts, RepairMode, RepairRefusal, Report, Step,
};
use crate::qed::{features, QedHeader};
use core::mem::offset_of;

/// A repair worked out from the first check's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QedRepairPlan {
    /// What is repaired.
    pub mode: RepairMode,
    /// Why nothing is done, when nothing is.
    pub refused: Option<RepairRefusal>,
    /// The repair will say something (a report shows the check's findings before the
    /// repair's lines).
    pub has_actions: bool,
    corruptions: u64,
    need_check: bool,
}

/// The repair of an image whose check found `first`, in `mode`.
pub fn plan(first: &QedSummary, mode: RepairMode) -> QedRepairPlan {
    let c = first.counts;
    QedRepairPlan {
        mode,
        refused: (mode == RepairMode::Leaks && c.corruptions > 0)
            .then_some(RepairRefusal::CorruptionsNeedAll),
        has_actions: c.corruptions > 0 || c.image_end_offset < first.file_len || c.dirty,
        corruptions: c.corruptions,
        need_check: c.dirty,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    SetNeedCheck,
    FlushNeedCheck,
    Fix,
    FlushFixes,
    Recheck,
    Relocate,
    Truncate,
    Released { clusters: u64, len: u64 },
    ClearNeedCheck,
    FlushClear,
    Cleared,
    Finished,
}

/// A repair's own state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Repairing {
    plan: QedRepairPlan,
    stage: Stage,
    counts: RepairCounts,
    /// No corruption is left after the fixes.
    clean: bool,
    /// The need-check bit was set by this repair.
    need_check_set: bool,
    /// Relocation rounds run, and whether the last one moved anything.
    rounds: u32,
    moved: bool,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> QedCheck<M> {
    /// A repair of the image whose first bytes are `header`, in a file of `file_len`
    /// bytes, as `plan` says (made from a check of the same image).
    pub fn repair(
        header: &[u8],
        file_len: u64,
        memory: M,
        plan: QedRepairPlan,
    ) -> Result<Self, CheckError> {
        let mut check = QedCheck::new(header, file_len, memory)?;
        let stage = if plan.refused.is_some() {
            Stage::Finished
        } else if plan.corruptions > 0 {
            Stage::SetNeedCheck
        } else {
            Stage::Recheck
        };
        check.repair = Some(Repairing {
            plan,
            stage,
            counts: RepairCounts::default(),
            clean: false,
            need_check_set: false,
            rounds: 0,
            moved: false,
        });
        check.pass = Pass::Done;
        Ok(check)
    }

    /// Writes the header's feature fields with the need-check bit `set` and unknown
    /// auto-clear bits dropped (all in the first sector: one atomic write).
    fn write_features(&mut self, set: bool) -> Step {
        let mut header = QedHeader::zeroed();
        if let Some(h) = QedHeader::view(&self.header) {
            header = h.clone();
        }
        header.clear_unknown_autoclear();
        let mut bits = header.features.get() & !features::NEED_CHECK;
        if set {
            bits |= features::NEED_CHECK;
        }
        header.features = bits.into();
        const START: usize = offset_of!(QedHeader, features);
        const END: usize = offset_of!(QedHeader, l1_table_offset);
        let (start, end) = (START, END);
        self.header.copy_from_slice(header.bytes());
        let area = Area {
            at: self.l1_buf.at,
            len: end - start,
        };
        area.bytes_mut(self.core.mem.as_mut())
            .copy_from_slice(&self.header[START..END]);
        let step = Step::Write {
            file: FileId::Image,
            offset: start as u64,
            len: end - start,
        };
        self.core.start(step, area)
    }

    fn flush(&mut self) -> Step {
        let step = Step::Flush {
            file: FileId::Image,
        };
        self.core.start(step, Area::default())
    }

    /// One move of the repair, between runs of the check.
    pub(crate) fn step_repair(&mut self) -> Option<Step> {
        let mut r = self.repair?;
        let step = match r.stage {
            Stage::SetNeedCheck => {
                r.stage = Stage::FlushNeedCheck;
                r.need_check_set = true;
                Some(self.write_features(true))
            }
            Stage::FlushNeedCheck => {
                r.stage = if r.rounds > 0 {
                    Stage::Relocate
                } else {
                    Stage::Fix
                };
                Some(self.flush())
            }
            Stage::Relocate => {
                let (step, over) = self.step_relocation();
                if over {
                    let moved = self.relocation.clusters + self.relocation.tables;
                    r.moved = moved > 0;
                    r.stage = Stage::Recheck;
                }
                step
            }
            Stage::Fix => {
                r.stage = Stage::FlushFixes;
                self.scan.quiet = false;
                self.start(true);
                None
            }
            Stage::FlushFixes => {
                r.counts.corruptions_fixed = self.scan.fixed;
                r.stage = Stage::Recheck;
                Some(self.flush())
            }
            Stage::Recheck => {
                r.stage = Stage::Truncate;
                self.scan.quiet = true;
                self.start(false);
                None
            }
            Stage::Truncate => {
                let mid = self.summary();
                r.clean = mid.counts.corruptions == 0;
                let end = mid.counts.image_end_offset;
                // Clusters in use; leaked ones before `end` when that is past them.
                let used = self.scan_clusters().saturating_sub(mid.counts.leaks);
                let holes = end.div_ceil(self.layout.cluster_size) > used;
                let progress = r.rounds == 0 || r.moved;
                if r.clean && holes && progress && r.rounds < relocate::MAX_ROUNDS {
                    r.rounds += 1;
                    self.start_relocation(used);
                    r.stage = if r.need_check_set || self.layout.need_check {
                        Stage::Relocate
                    } else {
                        Stage::SetNeedCheck
                    };
                    self.repair = Some(r);
                    return None;
                }
                r.stage = Stage::ClearNeedCheck;
                if r.clean && end < self.file_len {
                    let clusters = self
                        .scan_clusters()
                        .saturating_sub(end.div_ceil(self.layout.cluster_size));
                    r.stage = Stage::Released { clusters, len: end };
                    let step = Step::SetLength {
                        file: FileId::Image,
                        len: end,
                    };
                    Some(self.core.start(step, Area::default()))
                } else {
                    None
                }
            }
            Stage::Released { clusters, len } => {
                r.counts.leaks_fixed += clusters;
                self.file_len = len;
                r.stage = Stage::ClearNeedCheck;
                Some(Step::Repaired(Repair::ReleasedClusters { clusters, len }))
            }
            Stage::ClearNeedCheck => {
                let need_check = r.plan.need_check || r.need_check_set;
                if r.clean && need_check {
                    r.stage = Stage::FlushClear;
                    Some(self.write_features(false))
                } else {
                    r.stage = Stage::Finished;
                    None
                }
            }
            Stage::FlushClear => {
                r.stage = Stage::Cleared;
                Some(self.flush())
            }
            Stage::Cleared => {
                r.stage = Stage::Finished;
                r.plan
                    .need_check
                    .then_some(Step::Repaired(Repair::ClearedNeedCheck))
            }
            Stage::Finished => Some(Step::Done(Report::Repaired(r.counts))),
        };
        self.repair = Some(r);
        step
    }

    fn scan_clusters(&self) -> u64 {
        self.file_len.div_ceil(self.layout.cluster_size)
    }
}
