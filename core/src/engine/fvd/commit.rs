//! Commits: the one place where metadata becomes durable, in the order the crash rules
//! demand. A guest flush, a cache that needs room, a close and an open all run through
//! the same steps: flush data, then journal the changed metadata bytes (or, when the
//! journal is full or the image closes, write the pages back to their regions and move
//! the journal epoch on through the header), then flush the image. A clean close then
//! punches the journal sectors the session wrote: the header naming the new epoch is
//! durable, so they are stale (FORMAT.md §10.5) and need no disk space.
//!
//! Table changes always become durable before bitmap changes (a flush between them): a
//! bitmap bit that says "local" must never reach the disk before the table entry that
//! maps the block's chunk, or the block would read as zeros after a crash.

use super::FvdEngine;
use crate::engine::cache::{Meta, PageState, PAGE_BYTES};
use crate::engine::protocol::FormatEngine;
use crate::engine::slot_table::{buffer_len, slot_u16};
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::engine::{HEADER_AREA, SCRATCH_AREA};
use crate::fvd::header::{mutable_sectors, FVD_VERSION};
use crate::fvd::journal::{next_epoch, SectorBuilder, JOURNAL_SECTOR_SIZE};
use zerocopy::little_endian::{U32, U64};

/// A clean close punches the stale journal in whole units of this many bytes (a common
/// file system block).
const PUNCH_UNIT: u64 = 4096;

/// Why a commit runs; decides its steps and what happens at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A guest flush or a cache that needs durable pages.
    Flush,
    /// Closing: write everything back and mark the image clean.
    Close,
    /// Opening after replay: write the replayed pages back, move the epoch, mark dirty.
    OpenReplayed,
    /// Opening a clean image: mark it dirty (in use).
    OpenClean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    DataFlush,
    Journal,
    JournalFlush,
    WriteBack,
    BackFlush,
    Header,
    HeaderFlush,
    /// After a clean close's header flush: punch the stale journal sectors.
    JournalPunch,
}

/// The commit machine's state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommitState {
    /// Some page needs a commit before it can be evicted.
    pub(crate) wanted: bool,
    /// A request waits for the next commit to make room in the cache.
    pub(crate) room_wanted: bool,
    /// The running commit was started (also) to make room in the cache.
    for_room: bool,
    /// A page write-back failed (reported by the next commit).
    pub(crate) write_back_failed: Option<IoError>,
    step: Step,
    purpose: Purpose,
    issued: bool,
    outstanding: u16,
    started_seq: u64,
    start_gen: u64,
    recycling: bool,
    wrote_journal: bool,
    flush_then_journal: bool,
    batch_sectors: u64,
    /// Which metadata the journal or write-back steps handle now (table first).
    phase: Meta,
    /// Journal sectors were written in the current phase.
    phase_wrote: bool,
    error: Option<IoError>,
    /// Set when a commit with `Purpose` other than Flush finished: (purpose, error).
    pub(crate) finished: Option<(Purpose, Option<IoError>)>,
    /// How the last commit failed, until someone takes it (prefetch bounds its retries
    /// with it); cleared by a commit that succeeds.
    pub(crate) last_failure: Option<IoError>,
}

impl CommitState {
    pub(crate) const IDLE: CommitState = CommitState {
        wanted: false,
        room_wanted: false,
        for_room: false,
        write_back_failed: None,
        step: Step::Idle,
        purpose: Purpose::Flush,
        issued: false,
        outstanding: 0,
        started_seq: 0,
        start_gen: 0,
        recycling: false,
        wrote_journal: false,
        flush_then_journal: false,
        batch_sectors: 0,
        phase: Meta::Table,
        phase_wrote: false,
        error: None,
        finished: None,
        last_failure: None,
    };

