//! The files an engine's commands run against, behind one small trait so the same driver
//! serves real files (the CLI), in-memory files (tests) and simulated power cuts.

use fvd_core::engine::{FileId, IoError};
use std::io;

/// How the engine hears of a failed storage operation: no space for a full file system
/// and for a file that may not grow (ENOSPC, EFBIG), a plain failure otherwise.
pub fn engine_error(error: &io::Error) -> IoError {
    match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EFBIG) => IoError::NoSpace,
        _ => IoError::Failed,
    }
}

/// Positioned I/O on the files of one image. Reads past the end of a file fill zeros.
pub trait Storage {
    /// Reads `buf.len()` bytes at `offset` of `file`.
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf` at `offset` of `file`, extending it when needed.
    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeros (`unmap`: the range may be deallocated).
    fn write_zeroes(&mut self, file: FileId, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self, file: FileId) -> io::Result<()>;
    /// Sets the length of `file`.
    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()>;
    /// The length of `file`, or `None` when the image has no such file.
    fn len(&mut self, file: FileId) -> io::Result<Option<u64>>;
    /// True when a failed flush may have lost the writes before it while a later flush
    /// succeeds: a page cache (Linux marks the pages clean after a write-back error). The
    /// driver then fails every later flush of that file until it is opened again.
    fn failed_flush_loses_writes(&self) -> bool {
        false
    }
}

/// The error of every flush after a failed one on a storage whose failed flush may have
/// lost writes (see [`Storage::failed_flush_loses_writes`]).
pub fn earlier_flush_failed() -> io::Error {
    io::Error::other(
        "an earlier flush of this file failed, so data written before it may not be on disk; \
         reopen the image to go on",
    )
}

/// Writes zeros with plain writes, `ZERO_CHUNK` bytes at a time (for storages without a
/// cheaper way).
pub fn write_zeroes_by_writing<S: Storage + ?Sized>(
    storage: &mut S,
    file: FileId,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    const ZERO_CHUNK: usize = 1 << 20;
    static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64) as usize;
        storage.write_at(file, offset + done, &ZEROS[..n])?;
        done += n as u64;
    }
    Ok(())
}

impl<S: Storage + ?Sized> Storage for Box<S> {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(file, offset, buf)
    }
    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        (**self).write_at(file, offset, buf)
    }
    fn write_zeroes(&mut self, file: FileId, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        (**self).write_zeroes(file, offset, len, unmap)
    }
    fn flush(&mut self, file: FileId) -> io::Result<()> {
        (**self).flush(file)
    }
    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        (**self).set_len(file, len)
    }
    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        (**self).len(file)
    }
    fn failed_flush_loses_writes(&self) -> bool {
        (**self).failed_flush_loses_writes()
    }
}
