//! How much memory an engine needs for an image, from the image's first bytes: every host
//! sizes the memory it hands to [`super::Engine::open`] with [`memory_needed`], so every
//! geometry the format allows opens and works (an FVD image with a base copies whole
//! blocks, up to 64 MiB, through bounce slots, and a write's copy-on-write head and tail
//! take one slot each). The result is bounded by the format's limits, never by a value
//! the bytes could make arbitrarily large.

use super::{HEADER_AREA, MIN_CACHE, SCRATCH_AREA};
use crate::fvd::header::RawHeader;
use crate::fvd::validate::MAX_BLOCK_SIZE;
use crate::fvd::FVD_MAGIC;
use core::mem::offset_of;

/// Bytes of the image's start [`memory_needed`] reads: the FVD header fields it looks at
/// lie within them.
pub const SIZING_LEN: usize = 4096;

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Bounce bytes the image starting with `first` needs so that no request waits forever:
/// an FVD image whose base is still read needs two whole blocks (a write's head and tail
/// may both need a copy from the base). 0 when the image needs no such room, or when the
/// header is not one the engine would open.
fn bounce_floor(first: &[u8]) -> u64 {
    if u32_at(first, 0) != Some(FVD_MAGIC) {
        // QED copies in pieces of whatever bounce space it has.
        return 0;
    }
    let base_size = u64_at(first, offset_of!(RawHeader, base_img_size)).unwrap_or(0);
    let prefetched =
        u32_at(first, offset_of!(RawHeader, base_img_fully_prefetched)).unwrap_or(0) == 1;
    let block = u64_at(first, offset_of!(RawHeader, block_size)).unwrap_or(0);
    if base_size == 0 || prefetched || block > MAX_BLOCK_SIZE {
        // No live base, or a block size validation refuses anyway.
        return 0;
    }
    2 * block
}

/// Engine memory for the image whose first bytes are `first` (at least [`SIZING_LEN`] of
/// them for an exact answer; fewer or foreign bytes give the general size): the header and
/// scratch areas, `cache_bytes` of metadata cache (at least the minimum) and at least
/// `bounce_bytes` of bounce space, more when the image's blocks need it: at most two
/// blocks of 64 MiB above what `cache_bytes` and `bounce_bytes` ask for.
pub fn memory_needed(first: &[u8], cache_bytes: usize, bounce_bytes: usize) -> usize {
    let unit = usize::try_from(bounce_floor(first)).unwrap_or(0);
    HEADER_AREA
        .saturating_add(SCRATCH_AREA)
        .saturating_add(cache_bytes.max(MIN_CACHE))
        .saturating_add(bounce_bytes.max(unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fvd::create::{plan, BaseSpec, CreateOptions};
    use zerocopy::IntoBytes;

    fn header(block: u64, base: bool) -> [u8; SIZING_LEN] {
        let options = CreateOptions {
            virtual_size: 1 << 30,
            block_size: Some(block),
            base: base.then_some(BaseSpec {
                name: b"b.raw",
                format: b"raw",
                size: 1 << 30,
            }),
            ..Default::default()
        };
        let raw = plan(&options).unwrap();
        let mut bytes = [0u8; SIZING_LEN];
        bytes.copy_from_slice(&raw.as_bytes()[..SIZING_LEN]);
        bytes
    }

    #[test]
    fn blocks_larger_than_the_bounce_space_get_room_for_a_head_and_a_tail() {
        let fixed = HEADER_AREA + SCRATCH_AREA + MIN_CACHE;
        assert_eq!(
            memory_needed(&header(64 << 20, true), 0, 4 << 20),
            fixed + (128 << 20)
        );
        assert_eq!(
            memory_needed(&header(4 << 20, true), 0, 4 << 20),
            fixed + (8 << 20)
        );
        assert_eq!(
            memory_needed(&header(2 << 20, true), 0, 4 << 20),
            fixed + (4 << 20)
        );
        // Small blocks, no base, or foreign bytes: what the host asked for.
        assert_eq!(
            memory_needed(&header(64 << 10, true), 0, 4 << 20),
            fixed + (4 << 20)
        );
        assert_eq!(
            memory_needed(&header(64 << 20, false), 0, 4 << 20),
            fixed + (4 << 20)
        );
        assert_eq!(memory_needed(&[0xAB; 16], 0, 4 << 20), fixed + (4 << 20));
    }

    #[test]
    fn a_block_size_past_the_limit_asks_for_nothing_extra() {
        let mut bytes = header(64 << 20, true);
        let at = offset_of!(RawHeader, block_size);
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let fixed = HEADER_AREA + SCRATCH_AREA + MIN_CACHE;
        assert_eq!(memory_needed(&bytes, 0, 4 << 20), fixed + (4 << 20));
    }
}
