//! Metadata access through the page cache: loading and evicting pages, reading and
//! setting bitmap bits and table entries, applying journal records, and the mapping
//! query ("where does guest byte X live?") that reads, `map` and the inspector share.

use super::FvdEngine;
pub use crate::engine::cache::Stall;
use crate::engine::cache::{Meta, PageKey, PageState, Victim, PAGE_BYTES};
use crate::engine::types::{Corruption, FileId, IoError, MapRun, Mapping};
use crate::fvd::journal::Record;
use crate::fvd::replay::{RecordTarget, APPLY_UNIT};
use crate::fvd::table::{TABLE_DIRTY, TABLE_EMPTY};
use crate::fvd::{BaseLayout, Region};

/// Bitmap bits per page.
pub const BITS_PER_PAGE: u64 = PAGE_BYTES as u64 * 8;
/// Table entries per page.
pub const ENTRIES_PER_PAGE: u64 = PAGE_BYTES as u64 / 4;

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// The base layout while the base is still read (not fully prefetched).
    pub(crate) fn live_base(&self) -> Option<BaseLayout> {
        let layout = self.layout.as_ref()?;
        if layout.base_fully_prefetched {
            None
        } else {
            layout.base
        }
    }

    /// The file holding guest data.
    pub(crate) fn data_file(&self) -> FileId {
        match self.layout {
            Some(l) if l.separate_data_file => FileId::Data,
            _ => FileId::Image,
        }
    }

    fn region(&self, meta: Meta) -> Option<Region> {
        let layout = self.layout.as_ref()?;
        match meta {
            Meta::Bitmap => layout.base.map(|b| b.bitmap),
            Meta::Table => layout.table.map(|t| t.region),
        }
    }

    /// The cache slot holding `key`, ready; otherwise starts what brings it in.
    pub(crate) fn page(&mut self, key: PageKey) -> Result<usize, Stall> {
        if let Some(slot) = self.cache.lookup(key, &mut self.page_error)? {
            return Ok(slot);
        }
        let region = self.region(key.meta).ok_or(Stall::Wait)?;
        match self.cache.victim(self.durable_gen) {
            Victim::Reuse(slot) => {
                // There is room: a failure to make some earlier is nobody's concern now.
                self.room_error = None;
                let offset = region.offset + key.index * PAGE_BYTES as u64;
                self.cache
                    .emit_load(slot, key, offset, &mut self.commands, &mut self.stats);
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

    /// Starts writing page `slot` back to its region. Returns false when no command slot.
    pub(crate) fn write_back(&mut self, slot: usize) -> bool {
        let key = self.cache.slot(slot).key;
        let Some(region) = self.region(key.meta) else {
            return false;
        };
        let offset = region.offset + key.index * PAGE_BYTES as u64;
        self.cache
            .emit_write_back(slot, offset, &mut self.commands, &mut self.stats)
    }

    pub(crate) fn page_loaded(&mut self, slot: usize, result: Result<(), IoError>) {
        match result {
            Ok(()) => {
                let state = self.loaded_page_state(self.cache.slot(slot).key);
                self.cache.slot_mut(slot).state = state;
            }
            Err(error) => {
                self.page_error = Some((self.cache.slot(slot).key, error));
                self.cache.drop_page(slot);
            }
        }
    }

    pub(crate) fn page_written(&mut self, slot: usize, result: Result<(), IoError>) {
        let page = self.cache.slot_mut(slot);
        page.state = PageState::Ready;
        match result {
            Ok(()) => {
                page.dirty = false;
                page.journal_lo = 0;
                page.journal_hi = 0;
            }
            Err(error) => self.commit.write_back_failed = Some(error),
        }
        // A write-back meant to free a page failed: the next request needing one hears it.
        if core::mem::take(&mut self.room_write_back[slot]) {
            if let Err(error) = result {
                self.room_error = Some(error);
            }
        }
    }

    /// The bytes of cache page `slot` (the cache lies inside engine memory, so a page
    /// slot's bytes are always there; an empty slice would only read as zeros).
    fn page_bytes(&self, slot: usize) -> &[u8] {
        let at = self.cache.offset(slot);
        self.memory
            .as_ref()
            .get(at..at + PAGE_BYTES)
            .unwrap_or_default()
    }

    fn page_bytes_mut(&mut self, slot: usize) -> &mut [u8] {
        let at = self.cache.offset(slot);
        self.memory
            .as_mut()
            .get_mut(at..at + PAGE_BYTES)
            .unwrap_or_default()
    }

    /// Bitmap page holding `block`'s bit.
    pub(crate) fn bitmap_key(block: u64) -> PageKey {
        PageKey {
            meta: Meta::Bitmap,
            index: block / BITS_PER_PAGE,
        }
    }

    /// Table page holding `chunk`'s entry.
    pub(crate) fn table_key(chunk: u64) -> PageKey {
        PageKey {
            meta: Meta::Table,
            index: chunk / ENTRIES_PER_PAGE,
        }
    }

    /// Bit of `block` in loaded bitmap page `slot`.
    pub(crate) fn bit(&self, slot: usize, block: u64) -> bool {
        let within = block % BITS_PER_PAGE;
        let byte = usize::try_from(within / 8).unwrap_or(usize::MAX);
        self.page_bytes(slot)
            .get(byte)
            .is_some_and(|b| b & (1 << (within % 8)) != 0)
    }

    /// Sets bits `first..=last` (all in page `slot`) at change generation `generation`.
    pub(crate) fn set_bits(&mut self, slot: usize, first: u64, last: u64, generation: u64) {
        // Bit numbers within one page: below BITS_PER_PAGE, so they fit usize.
        let lo = usize::try_from(first % BITS_PER_PAGE).unwrap_or(usize::MAX);
        let hi = usize::try_from(last % BITS_PER_PAGE).unwrap_or(0);
        let mut changed = false;
        {
            let bytes = self.page_bytes_mut(slot);
            for bit in lo..=hi {
                let mask = 1u8 << (bit % 8);
                if let Some(byte) = bytes.get_mut(bit / 8) {
                    if *byte & mask == 0 {
                        *byte |= mask;
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.cache
                .mark_changed(slot, lo / 8, hi / 8 + 1, generation);
        }
    }

    /// Raw table entry of `chunk` in loaded table page `slot`.
    pub(crate) fn entry(&self, slot: usize, chunk: u64) -> u32 {
        let at = entry_at(chunk);
        let mut b = [0u8; 4];
        if let Some(src) = self.page_bytes(slot).get(at..at + 4) {
            b.copy_from_slice(src);
        }
        u32::from_le_bytes(b)
    }

    /// Sets the table entry of `chunk` in page `slot`.
    pub(crate) fn set_entry(&mut self, slot: usize, chunk: u64, value: u32, generation: u64) {
        let at = entry_at(chunk);
        if let Some(dst) = self.page_bytes_mut(slot).get_mut(at..at + 4) {
            dst.copy_from_slice(&value.to_le_bytes());
        }
        self.cache.mark_changed(slot, at, at + 4, generation);
    }

    /// Decodes a table entry into a physical chunk, or reports it corrupt.
    pub(crate) fn physical(&self, chunk: u64, entry: u32) -> Result<Option<u64>, Corruption> {
        if entry == TABLE_EMPTY {
            return Ok(None);
        }
        if entry & TABLE_DIRTY != 0 {
            return Err(Corruption::BadTableEntry { chunk, entry });
        }
        // The chunk must lie inside the data storage (allocation grows it first).
        let p = u64::from(entry);
        if let Some(layout) = self.layout {
            let storage = self
                .options
                .data_len
                .unwrap_or(self.options.image_len)
                .max(self.alloc.storage_len);
            if !layout.chunk_in_storage(p, storage) {
                return Err(Corruption::BadTableEntry { chunk, entry });
            }
        }
        Ok(Some(p))
    }

    /// Where the guest bytes from `offset` (at most `max_len` of them) live: one run.
    pub(crate) fn map_run(&mut self, offset: u64, max_len: u64) -> Result<MapRun, Stall> {
        let layout = self.layout.ok_or(Stall::Wait)?;
        let mut len = max_len;
        if let Some(base) = self.live_base() {
            if offset < base.size {
                let bs = layout.block_size;
                let block = offset / bs;
                let slot = self.page(Self::bitmap_key(block))?;
                let local = self.bit(slot, block);
                let page_end_block = ((block / BITS_PER_PAGE + 1) * BITS_PER_PAGE).min(base.blocks);
                let mut next = block + 1;
                while next < page_end_block && self.bit(slot, next) == local {
                    next += 1;
                }
                if !local {
                    let run_end = (next * bs).min(base.size);
                    return Ok(MapRun {
                        offset,
                        len: len.min(run_end - offset),
                        mapping: Mapping::Base,
                    });
                }
                len = len.min(next * bs - offset);
            }
        }
        let Some(table) = layout.table else {
            return Ok(MapRun {
                offset,
                len,
                mapping: Mapping::Data {
                    file: self.data_file(),
                    offset: layout.data_offset + offset,
                },
            });
        };
        let cs = table.chunk_size;
        let chunk = offset / cs;
        let slot = self.page(Self::table_key(chunk))?;
        let first = self
            .physical(chunk, self.entry(slot, chunk))
            .map_err(Stall::Corrupt)?;
        let page_end_chunk = ((chunk / ENTRIES_PER_PAGE + 1) * ENTRIES_PER_PAGE).min(table.chunks);
        let mut next = chunk + 1;
        while next < page_end_chunk {
            // A corrupt entry further on ends the run; it is reported when reached.
            let Ok(entry) = self.physical(next, self.entry(slot, next)) else {
                break;
            };
            let continues = match (first, entry) {
                (None, None) => true,
                (Some(p), Some(q)) => q == p + (next - chunk),
                _ => false,
            };
            if !continues {
                break;
            }
            next += 1;
        }
        len = len.min(next * cs - offset);
        // An unallocated chunk over the base masks it (its blocks were marked local):
        // zeros like a zero marker. Without a base below, nothing is there at all.
        let over_base = self.live_base().is_some_and(|b| offset < b.size);
        let mapping = match first {
            None if over_base => Mapping::Zero,
            None => Mapping::Unallocated,
            Some(p) => Mapping::Data {
                file: self.data_file(),
                offset: layout
                    .chunk_offset(p)
                    .and_then(|start| start.checked_add(offset % cs))
                    .ok_or(Stall::Corrupt(Corruption::BadTableEntry {
                        chunk,
                        entry: self.entry(slot, chunk),
                    }))?,
            },
        };
        Ok(MapRun {
            offset,
            len,
            mapping,
        })
    }

    /// Applies the part of journal `record` that falls in page `slot` (holding `key`),
    /// with the rule every reader shares ([`Record::apply_to`]). Returns whether the page
    /// changed; a fault leaves the page as it was.
    pub(crate) fn apply_record(
        &mut self,
        slot: usize,
        key: PageKey,
        record: &Record<'_>,
        sector: u64,
    ) -> Result<bool, Corruption> {
        let offset = key.index * PAGE_BYTES as u64;
        let applied = record.apply_to(target_of(key.meta), offset, self.page_bytes_mut(slot));
        match applied.fault {
            Some(_) => Err(Corruption::BadJournalRecord { sector }),
            None => Ok(applied.changed),
        }
    }

    /// Bytes of `meta` a journal record may name: the table's entries (not the padding of
    /// its region), the whole bitmap region.
    fn journal_limit(&self, meta: Meta) -> Option<u64> {
        let region = self.region(meta)?;
        Some(match (meta, self.layout.and_then(|l| l.table)) {
            (Meta::Table, Some(table)) => table.chunks * 4,
            _ => region.len,
        })
    }

    /// The bytes of page `key` a journal record may name, `[0, end)`: the whole page but
    /// for the last page of the table, whose end is padding (see [`Self::journal_limit`]).
    pub(crate) fn journal_extent(&self, key: PageKey) -> u16 {
        let start = key.index * PAGE_BYTES as u64;
        let limit = self.journal_limit(key.meta).unwrap_or(0);
        u16::try_from(limit.saturating_sub(start).min(PAGE_BYTES as u64)).unwrap_or(u16::MAX)
    }

    /// The pages a journal record touches, or corruption when it leaves its structure
    /// ([`Record::span`]).
    pub(crate) fn record_pages(
        &self,
        record: &Record<'_>,
        sector: u64,
    ) -> Result<(Meta, u64, u64), Corruption> {
        let bad = Corruption::BadJournalRecord { sector };
        let layout = self.layout.ok_or(bad)?;
        let span = record.span(&layout).map_err(|_| bad)?;
        let (first, last) = span.pages(PAGE_BYTES as u64);
        let meta = match span.target {
            RecordTarget::Bitmap => Meta::Bitmap,
            RecordTarget::Table => Meta::Table,
        };
        Ok((meta, first, last))
    }
}

/// The region a cache page of `meta` holds, in the record rule's terms.
fn target_of(meta: Meta) -> RecordTarget {
    match meta {
        Meta::Bitmap => RecordTarget::Bitmap,
        Meta::Table => RecordTarget::Table,
    }
}

// A cache page is one unit of the record rule: a fault never leaves half a page applied.
const _: () = assert!(PAGE_BYTES as u64 == APPLY_UNIT);

/// Byte offset of `chunk`'s entry within its table page (below PAGE_BYTES).
fn entry_at(chunk: u64) -> usize {
    usize::try_from(chunk % ENTRIES_PER_PAGE).map_or(PAGE_BYTES, |i| i * 4)
}
