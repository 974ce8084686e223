//! The metadata page cache: bitmap and table pages of [`PAGE_BYTES`] bytes held in engine
//! memory, with the bookkeeping that keeps the crash rules: which bytes changed since the
//! last journal commit, whether the page differs from its region on disk, and the change
//! generation that says whether the data behind a change is already durable; and the
//! page loads and write-backs both format engines emit (each names the file offset).

use super::slot_table::{slot_u16, SlotTable};
use super::slots::{CommandSlots, Owner};
use super::types::{Buffer, Corruption, FileId, IoError, Op};
use super::Stats;

/// Why a metadata access cannot finish now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// A page is loading, the cache is full, or no command slot is free: try again later.
    Wait,
    /// Loading the page failed.
    Io(IoError),
    /// The metadata is corrupt.
    Corrupt(Corruption),
}

/// Bytes per metadata page (one sector: a page write-back is atomic).
pub const PAGE_BYTES: usize = 512;
// Offsets within a page are kept as u16 (`journal_lo`, `journal_hi`).
static_assertions::const_assert!(PAGE_BYTES <= u16::MAX as usize);

/// Which metadata structure a page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meta {
    /// The base-image bitmap.
    Bitmap,
    /// The chunk table.
    Table,
}

/// A page of a metadata region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageKey {
    /// The structure.
    pub meta: Meta,
    /// Page number inside the region.
    pub index: u64,
}

/// Where a cache slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Holds nothing.
    Free,
    /// A read of the page is in flight.
    Loading,
    /// Loaded; journal records are being laid over it (read-only open of a dirty image).
    Overlaying,
    /// Usable.
    Ready,
    /// Its bytes are being written to the region; it must not change meanwhile.
    WritingBack,
}

/// One cache slot.
#[derive(Clone, Copy, Debug)]
pub struct PageSlot {
    /// The page held.
    pub key: PageKey,
    /// Its state.
    pub state: PageState,
    /// Requests that will change the page and keep it from eviction.
    pub pins: u16,
    /// The page differs from its region on disk.
    pub dirty: bool,
    /// Bytes `[journal_lo, journal_hi)` changed since the last journal commit.
    pub journal_lo: u16,
    /// See `journal_lo`.
    pub journal_hi: u16,
    /// Change generation of the newest change (durable once a data flush started after it).
    pub change_gen: u64,
    /// Last use, for least-recently-used eviction.
    pub last_use: u64,
}

impl PageSlot {
    const FREE: PageSlot = PageSlot {
        key: PageKey {
            meta: Meta::Bitmap,
            index: 0,
        },
        state: PageState::Free,
        pins: 0,
        dirty: false,
        journal_lo: 0,
        journal_hi: 0,
        change_gen: 0,
        last_use: 0,
    };

    /// True when some bytes still have to go to the journal.
    pub fn unjournaled(&self) -> bool {
        self.journal_lo < self.journal_hi
    }
}

/// What the cache can offer for a new page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    /// This slot is free or clean and can be reused at once.
    Reuse(usize),
    /// This dirty slot can be written back (its data is durable), then reused.
    WriteBack(usize),
    /// Only dirty pages whose data is not yet durable could go: a commit is needed.
    NeedsCommit,
    /// Every slot is pinned or busy: wait.
    Busy,
}

/// A fixed set of `N` page slots, `count` of them in use, stored from byte `base` of engine memory.
#[derive(Debug)]
pub struct PageCache<const N: usize> {
    slots: SlotTable<PageSlot, N>,
    count: usize,
    base: usize,
    tick: u64,
}

impl<const N: usize> PageCache<N> {
    /// A cache of `count` (at most `N`) pages whose bytes start at memory offset `base`.
    pub fn new(base: usize, count: usize) -> Self {
        PageCache {
            slots: SlotTable([PageSlot::FREE; N]),
            count: count.min(N),
            base,
            tick: 0,
        }
    }

    /// Pages the cache can hold.
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Memory offset of slot `slot`'s bytes.
    pub fn offset(&self, slot: usize) -> usize {
        self.base + slot * PAGE_BYTES
    }

    /// The slot, by index.
    pub fn slot(&self, slot: usize) -> &PageSlot {
        &self.slots[slot]
    }

    /// The slot, by index, mutably.
    pub fn slot_mut(&mut self, slot: usize) -> &mut PageSlot {
        &mut self.slots[slot]
    }

    /// Slot indices in use.
    pub fn indices(&self) -> core::ops::Range<usize> {
        0..self.count
    }

    /// The slot holding `key` in any state but free.
    pub fn find(&self, key: PageKey) -> Option<usize> {
        self.slots
            .prefix(self.count)
            .iter()
            .position(|s| s.state != PageState::Free && s.key == key)
    }

    /// The slot holding `key` ready for use, marking it used.
    pub fn ready(&mut self, key: PageKey) -> Option<usize> {
        let slot = self.find(key)?;
        if self.slots[slot].state != PageState::Ready {
            return None;
        }
        self.tick += 1;
        self.slots[slot].last_use = self.tick;
        Some(slot)
    }

