//! The passes of the QED check over the L1 table and the L2 tables it names, and what
//! follows what: each pass is a visitor of L1 entries (and, for the entries whose table
//! it needs, of that table's entries), driven here over units of the L1 and L2 buffers;
//! the visits themselves are [`super::tables`]' and [`super::data`]'.

use super::{Fault, Place, QedCheck, QedProblem};
use crate::check::memory::sub_window_end;
use crate::check::walk::{Unit, Walk};
use crate::check::{FixAction, Repair, Step};
use crate::qed::table::ENTRY_SIZE;

/// [`ENTRY_SIZE`] as a memory length.
const ENTRY_LEN: usize = 8;
static_assertions::const_assert_eq!(ENTRY_LEN as u64, ENTRY_SIZE);
use crate::qed::L2Entry;

/// Map values naming an L2 table (the rest name a data entry by L1 and L2 index).
pub(crate) const TABLE_TAG: u64 = 1 << 63;

/// Where the check is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The L2 tables' claims in the window: counting, then reporting.
    Tables {
        report: bool,
    },
    /// Counting the entries no writer produces in each walked table.
    Garbage,
    /// Which tables holding such entries are another table's data (three walks a window).
    Bogus(u8),
    /// Reporting those L1 entries.
    NotATable,
    /// The data clusters' claims in the window.
    Data(DataStage),
    /// A repair zeroes the L1 entries it reported.
    FixL1,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataStage {
    /// Marks the clusters of the header, the L1 table and the L2 tables.
    Mark,
    /// Unmarks the tables that are not tables.
    ClearBogus,
    /// Counts and claims the data clusters.
    Count,
    /// Records which table holds each doubly-claimed table cluster.
    Fill,
    /// Reports bad entries and overlaps.
    Report,
    /// Hands out the window's leaks.
    Leaks,
}

/// A walk over the L2 table named by L1 entry `l1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Nested {
    pub(super) l1: u64,
    pub(super) raw: u64,
    pub(super) table: u64,
    pub(super) walk: Walk,
    pub(super) count: u64,
    pub(super) last: u64,
}

/// The check's counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scan {
    pub(super) window: u64,
    pub(super) bits: u64,
    pub(super) clusters: u64,
    pub(super) sub: (u64, u64),
    pub(super) faults: u64,
    pub(super) doubles: u64,
    pub(super) hits: u64,
    pub(super) garbage_tables: u64,
    pub(super) bogus: u64,
    pub(super) leak_pos: u64,
    pub(super) leak_run: Option<u64>,
    pub(crate) problems: u64,
    pub(crate) allocated: u64,
    pub(crate) fragmented: u64,
    pub(crate) leaked: u64,
    pub(crate) last_used: Option<u64>,
    pub(crate) l1_passes: u64,
    /// A repair's fixing run: findings are repair lines, L2 entries are zeroed.
    pub(crate) fix: bool,
    /// Nothing is reported (a repair's second look).
    pub(crate) quiet: bool,
    pub(crate) fixed: u64,
}

