//! Bounce blocks: fixed-size slots of engine memory that hold base data on its way into
//! the image (copy-on-write heads and tails, copy-on-read fills). When every slot is taken the request that
//! wants one waits; nothing is allocated.

/// At most this many bounce slots exist, whatever the memory.
pub const MAX_BOUNCE_SLOTS: usize = 64;

/// Hands out slots of `slot_len` bytes from `[base, base + count * slot_len)`.
#[derive(Debug, Clone, Copy)]
pub struct BouncePool {
    base: usize,
    slot_len: usize,
    count: usize,
    free: u64,
}

impl BouncePool {
    /// A pool over `len` bytes at `base` cut into slots of `slot_len` bytes.
    pub fn new(base: usize, len: usize, slot_len: usize) -> Self {
        let count = len.checked_div(slot_len).unwrap_or(0).min(MAX_BOUNCE_SLOTS);
        let free = if count == 64 {
            u64::MAX
        } else {
            (1u64 << count) - 1
        };
        BouncePool {
            base,
            slot_len,
            count,
            free,
        }
    }

    /// Number of slots.
    #[cfg_attr(not(feature = "qed-engine"), allow(dead_code))] // only QED asks
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Takes a free slot and returns its memory offset.
    pub fn take(&mut self) -> Option<usize> {
        if self.free == 0 {
            return None;
        }
        let index = self.free.trailing_zeros() as usize;
        self.free &= !(1u64 << index);
        Some(self.base + index * self.slot_len)
    }

    /// Takes `n` adjacent free slots (1..=64) and returns the memory offset of the first.
    pub fn take_run(&mut self, n: usize) -> Option<usize> {
        if n == 0 || n > self.count {
            return None;
        }
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let index = (0..=self.count - n).find(|&i| (self.free >> i) & mask == mask)?;
        self.free &= !(mask << index);
        Some(self.base + index * self.slot_len)
    }

    /// Returns the `n` adjacent slots starting at memory offset `offset`.
    pub fn give_back_run(&mut self, offset: usize, n: usize) {
        for i in 0..n {
            self.give_back(offset.saturating_add(i.saturating_mul(self.slot_len)));
        }
    }

    /// Returns the slot at memory offset `offset`.
    pub fn give_back(&mut self, offset: usize) {
        if self.slot_len == 0 || offset < self.base {
            return;
        }
        let index = (offset - self.base) / self.slot_len;
        if index < self.count {
            self.free |= 1u64 << index;
        }
    }

    /// Bytes of one slot.
    pub fn slot_len(&self) -> u64 {
        self.slot_len as u64
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.free.count_ones() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_once_until_returned() {
        let mut pool = BouncePool::new(1000, 3 * 512 + 100, 512);
        assert_eq!(pool.capacity(), 3);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        let c = pool.take().unwrap();
        assert_eq!((a, b, c), (1000, 1512, 2024));
        assert_eq!(pool.take(), None);
        pool.give_back(b);
        assert_eq!(pool.take(), Some(1512));
        assert_eq!(
            BouncePool::new(0, 1 << 30, 512).capacity(),
            MAX_BOUNCE_SLOTS
        );
    }

    #[test]
    fn a_run_of_slots_is_adjacent_and_comes_back_whole() {
        let mut pool = BouncePool::new(0, 8 * 512, 512);
        let one = pool.take().unwrap();
        let run = pool.take_run(4).unwrap();
        assert_eq!((one, run), (0, 512));
        assert_eq!(pool.take_run(4), None, "only three slots are left");
        pool.give_back_run(run, 4);
        assert_eq!(pool.take_run(7), Some(512));
        assert_eq!(pool.available(), 0);
    }
}
