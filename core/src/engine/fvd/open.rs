//! The image's life around the requests: reading and validating the header, choosing
//! what an open does next (journal replay, table scan, open commit), and closing.

use super::commit::Purpose;
use super::replay::BATCH_SECTORS;
use super::FvdEngine;
use crate::engine::bounce::{BouncePool, MAX_BOUNCE_SLOTS};
use crate::engine::cache::{PageCache, PAGE_BYTES};
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::engine::{HEADER_AREA, MIN_CACHE, SCRATCH_AREA};
use crate::fvd::journal::{JOURNAL_SECTOR_SIZE, MAX_WRITABLE_EPOCH};
use crate::fvd::{parse, HeaderError, RAW_HEADER_LEN};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Start,
    ReadingHeader,
    /// Read-write open of a dirty image: apply every valid journal sector.
    Replay {
        batch: u64,
        loaded: bool,
        issued: bool,
        sector: u64,
        record: u16,
    },
    /// Read-only open of a dirty image: find how far the valid journal reaches.
    ScanJournal {
        batch: u64,
        issued: bool,
    },
    Committing,
    /// Compact read-write open: find the allocation frontier, shared and leaked chunks.
    /// A clean image is scanned before the open commit (`then_commit`), so an image the
    /// scan refuses is left untouched; after a replay, the scan follows the commit.
    ScanTable {
        page: u64,
        window: u64,
        then_commit: bool,
    },
    Open,
    Closing,
    CloseCommitting,
    Done,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    pub(super) fn fail_open(&mut self, error: OpenError) {
        self.lifecycle = Lifecycle::Done;
        self.events.push(Event::OpenFailed(error));
    }

    fn emit_lifecycle(&mut self, file: FileId, op: Op) -> bool {
        self.commands.emit(Owner::Lifecycle, file, op)
    }

    pub(crate) fn begin_close(&mut self) {
        if matches!(self.lifecycle, Lifecycle::Open) {
            self.lifecycle = Lifecycle::Closing;
        }
    }

    pub(crate) fn step_lifecycle(&mut self) -> bool {
        match self.lifecycle {
            Lifecycle::Start => {
                if self.options.image_len < RAW_HEADER_LEN as u64 {
                    self.fail_open(OpenError::Header(HeaderError::TooShort {
                        len: self.options.image_len,
                        needed: RAW_HEADER_LEN as u64,
                    }));
                    return true;
                }
                let needed = HEADER_AREA + SCRATCH_AREA + MIN_CACHE;
                let given = self.memory.as_ref().len();
                if given < needed || self.options.cache_bytes < MIN_CACHE {
                    self.fail_open(OpenError::MemoryTooSmall { given, needed });
                    return true;
                }
                let op = Op::Read {
                    offset: 0,
                    len: RAW_HEADER_LEN,
                    into: Buffer::Engine { offset: 0 },
                };
                if self.emit_lifecycle(FileId::Image, op) {
                    self.lifecycle = Lifecycle::ReadingHeader;
                }
                true
            }
            Lifecycle::Replay {
                batch,
                loaded: false,
                issued: false,
                ..
            } => {
                let op = self.journal_batch_read(batch);
                if self.emit_lifecycle(FileId::Image, op) {
                    self.lifecycle = Lifecycle::Replay {
                        batch,
                        loaded: false,
                        issued: true,
                        sector: 0,
                        record: 0,
                    };
                    return true;
                }
                false
            }
            Lifecycle::Replay { loaded: true, .. } => self.step_replay(),
            Lifecycle::ScanJournal {
                batch,
                issued: false,
            } => {
                let op = self.journal_batch_read(batch);
                if self.emit_lifecycle(FileId::Image, op) {
                    self.lifecycle = Lifecycle::ScanJournal {
                        batch,
                        issued: true,
                    };
                    return true;
                }
                false
            }
            Lifecycle::Committing | Lifecycle::CloseCommitting => match self.commit.finished.take()
            {
                Some((purpose, error)) => {
                    self.commit_finished(purpose, error);
                    true
                }
                None => false,
            },
            Lifecycle::ScanTable {
                page,
                window,
                then_commit,
            } => self.step_scan_table(page, window, then_commit),
            Lifecycle::Open => {
                self.step_pending_alloc() | self.step_overlay() | self.step_prefetch()
            }
            Lifecycle::Closing => {
                if self.active_requests > 0
                    || self.commit.in_window()
                    || self.commands.in_flight() > 0
                {
                    return false;
                }
                if self.options.writable && !self.failed {
                    self.start_commit(Purpose::Close);
                    self.lifecycle = Lifecycle::CloseCommitting;
                } else {
                    self.lifecycle = Lifecycle::Done;
                    self.events.push(Event::Closed { clean: false });
                }
                true
            }
            _ => false,
        }
    }

    fn commit_finished(&mut self, purpose: Purpose, error: Option<IoError>) {
        match (purpose, error) {
            (Purpose::Close, error) => {
                self.lifecycle = Lifecycle::Done;
                self.events.push(Event::Closed {
                    clean: error.is_none(),
                });
            }
            (_, Some(error)) => self.fail_open(OpenError::Io(error)),
            (purpose, None) => self.after_open_commit(purpose),
        }
    }

    pub(crate) fn journal_batch_read(&self, batch: u64) -> Op {
        let journal = self.layout.and_then(|l| l.journal).map_or(0, |j| j.offset);
        let sectors = (self.journal_sectors - batch * BATCH_SECTORS).min(BATCH_SECTORS);
        Op::Read {
            offset: journal + batch * SCRATCH_AREA as u64,
            len: sectors as usize * JOURNAL_SECTOR_SIZE,
            into: Buffer::Engine {
                offset: HEADER_AREA,
            },
        }
    }

    pub(crate) fn lifecycle_done(&mut self, result: Result<(), IoError>) {
        if let Err(error) = result {
            if !matches!(self.lifecycle, Lifecycle::Open | Lifecycle::Closing) {
                self.fail_open(OpenError::Io(error));
            }
            return;
        }
        match self.lifecycle {
            Lifecycle::ReadingHeader => self.header_read(),
            Lifecycle::Replay { batch, .. } => {
                self.lifecycle = Lifecycle::Replay {
                    batch,
                    loaded: true,
                    issued: true,
                    sector: 0,
                    record: 0,
                }
            }
            Lifecycle::ScanJournal { batch, .. } => self.scan_journal_batch(batch),
            _ => {}
        }
    }

    fn header_read(&mut self) {
        let image_len = self.options.image_len;
        // Engine memory is at least HEADER_AREA bytes (checked before the header read).
        let header = self
            .memory
            .as_ref()
            .get(..RAW_HEADER_LEN)
            .unwrap_or_default();
        let layout = match parse(header, image_len) {
            Ok((_, layout)) => layout,
            Err(error) => return self.fail_open(OpenError::Header(error)),
        };
        if layout.separate_data_file != self.options.data_len.is_some() {
            return self.fail_open(OpenError::DataFileMismatch);
        }
        if self.options.writable && layout.stable_journal_epoch > MAX_WRITABLE_EPOCH {
            return self.fail_open(OpenError::EpochExhausted {
                epoch: layout.stable_journal_epoch,
            });
        }
        let live_base = layout.base.filter(|_| !layout.base_fully_prefetched);
        if live_base.is_some() && self.options.writable && !self.options.base_available {
            return self.fail_open(OpenError::BaseMissing);
        }
        self.clean_period_ms = self.header().journal_clean_buf_period.get();
        self.copy_on_read = self.options.copy_on_read.unwrap_or(layout.copy_on_read)
            && self.options.writable
            && self.options.base_available
            && !layout.base_fully_prefetched
            && layout.base.is_some();
        if self.options.writable
            && self.options.base_available
            && layout.base.is_some()
            && !layout.base_fully_prefetched
        {
            self.prefetch = super::prefetch::Prefetch::configure(
                self.header(),
                layout.block_size,
                self.options.prefetch,
            );
        }
        // As in 2011: a cap below two blocks would starve copy-on-read; use one block then.
        let cap = self.header().max_outstanding_copy_on_read_data.get();
        self.cor_cap = if cap < 2 * layout.block_size {
            layout.block_size
        } else {
            cap
        };
        let has_metadata = layout.base.is_some() || layout.table.is_some();
        if !layout.clean_shutdown
            && layout.journal.is_none()
            && has_metadata
            && self.options.writable
        {
            return self.fail_open(OpenError::DirtyWithoutJournal);
        }
        // Carve engine memory: header, scratch, cache, bounce.
        let total = self.memory.as_ref().len();
        let cache_base = HEADER_AREA + SCRATCH_AREA;
        let pages = (self.options.cache_bytes / PAGE_BYTES)
            .min(PAGES)
            .min((total - cache_base) / PAGE_BYTES);
        let bounce_base = cache_base + pages * PAGE_BYTES;
        let slot_len = if live_base.is_some() {
            // A block too large to address cannot fit in memory either (refused below).
            usize::try_from(layout.block_size).unwrap_or(usize::MAX)
        } else {
            0
        };
        // A write may need a copy-on-write head and tail at once: two whole blocks (a
        // read-only open uses no bounce slots).
        let bounce_needed = if self.options.writable {
            slot_len.saturating_mul(2)
        } else {
            0
        };
        if pages * PAGE_BYTES < MIN_CACHE || total - bounce_base < bounce_needed {
            return self.fail_open(OpenError::MemoryTooSmall {
                given: total,
                needed: (cache_base + MIN_CACHE).saturating_add(bounce_needed),
            });
        }
        self.cache = PageCache::new(cache_base, pages);
        self.bounce_area = (bounce_base, total - bounce_base);
        if self.options.writable {
            // Slots hold whole blocks; when the area allows more than the pool's slots of
            // one block, each slot holds several (a copy-on-read fill then copies that
            // many blocks with one base read).
            let per_slot = (total - bounce_base) / MAX_BOUNCE_SLOTS;
            let slot_len = match slot_len {
                0 => 0,
                block => block.max(per_slot / block * block),
            };
            self.bounce = BouncePool::new(bounce_base, total - bounce_base, slot_len);
        } else {
            // A read-only open never copies on write or fills: the bounce area holds the
            // journal overlay's touched-page filter instead.
            self.overlay
                .use_filter_area(bounce_base, total - bounce_base, self.memory.as_mut());
        }
        self.journal_sectors = layout
            .journal
            .map_or(0, |j| j.len / JOURNAL_SECTOR_SIZE as u64);
        self.layout = Some(layout);

        let dirty_journal = !layout.clean_shutdown && self.journal_sectors > 0;
        self.lifecycle = match (self.options.writable, dirty_journal) {
            (true, true) => Lifecycle::Replay {
                batch: 0,
                loaded: false,
                issued: false,
                sector: 0,
                record: 0,
            },
            (true, false) if layout.table.is_some() => Lifecycle::ScanTable {
                page: 0,
                window: 0,
                then_commit: true,
            },
            (true, false) => {
                self.start_commit(Purpose::OpenClean);
                Lifecycle::Committing
            }
            (false, true) => Lifecycle::ScanJournal {
                batch: 0,
                issued: false,
            },
            (false, false) => {
                self.events.push(Event::Opened);
                Lifecycle::Open
            }
        };
    }

    fn after_open_commit(&mut self, purpose: Purpose) {
        if purpose == Purpose::OpenReplayed && self.layout.and_then(|l| l.table).is_some() {
            self.lifecycle = Lifecycle::ScanTable {
                page: 0,
                window: 0,
                then_commit: false,
            };
        } else {
            self.lifecycle = Lifecycle::Open;
            self.events.push(Event::Opened);
        }
    }
}
