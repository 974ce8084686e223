//! The check's work memory: the caller's byte slice carved into areas, bitsets over a
//! window of units (physical chunks, clusters) and the first-owner map, an open-addressing
//! table from a unit to the first thing that named it. Everything is bounded by the area
//! it is given; nothing here knows a format.

/// A range of work memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Area {
    /// First byte.
    pub(crate) at: usize,
    /// Bytes.
    pub(crate) len: usize,
}

impl Area {
    pub(crate) fn end(self) -> usize {
        self.at + self.len
    }

    /// Bits the area holds.
    pub(crate) fn bits(self) -> u64 {
        self.len as u64 * 8
    }

    /// The area's bytes (areas are carved from `mem`, so they are all there; an area
    /// outside it would read as empty).
    pub(crate) fn bytes(self, mem: &[u8]) -> &[u8] {
        mem.get(self.at..self.end()).unwrap_or_default()
    }

    pub(crate) fn bytes_mut(self, mem: &mut [u8]) -> &mut [u8] {
        mem.get_mut(self.at..self.end()).unwrap_or_default()
    }
}

/// Hands out consecutive areas of work memory.
pub(crate) struct Carver {
    next: usize,
    end: usize,
}

impl Carver {
    pub(crate) fn new(at: usize, end: usize) -> Self {
        Carver { next: at, end }
    }

    /// The next `len` bytes (8-byte aligned start), or `None` when they do not fit.
    pub(crate) fn take(&mut self, len: usize) -> Option<Area> {
        let at = self.next.checked_add(7)? & !7;
        let end = at.checked_add(len)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(Area { at, len })
    }

    /// Bytes left.
    pub(crate) fn left(&self) -> usize {
        self.end.saturating_sub((self.next + 7) & !7)
    }
}

/// A bitset living in an area of work memory.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bits(pub(crate) Area);

impl Bits {
    pub(crate) fn clear(self, mem: &mut [u8]) {
        self.0.bytes_mut(mem).fill(0);
    }

    /// The byte holding `bit` (callers keep `bit` below [`Area::bits`], so it is in `mem`).
    fn byte(self, mem: &[u8], bit: u64) -> Option<u8> {
        let at = self.0.at.checked_add(usize::try_from(bit / 8).ok()?)?;
        mem.get(at).copied()
    }

    fn byte_mut(self, mem: &mut [u8], bit: u64) -> Option<&mut u8> {
        let at = self.0.at.checked_add(usize::try_from(bit / 8).ok()?)?;
        mem.get_mut(at)
    }

    pub(crate) fn get(self, mem: &[u8], bit: u64) -> bool {
        self.byte(mem, bit)
            .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
    }

    /// Sets `bit`; returns whether it was set already.
    pub(crate) fn set(self, mem: &mut [u8], bit: u64) -> bool {
        let Some(byte) = self.byte_mut(mem, bit) else {
            return false;
        };
        let mask = 1 << (bit % 8);
        let was = *byte & mask != 0;
        *byte |= mask;
        was
    }

    pub(crate) fn unset(self, mem: &mut [u8], bit: u64) {
        if let Some(byte) = self.byte_mut(mem, bit) {
            *byte &= !(1 << (bit % 8));
        }
    }

    /// Set bits in `[start, end)`.
    pub(crate) fn count(self, mem: &[u8], start: u64, end: u64) -> u64 {
        let mut n = 0;
        let mut bit = start;
        while bit < end {
            if bit % 8 == 0 && end - bit >= 8 {
                n += self.byte(mem, bit).map_or(0, |b| u64::from(b.count_ones()));
                bit += 8;
            } else {
                n += u64::from(self.get(mem, bit));
                bit += 1;
            }
        }
        n
    }

    /// The first bit in `[start, end)` equal to `value`.
    pub(crate) fn find(self, mem: &[u8], start: u64, end: u64, value: bool) -> Option<u64> {
        let skip = if value { 0 } else { 0xFF };
        let mut bit = start;
        while bit < end {
            if bit % 8 == 0 && end - bit >= 8 && self.byte(mem, bit) == Some(skip) {
                bit += 8;
                continue;
            }
            if self.get(mem, bit) == value {
                return Some(bit);
            }
            bit += 1;
        }
        None
    }

    /// The first run of `len` clear bits in `[start, end)`: where it starts.
    pub(crate) fn clear_run(self, mem: &[u8], start: u64, end: u64, len: u64) -> Option<u64> {
        let mut from = start;
        loop {
            let first = self.find(mem, from, end, false)?;
            let run_end = first.checked_add(len)?;
            if run_end > end {
                return None;
            }
            match self.find(mem, first, run_end, true) {
                Some(set) => from = set + 1,
                None => return Some(first),
            }
        }
    }

    /// The last set bit in `[start, end)`.
    pub(crate) fn last_set(self, mem: &[u8], start: u64, end: u64) -> Option<u64> {
        let mut bit = end;
        while bit > start {
            bit -= 1;
            if bit % 8 == 7 && bit + 1 - start >= 8 && self.byte(mem, bit) == Some(0) {
                bit -= 7;
                continue;
            }
            if self.get(mem, bit) {
                return Some(bit);
            }
        }
        None
    }
}

/// Bytes per slot of the first-owner map: the unit, then its owner (little-endian u64s).
const SLOT: usize = 16;
const FREE: u64 = u64::MAX;

