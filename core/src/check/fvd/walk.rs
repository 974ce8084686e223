//! The FVD side of a metadata walk: walks over the table or the bitmap region, with the
//! journal laid over each unit when the check sees a dirty image as a read-write open
//! would (from the replay pages, or by a journal pass over the unit).

use super::journal::sector_copy;
use super::{FvdCheck, Step, PAGE};
use crate::check::memory::Area;
use crate::check::walk::{Stage, Unit, Walk};
use crate::fvd::journal::VerifiedSector;
use crate::fvd::replay::RecordTarget;
use crate::fvd::Region;

impl<M: AsRef<[u8]> + AsMut<[u8]>> FvdCheck<M> {
    /// The region of `target`.
    pub(crate) fn region_of(&self, target: RecordTarget) -> Region {
        let l = &self.layout;
        let region = match target {
            RecordTarget::Table => l.table.map(|t| t.region),
            RecordTarget::Bitmap => l.base.map(|b| b.bitmap),
        };
        region.unwrap_or(Region { offset: 0, len: 0 })
    }

    /// A walk over the first `end` bytes of the region of `target`.
    pub(crate) fn region_walk(&self, target: RecordTarget, end: u64) -> Walk {
        Walk::new(self.region_of(target).offset, end, self.unit)
    }

    /// Brings the current unit of `walk` (over `target`) in, replayed when the check sees
    /// the image replayed.
    pub(crate) fn load(&mut self, target: RecordTarget, walk: &mut Walk) -> Unit {
        match walk.stage {
            Stage::Reading => {
                walk.stage = Stage::Ready;
                if self.overlay() && self.touches_unit(target, walk.pos, walk.len) {
                    let area = walk.area();
                    if !self.copy_replayed(target, walk.pos, area) {
                        walk.stage = Stage::Overlay {
                            batch: 0,
                            reading: false,
                        };
                    }
                }
                Unit::Act(None)
            }
            Stage::Overlay {
                batch,
                reading: false,
            } => {
                if batch >= self.journal.batches() {
                    walk.stage = Stage::Ready;
                    return Unit::Act(None);
                }
                walk.stage = Stage::Overlay {
                    batch,
                    reading: true,
                };
                Unit::Act(Some(self.read_journal_batch(batch)))
            }
            Stage::Overlay {
                batch,
                reading: true,
            } => {
                self.lay_batch_over(batch, target, walk.pos, walk.area());
                walk.stage = Stage::Overlay {
                    batch: batch + 1,
                    reading: false,
                };
                Unit::Act(None)
            }
            _ => walk.load(&mut self.core),
        }
    }

    /// Moves `walk` past its current unit, writing it back first when a repair changed it.
    pub(crate) fn next_unit(&mut self, walk: &mut Walk) -> Option<Step> {
        let step = walk.next_unit(&mut self.core)?;
        if let Some(r) = self.repair.as_mut() {
            r.wrote = true;
        }
        Some(step)
    }

    /// True when a record touches a page of `target` among `[pos, pos + len)`.
    pub(crate) fn touches_unit(&self, target: RecordTarget, pos: u64, len: usize) -> bool {
        let mem = self.core.mem.as_ref();
        let last = (pos + len as u64).saturating_sub(1) / PAGE;
        (pos / PAGE..=last).any(|i| self.journal.touched(mem, self.journal.global(target, i)))
    }

    /// Copies the replayed pages over the touched pages of the unit at `pos` (`area`);
    /// false when one is not in the cache (then the unit needs a journal pass).
    pub(crate) fn copy_replayed(&mut self, target: RecordTarget, pos: u64, area: Area) -> bool {
        let last = (pos + area.len as u64).saturating_sub(1) / PAGE;
        for index in pos / PAGE..=last {
            let page = self.journal.global(target, index);
            if !self.journal.touched(self.core.mem.as_ref(), page) {
                continue;
            }
            let Some(slot) = self.pages.slot_of(page) else {
                return false;
            };
            // The part of the page inside the unit.
            let start = (index * PAGE).max(pos);
            let end = ((index + 1) * PAGE).min(pos + area.len as u64);
            // Offsets within one page and within the unit's area of work memory.
            let (Ok(into_page), Ok(into_unit), Ok(len)) = (
                usize::try_from(start - index * PAGE),
                usize::try_from(start - pos),
                usize::try_from(end - start),
            ) else {
                return false;
            };
            let src = self.pages.page_area(slot).at + into_page;
            let dst = area.at + into_unit;
            self.core.mem.as_mut().copy_within(src..src + len, dst);
        }
        true
    }

    /// Lays the records of loaded journal batch `batch` over the unit at `pos` (`area`).
    pub(crate) fn lay_batch_over(
        &mut self,
        batch: u64,
        target: RecordTarget,
        pos: u64,
        area: Area,
    ) {
        let epoch = self.layout.stable_journal_epoch;
        for s in 0..self.batch_sectors(batch, self.journal.scan_end) {
            let position = batch * self.journal.per_batch() + s;
            let bytes = sector_copy(self.core.mem.as_ref(), self.journal.buf, s);
            if let Ok(verified) = VerifiedSector::verify(&bytes, epoch, position) {
                let unit = area.bytes_mut(self.core.mem.as_mut());
                for record in verified.records() {
                    record.apply_to(target, pos, unit);
                }
            }
        }
    }
}
