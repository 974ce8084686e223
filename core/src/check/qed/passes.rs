//! The passes of the QED check over the L1 table and the L2 tables it names: each pass
//! is a visitor of L1 entries (and, for the entries whose table it needs, of that table's
//! entries), driven over units of the L1 and L2 buffers. See the module above for what
//! each pass finds.

use super::{Fault, Owner, Place, QedCheck, QedProblem};
use crate::check::memory::sub_window_end;
use crate::check::walk::{Unit, Walk};
use crate::check::{FixAction, Repair, Step};
use crate::qed::table::ENTRY_SIZE;
use crate::qed::{L1Entry, L2Entry};

/// Map values naming an L2 table (the rest name a data entry by L1 and L2 index).
const TABLE_TAG: u64 = 1 << 63;

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
    l1: u64,
    raw: u64,
    table: u64,
    walk: Walk,
    count: u64,
    last: u64,
}

/// The check's counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scan {
    window: u64,
    bits: u64,
    clusters: u64,
    sub: (u64, u64),
    faults: u64,
    doubles: u64,
    hits: u64,
    garbage_tables: u64,
    bogus: u64,
    leak_pos: u64,
    leak_run: Option<u64>,
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
enum Visit {
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

    fn l1_walk(&mut self) {
        self.scan.l1_passes += 1;
        self.l1 = Walk::new(
            self.layout.l1_table.offset,
            self.layout.table_len,
            self.l1_buf,
        );
    }

    fn cs(&self) -> u64 {
        self.layout.cluster_size
    }

    fn walked(&self, l1: u64) -> bool {
        self.states.get(self.core.mem.as_ref(), 2 * l1)
    }

    fn garbage(&self, l1: u64) -> bool {
        self.states.get(self.core.mem.as_ref(), 2 * l1 + 1)
    }

    fn bogus(&self, l1: u64) -> bool {
        !self.walked(l1) && self.garbage(l1)
    }

    fn is_header(&self, cluster: u64) -> bool {
        cluster < self.layout.header_len / self.cs()
    }

    fn is_l1(&self, cluster: u64) -> bool {
        let first = self.layout.l1_table.offset / self.cs();
        (first..first + self.layout.table_size).contains(&cluster)
    }

    /// The clusters of `[first, first + count)` inside the window, as window bits.
    fn in_window(&self, first: u64, count: u64) -> core::ops::Range<u64> {
        let sc = &self.scan;
        let end = sc.window.saturating_add(sc.bits).min(sc.clusters);
        let lo = first.max(sc.window).min(end);
        let hi = first.saturating_add(count).max(lo).min(end);
        lo - sc.window..hi - sc.window
    }

    /// Clusters of the table at `offset`.
    fn span(&self, offset: u64) -> (u64, u64) {
        (offset / self.cs(), self.layout.table_size)
    }

    /// Where a table or data cluster at `value` (aligned, non-zero) is misplaced: inside
    /// the header, or not wholly inside the file.
    fn placement(&self, value: u64, table: bool) -> Option<Fault> {
        let l = &self.layout;
        if value < l.header_len {
            return Some(Fault::InHeader);
        }
        let fits = if table {
            l.table_in_file(value, self.file_len)
        } else {
            l.cluster_in_file(value, self.file_len)
        };
        (!fits).then_some(Fault::PastEnd)
    }

    fn l1_fault(&self, raw: u64) -> Option<Fault> {
        match self.layout.decode_l1(raw) {
            L1Entry::Unallocated => None,
            L1Entry::Invalid(1) => Some(Fault::ZeroMarkerInL1),
            L1Entry::Invalid(_) => Some(Fault::Misaligned),
            L1Entry::Table(t) => self.placement(t, true),
        }
    }

    /// The table an L1 entry names, when it is aligned and lies inside the file.
    fn placed_table(&self, raw: u64) -> Option<u64> {
        match self.layout.decode_l1(raw) {
            L1Entry::Table(t) if self.placement(t, true).is_none() => Some(t),
            _ => None,
        }
    }

