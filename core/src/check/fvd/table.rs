//! The chunk table check (FORMAT.md §8) in windows of physical chunks: a counting walk
//! per window marks the chunks named and those named twice, the frontier and the counts
//! coming from the first; a reporting walk hands out bad entries (bit 31 set, outside the
//! data storage: in the first window) and shared chunks in chunk order, each with the
//! first chunk naming it; then the window's leaked runs. A repair's reporting walk unmaps
//! what it reports and writes the units it changed.

use super::{FvdCheck, Phase, Problem, Step};
use crate::check::memory::{sub_window_end, Area, Bits, OwnerMap};
use crate::check::walk::{Unit, Walk};
use crate::fvd::replay::RecordTarget;
use crate::fvd::table::{TableEntry, TABLE_EMPTY};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    Count,
    Report,
    Leaks,
    Next,
}

/// The table check's state and numbers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TableScan {
    walk: Walk,
    stage: Stage,
    /// First physical chunk of the window.
    window: u64,
    /// Physical chunks a window holds.
    bits: u64,
    seen: Bits,
    shared: Bits,
    map: OwnerMap,
    /// Part of the window the current reporting walk resolves: `[sub.0, sub.1)`.
    sub: (u64, u64),
    prev: Option<u64>,
    /// Corrupt entries on their own (bit 31, outside the storage).
    bad: u64,
    /// Shared chunks found in the window (later namers).
    window_dups: u64,
    leak_pos: u64,
    leak_run: Option<u64>,
    /// The bitmap check ran (after the first window's report).
    pub(crate) bitmap_done: bool,
    /// Every window is done.
    finished: bool,
    /// Entries mapping a physical chunk inside the data storage.
    pub(crate) mapped: u64,
    /// Mapped chunks not stored right after the previous mapped chunk.
    pub(crate) fragmented: u64,
    /// One past the highest physical chunk mapped.
    pub(crate) frontier: u64,
    /// Corrupt entries.
    pub(crate) corruptions: u64,
    /// Unreferenced physical chunks below the frontier.
    pub(crate) leaked: u64,
    /// Walks over the table.
    pub(crate) walks: u64,
}

/// What an entry is, for the check.
pub(super) enum Entry {
    Empty,
    Bad(Problem),
    Mapped(u64),
}

impl TableScan {
    fn window_end(&self) -> u64 {
        self.window.saturating_add(self.bits).min(self.frontier)
    }

