//! `fvd-img check`: a structural check of an FVD or QED image with qemu-img check's exit
//! statuses (0 clean, 1 the check could not be completed, 2 corruption found, 3 only leaked
//! chunks found) and, with `-r`, repairs.
//!
//! The check and the repair are the core's sans-IO scanners (`fvd_core::check`): they
//! read the metadata through plain file I/O ([`drive`]), never through the engine, so
//! images the engine refuses can still be checked, and they judge it with the rules the
//! engine uses. This module opens the files (the open gate, the locks, [`repair`] for the
//! files a repair writes) and prints what the scanners report ([`fvd`], [`qed`],
//! [`report`]).

pub mod drive;
pub mod fvd;
pub mod qed;
pub mod repair;
pub mod report;

use super::disk::DiskFormat;
use super::error::CliError;
use super::image_format::ImageFormat;
use super::open_flags::{self, ExternalData, ForceShare};
use super::output::OutputFormat;
use clap::{Args, ValueEnum};
use fvd_core::check::CheckCounts;
use std::io::Write;
use std::path::PathBuf;

/// Exit status: the image has corruptions.
pub const EXIT_CORRUPT: u8 = 2;
/// Exit status: the image has leaked chunks and no corruptions.
pub const EXIT_LEAKS: u8 = 3;
/// Exit status: the format has nothing to check (raw), as qemu-img's.
pub const EXIT_UNSUPPORTED: u8 = 63;

/// What `-r` repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RepairMode {
    /// Replay the journal of a dirty image and release leaked storage (relocating what
    /// lies above it).
    Leaks,
    /// Also repair corruptions: unmap bad or duplicate table entries (their data is lost),
    /// clear stray bitmap bits, drop bad journal records.
    All,
}

impl From<RepairMode> for fvd_core::check::RepairMode {
    fn from(mode: RepairMode) -> Self {
        match mode {
            RepairMode::Leaks => fvd_core::check::RepairMode::Leaks,
            RepairMode::All => fvd_core::check::RepairMode::All,
        }
    }
}

/// Arguments of `fvd-img check`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Exit status: 0 no problems, 1 the check could not be completed, 2 corruptions found, \
3 leaked chunks found (and no corruptions), 63 the format (raw) has nothing to check.\n\
Leaked chunks are physical chunks below the highest mapped one that no table entry maps; \
the engine reuses them for new writes. -r moves the chunks above them down into them and \
shortens the data storage; when it cannot be shortened (a device), the leaks stay, are \
reported and do not set status 3 after -r.\n\
QED images: leaked clusters are clusters of the file nothing references; -r moves the data \
clusters and L2 tables after them down into them and truncates the file.")]
pub struct CheckArgs {
    /// Image format (fvd, qed or raw; default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Repair: 'leaks' (replay and release unused storage) or 'all' (also corruptions)
    #[arg(short = 'r', value_enum, value_name = "leaks|all")]
    pub repair: Option<RepairMode>,
    /// Output format
    #[arg(long, value_enum, value_name = "FMT", default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Print nothing; only the exit status tells the result
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// The image to check
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `fvd-img check`. The report goes to `out`, each finding as it is found; an exit
/// status other than 0 comes back as [`CliError::Exit`] after the report is written.
pub fn run(args: &CheckArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.file.as_path();
    args.share.check_read_only(args.repair.is_some())?;
    let gate = open_flags::gate(args.share, args.external);
    // -q: the report goes nowhere; the exit status still says what was found.
    let mut sink = std::io::sink();
    let out: &mut dyn Write = if args.quiet { &mut sink } else { out };
    let format = match args.format.as_deref() {
        Some(name) => DiskFormat::parse(name)?,
        // A file that is neither FVD nor QED but looks like one of them is checked as
        // that format, so that the header check explains what is wrong with it.
        None => match ImageFormat::probe(path)? {
            Some(ImageFormat::Fvd) => DiskFormat::Fvd,
            Some(ImageFormat::Qed) => DiskFormat::Qed,
            None => DiskFormat::probe(path)?,
        },
    };
    match format {
        DiskFormat::Fvd => fvd::run(path, args.repair, args.output, &gate, out),
        DiskFormat::Qed => {
            let usage = gate.image_usage(args.repair.is_some())?;
            qed::run(path, args.repair, args.output, usage, out)
        }
        // qemu-img's words and status for a format without metadata to check.
        DiskFormat::Raw => Err(CliError::Invalid(
            "This image format does not support checks".into(),
        )
        .with_status(EXIT_UNSUPPORTED)),
    }
}

/// The exit status of a check that found `c` (leaks do not count after a repair, which
/// released what it could).
fn status(c: &CheckCounts, repaired: bool) -> u8 {
    if c.corruptions > 0 {
        EXIT_CORRUPT
    } else if c.leaks > 0 && !repaired {
        EXIT_LEAKS
    } else {
        0
    }
}

/// Flushes the report and ends with `status`.
fn finish(mut out: impl Write, status: u8) -> Result<(), CliError> {
    out.flush().map_err(CliError::Output)?;
    if status != 0 {
        return Err(CliError::Exit(status));
    }
    Ok(())
}