    /// True while a commit runs: metadata changes wait until it ends.
    pub(crate) fn in_window(&self) -> bool {
        self.step != Step::Idle
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Starts a commit for `purpose` (the commit machine must be idle).
    pub(crate) fn start_commit(&mut self, purpose: Purpose) {
        let first = match purpose {
            Purpose::Flush | Purpose::Close => Step::DataFlush,
            Purpose::OpenReplayed => Step::WriteBack,
            Purpose::OpenClean => Step::Header,
        };
        self.stats.commits += 1;
        if purpose == Purpose::OpenReplayed {
            // The replayed journal's sectors all go stale with this commit.
            self.journal_stale = self.journal_sectors;
        }
        self.commit = CommitState {
            step: first,
            purpose,
            started_seq: self.next_seq,
            start_gen: self.change_gen,
            wanted: false,
            for_room: self.commit.room_wanted,
            write_back_failed: None,
            ..CommitState::IDLE
        };
    }

    fn emit_commit(&mut self, file: FileId, op: Op) -> bool {
        if self.commands.emit(Owner::Commit, file, op) {
            self.commit.outstanding += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn commit_command_done(&mut self, result: Result<(), IoError>) {
        self.commit.outstanding = self.commit.outstanding.saturating_sub(1);
        if let Err(error) = result {
            self.commit.error.get_or_insert(error);
        }
    }

    /// Advances the commit machine; true when something changed.
    pub(crate) fn step_commit(&mut self) -> bool {
        if self.commit.step == Step::Idle {
            if self.is_open() && (self.flush_waiting() || self.commit.wanted) {
                self.start_commit(Purpose::Flush);
                return true;
            }
            return false;
        }
        if !self.commit.issued {
            if !self.issue_step() {
                return false;
            }
            self.commit.issued = true;
            return true;
        }
        let writing_back = self
            .cache
            .indices()
            .any(|i| self.cache.slot(i).state == PageState::WritingBack);
        if self.commit.outstanding > 0 || (self.commit.step == Step::WriteBack && writing_back) {
            return false;
        }
        if self.commit.step == Step::JournalPunch {
            // The image is clean already; a punch that failed (or zeroed only part) leaves
            // stale sectors, which are never replayed: not an error of the close.
            self.commit.error = None;
        }
        if let Some(error) = self.commit.error.or(self.commit.write_back_failed.take()) {
            if self.commit.step == Step::Journal {
                self.mark_all_unjournaled();
            }
            self.end_commit(Some(error));
            return true;
        }
        self.after_step();
        true
    }

    /// Emits the commands of the current step; false when it must wait for command slots.
    fn issue_step(&mut self) -> bool {
        let image = FileId::Image;
        match self.commit.step {
            Step::Idle => true,
            Step::DataFlush => {
                self.commit.start_gen = self.change_gen;
                self.commands.free() > 0 && self.emit_commit(self.data_file(), Op::Flush)
            }
            Step::JournalFlush | Step::BackFlush | Step::HeaderFlush => {
                self.commands.free() > 0 && self.emit_commit(image, Op::Flush)
            }
            Step::JournalPunch => {
                let (offset, journal_len) = self
                    .layout
                    .and_then(|l| l.journal)
                    .map_or((0, 0), |j| (j.offset, j.len));
                // Every sector is stale now, so the punch may reach past the ones written:
                // up to whole 4 KiB (a file system block), which a partial punch would only
                // zero. Never past the journal (`journal_stale <= journal_sectors`).
                let len = (self.journal_stale * JOURNAL_SECTOR_SIZE as u64)
                    .next_multiple_of(PUNCH_UNIT)
                    .min(journal_len);
                let op = Op::WriteZeroes {
                    offset,
                    len,
                    unmap: true,
                };
                self.commands.free() > 0 && self.emit_commit(image, op)
            }
            Step::Journal => {
                let phase = self.commit.phase;
                if !self.cache.any_unjournaled_of(phase) {
                    return true;
                }
                if self.journal_next + (SCRATCH_AREA / JOURNAL_SECTOR_SIZE) as u64
                    > self.journal_sectors
                {
                    // Not enough room for a full batch: recycle first.
                    self.commit.recycling = true;
                    self.commit.step = Step::WriteBack;
                    self.commit.phase = Meta::Table;
                    return self.issue_step();
                }
                if self.commands.free() == 0 {
                    return false;
                }
                let sectors = self.build_journal_batch(phase);
                let offset = self.layout.and_then(|l| l.journal).map_or(0, |j| j.offset)
                    + self.journal_next * JOURNAL_SECTOR_SIZE as u64;
                let op = Op::Write {
                    offset,
                    len: buffer_len(sectors) * JOURNAL_SECTOR_SIZE,
                    from: Buffer::Engine {
                        offset: HEADER_AREA,
                    },
                };
                self.commit.batch_sectors = sectors;
                self.stats.journal_sectors += sectors;
                self.stats.journal_writes += 1;
                self.emit_commit(image, op)
            }
            Step::WriteBack => {
                let phase = self.commit.phase;
                for i in self.cache.indices() {
                    let s = self.cache.slot(i);
                    if s.dirty
                        && s.state == PageState::Ready
                        && s.key.meta == phase
                        && !self.write_back(i)
                    {
                        return false;
                    }
                }
                true
            }
            Step::Header => {
                let purpose = self.commit.purpose;
                let recycling = self.commit.recycling;
                let mut epoch = self.layout.map_or(0, |l| l.stable_journal_epoch);
                // Every read-write open starts a new epoch, so journal sectors left by any earlier
                // session (even of an image forced clean by hand) can never be replayed.
                // The new epoch also lies above every intact sector the replay saw, so no
                // sector already in the journal becomes current.
                if recycling || purpose != Purpose::Flush {
                    // A writable open starts at most MAX_WRITABLE_EPOCH, so this fails only
                    // after some 2^62 recycles; the header is left at the old epoch.
                    let Some(next) = next_epoch(epoch, self.journal_epoch_seen) else {
                        self.end_commit(Some(IoError::NoSpace));
                        return true;
                    };
                    epoch = next;
                }
                if self.commands.free() < 3 {
                    return false;
                }
                let header = self.header_mut();
                header.stable_journal_epoch = U64::new(epoch);
                header.clean_shutdown = U32::new(u32::from(purpose == Purpose::Close));
                if matches!(purpose, Purpose::OpenClean | Purpose::OpenReplayed) {
                    header.last_open_version = U32::new(FVD_VERSION);
                }
                if let Some(layout) = self.layout.as_mut() {
                    layout.stable_journal_epoch = epoch;
                    layout.clean_shutdown = purpose == Purpose::Close;
                }
                for sector in [
                    mutable_sectors::VERSION,
                    mutable_sectors::SHUTDOWN_AND_EPOCH,
                    mutable_sectors::RELOCATION_AND_PREFETCH,
                ] {
                    let at = sector * 512;
                    self.emit_commit(
                        image,
                        Op::Write {
                            offset: at as u64,
                            len: 512,
                            from: Buffer::Engine { offset: at },
                        },
                    );
                }
                true
            }
        }
    }

    /// Moves to the next step after the current one's commands completed.
    fn after_step(&mut self) {
        self.commit.issued = false;
        let has_journal = self.journal_sectors > 0;
        self.commit.step = match self.commit.step {
            Step::Idle => Step::Idle,
            Step::DataFlush => {
                self.commit.phase = Meta::Table;
                match self.commit.purpose {
                    Purpose::Flush if has_journal => Step::Journal,
                    _ => Step::WriteBack,
                }
            }
            Step::Journal => {
                if self.commit.batch_sectors > 0 {
                    self.journal_next += self.commit.batch_sectors;
                    self.journal_stale = self.journal_stale.max(self.journal_next);
                    self.commit.batch_sectors = 0;
                    self.commit.wrote_journal = true;
                    self.commit.phase_wrote = true;
                    Step::Journal
                } else if self.commit.phase == Meta::Table {
                    // Table records must be durable before any bitmap record.
                    self.commit.phase = Meta::Bitmap;
                    if core::mem::take(&mut self.commit.phase_wrote)
                        && self.cache.any_unjournaled_of(Meta::Bitmap)
                    {
                        self.commit.flush_then_journal = true;
                        Step::JournalFlush
                    } else {
                        Step::Journal
                    }
                } else if self.commit.wrote_journal {
                    Step::JournalFlush
                } else {
                    return self.end_commit(None);
                }
            }
            Step::JournalFlush => {
                if core::mem::take(&mut self.commit.flush_then_journal) {
                    Step::Journal
                } else {
                    return self.end_commit(None);
                }
            }
            Step::WriteBack => {
                let phase = self.commit.phase;
                let left = self.cache.indices().any(|i| {
                    let s = self.cache.slot(i);
                    s.dirty && s.key.meta == phase && s.state != PageState::Free
                });
                if left {
                    Step::WriteBack
                } else {
                    Step::BackFlush
                }
            }
            Step::BackFlush => {
                if self.commit.phase == Meta::Table {
                    self.commit.phase = Meta::Bitmap;
                    Step::WriteBack
                } else if self.commit.recycling || self.commit.purpose != Purpose::Flush {
                    Step::Header
                } else {
                    return self.end_commit(None);
                }
            }
            Step::Header => Step::HeaderFlush,
            Step::JournalPunch => {
                self.journal_stale = 0;
                return self.end_commit(None);
            }
            Step::HeaderFlush => {
                self.journal_next = 0;
                if self.commit.purpose == Purpose::Close
                    && self.journal_stale > 0
                    && self.options.release_stale_journal
                {
                    // Only a clean close punches: after a recycle the journal fills again
                    // at once, and after an open the session is about to write it.
                    Step::JournalPunch
                } else if self.commit.recycling && self.commit.purpose == Purpose::Flush {
                    self.commit.recycling = false;
                    self.commit.phase = Meta::Table;
                    self.stats.recycles += 1;
                    Step::Journal
                } else {
                    return self.end_commit(None);
                }
            }
        };
    }

    fn end_commit(&mut self, error: Option<IoError>) {
        let commit = self.commit;
        match error {
            None => {
                // Every change older than the commit is now durable (journal or regions),
                // so pages holding only such changes may be written back in any order.
                self.durable_gen = self.durable_gen.max(commit.start_gen);
                // Nothing changes during a commit, so everything made before it is
                // committed.
                self.dirty_since_ms = None;
                self.room_error = None;
            }
            // Requests wait for this commit to free cache pages: one of them hears that it
            // failed (each retry that fails fails one request, so a storage that keeps
            // failing fails requests rather than being retried forever).
            Some(error) if commit.for_room || commit.room_wanted => {
                self.room_error = Some(error);
            }
            Some(_) => {}
        }
        self.commit = CommitState {
            wanted: commit.wanted && error.is_none(),
            last_failure: error,
            ..CommitState::IDLE
        };
        match commit.purpose {
            Purpose::Flush => {
                let result = match error {
                    Some(e) => Err(RequestError::Io(e)),
                    None => Ok(Reply::Done),
                };
                self.finish_flushes(commit.started_seq, result);
            }
            purpose => self.commit.finished = Some((purpose, error)),
        }
    }

    /// After a failed journal write nobody knows which bytes reached the disk: journal
    /// every dirty page whole next time (all of it a record may name: never the padding
    /// after the table's last entry, which replay would refuse as corrupt).
    fn mark_all_unjournaled(&mut self) {
        for i in self.cache.indices() {
            let slot = *self.cache.slot(i);
            if slot.dirty {
                let end = self.journal_extent(slot.key);
                let s = self.cache.slot_mut(i);
                s.journal_lo = 0;
                s.journal_hi = end;
            }
        }
    }

    /// Packs unjournaled page bytes into journal sectors in the scratch area; returns the
    /// number of sectors built.
    fn build_journal_batch(&mut self, phase: Meta) -> u64 {
        let epoch = self.layout.map_or(0, |l| l.stable_journal_epoch);
        let cache_base = self.cache.offset(0);
        let max_sectors = SCRATCH_AREA / JOURNAL_SECTOR_SIZE;
        let mut built = 0usize;
        let (front, pages) = self.memory.as_mut().split_at_mut(cache_base);
        let Some(scratch) = front.get_mut(HEADER_AREA..HEADER_AREA + SCRATCH_AREA) else {
            return 0;
        };
        let mut sectors = scratch.chunks_exact_mut(JOURNAL_SECTOR_SIZE);
        let Some(mut builder) = sectors.next().and_then(SectorBuilder::new) else {
            return 0;
        };
        'pages: for i in self.cache.indices() {
            let slot = *self.cache.slot(i);
            if slot.state == PageState::Free || !slot.unjournaled() || slot.key.meta != phase {
                continue;
            }
            let Some(bytes) = pages.get(i * PAGE_BYTES..(i + 1) * PAGE_BYTES) else {
                continue;
            };
            let mut lo = usize::from(slot.journal_lo);
            let hi = usize::from(slot.journal_hi);
            let page_start = slot.key.index * PAGE_BYTES as u64;
            while lo < hi {
                // `journal_lo <= journal_hi <= PAGE_BYTES` (mark_changed records offsets
                // inside the page; PAGE_BYTES is a multiple of 4), and table pages belong to a
                // table of at most MAX_CHUNKS (2^31) entries, so the entry index fits u32.
                #[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
                let taken = match slot.key.meta {
                    Meta::Bitmap => builder.push_bitmap(page_start + lo as u64, &bytes[lo..hi]),
                    Meta::Table => {
                        let (lo4, hi4) = (lo / 4 * 4, hi.div_ceil(4) * 4);
                        lo = lo4;
                        builder.push_table(((page_start + lo4 as u64) / 4) as u32, &bytes[lo4..hi4])
                            * 4
                    }
                };
                if taken == 0 {
                    builder.finish(epoch, self.journal_next + built as u64);
                    built += 1;
                    match sectors.next().and_then(SectorBuilder::new) {
                        Some(next) if built < max_sectors => builder = next,
                        _ => {
                            self.cache.slot_mut(i).journal_lo = slot_u16(lo);
                            return built as u64;
                        }
                    }
                    continue;
                }
                lo += taken;
            }
            let s = self.cache.slot_mut(i);
            s.journal_lo = 0;
            s.journal_hi = 0;
            if built >= max_sectors {
                break 'pages;
            }
        }
        if !builder.is_empty() {
            builder.finish(epoch, self.journal_next + built as u64);
            built += 1;
        }
        built as u64
    }
}
