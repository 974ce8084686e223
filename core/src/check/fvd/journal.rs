//! The journal passes of the FVD check (FORMAT.md §10): the scan that counts the valid
//! sectors of the current epoch and marks the metadata pages their records touch, and the
//! replay that lays the records over those pages in batches of replay pages and reports
//! each bad record once (a repair writes the replayed pages back). The walks lay the
//! journal over their units with the same pages ([`super::walk`]). Records are applied with the engine's rule,
//! [`Record::apply_to`], per page: a record spanning two pages is judged in the batch that
//! holds its first page, which also holds the second.

use super::{FvdCheck, Phase, Problem, Step, PAGE, PAGE_LEN};
use crate::check::memory::{Area, Bits};
use crate::check::FileId;
use crate::fvd::journal::{
    fold_seen, Record, SectorError, SectorHeader, VerifiedSector, JOURNAL_SECTOR_SIZE,
};
use crate::fvd::replay::{RecordFault, RecordTarget};
use crate::fvd::ImageLayout;

/// Most replay pages held at once.
pub(crate) const MAX_PAGES: usize = 64;
const SECTOR: usize = JOURNAL_SECTOR_SIZE;

/// Metadata pages of `layout`: the table's, then the bitmap's.
pub(crate) fn page_count(layout: &ImageLayout) -> u64 {
    table_pages(layout) + layout.base.map_or(0, |b| b.bitmap.len / PAGE)
}

fn table_pages(layout: &ImageLayout) -> u64 {
    layout.table.map_or(0, |t| t.region.len / PAGE)
}

/// The journal's numbers and buffers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Journal {
    /// Buffer for a batch of sectors.
    pub(super) buf: Area,
    /// Pages touched by a record (bit `page % bits`: exact when there is a bit per page).
    filter: Bits,
    pages: u64,
    table_pages: u64,
    sectors_total: u64,
    /// One past the last sector that is valid or malformed: what replay passes read.
    pub(super) scan_end: u64,
    scan_batch: u64,
    scan_reading: bool,
    /// Valid sectors of the current epoch.
    pub(crate) sectors: u64,
    /// Records in them.
    pub(crate) records: u64,
    /// Malformed sectors of the current epoch.
    malformed: u64,
    /// Highest epoch of an intact sector of any epoch.
    pub(crate) highest_epoch: u64,
    /// Findings about the image as a whole.
    pub(crate) head_problems: u64,
    /// Findings about journal sectors and records.
    pub(crate) record_problems: u64,
    /// Records not applied because of a fault.
    pub(crate) bad_records: u64,
    /// Passes over the journal.
    pub(crate) passes: u64,
    /// Filter bits set.
    touched: u64,
}

impl Journal {
    pub(crate) fn new(layout: &ImageLayout, buf: Area, filter: Bits, pages: u64) -> Self {
        Journal {
            buf,
            filter,
            pages,
            table_pages: table_pages(layout),
            sectors_total: layout.journal.map_or(0, |j| j.len / SECTOR as u64),
            ..Journal::default()
        }
    }

    pub(super) fn per_batch(&self) -> u64 {
        (self.buf.len / SECTOR) as u64
    }

    /// Batches a replay pass reads.
    pub(crate) fn batches(&self) -> u64 {
        self.scan_end.div_ceil(self.per_batch())
    }

    /// A replay is needed: records to report or to lay over the metadata.
    pub(crate) fn replay_needed(&self) -> bool {
        self.sectors > 0 || self.malformed > 0
    }

    fn filter_bit(&self, page: u64) -> u64 {
        page % self.filter.0.bits()
    }

    pub(super) fn touched(&self, mem: &[u8], page: u64) -> bool {
        self.filter.get(mem, self.filter_bit(page))
    }

    /// The global page number of page `index` of `target`.
    pub(super) fn global(&self, target: RecordTarget, index: u64) -> u64 {
        match target {
            RecordTarget::Table => index,
            RecordTarget::Bitmap => self.table_pages + index,
        }
    }

    fn local(&self, page: u64) -> (RecordTarget, u64) {
        if page < self.table_pages {
            (RecordTarget::Table, page)
        } else {
            (RecordTarget::Bitmap, page - self.table_pages)
        }
    }
}

/// Metadata pages with the journal laid over them, in a batch of the replay pass; after
/// the pass, the last batch stays as a cache of replayed pages for the walks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplayPages {
    area: Area,
    capacity: usize,
    count: usize,
    keys: [u64; MAX_PAGES],
    /// Pages owned by this batch (records starting there are judged here).
    owned: u64,
    /// Pages the journal changed.
    changed: u64,
    /// Next candidate page.
    next: u64,
    first_batch: bool,
    stage: Stage,
}

