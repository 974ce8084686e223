//! A QED image's life in the engine: reading and validating the header, the consistency
//! check (and repair) an image marked need-check gets before use, the need-check bit
//! itself, commits (data flush, table pages written back in place, flush), and close.

use super::super::cache::PageState;
use super::super::slots::Owner;
use super::super::types::{
    Buffer, Corruption, Event, FileId, IoError, Op, OpenError, Reply, RequestError,
};
use super::super::{HEADER_AREA, MIN_CACHE, SCRATCH_AREA};
use super::meta::Stall;
use super::requests::State;
use super::QedEngine;
use crate::engine::PAGE_BYTES;
use crate::qed::header::features;
use crate::qed::table::ENTRY_SIZE;
use crate::qed::{L1Entry, L2Entry, QedHeader};
use zerocopy::FromBytes;

/// Bytes of the image read and rewritten as the header: its first sector.
pub(super) const HEADER_SECTOR: usize = 512;
/// Least bounce memory accepted (copy-on-write then runs in pieces this small).
const MIN_BOUNCE: usize = 4096;

/// Where the image is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// The header read is to be emitted.
    Start,
    /// Waiting for the header.
    ReadingHeader,
    /// Writable open: the header's unknown auto-clear bits are being cleared.
    Clearing,
    /// Writable open of a need-check image: scanning every table entry.
    Checking,
    /// The scan ended: repairs committed, then the need-check bit cleared.
    CheckDone,
    /// Serving requests.
    Open,
    /// Close started: waiting for requests, then committing and clearing need-check.
    Closing,
    /// Done (closed or failed to open).
    Closed,
}

/// The open-time scan: next L1 index, the L2 table being scanned and its next entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Check {
    l1: u64,
    table: Option<u64>,
    l2: u64,
    /// Invalid entries found (and reset to unallocated).
    pub(super) repaired: u64,
}

impl Check {
    pub(super) const START: Check = Check {
        l1: 0,
        table: None,
        l2: 0,
        repaired: 0,
    };
}

