//! Bitmap bits: one per `block_size` bytes of the base range, least significant bit
//! first; 1 means the block lives in this image, 0 that it still comes from the base.

/// Byte index and bit mask of block `block` in the bitmap.
pub const fn locate(block: u64) -> (u64, u8) {
    (block / 8, 1 << (block % 8))
}

/// Whether block `block` is set in `bytes`, which starts at bitmap byte `first_byte`.
/// `None` when the block's byte is outside the slice.
pub fn is_set(bytes: &[u8], first_byte: u64, block: u64) -> Option<bool> {
    let (byte, mask) = locate(block);
    let index = usize::try_from(byte.checked_sub(first_byte)?).ok()?;
    bytes.get(index).map(|b| b & mask != 0)
}

/// Bits set among the first `bits` bits of `bytes` (a piece of the bitmap starting at a
/// byte boundary); bits past `bits` are not counted (they are not part of the bitmap).
pub fn count_set(bytes: &[u8], bits: u64) -> u64 {
    let whole = usize::try_from(bits / 8).unwrap_or(usize::MAX);
    let full: u64 = bytes
        .iter()
        .take(whole)
        .map(|b| u64::from(b.count_ones()))
        .sum();
    let partial = match (bits % 8, bytes.get(whole)) {
        (0, _) | (_, None) => 0,
        (tail, Some(&byte)) => u64::from((byte & !(0xFFu8 << tail)).count_ones()),
    };
    full.saturating_add(partial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_lsb_first() {
        assert_eq!(locate(0), (0, 1));
        assert_eq!(locate(9), (1, 2));
        let bytes = [0b0000_0010u8, 0b1000_0000];
        assert_eq!(is_set(&bytes, 0, 1), Some(true));
        assert_eq!(is_set(&bytes, 0, 0), Some(false));
        assert_eq!(is_set(&bytes, 0, 15), Some(true));
        assert_eq!(is_set(&bytes, 0, 16), None);
        assert_eq!(is_set(&bytes, 4, 15), None);
        assert_eq!(is_set(&bytes, 1, 15), Some(false));
    }

    #[test]
    fn count_set_ignores_bits_past_the_last_block() {
        assert_eq!(super::count_set(&[0xFF, 0xFF], 12), 12);
        assert_eq!(super::count_set(&[0x01, 0xF0], 12), 1);
        assert_eq!(super::count_set(&[0xFF], 0), 0);
        assert_eq!(super::count_set(&[0xFF], 64), 8);
    }
}