    /// Entries no writer produces: misaligned, or inside the header.
    fn is_garbage(&self, raw: u64) -> bool {
        match self.layout.decode_l2(raw) {
            L2Entry::Invalid(_) => true,
            L2Entry::Cluster(data) => data < self.layout.header_len,
            L2Entry::Unallocated | L2Entry::Zero => false,
        }
    }

    fn guest(&self, l1: u64, l2: u64) -> u64 {
        l1.saturating_mul(self.layout.table_entries)
            .saturating_add(l2)
            .saturating_mul(self.cs())
    }

    fn problem(&self, place: Place, value: u64, entry_at: u64, fault: Fault) -> QedProblem {
        QedProblem {
            place,
            value,
            entry_at,
            fault,
            file_len: self.file_len,
            cluster_size: self.cs(),
        }
    }

    fn l1_problem(&self, l1: u64, raw: u64, fault: Fault) -> QedProblem {
        let at = self.layout.l1_table.offset + l1 * ENTRY_SIZE;
        self.problem(Place::L1 { index: l1 }, raw, at, fault)
    }

    /// Counts a finding and says it (or its repair).
    fn emit(&mut self, problem: QedProblem) -> Option<Step> {
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

    fn mark_fixed_clusters(&mut self, bits: crate::check::memory::Bits) {
        let (header, l1) = (
            self.layout.header_len / self.cs(),
            self.layout.l1_table.offset / self.cs(),
        );
        for (first, count) in [(0, header), (l1, self.layout.table_size)] {
            for bit in self.in_window(first, count) {
                bits.set(self.core.mem.as_mut(), bit);
            }
        }
    }

    fn begin_tables_window(&mut self) {
        let mem = self.core.mem.as_mut();
        self.s.clear(mem);
        self.d.clear(mem);
        self.scan.doubles = 0;
        self.scan.faults = 0;
        self.mark_fixed_clusters(self.s);
        self.pass = Pass::Tables { report: false };
        self.l1_walk();
    }

    fn begin_data_window(&mut self) {
        let mem = self.core.mem.as_mut();
        self.t.clear(mem);
        self.s.clear(mem);
        self.d.clear(mem);
        self.scan.doubles = 0;
        self.scan.hits = 0;
        self.scan.faults = 0;
        self.mark_fixed_clusters(self.t);
        self.pass = Pass::Data(DataStage::Mark);
        self.l1_walk();
    }

    /// Starts resolving the doubly-claimed clusters of the window from `from` on, as far
    /// as the map holds them.
    fn begin_sub(&mut self, from: u64, pass: Pass) {
        let sc = &self.scan;
        let end = sc.bits.min(sc.clusters.saturating_sub(sc.window));
        let mem = self.core.mem.as_mut();
        let to = sub_window_end(self.d, mem, from - sc.window, end, self.map.capacity());
        self.scan.sub = (from, self.scan.window + to);
        self.map.clear(mem);
        self.pass = pass;
        self.l1_walk();
    }

    fn sub_in_window(&self, cluster: u64) -> Option<u64> {
        let sc = &self.scan;
        let bit = cluster.checked_sub(sc.window)?;
        (bit < sc.bits && cluster < sc.clusters && (sc.sub.0..sc.sub.1).contains(&cluster))
            .then_some(bit)
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
                n.walk.cursor += ENTRY_SIZE as usize;
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
            walk.cursor += ENTRY_SIZE as usize;
            let raw = self.entry_at(at);
            if self.pass == Pass::FixL1 && raw != 0 && !self.walked(l1) {
                self.core.mem.as_mut()[at..at + 8].fill(0);
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

    fn entry_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.core.mem.as_ref()[at..at + 8]);
        u64::from_le_bytes(b)
    }

    fn visit_l1(&mut self, l1: u64, raw: u64) -> Visit {
        match self.pass {
            Pass::Tables { report } => self.visit_table_claim(l1, raw, report),
            Pass::Garbage => self.table_if(l1, raw, self.walked(l1)),
            Pass::Bogus(stage) => self.visit_bogus(l1, raw, stage),
            Pass::NotATable => self.table_if(l1, raw, self.bogus(l1)),
            Pass::Data(stage) => self.visit_data_l1(l1, raw, stage),
            Pass::FixL1 | Pass::Done => Visit::Skip,
        }
    }

    fn table_if(&self, _l1: u64, raw: u64, wanted: bool) -> Visit {
        match self.placed_table(raw) {
            Some(table) if wanted => Visit::Table(table),
            _ => Visit::Skip,
        }
    }

    /// The claim of L1 entry `l1`'s table on the clusters it spans.
    fn visit_table_claim(&mut self, l1: u64, raw: u64, report: bool) -> Visit {
        let first_walk = self.scan.window == 0 && self.scan.sub.0 == 0;
        let Some(table) = self.placed_table(raw) else {
            match self.l1_fault(raw) {
                Some(_) if self.scan.window == 0 && !report => self.scan.faults += 1,
                Some(fault) if first_walk && report => {
                    let problem = self.l1_problem(l1, raw, fault);
                    if let Some(step) = self.emit(problem) {
                        return Visit::Emit(step);
                    }
                }
                _ => {}
            }
            return Visit::Skip;
        };
        let (first, count) = self.span(table);
        let range = self.in_window(first, count);
        let mem = self.core.mem.as_mut();
        if !report {
            if self.scan.window == 0 {
                self.states.set(mem, 2 * l1);
            }
            for bit in range {
                if self.s.set(mem, bit) && !self.d.set(mem, bit) {
                    self.scan.doubles += 1;
                }
            }
            return Visit::Skip;
        }
        let mut clash = None;
        for bit in range {
            let cluster = self.scan.window + bit;
            if !self.d.get(self.core.mem.as_ref(), bit) || self.sub_in_window(cluster).is_none() {
                continue;
            }
            let owner = if self.is_header(cluster) {
                Owner::Header
            } else if self.is_l1(cluster) {
                Owner::L1Table
            } else {
                let mem = self.core.mem.as_mut();
                match self.map.get(mem, cluster) {
                    Some(owner) => Owner::L2Table { l1: owner },
                    None => {
                        self.map.insert(mem, cluster, l1);
                        continue;
                    }
                }
            };
            clash.get_or_insert(owner);
        }
        match clash {
            Some(owner) if self.walked(l1) => {
                self.states.unset(self.core.mem.as_mut(), 2 * l1);
                let problem = self.l1_problem(l1, raw, Fault::Overlap(owner));
                self.emit(problem).map_or(Visit::Skip, Visit::Emit)
            }
            _ => Visit::Skip,
        }
    }

    fn visit_bogus(&mut self, l1: u64, raw: u64, stage: u8) -> Visit {
        let Some(table) = self.placed_table(raw) else {
            return Visit::Skip;
        };
        let suspect = self.walked(l1) && self.garbage(l1);
        let (first, count) = self.span(table);
        match stage {
            0 if suspect => {
                for bit in self.in_window(first, count) {
                    self.t.set(self.core.mem.as_mut(), bit);
                }
                Visit::Skip
            }
            1 if self.walked(l1) || self.garbage(l1) => Visit::Table(table),
            2 if suspect => {
                let mem = self.core.mem.as_ref();
                if self.in_window(first, count).any(|bit| self.d.get(mem, bit)) {
                    self.states.unset(self.core.mem.as_mut(), 2 * l1);
                    self.scan.bogus += 1;
                }
                Visit::Skip
            }
            _ => Visit::Skip,
        }
    }

    fn visit_data_l1(&mut self, l1: u64, raw: u64, stage: DataStage) -> Visit {
        let Some(table) = self.placed_table(raw) else {
            return Visit::Skip;
        };
        let (first, count) = self.span(table);
        match stage {
            DataStage::Mark | DataStage::ClearBogus => {
                let clear = stage == DataStage::ClearBogus;
                if self.bogus(l1) == clear {
                    for bit in self.in_window(first, count) {
                        let mem = self.core.mem.as_mut();
                        if clear {
                            self.t.unset(mem, bit);
                        } else {
                            self.t.set(mem, bit);
                        }
                    }
                }
                Visit::Skip
            }
            DataStage::Fill => {
                if !self.bogus(l1) {
                    for bit in self.in_window(first, count) {
                        let cluster = self.scan.window + bit;
                        let in_sub = self.sub_in_window(cluster).is_some();
                        let mem = self.core.mem.as_mut();
                        if in_sub && self.t.get(mem, bit) && self.d.get(mem, bit) {
                            self.map.insert(mem, cluster, TABLE_TAG | l1);
                        }
                    }
                }
                Visit::Skip
            }
            DataStage::Count | DataStage::Report => self.table_if(l1, raw, self.walked(l1)),
            DataStage::Leaks => Visit::Skip,
        }
    }

    fn visit_l2(&mut self, n: &mut Nested, l2: u64, raw: u64, at: usize) -> Option<Step> {
        match self.pass {
            Pass::Garbage | Pass::NotATable => {
                n.count += u64::from(self.is_garbage(raw));
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
                    self.core.mem.as_mut()[at..at + 8].fill(0);
                    n.walk.modified = true;
                }
                self.emit(problem)
            }
            _ => None,
        }
    }