    fn in_window(&self, p: u64) -> Option<u64> {
        (p >= self.window && p - self.window < self.bits).then(|| p - self.window)
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> FvdCheck<M> {
    /// Starts the table check: the window memory is what is left.
    pub(crate) fn start_table(&mut self) {
        let map_len = self.rest.len / 4 / 16 * 16;
        let bits_len = (self.rest.len - map_len) / 2 / 8 * 8;
        let seen = Area {
            at: self.rest.at,
            len: bits_len,
        };
        let shared = Area {
            at: seen.end(),
            len: bits_len,
        };
        let map = Area {
            at: shared.end(),
            len: map_len,
        };
        self.table = TableScan {
            seen: Bits(seen),
            shared: Bits(shared),
            map: OwnerMap::new(map),
            bits: seen.bits(),
            ..TableScan::default()
        };
        self.start_window();
        self.phase = Phase::Table;
    }

    pub(super) fn table_walk(&self) -> Walk {
        let chunks = self.layout.table.map_or(0, |t| t.chunks);
        self.region_walk(RecordTarget::Table, chunks * 4)
    }

    fn start_window(&mut self) {
        let mem = self.core.mem.as_mut();
        self.table.seen.clear(mem);
        self.table.shared.clear(mem);
        self.table.window_dups = 0;
        self.table.stage = Stage::Count;
        self.table.walk = self.table_walk();
    }

    pub(super) fn entry(&self, chunk: u64, raw: u32) -> Entry {
        match TableEntry::decode(raw) {
            TableEntry::Empty => Entry::Empty,
            TableEntry::Invalid(entry) => Entry::Bad(Problem::DirtyEntry { chunk, entry }),
            TableEntry::Mapped(p) => {
                let physical = u64::from(p);
                let storage_len = self.storage_len();
                if self.layout.chunk_in_storage(physical, storage_len) {
                    Entry::Mapped(physical)
                } else {
                    Entry::Bad(Problem::BeyondStorage {
                        chunk,
                        physical,
                        end: self.layout.chunk_end(physical),
                        storage_len,
                    })
                }
            }
        }
    }

    pub(super) fn raw(&self, area: Area, k: usize) -> u32 {
        // Table areas are carved from work memory; an entry outside it would read as empty.
        let at = area.at + k * 4;
        let mut b = TABLE_EMPTY.to_le_bytes();
        if let Some(src) = self.core.mem.as_ref().get(at..at + 4) {
            b.copy_from_slice(src);
        }
        u32::from_le_bytes(b)
    }

    pub(crate) fn step_table(&mut self) -> Option<Step> {
        match self.table.stage {
            Stage::Count | Stage::Report => self.step_table_walk(),
            Stage::Leaks => self.step_leaks(),
            Stage::Next => {
                let t = &mut self.table;
                t.window = t.window.saturating_add(t.bits);
                let more = t.window < t.frontier
                    && self.repair.as_ref().is_none_or(|r| r.fixes_structure());
                if more {
                    self.start_window();
                } else {
                    self.table.finished = true;
                    self.finish_metadata();
                }
                None
            }
        }
    }

    fn step_table_walk(&mut self) -> Option<Step> {
        let mut walk = self.table.walk;
        if walk.done() {
            self.table.walks += 1;
            match self.table.stage {
                Stage::Count => self.counted(),
                _ => self.reported(),
            }
            return None;
        }
        if let Unit::Act(step) = self.load(RecordTarget::Table, &mut walk) {
            self.table.walk = walk;
            return step;
        }
        let area = walk.area();
        let found = match self.table.stage {
            Stage::Count => {
                self.count_unit(&walk, area);
                None
            }
            _ => self.report_unit(&mut walk, area),
        };
        if found.is_none() {
            let step = self.next_unit(&mut walk);
            self.table.walk = walk;
            return step;
        }
        self.table.walk = walk;
        found
    }

    /// Counts and marks the entries of a unit.
    fn count_unit(&mut self, walk: &Walk, area: Area) {
        let first_window = self.table.window == 0;
        for k in 0..walk.len / 4 {
            let chunk = walk.pos / 4 + k as u64;
            let physical = match self.entry(chunk, self.raw(area, k)) {
                Entry::Empty => continue,
                Entry::Bad(_) => {
                    self.table.bad += u64::from(first_window);
                    continue;
                }
                Entry::Mapped(p) => p,
            };
            let t = &mut self.table;
            if first_window {
                t.mapped += 1;
                if t.prev.is_some_and(|q| q + 1 != physical) {
                    t.fragmented += 1;
                }
                t.prev = Some(physical);
                t.frontier = t.frontier.max(physical + 1);
            }
            if let Some(bit) = t.in_window(physical) {
                let mem = self.core.mem.as_mut();
                if t.seen.set(mem, bit) {
                    t.window_dups += 1;
                    t.shared.set(mem, bit);
                }
            }
        }
    }

    /// A counting walk is over: the window's numbers, then its report when it has
    /// anything to report (or to repair).
    fn counted(&mut self) {
        let t = &mut self.table;
        let end = t.window_end();
        let marked = t
            .seen
            .count(self.core.mem.as_ref(), 0, end.saturating_sub(t.window));
        t.leaked += end.saturating_sub(t.window).saturating_sub(marked);
        let first = t.window == 0;
        t.corruptions += t.window_dups + if first { t.bad } else { 0 };
        let report = (first && t.bad > 0) || t.window_dups > 0;
        let wanted = self.repair.as_ref().is_none_or(|r| r.fixes_structure());
        if report && wanted {
            self.start_report(self.table.window);
        } else {
            self.after_report();
        }
    }

    fn start_report(&mut self, from: u64) {
        let t = &mut self.table;
        let end = t.window.saturating_add(t.bits);
        let capacity = t.map.capacity();
        let mem = self.core.mem.as_mut();
        let sub_end = sub_window_end(t.shared, mem, from - t.window, end - t.window, capacity);
        t.sub = (from, t.window + sub_end);
        t.map.clear(mem);
        t.stage = Stage::Report;
        self.table.walk = self.table_walk();
    }

    /// Reports the entries of a unit from its cursor on, up to the first finding.
    fn report_unit(&mut self, walk: &mut Walk, area: Area) -> Option<Step> {
        let first_walk = self.table.window == 0 && self.table.sub.0 == 0;
        while walk.cursor < walk.len {
            let k = walk.cursor / 4;
            walk.cursor += 4;
            let chunk = walk.pos / 4 + k as u64;
            let problem = match self.entry(chunk, self.raw(area, k)) {
                Entry::Empty => continue,
                Entry::Bad(problem) if first_walk => problem,
                Entry::Bad(_) => continue,
                Entry::Mapped(p) => {
                    let t = &mut self.table;
                    let (Some(bit), true) = (t.in_window(p), (t.sub.0..t.sub.1).contains(&p))
                    else {
                        continue;
                    };
                    let mem = self.core.mem.as_mut();
                    if !t.shared.get(mem, bit) {
                        continue;
                    }
                    match t.map.get(mem, p) {
                        Some(first) => Problem::SharedChunk {
                            chunk,
                            first,
                            physical: p,
                        },
                        None => {
                            t.map.insert(mem, p, chunk);
                            continue;
                        }
                    }
                }
            };
            if self.repair.is_some() {
                let at = area.at + k * 4;
                if let Some(dst) = self.core.mem.as_mut().get_mut(at..at + 4) {
                    dst.copy_from_slice(&TABLE_EMPTY.to_le_bytes());
                }
                walk.modified = true;
            }
            return Some(self.found(problem));
        }
        None
    }

    /// A reporting walk is over: the next part of the window, or what follows.
    fn reported(&mut self) {
        let t = &self.table;
        if t.sub.1 < t.window.saturating_add(t.bits) {
            self.start_report(t.sub.1);
        } else {
            self.after_report();
        }
    }

    /// After the first window's report comes the bitmap; then each window's leaks.
    fn after_report(&mut self) {
        if self.layout.base.is_some() && !self.table.bitmap_done && self.table.window == 0 {
            self.start_bitmap();
            return;
        }
        self.resume_table();
    }

    /// Back from the bitmap (or straight from a report): the window's leaks.
    pub(crate) fn resume_table(&mut self) {
        self.phase = Phase::Table;
        self.table.stage = if self.repair.is_some() {
            Stage::Next
        } else {
            self.table.leak_pos = self.table.window;
            Stage::Leaks
        };
    }

    /// True while the table check is not over (the bitmap returns to it).
    pub(crate) fn table_pending(&self) -> bool {
        self.layout.table.is_some() && !self.table.finished
    }

    /// Hands out the window's runs of unmarked chunks below the frontier, joined across
    /// windows.
    fn step_leaks(&mut self) -> Option<Step> {
        let mem = self.core.mem.as_ref();
        let t = &mut self.table;
        let end = t.window_end();
        while t.leak_pos < end {
            let from = t.leak_pos - t.window;
            let to = end - t.window;
            match t.leak_run {
                None => match t.seen.find(mem, from, to, false) {
                    Some(bit) => {
                        t.leak_run = Some(t.window + bit);
                        t.leak_pos = t.window + bit + 1;
                    }
                    None => t.leak_pos = end,
                },
                Some(start) => match t.seen.find(mem, from, to, true) {
                    Some(bit) => {
                        t.leak_run = None;
                        t.leak_pos = t.window + bit + 1;
                        return Some(Step::Leak {
                            start,
                            end: t.window + bit,
                        });
                    }
                    None => t.leak_pos = end,
                },
            }
        }
        t.stage = Stage::Next;
        match t.leak_run {
            Some(start) if end == t.frontier => {
                t.leak_run = None;
                Some(Step::Leak { start, end })
            }
            _ => None,
        }
    }
}
