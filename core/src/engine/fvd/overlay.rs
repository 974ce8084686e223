//! The journal overlay of a read-only open of a dirty image: the engine may not replay
//! the journal into the image, so it finds how far the valid journal reaches and lays its
//! records over each metadata page as the page is loaded. To keep that from costing a
//! journal pass per page, the scan marks which pages the journal touches in a filter
//! (exact when the spare engine memory has a bit per page, hashed otherwise); a page the
//! journal never touches is used as loaded.
//!
//! This module never writes: every command it emits is a read of the journal.

use super::open::Lifecycle;
use super::replay::BATCH_SECTORS;
use super::FvdEngine;
use crate::engine::cache::{Meta, PageKey, PageState};
use crate::engine::slot_table::slot_u16;
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::fvd::journal::VerifiedSector;

/// The overlay's state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JournalOverlay {
    /// Valid journal sectors to lay over loaded pages (0: the journal is clean or empty).
    pub(crate) sectors: u64,
    /// One past the last valid sector found so far by the open-time scan.
    scan_extent: u64,
    /// Overlay in progress: (page slot, journal batch, batch loaded).
    active: Option<(u16, u64, bool)>,
    /// Touched-page filter in engine memory: first byte and number of bits (0: no
    /// filter, every loaded page is overlaid).
    filter: (usize, u64),
}

impl JournalOverlay {
    pub(crate) const NONE: JournalOverlay = JournalOverlay {
        sectors: 0,
        scan_extent: 0,
        active: None,
        filter: (0, 0),
    };

    /// Sets aside `len` bytes of engine memory at `area` (all zero) as the filter.
    pub(crate) fn use_filter_area(&mut self, area: usize, len: usize, memory: &mut [u8]) {
        if let Some(bytes) = memory.get_mut(area..area.saturating_add(len)) {
            bytes.fill(0);
            self.filter = (area, len as u64 * 8);
        }
    }

    /// The filter bit of page `key`: exact while there are two bits per page index.
    fn bit(&self, key: PageKey) -> Option<(usize, u8)> {
        let (area, bits) = self.filter;
        if bits == 0 {
            return None;
        }
        let kind = match key.meta {
            Meta::Bitmap => 0,
            Meta::Table => 1,
        };
        let bit = key.index.wrapping_mul(2).wrapping_add(kind) % bits;
        let byte = usize::try_from(bit / 8).ok()?;
        Some((area.checked_add(byte)?, 1 << (bit % 8)))
    }

    fn mark(&self, key: PageKey, memory: &mut [u8]) {
        if let Some((at, mask)) = self.bit(key) {
            if let Some(byte) = memory.get_mut(at) {
                *byte |= mask;
            }
        }
    }

    /// True when journal records may touch page `key`, so it must be overlaid once loaded.
    pub(crate) fn touches(&self, key: PageKey, memory: &[u8]) -> bool {
        if self.sectors == 0 {
            return false;
        }
        match self.bit(key) {
            Some((at, mask)) => memory.get(at).is_none_or(|byte| byte & mask != 0),
            None => true,
        }
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Open-time scan of journal batch `batch` (in engine memory): extends the valid
    /// extent and marks the pages its records touch.
    pub(crate) fn scan_journal_batch(&mut self, batch: u64) {
        let epoch = self.layout.map_or(0, |l| l.stable_journal_epoch);
        let in_batch = (self.journal_sectors - batch * BATCH_SECTORS).min(BATCH_SECTORS);
        for sector in 0..in_batch {
            let position = batch * BATCH_SECTORS + sector;
            let bytes = self.batch_sector(sector);
            let Ok(verified) = VerifiedSector::verify(&bytes, epoch, position) else {
                continue;
            };
            self.overlay.scan_extent = position + 1;
            for record in verified.records() {
                // A corrupt record is skipped by the overlay too; `check` reports it.
                if let Ok((meta, first, last)) = self.record_pages(&record, position) {
                    for index in first..=last {
                        self.overlay
                            .mark(PageKey { meta, index }, self.memory.as_mut());
                    }
                }
            }
        }
        if batch + 1 < self.batches() {
            self.lifecycle = Lifecycle::ScanJournal {
                batch: batch + 1,
                issued: false,
            };
        } else {
            self.overlay.sectors = self.overlay.scan_extent;
            self.lifecycle = Lifecycle::Open;
            self.events.push(Event::Opened);
        }
    }

    /// State of a page whose read just completed: overlaid first if the journal touches it.
    pub(crate) fn loaded_page_state(&self, key: PageKey) -> PageState {
        if self.overlay.touches(key, self.memory.as_ref()) {
            PageState::Overlaying
        } else {
            PageState::Ready
        }
    }

    /// Lays the valid journal over one loaded page at a time.
    pub(crate) fn step_overlay(&mut self) -> bool {
        if self.overlay.sectors == 0 {
            return false;
        }
        let Some(slot) = self
            .cache
            .indices()
            .find(|&i| self.cache.slot(i).state == PageState::Overlaying)
        else {
            return false;
        };
        match self.overlay.active {
            None => {
                let op = self.journal_batch_read(0);
                if self.emit_overlay_read(op) {
                    self.overlay.active = Some((slot_u16(slot), 0, false));
                    return true;
                }
                false
            }
            Some((_, _, false)) => false,
            Some((page, batch, true)) => {
                let page = usize::from(page);
                let key = self.cache.slot(page).key;
                let epoch = self.layout.map_or(0, |l| l.stable_journal_epoch);
                let in_batch =
                    (self.overlay.sectors.saturating_sub(batch * BATCH_SECTORS)).min(BATCH_SECTORS);
                for sector in 0..in_batch {
                    let bytes = self.batch_sector(sector);
                    let position = batch * BATCH_SECTORS + sector;
                    if let Ok(verified) = VerifiedSector::verify(&bytes, epoch, position) {
                        for record in verified.records() {
                            // A corrupt record is skipped here; `check` reports it.
                            let _ = self.apply_record(page, key, &record, position);
                        }
                    }
                }
                if (batch + 1) * BATCH_SECTORS < self.overlay.sectors {
                    let op = self.journal_batch_read(batch + 1);
                    if self.emit_overlay_read(op) {
                        self.overlay.active = Some((slot_u16(page), batch + 1, false));
                    } else {
                        self.overlay.active = Some((slot_u16(page), batch, true));
                        return false;
                    }
                } else {
                    self.overlay.active = None;
                    self.cache.slot_mut(page).state = PageState::Ready;
                }
                true
            }
        }
    }

    fn emit_overlay_read(&mut self, op: Op) -> bool {
        self.commands.emit(Owner::Overlay, FileId::Image, op)
    }

    pub(crate) fn overlay_done(&mut self, result: Result<(), IoError>) {
        if let Some((page, batch, _)) = self.overlay.active {
            match result {
                Ok(()) => self.overlay.active = Some((page, batch, true)),
                Err(error) => {
                    let page = usize::from(page);
                    self.page_error = Some((self.cache.slot(page).key, error));
                    self.cache.drop_page(page);
                    self.overlay.active = None;
                }
            }
        }
    }
}
