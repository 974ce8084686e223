//! Journal replay at a read-write open of a dirty image: every valid sector of the
//! current epoch is read in batches and its records laid over the pages they touch, with
//! the record rule every reader shares (`crate::fvd::replay`).

use super::commit::Purpose;
use super::meta::Stall;
use super::open::Lifecycle;
use super::FvdEngine;
use crate::engine::cache::PageKey;
use crate::engine::types::*;
use crate::engine::{HEADER_AREA, SCRATCH_AREA};
use crate::fvd::journal::{
    fold_seen, room_for_session, SectorError, VerifiedSector, JOURNAL_SECTOR_SIZE,
};

/// Journal sectors read per batch (the scratch area).
pub(crate) const BATCH_SECTORS: u64 = (SCRATCH_AREA / JOURNAL_SECTOR_SIZE) as u64;

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    pub(crate) fn batches(&self) -> u64 {
        self.journal_sectors.div_ceil(BATCH_SECTORS)
    }

    pub(super) fn step_replay(&mut self) -> bool {
        let Lifecycle::Replay {
            batch,
            sector,
            record,
            ..
        } = self.lifecycle
        else {
            return false;
        };
        let epoch = self.layout.map_or(0, |l| l.stable_journal_epoch);
        let in_batch = (self.journal_sectors - batch * BATCH_SECTORS).min(BATCH_SECTORS);
        let mut moved = false;
        let (mut sector, mut record) = (sector, record);
        while sector < in_batch {
            let position = batch * BATCH_SECTORS + sector;
            // Copy the sector out so page accesses can borrow engine memory.
            let bytes = self.batch_sector(sector);
            let verified = VerifiedSector::verify(&bytes, epoch, position);
            if let Err(SectorError::StaleEpoch { found }) = verified {
                // Intact, of another epoch: the next epoch must lie above it.
                self.journal_epoch_seen = fold_seen(self.journal_epoch_seen, found);
            }
            if let Ok(verified) = verified {
                for r in verified.records().skip(usize::from(record)) {
                    match self.apply_record_everywhere(&r, position) {
                        Ok(()) => {}
                        Err(Stall::Wait) => {
                            self.lifecycle = Lifecycle::Replay {
                                batch,
                                loaded: true,
                                issued: true,
                                sector,
                                record,
                            };
                            return moved;
                        }
                        Err(Stall::Io(e)) => {
                            self.fail_open(OpenError::Io(e));
                            return true;
                        }
                        Err(Stall::Corrupt(c)) => {
                            self.fail_open(OpenError::Corrupt(c));
                            return true;
                        }
                    }
                    record += 1;
                    moved = true;
                }
            }
            sector += 1;
            record = 0;
        }
        if batch + 1 < self.batches() {
            self.lifecycle = Lifecycle::Replay {
                batch: batch + 1,
                loaded: false,
                issued: false,
                sector: 0,
                record: 0,
            };
        } else if !room_for_session(epoch, self.journal_epoch_seen) {
            // The session's epoch must pass every intact sector seen, and there is no room.
            self.fail_open(OpenError::EpochExhausted {
                epoch: epoch.max(self.journal_epoch_seen),
            });
        } else {
            self.start_commit(Purpose::OpenReplayed);
            self.lifecycle = Lifecycle::Committing;
        }
        true
    }

    /// Applies `record` to every page it touches (read-write replay).
    fn apply_record_everywhere(
        &mut self,
        record: &crate::fvd::journal::Record<'_>,
        sector: u64,
    ) -> Result<(), Stall> {
        let (meta, first, last) = self.record_pages(record, sector).map_err(Stall::Corrupt)?;
        for index in first..=last {
            let key = PageKey { meta, index };
            let slot = self.page(key)?;
            if self
                .apply_record(slot, key, record, sector)
                .map_err(Stall::Corrupt)?
            {
                let page = self.cache.slot_mut(slot);
                page.dirty = true;
            }
        }
        Ok(())
    }

    /// Sector `sector` of the journal batch read into engine memory at HEADER_AREA. A
    /// batch holds BATCH_SECTORS sectors, which fit there; a sector outside engine memory
    /// would read as zeros, which no journal sector verifies as.
    pub(crate) fn batch_sector(&self, sector: u64) -> [u8; JOURNAL_SECTOR_SIZE] {
        let mut bytes = [0u8; JOURNAL_SECTOR_SIZE];
        let src = usize::try_from(sector)
            .ok()
            .and_then(|s| s.checked_mul(JOURNAL_SECTOR_SIZE)?.checked_add(HEADER_AREA))
            .and_then(|at| {
                self.memory
                    .as_ref()
                    .get(at..at.checked_add(JOURNAL_SECTOR_SIZE)?)
            });
        if let Some(src) = src {
            bytes.copy_from_slice(src);
        }
        bytes
    }
}
