//! `fvd-img rebase` on a QED image, as `qemu-img rebase` does it:
//!
//! - `-u` only rewrites the backing name and format in the header area;
//! - safe mode first copies into the image every cluster it still reads from its old
//!   backing file whose bytes differ in NEW (through the engine, which allocates it), so the
//!   guest's view does not change, then rewrites the header;
//! - `-b ""` copies every such cluster and drops the backing file.
//!
//! The header (core's `qed::rebased_header`: name at byte 64, feature bits) is written with
//! the name in one positioned write and synced, after the copied clusters are flushed. A
//! QED image never gets an FVD base: QEMU, its other reader, could not open one.

use super::base::{self, BaseFormat};
use super::disk::DiskFormat;
use super::error::CliError;
use super::image::{open_host_file_as, same_file, write_header_bytes};
use super::progress::Progress;
use super::qed::open_qed_as;
use super::rebase::{check_no_loop, close_top, copy_differing, open_top_for, NewBase, RebaseArgs};
use crate::host::lock::Usage;
use fvd_core::qed::{rebased_header, QedBacking};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Writes the header and the new name (zeros over the rest of the old one), then syncs.
fn write_header_area(
    path: &Path,
    header: &fvd_core::qed::QedHeader,
    name: &[u8],
    old_name_len: usize,
) -> Result<(), CliError> {
    let mut bytes = header.bytes().to_vec();
    bytes.extend_from_slice(name);
    let end = header.bytes().len() + name.len().max(old_name_len);
    bytes.resize(end, 0);
    write_header_bytes(path, &bytes)
}

/// Writes zeros into every cluster of `top` (which has no base) that nothing was ever
/// written to and that `base` holds non-zero bytes for, so that naming `base` does not
/// change what the guest reads.
fn keep_zeros(
    top: &mut crate::host::driver::Driver<crate::host::files::FileStorage>,
    base: &base::Base,
    size: u64,
    cluster: u64,
    args: &RebaseArgs,
) -> Result<(), CliError> {
    let disk_format = match base.format {
        BaseFormat::Qed => DiskFormat::Qed,
        BaseFormat::Raw | BaseFormat::Fvd => DiskFormat::Raw,
    };
    let mut disk = args.open_new_base(&base.path, disk_format)?;
    let base_size = disk.size();
    let mut buf = vec![0u8; cluster as usize];
    let zeros = vec![0u8; cluster as usize];
    let mut at = 0;
    while at < size.min(base_size) {
        let run = top.map(at, size - at).map_err(super::rebase::image_error)?;
        if run.len == 0 {
            return Err(CliError::Image(format!("empty run at offset {at}")));
        }
        let end = at + run.len;
        if run.mapping == fvd_core::engine::Mapping::Unallocated {
            let mut c = at;
            while c < end.min(base_size) {
                let n = (end.min(base_size) - c).min(cluster - c % cluster);
                let piece = &mut buf[..n as usize];
                disk.read(c, piece)?;
                if piece.iter().any(|&b| b != 0) {
                    // Whole sectors (the image's end is one; a raw base's may not be).
                    let whole = n.div_ceil(512) * 512;
                    top.write(c, &zeros[..whole.min(end - c) as usize])
                        .map_err(super::rebase::image_error)?;
                }
                c += n;
            }
        }
        at = end;
    }
    disk.close()
}

/// Runs `fvd-img rebase` on the QED image `args.file`.
pub fn run(args: &RebaseArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.file.as_path();
    // FILE stays locked for writing from the first look at its header to the last write.
    let _held = open_host_file_as(path, Usage::WRITE)?;
    let image = open_qed_as(path, Usage::PROBE)?;
    let (header, layout) = (image.header.clone(), image.layout);
    let old_name_len = image.backing_name.as_ref().map_or(0, Vec::len);
    let had_base = image.backing_name.is_some();
    drop(image);

    let name = match (&args.backing, args.unsafe_mode) {
        (Some(name), _) => PathBuf::from(name),
        (None, false) => {
            return Err(CliError::Usage(
                "Must specify backing file (-b) or use unsafe mode (-u)".into(),
            ))
        }
        (None, true) => PathBuf::new(),
    };
    let format = args
        .backing_format
        .as_deref()
        .map(BaseFormat::parse)
        .transpose()?;
    if name.as_os_str().is_empty() && format.is_some() {
        return Err(CliError::Usage(
            "A backing format (-F) needs a backing file (-b)".into(),
        ));
    }

    // The new base, checked (not FILE itself, no loop, never FVD), unless there is none.
    let new = if name.as_os_str().is_empty() {
        None
    } else {
        let base = if args.unsafe_mode && format.is_some() {
            // -u with -F: NEW need not exist yet; its format is as given.
            base::Base {
                name: name.clone(),
                path: base::resolve(path, &name),
                format: format.unwrap_or(BaseFormat::Raw),
                size: 0,
            }
        } else {
            base::inspect(path, &name, format).map_err(|err| match err {
                CliError::Backing(inner) => CliError::Image(format!(
                    "Could not open new backing file '{}': {inner}",
                    name.display()
                )),
                other => other,
            })?
        };
        if same_file(&base.path, path) {
            return Err(CliError::Invalid(format!(
                "Cannot rebase '{}' onto itself",
                path.display()
            )));
        }
        if base.format == BaseFormat::Fvd {
            return Err(CliError::Usage(
                "A QED image's backing file must be raw or qed: QEMU cannot read an FVD base \
                 (convert the base with 'fvd-img convert -O qed' first)"
                    .into(),
            ));
        }
        if base.path.exists() {
            check_no_loop(path, &base)?;
        }
        Some(base)
    };
    let planned = rebased_header(
        &header,
        new.as_ref().map(|base| QedBacking {
            name: base.name.as_os_str().as_bytes(),
            format: base.format.name().as_bytes(),
        }),
    )
    .map_err(|e| CliError::Invalid(e.to_string()))?;
    let name_bytes = new
        .as_ref()
        .map_or(&[][..], |base| base.name.as_os_str().as_bytes());

    if !args.unsafe_mode && !had_base {
        if let Some(base) = &new {
            // No base so far: unwritten clusters read as zeros, and must go on doing so.
            let mut top = open_top_for(path, args)?;
            keep_zeros(&mut top, base, layout.image_size, layout.cluster_size, args)?;
            close_top(path, top)?;
        }
    }
    if !args.unsafe_mode && had_base {
        let mut top = open_top_for(path, args)?;
        let size = layout.image_size;
        let mut fresh = match &new {
            Some(base) => {
                let disk_format = match base.format {
                    BaseFormat::Qed => DiskFormat::Qed,
                    BaseFormat::Raw | BaseFormat::Fvd => DiskFormat::Raw,
                };
                let disk = args.open_new_base(&base.path, disk_format)?;
                Some(NewBase {
                    size: disk.size(),
                    disk,
                    // QED reads the base over the whole image: only the bytes decide.
                    range: size,
                })
            }
            None => None,
        };
        let mut progress = Progress::new(args.progress && !args.quiet, size);
        copy_differing(
            &mut top,
            fresh.as_mut(),
            (size, layout.cluster_size),
            &mut progress,
            out,
        )
        .map_err(|e| super::disk::context(e, format!("Could not rebase '{}'", path.display())))?;
        if let Some(fresh) = fresh {
            fresh.disk.close()?;
        }
        close_top(path, top)?;
        progress.finish(out)?;
    }
    write_header_area(path, &planned, name_bytes, old_name_len)
}
