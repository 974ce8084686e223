//! The FVD journal of the opened image, sector by sector, as core reads it: each intact
//! sector's epoch and records, whether a replay applies it (current epoch, right place),
//! the region bytes and guest range each record patches, and the epoch a writer would
//! move to. Driven like [`crate::Check`]: the page reads the ranges asked for from the
//! image file. Memory: one batch of [`BATCH_BYTES`] and the first [`MAX_ROWS`] rows.

use crate::check::CheckRead;
use crate::session::length;
use fvd_core::fvd::journal::{
    fold_seen, next_epoch, Record, SectorError, SectorHeader, VerifiedSector, JOURNAL_SECTOR_SIZE,
};
use fvd_core::fvd::table::TABLE_EMPTY;
use fvd_core::fvd::{parse, ImageLayout, Region};
use wasm_bindgen::prelude::*;

/// Bytes read per step.
pub const BATCH_BYTES: u64 = 256 << 10;
/// Rows kept (every sector is counted).
pub const MAX_ROWS: usize = 1000;
const SECTOR: u64 = JOURNAL_SECTOR_SIZE as u64;

/// One journal record, or one sector that holds none a replay would use.
#[wasm_bindgen(getter_with_clone)]
pub struct JournalRow {
    /// The sector's index in the journal.
    pub sector: f64,
    /// The sector's epoch (-1 when it is not intact).
    pub epoch: f64,
    /// `current` (a replay applies it), `stale` (another epoch), `torn`, `misplaced` or
    /// `malformed`.
    pub status: String,
    /// `bitmap` or `table` (empty for a sector row).
    pub kind: String,
    /// What the record does, in words.
    pub detail: String,
    /// First guest byte whose metadata it patches (-1 when none).
    pub guest_start: f64,
    /// One past the last (-1 when none).
    pub guest_end: f64,
    /// Why the record lies outside its structure (empty when it does not).
    pub fault: String,
}

/// A running journal scan of an FVD image.
#[wasm_bindgen]
pub struct Journal {
    layout: ImageLayout,
    region: Region,
    sectors: u64,
    next: u64,
    pending: bool,
    rows: Vec<JournalRow>,
    counts: [u64; 5],
    records: u64,
    seen: u64,
}

const CURRENT: usize = 0;
const STALE: usize = 1;
const TORN: usize = 2;
const EMPTY: usize = 3;
const BAD: usize = 4;

#[wasm_bindgen]
impl Journal {
    /// The journal of the FVD image whose first bytes (its header) are `first`, in a
    /// file of `image_len` bytes.
    #[wasm_bindgen(constructor)]
    pub fn new(first: &[u8], image_len: f64) -> Result<Journal, JsError> {
        let len = length(image_len).ok_or_else(|| JsError::new("bad image length"))?;
        let (_, layout) = parse(first, len).map_err(|e| JsError::new(&e.to_string()))?;
        let region = layout
            .journal
            .ok_or_else(|| JsError::new("the image has no journal"))?;
        Ok(Journal {
            layout,
            region,
            sectors: region.len / SECTOR,
            next: 0,
            pending: false,
            rows: Vec::new(),
            counts: [0; 5],
            records: 0,
            seen: 0,
        })
    }

    /// The header says the image was closed cleanly (a reader replays nothing then).
    pub fn clean(&self) -> bool {
        self.layout.clean_shutdown
    }

    /// The header's `stable_journal_epoch`: the epoch whose sectors a replay applies.
    pub fn epoch(&self) -> f64 {
        self.layout.stable_journal_epoch as f64
    }

    /// Sectors in the journal region.
    pub fn sectors(&self) -> f64 {
        self.sectors as f64
    }

    /// The next range of the image file to read, or nothing once every sector is seen.
    pub fn next_read(&mut self) -> Option<CheckRead> {
        if self.next >= self.sectors {
            return None;
        }
        self.pending = true;
        let n = (self.sectors - self.next).min(BATCH_BYTES / SECTOR);
        Some(CheckRead {
            data: false,
            offset: self.region.offset.saturating_add(self.next * SECTOR) as f64,
            len: u32::try_from(n * SECTOR).unwrap_or(u32::MAX),
        })
    }

    /// Takes the bytes of the range asked for (fewer at the end of the file: the rest
    /// reads as zeros, an unwritten sector).
    pub fn complete_read(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        if !std::mem::take(&mut self.pending) {
            return Err(JsError::new("no journal read is outstanding"));
        }
        let n = (self.sectors - self.next).min(BATCH_BYTES / SECTOR);
        let mut sector = [0u8; JOURNAL_SECTOR_SIZE];
        for i in 0..n {
            let at = (i * SECTOR) as usize;
            let have = bytes.get(at..).unwrap_or_default();
            let k = have.len().min(JOURNAL_SECTOR_SIZE);
            sector[..k].copy_from_slice(&have[..k]);
            sector[k..].fill(0);
            self.sector(self.next + i, &sector);
        }
        self.next += n;
        Ok(())
    }

