//! `check -r` of a compact FVD image: leaked chunks below the frontier are filled with the
//! used chunks above, so that truncation can release the storage they leave (FORMAT.md §8:
//! an offline repair, with the image marked dirty and its journal stale, is the one writer
//! that may change a durable mapping).
//!
//! The chunks in use are counted first (`U`: the mapped entries, none shared after the
//! fixes). Then, window by window of physical chunks below `U`, one table walk marks the
//! chunks named in the window and a second walk moves each chunk named at `U` or above
//! into the window's next hole ([`crate::check::relocate::Mover`]: copy, flush, one
//! sector of the table), until the window has no hole left. A last walk finds the new
//! frontier; the repair then flushes the table and truncates.
//!
//! Before the first byte is copied into a leaked chunk, `chunks_relocated` is set and
//! flushed (FORMAT.md §11.8). Memory: the window bitset and the copy buffer share what is
//! left after the I/O buffers, so a small memory means more windows, never more memory.

use super::table::Entry;
use super::{FvdCheck, Phase};
use crate::check::memory::{Area, Bits};
use crate::check::relocate::{entry_sector, Mover};
use crate::check::walk::{Unit, Walk};
use crate::check::{FileId, Repair, Step};
use crate::fvd::header::mutable_sectors;
use crate::fvd::replay::RecordTarget;
use crate::fvd::RawHeader;
use core::mem::offset_of;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    /// Counting the chunks in use and the frontier (again after the moves).
    #[default]
    Count,
    Recount,
    /// Setting `chunks_relocated` (then its flush).
    Flag,
    FlagFlush,
    /// Marking the window's named chunks.
    Mark,
    /// Moving chunks from `U` on into the window's holes.
    Move,
    /// Flushing the rewritten table sectors.
    Flush,
    Done,
}

/// The relocation's state.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Relocation {
    stage: Stage,
    walk: Walk,
    /// Chunks in use: after the moves, every one is below this.
    used: u64,
    frontier: u64,
    window: u64,
    bits: u64,
    seen: Bits,
    copy: Area,
    /// Where the next hole is looked for.
    hole: u64,
    mover: Option<Mover>,
    /// Chunks moved.
    pub(crate) moved: u64,
    /// The frontier before the moves.
    old_frontier: u64,
}

