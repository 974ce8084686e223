//! Writing new files so that a failure leaves nothing behind: each file is built in a
//! randomly named temporary file beside its target, synced, checked, and only then renamed
//! into place (refusing to replace an existing file unless told to). Also lays an FVD
//! image's metadata regions into such a file.

use super::error::CliError;
use super::image::{header_reason, read_at_most};
use crate::host::gate::open_no_block;
use crate::host::lock::{FileLock, Usage};
use fvd_core::fvd::create::{initial_bytes_at, metadata_len};
use fvd_core::fvd::{parse, RawHeader, RAW_HEADER_LEN};
use fvd_core::zeros::{zero_runs, HOLE_BLOCK};
use std::fs::{File, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// Bytes written per call when filling a region.
const FILL_CHUNK: usize = 1 << 20;

/// A fully written, synced temporary file waiting to be renamed to its target. Dropping
/// it removes the temporary file.
#[derive(Debug)]
pub struct Staged {
    temp: NamedTempFile,
    target: PathBuf,
}

/// The directory a file at `target` lives in (`.` for a bare name).
fn parent_dir(target: &Path) -> &Path {
    match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn temp_beside(target: &Path) -> Result<NamedTempFile, CliError> {
    let name = target
        .file_name()
        .ok_or_else(|| CliError::Usage(format!("'{}' is not a file name", target.display())))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        // Like any newly created file: 0666 less the umask.
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(parent_dir(target))
        .map_err(|e| CliError::io("create", target, e))
}

fn write_at(file: &File, target: &Path, bytes: &[u8], offset: u64) -> Result<(), CliError> {
    file.write_all_at(bytes, offset)
        .map_err(|e| CliError::io("write", target, e))
}

/// Writes the image described by `header` into a temporary file beside `target`: its
/// metadata as core lays it out ([`initial_bytes_at`]: header, EMPTY table, zeroed bitmap
/// and journal), written in pieces, all-zero 4 KiB blocks left as holes, for a file of
/// [`metadata_len`] bytes. The file is synced, then read back and validated.
pub fn stage_image(target: &Path, header: &RawHeader) -> Result<Staged, CliError> {
    let temp = temp_beside(target)?;
    let file = temp.as_file();

    let len = metadata_len(header);
    let mut piece = vec![0u8; FILL_CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(FILL_CHUNK as u64) as usize;
        let bytes = &mut piece[..n];
        initial_bytes_at(header, at, bytes);
        // Only the file-system blocks holding something are written: the zeros of the
        // table, bitmap and journal stay holes, so a new image takes a few KiB on disk.
        for run in zero_runs(at, bytes, HOLE_BLOCK).filter(|run| !run.zero) {
            let from = (run.start - at) as usize;
            let to = (run.end - at) as usize;
            write_at(file, target, &bytes[from..to], run.start)?;
        }
        at += n as u64;
    }
    file.set_len(len)
        .map_err(|e| CliError::io("write", target, e))?;
    file.sync_all()
        .map_err(|e| CliError::io("sync", target, e))?;

    // Self-check: what is on disk must be an image the validator accepts.
    let reread = File::open(temp.path()).map_err(|e| CliError::io("read", target, e))?;
    let on_disk_len = reread
        .metadata()
        .map_err(|e| CliError::io("read", target, e))?
        .len();
    let bytes = read_at_most(&reread, target, 0, RAW_HEADER_LEN)?;
    if let Err(err) = parse(&bytes, on_disk_len) {
        return Err(CliError::Invalid(format!(
            "internal error: the new image fails validation: {}",
            header_reason(&err)
        )));
    }
    Ok(Staged {
        temp,
        target: target.to_path_buf(),
    })
}

/// Creates an empty temporary file beside `target` (a new, empty data file).
pub fn stage_empty(target: &Path) -> Result<Staged, CliError> {
    let temp = temp_beside(target)?;
    temp.as_file()
        .sync_all()
        .map_err(|e| CliError::io("sync", target, e))?;
    Ok(Staged {
        temp,
        target: target.to_path_buf(),
    })
}

/// Locks the existing regular file at `target` for writing, if there is one: fails when
/// another process uses it.
fn lock_existing(target: &Path) -> Result<Option<FileLock>, CliError> {
    match std::fs::metadata(target) {
        Ok(meta) if meta.is_file() => {
            let file = open_no_block(target, false).map_err(|e| CliError::open(target, e))?;
            Ok(Some(FileLock::acquire(&file, target, Usage::WRITE)?))
        }
        _ => Ok(None),
    }
}

impl Staged {
    /// Where the file will be renamed to.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temporary file's current path (where it can be filled before the commit).
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// The open temporary file (read-write).
    pub fn file(&self) -> &File {
        self.temp.as_file()
    }

    /// Renames the temporary file to its target. Without `overwrite` an existing target
    /// is an error (checked atomically by the rename itself); either way, on failure the
    /// temporary file is removed and the target is untouched.
    pub fn commit(self, overwrite: bool) -> Result<(), CliError> {
        let Staged { temp, target } = self;
        // A file another process uses is not replaced under it (as qemu-img create
        // refuses to truncate an image in use).
        let _in_use = if overwrite {
            lock_existing(&target)?
        } else {
            None
        };
        let result = if overwrite {
            temp.persist(&target)
        } else {
            temp.persist_noclobber(&target)
        };
        if let Err(err) = result {
            // `err.file` is dropped here, which deletes the temporary file.
            return Err(if err.error.kind() == io::ErrorKind::AlreadyExists {
                CliError::Exists { path: target }
            } else {
                CliError::io("create", &target, err.error)
            });
        }
        // Make the rename itself durable. The file is complete either way, so a
        // directory that cannot be synced is not worth failing over.
        if let Ok(dir) = File::open(parent_dir(&target)) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}
