//! The consistency check (`fvd-img check`'s findings and counts) of the image the page
//! opened, run by core's sans-IO scanner one file read at a time, as [`crate::session`]
//! runs the engine: [`Check::next_read`] says what to read, the page reads it from
//! `File.slice` and hands it back with [`Check::complete_read`]. Never a write: the page
//! only checks. Memory: [`WORK_MEMORY`] of scanner work memory (more if a QED image's
//! tables need it) plus the first [`MAX_LISTED`] findings and leaked runs.

use crate::session::length;
use fvd_core::check::fvd::{FvdCheck, FvdFiles};
use fvd_core::check::qed::{memory_needed, QedCheck};
use fvd_core::check::{CheckCounts, Checker, FileId, Finding, Report, Step};
use fvd_core::probe::{probe, Probe};
use fvd_core::report::check::MAX_LISTED;
use wasm_bindgen::prelude::*;

/// Scanner work memory (the CLI gives 16 MiB; a bigger image takes more table passes),
/// more when a QED image's tables need it.
pub const WORK_MEMORY: usize = 4 << 20;

/// One run of core's check, driven read by read, keeping what both the page's check
/// view ([`Check`]) and the JSON export (`export::CheckExport`) show: the first
/// [`MAX_LISTED`] findings and leaked runs (the rest counted), and the final report.
pub(crate) struct CheckRun {
    checker: Checker<Vec<u8>>,
    pending: Option<(FileId, u64, usize)>,
    pub(crate) findings: Vec<Finding>,
    pub(crate) findings_omitted: u64,
    pub(crate) leaks: Vec<(u64, u64)>,
    pub(crate) leaks_omitted: u64,
    /// Leaked clusters or chunks so far (every run, listed or not).
    leaked: u64,
    pub(crate) report: Option<Report>,
}

impl CheckRun {
    /// A check of the image whose first bytes (at least its header) are `first`, in a
    /// file of `image_len` bytes (a JS number), with a data file of `data_len` bytes if it
    /// has one.
    pub(crate) fn new(
        first: &[u8],
        image_len: f64,
        data_len: Option<f64>,
    ) -> Result<CheckRun, JsError> {
        // The value is not shown: formatting a double would pull float printing in.
        let bytes = |value, what: &str| {
            length(value).ok_or_else(|| JsError::new(&format!("the {what} is not a byte count")))
        };
        let image_len = bytes(image_len, "image length")?;
        let data_len = data_len.map(|d| bytes(d, "data file length")).transpose()?;
        let error = |e: fvd_core::check::CheckError| JsError::new(&e.to_string());
        let checker = match probe(first) {
            Probe::Fvd => {
                let files = FvdFiles {
                    image_len,
                    data_len,
                };
                Checker::Fvd(FvdCheck::new(first, files, vec![0u8; WORK_MEMORY]).map_err(error)?)
            }
            Probe::Qed => {
                let (_, layout) = fvd_core::qed::parse(first, image_len)
                    .map_err(|e| JsError::new(&e.to_string()))?;
                let memory = vec![0u8; WORK_MEMORY.max(memory_needed(&layout))];
                Checker::Qed(QedCheck::new(first, image_len, memory).map_err(error)?)
            }
            other => return Err(JsError::new(&format!("cannot check {other}"))),
        };
        Ok(CheckRun {
            checker,
            pending: None,
            findings: Vec::new(),
            findings_omitted: 0,
            leaks: Vec::new(),
            leaks_omitted: 0,
            leaked: 0,
            report: None,
        })
    }

    /// The next read the check needs, or nothing once done.
    pub(crate) fn next_read(&mut self) -> Result<Option<CheckRead>, JsError> {
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
                Step::Finding(f) if self.findings.len() < MAX_LISTED => self.findings.push(f),
                Step::Finding(_) => self.findings_omitted = self.findings_omitted.saturating_add(1),
                Step::Leak { start, end } => {
                    self.leaked = self.leaked.saturating_add(end.saturating_sub(start));
                    if self.leaks.len() < MAX_LISTED {
                        self.leaks.push((start, end));
                    } else {
                        self.leaks_omitted = self.leaks_omitted.saturating_add(1);
                    }
                }
                Step::Done(report) => self.report = Some(report),
                // A plain check never writes; anything else is a step the page cannot do.
                other => return Err(JsError::new(&format!("the check asked for {other:?}"))),
            }
        }
    }

    /// Fulfils the pending read (fewer bytes at the end of the file: the rest is zeros).
    pub(crate) fn complete_read(&mut self, bytes: &[u8]) -> Result<(), JsError> {
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

    /// The report's counts, once the check is done.
    fn counts(&self) -> Option<CheckCounts> {
        match self.report? {
            Report::Fvd(s) => Some(s.counts),
            Report::Qed(s) => Some(s.counts),
            _ => None,
        }
    }
}

/// A running check, for the page's check view.
#[wasm_bindgen]
pub struct Check {
    run: CheckRun,
}

#[wasm_bindgen]
impl Check {
    /// A check of the image whose first bytes (at least its header) are `first`, in a
    /// file of `image_len` bytes, with a data file of `data_len` bytes if it has one.
    #[wasm_bindgen(constructor)]
    pub fn new(first: &[u8], image_len: f64, data_len: Option<f64>) -> Result<Check, JsError> {
        Ok(Check {
            run: CheckRun::new(first, image_len, data_len)?,
        })
    }

    /// The next read the check needs (`file` is `image` or `data`), or nothing once done.
    pub fn next_read(&mut self) -> Result<Option<CheckRead>, JsError> {
        self.run.next_read()
    }

    /// Fulfils the pending read (fewer bytes at the end of the file: the rest is zeros).
    pub fn complete_read(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        self.run.complete_read(bytes)
    }

    /// Corruptions found (the report's count once done).
    pub fn errors(&self) -> f64 {
        let found = self.run.findings.len() as u64 + self.run.findings_omitted;
        self.run.counts().map_or(found, |c| c.corruptions) as f64
    }

    /// Leaked clusters or chunks found (the report's count once done).
    pub fn leaks(&self) -> f64 {
        self.run.counts().map_or(self.run.leaked, |c| c.leaks) as f64
    }

    /// The first findings, as text.
    pub fn findings(&self) -> Vec<String> {
        self.run.findings.iter().map(ToString::to_string).collect()
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
