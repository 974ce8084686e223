//! Core's consistency check of the overlay, on demand: the scanner says what to read, this
//! module reads it from the overlay partition. Read-only (a step that would write is
//! refused), in work memory the caller gives.

use crate::driver::Layout;
use crate::medium::{Medium, Partition};
use embedded_io::{Read, Seek, SeekFrom};
use fvd_core::check::fvd::{FvdCheck, FvdFiles, FvdSummary};
use fvd_core::check::{CheckError, Checker, FileId, Finding, Report, Step};
use fvd_core::fvd::RAW_HEADER_LEN;

/// Why the check could not run to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckFailure {
    /// Core refused to start (not an FVD image, too little memory, ...).
    Start(CheckError),
    /// The medium failed, or the scanner asked for a file the overlay does not have.
    Io,
    /// The scanner asked to write (a read-only check never should).
    WriteRefused,
}

/// What the check found: core's summary, and the first finding, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The numbers (corruptions, leaks, dirty, journal records, ...).
    pub summary: FvdSummary,
    /// The first finding streamed, for a log line.
    pub first_finding: Option<Finding>,
}

impl CheckOutcome {
    /// No corruption and no leak.
    pub fn is_clean(&self) -> bool {
        self.summary.counts.corruptions == 0 && self.summary.counts.leaks == 0
    }
}

fn read_exact_at<D: Medium>(
    image: &mut Partition<'_, D>,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), CheckFailure> {
    buf.fill(0);
    image
        .seek(SeekFrom::Start(offset))
        .map_err(|_| CheckFailure::Io)?;
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        match image.read(rest).map_err(|_| CheckFailure::Io)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(())
}

/// Checks the overlay of `layout` on `medium` (closed, or left as a power cut left it)
/// with `memory` (at least `fvd_core::check::fvd::MIN_MEMORY` bytes) of work memory.
pub fn check<D: Medium>(
    medium: &D,
    layout: Layout,
    memory: &mut [u8],
) -> Result<CheckOutcome, CheckFailure> {
    let mut image = Partition::new(medium, layout.overlay);
    let mut header = [0u8; RAW_HEADER_LEN];
    read_exact_at(&mut image, 0, &mut header)?;
    let files = FvdFiles {
        image_len: layout.overlay.len(),
        data_len: None,
    };
    let scanner = FvdCheck::new(&header, files, memory).map_err(CheckFailure::Start)?;
    let mut checker = Checker::Fvd(scanner);
    let mut first_finding = None;
    loop {
        match checker.poll() {
            Step::Read {
                file: FileId::Image,
                offset,
                ..
            } => {
                read_exact_at(&mut image, offset, checker.io_mut())?;
                checker.complete();
            }
            Step::Read { .. } | Step::SetLength { .. } => return Err(CheckFailure::Io),
            Step::Write { .. } => return Err(CheckFailure::WriteRefused),
            Step::Flush { .. } => checker.complete(),
            Step::Finding(finding) => {
                first_finding = first_finding.or(Some(finding));
            }
            Step::Done(Report::Fvd(summary)) => {
                return Ok(CheckOutcome {
                    summary,
                    first_finding,
                })
            }
            Step::Done(_) => return Err(CheckFailure::Io),
            _ => {}
        }
    }
}
