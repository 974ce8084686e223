//! Physical chunk allocation of a compact image: the open-time table scan that finds the
//! allocation frontier, chunks named twice (corruption) and leaked chunks (queued for
//! reuse), and the allocator that hands out chunks and grows the storage.

use super::commit::Purpose;
use super::meta::{Stall, ENTRIES_PER_PAGE};
use super::open::Lifecycle;
use super::FvdEngine;
use crate::engine::cache::{Meta, PageKey};
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::engine::{HEADER_AREA, MAX_FREE_RANGES, SCRATCH_AREA};
use crate::fvd::header::mutable_sectors;
use zerocopy::little_endian::U32;

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
        let Some(range) = self.free.get_mut(self.free_len) else {
            return false;
        };
        *range = (start, end);
        self.free_len += 1;
        true
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Leaked chunks found at open and not yet reused.
    pub fn leaked_chunks(&self) -> u64 {
        self.alloc
            .free
            .get(..self.alloc.free_len)
            .unwrap_or_default()
            .iter()
            .map(|(a, b)| b - a)
            .sum()
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
    pub(super) fn step_scan_table(&mut self, page: u64, window: u64, then_commit: bool) -> bool {
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
            if let Some(window) = self.memory.as_mut().get_mut(area..area + len) {
                window.fill(0);
            }
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
                    let Some((at, mask)) = window_bit(area, p - window) else {
                        continue;
                    };
                    let Some(byte) = self.memory.as_mut().get_mut(at) else {
                        continue;
                    };
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
            let bit = p - start;
            let Some(&byte) =
                window_bit(area, bit).and_then(|(at, _)| self.memory.as_ref().get(at))
            else {
                return;
            };
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

    pub(super) fn step_pending_alloc(&mut self) -> bool {
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

/// Where bit `bit` of the window bitmap at memory offset `area` lives: its byte offset and
/// mask. Window bits are counted from an engine memory area, so the offset is in memory.
fn window_bit(area: usize, bit: u64) -> Option<(usize, u8)> {
    let at = area.checked_add(usize::try_from(bit / 8).ok()?)?;
    Some((at, 1u8 << (bit % 8)))
}
