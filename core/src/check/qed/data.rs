//! The QED check's data clusters: their claims per window (counted, then reported with
//! the first owner of each cluster claimed twice: the header, the L1 table, an L2 table or
//! an earlier data entry), allocation and fragmentation counts, and the window's leaks.

use super::passes::{DataStage, Nested, Pass, Visit, TABLE_TAG};
use super::{Fault, Owner, Place, QedCheck, QedProblem};
use crate::check::Step;
use crate::qed::table::ENTRY_SIZE;
use crate::qed::L2Entry;

impl<M: AsRef<[u8]> + AsMut<[u8]>> QedCheck<M> {
    pub(super) fn begin_data_window(&mut self) {
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

    pub(super) fn visit_data_l1(&mut self, l1: u64, raw: u64, stage: DataStage) -> Visit {
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

    pub(super) fn l2_fault(&self, raw: u64) -> Option<Fault> {
        match self.layout.decode_l2(raw) {
            L2Entry::Cluster(data) => self.placement(data, false),
            L2Entry::Invalid(_) => Some(Fault::Misaligned),
            L2Entry::Unallocated | L2Entry::Zero => None,
        }
    }

    pub(super) fn count_data(&mut self, n: &mut Nested, raw: u64) {
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

    pub(super) fn report_data(&mut self, n: &Nested, l2: u64, raw: u64) -> Option<QedProblem> {
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

    pub(super) fn begin_data_sub(&mut self, from: u64) {
        let pass = if self.scan.hits > 0 {
            Pass::Data(DataStage::Fill)
        } else {
            Pass::Data(DataStage::Report)
        };
        self.begin_sub(from, pass);
    }

    /// After a data counting walk: the window's used clusters and leaks, in numbers.
    pub(super) fn count_window(&mut self) {
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

    pub(super) fn begin_leaks(&mut self) {
        let first_free = self.layout.header_len / self.cs();
        self.scan.leak_pos = self.scan.window.max(first_free);
        self.pass = Pass::Data(DataStage::Leaks);
    }

    /// Hands out the window's runs of unused clusters, joined across windows; then the
    /// next window.
    pub(super) fn step_leaks(&mut self) -> Option<Step> {
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
