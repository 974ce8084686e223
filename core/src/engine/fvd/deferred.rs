//! FVD's deferred copy-on-read: fills for the block ranges in the engine's
//! [`crate::engine::deferred::Deferred`] queue start as soon as room frees up. A range whose
//! blocks became local meanwhile (a write, another fill) is skipped block by block, so
//! nothing is copied over newer data.

use super::fill::{FillFor, FillStart};
use super::meta::Stall;
use super::FvdEngine;
use crate::engine::protocol::FormatEngine;
use crate::engine::types::Mapping;

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Starts fills for deferred ranges while room allows; true when something moved.
    pub(crate) fn step_deferred(&mut self) -> bool {
        let mut moved = false;
        while let Some((lo, hi)) = self.deferred.first() {
            if !self.is_open() || self.failed || !self.copy_on_read || self.live_base().is_none() {
                self.deferred.clear();
                return true;
            }
            let run = match self.map_run(lo, hi - lo) {
                Ok(run) => run,
                Err(Stall::Wait) => return moved,
                Err(_) => {
                    // Copy-on-read is best effort: a metadata error drops the range (the
                    // next request that needs the page reports it).
                    self.deferred.advance(hi);
                    return true;
                }
            };
            if run.mapping != Mapping::Base {
                self.deferred.advance(lo + run.len);
                moved = true;
                continue;
            }
            match self.start_fill(FillFor::Deferred, lo, run.len) {
                FillStart::Started(taken) => self.deferred.advance(lo + taken),
                FillStart::Busy | FillStart::Filling => {
                    // A write or another fill is making the first block local.
                    let bs = self.layout.map_or(hi - lo, |l| l.block_size);
                    self.deferred.advance((lo / bs + 1).saturating_mul(bs));
                }
                FillStart::NoRoom => return moved,
            }
            moved = true;
        }
        moved
    }
}
