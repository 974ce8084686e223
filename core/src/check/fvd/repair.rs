//! `check -r` for FVD: the plan worked out from a check's numbers, and the repair as a
//! scanner whose writes come in an order that leaves, after a crash at any point, an image
//! the engine opens correctly:
//!
//! 1. Replay: the journal is laid over the pages it touches and the pages it changed are
//!    written back and flushed, while the header still names the journal's epoch (a crash
//!    here replays the same records again, which is idempotent). Bad records are dropped.
//! 2. The header is marked dirty with the epoch moved above every intact sector
//!    ([`crate::fvd::journal::next_epoch`], header sector 4, flushed): the journal is now stale.
//! 3. Fixes (`-r all`): corrupt table entries are unmapped, stray bitmap bits cleared;
//!    the changed units are written and flushed.
//! 4. Relocation (a compact image whose data storage the host can shorten, with leaked
//!    chunks): `chunks_relocated` is set (sector 6, flushed); then each chunk above the
//!    chunks in use is copied into a leaked chunk below and flushed before the one table
//!    sector naming it is rewritten (`relocate.rs`): at every flush the table on disk
//!    names only chunks whose bytes are durable, and the chunks it no longer names are
//!    leaks. The table sectors are flushed before anything is truncated.
//! 5. A compact image's data storage is truncated to the end of its last mapped chunk
//!    (when the host says it can be).
//! 6. The header is marked clean (sector 4, flushed).

use super::{FvdCheck, FvdFiles, FvdSummary, Phase, Problem, Step};
use crate::check::memory::Area;
use crate::check::{
    CheckError, FileId, Finding, FixAction, Repair, RepairCounts, RepairMode, RepairRefusal,
};
use crate::fvd::header::mutable_sectors;
use crate::fvd::RawHeader;
use core::mem::offset_of;

/// A repair worked out from the first check's numbers, before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FvdRepairPlan {
    /// What is repaired.
    pub mode: RepairMode,
    /// Why nothing is done, when nothing is.
    pub refused: Option<RepairRefusal>,
    /// The repair has something to say or do (a report shows the check's findings
    /// before the repair's lines).
    pub has_actions: bool,
    needs_write: bool,
    replaying: Option<(u64, u64)>,
    truncatable: bool,
    /// Leaked chunks are filled with the chunks above them before truncation.
    relocate: bool,
    dirty: bool,
    epoch: Option<u64>,
}

/// The repair of an image whose check found `first`, in `mode`; `truncatable` when the
/// host can shorten the data storage (a regular file, not a device).
pub fn plan(first: &FvdSummary, mode: RepairMode, truncatable: bool) -> FvdRepairPlan {
    let c = first.counts;
    let structure_fixes = match mode {
        RepairMode::All => first.table_corruptions + u64::from(first.stray_bits),
        RepairMode::Leaks => 0,
    };
    let truncate = truncatable && first.data_end.is_some_and(|end| first.storage_len > end);
    let relocate = truncatable && first.frontier.is_some() && (c.leaks > 0 || structure_fixes > 0);
    let needs_write = c.dirty
        || relocate
        || first.journal_sectors > 0
        || first.head_problems > 0
        || structure_fixes > 0
        || truncate;
    let replaying = (c.dirty && first.journal_applied > 0)
        .then_some((first.journal_applied, first.journal_sectors));
    let refused = if mode == RepairMode::Leaks && c.corruptions > 0 {
        Some(RepairRefusal::CorruptionsNeedAll)
    } else if needs_write && first.next_epoch.is_none() {
        // Any header written would carry an epoch validation refuses: write nothing.
        Some(RepairRefusal::EpochExhausted {
            epoch: first.journal_epoch,
        })
    } else {
        None
    };
    FvdRepairPlan {
        mode,
        refused,
        has_actions: replaying.is_some()
            || first.head_problems > 0
            || structure_fixes > 0
            || truncate
            || relocate
            || (c.dirty && needs_write),
        needs_write,
        replaying,
        truncatable,
        relocate,
        dirty: c.dirty,
        epoch: first.next_epoch,
    }
}

/// The stages after the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    FlushReplay,
    MarkDirty,
    FlushDirty,
    Fixes,
    FlushFixes,
    Relocate,
    Truncate,
    Released { end: u64 },
    MarkClean,
    FlushClean,
    Cleaned,
}

/// A repair's own state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Repairing {
    pub(crate) plan: FvdRepairPlan,
    pub(crate) counts: RepairCounts,
    /// Something was written since the last flush.
    pub(crate) wrote: bool,
}

impl Repairing {
    /// `-r all`: corrupt entries and stray bits are repaired.
    pub(crate) fn fixes_structure(&self) -> bool {
        self.plan.mode == RepairMode::All
    }

