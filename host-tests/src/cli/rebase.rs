//! `fvd-img rebase [-f fvd] -b NEW [-F NEW_FMT] [-u] [-q] FILE`: puts FILE over another
//! base image, like `qemu-img rebase`. A relative NEW is opened relative to FILE's
//! directory and stored as given.
//!
//! - `-u` (unsafe) only renames: `base_img` and `base_img_fmt` are rewritten with one
//!   positioned write of the whole header and a sync. NEW must provide exactly the guest
//!   bytes FILE was made over (the same `base_img_size`): the bitmap is not touched.
//! - Safe mode keeps FILE's guest content: every block FILE still reads from its old base
//!   is compared with NEW, and where they differ the old data is written into FILE
//!   (through the engine, which marks the block local). Then the header names NEW, with
//!   `base_img_size` = min(NEW's size, FILE's size) rounded up to 512. The bitmap region is
//!   never resized: a NEW so much larger that the bitmap would not fit is refused. When
//!   `base_img_size` changes, blocks that would change sides are handled too: blocks that
//!   would now fall past the base range are made local first, blocks the larger range newly
//!   covers get their bits set (their data was already in FILE), and bits past the new last
//!   block are cleared once the header names the new size.
//! - `-b ""` (safe mode only) makes FILE independent of any base: every block still in the
//!   base is copied into FILE, then `base_img_fully_prefetched` is set. The base name stays
//!   in the header (FVD keeps a bitmap exactly when it names a base) but the base is never
//!   opened again and may be deleted.

