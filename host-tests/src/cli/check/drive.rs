//! Running a core check scanner (`fvd_core::check`) against open files: the host's whole
//! part in `check` is this I/O loop. Reads past the end of a file fill zeros; a write,
//! flush or truncation is done when the scanner asks (only a repair asks).

use super::report::Listed;
use crate::cli::error::CliError;
use fvd_core::check::{Checker, FileId, Finding, Repair, Report, Step};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Work memory a check gets: the window of physical chunks or clusters it marks in one
/// table walk grows with it (16 MiB holds about 48 Mi chunks: one walk for images up to
/// 3 TiB of 64 KiB chunks). The check's memory never grows past it.
pub const WORK_MEMORY: usize = 16 << 20;

/// A file and the path it was opened by (for messages).
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The open file.
    pub file: &'a File,
    /// Its path.
    pub path: &'a Path,
}

/// The files a scanner reads and (in a repair) writes.
#[derive(Clone, Copy)]
pub struct Files<'a> {
    /// The image file.
    pub image: Target<'a>,
    /// The separate data file, when the image names one and it is open.
    pub data: Option<Target<'a>>,
}

impl<'a> Files<'a> {
    fn get(&self, file: FileId) -> Result<Target<'a>, CliError> {
        match file {
            FileId::Image => Ok(self.image),
            _ => self.data.ok_or_else(|| {
                CliError::Invalid("the check asked for a file that is not open".into())
            }),
        }
    }
}

/// What a scanner reports besides I/O.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// A corruption.
    Finding(Finding),
    /// Leaked units `[start, end)`.
    Leak(u64, u64),
    /// A repair did this.
    Repaired(Repair),
}

/// Fills `buf` from `offset` of `file`, zeros past its end.
fn fill(file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<(), CliError> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = offset.saturating_add(filled as u64);
        match file.read_at(&mut buf[filled..], at) {
            Ok(0) => {
                buf[filled..].fill(0);
                break;
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CliError::io("read", path, e)),
        }
    }
    Ok(())
}

/// Runs `checker` to its end over `files`, handing each finding, leak and repair line to
/// `sink` as it comes; returns the scanner's report.
pub fn run<M: AsRef<[u8]> + AsMut<[u8]>>(
    checker: &mut Checker<M>,
    files: &Files<'_>,
    sink: &mut dyn FnMut(Event) -> Result<(), CliError>,
) -> Result<Report, CliError> {
    loop {
        match checker.poll() {
            Step::Read { file, offset, .. } => {
                let t = files.get(file)?;
                fill(t.file, t.path, offset, checker.io_mut())?;
            }
            Step::Write { file, offset, .. } => {
                let t = files.get(file)?;
                t.file
                    .write_all_at(checker.io(), offset)
                    .map_err(|e| CliError::io("write", t.path, e))?;
            }
            Step::Flush { file } => {
                let t = files.get(file)?;
                t.file
                    .sync_data()
                    .map_err(|e| CliError::io("sync", t.path, e))?;
            }
            Step::SetLength { file, len } => {
                let t = files.get(file)?;
                t.file
                    .set_len(len)
                    .and_then(|()| t.file.sync_all())
                    .map_err(|e| CliError::io("truncate", t.path, e))?;
            }
            Step::Finding(finding) => {
                sink(Event::Finding(finding))?;
                continue;
            }
            Step::Leak { start, end } => {
                sink(Event::Leak(start, end))?;
                continue;
            }
            Step::Repaired(repair) => {
                sink(Event::Repaired(repair))?;
                continue;
            }
            Step::Done(report) => return Ok(report),
            // A step a newer core asks for that this host cannot perform.
            other => {
                return Err(CliError::Image(format!(
                    "the check asked for {other:?}, which this fvd-img cannot do"
                )))
            }
        }
        checker.complete();
    }
}

/// What a check run does with the findings and leaks it reports.
pub enum Show<'a> {
    /// Prints each as it comes.
    Print(&'a mut dyn Write),
    /// Keeps them for a JSON report.
    Collect,
    /// Only the numbers.
    Silent,
}

/// The first findings and leaked runs of a run (for JSON), and how many were left out.
#[derive(Default)]
pub struct Lists {
    /// Findings.
    pub findings: Listed<Finding>,
    /// Leaked runs, `[start, end)`.
    pub leaks: Listed<(u64, u64)>,
}

/// Runs a check (no repair), showing what it finds as `show` says; `print` writes one
/// finding or leak as a line.
pub fn check<M: AsRef<[u8]> + AsMut<[u8]>>(
    mut checker: Checker<M>,
    files: &Files<'_>,
    mut show: Show<'_>,
    print: &dyn Fn(Event, &mut dyn Write) -> io::Result<()>,
) -> Result<(Report, Lists), CliError> {
    let mut lists = Lists::default();
    let report = run(&mut checker, files, &mut |event| match &mut show {
        Show::Print(out) => print(event, &mut **out).map_err(CliError::Output),
        Show::Collect => {
            match event {
                Event::Finding(f) => lists.findings.push(f),
                Event::Leak(start, end) => lists.leaks.push((start, end)),
                Event::Repaired(_) => {}
            }
            Ok(())
        }
        Show::Silent => Ok(()),
    })?;
    Ok((report, lists))
}
