//! QED guest requests from submission to completion: validation, the order rule for
//! writes (a write waits for every earlier write touching one of its clusters), the
//! request's state machine, and reads assembled run by run from data clusters, the
//! backing file and zeros. Writes are carried out in [`super::writes`], copy-on-read
//! fills in [`super::fill`].

use super::fill::ReadFill;
use super::meta::{Extent, ExtentKind, Stall};
use super::writes::{Action, CowStage, Segment};
use super::QedEngine;
use crate::engine::guest::{self, Kind};
use crate::engine::protocol::FormatEngine;
use crate::engine::slot_table::{buffer_len, slot_u16};
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::engine::MAX_REQUESTS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Free,
    /// Finished; the slot is reused once the host polled the completion event.
    Done,
    Reading,
    Mapping,
    /// Waits for the first commit that starts after it.
    Flush,
    /// Waits for earlier writes touching its clusters.
    Blocked,
    /// Plans the segment starting at the cursor.
    Plan,
    /// Waits for the need-check bit to be on disk before changing metadata.
    NeedCheck,
    /// Creates the L2 table its segment needs.
    Table,
    /// Waits for the file to cover the clusters it claimed.
    Grow,
    /// Data commands being emitted / in flight.
    Data,
    /// Data landed: table entries to set.
    Publish,
    /// A fill reads its cluster from the backing file.
    FillRead,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Req {
    pub(super) generation: u16,
    pub(super) seq: u64,
    pub(super) kind: Kind,
    pub(super) state: State,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) cursor: u64,
    pub(super) outstanding: u16,
    pub(super) error: Option<RequestError>,
    /// Flush requests: the commit they wait for.
    pub(super) ticket: u64,
    pub(super) seg: Segment,
    /// Bounce slot held (copy-on-write pieces, or the fill's cluster).
    pub(super) bounce: Option<usize>,
    /// A fill overtaken by a newer guest write: it must not write.
    pub(super) cancelled: bool,
    /// A fill: the guest read waiting for its part of the cluster.
    pub(super) reader: Option<crate::engine::fill_reader::Reader>,
    /// A fill: the reader's part was copied out.
    pub(super) copied: bool,
}

impl Req {
    pub(super) const FREE: Req = Req {
        generation: 0,
        seq: 0,
        kind: Kind::Read,
        state: State::Free,
        start: 0,
        end: 0,
        cursor: 0,
        outstanding: 0,
        error: None,
        ticket: 0,
        seg: Segment::NONE,
        bounce: None,
        cancelled: false,
        reader: None,
        copied: false,
    };

    /// Waits for a length change that covers space it claimed.
    pub(super) fn waits_for_growth(&self) -> bool {
        self.state == State::Grow || (self.state == State::Table && self.seg.table_claim.is_some())
    }

    pub(super) fn active(&self) -> bool {
        !matches!(self.state, State::Free | State::Done)
    }

