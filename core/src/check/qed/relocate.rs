//! `check -r` of a QED image with leaked clusters before used ones: the L2 tables and data
//! clusters after them are moved down into them, so that truncation can release the
//! clusters they leave. Leaks like these come from a crash after the file grew and before
//! the entry naming the new cluster was written; qemu-img only reports them.
//!
//! A round runs after a silent check found no corruption: `U` clusters are in use (the
//! file's clusters minus the leaked ones), and everything used must end below `U`. Window
//! by window of clusters below `U`, one pass over the L1 table and its L2 tables marks what
//! is used in the window; a pass over the L1 table moves each L2 table reaching `U` or
//! beyond into the window's first run of free clusters long enough; a pass over the L2
//! tables moves each data cluster at `U` or beyond into the window's next free cluster.
//! Each move is a [`crate::check::relocate::Mover`] (copy, flush, one sector of the L1 or
//! L2 table); the need-check bit is set (and flushed) before the first. The round ends
//! with a flush; then the repair checks again and truncates. A table that found no run
//! (holes scattered in ones) may find one in a further round, after the moves made room
//! (at most [`MAX_ROUNDS`]); the L1 table is never moved (creators place it right after
//! the header, where nothing can leak below it).

use super::QedCheck;
use crate::check::memory::Area;
use crate::check::relocate::{entry_sector, Mover};
use crate::check::walk::{Unit, Walk};
use crate::check::{FileId, Repair, Step};
use crate::qed::L2Entry;

/// Rounds of relocation a repair runs at most (each after the previous one moved
/// something and left leaks).
pub(crate) const MAX_ROUNDS: u32 = 4;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    Mark,
    Tables,
    Data,
    Flush,
    Done,
}