    /// Rows: each record of each intact sector, and each damaged sector (the first
    /// [`MAX_ROWS`]).
    pub fn rows(&self) -> Vec<JournalRow> {
        self.rows
            .iter()
            .map(|r| JournalRow {
                status: r.status.clone(),
                kind: r.kind.clone(),
                detail: r.detail.clone(),
                fault: r.fault.clone(),
                ..*r
            })
            .collect()
    }

    /// Sectors of the current epoch in their place (a replay applies their records).
    pub fn current(&self) -> f64 {
        self.counts[CURRENT] as f64
    }

    /// Intact sectors of other epochs (never replayed).
    pub fn stale(&self) -> f64 {
        self.counts[STALE] as f64
    }

    /// Sectors with the magic but a wrong checksum (torn writes).
    pub fn torn(&self) -> f64 {
        self.counts[TORN] as f64
    }

    /// Sectors never written (no magic).
    pub fn unwritten(&self) -> f64 {
        self.counts[EMPTY] as f64
    }

    /// Sectors of the current epoch that are misplaced or malformed.
    pub fn damaged(&self) -> f64 {
        self.counts[BAD] as f64
    }

    /// Records in current sectors.
    pub fn records(&self) -> f64 {
        self.records as f64
    }

    /// The epoch the next writer moves to, given every intact sector seen (-1 when the
    /// epoch is exhausted and the image can no longer be written).
    pub fn next_epoch(&self) -> f64 {
        next_epoch(self.layout.stable_journal_epoch, self.seen).map_or(-1.0, |e| e as f64)
    }
}

impl Journal {
    fn push(&mut self, row: JournalRow) {
        if self.rows.len() < MAX_ROWS {
            self.rows.push(row);
        }
    }

    fn sector_row(&mut self, position: u64, epoch: f64, status: &str, detail: String) {
        self.push(JournalRow {
            sector: position as f64,
            epoch,
            status: status.into(),
            kind: String::new(),
            detail,
            guest_start: -1.0,
            guest_end: -1.0,
            fault: String::new(),
        });
    }

    fn sector(&mut self, position: u64, bytes: &[u8]) {
        let intact = SectorHeader::intact_epoch(bytes);
        if let Some(e) = intact {
            self.seen = fold_seen(self.seen, e);
        }
        let epoch = intact.map_or(-1.0, |e| e as f64);
        match VerifiedSector::verify(bytes, self.layout.stable_journal_epoch, position) {
            Ok(verified) => {
                self.counts[CURRENT] += 1;
                for record in verified.records() {
                    self.records += 1;
                    let row = self.record_row(position, epoch, &record);
                    self.push(row);
                }
            }
            Err(SectorError::NoMagic) => self.counts[EMPTY] += 1,
            Err(SectorError::BadChecksum) => {
                self.counts[TORN] += 1;
                self.sector_row(position, epoch, "torn", "checksum mismatch: skipped".into());
            }
            Err(SectorError::StaleEpoch { found }) => {
                self.counts[STALE] += 1;
                let text = format!("epoch {found}, not the header's: never replayed");
                self.sector_row(position, epoch, "stale", text);
            }
            Err(e @ SectorError::Misplaced { .. }) => {
                self.counts[BAD] += 1;
                self.sector_row(position, epoch, "misplaced", format!("{e}: skipped"));
            }
            Err(e) => {
                self.counts[BAD] += 1;
                self.sector_row(position, epoch, "malformed", format!("{e}: skipped"));
            }
        }
    }

    fn record_row(&self, position: u64, epoch: f64, record: &Record<'_>) -> JournalRow {
        let (kind, detail) = match *record {
            Record::Bitmap { byte_offset, bytes } => (
                "bitmap",
                format!(
                    "OR {} bitmap byte(s) in at byte {byte_offset}: their set bits mark blocks local",
                    bytes.len()
                ),
            ),
            Record::Table {
                first_entry,
                entries,
            } => {
                // An EMPTY value in a record fills nothing: only the others are listed.
                let set: Vec<(u64, u32)> = entries
                    .chunks_exact(4)
                    .zip(u64::from(first_entry)..)
                    .map(|(v, chunk)| (chunk, u32::from_le_bytes([v[0], v[1], v[2], v[3]])))
                    .filter(|&(_, v)| v != TABLE_EMPTY)
                    .collect();
                let shown: Vec<String> = set
                    .iter()
                    .take(4)
                    .map(|(chunk, v)| format!("chunk {chunk} → storage chunk {v:#x}"))
                    .collect();
                let more = if set.len() > 4 { ", …" } else { "" };
                (
                    "table",
                    format!(
                        "map {} of {} entries (chunks {first_entry}+) if still empty: {}{more}",
                        set.len(),
                        entries.len() / 4,
                        shown.join(", ")
                    ),
                )
            }
        };
        let (range, fault) = match record.span(&self.layout) {
            Ok(span) => (span.guest_range(&self.layout), String::new()),
            Err(f) => (None, format!("{f}: not applied")),
        };
        JournalRow {
            sector: position as f64,
            epoch,
            status: "current".into(),
            kind: kind.into(),
            detail,
            guest_start: range.map_or(-1.0, |r| r.0 as f64),
            guest_end: range.map_or(-1.0, |r| r.1 as f64),
            fault,
        }
    }
}