use super::base::{self, Base, BaseFormat};
use super::disk::{open_error, Disk, DiskFormat};
use super::error::CliError;
use super::image::{
    header_reason, name_path, name_text, open_fvd, open_fvd_as, open_host_file, read_at_most,
};
use super::image::{open_host_file_as, same_file, write_header_bytes};
use super::io::CacheMode;
use super::open_flags::{self, ExternalData, ForceShare};
use super::progress::Progress;
use super::qed::open_qed_as;
use crate::host::driver::{Driver, DriverOptions};
use crate::host::files::{open_image_with, resolve_relative, FileStorage, MAX_CHAIN_DEPTH};
use crate::host::gate::OpenGate;
use crate::host::lock::Usage;
use clap::Args;
use fvd_core::engine::Mapping;
use fvd_core::fvd::header::{set_name_field, FORMAT_FIELD_LEN, NAME_FIELD_LEN};
use fvd_core::fvd::{validate, RawHeader, RAW_HEADER_LEN};
use std::fs::OpenOptions;
use std::io::Write;
use std::mem::offset_of;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Arguments of `fvd-img rebase`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Safe mode (default) keeps FILE's guest content: blocks still read from the old base that \
differ in NEW are copied into FILE first. -u only rewrites the base name and format, for a \
NEW that holds the same data (e.g. a moved or renamed base); it must have the size the old \
base had. -b \"\" copies the whole base into FILE and marks it fully prefetched (the base name \
stays in the header, but the base is never read again). A relative NEW is relative to FILE's \
directory.")]
pub struct RebaseArgs {
    /// Format of FILE: fvd or qed (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// The new base image ("" for none)
    #[arg(short = 'b', value_name = "NEW")]
    pub backing: Option<std::ffi::OsString>,
    /// Format of the new base image: raw, fvd or qed (default: probed)
    #[arg(short = 'F', value_name = "NEW_FMT")]
    pub backing_format: Option<String>,
    /// Unsafe: only rewrite the base name and format in the header
    #[arg(short = 'u')]
    pub unsafe_mode: bool,
    /// Print nothing (not even progress)
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show progress (of the copy safe mode makes)
    #[arg(short = 'p')]
    pub progress: bool,
    /// Read the old and new bases without locking other processes out of them, like
    /// qemu-img rebase -U (FILE itself stays locked for writing)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Cache mode of FILE: none, writeback, writethrough, directsync or unsafe (none and
    /// directsync bypass the host page cache)
    #[arg(short = 't', value_name = "CACHE")]
    pub cache: Option<String>,
    /// Cache mode of the bases (as -t)
    #[arg(short = 'T', value_name = "SRC_CACHE")]
    pub src_cache: Option<String>,
    #[command(flatten)]
    pub external: ExternalData,
    /// The image to rebase
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Bytes compared at a time (at least one block).
const PIECE: u64 = 4 << 20;

pub(super) fn image_error(err: impl std::fmt::Display) -> CliError {
    CliError::Image(err.to_string())
}

/// The first [`RAW_HEADER_LEN`] bytes of FILE and its length.
fn read_header(path: &Path) -> Result<(Vec<u8>, u64), CliError> {
    let host = open_host_file(path)?;
    let bytes = read_at_most(&host.file, path, 0, RAW_HEADER_LEN)?;
    Ok((bytes, host.len))
}

fn header_of(bytes: &[u8]) -> &RawHeader {
    // Callers pass headers `open_fvd` has already validated (full length).
    RawHeader::view(bytes).expect("a full header")
}

/// Stores `value` into the name field at `offset` of `header`.
fn set_name(header: &mut [u8], offset: usize, len: usize, value: &[u8]) -> Result<(), CliError> {
    if set_name_field(&mut header[offset..offset + len], value) {
        Ok(())
    } else {
        Err(CliError::Invalid(format!(
            "The base name '{}' is too long for the header (at most {} bytes, no NUL)",
            String::from_utf8_lossy(value),
            len - 1
        )))
    }
}

fn set_u64(header: &mut [u8], offset: usize, value: u64) {
    header[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Checks a header about to be written.
fn check_header(new: &[u8], file_len: u64) -> Result<(), CliError> {
    validate(header_of(new), file_len)
        .map(|_| ())
        .map_err(|err| {
            CliError::Invalid(format!(
                "The rebased header would be invalid: {}",
                header_reason(&err)
            ))
        })
}

/// `header` naming base `new` with `base_img_size` = `base_size`.
fn renamed(header: &[u8], new: &Base, name: &Path, base_size: u64) -> Result<Vec<u8>, CliError> {
    let mut bytes = header.to_vec();
    set_name(
        &mut bytes,
        offset_of!(RawHeader, base_img),
        NAME_FIELD_LEN,
        name.as_os_str().as_bytes(),
    )?;
    set_name(
        &mut bytes,
        offset_of!(RawHeader, base_img_fmt),
        FORMAT_FIELD_LEN,
        new.format.name().as_bytes(),
    )?;
    set_u64(&mut bytes, offset_of!(RawHeader, base_img_size), base_size);
    Ok(bytes)
}

/// Sets (`value`) or clears the bitmap bits of blocks `[first, end)` directly in the
/// bitmap region of the closed, clean image at `path`, then syncs.
fn set_bits(path: &Path, first: u64, end: u64, value: bool) -> Result<(), CliError> {
    if first >= end {
        return Ok(());
    }
    let image = open_fvd(path)?;
    let Some(base) = image.layout.base else {
        return Ok(());
    };
    let lo = first / 8;
    let hi = end.div_ceil(8).min(base.bitmap.len);
    let mut bytes = read_at_most(
        &image.host.file,
        path,
        base.bitmap.offset + lo,
        (hi - lo) as usize,
    )?;
    bytes.resize((hi - lo) as usize, 0);
    for block in first..end {
        let (byte, mask) = fvd_core::fvd::bitmap::locate(block);
        let Some(b) = bytes.get_mut((byte - lo) as usize) else {
            break;
        };
        if value {
            *b |= mask;
        } else {
            *b &= !mask;
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CliError::open(path, e))?;
    file.write_all_at(&bytes, base.bitmap.offset + lo)
        .map_err(|e| CliError::io("write", path, e))?;
    file.sync_all().map_err(|e| CliError::io("sync", path, e))
}

/// Refuses a NEW whose own base chain leads back to FILE. Only headers are looked at,
/// taking no lock (the real opens that follow lock what they read).
pub(super) fn check_no_loop(file: &Path, new: &Base) -> Result<(), CliError> {
    let mut path = new.path.clone();
    let mut format = new.format;
    for _ in 0..=MAX_CHAIN_DEPTH {
        if same_file(&path, file) {
            return Err(CliError::Invalid(format!(
                "Cannot rebase '{}' onto '{}': its base chain leads back to the image",
                file.display(),
                new.name.display()
            )));
        }
        if format == BaseFormat::Qed {
            let image = open_qed_as(&path, Usage::PROBE)?;
            let Some(name) = image.backing_path() else {
                return Ok(());
            };
            let next = resolve_relative(&path, &name);
            format = match image.backing_format() {
                Some(_) => BaseFormat::Raw,
                None => match DiskFormat::probe(&next) {
                    Ok(DiskFormat::Fvd) => BaseFormat::Fvd,
                    Ok(DiskFormat::Qed) => BaseFormat::Qed,
                    _ => BaseFormat::Raw,
                },
            };
            path = next;
            continue;
        }
        if format != BaseFormat::Fvd {
            return Ok(());
        }
        let image = open_fvd_as(&path, Usage::PROBE)?;
        if image.layout.base.is_none() || image.layout.base_fully_prefetched {
            return Ok(());
        }
        let name = name_path(&image.header.base_img);
        let next = resolve_relative(&path, &name);
        format = match name_text(&image.header.base_img_fmt).as_str() {
            "" => match DiskFormat::probe(&next) {
                Ok(DiskFormat::Fvd) => BaseFormat::Fvd,
                Ok(DiskFormat::Qed) => BaseFormat::Qed,
                _ => BaseFormat::Raw,
            },
            other => BaseFormat::parse(other)?,
        };
        path = next;
    }
    Err(CliError::Invalid(format!(
        "The base chain of '{}' is too deep (more than {MAX_CHAIN_DEPTH} images) or loops",
        new.name.display()
    )))
}

/// Opens and measures NEW, worded like qemu-img's "Could not open new backing file".
fn inspect_new(file: &Path, name: &Path, format: Option<BaseFormat>) -> Result<Base, CliError> {
    let base = base::inspect(file, name, format).map_err(|err| match err {
        CliError::Backing(inner) => CliError::Image(format!(
            "Could not open new backing file '{}': {inner}",
            name.display()
        )),
        other => other,
    })?;
    if same_file(&base.path, file) {
        return Err(CliError::Invalid(format!(
            "Cannot rebase '{}' onto itself",
            file.display()
        )));
    }
    let image = open_fvd(file)?;
    if image.layout.separate_data_file {
        let data = resolve_relative(file, name_path(&image.header.data_file));
        if same_file(&base.path, &data) {
            return Err(CliError::Invalid(format!(
                "Cannot rebase '{}' onto '{}': that is its own data file",
                file.display(),
                data.display()
            )));
        }
    }
    check_no_loop(file, &base)?;
    Ok(base)
}

/// The new base for safe mode, opened for reading.
pub(super) struct NewBase {
    pub(super) disk: Disk,
    /// Guest bytes it has.
    pub(super) size: u64,
    /// `base_img_size` once FILE names it (a QED image: its whole size).
    pub(super) range: u64,
}

impl NewBase {
    /// Reads `buf.len()` bytes at `offset`; past its end, zeros.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), CliError> {
        buf.fill(0);
        if offset < self.size {
            let n = ((self.size - offset) as usize).min(buf.len());
            self.disk.read(offset, &mut buf[..n])?;
        }
        Ok(())
    }
}

/// Makes FILE's blocks that are still in the old base local where the new view would
/// differ: every such block when `new` is `None` (no base any more); otherwise blocks whose
/// data differs in NEW or whose extent inside the base range changes.
pub(super) fn copy_differing(
    top: &mut Driver<FileStorage>,
    mut new: Option<&mut NewBase>,
    (old_range, block_size): (u64, u64),
    progress: &mut Progress,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let piece = (PIECE / block_size).max(1) * block_size;
    let mut at = 0;
    progress.show(out, 0)?;
    while at < old_range {
        progress.show(out, at)?;
        let run = top.map(at, old_range - at).map_err(image_error)?;
        if run.len == 0 {
            return Err(CliError::Image(format!(
                "the engine mapped an empty run at offset {at}"
            )));
        }
        let run_end = at + run.len;
        if run.mapping != Mapping::Base {
            at = run_end;
            continue;
        }
        // Base runs start and end on block boundaries (or at the end of the base range).
        while at < run_end {
            let end = (at + piece).min(run_end);
            let old = top.read(at, (end - at) as usize).map_err(image_error)?;
            let mut fresh = vec![0u8; old.len()];
            if let Some(new) = new.as_deref_mut() {
                new.read(at, &mut fresh)?;
            }
            let mut block_start = at;
            // Neighbouring blocks to copy go in one write: [first, block_start).
            let mut copying: Option<u64> = None;
            while block_start < end {
                let block_end = ((block_start / block_size + 1) * block_size).min(end);
                let range = (block_start - at) as usize..(block_end - at) as usize;
                let must_copy = match new.as_deref() {
                    None => true,
                    Some(new) => {
                        // The block's share of the base range, before and after.
                        let full_end = ((block_start / block_size + 1) * block_size).min(old_range);
                        let new_end = ((block_start / block_size + 1) * block_size).min(new.range);
                        new_end != full_end || old[range.clone()] != fresh[range.clone()]
                    }
                };
                match (must_copy, copying) {
                    (true, None) => copying = Some(block_start),
                    (false, Some(first)) => {
                        let bytes = &old[(first - at) as usize..(block_start - at) as usize];
                        top.write(first, bytes).map_err(image_error)?;
                        copying = None;
                    }
                    _ => {}
                }
                block_start = block_end;
            }
            if let Some(first) = copying {
                top.write(first, &old[(first - at) as usize..(end - at) as usize])
                    .map_err(image_error)?;
            }
            at = end;
        }
    }
    Ok(())
}

impl RebaseArgs {
    /// How files are opened: `-U` shares the bases, never FILE.
    pub(super) fn gate(&self) -> OpenGate {
        let share = ForceShare {
            force_share: self.force_share,
        };
        open_flags::bases_gate(share, self.external)
    }

    /// Whether `-t` (FILE) and `-T` (the bases) bypass the host page cache; refuses
    /// names qemu-img does not know.
    fn direct_io(&self) -> Result<(bool, bool), CliError> {
        let direct = |mode: &Option<String>| -> Result<bool, CliError> {
            Ok(match mode {
                Some(mode) => CacheMode::parse(mode)?.bypasses_page_cache(),
                None => false,
            })
        };
        Ok((direct(&self.cache)?, direct(&self.src_cache)?))
    }

    /// Opens the new base for reading (shared with `-U`, direct with `-T none`).
    pub(super) fn open_new_base(&self, path: &Path, format: DiskFormat) -> Result<Disk, CliError> {
        let mut disk = Disk::open_gated(path, format, false, None, self.gate())?;
        if self.direct_io()?.1 {
            disk.bypass_page_cache()?;
        }
        Ok(disk)
    }
}

/// Opens FILE read-write without copy-on-read (base reads must not change it behind the
/// comparison's back).
pub(super) fn open_top(path: &Path, gate: &OpenGate) -> Result<Driver<FileStorage>, CliError> {
    let options = DriverOptions {
        writable: true,
        copy_on_read: Some(false),
        ..DriverOptions::default()
    };
    open_image_with(path, options, gate).map_err(open_error)
}

/// [`open_top`] with its bases as `-U`, `-t` and `-T` say.
pub(super) fn open_top_for(
    path: &Path,
    args: &RebaseArgs,
) -> Result<Driver<FileStorage>, CliError> {
    let mut top = open_top(path, &args.gate())?;
    let (direct_top, direct_bases) = args.direct_io()?;
    for (layer, storage) in top.layers_mut().enumerate() {
        let direct = if layer == 0 { direct_top } else { direct_bases };
        if direct {
            storage
                .bypass_page_cache(layer == 0)
                .map_err(|e| CliError::io("open", path, e))?;
        }
    }
    Ok(top)
}

pub(super) fn close_top(path: &Path, mut top: Driver<FileStorage>) -> Result<(), CliError> {
    top.flush().map_err(image_error)?;
    let (_, clean) = top.close().map_err(image_error)?;
    if clean {
        Ok(())
    } else {
        Err(CliError::Image(format!(
            "'{}' could not be marked clean; it will be repaired from its journal when \
             opened next",
            path.display()
        )))
    }
}

/// Runs `fvd-img rebase`.
pub fn run(args: &RebaseArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.file.as_path();
    match DiskFormat::given_or_probed(args.format.as_deref(), path)? {
        DiskFormat::Fvd => {}
        DiskFormat::Qed => return super::rebase_qed::run(args, out),
        DiskFormat::Raw => {
            return Err(CliError::Invalid(format!(
                "'{}' is a raw image; only FVD and QED images can be rebased",
                path.display(),
            )))
        }
    }
    // FILE stays locked for writing from the first look at its header to the last write.
    let _held = open_host_file_as(path, Usage::WRITE)?;
    args.direct_io()?;
    let format = args
        .backing_format
        .as_deref()
        .map(BaseFormat::parse)
        .transpose()?;
    let name = match (&args.backing, args.unsafe_mode) {
        (Some(name), _) => PathBuf::from(name),
        (None, false) => {
            return Err(CliError::Usage(
                "Must specify backing file (-b) or use unsafe mode (-u)".into(),
            ))
        }
        (None, true) => PathBuf::new(),
    };
    if name.as_os_str().is_empty() && format.is_some() {
        return Err(CliError::Usage(
            "A backing format (-F) needs a backing file (-b)".into(),
        ));
    }
    let image = open_fvd(path)?;
    let Some(old) = image.layout.base else {
        return Err(CliError::Invalid(format!(
            "'{}' has no base image, and an FVD image cannot gain one (its bitmap is laid \
             out at create)",
            path.display()
        )));
    };
    let virtual_size = image.layout.virtual_size;
    let block_size = image.layout.block_size;
    let (header, file_len) = read_header(path)?;
    drop(image);

    if name.as_os_str().is_empty() {
        if args.unsafe_mode {
            return Err(CliError::Invalid(
                "rebase -u cannot remove the base of an FVD image (its bitmap stays); rebase \
                 -b \"\" without -u copies the base into the image instead"
                    .into(),
            ));
        }
        let show = args.progress && !args.quiet;
        super::flatten::flatten(path, args.gate(), show, out).map_err(|e| {
            super::disk::context(e, format!("Could not rebase '{}'", path.display()))
        })?;
        return Ok(());
    }

    let new = inspect_new(path, &name, format)?;
    let new_range = new.size.min(virtual_size).div_ceil(512) * 512;
    let planned = renamed(&header, &new, &name, new_range)?;
    let needed = new_range.div_ceil(block_size).div_ceil(8).div_ceil(4096) * 4096;
    if needed > old.bitmap.len {
        return Err(CliError::Invalid(format!(
            "'{}' provides {} bytes, which needs a bitmap of {needed} bytes, but the bitmap of \
             '{}' has {} bytes and cannot be resized",
            new.name.display(),
            new.size,
            path.display(),
            old.bitmap.len
        )));
    }
    check_header(&planned, file_len)?;

    if args.unsafe_mode {
        if new_range != old.size {
            return Err(CliError::Invalid(format!(
                "rebase -u needs a base of the same size: '{}' would back {new_range} bytes of \
                 '{}', its base backed {} (rebase without -u adapts the image)",
                new.name.display(),
                path.display(),
                old.size
            )));
        }
        if planned != header {
            write_header_bytes(path, &planned)?;
        }
        return Ok(());
    }

    let mut top = open_top_for(path, args)?;
    let disk_format = match new.format {
        BaseFormat::Fvd => DiskFormat::Fvd,
        BaseFormat::Qed => DiskFormat::Qed,
        BaseFormat::Raw => DiskFormat::Raw,
    };
    let disk = args.open_new_base(&new.path, disk_format)?;
    let mut fresh = NewBase {
        size: disk.size(),
        disk,
        range: new_range,
    };
    let mut progress = Progress::new(args.progress && !args.quiet, old.size);
    copy_differing(
        &mut top,
        Some(&mut fresh),
        (old.size, block_size),
        &mut progress,
        out,
    )
    .map_err(|e| super::disk::context(e, format!("Could not rebase '{}'", path.display())))?;
    fresh.disk.close()?;
    close_top(path, top)?;
    progress.finish(out)?;

    let old_blocks = old.blocks;
    let new_blocks = new_range.div_ceil(block_size);
    // Blocks the new range adds held FILE's own data: mark them before the header
    // counts them (until then they are bits past the end, which readers ignore).
    set_bits(path, old_blocks, new_blocks, true)?;
    let (bytes, file_len) = read_header(path)?;
    let bytes = renamed(&bytes, &new, &name, new_range)?;
    check_header(&bytes, file_len)?;
    write_header_bytes(path, &bytes)?;
    // Bits past the new last block are meaningless now; the format wants them clear.
    set_bits(path, new_blocks, old_blocks, false)
}
