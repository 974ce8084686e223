//! qemu-io's asynchronous commands: `aio_read` and `aio_write` queue requests in the
//! engine without waiting; `aio_flush` (or the end of the commands) waits for them in
//! submission order, reports each, then flushes.

use super::super::disk::Pending;
use super::super::error::CliError;
use super::report::{dump, report};
use super::words::{check_length, getopt, offset_and_len, parse_pattern, TooLong};
use super::{Session, DEFAULT_PATTERN};
use std::time::Instant;

/// A request queued by `aio_read` or `aio_write`.
pub struct Queued {
    op: AioOp,
    offset: u64,
    len: u64,
    started: Instant,
    pending: Pending,
}

/// What a queued request is, with the options its report needs.
pub enum AioOp {
    Read {
        pattern: Option<u8>,
        verbose: bool,
        quiet: bool,
    },
    Write {
        quiet: bool,
    },
}

impl Session<'_> {
    pub(super) fn aio_read(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "vq", "P").map_err(|e| format!("aio_read: {e}"))?;
        let pattern = parsed.value('P').map(parse_pattern).transpose()?;
        let (offset, len) = offset_and_len("aio_read", &parsed)?;
        check_length(&parsed, len, TooLong::Argument)?;
        self.check_alignment("aio_read", offset, len)?;
        if len == 0 {
            return Err("aio_read: length must not be 0".into());
        }
        let started = Instant::now();
        let pending = self
            .disk()?
            .submit_read(offset, len)
            .map_err(|e| format!("aio_read failed: {e}"))?;
        self.queue.push_back(Queued {
            op: AioOp::Read {
                pattern,
                verbose: parsed.flag('v'),
                quiet: parsed.flag('q'),
            },
            offset,
            len,
            started,
            pending,
        });
        Ok(())
    }

    pub(super) fn aio_write(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "zq", "P").map_err(|e| format!("aio_write: {e}"))?;
        let zeroes = parsed.flag('z');
        if zeroes && parsed.value('P').is_some() {
            return Err("aio_write: -z and -P cannot be specified at the same time".into());
        }
        let pattern = parsed
            .value('P')
            .map(parse_pattern)
            .transpose()?
            .unwrap_or(DEFAULT_PATTERN);
        let (offset, len) = offset_and_len("aio_write", &parsed)?;
        if !zeroes {
            // qemu-io writes zeros of any length without a buffer.
            check_length(&parsed, len, TooLong::Argument)?;
        }
        self.check_alignment("aio_write", offset, len)?;
        if len == 0 {
            return Err("aio_write: length must not be 0".into());
        }
        let started = Instant::now();
        let disk = self.disk()?;
        let pending = if zeroes {
            disk.submit_write_zeroes(offset, len)
        } else {
            disk.check_write(offset, len)
                .and_then(|()| disk.submit_write(offset, vec![pattern; len as usize]))
        }
        .map_err(|e| format!("aio_write failed: {e}"))?;
        self.queue.push_back(Queued {
            op: AioOp::Write {
                quiet: parsed.flag('q'),
            },
            offset,
            len,
            started,
            pending,
        });
        Ok(())
    }

    /// Waits for every queued request in submission order, reporting each.
    pub(super) fn drain(&mut self) -> Result<(), CliError> {
        let mut wrote = false;
        while let Some(queued) = self.queue.pop_front() {
            let result = match self.disk.as_mut() {
                Some(disk) => disk.wait(queued.pending),
                None => Err(CliError::Image("no image is open".into())),
            };
            let elapsed = queued.started.elapsed();
            match (queued.op, result) {
                (AioOp::Read { .. }, Err(e)) => self.fail(&format!("aio_read failed: {e}"))?,
                (AioOp::Write { .. }, Err(e)) => self.fail(&format!("aio_write failed: {e}"))?,
                (
                    AioOp::Read {
                        pattern,
                        verbose,
                        quiet,
                    },
                    Ok(bytes),
                ) => {
                    if pattern.is_some_and(|p| bytes.iter().any(|&b| b != p)) {
                        self.mismatch(queued.offset, queued.len)?;
                    }
                    if verbose {
                        dump(self.out, queued.offset, &bytes)?;
                    }
                    if !quiet {
                        self.print(&report("read", queued.offset, queued.len, 1, elapsed))?;
                    }
                }
                (AioOp::Write { quiet }, Ok(_)) => {
                    wrote = true;
                    if !quiet {
                        self.print(&report("wrote", queued.offset, queued.len, 1, elapsed))?;
                    }
                }
            }
        }
        if wrote && self.write_through {
            if let Some(Err(e)) = self.disk.as_mut().map(|disk| disk.flush()) {
                self.fail(&format!("flush failed: {e}"))?;
            }
        }
        Ok(())
    }

    pub(super) fn aio_flush(&mut self, words: &[&str]) -> Result<(), String> {
        if !words.is_empty() {
            return Err("aio_flush: takes no arguments".into());
        }
        self.drain().map_err(Self::output_error)?;
        self.disk()?
            .flush()
            .map_err(|e| format!("aio_flush failed: {e}"))
    }
}