/// What a visit of an L1 entry asks for.
pub(crate) enum Visit {
    Skip,
    Emit(Step),
    Table(u64),
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> QedCheck<M> {
    /// Starts a run of the check (`fix`: a repair's fixing run).
    pub(crate) fn start(&mut self, fix: bool) {
        let quiet = self.scan.quiet;
        self.scan = Scan {
            bits: self.t.0.bits(),
            clusters: self.file_len.div_ceil(self.layout.cluster_size),
            fix,
            quiet,
            ..Scan::default()
        };
        self.states.clear(self.core.mem.as_mut());
        self.nested = None;
        self.begin_tables_window();
    }

    pub(super) fn l1_walk(&mut self) {
        self.scan.l1_passes += 1;
        self.l1 = Walk::new(
            self.layout.l1_table.offset,
            self.layout.table_len,
            self.l1_buf,
        );
    }

    /// Counts a finding and says it (or its repair).
    pub(super) fn emit(&mut self, problem: QedProblem) -> Option<Step> {
        self.scan.problems += 1;
        if self.scan.quiet {
            return None;
        }
        let finding = crate::check::Finding::Qed(problem);
        if !self.scan.fix {
            return Some(Step::Finding(finding));
        }
        self.scan.fixed += 1;
        let action = match problem.place {
            Place::L1 { .. } => FixAction::ZeroedL1,
            Place::L2 { .. } => FixAction::ZeroedL2,
        };
        Some(Step::Repaired(Repair::Fixed { finding, action }))
    }

    /// Starts resolving the doubly-claimed clusters of the window from `from` on, as far
    /// as the map holds them.
    pub(super) fn begin_sub(&mut self, from: u64, pass: Pass) {
        let sc = &self.scan;
        let end = sc.bits.min(sc.clusters.saturating_sub(sc.window));
        let mem = self.core.mem.as_mut();
        let to = sub_window_end(self.d, mem, from - sc.window, end, self.map.capacity());
        self.scan.sub = (from, self.scan.window + to);
        self.map.clear(mem);
        self.pass = pass;
        self.l1_walk();
    }

    /// One move of the current pass.
    pub(crate) fn step_pass(&mut self) -> Option<Step> {
        if let Some(mut n) = self.nested {
            if n.walk.done() {
                self.nested = None;
                return self.table_done(&n);
            }
            if let Unit::Act(step) = n.walk.load(&mut self.core) {
                self.nested = Some(n);
                return step;
            }
            while n.walk.cursor < n.walk.len {
                let at = n.walk.buf.at + n.walk.cursor;
                let l2 = (n.walk.pos + n.walk.cursor as u64) / ENTRY_SIZE;
                n.walk.cursor += ENTRY_LEN;
                let raw = self.entry_at(at);
                if let Some(step) = self.visit_l2(&mut n, l2, raw, at) {
                    self.nested = Some(n);
                    return Some(step);
                }
            }
            let step = n.walk.next_unit(&mut self.core);
            self.nested = Some(n);
            return step;
        }
        if self.pass == Pass::Data(DataStage::Leaks) {
            return self.step_leaks();
        }
        let mut walk = self.l1;
        if walk.done() {
            self.l1_done();
            return None;
        }
        if let Unit::Act(step) = walk.load(&mut self.core) {
            self.l1 = walk;
            return step;
        }
        while walk.cursor < walk.len {
            let at = walk.buf.at + walk.cursor;
            let l1 = (walk.pos + walk.cursor as u64) / ENTRY_SIZE;
            walk.cursor += ENTRY_LEN;
            let raw = self.entry_at(at);
            if self.pass == Pass::FixL1 && raw != 0 && !self.walked(l1) {
                if let Some(entry) = self.core.mem.as_mut().get_mut(at..at + 8) {
                    entry.fill(0);
                }
                walk.modified = true;
                continue;
            }
            match self.visit_l1(l1, raw) {
                Visit::Skip => {}
                Visit::Emit(step) => {
                    self.l1 = walk;
                    return Some(step);
                }
                Visit::Table(table) => {
                    let end = self.layout.table_len;
                    self.nested = Some(Nested {
                        l1,
                        raw,
                        table,
                        walk: Walk::new(table, end, self.l2_buf),
                        count: 0,
                        last: 0,
                    });
                    self.l1 = walk;
                    return None;
                }
            }
        }
        let step = walk.next_unit(&mut self.core);
        self.l1 = walk;
        step
    }

    pub(super) fn entry_at(&self, at: usize) -> u64 {
        // Entries lie in table areas carved from work memory; one outside it would read
        // as unallocated.
        let mut b = [0u8; 8];
        if let Some(src) = self.core.mem.as_ref().get(at..at + 8) {
            b.copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    }

    pub(super) fn visit_l1(&mut self, l1: u64, raw: u64) -> Visit {
        match self.pass {
            Pass::Tables { report } => self.visit_table_claim(l1, raw, report),
            Pass::Garbage => self.table_if(l1, raw, self.walked(l1)),
            Pass::Bogus(stage) => self.visit_bogus(l1, raw, stage),
            Pass::NotATable => self.table_if(l1, raw, self.bogus(l1)),
            Pass::Data(stage) => self.visit_data_l1(l1, raw, stage),
            Pass::FixL1 | Pass::Done => Visit::Skip,
        }
    }

    pub(super) fn table_if(&self, _l1: u64, raw: u64, wanted: bool) -> Visit {
        match self.placed_table(raw) {
            Some(table) if wanted => Visit::Table(table),
            _ => Visit::Skip,
        }
    }

    pub(super) fn visit_l2(
        &mut self,
        n: &mut Nested,
        l2: u64,
        raw: u64,
        at: usize,
    ) -> Option<Step> {
        match self.pass {
            Pass::Garbage | Pass::NotATable => {
                n.count += u64::from(self.layout.l2_entry_impossible(raw));
                None
            }
            Pass::Bogus(_) => {
                if let L2Entry::Cluster(data) = self.layout.decode_l2(raw) {
                    let cluster = data / self.cs();
                    let (first, count) = self.span(n.table);
                    let own = (first..first + count).contains(&cluster);
                    if let (Some(bit), false) = (self.in_window(cluster, 1).next(), own) {
                        let mem = self.core.mem.as_mut();
                        if self.t.get(mem, bit) {
                            self.d.set(mem, bit);
                        }
                    }
                }
                None
            }
            Pass::Data(DataStage::Count) => {
                self.count_data(n, raw);
                None
            }
            Pass::Data(DataStage::Report) => {
                let problem = self.report_data(n, l2, raw)?;
                if self.scan.fix {
                    if let Some(entry) = self.core.mem.as_mut().get_mut(at..at + 8) {
                        entry.fill(0);
                    }
                    n.walk.modified = true;
                }
                self.emit(problem)
            }
            _ => None,
        }
    }

    /// The walk over a table is over.
    pub(super) fn table_done(&mut self, n: &Nested) -> Option<Step> {
        match self.pass {
            Pass::Garbage if n.count > 0 => {
                self.states.set(self.core.mem.as_mut(), 2 * n.l1 + 1);
                self.scan.garbage_tables += 1;
                None
            }
            Pass::NotATable => {
                let problem = self.l1_problem(n.l1, n.raw, Fault::NotATable(n.count));
                self.emit(problem)
            }
            _ => None,
        }
    }

    /// An L1 walk is over: what comes next.
    pub(super) fn l1_done(&mut self) {
        let sc = self.scan;
        let window_end = sc.window.saturating_add(sc.bits);
        let more_windows = window_end < sc.clusters;
        match self.pass {
            Pass::Tables { report: false } => {
                if (sc.window == 0 && sc.faults > 0) || sc.doubles > 0 {
                    self.begin_sub(sc.window, Pass::Tables { report: true });
                } else {
                    self.next_tables_window();
                }
            }
            Pass::Tables { report: true } => {
                if sc.sub.1 < window_end.min(sc.clusters) {
                    self.begin_sub(sc.sub.1, Pass::Tables { report: true });
                } else {
                    self.next_tables_window();
                }
            }
            Pass::Garbage => {
                self.scan.window = 0;
                if sc.garbage_tables > 0 {
                    self.begin_bogus_window();
                } else {
                    self.begin_data_window();
                }
            }
            Pass::Bogus(stage) if stage < 2 => {
                if stage == 0 {
                    self.d.clear(self.core.mem.as_mut());
                }
                self.pass = Pass::Bogus(stage + 1);
                self.l1_walk();
            }
            Pass::Bogus(_) => {
                if more_windows {
                    self.scan.window = window_end;
                    self.begin_bogus_window();
                } else {
                    self.scan.window = 0;
                    if sc.bogus > 0 {
                        self.pass = Pass::NotATable;
                        self.l1_walk();
                    } else {
                        self.begin_data_window();
                    }
                }
            }
            Pass::NotATable => self.begin_data_window(),
            Pass::Data(DataStage::Mark) => {
                self.pass = Pass::Data(if sc.bogus > 0 {
                    DataStage::ClearBogus
                } else {
                    DataStage::Count
                });
                self.l1_walk();
            }
            Pass::Data(DataStage::ClearBogus) => {
                self.pass = Pass::Data(DataStage::Count);
                self.l1_walk();
            }
            Pass::Data(DataStage::Count) => {
                self.count_window();
                if (sc.window == 0 && sc.faults > 0) || sc.doubles > 0 {
                    self.begin_data_sub(sc.window);
                } else {
                    self.begin_leaks();
                }
            }
            Pass::Data(DataStage::Fill) => {
                self.pass = Pass::Data(DataStage::Report);
                self.l1_walk();
            }
            Pass::Data(DataStage::Report) => {
                if sc.sub.1 < window_end.min(sc.clusters) {
                    self.begin_data_sub(sc.sub.1);
                } else {
                    self.begin_leaks();
                }
            }
            Pass::Data(DataStage::Leaks) | Pass::FixL1 | Pass::Done => self.pass = Pass::Done,
        }
    }
}