/// The need-check bit's writer: header sector written, then flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeaderState {
    Idle,
    /// The header sector (with the bit as `set`) is to be written / is being written.
    Write {
        set: bool,
        issued: bool,
    },
    /// The write landed; the flush is to be emitted / in flight.
    Flush {
        set: bool,
        issued: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CommitStage {
    Idle,
    /// Flushing data so the changed pages may be written.
    FlushData {
        issued: bool,
    },
    /// Writing back every page changed before the commit started.
    WriteBack,
    /// Flushing the written pages.
    FlushMeta {
        issued: bool,
    },
}

/// The commit machine: `started` / `done` count commits; a flush request waits for the
/// first commit that starts after it.
#[derive(Clone, Copy, Debug)]
pub(super) struct CommitState {
    pub(super) stage: CommitStage,
    pub(super) wanted: bool,
    /// A request waits for the next commit to make room in the cache.
    pub(super) room_wanted: bool,
    /// The running commit was started (also) to make room in the cache.
    for_room: bool,
    pub(super) started: u64,
    pub(super) done: u64,
    /// The change generation the running commit covers.
    mark: u64,
    wrote: bool,
    pub(super) error: Option<IoError>,
    /// A commit failed during close: the image stays marked need-check.
    close_failed: bool,
}

impl CommitState {
    pub(super) const IDLE: CommitState = CommitState {
        stage: CommitStage::Idle,
        wanted: false,
        room_wanted: false,
        for_room: false,
        started: 0,
        done: 0,
        mark: 0,
        wrote: false,
        error: None,
        close_failed: false,
    };
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> QedEngine<M, PAGES> {
    fn header_mut(&mut self) -> Option<&mut QedHeader> {
        QedHeader::mut_from_prefix(self.memory.as_mut())
            .ok()
            .map(|(h, _)| h)
    }

    fn fail_open(&mut self, error: OpenError) {
        self.events.push(Event::OpenFailed(error));
        self.phase = Phase::Closed;
    }

    fn opened(&mut self) {
        self.phase = Phase::Open;
        self.events.push(Event::Opened);
    }

    pub(super) fn step_lifecycle(&mut self) -> bool {
        match self.phase {
            Phase::Start => {
                if self.memory.as_ref().len() < HEADER_SECTOR {
                    let given = self.memory.as_ref().len();
                    self.fail_open(OpenError::MemoryTooSmall {
                        given,
                        needed: HEADER_AREA + SCRATCH_AREA + MIN_CACHE + MIN_BOUNCE,
                    });
                    return true;
                }
                let op = Op::Read {
                    offset: 0,
                    len: HEADER_SECTOR,
                    into: Buffer::Engine { offset: 0 },
                };
                if self.commands.emit(Owner::Lifecycle, FileId::Image, op) {
                    self.phase = Phase::ReadingHeader;
                    return true;
                }
                false
            }
            Phase::Clearing => {
                if self.header == HeaderState::Idle {
                    self.after_header_ready();
                    return true;
                }
                false
            }
            Phase::Checking => self.step_check(),
            Phase::CheckDone => {
                if self.any_dirty() {
                    if self.commit.stage == CommitStage::Idle {
                        if self.commit.error.take().is_some() {
                            self.fail_open(OpenError::Io(IoError::Failed));
                            return true;
                        }
                        self.commit.wanted = true;
                    }
                    return false;
                }
                if self.commit.stage != CommitStage::Idle || self.header != HeaderState::Idle {
                    return false;
                }
                if self.need_check_on_disk {
                    self.header = HeaderState::Write {
                        set: false,
                        issued: false,
                    };
                    return true;
                }
                self.opened();
                true
            }
            Phase::Closing => self.step_close(),
            Phase::ReadingHeader | Phase::Open | Phase::Closed => false,
        }
    }

    pub(super) fn lifecycle_done(&mut self, result: Result<(), IoError>) {
        if self.phase == Phase::ReadingHeader {
            match result {
                Ok(()) => self.header_read(),
                Err(error) => self.fail_open(OpenError::Io(error)),
            }
            return;
        }
        self.header_command_done(result);
    }

    fn header_read(&mut self) {
        let options = self.options;
        // Engine memory is at least HEADER_SECTOR bytes (checked before the header read).
        let header = self
            .memory
            .as_ref()
            .get(..HEADER_SECTOR)
            .unwrap_or_default();
        let layout = match crate::qed::parse(header, options.image_len) {
            Ok((_, layout)) => layout,
            Err(error) => return self.fail_open(OpenError::QedHeader(error)),
        };
        if options.data_len.is_some() {
            return self.fail_open(OpenError::DataFileMismatch);
        }
        if layout.backing.is_some() && !options.base_available {
            return self.fail_open(OpenError::BaseMissing);
        }
        let fixed = HEADER_AREA + SCRATCH_AREA;
        let cache_bytes = options.cache_bytes.max(MIN_CACHE);
        let needed = fixed + cache_bytes + MIN_BOUNCE;
        let given = self.memory.as_ref().len();
        if given < needed {
            return self.fail_open(OpenError::MemoryTooSmall { given, needed });
        }
        let cs = layout.cluster_size;
        let pages = (cache_bytes / PAGE_BYTES).min(PAGES);
        let bounce_base = fixed + pages * PAGE_BYTES;
        let bounce_total = given - bounce_base;
        // Whole clusters when two fit (copy-on-read needs a whole cluster); otherwise
        // pieces of half the space, whole sectors.
        let slot_len = match usize::try_from(cs) {
            Ok(cs) if bounce_total / 2 >= cs => cs,
            _ => (bounce_total / 2) / PAGE_BYTES * PAGE_BYTES,
        };
        self.cache = super::super::cache::PageCache::new(fixed, pages);
        self.bounce = super::super::bounce::BouncePool::new(bounce_base, bounce_total, slot_len);
        self.bounce_len = slot_len as u64;
        self.alloc_end = options.image_len.div_ceil(cs).saturating_mul(cs);
        self.file_len = options.image_len;
        self.need_check_on_disk = layout.need_check;
        let backing = layout.backing.is_some();
        self.copy_on_read = options.writable
            && backing
            && options
                .copy_on_read
                .unwrap_or(layout.compat_features & features::COMPAT_COPY_ON_READ != 0)
            && self.bounce_len >= cs;
        // Copy-on-read fills may hold up to a quarter of the bounce slots.
        self.cor_cap = (self.bounce.capacity() as u64 / 4).max(1) * cs;
        self.layout = Some(layout);
        if !options.writable {
            self.opened();
            return;
        }
        let cleared = self
            .header_mut()
            .is_some_and(|h| h.clear_unknown_autoclear());
        if cleared {
            self.header = HeaderState::Write {
                set: layout.need_check,
                issued: false,
            };
            self.phase = Phase::Clearing;
            return;
        }
        self.after_header_ready();
    }

    fn after_header_ready(&mut self) {
        if self.need_check_on_disk {
            self.phase = Phase::Checking;
        } else {
            self.opened();
        }
    }

    /// Scans one L1 entry or one page of L2 entries. An entry naming a table or cluster
    /// past the end of the file (what a crash can leave, QEMU's or ours) is reset to
    /// unallocated, as `qemu-img check -r` does, with the same rule the engine and
    /// `check` apply (`QedLayout::table_in_file`, `cluster_in_file`). An entry no writer
    /// produces (misaligned, inside the header) means the table is not what it claims to
    /// be — perhaps guest data an L1 entry points at — so nothing in it is changed: the
    /// writable open is refused and `check -r all`, which sees every cluster's use,
    /// repairs the image.
    fn step_check(&mut self) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let (cs, file_len) = (layout.cluster_size, self.file_len);
        if self.check.l1 >= layout.table_entries {
            self.phase = Phase::CheckDone;
            return true;
        }
        let stalled = |engine: &mut Self, stall: Stall| -> bool {
            match stall {
                Stall::Wait => false,
                Stall::Io(error) => {
                    engine.fail_open(OpenError::Io(error));
                    true
                }
                Stall::Corrupt(c) => {
                    engine.fail_open(OpenError::Corrupt(c));
                    true
                }
            }
        };
        match self.check.table {
            None => {
                let at = self.l1_entry_offset(self.check.l1);
                let raw = match self.entry_at(at) {
                    Ok(raw) => raw,
                    Err(stall) => return stalled(self, stall),
                };
                match layout.decode_l1(raw) {
                    L1Entry::Unallocated => {}
                    L1Entry::Table(t) if layout.table_in_file(t, file_len) => {
                        self.check.table = Some(t);
                        self.check.l2 = 0;
                        return true;
                    }
                    L1Entry::Table(t) if layout.beyond_file(t, layout.table_len, file_len) => {
                        if let Err(stall) = self.set_entry_at(at, 0) {
                            return stalled(self, stall);
                        }
                        self.check.repaired += 1;
                    }
                    _ => {
                        let bad = Corruption::BadL1Entry {
                            index: self.check.l1,
                            entry: raw,
                        };
                        return stalled(self, Stall::Corrupt(bad));
                    }
                }
                self.check.l1 += 1;
                true
            }
            Some(table) => {
                let first = self.check.l2;
                let per_page = PAGE_BYTES as u64 / ENTRY_SIZE;
                let end = ((first / per_page + 1) * per_page).min(layout.table_entries);
                if let Err(stall) = self.page_at(table + first * ENTRY_SIZE) {
                    return stalled(self, stall);
                }
                for l2 in first..end {
                    let at = table + l2 * ENTRY_SIZE;
                    let Ok(raw) = self.entry_at(at) else {
                        return false;
                    };
                    if layout.l2_entry_impossible(raw) {
                        let span = layout.table_entries.saturating_mul(cs);
                        let bad = Corruption::BadL2Entry {
                            offset: self.check.l1.saturating_mul(span).saturating_add(l2 * cs),
                            entry: raw,
                        };
                        return stalled(self, Stall::Corrupt(bad));
                    }
                    // What a crash can leave: a cluster past the end of the file.
                    let valid = !matches!(
                        layout.decode_l2(raw),
                        L2Entry::Cluster(p) if layout.beyond_file(p, cs, file_len)
                    );
                    if !valid {
                        // The page is resident: setting cannot stall.
                        if self.set_entry_at(at, 0).is_err() {
                            return false;
                        }
                        self.check.repaired += 1;
                    }
                }
                self.check.l2 = end;
                if end >= layout.table_entries {
                    self.check.table = None;
                    self.check.l1 += 1;
                }
                true
            }
        }
    }

    /// True when the running commit still has to write page `slot` (its changes predate
    /// the commit's data flush).
    pub(super) fn commit_must_write(&self, slot: usize) -> bool {
        let page = self.cache.slot(slot);
        matches!(
            self.commit.stage,
            CommitStage::FlushData { .. } | CommitStage::WriteBack
        ) && page.dirty
            && page.change_gen <= self.commit.mark
    }

    /// True when some cache page differs from the file.
    pub(super) fn any_dirty(&self) -> bool {
        self.cache.indices().any(|i| {
            let s = self.cache.slot(i);
            s.state != PageState::Free && s.dirty
        })
    }

    pub(super) fn begin_close(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
        }
    }

    fn step_close(&mut self) -> bool {
        if self.active > 0 {
            return false;
        }
        if !self.options.writable {
            self.phase = Phase::Closed;
            self.events.push(Event::Closed { clean: true });
            return true;
        }
        if self.commit.stage != CommitStage::Idle || self.header != HeaderState::Idle {
            return false;
        }
        if self.commit.close_failed {
            self.phase = Phase::Closed;
            self.events.push(Event::Closed { clean: false });
            return true;
        }
        if self.any_dirty() {
            self.commit.wanted = true;
            return false;
        }
        if self.need_check_on_disk {
            self.header = HeaderState::Write {
                set: false,
                issued: false,
            };
            return true;
        }
        self.phase = Phase::Closed;
        self.events.push(Event::Closed { clean: true });
        true
    }

    /// True while some request is on its way to change metadata (it passed or waits at
    /// the need-check gate and has not yet changed the tables).
    fn metadata_changes_pending(&self) -> bool {
        self.table_alloc.is_some() || self.requests.iter().any(|r| r.changes_metadata())
    }

    /// Sets or clears the need-check bit when due.
    pub(super) fn step_header(&mut self) -> bool {
        match self.header {
            HeaderState::Idle => {
                if !self.options.writable || !matches!(self.phase, Phase::Open | Phase::Closing) {
                    return false;
                }
                if self.need_check_wanted && !self.need_check_on_disk {
                    self.need_check_wanted = false;
                    self.header = HeaderState::Write {
                        set: true,
                        issued: false,
                    };
                    return true;
                }
                // Clear after a quiet period with everything durable.
                let quiet = self.now_ms >= self.last_change_ms.saturating_add(super::QUIET_MS);
                if self.phase == Phase::Open
                    && self.need_check_on_disk
                    && quiet
                    && !self.metadata_changes_pending()
                {
                    if self.any_dirty() {
                        if self.commit.stage == CommitStage::Idle && !self.commit.wanted {
                            self.commit.wanted = true;
                            return true;
                        }
                        return false;
                    }
                    if self.commit.stage == CommitStage::Idle && !self.commit.wanted {
                        self.header = HeaderState::Write {
                            set: false,
                            issued: false,
                        };
                        return true;
                    }
                }
                false
            }
            HeaderState::Write { set, issued: false } => {
                if let Some(h) = self.header_mut() {
                    let bits = h.features.get();
                    let bits = if set {
                        bits | features::NEED_CHECK
                    } else {
                        bits & !features::NEED_CHECK
                    };
                    h.features.set(bits);
                }
                let op = Op::Write {
                    offset: 0,
                    len: HEADER_SECTOR,
                    from: Buffer::Engine { offset: 0 },
                };
                if self.commands.emit(Owner::Lifecycle, FileId::Image, op) {
                    self.header = HeaderState::Write { set, issued: true };
                    if set {
                        self.need_check_on_disk = true;
                    }
                    return true;
                }
                false
            }
            HeaderState::Flush { set, issued: false } => {
                if self
                    .commands
                    .emit(Owner::Lifecycle, FileId::Image, Op::Flush)
                {
                    self.header = HeaderState::Flush { set, issued: true };
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    fn header_command_done(&mut self, result: Result<(), IoError>) {
        match (self.header, result) {
            (HeaderState::Write { set, issued: true }, Ok(())) => {
                self.header = HeaderState::Flush { set, issued: false };
            }
            (HeaderState::Flush { set, issued: true }, Ok(())) => {
                self.header = HeaderState::Idle;
                self.need_check_on_disk = set;
            }
            (HeaderState::Write { set, .. } | HeaderState::Flush { set, .. }, Err(error)) => {
                self.header = HeaderState::Idle;
                if set {
                    // Nothing may change metadata without the bit on disk.
                    for r in self.requests.iter_mut() {
                        if r.state == State::NeedCheck {
                            r.error.get_or_insert(RequestError::Io(error));
                        }
                    }
                } else {
                    // The bit stays set: harmless (the next open checks the image).
                    self.need_check_on_disk = true;
                    if self.phase == Phase::Closing {
                        self.commit.close_failed = true;
                    }
                    if self.phase == Phase::CheckDone {
                        self.fail_open(OpenError::Io(error));
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn step_commit(&mut self) -> bool {
        match self.commit.stage {
            CommitStage::Idle => {
                if !self.commit.wanted || self.layout.is_none() || self.phase == Phase::Closed {
                    return false;
                }
                self.commit.wanted = false;
                self.commit.for_room = core::mem::take(&mut self.commit.room_wanted);
                self.commit.started += 1;
                self.commit.mark = self.change_gen;
                self.change_gen += 1;
                self.commit.wrote = false;
                self.commit.error = None;
                self.commit.stage = CommitStage::FlushData { issued: false };
                true
            }
            CommitStage::FlushData { issued: false } => {
                if self.commands.emit(Owner::Commit, FileId::Image, Op::Flush) {
                    self.commit.stage = CommitStage::FlushData { issued: true };
                    return true;
                }
                false
            }
            CommitStage::WriteBack => {
                let mut moved = false;
                let mut waiting = false;
                for slot in self.cache.indices() {
                    let s = *self.cache.slot(slot);
                    if !s.dirty || s.change_gen >= self.durable_gen {
                        continue;
                    }
                    match s.state {
                        // After a failed write-back the commit fails: a page is not written
                        // again (a storage that keeps failing would be retried forever).
                        PageState::Ready if self.commit.error.is_none() => {
                            if self.write_back(slot) {
                                self.commit.wrote = true;
                                moved = true;
                            }
                            waiting = true;
                        }
                        PageState::WritingBack => waiting = true,
                        _ => {}
                    }
                }
                if waiting {
                    return moved;
                }
                if self.commit.error.is_some() || !(self.commit.wrote || self.meta_unflushed) {
                    self.finish_commit();
                } else {
                    self.commit.stage = CommitStage::FlushMeta { issued: false };
                }
                true
            }
            CommitStage::FlushMeta { issued: false } => {
                if self.commands.emit(Owner::Commit, FileId::Image, Op::Flush) {
                    self.meta_unflushed = false;
                    self.commit.stage = CommitStage::FlushMeta { issued: true };
                    return true;
                }
                false
            }
            CommitStage::FlushData { issued: true } | CommitStage::FlushMeta { issued: true } => {
                false
            }
        }
    }

    pub(super) fn commit_command_done(&mut self, result: Result<(), IoError>) {
        match (self.commit.stage, result) {
            (CommitStage::FlushData { issued: true }, Ok(())) => {
                self.durable_gen = self.durable_gen.max(self.commit.mark + 1);
                self.commit.stage = CommitStage::WriteBack;
            }
            (CommitStage::FlushMeta { issued: true }, Ok(())) => self.finish_commit(),
            (_, Err(error)) => {
                self.commit.error.get_or_insert(error);
                self.finish_commit();
            }
            _ => {}
        }
    }

    fn finish_commit(&mut self) {
        self.commit.stage = CommitStage::Idle;
        self.commit.done += 1;
        self.stats.commits += 1;
        let result = match self.commit.error {
            None => {
                self.room_error = None;
                Ok(Reply::Done)
            }
            Some(error) => {
                if self.phase == Phase::Closing {
                    self.commit.close_failed = true;
                }
                // Requests wait for this commit to free cache pages: one of them hears
                // that it failed (so a storage that keeps failing fails requests rather
                // than being retried forever).
                if self.commit.for_room || self.commit.room_wanted {
                    self.room_error = Some(error);
                }
                Err(RequestError::Io(error))
            }
        };
        let done = self.commit.done;
        for slot in 0..self.requests.len() {
            let r = &self.requests[slot];
            if r.state == State::Flush && r.ticket <= done {
                self.finish(slot, result);
            }
        }
    }
}