    fn l2_fault(&self, raw: u64) -> Option<Fault> {
        match self.layout.decode_l2(raw) {
            L2Entry::Cluster(data) => self.placement(data, false),
            L2Entry::Invalid(_) => Some(Fault::Misaligned),
            L2Entry::Unallocated | L2Entry::Zero => None,
        }
    }

    fn count_data(&mut self, n: &mut Nested, raw: u64) {
        if matches!(
            self.layout.decode_l2(raw),
            L2Entry::Unallocated | L2Entry::Zero
        ) {
            return;
        }
        let first_window = self.scan.window == 0;
        if first_window {
            self.scan.allocated += 1;
            if n.last != 0 && n.last.wrapping_add(self.cs()) != raw {
                self.scan.fragmented += 1;
            }
            n.last = raw;
        }
        if self.l2_fault(raw).is_some() {
            self.scan.faults += u64::from(first_window);
            return;
        }
        let Some(bit) = self.in_window(raw / self.cs(), 1).next() else {
            return;
        };
        let mem = self.core.mem.as_mut();
        if self.t.get(mem, bit) {
            self.scan.hits += 1;
            if !self.d.set(mem, bit) {
                self.scan.doubles += 1;
            }
        } else if self.s.set(mem, bit) && !self.d.set(mem, bit) {
            self.scan.doubles += 1;
        }
    }

