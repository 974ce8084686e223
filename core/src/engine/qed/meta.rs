//! QED metadata through the page cache: L1 and L2 entries read and changed in 512-byte
//! pages keyed by their file offset, the lookup that turns a guest offset into a run of
//! clusters with one meaning, and file growth for new clusters and tables.

pub(super) use super::super::cache::Stall;
use super::super::cache::{Meta, PageKey, PageState, Victim, PAGE_BYTES};
use super::super::slots::Owner;
use super::super::types::{Corruption, FileId, IoError, Op};
use super::QedEngine;
use crate::engine::slot_table::slot_u16;
use crate::qed::table::ENTRY_SIZE;
use crate::qed::{L1Entry, L2Entry};

/// What a run of guest clusters holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ExtentKind {
    /// Allocated: the run's first byte is at this file offset, the rest follows.
    Data(u64),
    /// The zero-cluster marker.
    Zero,
    /// Never written: the backing file's bytes (zeros without one).
    Unallocated,
}

/// A run of guest bytes with one meaning, from the lookup offset to `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Extent {
    pub(super) kind: ExtentKind,
    pub(super) end: u64,
    /// File offset of the L2 table mapping the run (`None`: not allocated yet).
    pub(super) table: Option<u64>,
}

const ENTRIES_PER_PAGE: u64 = PAGE_BYTES as u64 / ENTRY_SIZE;

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> QedEngine<M, PAGES> {
    fn key(file_offset: u64) -> PageKey {
        PageKey {
            meta: Meta::Table,
            index: file_offset / PAGE_BYTES as u64,
        }
    }

    /// The cache slot holding the page with file byte `file_offset`, ready; otherwise
    /// starts what brings it in.
    pub(super) fn page_at(&mut self, file_offset: u64) -> Result<usize, Stall> {
        let key = Self::key(file_offset);
        if let Some(slot) = self.cache.lookup(key, &mut self.page_error)? {
            return Ok(slot);
        }
        match self.cache.victim(self.durable_gen) {
            Victim::Reuse(slot) => {
                // There is room: a failure to make some earlier is nobody's concern now.
                self.room_error = None;
                self.unreserve_slot(slot);
                let offset = key.index * PAGE_BYTES as u64;
                if self
                    .cache
                    .emit_load(slot, key, offset, &mut self.commands, &mut self.stats)
                {
                    if let Some(request) = self.stepping {
                        // Kept from eviction until the request that wants it steps again.
                        self.cache.slot_mut(slot).pins = 1;
                        self.reserved[slot] = Some(request);
                        self.reserving |= 1 << request;
                    }
                }
            }
            Victim::WriteBack(_) | Victim::NeedsCommit if self.room_error.is_some() => {
                // What was to make room failed: this request fails (once) instead of
                // waiting for a retry that may fail forever.
                return Err(Stall::Io(self.room_error.take().unwrap_or(IoError::Failed)));
            }
            Victim::WriteBack(slot) => {
                if self.write_back(slot) {
                    self.room_write_back[slot] = true;
                }
            }
            Victim::NeedsCommit => {
                self.commit.wanted = true;
                self.commit.room_wanted = true;
            }
            Victim::Busy => {}
        }
        Err(Stall::Wait)
    }

    /// Starts writing page `slot` back in place. False when no command slot is free.
    pub(super) fn write_back(&mut self, slot: usize) -> bool {
        let offset = self.cache.slot(slot).key.index * PAGE_BYTES as u64;
        self.cache
            .emit_write_back(slot, offset, &mut self.commands, &mut self.stats)
    }

    pub(super) fn page_loaded(&mut self, slot: usize, result: Result<(), IoError>) {
        match result {
            Ok(()) => self.cache.slot_mut(slot).state = PageState::Ready,
            Err(error) => {
                self.page_error = Some((self.cache.slot(slot).key, error));
                self.cache.drop_page(slot);
                self.reserved[slot] = None;
            }
        }
    }

    fn unreserve_slot(&mut self, slot: usize) {
        if self.reserved[slot].take().is_some() {
            self.cache.slot_mut(slot).pins = 0;
        }
    }

    /// Releases the pages reserved for request `request` (it has stepped or finished).
    pub(super) fn unreserve(&mut self, request: usize) {
        let bit = 1u64 << request;
        if self.reserving & bit == 0 {
            return;
        }
        self.reserving &= !bit;
        for slot in self.cache.indices() {
            if self.reserved[slot] == Some(slot_u16(request)) {
                self.unreserve_slot(slot);
            }
        }
    }

    pub(super) fn page_written(&mut self, slot: usize, result: Result<(), IoError>) {
        let page = self.cache.slot_mut(slot);
        page.state = PageState::Ready;
        match result {
            Ok(()) => {
                self.meta_unflushed = true;
                let page = self.cache.slot_mut(slot);
                page.dirty = false;
                page.journal_lo = 0;
                page.journal_hi = 0;
            }
            Err(error) => {
                self.commit.error.get_or_insert(error);
            }
        }
        // A write-back meant to free a page failed: the next request needing one hears it.
        if core::mem::take(&mut self.room_write_back[slot]) {
            if let Err(error) = result {
                self.room_error = Some(error);
            }
        }
    }

    /// The raw table entry at file offset `at` (8-byte aligned).
    pub(super) fn entry_at(&mut self, at: u64) -> Result<u64, Stall> {
        let slot = self.page_at(at)?;
        Ok(self.entry_in(slot, at))
    }

    fn entry_in(&self, slot: usize, at: u64) -> u64 {
        let base = self.cache.offset(slot) + within_page(at);
        let mut le = [0u8; 8];
        // The cache lies inside engine memory and entries are 8-byte aligned in a page.
        if let Some(src) = self.memory.as_ref().get(base..base + 8) {
            le.copy_from_slice(src);
        }
        u64::from_le_bytes(le)
    }

    /// Sets the raw table entry at file offset `at`, as a change of the current generation.
    pub(super) fn set_entry_at(&mut self, at: u64, raw: u64) -> Result<(), Stall> {
        let slot = self.page_at(at)?;
        if self.commit_must_write(slot) {
            // The running commit must write this page as it was; a newer change (whose
            // data may not be durable yet) waits until it has.
            return Err(Stall::Wait);
        }
        let within = within_page(at);
        let base = self.cache.offset(slot) + within;
        if let Some(dst) = self.memory.as_mut().get_mut(base..base + 8) {
            dst.copy_from_slice(&raw.to_le_bytes());
        }
        self.cache
            .mark_changed(slot, within, within + 8, self.change_gen);
        self.last_change_ms = self.now_ms;
        if let Some(layout) = self.layout {
            let l1 = layout.l1_table;
            if at >= l1.offset && at < l1.offset + l1.len {
                self.remember_l1((at - l1.offset) / ENTRY_SIZE, raw);
            }
        }
        Ok(())
    }

    /// File offset of the L1 entry for L1 index `index`.
    pub(super) fn l1_entry_offset(&self, index: u64) -> u64 {
        let l1 = self.layout.map_or(0, |l| l.l1_table.offset);
        l1 + index * ENTRY_SIZE
    }

    /// The L2 table of L1 index `index`: `None` when not allocated, corruption when the
    /// entry is invalid or points outside the file.
    pub(super) fn l2_table(&mut self, index: u64) -> Result<Option<u64>, Stall> {
        let layout = self.layout.ok_or(Stall::Wait)?;
        let memo = self.l1_memo.get(memo_slot(index)).copied().flatten();
        let raw = match memo {
            Some((i, raw)) if i == index => raw,
            _ => {
                let raw = self.entry_at(self.l1_entry_offset(index))?;
                self.remember_l1(index, raw);
                raw
            }
        };
        match layout.decode_l1(raw) {
            L1Entry::Unallocated => Ok(None),
            L1Entry::Table(t) if layout.table_in_file(t, self.file_len) => Ok(Some(t)),
            _ => Err(Stall::Corrupt(Corruption::BadL1Entry { index, entry: raw })),
        }
    }

    fn remember_l1(&mut self, index: u64, raw: u64) {
        if let Some(memo) = self.l1_memo.get_mut(memo_slot(index)) {
            *memo = Some((index, raw));
        }
    }

    /// What the guest bytes from `offset` up to at most `limit` hold: one run.
    pub(super) fn extent(&mut self, offset: u64, limit: u64) -> Result<Extent, Stall> {
        let layout = self.layout.ok_or(Stall::Wait)?;
        let cs = layout.cluster_size;
        let entries = layout.table_entries;
        let index = layout
            .index(offset)
            .ok_or(Stall::Corrupt(Corruption::BadL1Entry {
                index: u64::MAX,
                entry: 0,
            }))?;
        // Guest bytes one L2 table maps; the product fits (validated maximum image size).
        let span = entries.saturating_mul(cs);
        let table_start = index.l1.saturating_mul(span);
        let Some(table) = self.l2_table(index.l1)? else {
            return Ok(Extent {
                kind: ExtentKind::Unallocated,
                end: limit.min(table_start.saturating_add(span)),
                table: None,
            });
        };
        let slot = self.page_at(table + index.l2 * ENTRY_SIZE)?;
        let decode = |engine: &Self, l2: u64| -> Result<ExtentKind, Corruption> {
            let raw = engine.entry_in(slot, table + l2 * ENTRY_SIZE);
            match layout.decode_l2(raw) {
                L2Entry::Unallocated => Ok(ExtentKind::Unallocated),
                L2Entry::Zero => Ok(ExtentKind::Zero),
                L2Entry::Cluster(p) if layout.cluster_in_file(p, engine.file_len) => {
                    Ok(ExtentKind::Data(p))
                }
                _ => Err(Corruption::BadL2Entry {
                    offset: table_start + l2 * cs,
                    entry: raw,
                }),
            }
        };
        let first = decode(self, index.l2).map_err(Stall::Corrupt)?;
        let page_end = ((index.l2 / ENTRIES_PER_PAGE + 1) * ENTRIES_PER_PAGE).min(entries);
        let mut next = index.l2 + 1;
        while next < page_end && table_start + next * cs < limit {
            let continues = match (first, decode(self, next)) {
                (ExtentKind::Data(p), Ok(ExtentKind::Data(q))) => q == p + (next - index.l2) * cs,
                (a, Ok(b)) => a == b && !matches!(a, ExtentKind::Data(_)),
                // A corrupt entry further on ends the run; it is reported when reached.
                (_, Err(_)) => false,
            };
            if !continues {
                break;
            }
            next += 1;
        }
        let kind = match first {
            ExtentKind::Data(p) => ExtentKind::Data(p + index.in_cluster),
            other => other,
        };
        Ok(Extent {
            kind,
            end: limit.min(table_start + next * cs),
            table: Some(table),
        })
    }

    /// True once the file reaches `end` bytes; otherwise starts growing it to cover every
    /// allocation handed out so far.
    pub(super) fn file_reaches(&mut self, end: u64) -> bool {
        if self.file_len >= end {
            return true;
        }
        if !self.growing {
            let op = Op::SetLength {
                len: self.alloc_end,
            };
            if self.commands.emit(Owner::Alloc, FileId::Image, op) {
                self.growing = true;
            }
        }
        false
    }

    /// Hands out `len` bytes (a multiple of the cluster size) at the end of the file.
    pub(super) fn claim(&mut self, len: u64) -> Option<u64> {
        let at = self.alloc_end;
        self.alloc_end = at.checked_add(len)?;
        Some(at)
    }

    pub(super) fn grown(&mut self, op: Op, result: Result<(), IoError>) {
        self.growing = false;
        match (op, result) {
            (Op::SetLength { len }, Ok(())) => self.file_len = self.file_len.max(len),
            (_, Err(error)) => {
                // Requests waiting for this growth fail; later ones try again.
                for r in self.requests.iter_mut() {
                    if r.waits_for_growth() {
                        r.error.get_or_insert(super::RequestError::Io(error));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Offset of file offset `at` within its metadata page (below PAGE_BYTES).
fn within_page(at: u64) -> usize {
    usize::try_from(at % PAGE_BYTES as u64).unwrap_or(PAGE_BYTES)
}

/// The L1 memo slot of L1 index `index`.
fn memo_slot(index: u64) -> usize {
    usize::try_from(index % super::L1_MEMO as u64).unwrap_or(0)
}
