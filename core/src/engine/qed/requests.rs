//! QED guest requests from submission to completion: validation, the order rule for
//! writes (a write waits for every earlier write touching one of its clusters), reads
//! assembled run by run from data clusters, the backing file and zeros, and writes carried
//! out segment by segment — in place into allocated clusters, or into new clusters at the
//! end of the file with the partial head and tail copied from the backing file (zeros
//! for a zero cluster: backing data never reappears there), table entries set only after
//! the data landed. Copy-on-read fills are internal write requests whose data comes from a
//! bounce slot.

use super::super::protocol::FormatEngine;
use super::meta::{Extent, ExtentKind, Stall};
use super::QedEngine;
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::engine::MAX_REQUESTS;
use crate::qed::table::{ENTRY_SIZE, UNALLOCATED, ZERO_CLUSTER};

use crate::engine::guest::{self, Kind};

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

/// What a segment does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Write guest data into allocated clusters.
    InPlace,
    /// Zero (or deallocate) a range of allocated clusters.
    ZeroInPlace,
    /// New clusters: the segment's bytes from `Source`, head and tail copied.
    Allocate(Source),
    /// Whole clusters become zero clusters.
    Marker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Guest,
    Zeros,
    Bounce,
}

/// Progress of the head/tail copy of an allocating segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CowStage {
    Idle,
    Reading,
    ReadDone,
    Writing,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    start: u64,
    end: u64,
    action: Action,
    /// In place: file offset of `start`. Allocating: file offset of the first new cluster.
    phys: u64,
    /// First guest cluster and number of clusters (allocating and marker segments).
    cluster: u64,
    clusters: u64,
    /// L2 table mapping the segment, once it exists.
    table: Option<u64>,
    /// The head and tail come from the backing file (else they are zeros).
    cow_backing: bool,
    main_emitted: bool,
    /// 0 = head, 1 = tail, 2 = done; `cow_pos` is the next guest byte to copy.
    cow_part: u8,
    cow_pos: u64,
    cow_len: u64,
    cow_stage: CowStage,
    publish_next: u64,
    /// The table claim of a `Table` state: file offset, zeroing emitted.
    table_claim: Option<(u64, bool)>,
}

impl Segment {
    const NONE: Segment = Segment {
        start: 0,
        end: 0,
        action: Action::InPlace,
        phys: 0,
        cluster: 0,
        clusters: 0,
        table: None,
        cow_backing: false,
        main_emitted: false,
        cow_part: 0,
        cow_pos: 0,
        cow_len: 0,
        cow_stage: CowStage::Idle,
        publish_next: 0,
        table_claim: None,
    };
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Req {
    pub(super) generation: u16,
    seq: u64,
    kind: Kind,
    pub(super) state: State,
    start: u64,
    end: u64,
    cursor: u64,
    outstanding: u16,
    pub(super) error: Option<RequestError>,
    /// Flush requests: the commit they wait for.
    pub(super) ticket: u64,
    seg: Segment,
    /// Bounce slot held (copy-on-write pieces, or the fill's cluster).
    bounce: Option<usize>,
    /// A fill overtaken by a newer guest write: it must not write.
    cancelled: bool,
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
    };

    /// Waits for a length change that covers space it claimed.
    pub(super) fn waits_for_growth(&self) -> bool {
        self.state == State::Grow || (self.state == State::Table && self.seg.table_claim.is_some())
    }

    fn active(&self) -> bool {
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

    fn free_slot(&self) -> Option<usize> {
        if self.active + self.events.len() >= MAX_REQUESTS {
            return None;
        }
        self.requests.iter().position(|r| r.state == State::Free)
    }

    fn start_request(
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
            slot: slot as u16,
            generation,
        }
    }

    fn id_of(&self, slot: usize) -> RequestId {
        RequestId {
            slot: slot as u16,
            generation: self.requests[slot].generation,
        }
    }