/// A round of relocation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Relocation {
    stage: Stage,
    /// Clusters in use: everything used ends below this after the round.
    used: u64,
    window: u64,
    copy: Area,
    /// Where the next free cluster is looked for.
    hole: u64,
    l1: Walk,
    /// The L2 table being walked, and the walk.
    l2: Option<(u64, Walk)>,
    mover: Option<Mover>,
    /// Data clusters moved.
    pub(crate) clusters: u64,
    /// L2 tables moved.
    pub(crate) tables: u64,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> QedCheck<M> {
    /// Starts a round for an image with `used` clusters in use: the window bitset is
    /// `t`, the copy buffer what lies after it.
    pub(crate) fn start_relocation(&mut self, used: u64) {
        let total = self.core.mem.as_ref().len();
        let at = self.s.0.at;
        let copy = Area {
            at,
            len: total.saturating_sub(at) / 512 * 512,
        };
        self.relocation = Relocation {
            used,
            copy,
            ..Relocation::default()
        };
        // `memory_needed` leaves both a window and a copy buffer; without them nothing
        // moves.
        if self.t.0.bits() == 0 || copy.len == 0 {
            self.relocation.stage = Stage::Flush;
            return;
        }
        self.relocation_window(0);
    }

    fn window_end(&self) -> u64 {
        let r = &self.relocation;
        r.window.saturating_add(self.t.0.bits()).min(r.used)
    }

    fn relocation_window(&mut self, window: u64) {
        let r = &mut self.relocation;
        r.window = window;
        r.hole = window;
        r.l2 = None;
        if window >= r.used {
            r.stage = Stage::Flush;
            return;
        }
        r.stage = Stage::Mark;
        // The window helpers read the scan's window: the clusters below `used`.
        self.scan.window = window;
        self.scan.bits = self.t.0.bits();
        self.scan.clusters = r.used;
        self.scan.sub = (0, 0);
        self.t.clear(self.core.mem.as_mut());
        self.mark_fixed_clusters(self.t);
        self.relocation_l1();
    }

    fn relocation_l1(&mut self) {
        let l = &self.layout;
        self.relocation.l1 = Walk::new(l.l1_table.offset, l.table_len, self.l1_buf);
    }

    /// One move of the round; `(step, over)`.
    pub(crate) fn step_relocation(&mut self) -> (Option<Step>, bool) {
        if let Some(mut mover) = self.relocation.mover {
            let step = mover.step(&mut self.core, self.relocation.copy);
            self.relocation.mover = step.map(|_| mover);
            if step.is_some() {
                return (step, false);
            }
        }
        match self.relocation.stage {
            Stage::Mark | Stage::Tables | Stage::Data => (self.relocation_walk(), false),
            Stage::Flush => {
                self.relocation.stage = Stage::Done;
                let step = Step::Flush {
                    file: FileId::Image,
                };
                (Some(self.core.start(step, Area::default())), false)
            }
            Stage::Done => {
                let r = &self.relocation;
                let line = (r.clusters + r.tables > 0).then_some(Step::Repaired(
                    Repair::RelocatedClusters {
                        clusters: r.clusters,
                        tables: r.tables,
                    },
                ));
                (line, true)
            }
        }
    }

    /// Marks the clusters of `[first, first + count)` used in the window.
    fn mark_used(&mut self, first: u64, count: u64) {
        for bit in self.in_window(first, count) {
            self.t.set(self.core.mem.as_mut(), bit);
        }
    }

    fn relocation_walk(&mut self) -> Option<Step> {
        if let Some((table, mut walk)) = self.relocation.l2 {
            if walk.done() {
                self.relocation.l2 = None;
                return None;
            }
            if let Unit::Act(step) = walk.load(&mut self.core) {
                self.relocation.l2 = Some((table, walk));
                return step;
            }
            while walk.cursor < walk.len {
                let at = walk.buf.at + walk.cursor;
                walk.cursor += 8;
                let L2Entry::Cluster(data) = self.layout.decode_l2(self.entry_at(at)) else {
                    continue;
                };
                let cluster = data / self.cs();
                if self.relocation.stage == Stage::Mark {
                    self.mark_used(cluster, 1);
                    continue;
                }
                if cluster < self.relocation.used {
                    continue;
                }
                let (from, to) = (
                    self.relocation.hole - self.relocation.window,
                    self.window_end(),
                );
                let to = to - self.relocation.window;
                let Some(bit) = self.t.find(self.core.mem.as_ref(), from, to, false) else {
                    // The window is full: on to the next one.
                    let next = self.window_end();
                    self.relocation_window(next);
                    return None;
                };
                let hole = self.relocation.window + bit;
                self.relocation.hole = hole + 1;
                let step = self.move_unit(&walk, table + walk.pos, at, (data, hole, 1));
                self.relocation.clusters += u64::from(step.is_some());
                self.relocation.l2 = Some((table, walk));
                return step;
            }
            let step = walk.next_unit(&mut self.core);
            self.relocation.l2 = Some((table, walk));
            return step;
        }
        let mut walk = self.relocation.l1;
        if walk.done() {
            self.relocation_pass_over();
            return None;
        }
        if let Unit::Act(step) = walk.load(&mut self.core) {
            self.relocation.l1 = walk;
            return step;
        }
        while walk.cursor < walk.len {
            let at = walk.buf.at + walk.cursor;
            walk.cursor += 8;
            let Some(table) = self.placed_table(self.entry_at(at)) else {
                continue;
            };
            let (first, count) = self.span(table);
            match self.relocation.stage {
                Stage::Mark => self.mark_used(first, count),
                Stage::Tables if first.saturating_add(count) > self.relocation.used => {
                    let to = self.window_end() - self.relocation.window;
                    let mem = self.core.mem.as_ref();
                    let Some(bit) = self.t.clear_run(mem, 0, to, count) else {
                        continue;
                    };
                    let run = self.relocation.window + bit;
                    let unit_at = self.layout.l1_table.offset + walk.pos;
                    let step = self.move_unit(&walk, unit_at, at, (table, run, count));
                    self.relocation.tables += u64::from(step.is_some());
                    self.relocation.l1 = walk;
                    return step;
                }
                _ => {}
            }
            if matches!(self.relocation.stage, Stage::Mark | Stage::Data) {
                let walk_l2 = Walk::new(table, self.layout.table_len, self.l2_buf);
                self.relocation.l2 = Some((table, walk_l2));
                self.relocation.l1 = walk;
                return None;
            }
        }
        let step = walk.next_unit(&mut self.core);
        self.relocation.l1 = walk;
        step
    }

    /// Starts moving the unit at byte `from` (`count` clusters) to cluster `to`, named by
    /// the entry at `at` in the unit of `walk`, which holds the file's bytes from
    /// `unit_at` on.
    fn move_unit(
        &mut self,
        walk: &Walk,
        unit_at: u64,
        at: usize,
        (from, to, count): (u64, u64, u64),
    ) -> Option<Step> {
        let entry_at = unit_at.checked_add(at.checked_sub(walk.buf.at)? as u64)?;
        let (sector_at, sector) = entry_sector(entry_at, unit_at, walk.area())?;
        let cs = self.cs();
        let dest = to.checked_mul(cs)?;
        self.core
            .mem
            .as_mut()
            .get_mut(at..at + 8)?
            .copy_from_slice(&dest.to_le_bytes());
        self.mark_used(to, count);
        let len = count.checked_mul(cs)?;
        let mut mover = Mover::new(FileId::Image, (from, dest, len), sector_at, sector);
        let step = mover.step(&mut self.core, self.relocation.copy);
        self.relocation.mover = Some(mover);
        step
    }

    /// A pass over the L1 table is over: the next pass, or the next window.
    fn relocation_pass_over(&mut self) {
        match self.relocation.stage {
            Stage::Mark => {
                let to = self.window_end() - self.relocation.window;
                let full = self.t.find(self.core.mem.as_ref(), 0, to, false).is_none();
                if full {
                    let next = self.window_end();
                    self.relocation_window(next);
                } else {
                    self.relocation.stage = Stage::Tables;
                    self.relocation_l1();
                }
            }
            Stage::Tables => {
                self.relocation.stage = Stage::Data;
                self.relocation_l1();
            }
            _ => {
                let next = self.window_end();
                self.relocation_window(next);
            }
        }
    }
}
