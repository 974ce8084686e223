//! The bitmap check (FORMAT.md §7): one walk counts the blocks whose data is in the image
//! and finds bits set past the last block (a repair clears them and writes the units it
//! changed).

use super::{FvdCheck, Phase, Problem, Step};
use crate::check::walk::{Unit, Walk};
use crate::fvd::replay::RecordTarget;
use crate::fvd::ImageLayout;

/// What the bitmap says.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BitmapScan {
    walk: Walk,
    finished: bool,
    /// Blocks whose bit is set.
    pub(crate) in_image: u64,
    stray_first: Option<u64>,
    stray_count: u64,
    /// Bits set past the last block.
    pub(crate) stray: Option<Problem>,
}

impl BitmapScan {
    /// Blocks whose data still comes from the base.
    pub(crate) fn in_base(&self, layout: &ImageLayout) -> u64 {
        let blocks = layout.base.map_or(0, |b| b.blocks);
        blocks - self.in_image.min(blocks)
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> FvdCheck<M> {
    /// Starts the bitmap walk (a repair of leaks only has nothing to do there).
    pub(crate) fn start_bitmap(&mut self) {
        let skip = self.repair.as_ref().is_some_and(|r| !r.fixes_structure());
        let Some(base) = self.layout.base.filter(|_| !skip) else {
            self.bitmap_done();
            return;
        };
        self.bitmap = BitmapScan {
            walk: self.region_walk(RecordTarget::Bitmap, base.bitmap.len),
            ..BitmapScan::default()
        };
        self.phase = Phase::Bitmap;
    }

    fn bitmap_done(&mut self) {
        self.table.bitmap_done = true;
        if self.table_pending() {
            self.resume_table();
        } else {
            self.finish_metadata();
        }
    }

    pub(crate) fn step_bitmap(&mut self) -> Option<Step> {
        let mut walk = self.bitmap.walk;
        if walk.done() {
            if !self.bitmap.finished {
                self.bitmap.finished = true;
                let blocks = self.layout.base.map_or(0, |b| b.blocks);
                self.bitmap.stray = self.bitmap.stray_first.map(|first| Problem::StrayBits {
                    first,
                    count: self.bitmap.stray_count,
                    blocks,
                });
                if let Some(problem) = self.bitmap.stray {
                    return Some(self.found(problem));
                }
            }
            self.bitmap_done();
            return None;
        }
        if let Unit::Act(step) = self.load(RecordTarget::Bitmap, &mut walk) {
            self.bitmap.walk = walk;
            return step;
        }
        let blocks = self.layout.base.map_or(0, |b| b.blocks);
        let repair = self.repair.is_some();
        let area = walk.area();
        let b = &mut self.bitmap;
        for (k, byte) in area
            .bytes_mut(self.core.mem.as_mut())
            .iter_mut()
            .enumerate()
        {
            let first_bit = walk.pos.saturating_add(k as u64).saturating_mul(8);
            let used = blocks.saturating_sub(first_bit).min(8);
            let mask = if used == 8 { 0xFF } else { (1u8 << used) - 1 };
            b.in_image += u64::from((*byte & mask).count_ones());
            let stray = *byte & !mask;
            if stray != 0 {
                b.stray_first
                    .get_or_insert(first_bit + u64::from(stray.trailing_zeros()));
                b.stray_count += u64::from(stray.count_ones());
                if repair {
                    *byte &= mask;
                    walk.modified = true;
                }
            }
        }
        let step = self.next_unit(&mut walk);
        self.bitmap.walk = walk;
        step
    }
}