    pub(super) fn finish(&mut self, slot: usize, result: Result<Reply, RequestError>) {
        self.unreserve(slot);
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

    /// Marks fills of clusters in `[start, end)` that have not started writing as
    /// cancelled: the newer guest data must win.
    fn cancel_fills(&mut self, start: u64, end: u64) {
        let cs = self.layout.map_or(1, |l| l.cluster_size);
        let (lo, hi) = (start / cs * cs, end.div_ceil(cs) * cs);
        for r in self.requests.iter_mut() {
            if r.kind == Kind::Fill && r.state == State::FillRead && r.start < hi && lo < r.end {
                r.cancelled = true;
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
                self.stepping = Some(slot as u16);
                self.unreserve(slot);
                moved |= self.step_request(slot);
                self.stepping = None;
            }
        }
        moved
    }

    fn step_request(&mut self, slot: usize) -> bool {
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
    fn blocked(&mut self, slot: usize) -> bool {
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
    fn all_allocated(&mut self, start: u64, end: u64) -> bool {
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
    fn stalled(&mut self, slot: usize, stall: Stall) -> bool {
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

    fn guest(&self, slot: usize, at: u64) -> Buffer {
        Buffer::Guest {
            request: self.id_of(slot),
            offset: (at - self.requests[slot].start) as usize,
        }
    }

    fn emit(&mut self, slot: usize, file: FileId, op: Op) -> bool {
        if self.commands.emit(Owner::Request(slot as u16), file, op) {
            self.requests[slot].outstanding += 1;
            true
        } else {
            false
        }
    }

    fn step_read(&mut self, slot: usize) -> bool {
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
            let len = ext.end - r.cursor;
            let into = self.guest(slot, r.cursor);
            let (file, op) = match ext.kind {
                ExtentKind::Data(p) => (
                    FileId::Image,
                    Op::Read {
                        offset: p,
                        len: len as usize,
                        into,
                    },
                ),
                ExtentKind::Unallocated if backing => (
                    FileId::Base,
                    Op::Read {
                        offset: r.cursor,
                        len: len as usize,
                        into,
                    },
                ),
                _ => (
                    FileId::Image,
                    Op::ZeroBuffer {
                        into,
                        len: len as usize,
                    },
                ),
            };
            if !self.emit(slot, file, op) {
                break;
            }
            if ext.kind == ExtentKind::Unallocated && backing && self.copy_on_read {
                self.spawn_fills(r.cursor, ext.end);
            }
            self.requests[slot].cursor = ext.end;
            moved = true;
        }
        let r = self.requests[slot];
        if r.cursor >= r.end && r.outstanding == 0 {
            self.finish(slot, r.error.map_or(Ok(Reply::Done), Err));
            return true;
        }
        moved
    }

    fn step_map(&mut self, slot: usize) -> bool {
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

    /// Plans the segment at the cursor (or finishes the request).
    fn plan(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let backing = layout.backing.is_some();
        let r = self.requests[slot];
        if r.cursor >= r.end {
            self.finish(slot, Ok(Reply::Done));
            return true;
        }
        let ext: Extent = match self.extent(r.cursor, r.end) {
            Ok(ext) => ext,
            Err(stall) => return self.stalled(slot, stall),
        };
        let c = r.cursor;
        let cluster = c / cs;
        let mut seg = Segment {
            start: c,
            end: ext.end,
            table: ext.table,
            ..Segment::NONE
        };
        let allocate = |seg: &mut Segment, source: Source, from_backing: bool| {
            seg.action = Action::Allocate(source);
            seg.cluster = cluster;
            seg.clusters = seg.end.div_ceil(cs) - cluster;
            seg.cow_backing = from_backing;
            seg.cow_pos = cluster * cs;
        };
        let next = match (r.kind, ext.kind) {
            (Kind::Write, ExtentKind::Data(p)) => {
                seg.action = Action::InPlace;
                seg.phys = p;
                State::Data
            }
            (Kind::Zeroes { .. }, ExtentKind::Data(p)) => {
                seg.action = Action::ZeroInPlace;
                seg.phys = p;
                State::Data
            }
            (Kind::Zeroes { .. }, ExtentKind::Zero) => {
                self.requests[slot].cursor = ext.end;
                return true;
            }
            (Kind::Zeroes { .. }, ExtentKind::Unallocated) if !backing => {
                self.requests[slot].cursor = ext.end;
                return true;
            }
            (Kind::Zeroes { .. }, ExtentKind::Unallocated) => {
                if c % cs != 0 || ext.end - c < cs {
                    // A partial cluster: a new cluster, zeros here, backing data around.
                    seg.end = ext.end.min((cluster + 1) * cs);
                    allocate(&mut seg, Source::Zeros, true);
                } else {
                    seg.end = c + (ext.end - c) / cs * cs;
                    seg.action = Action::Marker;
                    seg.cluster = cluster;
                    seg.clusters = (seg.end - c) / cs;
                }
                State::NeedCheck
            }
            (Kind::Write, kind) => {
                allocate(
                    &mut seg,
                    Source::Guest,
                    kind == ExtentKind::Unallocated && backing,
                );
                State::NeedCheck
            }
            (Kind::Fill, ExtentKind::Unallocated) if !r.cancelled => {
                seg.end = r.end;
                allocate(&mut seg, Source::Bounce, false);
                State::NeedCheck
            }
            // A fill whose cluster changed meanwhile, or any other request: nothing to do.
            _ => {
                self.finish(slot, Ok(Reply::Done));
                return true;
            }
        };
        if next == State::NeedCheck {
            self.need_check_wanted = true;
        }
        let req = &mut self.requests[slot];
        req.seg = seg;
        req.state = next;
        true
    }

    /// The state after the segment's L2 table exists: claim clusters or set markers.
    fn after_table(&mut self, slot: usize) -> State {
        let cs = self.layout.map_or(0, |l| l.cluster_size);
        let seg = self.requests[slot].seg;
        match seg.action {
            Action::Marker => State::Publish,
            _ => match self.claim(seg.clusters * cs) {
                Some(at) => {
                    self.requests[slot].seg.phys = at;
                    self.stats.chunks_allocated += seg.clusters;
                    State::Grow
                }
                None => {
                    self.requests[slot].error = Some(RequestError::Io(IoError::NoSpace));
                    State::Grow
                }
            },
        }
    }

    /// Creates the L2 table for the segment's L1 index: space at the end of the file,
    /// zeroed, then the L1 entry (one table allocation at a time).
    fn step_table(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let seg = self.requests[slot].seg;
        let l1 = seg.start / layout.cluster_size / layout.table_entries;
        if seg.table_claim.is_none() {
            match self.l2_table(l1) {
                Ok(Some(table)) => {
                    // Another request created it meanwhile.
                    self.requests[slot].seg.table = Some(table);
                    let next = self.after_table(slot);
                    self.requests[slot].state = next;
                    return true;
                }
                Ok(None) => {}
                Err(stall) => return self.stalled(slot, stall),
            }
            if self.table_alloc.is_some() {
                return false;
            }
            let Some(at) = self.claim(layout.table_len) else {
                self.requests[slot].error = Some(RequestError::Io(IoError::NoSpace));
                return true;
            };
            self.table_alloc = Some(slot);
            self.stats.chunks_allocated += 1;
            self.requests[slot].seg.table_claim = Some((at, false));
            return true;
        }
        let Some((at, zeroed)) = seg.table_claim else {
            return false;
        };
        if !self.file_reaches(at + layout.table_len) {
            return false;
        }
        if !self.options.storage_zero_init && !zeroed {
            let op = Op::WriteZeroes {
                offset: at,
                len: layout.table_len,
                unmap: false,
            };
            if !self.emit(slot, FileId::Image, op) {
                return false;
            }
            self.requests[slot].seg.table_claim = Some((at, true));
            return true;
        }
        if self.requests[slot].outstanding > 0 {
            return false;
        }
        if let Err(stall) = self.set_entry_at(self.l1_entry_offset(l1), at) {
            return self.stalled(slot, stall);
        }
        self.table_alloc = None;
        let req = &mut self.requests[slot];
        req.seg.table = Some(at);
        req.seg.table_claim = None;
        let next = self.after_table(slot);
        self.requests[slot].state = next;
        true
    }

    fn step_data(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let mut moved = false;
        let r = self.requests[slot];
        let seg = r.seg;
        if !seg.main_emitted {
            let len = seg.end - seg.start;
            let command = match seg.action {
                Action::InPlace => Some(Op::Write {
                    offset: seg.phys,
                    len: len as usize,
                    from: self.guest(slot, seg.start),
                }),
                Action::ZeroInPlace => Some(Op::WriteZeroes {
                    offset: seg.phys,
                    len,
                    unmap: matches!(r.kind, Kind::Zeroes { unmap: true }),
                }),
                Action::Allocate(Source::Guest) => Some(Op::Write {
                    offset: seg.phys + (seg.start - seg.cluster * cs),
                    len: len as usize,
                    from: self.guest(slot, seg.start),
                }),
                Action::Allocate(Source::Bounce) => Some(Op::Write {
                    offset: seg.phys,
                    len: cs as usize,
                    from: Buffer::Engine {
                        offset: r.bounce.unwrap_or(0),
                    },
                }),
                Action::Allocate(Source::Zeros) if !self.options.storage_zero_init => {
                    Some(Op::WriteZeroes {
                        offset: seg.phys + (seg.start - seg.cluster * cs),
                        len,
                        unmap: false,
                    })
                }
                Action::Allocate(Source::Zeros) | Action::Marker => None,
            };
            if let Some(op) = command {
                if !self.emit(slot, FileId::Image, op) {
                    return false;
                }
            }
            self.requests[slot].seg.main_emitted = true;
            moved = true;
        }
        if matches!(seg.action, Action::Allocate(_)) {
            moved |= self.step_cow(slot);
        }
        let r = self.requests[slot];
        let copying = matches!(r.seg.action, Action::Allocate(_)) && r.seg.cow_part < 2;
        if r.outstanding > 0 || copying {
            return moved;
        }
        if r.kind != Kind::Fill {
            if let Some(offset) = self.requests[slot].bounce.take() {
                self.bounce.give_back(offset);
            }
        }
        let req = &mut self.requests[slot];
        match req.seg.action {
            Action::Allocate(_) => req.state = State::Publish,
            _ => {
                req.cursor = req.seg.end;
                req.state = State::Plan;
            }
        }
        true
    }

    /// Copies the head and tail of an allocating segment (from the backing file through a
    /// bounce slot, or zeros when the host's new space is not zero already).
    fn step_cow(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let mut moved = false;
        loop {
            let r = self.requests[slot];
            let seg = r.seg;
            let last = seg.cluster + seg.clusters;
            let (lo, hi) = match seg.cow_part {
                0 => (seg.cluster * cs, seg.start),
                1 => (seg.end, last * cs),
                _ => return moved,
            };
            let phys_of = |guest: u64| seg.phys + (guest - seg.cluster * cs);
            match seg.cow_stage {
                CowStage::Idle => {
                    let pos = seg.cow_pos.max(lo);
                    if pos >= hi {
                        let req = &mut self.requests[slot];
                        req.seg.cow_part += 1;
                        req.seg.cow_pos = if req.seg.cow_part == 1 { seg.end } else { 0 };
                        moved = true;
                        continue;
                    }
                    if !seg.cow_backing {
                        if self.options.storage_zero_init {
                            self.requests[slot].seg.cow_pos = hi;
                            continue;
                        }
                        let op = Op::WriteZeroes {
                            offset: phys_of(pos),
                            len: hi - pos,
                            unmap: false,
                        };
                        if !self.emit(slot, FileId::Image, op) {
                            return moved;
                        }
                        self.requests[slot].seg.cow_pos = hi;
                        moved = true;
                        continue;
                    }
                    let bounce = match r.bounce {
                        Some(b) => b,
                        None => match self.bounce.take() {
                            Some(b) => {
                                self.requests[slot].bounce = Some(b);
                                b
                            }
                            None => return moved,
                        },
                    };
                    let len = (hi - pos).min(self.bounce_len);
                    let op = Op::Read {
                        offset: pos,
                        len: len as usize,
                        into: Buffer::Engine { offset: bounce },
                    };
                    if !self.emit(slot, FileId::Base, op) {
                        return moved;
                    }
                    self.stats.cow_reads += 1;
                    let req = &mut self.requests[slot];
                    req.seg.cow_pos = pos;
                    req.seg.cow_len = len;
                    req.seg.cow_stage = CowStage::Reading;
                    return true;
                }
                CowStage::ReadDone => {
                    if r.error.is_some() {
                        return moved;
                    }
                    let op = Op::Write {
                        offset: phys_of(seg.cow_pos),
                        len: seg.cow_len as usize,
                        from: Buffer::Engine {
                            offset: r.bounce.unwrap_or(0),
                        },
                    };
                    if !self.emit(slot, FileId::Image, op) {
                        return moved;
                    }
                    self.requests[slot].seg.cow_stage = CowStage::Writing;
                    return true;
                }
                CowStage::Reading | CowStage::Writing => return moved,
            }
        }
    }

    /// Sets the table entries of an allocating or marker segment (its data landed).
    fn step_publish(&mut self, slot: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let cs = layout.cluster_size;
        let mut moved = false;
        loop {
            let r = self.requests[slot];
            let seg = r.seg;
            if seg.publish_next >= seg.clusters {
                let req = &mut self.requests[slot];
                req.cursor = seg.end;
                req.state = State::Plan;
                return true;
            }
            let Some(table) = seg.table else {
                self.requests[slot].error = Some(RequestError::Failed);
                return true;
            };
            let k = seg.publish_next;
            let at = table + ((seg.cluster + k) % layout.table_entries) * ENTRY_SIZE;
            let value = match seg.action {
                Action::Marker => ZERO_CLUSTER,
                _ => seg.phys + k * cs,
            };
            if r.kind == Kind::Fill {
                // Defensive: a fill only fills a cluster nobody wrote.
                match self.entry_at(at) {
                    Ok(UNALLOCATED) => {}
                    Ok(_) => {
                        self.requests[slot].cancelled = true;
                        self.finish(slot, Ok(Reply::Done));
                        return true;
                    }
                    Err(stall) => return self.stalled(slot, stall) || moved,
                }
            }
            if let Err(stall) = self.set_entry_at(at, value) {
                return self.stalled(slot, stall) || moved;
            }
            self.requests[slot].seg.publish_next += 1;
            moved = true;
        }
    }

    /// Starts copy-on-read fills for the clusters of `[start, end)` (read from the backing
    /// file) when the cap, bounce slots and request slots allow.
    fn spawn_fills(&mut self, start: u64, end: u64) {
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

    fn step_fill_read(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        if !r.seg.main_emitted {
            let op = Op::Read {
                offset: r.start,
                len: (r.end - r.start) as usize,
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
