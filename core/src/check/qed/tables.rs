//! The QED check's rules about the L1 table and the L2 tables it names: where a table
//! may lie, which entries no writer produces, the tables' claims on clusters per window
//! (a table overlapping the header, the L1 table or an earlier table is reported), and
//! which tables holding such entries are another table's data.

use super::passes::{Pass, Visit};
use super::{Fault, Owner, Place, QedCheck, QedProblem};
use crate::qed::table::ENTRY_SIZE;
use crate::qed::L1Entry;

impl<M: AsRef<[u8]> + AsMut<[u8]>> QedCheck<M> {
    pub(super) fn cs(&self) -> u64 {
        self.layout.cluster_size
    }

    pub(super) fn walked(&self, l1: u64) -> bool {
        self.states.get(self.core.mem.as_ref(), 2 * l1)
    }

    pub(super) fn garbage(&self, l1: u64) -> bool {
        self.states.get(self.core.mem.as_ref(), 2 * l1 + 1)
    }

    pub(super) fn bogus(&self, l1: u64) -> bool {
        !self.walked(l1) && self.garbage(l1)
    }

    pub(super) fn is_header(&self, cluster: u64) -> bool {
        cluster < self.layout.header_len / self.cs()
    }

    pub(super) fn is_l1(&self, cluster: u64) -> bool {
        let first = self.layout.l1_table.offset / self.cs();
        (first..first + self.layout.table_size).contains(&cluster)
    }

    /// The clusters of `[first, first + count)` inside the window, as window bits.
    pub(super) fn in_window(&self, first: u64, count: u64) -> core::ops::Range<u64> {
        let sc = &self.scan;
        let end = sc.window.saturating_add(sc.bits).min(sc.clusters);
        let lo = first.max(sc.window).min(end);
        let hi = first.saturating_add(count).max(lo).min(end);
        lo - sc.window..hi - sc.window
    }

    /// Clusters of the table at `offset`.
    pub(super) fn span(&self, offset: u64) -> (u64, u64) {
        (offset / self.cs(), self.layout.table_size)
    }

    /// Where a table or data cluster at `value` (aligned, non-zero) is misplaced: inside
    /// the header, or not wholly inside the file.
    pub(super) fn placement(&self, value: u64, table: bool) -> Option<Fault> {
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

    pub(super) fn l1_fault(&self, raw: u64) -> Option<Fault> {
        match self.layout.decode_l1(raw) {
            L1Entry::Unallocated => None,
            L1Entry::Invalid(1) => Some(Fault::ZeroMarkerInL1),
            L1Entry::Invalid(_) => Some(Fault::Misaligned),
            L1Entry::Table(t) => self.placement(t, true),
        }
    }

    /// The table an L1 entry names, when it is aligned and lies inside the file.
    pub(super) fn placed_table(&self, raw: u64) -> Option<u64> {
        match self.layout.decode_l1(raw) {
            L1Entry::Table(t) if self.placement(t, true).is_none() => Some(t),
            _ => None,
        }
    }

    pub(super) fn guest(&self, l1: u64, l2: u64) -> u64 {
        l1.saturating_mul(self.layout.table_entries)
            .saturating_add(l2)
            .saturating_mul(self.cs())
    }

    pub(super) fn problem(
        &self,
        place: Place,
        value: u64,
        entry_at: u64,
        fault: Fault,
    ) -> QedProblem {
        QedProblem {
            place,
            value,
            entry_at,
            fault,
            file_len: self.file_len,
            cluster_size: self.cs(),
        }
    }

    pub(super) fn l1_problem(&self, l1: u64, raw: u64, fault: Fault) -> QedProblem {
        let at = self.layout.l1_table.offset + l1 * ENTRY_SIZE;
        self.problem(Place::L1 { index: l1 }, raw, at, fault)
    }

    pub(super) fn mark_fixed_clusters(&mut self, bits: crate::check::memory::Bits) {
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

    pub(super) fn sub_in_window(&self, cluster: u64) -> Option<u64> {
        let sc = &self.scan;
        let bit = cluster.checked_sub(sc.window)?;
        (bit < sc.bits && cluster < sc.clusters && (sc.sub.0..sc.sub.1).contains(&cluster))
            .then_some(bit)
    }

    pub(super) fn begin_tables_window(&mut self) {
        let mem = self.core.mem.as_mut();
        self.s.clear(mem);
        self.d.clear(mem);
        self.scan.doubles = 0;
        self.scan.faults = 0;
        self.mark_fixed_clusters(self.s);
        self.pass = Pass::Tables { report: false };
        self.l1_walk();
    }

    pub(super) fn next_tables_window(&mut self) {
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

    pub(super) fn begin_bogus_window(&mut self) {
        self.t.clear(self.core.mem.as_mut());
        self.pass = Pass::Bogus(0);
        self.l1_walk();
    }

    /// The claim of L1 entry `l1`'s table on the clusters it spans.
    pub(super) fn visit_table_claim(&mut self, l1: u64, raw: u64, report: bool) -> Visit {
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

    pub(super) fn visit_bogus(&mut self, l1: u64, raw: u64, stage: u8) -> Visit {
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
}
