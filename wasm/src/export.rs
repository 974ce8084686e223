//! "Export JSON": the documents `fvd-img info|map|check --output json` print, written by
//! the same core functions (`fvd_core::report`), for the image the page opened. Each
//! export is driven like the other parts: `next_read` says what to read, the page reads
//! it from `File.slice` and hands it back, `json()` returns the document.
//!
//! What only a host knows differs: `filename` and every name the header stores are file
//! names as the page has them (the CLI gives them relative to its working directory, so
//! run it in the image's directory for equal values); `actual-size` and
//! `data_file_actual_size` are file lengths (a `File` has no allocated size); the map's
//! `zero` flag never marks stored data that lies in a hole of the host file (a `File`
//! has no holes).

use crate::check::CheckRun;
use crate::session::length;
use fvd_core::check::Report;
use fvd_core::fvd::header::name_field;
use fvd_core::probe::{probe, Probe};
use fvd_core::report::check::{write_check, CheckFacts, FvdFacts};
use fvd_core::report::info::{write_info, BackingFacts, DataFileFacts, ImageFacts, InfoFacts};
use fvd_core::report::info_scan::InfoScan;
use wasm_bindgen::prelude::*;

fn bytes_len(value: f64, what: &str) -> Result<u64, JsError> {
    // The value is not shown: formatting a double would pull float printing into the module.
    length(value).ok_or_else(|| JsError::new(&format!("the {what} is not a byte count")))
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn written(text: String, result: core::fmt::Result) -> Result<String, JsError> {
    result.map_err(|_| JsError::new("the document could not be written"))?;
    Ok(text)
}

/// `fvd-img info --output json` of the image whose first bytes (its header area, 64 KiB
/// hold it) are `first`.
#[wasm_bindgen]
pub struct InfoExport {
    first: Vec<u8>,
    name: String,
    image_len: u64,
    data: Option<(String, u64)>,
    scan: InfoScan,
}

#[wasm_bindgen]
impl InfoExport {
    /// An export of the image file `name` of `image_len` bytes, with its data file's
    /// name and length when it has one.
    #[wasm_bindgen(constructor)]
    pub fn new(
        first: &[u8],
        name: String,
        image_len: f64,
        data_name: Option<String>,
        data_len: Option<f64>,
    ) -> Result<InfoExport, JsError> {
        let image_len = bytes_len(image_len, "image length")?;
        let data = match (data_name, data_len) {
            (Some(n), Some(len)) => Some((n, bytes_len(len, "data file length")?)),
            _ => None,
        };
        let scan = match probe(first) {
            Probe::Fvd => {
                let (_, layout) = fvd_core::fvd::parse(first, image_len)
                    .map_err(|e| JsError::new(&e.to_string()))?;
                InfoScan::fvd(&layout)
            }
            Probe::Qed => {
                let (_, layout) = fvd_core::qed::parse(first, image_len)
                    .map_err(|e| JsError::new(&e.to_string()))?;
                InfoScan::qed(&layout, image_len)
            }
            other => return Err(JsError::new(&format!("not an FVD or QED image: {other}"))),
        };
        Ok(InfoExport {
            first: first.to_vec(),
            name,
            image_len,
            data,
            scan,
        })
    }

    /// The next read of the image file, or nothing once the document is ready.
    pub fn next_read(&self) -> Option<ExportRead> {
        self.scan.next_read().map(|(offset, len)| ExportRead {
            offset: offset as f64,
            len: u32::try_from(len).unwrap_or(u32::MAX),
        })
    }

    /// Hands back the bytes read (fewer at the end of the file: zeros follow).
    pub fn complete_read(&mut self, bytes: &[u8]) {
        self.scan.complete(bytes);
    }

    /// The document (once `next_read` returns nothing).
    pub fn json(&self) -> Result<String, JsError> {
        if !self.scan.done() {
            return Err(JsError::new("the info scan has not finished"));
        }
        let counts = self.scan.counts();
        let mut text = String::new();
        let result = match probe(&self.first) {
            Probe::Fvd => {
                let (h, layout) = fvd_core::fvd::parse(&self.first, self.image_len)
                    .map_err(|e| JsError::new(&e.to_string()))?;
                let base = lossy(name_field(&h.base_img).unwrap_or_default());
                let base_format = lossy(name_field(&h.base_img_fmt).unwrap_or_default());
                let facts = InfoFacts {
                    filename: &self.name,
                    file_len: self.image_len,
                    actual_size: self.image_len,
                    backing: layout.base.map(|_| BackingFacts {
                        name: &base,
                        full_name: &base,
                        format: (!base_format.is_empty()).then_some(base_format.as_str()),
                    }),
                    image: ImageFacts::Fvd {
                        header: h,
                        layout,
                        data_file: self.data.as_ref().map(|(name, len)| DataFileFacts {
                            full_name: name,
                            len: *len,
                            allocated: *len,
                        }),
                    },
                    counts,
                };
                write_info(&mut text, &facts)
            }
            _ => {
                let (h, layout) = fvd_core::qed::parse(&self.first, self.image_len)
                    .map_err(|e| JsError::new(&e.to_string()))?;
                let base = layout.backing_name(&self.first).map(lossy);
                let facts = InfoFacts {
                    filename: &self.name,
                    file_len: self.image_len,
                    actual_size: self.image_len,
                    backing: base.as_deref().map(|name| BackingFacts {
                        name,
                        full_name: name,
                        format: layout.backing.and_then(|b| b.raw.then_some("raw")),
                    }),
                    image: ImageFacts::Qed { header: h, layout },
                    counts,
                };
                write_info(&mut text, &facts)
            }
        };
        written(text, result)
    }
}

/// A read of the image file an export needs.
#[wasm_bindgen]
#[derive(Clone, Copy)]
pub struct ExportRead {
    /// First byte.
    pub offset: f64,
    /// Bytes.
    pub len: u32,
}

/// `fvd-img check --output json` of the image the page opened, run by core's scanner
/// (the same run as the page's check view, [`crate::check::Check`]).
#[wasm_bindgen]
pub struct CheckExport {
    run: CheckRun,
    name: String,
}

#[wasm_bindgen]
impl CheckExport {
    /// A check of the image file `name` whose first bytes are `first`, `image_len` bytes
    /// long, with a data file of `data_len` bytes if it has one.
    #[wasm_bindgen(constructor)]
    pub fn new(
        first: &[u8],
        name: String,
        image_len: f64,
        data_len: Option<f64>,
    ) -> Result<CheckExport, JsError> {
        Ok(CheckExport {
            run: CheckRun::new(first, image_len, data_len)?,
            name,
        })
    }

    /// The next read (`data`: of the data file), or nothing once the check is done.
    pub fn next_read(&mut self) -> Result<Option<crate::check::CheckRead>, JsError> {
        self.run.next_read()
    }

    /// Fulfils the pending read (fewer bytes at the end of the file: zeros follow).
    pub fn complete_read(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        self.run.complete_read(bytes)
    }

    /// The document (once the check is done).
    pub fn json(&self) -> Result<String, JsError> {
        let run = &self.run;
        let (format, counts, fvd) = match run.report {
            Some(Report::Fvd(s)) => (
                "fvd",
                s.counts,
                Some(FvdFacts {
                    journal_records: s.journal_records,
                    journal_sectors: s.journal_sectors,
                    bitmap: s.bitmap,
                }),
            ),
            Some(Report::Qed(s)) => ("qed", s.counts, None),
            _ => return Err(JsError::new("the check has not finished")),
        };
        let facts = CheckFacts {
            filename: &self.name,
            format,
            counts,
            fvd,
            findings: &run.findings,
            findings_omitted: run.findings_omitted,
            leaks: &run.leaks,
            leaks_omitted: run.leaks_omitted,
            repair: None,
        };
        let mut text = String::new();
        let result = write_check(&mut text, &facts);
        written(text, result)
    }
}

pub mod map;
pub use map::MapExport;
