//! Zero detection at create (`-o detect_sparse_hole=on`, the 2011 option): the base is
//! scanned in blocks, and every block that reads as zeros gets its bitmap bit set in the
//! new image, so it is never read from the base. This is correct because the image also
//! gets `need_zero_init`: a local block that was never written reads as zeros from the data
//! storage (or, in a compact image, from its still unallocated chunk).
//!
//! Holes of a raw base and runs an FVD base knows to be zero are taken without reading
//! them; everything else is read and checked.

use super::base::{Base, BaseFormat};
use super::disk::{is_zero, Disk, DiskFormat};
use super::error::CliError;
use fvd_core::fvd::bitmap::locate;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read from the base at a time.
const PIECE: u64 = 4 << 20;

/// The bitmap bytes (`ceil(blocks / 8)` of them) of blocks of `block_size` bytes covering
/// the base's first `range` guest bytes: a bit is set when its block reads as zeros.
pub fn zero_blocks(base: &Base, range: u64, block_size: u64) -> Result<Vec<u8>, CliError> {
    let blocks = range.div_ceil(block_size);
    let mut bitmap = vec![0u8; blocks.div_ceil(8) as usize];
    for block in 0..blocks {
        let (byte, mask) = locate(block);
        bitmap[byte as usize] |= mask;
    }
    let clear = |bitmap: &mut [u8], block: u64| {
        let (byte, mask) = locate(block);
        bitmap[byte as usize] &= !mask;
    };
    let is_candidate = |bitmap: &[u8], block: u64| {
        let (byte, mask) = locate(block);
        bitmap[byte as usize] & mask != 0
    };
    let format = match base.format {
        BaseFormat::Fvd => DiskFormat::Fvd,
        BaseFormat::Qed => DiskFormat::Qed,
        BaseFormat::Raw => DiskFormat::Raw,
    };
    let mut disk = Disk::open(&base.path, format, false)?;
    // Past the base's end everything reads as zeros.
    let limit = range.min(disk.size());
    let mut buf = Vec::new();
    let mut at = 0;
    while at < limit {
        let extent = disk.extent(at, limit - at)?;
        let end = extent.end().min(limit);
        if extent.zero {
            at = end;
            continue;
        }
        while at < end {
            let block = at / block_size;
            let block_end = ((block + 1) * block_size).min(end);
            if !is_candidate(&bitmap, block) {
                at = block_end;
                continue;
            }
            let n = (block_end - at).min(PIECE);
            buf.resize(n as usize, 0);
            disk.read(at, &mut buf)?;
            if is_zero(&buf) {
                at += n;
            } else {
                clear(&mut bitmap, block);
                at = block_end;
            }
        }
    }
    disk.close()?;
    Ok(bitmap)
}

/// Writes `bitmap` at the start of the bitmap region (`offset`) of the new image `file`
/// (named `target` in messages) and syncs it.
pub fn write_bitmap(
    file: &File,
    target: &Path,
    offset: u64,
    bitmap: &[u8],
) -> Result<(), CliError> {
    file.write_all_at(bitmap, offset)
        .map_err(|e| CliError::io("write", target, e))?;
    file.sync_all().map_err(|e| CliError::io("sync", target, e))
}