    /// Chooses where a new page can go. `durable_gen`: changes with a smaller generation
    /// have durable data.
    pub fn victim(&self, durable_gen: u64) -> Victim {
        let mut clean: Option<usize> = None;
        let mut writable: Option<usize> = None;
        let mut needs_commit = false;
        for (i, s) in self.slots.prefix(self.count).iter().enumerate() {
            match s.state {
                PageState::Free => return Victim::Reuse(i),
                PageState::Ready if s.pins == 0 => {
                    if !s.dirty {
                        if clean.is_none_or(|c| self.slots[c].last_use > s.last_use) {
                            clean = Some(i);
                        }
                    } else if s.change_gen < durable_gen {
                        if writable.is_none_or(|w| self.slots[w].last_use > s.last_use) {
                            writable = Some(i);
                        }
                    } else {
                        needs_commit = true;
                    }
                }
                _ => {}
            }
        }
        match (clean, writable) {
            (Some(i), _) => Victim::Reuse(i),
            (None, Some(i)) => Victim::WriteBack(i),
            (None, None) if needs_commit => Victim::NeedsCommit,
            _ => Victim::Busy,
        }
    }

    /// The slot holding `key` ready for use (`Some`), or `None` when it must be loaded;
    /// a load in flight is [`Stall::Wait`], and a load of `key` that failed is reported
    /// once from `page_error`.
    pub fn lookup(
        &mut self,
        key: PageKey,
        page_error: &mut Option<(PageKey, IoError)>,
    ) -> Result<Option<usize>, Stall> {
        if let Some(slot) = self.ready(key) {
            return Ok(Some(slot));
        }
        if self.find(key).is_some() {
            return Err(Stall::Wait);
        }
        match *page_error {
            Some((failed, error)) if failed == key => {
                *page_error = None;
                Err(Stall::Io(error))
            }
            _ => Ok(None),
        }
    }

    /// Emits the read of `key` (at `file_offset` of the image) into free slot `slot` and
    /// starts its load. False when no command slot is free.
    pub fn emit_load(
        &mut self,
        slot: usize,
        key: PageKey,
        file_offset: u64,
        commands: &mut CommandSlots,
        stats: &mut Stats,
    ) -> bool {
        let op = Op::Read {
            offset: file_offset,
            len: PAGE_BYTES,
            into: Buffer::Engine {
                offset: self.offset(slot),
            },
        };
        if !commands.emit(Owner::PageLoad(slot_u16(slot)), FileId::Image, op) {
            return false;
        }
        self.start_load(slot, key);
        stats.page_loads += 1;
        true
    }

    /// Emits the write of page `slot` to `file_offset` of the image and marks it writing
    /// back. False when no command slot is free.
    pub fn emit_write_back(
        &mut self,
        slot: usize,
        file_offset: u64,
        commands: &mut CommandSlots,
        stats: &mut Stats,
    ) -> bool {
        let op = Op::Write {
            offset: file_offset,
            len: PAGE_BYTES,
            from: Buffer::Engine {
                offset: self.offset(slot),
            },
        };
        if !commands.emit(Owner::PageWriteBack(slot_u16(slot)), FileId::Image, op) {
            return false;
        }
        self.slots[slot].state = PageState::WritingBack;
        stats.page_write_backs += 1;
        true
    }

    /// Starts loading `key` into `slot`.
    pub fn start_load(&mut self, slot: usize, key: PageKey) {
        self.tick += 1;
        self.slots[slot] = PageSlot {
            key,
            state: PageState::Loading,
            last_use: self.tick,
            ..PageSlot::FREE
        };
    }

    /// Forgets `slot`'s page.
    pub fn drop_page(&mut self, slot: usize) {
        self.slots[slot] = PageSlot::FREE;
    }

    /// Records that bytes `[lo, hi)` of `slot` changed at generation `generation`.
    pub fn mark_changed(&mut self, slot: usize, lo: usize, hi: usize, generation: u64) {
        let s = &mut self.slots[slot];
        // Offsets within one page: at most PAGE_BYTES, which fits u16 (asserted below).
        #[allow(clippy::cast_possible_truncation)]
        let (lo, hi) = (lo as u16, hi as u16);
        if s.unjournaled() {
            s.journal_lo = s.journal_lo.min(lo);
            s.journal_hi = s.journal_hi.max(hi);
        } else {
            s.journal_lo = lo;
            s.journal_hi = hi;
        }
        s.dirty = true;
        s.change_gen = s.change_gen.max(generation);
    }

    /// True when some page of `meta` still has bytes to journal.
    pub fn any_unjournaled_of(&self, meta: Meta) -> bool {
        self.slots
            .prefix(self.count)
            .iter()
            .any(|s| s.state != PageState::Free && s.key.meta == meta && s.unjournaled())
    }
}