    fn report_data(&mut self, n: &Nested, l2: u64, raw: u64) -> Option<QedProblem> {
        if matches!(
            self.layout.decode_l2(raw),
            L2Entry::Unallocated | L2Entry::Zero
        ) {
            return None;
        }
        let guest = self.guest(n.l1, l2);
        let place = Place::L2 {
            l1: n.l1,
            index: l2,
            guest,
        };
        let entry_at = n.table + l2 * ENTRY_SIZE;
        if let Some(fault) = self.l2_fault(raw) {
            let first_walk = self.scan.window == 0 && self.scan.sub.0 == 0;
            return first_walk.then(|| self.problem(place, raw, entry_at, fault));
        }
        let cluster = raw / self.cs();
        let bit = self.sub_in_window(cluster)?;
        let (header, l1_table) = (self.is_header(cluster), self.is_l1(cluster));
        let mem = self.core.mem.as_mut();
        if !self.d.get(mem, bit) {
            return None;
        }
        let owner = if self.t.get(mem, bit) {
            if header {
                Owner::Header
            } else if l1_table {
                Owner::L1Table
            } else {
                Owner::L2Table {
                    l1: self.map.get(mem, cluster)? & !TABLE_TAG,
                }
            }
        } else {
            match self.map.get(mem, cluster) {
                Some(tag) => Owner::Data {
                    guest: self.guest(tag >> 30, tag & ((1 << 30) - 1)),
                },
                None => {
                    self.map.insert(mem, cluster, (n.l1 << 30) | l2);
                    return None;
                }
            }
        };
        Some(self.problem(place, raw, entry_at, Fault::Overlap(owner)))
    }

