//! Opening the files a repair writes: refused when read-only (by permission bits too,
//! which root would otherwise override) or used by another process, and locked for
//! writing while the repair runs. What is written, and in which order, is the core's
//! (`fvd_core::check`).

use crate::cli::error::CliError;
use crate::host::lock::{FileLock, Usage};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Whether `err` means the file cannot be written (as opposed to not found, ...).
fn is_read_only(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied || err.raw_os_error() == Some(libc::EROFS)
}

/// A file opened for repairs, locked for writing while it lives.
pub struct Writable {
    file: File,
    _lock: FileLock,
}

impl std::ops::Deref for Writable {
    type Target = File;

    fn deref(&self) -> &File {
        &self.file
    }
}

/// Opens `path` for writing, refusing read-only files (by permission bits too, which root
/// would otherwise override) with a clear message, and files another process uses.
pub fn open_writable(path: &Path, what: &str) -> Result<Writable, CliError> {
    let read_only = |reason: String| {
        CliError::Invalid(format!(
            "Cannot repair '{}': the {what} is read-only ({reason})",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| CliError::open(path, e))?;
    if meta.permissions().readonly() {
        return Err(read_only("no write permission".into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            if is_read_only(&e) {
                read_only(crate::cli::error::io_reason(&e))
            } else {
                CliError::open(path, e)
            }
        })?;
    let lock = FileLock::acquire(&file, path, Usage::WRITE)?;
    Ok(Writable { file, _lock: lock })
}
