//! Zero detection for the bulk copies (convert, rebase, prefetch): which blocks of guest
//! bytes are all zero, cut into runs of whole blocks. A block is all zero when every byte
//! is; blocks sit at multiples of the block size in guest offsets (not in the buffer), so
//! the same block is judged the same way however the bytes were read. A run of all-zero
//! blocks is recorded as zeros (a hole, a zero write, a bitmap bit) instead of being
//! written as data.

/// The granularity of the holes hosts leave in the metadata of a new image (a file-system
/// block): its all-zero blocks of this size are not written.
pub const HOLE_BLOCK: u64 = HOLE_BLOCK_BYTES as u64;

/// [`HOLE_BLOCK`] as a buffer length.
pub const HOLE_BLOCK_BYTES: usize = 4096;

/// True when every byte of `bytes` is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    // OR-folding fixed pieces vectorizes; stopping at the first non-zero piece stays cheap.
    bytes
        .chunks(256)
        .all(|piece| piece.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// True when `memory` holds `len` bytes from `at` and every one is zero (false when the
/// range does not fit): the engines' test of a fill's base data in a bounce slot.
pub fn is_zero_at(memory: &[u8], at: usize, len: u64) -> bool {
    usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .and_then(|end| memory.get(at..end))
        .is_some_and(is_zero)
}

/// A run of guest bytes `[start, end)` whose blocks are all zero (`zero`) or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroRun {
    /// First guest byte.
    pub start: u64,
    /// First guest byte after the run.
    pub end: u64,
    /// Every block of the run is all zero.
    pub zero: bool,
}

/// The runs of `bytes` (guest bytes from `offset`) judged in blocks of `block` bytes at
/// multiples of `block`: neighbouring blocks of the same kind are merged, so the runs
/// alternate. The first and last blocks may be partial (cut by the buffer). `block` 0
/// turns detection off: one run, not zero (even for an empty `bytes`, none).
pub fn zero_runs(offset: u64, bytes: &[u8], block: u64) -> ZeroRuns<'_> {
    ZeroRuns {
        offset,
        bytes,
        at: 0,
        block,
    }
}

/// Iterator of [`zero_runs`].
#[derive(Clone, Debug)]
pub struct ZeroRuns<'a> {
    offset: u64,
    bytes: &'a [u8],
    /// Bytes of `bytes` already returned.
    at: usize,
    block: u64,
}

impl ZeroRuns<'_> {
    /// The end (index into `bytes`) of the block starting at index `at`.
    fn block_end(&self, at: usize) -> usize {
        let len = self.bytes.len();
        if self.block == 0 {
            return len;
        }
        let guest = self.offset.saturating_add(at as u64);
        let into = guest.checked_rem(self.block).unwrap_or(0);
        let left = usize::try_from(self.block.saturating_sub(into)).unwrap_or(usize::MAX);
        at.saturating_add(left).min(len)
    }
}

impl ZeroRuns<'_> {
    /// True when detection is on and the bytes `[from, to)` are all zero.
    fn zero_between(&self, from: usize, to: usize) -> bool {
        self.block != 0 && self.bytes.get(from..to).is_some_and(is_zero)
    }
}

impl Iterator for ZeroRuns<'_> {
    type Item = ZeroRun;

    fn next(&mut self) -> Option<ZeroRun> {
        let len = self.bytes.len();
        if self.at >= len {
            return None;
        }
        let first = self.at;
        let kind = self.zero_between(first, self.block_end(first));
        let mut at = self.block_end(first);
        while at < len {
            let end = self.block_end(at);
            let zero = self.zero_between(at, end);
            if zero != kind {
                break;
            }
            at = end;
        }
        self.at = at;
        Some(ZeroRun {
            start: self.offset.saturating_add(first as u64),
            end: self.offset.saturating_add(at as u64),
            zero: kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn runs(offset: u64, bytes: &[u8], block: u64) -> Vec<(u64, u64, bool)> {
        zero_runs(offset, bytes, block)
            .map(|r| (r.start, r.end, r.zero))
            .collect()
    }

    #[test]
    fn a_block_is_zero_only_when_every_byte_is() {
        assert!(is_zero(&[0; 1000]));
        assert!(is_zero(&[]));
        let mut bytes = vec![0u8; 1001];
        bytes[1000] = 1;
        assert!(!is_zero(&bytes));
    }

    #[test]
    fn a_range_is_zero_only_when_it_fits_and_every_byte_is() {
        let mut memory = vec![0u8; 64];
        memory[40] = 7;
        assert!(is_zero_at(&memory, 0, 40));
        assert!(!is_zero_at(&memory, 32, 16));
        assert!(!is_zero_at(&memory, 48, 17), "past the end");
        assert!(!is_zero_at(&memory, usize::MAX, 1), "wrapping start");
        assert!(!is_zero_at(&memory, 0, u64::MAX), "length beyond memory");
    }

    #[test]
    fn blocks_are_judged_at_guest_multiples_and_merged() {
        // Guest bytes 1024..5120 in blocks of 1024: zero, data, data, zero.
        let mut bytes = vec![0u8; 4096];
        bytes[1024] = 1;
        bytes[3071] = 7;
        assert_eq!(
            runs(1024, &bytes, 1024),
            [(1024, 2048, true), (2048, 4096, false), (4096, 5120, true)]
        );
        // The same bytes from offset 1536: the blocks are cut at 2048, 3072, 4096, 5120,
        // and the non-zero bytes (guest 2560 and 4607) fall into the second and fourth.
        assert_eq!(
            runs(1536, &bytes, 1024),
            [
                (1536, 2048, true),
                (2048, 3072, false),
                (3072, 4096, true),
                (4096, 5120, false),
                (5120, 5632, true)
            ]
        );
    }

    #[test]
    fn block_zero_means_no_detection() {
        assert_eq!(runs(512, &[0; 4096], 0), [(512, 4608, false)]);
        assert_eq!(runs(0, &[], 512), []);
    }
}
