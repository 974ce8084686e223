//! Making an FVD image independent of its base in one bulk pass (`rebase -b ''`, and
//! `prefetch` without a rate limit): the runs the image still reads from its base are
//! read from the base on their own thread ([`Stream`], which asks the base for its map
//! first, so holes are never read), and written into the image through the engine in
//! large requests. Blocks of the base that are all zero are not written: they are
//! discarded in the image, which sets their bitmap bits and leaves their storage a hole
//! (or their chunk unallocated), so the image reads zeros there and stays sparse. Then
//! `base_img_fully_prefetched` is set; the base name stays in the header (FVD keeps a
//! bitmap exactly when it names a base) but the base is never opened again. Once that
//! header is durable the bitmap is never consulted (FORMAT.md §7), so its region is
//! punched to a hole: a flattened image holds no bitmap on disk.

use super::base::{self, BaseFormat};
use super::disk::{context, split_runs, Disk, DiskFormat, Piece, Stream};
use super::error::CliError;
use super::image::{name_path, name_text, open_fvd, read_at_most, write_header_bytes};
use super::progress::Progress;
use super::rebase::{close_top, image_error, open_top};
use crate::host::gate::OpenGate;
use fvd_core::fvd::{validate, RawHeader, RAW_HEADER_LEN};
use std::io::Write;
use std::mem::offset_of;
use std::path::Path;

/// What a flatten did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flattened {
    /// Bytes copied from the base as data.
    pub copied: u64,
    /// Bytes of the base that read as zeros, recorded as zeros without writing data.
    pub zeroed: u64,
    /// The image's block size.
    pub block_size: u64,
}

/// Copies every run the FVD image at `path` still reads from its base into it (zero
/// blocks recorded as zeros), then marks it fully prefetched. The image must name a
/// base; one it has fully prefetched already is left as it is.
pub fn flatten(
    path: &Path,
    gate: OpenGate,
    show_progress: bool,
    out: &mut dyn Write,
) -> Result<Flattened, CliError> {
    let image = open_fvd(path)?;
    let Some(layout) = image.layout.base else {
        return Err(CliError::Invalid(format!(
            "'{}' has no base image",
            path.display()
        )));
    };
    let block_size = image.layout.block_size;
    if image.layout.base_fully_prefetched {
        // Independent already: the base is never read again (it may be gone).
        let mut progress = Progress::new(show_progress, layout.size);
        progress.finish(out)?;
        return Ok(Flattened {
            block_size,
            ..Flattened::default()
        });
    }
    let name = name_path(&image.header.base_img);
    let format = match name_text(&image.header.base_img_fmt).as_str() {
        "" => None,
        other => Some(BaseFormat::parse(other)?),
    };
    drop(image);
    let base = base::inspect(path, &name, format)?;
    let format = match base.format {
        BaseFormat::Fvd => DiskFormat::Fvd,
        BaseFormat::Qed => DiskFormat::Qed,
        BaseFormat::Raw => DiskFormat::Raw,
    };

    let mut top = open_top(path, &gate)?;
    let runs = split_runs(&mut top, layout.size)?.base;
    let src = Disk::open_gated(&base.path, format, false, None, gate)?;
    let mut progress = Progress::new(show_progress, layout.size);
    progress.show(out, 0)?;
    let mut done = Flattened {
        block_size,
        ..Flattened::default()
    };
    let mut stream = Stream::start(src, runs, block_size);
    let written = stream.for_each(|piece| {
        let end = piece.end();
        let spare = match piece {
            Piece::Zero { offset, len } => {
                top.discard(offset, len).map_err(image_error)?;
                done.zeroed += len;
                None
            }
            Piece::Data { offset, bytes } => {
                done.copied += bytes.len() as u64;
                Some(top.write_from(offset, bytes).map_err(image_error)?)
            }
        };
        progress.show(out, end)?;
        Ok(spare)
    });
    let src = stream.finish();
    written?;
    src?.close()?;
    close_top(path, top)?;
    progress.finish(out)?;
    if !all_bits_set(path)? {
        return Err(CliError::Image(format!(
            "internal error: '{}' still has blocks in its base after copying them",
            path.display()
        )));
    }
    let host = super::image::open_host_file(path)?;
    let mut bytes = read_at_most(&host.file, path, 0, RAW_HEADER_LEN)?;
    drop(host);
    let flag = offset_of!(RawHeader, base_img_fully_prefetched);
    bytes[flag..flag + 4].copy_from_slice(&1u32.to_le_bytes());
    let file_len = std::fs::metadata(path)
        .map_err(|e| CliError::open(path, e))?
        .len();
    let header = RawHeader::view(&bytes)
        .ok_or_else(|| CliError::Image(format!("'{}' lost its header", path.display())))?;
    validate(header, file_len).map_err(|err| {
        CliError::Invalid(format!(
            "The flattened header would be invalid: {}",
            super::image::header_reason(&err)
        ))
    })?;
    write_header_bytes(path, &bytes)
        .map_err(|e| context(e, format!("Could not mark '{}' prefetched", path.display())))?;
    punch_bitmap(path, layout.bitmap)?;
    Ok(done)
}

/// Deallocates the bitmap of the FVD image at `path` if its header (on disk) marks it
/// fully prefetched: after the engine's own prefetch has finished and the image is
/// closed (its last bitmap write-back done).
pub fn release_prefetched_bitmap(path: &Path) -> Result<(), CliError> {
    let image = open_fvd(path)?;
    match image.layout.base {
        Some(base) if image.layout.base_fully_prefetched => {
            drop(image);
            punch_bitmap(path, base.bitmap)
        }
        _ => Ok(()),
    }
}

/// Deallocates the bitmap `region` of the image at `path`, whose header marking it fully
/// prefetched is durable (written and synced): the bits are never read again, so a crash
/// that leaves any mix of old bits and zeros is as good as either. A file system that
/// cannot punch holes keeps the bits (writing zeros instead would save nothing).
fn punch_bitmap(path: &Path, region: fvd_core::fvd::Region) -> Result<(), CliError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CliError::open(path, e))?;
    crate::host::files::fallocate_zero(&file, region.offset, region.len, true);
    Ok(())
}

/// True when every bitmap bit of the image at `path` is set on disk.
pub fn all_bits_set(path: &Path) -> Result<bool, CliError> {
    let image = open_fvd(path)?;
    let Some(base) = image.layout.base else {
        return Ok(true);
    };
    let bytes = read_at_most(
        &image.host.file,
        path,
        base.bitmap.offset,
        base.blocks.div_ceil(8) as usize,
    )?;
    Ok((0..base.blocks).all(|block| fvd_core::fvd::bitmap::is_set(&bytes, 0, block) == Some(true)))
}
