//! The raw mode: the same pool and the same buffers over a plain file without an engine,
//! so benchmarks compare like with like. Overlapping writes in flight are not ordered
//! (the engine does that).

use super::pool::{Dest, Files, Pool, SharedBuf, Src, Target, Work};
use super::{Executor, ExecutorError, ExecutorOptions, Mode};
use crate::host::files::ImageOpenError;
use crate::host::lock::{FileLock, Usage};
use fvd_core::engine::{Request, SubmitError};
use std::collections::HashMap;
use std::fs::OpenOptions as FsOpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex};

impl Executor {
    /// Opens the plain file at `path` with no engine: requests become `pread`/`pwrite`
    /// on the same worker pool (reads past the end fill zeros; writes extend the file).
    pub fn open_raw(path: &Path, options: ExecutorOptions) -> Result<Executor, ExecutorError> {
        let image = FsOpenOptions::new()
            .read(true)
            .write(options.writable)
            .open(path)?;
        let usage = if options.writable {
            Usage::RAW_WRITE
        } else {
            Usage::RAW_READ
        };
        let lock = FileLock::acquire(&image, path, usage)
            .map_err(|e| Box::new(ImageOpenError::Gate(e.into())))?;
        let len = image.metadata()?.len();
        let files = Files {
            image,
            data: None,
            base: None,
            base_len: 0,
            faults: None,
            flush_failed: Default::default(),
            growing: Default::default(),
        };
        Ok(Executor::start(
            Mode::Raw {
                len,
                requests: HashMap::new(),
                _lock: lock,
            },
            Pool::start(vec![files], options.workers),
            options,
        ))
    }
}

/// The job for a raw-mode request.
pub(super) fn raw_work(
    request: Request,
    buffer: Vec<u8>,
    writable: bool,
) -> Result<(Target, Work, SharedBuf), ExecutorError> {
    let writes = !matches!(request, Request::Read { .. } | Request::Flush);
    if writes && !writable {
        return Err(SubmitError::ReadOnly.into());
    }
    let work = |buf: &SharedBuf| match request {
        Request::Read { offset, len } => Ok(Work::Read {
            offset,
            len: len as usize,
            into: Dest::Guest(buf.clone(), 0),
        }),
        Request::Write { offset, len } => Ok(Work::Write {
            offset,
            len: len as usize,
            from: Src::Guest(buf.clone(), 0),
        }),
        Request::WriteZeroes { offset, len } => Ok(Work::WriteZeroes {
            offset,
            len,
            unmap: false,
        }),
        Request::Discard { offset, len } => Ok(Work::WriteZeroes {
            offset,
            len,
            unmap: true,
        }),
        Request::Flush => Ok(Work::Flush),
        Request::Map { .. } => Err(ExecutorError::Submit(SubmitError::NotOpen)),
    };
    let buf = Arc::new(Mutex::new(buffer));
    let work = work(&buf)?;
    Ok((Target::Image, work, buf))
}
