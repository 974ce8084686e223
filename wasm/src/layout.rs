//! The regions of the image file, to scale: core's validated layout (FVD: header, bitmap,
//! journal, table, data; QED: header, L1 table, and the L2 tables its L1 entries name),
//! as rows the page draws as a bar.

use crate::session::length;
use fvd_core::probe::{probe, Probe};
use fvd_core::qed::table::{read_entry, L1Entry};
use fvd_core::{fvd, qed};
use wasm_bindgen::prelude::*;

/// Most L2 tables listed (a 1 TiB QED image with 64 KiB clusters has up to 4096).
pub const MAX_TABLES: usize = 65536;

/// One region of the image file.
#[wasm_bindgen(getter_with_clone)]
pub struct RegionRow {
    /// `header`, `bitmap`, `journal`, `table`, `data`, `L1 table`, `L2 table`, `clusters`.
    pub name: String,
    /// First byte in the file.
    pub offset: f64,
    /// Bytes.
    pub len: f64,
}

fn row(name: &str, offset: u64, len: u64) -> RegionRow {
    RegionRow {
        name: name.into(),
        offset: offset as f64,
        len: len as f64,
    }
}

fn error(e: impl ToString) -> JsError {
    JsError::new(&e.to_string())
}

/// The fixed regions of the image whose first bytes are `first`, in a file of `file_len`
/// bytes; the area after the metadata (`data` / `clusters`) runs to the end of the file.
#[wasm_bindgen]
pub fn regions(first: &[u8], file_len: f64) -> Result<Vec<RegionRow>, JsError> {
    let len = length(file_len).ok_or_else(|| JsError::new("bad file length"))?;
    let mut rows = Vec::new();
    match probe(first) {
        Probe::Fvd => {
            let (_, l) = fvd::parse(first, len).map_err(error)?;
            rows.push(row("header", 0, l.header_size));
            if let Some(base) = l.base {
                rows.push(row("bitmap", base.bitmap.offset, base.bitmap.len));
            }
            if let Some(j) = l.journal {
                rows.push(row("journal", j.offset, j.len));
            }
            if let Some(t) = l.table {
                rows.push(row("table", t.region.offset, t.region.len));
            }
            if !l.separate_data_file && l.data_offset < len {
                rows.push(row("data", l.data_offset, len - l.data_offset));
            }
        }
        Probe::Qed => {
            let (_, l) = qed::parse(first, len).map_err(error)?;
            rows.push(row("header", 0, l.header_len));
            rows.push(row("L1 table", l.l1_table.offset, l.l1_table.len));
            let after = l.header_len.max(l.l1_table.end());
            if after < len {
                rows.push(row("clusters", after, len - after));
            }
        }
        other => return Err(JsError::new(&format!("not an FVD or QED image: {other}"))),
    }
    Ok(rows)
}

/// Where the L1 table (its bytes `l1`) of the QED image whose first bytes are `first`
/// puts its L2 tables: one row per table inside the file (an entry naming a place outside
/// the file or a misaligned one is skipped; the check reports it).
#[wasm_bindgen]
pub fn qed_l2_tables(first: &[u8], file_len: f64, l1: &[u8]) -> Result<Vec<RegionRow>, JsError> {
    let len = length(file_len).ok_or_else(|| JsError::new("bad file length"))?;
    let (_, l) = qed::parse(first, len).map_err(error)?;
    let mut rows = Vec::new();
    for index in 0..l.table_entries {
        let Some(raw) = read_entry(l1, index) else {
            break;
        };
        if let L1Entry::Table(at) = l.decode_l1(raw) {
            if l.table_in_file(at, len) && rows.len() < MAX_TABLES {
                rows.push(row("L2 table", at, l.table_len));
            }
        }
    }
    Ok(rows)
}

/// The QED header's need-check bit: an image left open by a writer that crashed; QEMU
/// checks and repairs it at its next read-write open.
#[wasm_bindgen]
pub fn qed_need_check(first: &[u8], file_len: f64) -> Result<bool, JsError> {
    let len = length(file_len).ok_or_else(|| JsError::new("bad file length"))?;
    let (_, l) = qed::parse(first, len).map_err(error)?;
    Ok(l.need_check)
}
