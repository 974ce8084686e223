//! QED copy-on-read: fills are internal write requests whose data comes from a bounce
//! slot, spawned for the backing-file parts of a guest read and dropped when a guest write
//! reaches their clusters first.

use super::requests::State;
use super::writes::Segment;
use super::QedEngine;
use crate::engine::guest::Kind;
use crate::engine::slot_table::buffer_len;
use crate::engine::types::*;

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> QedEngine<M, PAGES> {
    /// Marks fills of clusters in `[start, end)` that have not started writing as
    /// cancelled: the newer guest data must win.
    pub(super) fn cancel_fills(&mut self, start: u64, end: u64) {
        let cs = self.layout.map_or(1, |l| l.cluster_size);
        let (lo, hi) = (start / cs * cs, end.div_ceil(cs) * cs);
        for r in self.requests.iter_mut() {
            if r.kind == Kind::Fill && r.state == State::FillRead && r.start < hi && lo < r.end {
                r.cancelled = true;
            }
        }
    }

    /// Starts copy-on-read fills for the clusters of `[start, end)` (read from the backing
    /// file) when the cap, bounce slots and request slots allow.
    pub(super) fn spawn_fills(&mut self, start: u64, end: u64) {
        let Some(layout) = self.layout else {
            return;
        };
        let cs = layout.cluster_size;
        let mut cluster = start / cs;
        while cluster * cs < end {
            let (lo, hi) = (cluster * cs, (cluster + 1) * cs);
            cluster += 1;
            if self.fill_bytes + cs > self.cor_cap || self.bounce.available() == 0 {
                return;
            }
            let busy = self
                .requests
                .iter()
                .any(|o| o.active() && o.kind.writes() && o.start < hi && lo < o.end);
            if busy {
                continue;
            }
            let Some(slot) = self.free_slot() else {
                return;
            };
            let Some(bounce) = self.bounce.take() else {
                return;
            };
            self.start_request(slot, Kind::Fill, State::FillRead, lo, hi);
            self.requests[slot].bounce = Some(bounce);
            self.fill_bytes += cs;
            self.stats.cor_fills += 1;
        }
    }

    pub(super) fn step_fill_read(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        if !r.seg.main_emitted {
            let op = Op::Read {
                offset: r.start,
                len: buffer_len(r.end - r.start),
                into: Buffer::Engine {
                    offset: r.bounce.unwrap_or(0),
                },
            };
            if !self.emit(slot, FileId::Base, op) {
                return false;
            }
            self.requests[slot].seg.main_emitted = true;
            return true;
        }
        if r.outstanding > 0 {
            return false;
        }
        if r.cancelled {
            self.finish(slot, Ok(Reply::Done));
            return true;
        }
        let req = &mut self.requests[slot];
        req.seg = Segment::NONE;
        req.state = State::Blocked;
        true
    }
}