    /// On its way to change table entries (for clearing the need-check bit).
    pub(super) fn changes_metadata(&self) -> bool {
        match self.state {
            State::NeedCheck | State::Table | State::Grow => true,
            State::Data | State::Publish => {
                matches!(self.seg.action, Action::Allocate(_) | Action::Marker)
            }
            _ => false,
        }
    }
}
impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> QedEngine<M, PAGES> {
    pub(super) fn accept(&mut self, request: Request) -> Result<RequestId, SubmitError> {
        let layout = match (self.is_open(), self.layout) {
            (true, Some(layout)) => layout,
            _ => return Err(SubmitError::NotOpen),
        };
        let (kind, start, end) = guest::check(request, self.options.writable, layout.image_size)?;
        let slot = self.free_slot().ok_or(SubmitError::Busy)?;
        let state = match kind {
            Kind::Read => State::Reading,
            Kind::Map => State::Mapping,
            Kind::Flush => State::Flush,
            Kind::Write | Kind::Zeroes { .. } | Kind::Fill => State::Blocked,
        };
        match kind {
            Kind::Write | Kind::Zeroes { .. } => {
                self.stats.guest_writes += 1;
                self.cancel_fills(start, end);
            }
            Kind::Flush => {
                self.stats.guest_flushes += 1;
                self.commit.wanted = true;
            }
            _ => {}
        }
        let id = self.start_request(slot, kind, state, start, end);
        self.requests[slot].ticket = self.commit.started + 1;
        if kind == Kind::Flush && !self.options.writable {
            self.finish(slot, Ok(Reply::Done));
        }
        Ok(id)
    }

    pub(super) fn free_slot(&self) -> Option<usize> {
        if self.active + self.events.len() >= MAX_REQUESTS {
            return None;
        }
        self.requests.iter().position(|r| r.state == State::Free)
    }

    pub(super) fn start_request(
        &mut self,
        slot: usize,
        kind: Kind,
        state: State,
        start: u64,
        end: u64,
    ) -> RequestId {
        let generation = self.requests[slot].generation.wrapping_add(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.requests[slot] = Req {
            generation,
            seq,
            kind,
            state,
            start,
            end,
            cursor: start,
            ..Req::FREE
        };
        self.active += 1;
        RequestId {
            slot: slot_u16(slot),
            generation,
        }
    }

    pub(super) fn id_of(&self, slot: usize) -> RequestId {
        RequestId {
            slot: slot_u16(slot),
            generation: self.requests[slot].generation,
        }
    }

    pub(super) fn finish(&mut self, slot: usize, result: Result<Reply, RequestError>) {
        self.unreserve(slot);
        // A fill ending before it let its reader go failed in its read or copy.
        self.release_reader(slot, self.requests[slot].error);
        if let Some(offset) = self.requests[slot].bounce.take() {
            self.bounce.give_back(offset);
        }
        if self.table_alloc == Some(slot) {
            self.table_alloc = None;
        }
        let r = self.requests[slot];
        if r.kind == Kind::Fill {
            let cs = self.layout.map_or(0, |l| l.cluster_size);
            self.fill_bytes = self.fill_bytes.saturating_sub(cs);
            if result.is_ok() && !r.cancelled && r.seg.publish_next > 0 {
                self.stats.cor_fills_done += 1;
                if r.seg.action == Action::Marker {
                    self.stats.fills_recorded_as_zeros += 1;
                }
            } else {
                self.stats.cor_fills_cancelled += 1;
            }
            self.requests[slot].state = State::Free;
        } else {
            let id = self.id_of(slot);
            self.events.push(Event::Completed { id, result });
            self.requests[slot].state = State::Done;
        }
        self.active -= 1;
    }

    pub(super) fn request_command_done(
        &mut self,
        slot: usize,
        op: Op,
        result: Result<(), IoError>,
    ) {
        let fill = self.requests[slot].kind == Kind::Fill;
        let r = &mut self.requests[slot];
        r.outstanding = r.outstanding.saturating_sub(1);
        if let Err(error) = result {
            r.error.get_or_insert(RequestError::Io(error));
        }
        if r.state == State::Data {
            match op {
                Op::Read {
                    into: Buffer::Engine { .. },
                    ..
                } => r.seg.cow_stage = CowStage::ReadDone,
                Op::Write {
                    from: Buffer::Engine { .. },
                    ..
                } if !fill => {
                    r.seg.cow_stage = CowStage::Idle;
                    r.seg.cow_pos += r.seg.cow_len;
                }
                _ => {}
            }
        }
    }

    pub(super) fn step_requests(&mut self) -> bool {
        let mut moved = false;
        let mut left = self.active;
        for slot in 0..MAX_REQUESTS {
            if left == 0 {
                break;
            }
            if self.requests[slot].active() {
                left -= 1;
                self.stepping = Some(slot_u16(slot));
                self.unreserve(slot);
                moved |= self.step_request(slot);
                self.stepping = None;
            }
        }
        moved
    }

    pub(super) fn step_request(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        // A failed request finishes once nothing of it is in flight.
        if r.error.is_some() && r.state != State::Reading && r.state != State::Flush {
            if r.outstanding == 0 {
                self.finish(slot, Err(r.error.unwrap_or(RequestError::Failed)));
                return true;
            }
            return false;
        }
        match r.state {
            State::Reading => self.step_read(slot),
            State::Mapping => self.step_map(slot),
            State::Blocked => {
                if self.blocked(slot) {
                    return false;
                }
                self.requests[slot].state = State::Plan;
                true
            }
            State::Plan => self.plan(slot),
            State::NeedCheck => {
                if !self.need_check_on_disk || self.header != super::HeaderState::Idle {
                    return false;
                }
                let seg = r.seg;
                self.requests[slot].state = if seg.table.is_none() {
                    State::Table
                } else {
                    self.after_table(slot)
                };
                true
            }
            State::Table => self.step_table(slot),
            State::Grow => {
                let seg = r.seg;
                let cs = self.layout.map_or(0, |l| l.cluster_size);
                if !self.file_reaches(seg.phys + seg.clusters * cs) {
                    return false;
                }
                self.requests[slot].state = State::Data;
                true
            }
            State::Data => self.step_data(slot),
            State::Publish => self.step_publish(slot),
            State::FillRead => self.step_fill_read(slot),
            State::Flush | State::Free | State::Done => false,
        }
    }

    /// True while an earlier write must finish first: one whose bytes overlap this one's
    /// (later submitted wins), or one touching a cluster of this write that is not yet
    /// allocated (its allocation must not race ours). Allocated clusters stay allocated,
    /// so writes to different bytes of them run side by side. Fills still reading are
    /// not waited for: this write cancelled them.
    pub(super) fn blocked(&mut self, slot: usize) -> bool {
        let cs = self.layout.map_or(1, |l| l.cluster_size);
        let me = self.requests[slot];
        let (lo, hi) = (me.start / cs * cs, me.end.div_ceil(cs) * cs);
        for i in 0..MAX_REQUESTS {
            let o = self.requests[i];
            let earlier = i != slot && o.active() && o.kind.writes() && o.seq < me.seq;
            if !earlier || (o.kind == Kind::Fill && o.state == State::FillRead && o.cancelled) {
                continue;
            }
            if o.start < me.end && me.start < o.end {
                return true;
            }
            let (olo, ohi) = (o.start / cs * cs, o.end.div_ceil(cs) * cs);
            if olo < hi && lo < ohi && !self.all_allocated(lo.max(olo), hi.min(ohi)) {
                return true;
            }
        }
        false
    }

    /// True when every cluster of `[start, end)` is allocated (false while unknown).
    pub(super) fn all_allocated(&mut self, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self.extent(at, end) {
                Ok(Extent {
                    kind: ExtentKind::Data(_),
                    end: next,
                    ..
                }) => at = next,
                _ => return false,
            }
        }
        true
    }

    /// Records a metadata problem on the request; true when it must stop.
    pub(super) fn stalled(&mut self, slot: usize, stall: Stall) -> bool {
        match stall {
            Stall::Wait => false,
            Stall::Io(error) => {
                self.requests[slot].error = Some(RequestError::Io(error));
                true
            }
            Stall::Corrupt(c) => {
                self.requests[slot].error = Some(RequestError::Corrupt(c));
                true
            }
        }
    }

    pub(super) fn guest(&self, slot: usize, at: u64) -> Buffer {
        Buffer::Guest {
            request: self.id_of(slot),
            offset: buffer_len(at - self.requests[slot].start),
        }
    }

    pub(super) fn emit(&mut self, slot: usize, file: FileId, op: Op) -> bool {
        if self.commands.emit(Owner::Request(slot_u16(slot)), file, op) {
            self.requests[slot].outstanding += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn step_read(&mut self, slot: usize) -> bool {
        let mut moved = false;
        let backing = self.layout.is_some_and(|l| l.backing.is_some());
        loop {
            let r = self.requests[slot];
            if r.cursor >= r.end {
                break;
            }
            let ext = match self.extent(r.cursor, r.end) {
                Ok(ext) => ext,
                Err(stall) => {
                    if self.stalled(slot, stall) {
                        // Stop emitting; finish once what is in flight lands.
                        self.requests[slot].cursor = r.end;
                        moved = true;
                        continue;
                    }
                    break;
                }
            };
            let from_base = ext.kind == ExtentKind::Unallocated && backing;
            let mut len = ext.end - r.cursor;
            if from_base && self.copy_on_read {
                match self.start_read_fill(Some(slot), r.cursor, ext.end) {
                    ReadFill::Started(piece) => {
                        let r = &mut self.requests[slot];
                        r.outstanding += 1;
                        r.cursor += piece;
                        moved = true;
                        continue;
                    }
                    // This cluster is being written: read it, try the next one again.
                    ReadFill::Busy => {
                        let cs = self.layout.map_or(len, |l| l.cluster_size);
                        len = len.min((r.cursor / cs + 1) * cs - r.cursor);
                    }
                    ReadFill::NoRoom => self.defer_fills(r.cursor, ext.end),
                    // Read the cluster from the image once its fill is done.
                    ReadFill::Filling => break,
                }
            }
            let into = self.guest(slot, r.cursor);
            let (file, op) = match ext.kind {
                ExtentKind::Data(p) => (
                    FileId::Image,
                    Op::Read {
                        offset: p,
                        len: buffer_len(len),
                        into,
                    },
                ),
                ExtentKind::Unallocated if from_base => (
                    FileId::Base,
                    Op::Read {
                        offset: r.cursor,
                        len: buffer_len(len),
                        into,
                    },
                ),
                _ => (
                    FileId::Image,
                    Op::ZeroBuffer {
                        into,
                        len: buffer_len(len),
                    },
                ),
            };
            if !self.emit(slot, file, op) {
                break;
            }
            self.requests[slot].cursor = r.cursor + len;
            moved = true;
        }
        let r = self.requests[slot];
        if r.cursor >= r.end && r.outstanding == 0 {
            self.finish(slot, r.error.map_or(Ok(Reply::Done), Err));
            return true;
        }
        moved
    }

    pub(super) fn step_map(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        let backing = self.layout.is_some_and(|l| l.backing.is_some());
        match self.extent(r.start, r.end) {
            Ok(ext) => {
                let mapping = match ext.kind {
                    ExtentKind::Data(p) => Mapping::Data {
                        file: FileId::Image,
                        offset: p,
                    },
                    ExtentKind::Unallocated if backing => Mapping::Base,
                    ExtentKind::Unallocated => Mapping::Unallocated,
                    ExtentKind::Zero => Mapping::Zero,
                };
                let run = MapRun {
                    offset: r.start,
                    len: ext.end - r.start,
                    mapping,
                };
                self.finish(slot, Ok(Reply::Mapping(run)));
                true
            }
            Err(stall) => {
                if self.stalled(slot, stall) {
                    let error = self.requests[slot].error.unwrap_or(RequestError::Failed);
                    self.finish(slot, Err(error));
                    return true;
                }
                false
            }
        }
    }
}
