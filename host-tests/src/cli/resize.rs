//! `fvd-img resize [-f fmt] [--shrink] [-q] FILE [+|-]SIZE`: changes a disk's virtual
//! size like `qemu-img resize`. Raw files are set to the new length (sparse); FVD and QED
//! images follow the plans of `fvd_core::resize` (which sizes each format allows, what
//! the files undergo), carried out here in the plan's order with a sync after each step
//! while the image is locked for writing. An FVD image left unclean is opened once through
//! the engine first, which replays its journal.

use super::disk::{Disk, DiskFormat};
use super::error::CliError;
use super::image::{open_fvd_as, open_host_file_as, write_header_bytes};
use super::qed::open_qed_as;
use super::size::parse_size;
use crate::host::lock::Usage;
use clap::Args;
use fvd_core::fvd::table::TABLE_EMPTY;
use fvd_core::resize::{fvd_plan, qed_plan, FvdResize, ResizeError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Arguments of `fvd-img resize`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
SIZE is the new size, or +SIZE / -SIZE relative to the current one (suffixes k, M, G, T). \
Growing never changes the existing data; the new part reads as zeros. Shrinking needs \
--shrink and deletes everything past the new end: raw files and plain FVD images shrink \
(not below an FVD image's base range); compact FVD and QED images only grow.")]
pub struct ResizeArgs {
    /// Format of FILE: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Allow the new size to be smaller (the data past it is deleted)
    #[arg(long)]
    pub shrink: bool,
    /// Do not print 'Image resized.'
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The disk to resize
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// The new size: SIZE, +SIZE or -SIZE
    #[arg(value_name = "SIZE", allow_hyphen_values = true)]
    pub size: String,
}

/// The size `text` asks for, given the current size.
fn new_size(text: &str, current: u64) -> Result<u64, CliError> {
    let invalid = || CliError::Usage("Invalid image size specified".into());
    let (sign, digits) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => (0, text),
    };
    let amount = parse_size(digits).map_err(|_| invalid())?;
    match sign {
        1 => current.checked_add(amount).ok_or_else(invalid),
        -1 => current.checked_sub(amount).ok_or_else(invalid),
        _ => Ok(amount),
    }
}

fn refused(err: ResizeError) -> CliError {
    match err {
        ResizeError::ShrinkNotAllowed => CliError::Usage(err.to_string()),
        other => CliError::Invalid(other.to_string()),
    }
}

/// Opens `path` for the positioned writes a plan makes (the lock is held elsewhere).
fn writer(path: &Path) -> Result<File, CliError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CliError::open(path, e))
}

fn sync(file: &File, path: &Path) -> Result<(), CliError> {
    file.sync_all().map_err(|e| CliError::io("sync", path, e))
}

/// Carries out an FVD plan on the image file at `path`.
fn apply_fvd(path: &Path, plan: &FvdResize) -> Result<(), CliError> {
    let file = writer(path)?;
    if let Some((first, end)) = plan.empty_entries {
        let bytes: Vec<u8> = (first..end)
            .flat_map(|_| TABLE_EMPTY.to_le_bytes())
            .collect();
        file.write_all_at(&bytes, plan.entries_at)
            .map_err(|e| CliError::io("write", path, e))?;
        sync(&file, path)?;
    }
    if let Some(len) = plan.storage_len {
        file.set_len(len)
            .map_err(|e| CliError::io("resize", path, e))?;
        sync(&file, path)?;
    }
    file.write_all_at(plan.header.bytes(), 0)
        .map_err(|e| CliError::io("write", path, e))?;
    sync(&file, path)
}

fn resize_fvd(path: &Path, args: &Target<'_>) -> Result<(), CliError> {
    let image = open_fvd_as(path, Usage::WRITE)?;
    if !image.layout.clean_shutdown {
        drop(image);
        // Opening it writable replays the journal; closing marks it clean.
        Disk::open(path, DiskFormat::Fvd, true)?.close()?;
        return resize_fvd(path, args);
    }
    let size = new_size(args.size, image.layout.virtual_size)?;
    if image.layout.separate_data_file && size < image.layout.virtual_size {
        return Err(CliError::Invalid(
            "Shrinking an image with a separate data file is not supported".into(),
        ));
    }
    let plan = fvd_plan(
        &image.header,
        image.host.len,
        image.host.len,
        size,
        args.shrink,
    )
    .map_err(refused)?;
    // The lock of `image` is held until the header is written.
    apply_fvd(path, &plan)
}

fn resize_qed(path: &Path, args: &Target<'_>) -> Result<(), CliError> {
    let image = open_qed_as(path, Usage::WRITE)?;
    let size = new_size(args.size, image.layout.image_size)?;
    let header = qed_plan(&image.header, image.host.len, size, args.shrink).map_err(refused)?;
    write_header_bytes(path, header.bytes())
}

fn resize_raw(path: &Path, args: &Target<'_>) -> Result<(), CliError> {
    let host = open_host_file_as(path, Usage::WRITE)?;
    let size = new_size(args.size, host.len)?;
    if size < host.len && !args.shrink {
        return Err(refused(ResizeError::ShrinkNotAllowed));
    }
    let file = writer(path)?;
    file.set_len(size)
        .map_err(|e| CliError::io("resize", path, e))?;
    sync(&file, path)
}

/// Resizes the disk at `path`, of `format`, to `size` (`SIZE`, `+SIZE` or `-SIZE`);
/// smaller only when `shrink`. Also qemu-io's `truncate`, on a disk it has closed.
pub fn resize_path(
    path: &Path,
    format: DiskFormat,
    size: &str,
    shrink: bool,
) -> Result<(), CliError> {
    let args = Target { size, shrink };
    match format {
        DiskFormat::Fvd => resize_fvd(path, &args),
        DiskFormat::Qed => resize_qed(path, &args),
        DiskFormat::Raw => resize_raw(path, &args),
    }
}

/// The size asked for and whether it may be smaller.
struct Target<'a> {
    size: &'a str,
    shrink: bool,
}

/// Runs `fvd-img resize`.
pub fn run(args: &ResizeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.file.as_path();
    let format = DiskFormat::given_or_probed(args.format.as_deref(), path)?;
    resize_path(path, format, &args.size, args.shrink)?;
    if !args.quiet {
        writeln!(out, "Image resized.").map_err(CliError::Output)?;
    }
    Ok(())
}