/// A map from unit to owner in an area of work memory, filled at most to half its slots.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OwnerMap {
    area: Area,
    len: u64,
}

fn read_u64(mem: &[u8], at: usize) -> u64 {
    // Slots lie inside the map's area, which is carved from `mem`; a slot outside would
    // read as FREE.
    let mut b = [0xFF; 8];
    if let Some(src) = at.checked_add(8).and_then(|end| mem.get(at..end)) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

fn write_u64(mem: &mut [u8], at: usize, value: u64) {
    if let Some(dst) = at.checked_add(8).and_then(|end| mem.get_mut(at..end)) {
        dst.copy_from_slice(&value.to_le_bytes());
    }
}

impl OwnerMap {
    pub(crate) fn new(area: Area) -> Self {
        OwnerMap { area, len: 0 }
    }

    fn slots(&self) -> u64 {
        (self.area.len / SLOT) as u64
    }

    /// Units it can hold.
    pub(crate) fn capacity(&self) -> u64 {
        self.slots() / 2
    }

    pub(crate) fn clear(&mut self, mem: &mut [u8]) {
        self.area.bytes_mut(mem).fill(0xFF);
        self.len = 0;
    }

    /// The slot of `unit`, or the free slot where it would go.
    fn probe(&self, mem: &[u8], unit: u64) -> Option<(usize, bool)> {
        let slots = self.slots();
        if slots == 0 {
            return None;
        }
        let mut index = unit.wrapping_mul(0x9E37_79B9_7F4A_7C15) % slots;
        for _ in 0..slots {
            // `index` is below `slots`, which counts slots of an area of `mem`.
            let at = self.area.at + usize::try_from(index).ok()? * SLOT;
            match read_u64(mem, at) {
                FREE => return Some((at, false)),
                key if key == unit => return Some((at, true)),
                _ => index = (index + 1) % slots,
            }
        }
        None
    }

    pub(crate) fn get(&self, mem: &[u8], unit: u64) -> Option<u64> {
        match self.probe(mem, unit)? {
            (at, true) => Some(read_u64(mem, at + 8)),
            _ => None,
        }
    }

    /// Records `owner` for `unit` unless it has one; false when the map is full.
    pub(crate) fn insert(&mut self, mem: &mut [u8], unit: u64, owner: u64) -> bool {
        if unit == FREE {
            return false;
        }
        match self.probe(mem, unit) {
            Some((_, true)) => true,
            Some((at, false)) if self.len < self.capacity() => {
                write_u64(mem, at, unit);
                write_u64(mem, at + 8, owner);
                self.len += 1;
                true
            }
            _ => false,
        }
    }
}

/// Splits a window whose doubly-named units are marked in `shared` into the sub-ranges
/// the first-owner map resolves in one walk each: from `start`, as far as `capacity`
/// marked units reach (at least one unit further).
pub(crate) fn sub_window_end(shared: Bits, mem: &[u8], start: u64, end: u64, capacity: u64) -> u64 {
    let mut seen = 0;
    let mut bit = start;
    while bit < end {
        if shared.get(mem, bit) {
            if seen == capacity.max(1) {
                return bit.max(start + 1);
            }
            seen += 1;
        }
        bit += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitsets_count_find_and_scan_backwards() {
        let mut mem = [0u8; 40];
        let bits = Bits(Area { at: 8, len: 32 });
        bits.clear(&mut mem);
        assert!(!bits.set(&mut mem, 3));
        assert!(bits.set(&mut mem, 3));
        bits.set(&mut mem, 200);
        assert_eq!(bits.count(&mem, 0, 256), 2);
        assert_eq!(bits.find(&mem, 4, 256, true), Some(200));
        assert_eq!(bits.find(&mem, 0, 256, false), Some(0));
        assert_eq!(bits.last_set(&mem, 0, 256), Some(200));
        assert_eq!(bits.last_set(&mem, 0, 200), Some(3));
        bits.unset(&mut mem, 3);
        assert_eq!(bits.last_set(&mem, 0, 200), None);
        for bit in [10, 11, 14] {
            bits.set(&mut mem, bit);
        }
        assert_eq!(bits.clear_run(&mem, 10, 256, 3), Some(15));
        assert_eq!(bits.clear_run(&mem, 10, 17, 3), None);
        assert_eq!(bits.clear_run(&mem, 0, 256, 1), Some(0));
        assert_eq!(mem[..8], [0; 8], "nothing outside the area changed");
    }

    #[test]
    fn the_owner_map_keeps_the_first_owner_and_refuses_past_half_full() {
        let mut mem = [0u8; 64];
        let mut map = OwnerMap::new(Area { at: 0, len: 64 });
        map.clear(&mut mem);
        assert_eq!(map.capacity(), 2);
        assert!(map.insert(&mut mem, 7, 100));
        assert!(map.insert(&mut mem, 7, 200));
        assert_eq!(map.get(&mem, 7), Some(100));
        assert!(map.insert(&mut mem, 9, 1));
        assert!(!map.insert(&mut mem, 11, 1));
        assert_eq!(map.get(&mem, 11), None);
        let mut shared_mem = [0u8; 8];
        let shared = Bits(Area { at: 0, len: 8 });
        for bit in [1, 5, 6, 40] {
            shared.set(&mut shared_mem, bit);
        }
        assert_eq!(sub_window_end(shared, &shared_mem, 0, 64, 2), 6);
        assert_eq!(sub_window_end(shared, &shared_mem, 6, 64, 2), 64);
    }
}
