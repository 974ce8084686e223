//! QED copy-on-read: fills are internal write requests whose data comes from a bounce
//! slot, started for the backing-file clusters of a guest read and dropped when a guest
//! write reaches their clusters first. The guest read is answered from the fill's data
//! (an [`Op::Copy`] out of the bounce slot), so each cluster is read from the backing
//! file once; only the parts no fill could take are read by the guest directly, and their
//! clusters wait in the deferred queue ([`crate::engine::deferred`]) for a fill as soon as
//! room frees up.

use super::meta::{ExtentKind, Stall};
use super::requests::State;
use super::writes::Segment;
use super::QedEngine;
use crate::engine::fill_reader::Reader;
use crate::engine::guest::Kind;
use crate::engine::protocol::FormatEngine;
use crate::engine::slot_table::buffer_len;
use crate::engine::types::*;

/// What became of an attempt to start a fill for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadFill {
    /// Started; the reader's part is this many bytes.
    Started(u64),
    /// A write touches the cluster: the guest reads it directly.
    Busy,
    /// Another fill is copying the cluster: the guest waits and reads it from the image.
    Filling,
    /// No slot, bounce memory or budget now.
    NoRoom,
}

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

    /// Starts a fill of the cluster holding `at` for read `reader` (if any), which wants
    /// `[at, end)` of the backing file; the fill hands it the part within the cluster.
    pub(super) fn start_read_fill(&mut self, reader: Option<usize>, at: u64, end: u64) -> ReadFill {
        let Some(layout) = self.layout else {
            return ReadFill::Busy;
        };
        let cs = layout.cluster_size;
        let (lo, hi) = (at / cs * cs, (at / cs + 1) * cs);
        let mut filling = false;
        for o in self.requests.iter() {
            if o.active() && o.kind.writes() && o.start < hi && lo < o.end {
                if o.kind != Kind::Fill || o.cancelled {
                    return ReadFill::Busy;
                }
                filling = true;
            }
        }
        if filling {
            return ReadFill::Filling;
        }
        if self.fill_bytes + cs > self.cor_cap || self.bounce.available() == 0 {
            return ReadFill::NoRoom;
        }
        let Some(slot) = self.free_slot() else {
            return ReadFill::NoRoom;
        };
        let Some(bounce) = self.bounce.take() else {
            return ReadFill::NoRoom;
        };
        let piece = end.min(hi) - at;
        let reader = reader.map(|reader| {
            let reader_slot = &self.requests[reader];
            Reader::new(
                reader,
                reader_slot.generation,
                reader_slot.start,
                lo,
                at,
                piece,
            )
        });
        self.start_request(slot, Kind::Fill, State::FillRead, lo, hi);
        let fill = &mut self.requests[slot];
        fill.bounce = Some(bounce);
        fill.reader = reader;
        self.fill_bytes += cs;
        self.stats.cor_fills += 1;
        ReadFill::Started(piece)
    }

    /// Remembers the clusters of `[start, end)` for a fill later: the guest read them from
    /// the backing file directly because no fill could start.
    pub(super) fn defer_fills(&mut self, start: u64, end: u64) {
        let cs = self.layout.map_or(1, |l| l.cluster_size);
        if !self
            .deferred
            .push(start / cs * cs, end.div_ceil(cs).saturating_mul(cs))
        {
            self.stats.cor_fills_dropped += 1;
        }
        self.stats.cor_fills_deferred += 1;
    }

    /// Starts fills for deferred clusters still unallocated over the backing file while
    /// room allows; true when something moved.
    pub(super) fn step_deferred(&mut self) -> bool {
        let mut moved = false;
        while let Some((lo, hi)) = self.deferred.first() {
            let backing = self.layout.is_some_and(|l| l.backing.is_some());
            if !self.is_open() || !self.copy_on_read || !backing {
                self.deferred.clear();
                return true;
            }
            let cs = self.layout.map_or(hi - lo, |l| l.cluster_size);
            let ext = match self.extent(lo, hi) {
                Ok(ext) => ext,
                Err(Stall::Wait) => return moved,
                Err(_) => {
                    // Copy-on-read is best effort: the range is dropped (the next request
                    // that needs the table reports the error).
                    self.deferred.advance(hi);
                    return true;
                }
            };
            if ext.kind != ExtentKind::Unallocated {
                self.deferred
                    .advance(ext.end.div_ceil(cs).saturating_mul(cs).max(lo + cs));
                moved = true;
                continue;
            }
            match self.start_read_fill(None, lo, lo + cs) {
                ReadFill::NoRoom => return moved,
                // Started, or a write or another fill is making the cluster local.
                ReadFill::Started(_) | ReadFill::Busy | ReadFill::Filling => {
                    self.deferred.advance(lo + cs)
                }
            }
            moved = true;
        }
        moved
    }

    /// Lets the read waiting for fill `slot` go on, failing it with `error` if any.
    pub(super) fn release_reader(&mut self, slot: usize, error: Option<RequestError>) {
        let Some(reader) = self.requests[slot].reader.take() else {
            return;
        };
        let waiting = &mut self.requests[usize::from(reader.slot)];
        if waiting.generation == reader.generation && waiting.active() {
            waiting.outstanding = waiting.outstanding.saturating_sub(1);
            if let Some(error) = error {
                waiting.error.get_or_insert(error);
            }
        }
    }

    /// Whether the backing data fill `slot` holds in its bounce slot is all zero.
    pub(super) fn fill_data_is_zero(&self, slot: usize) -> bool {
        let r = &self.requests[slot];
        r.bounce.is_some_and(|from| {
            crate::zeros::is_zero_at(self.memory.as_ref(), from, r.end - r.start)
        })
    }

    /// The backing-file read, the reader's copy, then the fill becomes a write (or ends).
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
        if let (Some(reader), false) = (r.reader, r.copied) {
            let op = Op::Copy {
                from: Buffer::Engine {
                    offset: r.bounce.unwrap_or(0) + reader.delta,
                },
                into: reader.buffer(0),
                len: reader.len,
            };
            if !self.emit(slot, FileId::Image, op) {
                return false;
            }
            self.requests[slot].copied = true;
            return true;
        }
        self.release_reader(slot, r.error);
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
