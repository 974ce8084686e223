//! Deferred copy-on-read: the guest ranges a read found in the base but could not fill at
//! the time (no request slot, bounce slot or budget). The read itself went to the base
//! directly; the ranges wait here, merged while they are contiguous (a sequential reader
//! adds one growing range), until the format engine starts fills for them
//! (`fvd::deferred`, `qed::fill`).

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