impl Relocation {
    fn window_end(&self) -> u64 {
        self.window.saturating_add(self.bits).min(self.used)
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> FvdCheck<M> {
    /// Starts the relocation (after the fixes): the window memory is split between the
    /// window bitset and the copy buffer.
    pub(crate) fn start_relocation(&mut self) {
        let half = self.rest.len / 2 / 8 * 8;
        let seen = Area {
            at: self.rest.at,
            len: half,
        };
        let copy = Area {
            at: seen.end(),
            len: (self.rest.len - half) / 512 * 512,
        };
        self.relocation = Relocation {
            seen: Bits(seen),
            bits: seen.bits(),
            copy,
            walk: self.sector_walk(),
            ..Relocation::default()
        };
        // Work memory is at least MIN_MEMORY, which leaves both; without them nothing
        // moves.
        if self.relocation.bits == 0 || copy.len == 0 {
            self.relocation.stage = Stage::Done;
        }
        self.phase = Phase::Relocate;
    }

    pub(crate) fn step_relocation(&mut self) -> Option<Step> {
        if let Some(mut mover) = self.relocation.mover {
            let step = mover.step(&mut self.core, self.relocation.copy);
            self.relocation.mover = step.map(|_| mover);
            if step.is_some() {
                return step;
            }
        }
        match self.relocation.stage {
            Stage::Count | Stage::Recount | Stage::Mark | Stage::Move => self.relocation_walk(),
            Stage::Flag => {
                self.relocation.stage = Stage::FlagFlush;
                Some(self.write_relocated_flag())
            }
            Stage::FlagFlush => {
                self.relocation_window(0);
                let step = Step::Flush {
                    file: FileId::Image,
                };
                Some(self.core.start(step, Area::default()))
            }
            Stage::Flush => {
                self.relocation.stage = Stage::Recount;
                self.relocation.used = 0;
                self.relocation.frontier = 0;
                self.relocation.walk = self.sector_walk();
                let step = Step::Flush {
                    file: FileId::Image,
                };
                Some(self.core.start(step, Area::default()))
            }
            Stage::Done => {
                let moved = self.relocation.moved;
                self.phase = Phase::Repair(super::repair::Stage::Truncate);
                if moved == 0 {
                    return None;
                }
                // The leaked chunks below the old frontier that the truncation releases:
                // those filled and those left above the chunks in use.
                let released = self
                    .relocation
                    .old_frontier
                    .saturating_sub(self.table.frontier);
                if let Some(r) = self.repair.as_mut() {
                    r.counts.leaks_fixed += released;
                }
                Some(Step::Repaired(Repair::RelocatedChunks { chunks: moved }))
            }
        }
    }

    /// Header sector 6 with `chunks_relocated` = 1 (the rest as the header holds it).
    fn write_relocated_flag(&mut self) -> Step {
        const BASE: usize = mutable_sectors::RELOCATION_AND_PREFETCH * 512;
        const FLAG: usize = offset_of!(RawHeader, chunks_relocated) - BASE;
        let area = Area {
            at: self.unit.at,
            len: 512,
        };
        self.relocation_sector[FLAG..FLAG + 4].copy_from_slice(&1u32.to_le_bytes());
        area.bytes_mut(self.core.mem.as_mut())
            .copy_from_slice(&self.relocation_sector);
        self.layout.chunks_relocated = true;
        let step = Step::Write {
            file: FileId::Image,
            offset: BASE as u64,
            len: 512,
        };
        self.core.start(step, area)
    }

    /// A walk over the table's entries in whole sectors (the region is page aligned and
    /// page sized), so that each entry's sector is in the unit when it is rewritten.
    fn sector_walk(&self) -> Walk {
        let region = self.region_of(RecordTarget::Table);
        let entries = self.layout.table.map_or(0, |t| t.chunks).saturating_mul(4);
        let end = entries.div_ceil(512).saturating_mul(512).min(region.len);
        Walk::new(region.offset, end, self.unit)
    }

    fn relocation_window(&mut self, window: u64) {
        let r = &mut self.relocation;
        r.window = window;
        r.hole = window;
        if window >= r.used {
            r.stage = Stage::Flush;
            return;
        }
        r.seen.clear(self.core.mem.as_mut());
        r.stage = Stage::Mark;
        self.relocation.walk = self.sector_walk();
    }

    fn relocation_walk(&mut self) -> Option<Step> {
        let mut walk = self.relocation.walk;
        if walk.done() {
            self.walk_over();
            return None;
        }
        if let Unit::Act(step) = self.load(RecordTarget::Table, &mut walk) {
            self.relocation.walk = walk;
            return step;
        }
        let area = walk.area();
        while walk.cursor < walk.len {
            let k = walk.cursor / 4;
            walk.cursor += 4;
            let chunk = walk.pos / 4 + k as u64;
            if chunk >= self.layout.table.map_or(0, |t| t.chunks) {
                break;
            }
            let Entry::Mapped(p) = self.entry(chunk, self.raw(area, k)) else {
                continue;
            };
            let r = &mut self.relocation;
            match r.stage {
                Stage::Count | Stage::Recount => {
                    r.used += 1;
                    r.frontier = r.frontier.max(p + 1);
                }
                Stage::Mark => {
                    if (r.window..r.window_end()).contains(&p) {
                        r.seen.set(self.core.mem.as_mut(), p - r.window);
                    }
                }
                _ if p < r.used => {}
                _ => {
                    let mem = self.core.mem.as_ref();
                    let (from, to) = (r.hole - r.window, r.window_end() - r.window);
                    let Some(bit) = r.seen.find(mem, from, to, false) else {
                        // The window is full: on to the next one.
                        let next = r.window_end();
                        self.relocation_window(next);
                        return None;
                    };
                    let hole = r.window + bit;
                    let step = self.move_chunk(&walk, k, p, hole);
                    self.relocation.walk = walk;
                    return step;
                }
            }
        }
        let step = self.next_unit(&mut walk);
        self.relocation.walk = walk;
        step
    }

    /// Starts moving physical chunk `p`, named by entry `k` of the walk's unit, into
    /// `hole`.
    fn move_chunk(&mut self, walk: &Walk, k: usize, p: u64, hole: u64) -> Option<Step> {
        let table = self.layout.table?;
        let entry = u32::try_from(hole).ok()?;
        let cs = table.chunk_size;
        let base = self.layout.data_offset;
        let from = p.checked_mul(cs).and_then(|o| o.checked_add(base))?;
        let to = hole.checked_mul(cs).and_then(|o| o.checked_add(base))?;
        let region = self.region_of(RecordTarget::Table).offset;
        let unit_at = region.checked_add(walk.pos)?;
        let entry_at = unit_at.checked_add(k as u64 * 4)?;
        let (sector_at, sector) = entry_sector(entry_at, unit_at, walk.area())?;
        let at = walk.area().at + k * 4;
        // Entry `k` lies in the unit, which lies in work memory.
        self.core
            .mem
            .as_mut()
            .get_mut(at..at + 4)?
            .copy_from_slice(&entry.to_le_bytes());
        let r = &mut self.relocation;
        r.seen.set(self.core.mem.as_mut(), hole - r.window);
        r.hole = hole + 1;
        r.moved += 1;
        let mut mover = Mover::new(self.storage_file(), (from, to, cs), sector_at, sector);
        let step = mover.step(&mut self.core, self.relocation.copy);
        self.relocation.mover = Some(mover);
        step
    }

    /// A walk of the relocation is over: what follows.
    fn walk_over(&mut self) {
        let r = &mut self.relocation;
        match r.stage {
            Stage::Count => {
                r.old_frontier = r.frontier;
                if r.frontier <= r.used {
                    // Nothing to move; the frontier is the one after the fixes.
                    self.table.frontier = r.frontier;
                    r.stage = Stage::Done;
                } else if self.layout.chunks_relocated {
                    self.relocation_window(0);
                } else {
                    r.stage = Stage::Flag;
                }
            }
            Stage::Recount => {
                self.table.frontier = r.frontier;
                r.stage = Stage::Done;
            }
            Stage::Mark => {
                let full = r
                    .seen
                    .find(self.core.mem.as_ref(), 0, r.window_end() - r.window, false)
                    .is_none();
                if full {
                    let next = r.window_end();
                    self.relocation_window(next);
                } else {
                    r.stage = Stage::Move;
                    self.relocation.walk = self.sector_walk();
                }
            }
            _ => {
                let next = r.window_end();
                self.relocation_window(next);
            }
        }
    }
}
