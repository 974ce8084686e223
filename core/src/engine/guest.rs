//! Guest requests as both format engines see them: the request kinds (plus the internal
//! copy-on-read fill) and the checks every submission passes before it takes a slot.

use super::types::{Request, SubmitError};
use super::MAX_DATA_REQUEST;
use crate::units::SECTOR_SIZE;

/// What a request slot carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Zeroes {
        unmap: bool,
    },
    Flush,
    Map,
    /// A copy-on-read fill (internal: no completion event).
    Fill,
}

impl Kind {
    /// Changes guest data (and so is ordered against other writes).
    pub(crate) fn writes(self) -> bool {
        matches!(self, Kind::Write | Kind::Zeroes { .. } | Kind::Fill)
    }
}

/// Checks `request` against a disk of `disk_size` bytes opened `writable`; returns its
/// kind and byte range `[start, end)`.
pub(crate) fn check(
    request: Request,
    writable: bool,
    disk_size: u64,
) -> Result<(Kind, u64, u64), SubmitError> {
    let (kind, start, len) = match request {
        Request::Read { offset, len } => (Kind::Read, offset, len),
        Request::Write { offset, len } => (Kind::Write, offset, len),
        Request::WriteZeroes { offset, len } => (Kind::Zeroes { unmap: false }, offset, len),
        Request::Discard { offset, len } => (Kind::Zeroes { unmap: true }, offset, len),
        Request::Flush => (Kind::Flush, 0, 0),
        Request::Map { offset, len } => (Kind::Map, offset, len),
    };
    if kind.writes() && !writable {
        return Err(SubmitError::ReadOnly);
    }
    if start % SECTOR_SIZE != 0 || len % SECTOR_SIZE != 0 {
        return Err(SubmitError::Unaligned);
    }
    if matches!(kind, Kind::Read | Kind::Write) && len > MAX_DATA_REQUEST {
        return Err(SubmitError::TooLarge);
    }
    let end = start.checked_add(len).ok_or(SubmitError::OutOfRange)?;
    if end > disk_size {
        return Err(SubmitError::OutOfRange);
    }
    Ok((kind, start, end))
}
