//! The image's life around the requests: reading and validating the header, replaying
//! the journal after an unclean shutdown (or laying it over pages for a read-only open),
//! scanning the chunk table for the allocation frontier and leaked chunks, the chunk
//! allocator with storage growth, and closing.

use super::bounce::BouncePool;
use super::cache::{Meta, PageCache, PageKey, PAGE_BYTES};
use super::commit::Purpose;
use super::meta::{Stall, ENTRIES_PER_PAGE};
use super::slots::Owner;
use super::types::*;
use super::{FvdEngine, HEADER_AREA, MAX_FREE_RANGES, MIN_CACHE, SCRATCH_AREA};
use crate::format::header::mutable_sectors;
use crate::format::journal::{
    fold_seen, room_for_session, SectorError, VerifiedSector, JOURNAL_SECTOR_SIZE,
    MAX_WRITABLE_EPOCH,
};
use crate::format::{parse, HeaderError, RAW_HEADER_LEN};
use zerocopy::little_endian::U32;

pub(crate) const BATCH_SECTORS: u64 = (SCRATCH_AREA / JOURNAL_SECTOR_SIZE) as u64;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    None,
    Growing,
    MarkingRelocated { flushed: bool, issued: bool },
}

/// Physical chunk allocation of a compact image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allocator {
    /// First physical chunk never referenced.
    pub(crate) frontier: u64,
    mapped: u64,
    free: [(u64, u64); MAX_FREE_RANGES],
    free_len: usize,
    pub(crate) storage_len: u64,
    known_zero_from: u64,
    pending: Pending,
    error: Option<IoError>,
}

impl Allocator {
    pub(crate) const EMPTY: Allocator = Allocator {
        frontier: 0,
        mapped: 0,
        free: [(0, 0); MAX_FREE_RANGES],
        free_len: 0,
        storage_len: 0,
        known_zero_from: 0,
        pending: Pending::None,
        error: None,
    };

    fn push_free(&mut self, start: u64, end: u64) -> bool {
        if self.free_len == MAX_FREE_RANGES {
            return false;
        }
        self.free[self.free_len] = (start, end);
        self.free_len += 1;
        true
    }
}