    /// The walk over a table is over.
    fn table_done(&mut self, n: &Nested) -> Option<Step> {
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
    fn l1_done(&mut self) {
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

    fn next_tables_window(&mut self) {
        let sc = &mut self.scan;
        sc.window = sc.window.saturating_add(sc.bits);
        if sc.window < sc.clusters {
            self.begin_tables_window();
        } else {
            sc.window = 0;
            sc.sub = (0, 0);
            self.pass = Pass::Garbage;
            self.l1_walk();
        }
    }

    fn begin_bogus_window(&mut self) {
        self.t.clear(self.core.mem.as_mut());
        self.pass = Pass::Bogus(0);
        self.l1_walk();
    }

    fn begin_data_sub(&mut self, from: u64) {
        let pass = if self.scan.hits > 0 {
            Pass::Data(DataStage::Fill)
        } else {
            Pass::Data(DataStage::Report)
        };
        self.begin_sub(from, pass);
    }

    /// After a data counting walk: the window's used clusters and leaks, in numbers.
    fn count_window(&mut self) {
        let sc = self.scan;
        let first_free = self.layout.header_len / self.cs();
        let mem = self.core.mem.as_ref();
        let end = sc.bits.min(sc.clusters.saturating_sub(sc.window));
        let last = [self.t, self.s]
            .iter()
            .filter_map(|b| b.last_set(mem, 0, end))
            .max();
        if let Some(bit) = last {
            self.scan.last_used = Some(sc.window + bit);
        }
        let from = first_free.saturating_sub(sc.window).min(end);
        let used = (from..end)
            .filter(|&bit| self.t.get(mem, bit) || self.s.get(mem, bit))
            .count() as u64;
        self.scan.leaked += end - from - used;
    }

    fn begin_leaks(&mut self) {
        let first_free = self.layout.header_len / self.cs();
        self.scan.leak_pos = self.scan.window.max(first_free);
        self.pass = Pass::Data(DataStage::Leaks);
    }

    /// Hands out the window's runs of unused clusters, joined across windows; then the
    /// next window.
    fn step_leaks(&mut self) -> Option<Step> {
        let mem = self.core.mem.as_ref();
        let sc = &mut self.scan;
        let end = sc.window.saturating_add(sc.bits).min(sc.clusters);
        let silent = sc.quiet || sc.fix;
        while sc.leak_pos < end {
            let bit = sc.leak_pos - sc.window;
            let used = self.t.get(mem, bit) || self.s.get(mem, bit);
            let at = sc.leak_pos;
            sc.leak_pos += 1;
            match (used, sc.leak_run) {
                (false, None) => sc.leak_run = Some(at),
                (true, Some(start)) => {
                    sc.leak_run = None;
                    if !silent {
                        return Some(Step::Leak { start, end: at });
                    }
                }
                _ => {}
            }
        }
        if end < sc.clusters {
            sc.window = end;
            self.begin_data_window();
            return None;
        }
        let run = sc.leak_run.take();
        let fix = sc.fix;
        self.pass = if fix { Pass::FixL1 } else { Pass::Done };
        if fix {
            self.l1_walk();
        }
        match run {
            Some(start) if !silent => Some(Step::Leak { start, end }),
            _ => None,
        }
    }
}
