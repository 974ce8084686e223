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
}
