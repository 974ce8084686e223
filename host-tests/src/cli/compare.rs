//! `fvd-img compare`: do two disks hold the same guest bytes? Exit status 0 when they
//! do, 1 when they differ (`Content mismatch at offset N!`, N the first differing
//! 512-byte sector), 2 on any error, as `qemu-img compare`. Disks of different sizes are
//! compared over their common part, and the rest of the larger one must read as zeros;
//! `-s` makes any size difference a mismatch. The first disk is read ahead on its own
//! thread ([`Stream`]) while the second is read on this one; runs both disks know to read
//! as zeros (unallocated chunks, holes) are skipped without reading.

use super::disk::{context, is_zero, Disk, DiskFormat, Extent, Piece, Stream, SECTOR};
use super::error::CliError;
use super::open_flags::{self, ExternalData, ForceShare};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Exit status when the disks differ.
pub const EXIT_DIFFERENT: u8 = 1;
/// Exit status of any error (usage errors included).
pub const EXIT_ERROR: u8 = 2;

/// Bytes compared per read.
const COMPARE_CHUNK: u64 = 2 << 20;

/// Blocks of the first disk that read as zeros are not handed over as data when they are
/// whole blocks of this size (holes are not read at all).
const ZERO_BLOCK: u64 = 64 << 10;

/// Arguments of `fvd-img compare`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Exit status: 0 if the disks are identical, 1 if they differ, 2 on error.")]
pub struct CompareArgs {
    /// Format of the first disk: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format_a: Option<String>,
    /// Format of the second disk: fvd, qed or raw (default: probed)
    #[arg(short = 'F', value_name = "FMT")]
    pub format_b: Option<String>,
    /// Strict mode: disks of different sizes differ
    #[arg(short = 's', long)]
    pub strict: bool,
    /// Print nothing; only the exit status tells
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// The first disk
    #[arg(value_name = "FILE1")]
    pub a: PathBuf,
    /// The second disk
    #[arg(value_name = "FILE2")]
    pub b: PathBuf,
}

/// Runs `fvd-img compare`.
pub fn run(args: &CompareArgs, out: &mut dyn Write) -> Result<(), CliError> {
    compare(args, out).map_err(|e| match e {
        CliError::Exit(_) => e,
        other => other.with_status(EXIT_ERROR),
    })
}

fn say(out: &mut dyn Write, quiet: bool, line: &str) -> Result<(), CliError> {
    if quiet {
        Ok(())
    } else {
        writeln!(out, "{line}").map_err(CliError::Output)
    }
}

fn compare(args: &CompareArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let format_a = DiskFormat::given_or_probed(args.format_a.as_deref(), &args.a)?;
    let format_b = DiskFormat::given_or_probed(args.format_b.as_deref(), &args.b)?;
    let gate = open_flags::gate(args.share, args.external);
    let a = Disk::open_gated(&args.a, format_a, false, None, gate)?;
    let mut b = Disk::open_gated(&args.b, format_b, false, None, gate)?;
    let (size_a, size_b) = (a.size(), b.size());
    let differ = |out: &mut dyn Write, line: &str| {
        say(out, args.quiet, line)?;
        Err(CliError::Exit(EXIT_DIFFERENT))
    };
    if args.strict && size_a != size_b {
        return differ(out, "Strict mode: Image size mismatch!");
    }
    let common = size_a.min(size_b);
    let (mut a, found) = first_difference(a, &mut b, common)?;
    if let Some(at) = found {
        return differ(out, &format!("Content mismatch at offset {at}!"));
    }
    if size_a != size_b {
        say(out, args.quiet, "Warning: Image size mismatch!")?;
        let larger = if size_a > size_b { &mut a } else { &mut b };
        if let Some(at) = first_non_zero(larger, common)? {
            return differ(out, &format!("Content mismatch at offset {at}!"));
        }
    }
    a.close()?;
    b.close()?;
    say(out, args.quiet, "Images are identical.")
}