/// Physical chunks found unreferenced below the frontier and queued for reuse.
impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Leaked chunks found at open and not yet reused.
    pub fn leaked_chunks(&self) -> u64 {
        self.alloc.free[..self.alloc.free_len]
            .iter()
            .map(|(a, b)| b - a)
            .sum()
    }

    fn fail_open(&mut self, error: OpenError) {
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
        let layout = match parse(&self.memory.as_ref()[..RAW_HEADER_LEN], image_len) {
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
            layout.block_size as usize
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
                needed: cache_base + MIN_CACHE + bounce_needed,
            });
        }
        self.cache = PageCache::new(cache_base, pages);
        self.bounce_area = (bounce_base, total - bounce_base);
        if self.options.writable {
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

    pub(crate) fn batches(&self) -> u64 {
        self.journal_sectors.div_ceil(BATCH_SECTORS)
    }

    fn step_replay(&mut self) -> bool {
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
            let at = HEADER_AREA + sector as usize * JOURNAL_SECTOR_SIZE;
            // Copy the sector out so page accesses can borrow engine memory.
            let mut bytes = [0u8; JOURNAL_SECTOR_SIZE];
            bytes.copy_from_slice(&self.memory.as_ref()[at..at + JOURNAL_SECTOR_SIZE]);
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
        record: &crate::format::journal::Record<'_>,
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

    /// Bits of the leak-scan window (the bounce area, or the scratch area when larger).
    fn window_area(&self) -> (usize, u64) {
        let (bounce_base, bounce_len) = self.bounce_area;
        if bounce_len > SCRATCH_AREA {
            (bounce_base, bounce_len as u64 * 8)
        } else {
            (HEADER_AREA, SCRATCH_AREA as u64 * 8)
        }
    }

    /// One step of the open-time table scan. Pass `window` marks the physical chunks
    /// `[window, window + bits)` that entries name in a bitmap in engine memory: a chunk
    /// named twice is corruption (a write to one guest chunk would change the other), and
    /// an unnamed chunk below the frontier is a leak, queued for reuse. The first pass
    /// (window 0) also finds the frontier; further windows run only when the frontier
    /// lies beyond the first, so most images need one pass.
    fn step_scan_table(&mut self, page: u64, window: u64, then_commit: bool) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let Some(table) = layout.table else {
            return false;
        };
        let pages = table.chunks.div_ceil(ENTRIES_PER_PAGE);
        let (area, bits) = self.window_area();
        if page == 0 {
            // A window starts with no chunk marked as used.
            let len = (bits / 8) as usize;
            self.memory.as_mut()[area..area + len].fill(0);
        }
        let first_page = page;
        let mut page = page;
        while page < pages {
            let key = PageKey {
                meta: Meta::Table,
                index: page,
            };
            let slot = match self.page(key) {
                Ok(slot) => slot,
                Err(Stall::Wait) => {
                    self.lifecycle = Lifecycle::ScanTable {
                        page,
                        window,
                        then_commit,
                    };
                    return page > first_page;
                }
                Err(Stall::Io(e)) => {
                    self.fail_open(OpenError::Io(e));
                    return true;
                }
                Err(Stall::Corrupt(c)) => {
                    self.fail_open(OpenError::Corrupt(c));
                    return true;
                }
            };
            let first = page * ENTRIES_PER_PAGE;
            let last = (first + ENTRIES_PER_PAGE).min(table.chunks);
            for chunk in first..last {
                let entry = self.entry(slot, chunk);
                let p = match self.physical(chunk, entry) {
                    Ok(Some(p)) => p,
                    Ok(None) => continue,
                    Err(c) => {
                        self.fail_open(OpenError::Corrupt(c));
                        return true;
                    }
                };
                if window == 0 {
                    self.alloc.mapped += 1;
                    self.alloc.frontier = self.alloc.frontier.max(p + 1);
                }
                if p >= window && p - window < bits {
                    let bit = (p - window) as usize;
                    let byte = &mut self.memory.as_mut()[area + bit / 8];
                    let mask = 1u8 << (bit % 8);
                    if *byte & mask != 0 {
                        self.fail_open(OpenError::Corrupt(Corruption::SharedChunk {
                            chunk,
                            physical: p,
                        }));
                        return true;
                    }
                    *byte |= mask;
                }
            }
            page += 1;
        }
        // A pass is complete.
        if window == 0 {
            let storage_len = self.options.data_len.unwrap_or(self.options.image_len);
            self.alloc.storage_len = storage_len;
            self.alloc.known_zero_from = if self.options.storage_zero_init {
                storage_len
                    .saturating_sub(layout.data_offset)
                    .div_ceil(table.chunk_size)
            } else {
                u64::MAX
            };
        }
        let end = window.saturating_add(bits).min(self.alloc.frontier);
        self.queue_leaks(area, window, end);
        if end < self.alloc.frontier {
            self.lifecycle = Lifecycle::ScanTable {
                page: 0,
                window: end,
                then_commit,
            };
        } else if then_commit {
            self.start_commit(Purpose::OpenClean);
            self.lifecycle = Lifecycle::Committing;
        } else {
            self.lifecycle = Lifecycle::Open;
            self.events.push(Event::Opened);
        }
        true
    }

    /// Queues the runs of physical chunks in `[start, end)` whose bit in the window bitmap
    /// at `area` (bit 0 = chunk `start`) is clear, while the free list has room.
    fn queue_leaks(&mut self, area: usize, start: u64, end: u64) {
        let mut run: Option<u64> = None;
        let mut p = start;
        while p < end {
            let bit = (p - start) as usize;
            let byte = self.memory.as_ref()[area + bit / 8];
            // Whole bytes that do not end or start a run are skipped at once.
            if bit % 8 == 0 && end - p >= 8 && byte == if run.is_some() { 0 } else { 0xFF } {
                p += 8;
                continue;
            }
            let used = byte & (1 << (bit % 8)) != 0;
            match (used, run) {
                (false, None) => run = Some(p),
                (true, Some(r)) => {
                    if !self.alloc.push_free(r, p) {
                        return;
                    }
                    run = None;
                }
                _ => {}
            }
            p += 1;
        }
        if let Some(r) = run {
            self.alloc.push_free(r, end);
        }
    }

    /// Picks a physical chunk for a new allocation: a leaked one first, else the frontier.
    /// Returns it and whether its unwritten parts must be zeroed.
    pub(crate) fn allocate_chunk(&mut self) -> Result<(u64, bool), Stall> {
        if let Some(error) = self.alloc.error.take() {
            return Err(Stall::Io(error));
        }
        if self.alloc.pending != Pending::None {
            return Err(Stall::Wait);
        }
        let Some(layout) = self.layout else {
            return Err(Stall::Wait);
        };
        if layout.table.is_none() {
            return Err(Stall::Wait);
        }
        let reused = self.alloc.free_len > 0;
        let p = if reused {
            self.alloc.free[0].0
        } else {
            self.alloc.frontier
        };
        if reused && !layout.chunks_relocated {
            self.header_mut().chunks_relocated = U32::new(1);
            if let Some(l) = self.layout.as_mut() {
                l.chunks_relocated = true;
            }
            self.alloc.pending = Pending::MarkingRelocated {
                flushed: false,
                issued: false,
            };
            return Err(Stall::Wait);
        }
        // Physical chunks are 31-bit: past the last one, the storage is full.
        let (Some(end), Some(len)) = (layout.chunk_end(p), layout.grown_storage_len(p)) else {
            return Err(Stall::Io(IoError::NoSpace));
        };
        if end > self.alloc.storage_len {
            if self
                .commands
                .emit(Owner::Alloc, self.data_file(), Op::SetLength { len })
            {
                self.alloc.pending = Pending::Growing;
            }
            return Err(Stall::Wait);
        }
        if reused {
            let range = &mut self.alloc.free[0];
            range.0 += 1;
            if range.0 == range.1 {
                self.alloc.free.copy_within(1..self.alloc.free_len, 0);
                self.alloc.free_len -= 1;
            }
        } else {
            self.alloc.frontier += 1;
        }
        self.stats.chunks_allocated += 1;
        Ok((p, reused || p < self.alloc.known_zero_from))
    }

    fn step_pending_alloc(&mut self) -> bool {
        if let Pending::MarkingRelocated {
            flushed,
            issued: false,
        } = self.alloc.pending
        {
            let at = mutable_sectors::RELOCATION_AND_PREFETCH * 512;
            let op = if flushed {
                Op::Flush
            } else {
                Op::Write {
                    offset: at as u64,
                    len: 512,
                    from: Buffer::Engine { offset: at },
                }
            };
            if self.commands.emit(Owner::Alloc, FileId::Image, op) {
                self.alloc.pending = Pending::MarkingRelocated {
                    flushed,
                    issued: true,
                };
                return true;
            }
        }
        false
    }

    pub(crate) fn alloc_done(&mut self, op: Op, result: Result<(), IoError>) {
        match (op, result) {
            (Op::SetLength { len }, Ok(())) => {
                self.alloc.storage_len = len;
                self.alloc.pending = Pending::None;
            }
            (Op::SetLength { .. }, Err(error)) => {
                self.alloc.error = Some(if error == IoError::Failed {
                    IoError::NoSpace
                } else {
                    error
                });
                self.alloc.pending = Pending::None;
            }
            (Op::Write { .. }, Ok(())) => {
                self.alloc.pending = Pending::MarkingRelocated {
                    flushed: true,
                    issued: false,
                }
            }
            (Op::Flush, Ok(())) => self.alloc.pending = Pending::None,
            (_, Err(error)) => {
                // Retry the header update on the next allocation.
                self.alloc.error = Some(error);
                self.alloc.pending = Pending::MarkingRelocated {
                    flushed: false,
                    issued: false,
                };
            }
            _ => {}
        }
    }
}