impl Default for ReplayPages {
    fn default() -> Self {
        ReplayPages {
            area: Area::default(),
            capacity: 0,
            count: 0,
            keys: [0; MAX_PAGES],
            owned: 0,
            changed: 0,
            next: 0,
            first_batch: true,
            stage: Stage::Form,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Form,
    Load { page: usize, reading: bool },
    Journal(Cursor),
    WriteBack { page: usize, writing: bool },
    Next,
}

/// Where a journal pass stands: batch, sector in it, record in that sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    batch: u64,
    reading: bool,
    sector: u64,
    record: u64,
}

impl ReplayPages {
    pub(super) fn page_area(&self, slot: usize) -> Area {
        Area {
            at: self.area.at + slot * PAGE_LEN,
            len: PAGE_LEN,
        }
    }

    pub(super) fn slot_of(&self, page: u64) -> Option<usize> {
        self.keys
            .get(..self.count)
            .unwrap_or_default()
            .iter()
            .position(|&k| k == page)
    }

    /// Bytes of work memory the pages use.
    pub(crate) fn len(&self) -> usize {
        self.capacity * PAGE_LEN
    }
}

/// A copy of journal sector `sector` of the batch in `buf`.
pub(super) fn sector_copy(mem: &[u8], buf: Area, sector: u64) -> [u8; SECTOR] {
    // The batch buffer is an area of `mem` holding whole sectors; a sector outside it
    // reads as zeros, which no journal sector verifies as.
    let mut bytes = [0u8; SECTOR];
    let src = usize::try_from(sector)
        .ok()
        .and_then(|s| buf.at.checked_add(s.checked_mul(SECTOR)?))
        .and_then(|at| mem.get(at..at.checked_add(SECTOR)?));
    if let Some(src) = src {
        bytes.copy_from_slice(src);
    }
    bytes
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> FvdCheck<M> {
    /// Reads journal batch `batch` of the first `limit` sectors.
    fn journal_read(&mut self, batch: u64, limit: u64) -> Step {
        let j = &self.journal;
        let first = batch * j.per_batch();
        let sectors = (limit - first).min(j.per_batch());
        let offset = self.layout.journal.map_or(0, |r| r.offset) + first * SECTOR as u64;
        let area = Area {
            at: j.buf.at,
            // At most per_batch sectors, which is the buffer's length in sectors.
            len: usize::try_from(sectors).map_or(j.buf.len, |s| s * SECTOR),
        };
        let step = Step::Read {
            file: FileId::Image,
            offset,
            len: area.len,
        };
        self.core.start(step, area)
    }

    /// Reads batch `batch` of a replay pass.
    pub(crate) fn read_journal_batch(&mut self, batch: u64) -> Step {
        if batch == 0 {
            self.journal.passes += 1;
        }
        self.journal_read(batch, self.journal.scan_end)
    }

    /// Sectors of batch `batch` of a pass over the first `limit` sectors.
    pub(super) fn batch_sectors(&self, batch: u64, limit: u64) -> u64 {
        let per = self.journal.per_batch();
        limit.saturating_sub(batch * per).min(per)
    }

    /// The scan pass: counts, the touched-page filter, the highest epoch seen.
    pub(crate) fn step_journal_scan(&mut self) -> Option<Step> {
        let total = self.journal.sectors_total;
        let batch = self.journal.scan_batch;
        if !self.journal.scan_reading {
            if batch * self.journal.per_batch() >= total {
                let mem = self.core.mem.as_ref();
                self.journal.touched =
                    self.journal
                        .filter
                        .count(mem, 0, self.journal.filter.0.bits());
                self.phase = Phase::Head(0);
                return None;
            }
            if batch == 0 {
                self.journal.passes += 1;
            }
            self.journal.scan_reading = true;
            return Some(self.journal_read(batch, total));
        }
        let epoch = self.layout.stable_journal_epoch;
        let layout = self.layout;
        let mut j = self.journal;
        let sectors = self.batch_sectors(batch, total);
        let mem = self.core.mem.as_mut();
        for s in 0..sectors {
            let position = batch * j.per_batch() + s;
            let bytes = sector_copy(mem, j.buf, s);
            if let Some(e) = SectorHeader::intact_epoch(&bytes) {
                j.highest_epoch = fold_seen(j.highest_epoch, e);
            }
            match VerifiedSector::verify(&bytes, epoch, position) {
                Ok(verified) => {
                    j.sectors += 1;
                    j.scan_end = position + 1;
                    for record in verified.records() {
                        j.records += 1;
                        if let Ok(span) = record.span(&layout) {
                            let (first, last) = span.pages(PAGE);
                            for index in first..=last {
                                let bit = j.filter_bit(j.global(span.target, index));
                                j.filter.set(mem, bit);
                            }
                        }
                    }
                }
                Err(SectorError::BadRecord { .. }) => {
                    j.malformed += 1;
                    j.scan_end = position + 1;
                }
                Err(_) => {}
            }
        }
        j.scan_batch += 1;
        j.scan_reading = false;
        self.journal = j;
        None
    }

    /// Starts the replay pass: replay pages carved from the memory left.
    pub(crate) fn start_replay(&mut self) {
        let room = self.rest.len / PAGE_LEN / 2;
        let wanted = usize::try_from(self.journal.touched.saturating_add(1)).unwrap_or(MAX_PAGES);
        let capacity = if self.journal.touched == 0 {
            0
        } else {
            wanted.min(MAX_PAGES).min(room).max(2)
        };
        self.pages = ReplayPages {
            area: Area {
                at: self.rest.at,
                len: capacity * PAGE_LEN,
            },
            capacity,
            ..ReplayPages::default()
        };
        self.phase = Phase::Replay;
    }

    /// Picks the next batch of touched pages: up to all but one page owned, then the page
    /// after the last owned one when it is touched too (a record may run into it).
    fn form_batch(&mut self) -> bool {
        let mem = self.core.mem.as_ref();
        let j = &self.journal;
        let p = &mut self.pages;
        p.count = 0;
        p.owned = 0;
        p.changed = 0;
        let mut page = p.next;
        while page < j.pages && p.count + 1 < p.capacity {
            if j.touched(mem, page) {
                let Some(key) = p.keys.get_mut(p.count) else {
                    break;
                };
                *key = page;
                p.owned |= 1 << p.count;
                p.count += 1;
            }
            page += 1;
        }
        if p.count == 0 {
            p.next = j.pages;
            return p.first_batch;
        }
        let Some(&last) = p.keys.get(..p.count).and_then(<[u64]>::last) else {
            p.next = j.pages;
            return p.first_batch;
        };
        let trailing = last + 1;
        let same = (last < j.table_pages) == (trailing < j.table_pages);
        if trailing < j.pages && same && j.touched(mem, trailing) {
            if let Some(key) = p.keys.get_mut(p.count) {
                *key = trailing;
                p.count += 1;
            }
        }
        p.next = last + 1;
        true
    }

    /// One move of the replay pass.
    pub(crate) fn step_replay(&mut self) -> Option<Step> {
        match self.pages.stage {
            Stage::Form => {
                self.pages.stage = if self.form_batch() {
                    Stage::Load {
                        page: 0,
                        reading: false,
                    }
                } else {
                    Stage::Next
                };
                None
            }
            Stage::Load {
                page,
                reading: false,
            } => {
                if page == self.pages.count {
                    self.pages.stage = Stage::Journal(Cursor {
                        batch: 0,
                        reading: false,
                        sector: 0,
                        record: 0,
                    });
                    return None;
                }
                self.pages.stage = Stage::Load {
                    page,
                    reading: true,
                };
                #[allow(clippy::indexing_slicing)] // page < count: form_batch filled keys[..count]
                let (target, index) = self.journal.local(self.pages.keys[page]);
                let step = Step::Read {
                    file: FileId::Image,
                    offset: self.region_of(target).offset + index * PAGE,
                    len: PAGE_LEN,
                };
                let area = self.pages.page_area(page);
                Some(self.core.start(step, area))
            }
            Stage::Load {
                page,
                reading: true,
            } => {
                self.pages.stage = Stage::Load {
                    page: page + 1,
                    reading: false,
                };
                None
            }
            Stage::Journal(cursor) if !cursor.reading => {
                if cursor.batch >= self.journal.batches() {
                    self.pages.stage = Stage::WriteBack {
                        page: 0,
                        writing: false,
                    };
                    return None;
                }
                self.pages.stage = Stage::Journal(Cursor {
                    reading: true,
                    ..cursor
                });
                Some(self.read_journal_batch(cursor.batch))
            }
            Stage::Journal(cursor) => self.replay_batch(cursor),
            Stage::WriteBack { page, writing } => self.write_back(page, writing),
            Stage::Next => {
                self.pages.first_batch = false;
                if self.pages.next >= self.journal.pages {
                    self.replay_done();
                } else {
                    self.pages.stage = Stage::Form;
                }
                None
            }
        }
    }

    /// Lays the loaded journal batch over the replay pages from `cursor` on; stops at the
    /// first record to report.
    fn replay_batch(&mut self, cursor: Cursor) -> Option<Step> {
        let epoch = self.layout.stable_journal_epoch;
        let layout = self.layout;
        let sectors = self.batch_sectors(cursor.batch, self.journal.scan_end);
        let first_batch = self.pages.first_batch;
        for s in cursor.sector..sectors {
            let position = cursor.batch * self.journal.per_batch() + s;
            let bytes = sector_copy(self.core.mem.as_ref(), self.journal.buf, s);
            let record_from = if s == cursor.sector { cursor.record } else { 0 };
            let resume = |record| {
                Stage::Journal(Cursor {
                    sector: s,
                    record,
                    ..cursor
                })
            };
            let verified = match VerifiedSector::verify(&bytes, epoch, position) {
                Ok(verified) => verified,
                Err(SectorError::BadRecord { at }) if first_batch && record_from == 0 => {
                    self.journal.record_problems += 1;
                    self.pages.stage = resume(1);
                    let problem = Problem::MalformedSector {
                        sector: position,
                        at: at as u64,
                    };
                    return Some(self.found(problem));
                }
                Err(_) => continue,
            };
            for (index, record) in verified
                .records()
                .enumerate()
                .skip(usize::try_from(record_from).unwrap_or(usize::MAX))
            {
                let fault = match record.span(&layout) {
                    Err(fault) if first_batch => Some(fault),
                    Err(_) => None,
                    Ok(span) => self.apply_to_pages(&record, span.target, span.pages(PAGE)),
                };
                if let Some(fault) = fault {
                    self.journal.record_problems += 1;
                    self.journal.bad_records += 1;
                    self.pages.stage = resume(index as u64 + 1);
                    let problem = Problem::of_record(position, index as u64, fault);
                    return Some(self.found(problem));
                }
            }
        }
        self.pages.stage = Stage::Journal(Cursor {
            batch: cursor.batch + 1,
            reading: false,
            sector: 0,
            record: 0,
        });
        None
    }

    /// Lays `record` over the replay pages `pages` of `target` it touches; its first fault
    /// when this batch judges it (it owns the record's first page).
    fn apply_to_pages(
        &mut self,
        record: &Record<'_>,
        target: RecordTarget,
        (first, last): (u64, u64),
    ) -> Option<RecordFault> {
        let mut fault = None;
        let mut judged = false;
        for index in first..=last {
            let page = self.journal.global(target, index);
            let Some(slot) = self.pages.slot_of(page) else {
                continue;
            };
            if index == first && self.pages.owned & (1 << slot) != 0 {
                judged = true;
            }
            let area = self.pages.page_area(slot);
            let applied =
                record.apply_to(target, index * PAGE, area.bytes_mut(self.core.mem.as_mut()));
            if applied.changed {
                self.pages.changed |= 1 << slot;
            }
            fault = fault.or(applied.fault);
        }
        fault.filter(|_| judged)
    }

    /// A repair writes the pages the journal changed back to their regions.
    fn write_back(&mut self, from: usize, writing: bool) -> Option<Step> {
        let from = from + usize::from(writing);
        let next = (from..self.pages.count).find(|&s| self.pages.changed & (1 << s) != 0);
        let (Some(slot), Some(repair)) = (next, self.repair.as_mut()) else {
            self.pages.stage = Stage::Next;
            return None;
        };
        repair.wrote = true;
        self.pages.stage = Stage::WriteBack {
            page: slot,
            writing: true,
        };
        #[allow(clippy::indexing_slicing)] // slot < count: form_batch filled keys[..count]
        let (target, index) = self.journal.local(self.pages.keys[slot]);
        let step = Step::Write {
            file: FileId::Image,
            offset: self.region_of(target).offset + index * PAGE,
            len: PAGE_LEN,
        };
        let area = self.pages.page_area(slot);
        Some(self.core.start(step, area))
    }

    fn replay_done(&mut self) {
        let used = self.pages.len();
        self.rest = Area {
            at: self.rest.at + used,
            len: self.rest.len - used,
        };
        self.after_replay();
    }
}