/// The sector holding byte `at`, as a byte offset.
fn sector_of(at: u64) -> u64 {
    at / SECTOR * SECTOR
}

/// Reads `buf.len()` bytes at `at` unless the run is known to read as zeros.
fn fill(disk: &mut Disk, at: u64, known_zero: bool, buf: &mut [u8]) -> Result<(), CliError> {
    if known_zero {
        buf.fill(0);
        return Ok(());
    }
    disk.read(at, buf).map_err(|e| {
        context(
            e,
            format!(
                "Error while reading offset {at} of {}",
                disk.path().display()
            ),
        )
    })
}

/// The run of `disk` at `at` (at most `max` bytes).
fn run_at(disk: &mut Disk, at: u64, max: u64) -> Result<Extent, CliError> {
    disk.extent(at, max).map_err(|e| {
        context(
            e,
            format!(
                "Error while mapping offset {at} of {}",
                disk.path().display()
            ),
        )
    })
}

/// The first differing sector of `a` and `b` below `end`; `a` is read ahead on its own
/// thread and handed back.
pub fn first_difference(a: Disk, b: &mut Disk, end: u64) -> Result<(Disk, Option<u64>), CliError> {
    let mut stream = Stream::start(a, vec![(0, end)], ZERO_BLOCK);
    let mut found = None;
    let mut buf_b = Vec::new();
    let compared = stream.for_each(|piece| {
        let (at, spare) = match piece {
            Piece::Zero { offset, len } => (first_non_zero_in(b, offset, offset + len)?, None),
            Piece::Data { offset, bytes } => {
                let at = first_mismatch(b, offset, &bytes, &mut buf_b)?;
                (at, Some(bytes))
            }
        };
        if at.is_some() {
            found = at;
            // Stops the reader: the rest need not be read.
            return Err(CliError::Exit(EXIT_DIFFERENT));
        }
        Ok(spare)
    });
    let a = stream.finish()?;
    match compared {
        Err(CliError::Exit(EXIT_DIFFERENT)) if found.is_some() => Ok((a, found)),
        Err(e) => Err(e),
        Ok(()) => Ok((a, None)),
    }
}

/// The first sector where `disk` differs from `bytes` (guest bytes at `start`).
fn first_mismatch(
    disk: &mut Disk,
    start: u64,
    bytes: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Option<u64>, CliError> {
    let end = start + bytes.len() as u64;
    let mut at = start;
    while at < end {
        let run = run_at(disk, at, end - at)?;
        let n = run.length.min(end - at).min(COMPARE_CHUNK) as usize;
        let expected = &bytes[(at - start) as usize..(at - start) as usize + n];
        buf.resize(n, 0);
        fill(disk, at, run.zero, buf)?;
        if buf[..] != *expected {
            let i = buf
                .iter()
                .zip(expected)
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Ok(Some(sector_of(at + i as u64)));
        }
        at += n as u64;
    }
    Ok(None)
}

/// The first sector of `disk` in `[start, end)` that does not read as zeros.
fn first_non_zero_in(disk: &mut Disk, start: u64, end: u64) -> Result<Option<u64>, CliError> {
    let mut buf = Vec::new();
    let mut at = start;
    while at < end {
        let run = run_at(disk, at, end - at)?;
        let len = run.length.min(end - at);
        if run.zero {
            at += len;
            continue;
        }
        let n = len.min(COMPARE_CHUNK) as usize;
        buf.resize(n, 0);
        fill(disk, at, false, &mut buf)?;
        if !is_zero(&buf) {
            let i = buf.iter().position(|&x| x != 0).unwrap_or(0);
            return Ok(Some(sector_of(at + i as u64)));
        }
        at += n as u64;
    }
    Ok(None)
}

/// The first sector of `disk` from `start` on that does not read as zeros.
pub fn first_non_zero(disk: &mut Disk, start: u64) -> Result<Option<u64>, CliError> {
    let end = disk.size();
    first_non_zero_in(disk, start, end)
}