    /// The line of a repaired finding.
    pub(crate) fn fixed(&mut self, problem: Problem) -> Step {
        self.counts.corruptions_fixed += 1;
        let action = match problem {
            Problem::UnreplayedJournal { .. } => FixAction::Replayed,
            Problem::DirtyWithoutJournal => FixAction::KeptMetadata,
            Problem::DirtyEntry { .. }
            | Problem::BeyondStorage { .. }
            | Problem::SharedChunk { .. } => FixAction::Unmapped,
            Problem::StrayBits { .. } => FixAction::ClearedBits,
            _ => FixAction::DroppedRecord,
        };
        Step::Repaired(Repair::Fixed {
            finding: Finding::Fvd(problem),
            action,
        })
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> FvdCheck<M> {
    /// A repair of the image whose first bytes are `header`, as `plan` says (made from a
    /// check of the same image).
    pub fn repair(
        header: &[u8],
        files: FvdFiles,
        memory: M,
        plan: FvdRepairPlan,
    ) -> Result<Self, CheckError> {
        let mut check = FvdCheck::new(header, files, memory)?;
        check.repair = Some(Repairing {
            plan,
            counts: RepairCounts::default(),
            wrote: false,
        });
        if plan.refused.is_some() || !plan.needs_write {
            check.phase = Phase::Done;
        }
        Ok(check)
    }

    /// The line announcing the replay (before the repaired findings).
    pub(crate) fn replaying(&self) -> Option<Step> {
        let (records, sectors) = self.repair.as_ref()?.plan.replaying?;
        Some(Step::Repaired(Repair::Replaying { records, sectors }))
    }

    /// The table and bitmap are done: a check ends, a repair goes on.
    pub(crate) fn finish_metadata(&mut self) {
        self.phase = match self.repair {
            Some(_) => Phase::Repair(Stage::FlushFixes),
            None => Phase::Done,
        };
    }

    /// Writes header sector 4 with `clean_shutdown` = `clean` and the epoch moved on.
    fn write_state(&mut self, clean: bool, epoch: u64) -> Step {
        const BASE: usize = mutable_sectors::SHUTDOWN_AND_EPOCH * 512;
        const FLAG: usize = offset_of!(RawHeader, clean_shutdown) - BASE;
        const EPOCH_AT: usize = offset_of!(RawHeader, stable_journal_epoch) - BASE;
        self.state_sector[FLAG..FLAG + 4].copy_from_slice(&u32::from(clean).to_le_bytes());
        self.state_sector[EPOCH_AT..EPOCH_AT + 8].copy_from_slice(&epoch.to_le_bytes());
        let area = Area {
            at: self.unit.at,
            len: 512,
        };
        area.bytes_mut(self.core.mem.as_mut())
            .copy_from_slice(&self.state_sector);
        let step = Step::Write {
            file: FileId::Image,
            offset: BASE as u64,
            len: 512,
        };
        self.core.start(step, area)
    }

    fn flush_if_written(&mut self, file: FileId) -> Option<Step> {
        let repair = self.repair.as_mut()?;
        if !repair.wrote {
            return None;
        }
        repair.wrote = false;
        Some(self.core.start(Step::Flush { file }, Area::default()))
    }

    pub(crate) fn step_repair(&mut self, stage: Stage) -> Option<Step> {
        let Some(repair) = self.repair else {
            self.phase = Phase::Done;
            return None;
        };
        let next = |s| Phase::Repair(s);
        match stage {
            Stage::FlushReplay => {
                self.phase = next(Stage::MarkDirty);
                self.flush_if_written(FileId::Image)
            }
            Stage::MarkDirty => {
                // A plan without an epoch is refused before anything is written.
                let Some(epoch) = repair.plan.epoch else {
                    self.phase = Phase::Done;
                    return None;
                };
                self.phase = next(Stage::FlushDirty);
                Some(self.write_state(false, epoch))
            }
            Stage::FlushDirty => {
                self.phase = next(Stage::Fixes);
                let flush = Step::Flush {
                    file: FileId::Image,
                };
                Some(self.core.start(flush, Area::default()))
            }
            Stage::Fixes => {
                if self.layout.table.is_some() {
                    self.start_table();
                } else {
                    self.start_bitmap();
                }
                None
            }
            Stage::FlushFixes => {
                self.phase = next(Stage::Relocate);
                self.flush_if_written(FileId::Image)
            }
            Stage::Relocate => {
                if repair.plan.relocate && self.layout.table.is_some() {
                    self.start_relocation();
                } else {
                    self.phase = next(Stage::Truncate);
                }
                None
            }
            Stage::Truncate => {
                self.phase = next(Stage::MarkClean);
                let table = self.layout.table?;
                let end = self
                    .layout
                    .data_offset
                    .saturating_add(self.table.frontier.saturating_mul(table.chunk_size));
                if !repair.plan.truncatable || self.storage_len() <= end {
                    return None;
                }
                self.phase = next(Stage::Released { end });
                let step = Step::SetLength {
                    file: self.storage_file(),
                    len: end,
                };
                Some(self.core.start(step, Area::default()))
            }
            Stage::Released { end } => {
                self.phase = next(Stage::MarkClean);
                Some(Step::Repaired(Repair::ReleasedStorage {
                    file: self.storage_file(),
                    bytes: self.storage_len() - end,
                    len: end,
                }))
            }
            Stage::MarkClean => {
                let Some(epoch) = repair.plan.epoch else {
                    self.phase = Phase::Done;
                    return None;
                };
                self.phase = next(Stage::FlushClean);
                Some(self.write_state(true, epoch))
            }
            Stage::FlushClean => {
                self.phase = next(Stage::Cleaned);
                let flush = Step::Flush {
                    file: FileId::Image,
                };
                Some(self.core.start(flush, Area::default()))
            }
            Stage::Cleaned => {
                self.phase = Phase::Done;
                repair
                    .plan
                    .dirty
                    .then_some(Step::Repaired(Repair::MarkedClean))
            }
        }
    }
}
