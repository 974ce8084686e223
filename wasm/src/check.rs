//! The consistency check (`fvd-img check`'s findings and counts) of the image the page
//! opened, run by core's sans-IO scanner one file read at a time, as [`crate::session`]
//! runs the engine: [`Check::next_read`] says what to read, the page reads it from
//! `File.slice` and hands it back with [`Check::complete_read`]. Never a write: the page
//! only checks. Memory: [`WORK_MEMORY`] of scanner work memory plus the first
//! [`MAX_LISTED`] findings as text.

use crate::session::length;
use fvd_core::check::fvd::{FvdCheck, FvdFiles};
use fvd_core::check::qed::QedCheck;
use fvd_core::check::{Checker, FileId, Report, Step};
use fvd_core::probe::{probe, Probe};
use wasm_bindgen::prelude::*;

/// Scanner work memory (the CLI gives 16 MiB; a bigger image takes more table passes).
pub const WORK_MEMORY: usize = 4 << 20;
/// Findings kept as text (all are counted).
pub const MAX_LISTED: usize = 200;

/// A running check.
#[wasm_bindgen]
pub struct Check {
    checker: Checker<Vec<u8>>,
    pending: Option<(FileId, u64, usize)>,
    findings: Vec<String>,
    corruptions: u64,
    leaks: u64,
    report: Option<Report>,
}

#[wasm_bindgen]
impl Check {
    /// A check of the image whose first bytes (at least its header) are `first`, in a
    /// file of `image_len` bytes, with a data file of `data_len` bytes if it has one.
    #[wasm_bindgen(constructor)]
    pub fn new(first: &[u8], image_len: f64, data_len: Option<f64>) -> Result<Check, JsError> {
        let image_len = length(image_len).ok_or_else(|| JsError::new("bad image length"))?;
        let data_len = match data_len {
            Some(d) => Some(length(d).ok_or_else(|| JsError::new("bad data file length"))?),
            None => None,
        };
        let memory = vec![0u8; WORK_MEMORY];
        let error = |e: fvd_core::check::CheckError| JsError::new(&e.to_string());
        let checker = match probe(first) {
            Probe::Fvd => Checker::Fvd(
                FvdCheck::new(
                    first,
                    FvdFiles {
                        image_len,
                        data_len,
                    },
                    memory,
                )
                .map_err(error)?,
            ),
            Probe::Qed => Checker::Qed(QedCheck::new(first, image_len, memory).map_err(error)?),
            other => return Err(JsError::new(&format!("cannot check {other}"))),
        };
        Ok(Check {
            checker,
            pending: None,
            findings: Vec::new(),
            corruptions: 0,
            leaks: 0,
            report: None,
        })
    }

    /// The next read the check needs (`file` is `image` or `data`), or nothing once done.
    pub fn next_read(&mut self) -> Result<Option<CheckRead>, JsError> {
        loop {
            if let Some((file, offset, len)) = self.pending {
                return Ok(Some(CheckRead {
                    data: file == FileId::Data,
                    offset: offset as f64,
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                }));
            }
            if self.report.is_some() {
                return Ok(None);
            }
            match self.checker.poll() {
                Step::Read { file, offset, len } => self.pending = Some((file, offset, len)),
                Step::Finding(f) => {
                    self.corruptions = self.corruptions.saturating_add(1);
                    if self.findings.len() < MAX_LISTED {
                        self.findings.push(f.to_string());
                    }
                }
                Step::Leak { start, end } => {
                    self.leaks = self.leaks.saturating_add(end.saturating_sub(start));
                }
                Step::Done(report) => self.report = Some(report),
                // A plain check never writes; anything else is a step this page cannot do.
                other => return Err(JsError::new(&format!("the check asked for {other:?}"))),
            }
        }
    }

    /// Fulfils the pending read (fewer bytes at the end of the file: the rest is zeros).
    pub fn complete_read(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        if self.pending.take().is_none() {
            return Err(JsError::new("no check read is outstanding"));
        }
        let io = self.checker.io_mut();
        let n = bytes.len().min(io.len());
        io[..n].copy_from_slice(&bytes[..n]);
        io[n..].fill(0);
        self.checker.complete();
        Ok(())
    }

    /// Corruptions found (the report's count once done).
    pub fn errors(&self) -> f64 {
        self.counts().map_or(self.corruptions, |c| c.corruptions) as f64
    }

    /// Leaked clusters or chunks found (the report's count once done).
    pub fn leaks(&self) -> f64 {
        self.counts().map_or(self.leaks, |c| c.leaks) as f64
    }

    /// The first findings, as text.
    pub fn findings(&self) -> Vec<String> {
        self.findings.clone()
    }
}

impl Check {
    fn counts(&self) -> Option<fvd_core::check::CheckCounts> {
        match self.report? {
            Report::Fvd(s) => Some(s.counts),
            Report::Qed(s) => Some(s.counts),
            _ => None,
        }
    }
}

/// A read the check needs.
#[wasm_bindgen]
#[derive(Clone, Copy)]
pub struct CheckRead {
    /// True for the separate data file, false for the image file.
    pub data: bool,
    /// First byte.
    pub offset: f64,
    /// Bytes.
    pub len: u32,
}
