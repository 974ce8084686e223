//! Deferred copy-on-read: the block ranges a guest read found in the base but could not
//! fill at the time (no request slot, bounce slot or budget). The read itself went to the
//! base directly; the ranges wait here, merged while they are contiguous (a sequential
//! reader adds one growing range), and fills for them start as soon as room frees up. A
//! range whose blocks became local meanwhile (a write, another fill) is skipped block by
//! block, so nothing is copied over newer data.

use super::fill::{FillFor, FillStart};
use super::meta::Stall;
use super::FvdEngine;
use crate::engine::protocol::FormatEngine;
use crate::engine::types::Mapping;

/// Ranges remembered at once; a further disjoint range is dropped (and counted).
pub const MAX_DEFERRED_RANGES: usize = 32;

/// Block-aligned guest ranges `[lo, hi)` still to fill, oldest first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deferred {
    ranges: [(u64, u64); MAX_DEFERRED_RANGES],
    len: usize,
}

impl Deferred {
    pub(crate) const EMPTY: Deferred = Deferred {
        ranges: [(0, 0); MAX_DEFERRED_RANGES],
        len: 0,
    };

    /// Remembers `[lo, hi)`; false when it is neither next to a range held nor room is
    /// left.
    pub(crate) fn push(&mut self, lo: u64, hi: u64) -> bool {
        if lo >= hi {
            return true;
        }
        for range in self.ranges.iter_mut().take(self.len) {
            if lo <= range.1 && range.0 <= hi {
                *range = (range.0.min(lo), range.1.max(hi));
                return true;
            }
        }
        match self.ranges.get_mut(self.len) {
            Some(free) => {
                *free = (lo, hi);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The oldest range.
    pub(crate) fn first(&self) -> Option<(u64, u64)> {
        self.ranges.first().copied().filter(|_| self.len > 0)
    }

    /// The oldest range now starts at `lo` (dropped once empty).
    pub(crate) fn advance(&mut self, lo: u64) {
        let Some(first) = self.ranges.first_mut() else {
            return;
        };
        first.0 = lo;
        if first.0 >= first.1 {
            self.ranges.copy_within(1..self.len.max(1), 0);
            self.len = self.len.saturating_sub(1);
        }
    }

    /// Nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (the base is no longer read).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_ranges_merge_and_disjoint_ones_queue_until_full() {
        let mut d = Deferred::EMPTY;
        assert!(d.push(0, 512));
        assert!(d.push(512, 4096));
        assert_eq!(d.first(), Some((0, 4096)));
        for i in 1..MAX_DEFERRED_RANGES as u64 {
            assert!(d.push(i << 20, (i << 20) + 512));
        }
        assert!(!d.push(1 << 40, (1 << 40) + 512), "a full queue says so");
        d.advance(1024);
        assert_eq!(d.first(), Some((1024, 4096)));
        d.advance(4096);
        assert_eq!(d.first(), Some((1 << 20, (1 << 20) + 512)));
    }
}
