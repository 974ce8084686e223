//! Requests in flight on a disk: large transfers cut into pieces the engine takes at
//! once, submitted without waiting, and waited for by [`Pending`] handle.

use super::{driver_error, host_error, Backend, Disk};
use crate::cli::error::CliError;
use crate::host::driver::Driver;
use crate::host::files::FileStorage;
use crate::host::storage::Storage;
use fvd_core::engine::{FileId, Request, RequestId, MAX_DATA_REQUEST};

/// A request queued with [`Disk::submit_read`] and friends, until [`Disk::wait`].
pub struct Pending(PendingState);

enum PendingState {
    /// Engine requests in flight, in order.
    Engine(Vec<RequestId>),
    /// Performed already (raw files): the outcome.
    Done(Result<Vec<u8>, CliError>),
}

impl Disk {
    /// Queues engine requests covering `len` bytes at `offset`, each with its buffer.
    fn submit_pieces(
        driver: &mut Driver<FileStorage>,
        offset: u64,
        len: u64,
        mut make: impl FnMut(u64, u64) -> (Request, Vec<u8>),
    ) -> Result<Pending, CliError> {
        let mut ids = Vec::new();
        let mut at = offset;
        let end = offset + len;
        loop {
            let n = (end - at).min(MAX_DATA_REQUEST);
            let (request, buffer) = make(at, n);
            match driver.submit(request, buffer) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // Let the pieces already queued finish before reporting.
                    for id in ids {
                        let _ = driver.wait(id);
                    }
                    return Err(driver_error(e));
                }
            }
            at += n;
            if at >= end {
                return Ok(Pending(PendingState::Engine(ids)));
            }
        }
    }

    /// Queues a read of `len` bytes at `offset` without waiting for it (raw files are
    /// read at once).
    pub fn submit_read(&mut self, offset: u64, len: u64) -> Result<Pending, CliError> {
        self.check_range(offset, len)?;
        match &mut self.backend {
            Backend::Raw { storage } => {
                let mut buf = vec![0u8; len as usize];
                let result = storage
                    .read_at(FileId::Image, offset, &mut buf)
                    .map(|()| buf)
                    .map_err(host_error);
                Ok(Pending(PendingState::Done(result)))
            }
            Backend::Fvd { driver, .. } => Self::submit_pieces(driver, offset, len, |at, n| {
                (Request::Read { offset: at, len: n }, vec![0u8; n as usize])
            }),
        }
    }

    /// Queues a write of `data` at `offset` without waiting for it (raw files are written
    /// at once).
    pub fn submit_write(&mut self, offset: u64, data: Vec<u8>) -> Result<Pending, CliError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        self.check_first_sector(offset, &data)?;
        match &mut self.backend {
            Backend::Raw { storage } => {
                let result = storage
                    .write_at(FileId::Image, offset, &data)
                    .map(|()| Vec::new())
                    .map_err(host_error);
                Ok(Pending(PendingState::Done(result)))
            }
            Backend::Fvd { driver, .. } => {
                let len = data.len() as u64;
                Self::submit_pieces(driver, offset, len, |at, n| {
                    let from = (at - offset) as usize;
                    (
                        Request::Write { offset: at, len: n },
                        data[from..from + n as usize].to_vec(),
                    )
                })
            }
        }
    }

    /// Queues a write-zeroes of `len` bytes at `offset` without waiting for it.
    pub fn submit_write_zeroes(&mut self, offset: u64, len: u64) -> Result<Pending, CliError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        match &mut self.backend {
            Backend::Raw { storage } => {
                let result = storage
                    .write_zeroes(FileId::Image, offset, len, false)
                    .map(|()| Vec::new())
                    .map_err(host_error);
                Ok(Pending(PendingState::Done(result)))
            }
            Backend::Fvd { driver, .. } => driver
                .submit(Request::WriteZeroes { offset, len }, Vec::new())
                .map(|id| Pending(PendingState::Engine(vec![id])))
                .map_err(driver_error),
        }
    }

    /// Waits for a queued request; returns the bytes read (empty for writes).
    pub fn wait(&mut self, pending: Pending) -> Result<Vec<u8>, CliError> {
        match pending.0 {
            PendingState::Done(result) => result,
            PendingState::Engine(ids) => {
                let Backend::Fvd { driver, .. } = &mut self.backend else {
                    return Err(CliError::Image(
                        "internal error: request of another disk".into(),
                    ));
                };
                let mut bytes = Vec::new();
                let mut failure = None;
                for id in ids {
                    match driver.wait(id).map_err(driver_error) {
                        Ok((Ok(_), buffer)) => bytes.extend_from_slice(&buffer),
                        Ok((Err(e), _)) => {
                            let e = driver.request_error(e);
                            failure.get_or_insert(CliError::Image(e.to_string()));
                        }
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    }
                }
                match failure {
                    Some(e) => Err(e),
                    None => Ok(bytes),
                }
            }
        }
    }
}
