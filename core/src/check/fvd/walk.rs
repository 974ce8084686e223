//! The FVD side of a metadata walk: walks over the table or the bitmap region, with the
//! journal laid over each unit when the check sees a dirty image as a read-write open
//! would (from the replay pages, or by a journal pass over the unit).

use super::{FvdCheck, Step};
use crate::check::walk::{Stage, Unit, Walk};
use crate::format::replay::RecordTarget;
use crate::format::Region;

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
}
