//! Guest requests from submission to completion: validation, the order rule for
//! overlapping writes, reads assembled run by run from base, data and zeros, and writes
//! planned segment by segment (copy-on-write of partial blocks, chunk allocation with
//! zero-filled gaps, metadata applied only after the data landed).

use super::meta::{Stall, BITS_PER_PAGE};
use super::FvdEngine;
use crate::engine::cache::PageKey;
use crate::engine::guest;
use crate::engine::protocol::FormatEngine;
use crate::engine::slot_table::{buffer_len, slot_u16};
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::engine::MAX_REQUESTS;
use crate::units::SECTOR_SIZE;

pub(crate) use crate::engine::guest::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Free,
    /// Finished; the slot is reused once the host polled the completion event.
    Done,
    Reading,
    Mapping,
    /// Waits for earlier overlapping writes.
    Blocked,
    /// Plans the segment starting at `cursor`.
    Plan,
    /// Base reads for copy-on-write in flight.
    Cow,
    /// Data commands being emitted / in flight.
    Data,
    /// Data landed; metadata to apply.
    Apply,
    /// Waits for a commit that starts after it.
    Flush,
    /// A copy-on-read fill reads its block from the base.
    FillRead,
}

/// A piece of a block copied from the base through a bounce slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CowPart {
    guest: u64,
    len: u64,
    bounce: usize,
}

/// The part of a write being carried out now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Data-storage offset of guest byte `origin_guest`; guest bytes map linearly from it.
    origin_guest: u64,
    origin_phys: u64,
    head: Option<CowPart>,
    tail: Option<CowPart>,
    /// Newly allocated (virtual chunk, physical chunk).
    alloc: Option<(u64, u64)>,
    /// Zero the allocated chunk outside what this segment writes.
    zero_gaps: bool,
    chunk_size: u64,
    /// Bitmap bits to set afterwards.
    bits: Option<(u64, u64)>,
    write_body: bool,
    next_part: u8,
}

impl Segment {
    const NONE: Segment = Segment {
        start: 0,
        end: 0,
        origin_guest: 0,
        origin_phys: 0,
        head: None,
        tail: None,
        alloc: None,
        zero_gaps: false,
        chunk_size: 0,
        bits: None,
        write_body: false,
        next_part: 0,
    };

    fn phys(&self, guest: u64) -> u64 {
        self.origin_phys + (guest - self.origin_guest)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestSlot {
    pub(crate) generation: u16,
    pub(crate) seq: u64,
    pub(crate) kind: Kind,
    pub(crate) state: State,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) cursor: u64,
    pub(crate) outstanding: u16,
    pub(crate) error: Option<RequestError>,
    pub(crate) seg: Segment,
    pub(crate) pins: [Option<u16>; 2],
    pub(crate) claim: Option<u64>,
    pub(crate) fill: super::fill::FillInfo,
}

impl RequestSlot {
    pub(crate) const FREE: RequestSlot = RequestSlot {
        generation: 0,
        seq: 0,
        kind: Kind::Read,
        state: State::Free,
        start: 0,
        end: 0,
        cursor: 0,
        outstanding: 0,
        error: None,
        seg: Segment::NONE,
        pins: [None; 2],
        claim: None,
        fill: super::fill::FillInfo::NONE,
    };

    fn lock_range(&self, unit: u64) -> (u64, u64) {
        (self.start / unit * unit, self.end.div_ceil(unit) * unit)
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    pub(crate) fn accept(&mut self, request: Request) -> Result<RequestId, SubmitError> {
        let layout = match (self.is_open(), self.layout) {
            (true, Some(layout)) if !self.failed => layout,
            _ => return Err(SubmitError::NotOpen),
        };
        let (kind, start, end) = guest::check(request, self.options.writable, layout.virtual_size)?;
        if self.active_requests + self.events.len() >= MAX_REQUESTS {
            return Err(SubmitError::Busy);
        }
        let slot = self
            .requests
            .iter()
            .position(|r| r.state == State::Free)
            .ok_or(SubmitError::Busy)?;
        match kind {
            Kind::Write | Kind::Zeroes { .. } => self.stats.guest_writes += 1,
            Kind::Flush => {
                self.stats.guest_flushes += 1;
                self.flushes_waiting += 1;
            }
            _ => {}
        }
        let generation = self.requests[slot].generation.wrapping_add(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        let state = match kind {
            Kind::Read => State::Reading,
            Kind::Map => State::Mapping,
            Kind::Flush => State::Flush,
            Kind::Write | Kind::Zeroes { .. } | Kind::Fill => State::Blocked,
        };
        if kind.writes() {
            self.cancel_fills(start, end);
        }
        self.requests[slot] = RequestSlot {
            generation,
            seq,
            kind,
            state,
            start,
            end,
            cursor: start,
            ..RequestSlot::FREE
        };
        self.request_order[self.active_requests] = slot_u16(slot);
        self.active_requests += 1;
        self.awake[slot] = true;
        Ok(RequestId {
            slot: slot_u16(slot),
            generation,
        })
    }

    fn id_of(&self, slot: usize) -> RequestId {
        RequestId {
            slot: slot_u16(slot),
            generation: self.requests[slot].generation,
        }
    }

    /// Completes request `slot` with `result` and frees it.
    pub(crate) fn finish(&mut self, slot: usize, result: Result<Reply, RequestError>) {
        self.release(slot);
        if self.requests[slot].kind.writes() {
            // Later writes, claims, bounce slots and fills may be waiting for this one.
            self.wake_all = true;
        }
        if self.requests[slot].state == State::Flush {
            self.flushes_waiting -= 1;
        }
        if self.requests[slot].kind == Kind::Fill {
            self.fill_finished(slot, result.is_ok());
            self.requests[slot].state = State::Free;
        } else {
            let id = self.id_of(slot);
            self.events.push(Event::Completed { id, result });
            self.requests[slot].state = State::Done;
        }
        if let Some(pos) = self
            .request_order
            .prefix(self.active_requests)
            .iter()
            .position(|&s| usize::from(s) == slot)
        {
            self.request_order
                .copy_within(pos + 1..self.active_requests, pos);
            self.active_requests -= 1;
        }
    }

    pub(crate) fn release(&mut self, slot: usize) {
        let r = &mut self.requests[slot];
        let pins = core::mem::take(&mut r.pins);
        let seg = core::mem::replace(&mut r.seg, Segment::NONE);
        if r.claim.take().is_some() || pins.iter().any(Option::is_some) {
            // A chunk claim or pinned pages others may be waiting for.
            self.wake_all = true;
        }
        for page in pins.into_iter().flatten() {
            let page = self.cache.slot_mut(usize::from(page));
            page.pins = page.pins.saturating_sub(1);
        }
        for part in [seg.head, seg.tail].into_iter().flatten() {
            self.bounce.give_back(part.bounce);
            self.wake_all = true;
        }
        if self.page_token == Some(slot_u16(slot)) {
            self.page_token = None;
            self.wake_all = true;
        }
    }

    /// Brings the pages `keys` into the cache and pins them for request `slot`. A request
    /// that has to wait keeps what it pinned only if it holds the page token (so a tiny
    /// cache cannot livelock, and only one request can hold partial pins).
    fn acquire(
        &mut self,
        slot: usize,
        keys: [Option<PageKey>; 2],
    ) -> Result<[Option<usize>; 2], Stall> {
        let mut got = [None; 2];
        for ((key, got), i) in keys.into_iter().zip(&mut got).zip(0..) {
            let Some(key) = key else { continue };
            let pins: &mut [Option<u16>; 2] = &mut self.requests[slot].pins;
            if let Some(pinned) = pins.get(i).copied().flatten() {
                *got = Some(usize::from(pinned));
                continue;
            }
            match self.page(key) {
                Ok(page) => {
                    self.cache.slot_mut(page).pins += 1;
                    if let Some(pin) = self.requests[slot].pins.get_mut(i) {
                        *pin = Some(slot_u16(page));
                    }
                    *got = Some(page);
                }
                Err(stall) => {
                    let holder = *self.page_token.get_or_insert(slot_u16(slot));
                    if holder != slot_u16(slot) || stall != Stall::Wait {
                        self.unpin(slot);
                    }
                    return Err(stall);
                }
            }
        }
        if self.page_token == Some(slot_u16(slot)) {
            self.page_token = None;
            self.wake_all = true;
        }
        Ok(got)
    }

    fn unpin(&mut self, slot: usize) {
        let pins = core::mem::take(&mut self.requests[slot].pins);
        for page in pins.into_iter().flatten() {
            let page = self.cache.slot_mut(usize::from(page));
            page.pins = page.pins.saturating_sub(1);
        }
    }

    /// Pages the mapping of guest byte `offset` needs.
    fn keys_for(&self, offset: u64) -> [Option<PageKey>; 2] {
        let Some(layout) = self.layout else {
            return [None; 2];
        };
        let bitmap = self
            .live_base()
            .filter(|b| offset < b.size)
            .map(|_| Self::bitmap_key(offset / layout.block_size));
        let table = layout.table.map(|t| Self::table_key(offset / t.chunk_size));
        [bitmap, table]
    }

    pub(crate) fn step_requests(&mut self) -> bool {
        let all = core::mem::take(&mut self.wake_all);
        let mut moved = false;
        let mut i = 0;
        while i < self.active_requests {
            let slot = usize::from(self.request_order[i]);
            let before = self.active_requests;
            if all || self.awake[slot] {
                let progressed = self.step_request(slot);
                // A request that moved may move again; one that could not sleeps until
                // something wakes it.
                self.awake[slot] = progressed;
                moved |= progressed;
            }
            if self.active_requests == before {
                i += 1;
            }
        }
        moved
    }

    fn step_request(&mut self, slot: usize) -> bool {
        if self.failed
            && self.requests[slot].outstanding == 0
            && self.requests[slot].state != State::Flush
        {
            self.finish(slot, Err(RequestError::Failed));
            return true;
        }
        let r = &self.requests[slot];
        // Requests that only wait for their commands' completions: nothing to do (the
        // common case on every pump, so decided without copying the slot).
        let only_waiting = r.outstanding > 0
            && match r.state {
                State::Reading => r.cursor == r.end || r.error.is_some(),
                State::Cow => r.seg.next_part >= 2,
                State::Data => r.seg.next_part >= 5,
                State::FillRead => true,
                _ => false,
            };
        if only_waiting {
            return false;
        }
        if r.kind == Kind::Fill
            && r.fill.cancelled
            && r.outstanding == 0
            && matches!(r.state, State::Blocked | State::Plan)
        {
            self.finish(slot, Err(RequestError::Failed));
            return true;
        }
        match self.requests[slot].state {
            State::FillRead => self.step_fill_read(slot),
            State::Reading => self.step_read(slot),
            State::Mapping => self.step_map(slot),
            State::Blocked => self.step_blocked(slot),
            State::Plan => self.step_plan(slot),
            State::Cow => self.step_cow(slot),
            State::Data => self.step_data(slot),
            State::Apply => self.step_apply(slot),
            State::Flush | State::Free | State::Done => false,
        }
    }

    fn stall_error(stall: Stall) -> Option<RequestError> {
        match stall {
            Stall::Wait => None,
            Stall::Io(e) => Some(RequestError::Io(e)),
            Stall::Corrupt(c) => Some(RequestError::Corrupt(c)),
        }
    }

    fn step_map(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        if r.start == r.end {
            self.finish(
                slot,
                Ok(Reply::Mapping(MapRun {
                    offset: r.start,
                    len: 0,
                    mapping: Mapping::Unallocated,
                })),
            );
            return true;
        }
        let keys = self.keys_for(r.start);
        let result = self
            .acquire(slot, keys)
            .and_then(|_| self.map_run(r.start, r.end - r.start));
        match result {
            Ok(run) => self.finish(slot, Ok(Reply::Mapping(run))),
            Err(stall) => match Self::stall_error(stall) {
                Some(error) => self.finish(slot, Err(error)),
                None => return false,
            },
        }
        true
    }

    fn step_read(&mut self, slot: usize) -> bool {
        let mut moved = false;
        loop {
            let r = self.requests[slot];
            if r.cursor == r.end || r.error.is_some() {
                if r.outstanding == 0 {
                    let result = r.error.map_or(Ok(Reply::Done), Err);
                    self.finish(slot, result);
                    return true;
                }
                return moved;
            }
            if self.commands.free() == 0 {
                return moved;
            }
            let keys = self.keys_for(r.cursor);
            let run = self
                .acquire(slot, keys)
                .and_then(|_| self.map_run(r.cursor, r.end - r.cursor));
            self.unpin(slot);
            let run = match run {
                Ok(run) => run,
                Err(stall) => {
                    match Self::stall_error(stall) {
                        Some(error) => self.requests[slot].error = Some(error),
                        None => return moved,
                    }
                    continue;
                }
            };
            if run.mapping == Mapping::Base && self.copy_on_read {
                let Some(taken) = self.read_through_fill(slot, run.offset, run.len) else {
                    // A fill is copying these blocks: read them once it is done.
                    return moved;
                };
                if taken > 0 {
                    self.requests[slot].cursor += taken;
                    moved = true;
                    continue;
                }
            }
            let into = Buffer::Guest {
                request: self.id_of(slot),
                offset: buffer_len(run.offset - r.start),
            };
            let len = buffer_len(run.len);
            let (file, op) = match run.mapping {
                Mapping::Base => (
                    FileId::Base,
                    Op::Read {
                        offset: run.offset,
                        len,
                        into,
                    },
                ),
                Mapping::Data { file, offset } => (file, Op::Read { offset, len, into }),
                Mapping::Zero | Mapping::Unallocated => {
                    (FileId::Image, Op::ZeroBuffer { into, len })
                }
            };
            if !self.commands.emit(Owner::Request(slot_u16(slot)), file, op) {
                return moved;
            }
            let r = &mut self.requests[slot];
            r.cursor += run.len;
            r.outstanding += 1;
            moved = true;
        }
    }

    fn step_blocked(&mut self, slot: usize) -> bool {
        let unit = match (self.live_base(), self.layout) {
            (Some(_), Some(layout)) => layout.block_size,
            _ => SECTOR_SIZE,
        };
        let me = self.requests[slot];
        let (lo, hi) = me.lock_range(unit);
        let blocked = self
            .request_order
            .prefix(self.active_requests)
            .iter()
            .any(|&other| {
                let o = &self.requests[usize::from(other)];
                let (olo, ohi) = o.lock_range(unit);
                o.seq < me.seq && o.kind.writes() && !o.fill.cancelled && olo < hi && lo < ohi
            });
        if blocked {
            return false;
        }
        self.requests[slot].state = State::Plan;
        true
    }

    fn step_plan(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        if r.cursor >= r.end {
            self.finish(slot, Ok(Reply::Done));
            return true;
        }
        if r.kind == Kind::Fill {
            match self.fill_still_wanted(slot) {
                Ok(true) => {}
                Ok(false) => {
                    self.finish(slot, Err(RequestError::Failed));
                    return true;
                }
                Err(stall) => return stall != Stall::Wait && self.fail_fill(slot),
            }
        }
        match self.plan_segment(slot) {
            Ok(()) => {
                let seg = self.requests[slot].seg;
                self.requests[slot].state = if seg.head.is_some() || seg.tail.is_some() {
                    State::Cow
                } else {
                    State::Data
                };
                true
            }
            Err(stall) => match Self::stall_error(stall) {
                Some(error) => {
                    self.finish(slot, Err(error));
                    true
                }
                None => false,
            },
        }
    }

    fn plan_segment(&mut self, slot: usize) -> Result<(), Stall> {
        let layout = self.layout.ok_or(Stall::Wait)?;
        let r = self.requests[slot];
        let (s, mut e) = (r.cursor, r.end);
        let bs = layout.block_size;
        let base = self.live_base().filter(|b| s < b.size);
        if let Some(table) = layout.table {
            e = e.min((s / table.chunk_size + 1) * table.chunk_size);
        }
        if base.is_some() {
            e = e.min((s / bs / BITS_PER_PAGE + 1) * BITS_PER_PAGE * bs);
        }
        let [bitmap_page, table_page] = self.acquire(slot, self.keys_for(s))?;

        let mut seg = Segment {
            start: s,
            end: e,
            write_body: true,
            ..Segment::NONE
        };
        let mut bounce_needed = 0;
        if let (Some(base), Some(page)) = (base, bitmap_page) {
            let first = s / bs;
            let last = ((e - 1) / bs).min(base.blocks - 1);
            seg.bits = Some((first, last));
            if s % bs != 0 && !self.bit(page, first) {
                seg.head = Some(CowPart {
                    guest: first * bs,
                    len: s - first * bs,
                    bounce: 0,
                });
                bounce_needed += 1;
            }
            let tail_block = e / bs;
            if e % bs != 0 && e < base.size && !self.bit(page, tail_block) {
                let tail_end = ((tail_block + 1) * bs).min(base.size);
                seg.tail = Some(CowPart {
                    guest: e,
                    len: tail_end - e,
                    bounce: 0,
                });
                bounce_needed += 1;
            }
        }
        // A fill whose base blocks are all zero is planned as a zero write.
        let zero_write =
            matches!(r.kind, Kind::Zeroes { .. }) || (r.kind == Kind::Fill && r.fill.zero);
        match (layout.table, table_page) {
            (Some(table), Some(page)) => {
                let cs = table.chunk_size;
                let chunk = s / cs;
                seg.chunk_size = cs;
                seg.origin_guest = chunk * cs;
                let entry = self.entry(page, chunk);
                let bad_entry = Stall::Corrupt(Corruption::BadTableEntry { chunk, entry });
                match self.physical(chunk, entry).map_err(Stall::Corrupt)? {
                    Some(p) => seg.origin_phys = layout.chunk_offset(p).ok_or(bad_entry)?,
                    None if zero_write && bounce_needed == 0 => {
                        // An unallocated chunk already reads as zeros: only the bitmap changes.
                        seg.write_body = false;
                    }
                    None => {
                        let claimed =
                            self.request_order
                                .prefix(self.active_requests)
                                .iter()
                                .any(|&o| {
                                    usize::from(o) != slot
                                        && self.requests[usize::from(o)].claim == Some(chunk)
                                });
                        if claimed || self.bounce.available() < bounce_needed {
                            self.unpin(slot);
                            return Err(Stall::Wait);
                        }
                        let (p, zero_gaps) = match self.allocate_chunk() {
                            Ok(found) => found,
                            Err(stall) => {
                                self.unpin(slot);
                                return Err(stall);
                            }
                        };
                        // The allocator hands out only chunks a table entry can name.
                        let Some(origin) = layout.chunk_offset(p) else {
                            self.unpin(slot);
                            return Err(Stall::Io(IoError::NoSpace));
                        };
                        seg.origin_phys = origin;
                        seg.alloc = Some((chunk, p));
                        seg.zero_gaps = zero_gaps;
                        self.requests[slot].claim = Some(chunk);
                    }
                }
            }
            _ => seg.origin_phys = layout.data_offset,
        }
        if self.bounce.available() < bounce_needed {
            self.unpin(slot);
            return Err(Stall::Wait);
        }
        for part in [&mut seg.head, &mut seg.tail].into_iter().flatten() {
            part.bounce = self.bounce.take().ok_or(Stall::Wait)?;
        }
        self.requests[slot].seg = seg;
        Ok(())
    }

    fn step_cow(&mut self, slot: usize) -> bool {
        let mut moved = false;
        let seg = self.requests[slot].seg;
        let parts = [seg.head, seg.tail];
        while usize::from(self.requests[slot].seg.next_part) < parts.len() {
            let index = usize::from(self.requests[slot].seg.next_part);
            if let Some(part) = parts.get(index).copied().flatten() {
                let op = Op::Read {
                    offset: part.guest,
                    len: buffer_len(part.len),
                    into: Buffer::Engine {
                        offset: part.bounce,
                    },
                };
                if !self
                    .commands
                    .emit(Owner::Request(slot_u16(slot)), FileId::Base, op)
                {
                    return moved;
                }
                self.stats.cow_reads += 1;
                self.requests[slot].outstanding += 1;
            }
            self.requests[slot].seg.next_part += 1;
            moved = true;
        }
        if self.requests[slot].outstanding > 0 {
            return moved;
        }
        if let Some(error) = self.requests[slot].error {
            self.finish(slot, Err(error));
        } else {
            self.requests[slot].seg.next_part = 0;
            self.requests[slot].state = State::Data;
        }
        true
    }

    /// The data commands of segment `seg` of request `slot`, in emission order.
    fn data_parts(&self, slot: usize, seg: &Segment) -> [Option<(FileId, Op)>; 5] {
        let r = &self.requests[slot];
        let file = self.data_file();
        let first_written = seg.head.map_or(seg.start, |h| h.guest);
        let last_written = seg.tail.map_or(seg.end, |t| t.guest + t.len);
        let gap = |lo: u64, hi: u64| {
            (seg.zero_gaps && lo < hi).then(|| {
                (
                    file,
                    Op::WriteZeroes {
                        offset: seg.phys(lo),
                        len: hi - lo,
                        unmap: false,
                    },
                )
            })
        };
        let cow = |part: Option<CowPart>| {
            part.map(|p| {
                (
                    file,
                    Op::Write {
                        offset: seg.phys(p.guest),
                        len: buffer_len(p.len),
                        from: Buffer::Engine { offset: p.bounce },
                    },
                )
            })
        };
        let body = seg.write_body.then(|| {
            let offset = seg.phys(seg.start);
            let len = seg.end - seg.start;
            let op = match r.kind {
                Kind::Zeroes { unmap } => Op::WriteZeroes { offset, len, unmap },
                // All-zero base blocks: a hole where the host can punch one. The range
                // may hold stale bytes of an interrupted write, so it is always zeroed
                // before the bits say the blocks are local.
                Kind::Fill if r.fill.zero => Op::WriteZeroes {
                    offset,
                    len,
                    unmap: true,
                },
                Kind::Fill => Op::Write {
                    offset,
                    len: buffer_len(len),
                    from: self.fill_source(slot, seg.start),
                },
                _ => Op::Write {
                    offset,
                    len: buffer_len(len),
                    from: Buffer::Guest {
                        request: self.id_of(slot),
                        offset: buffer_len(seg.start - r.start),
                    },
                },
            };
            (file, op)
        });
        [
            gap(seg.origin_guest, first_written),
            cow(seg.head),
            body,
            cow(seg.tail),
            gap(last_written, seg.origin_guest + seg.chunk_size),
        ]
    }

    fn step_data(&mut self, slot: usize) -> bool {
        let mut moved = false;
        // Everything emitted: only completions can move it on.
        if usize::from(self.requests[slot].seg.next_part) >= 5
            && self.requests[slot].outstanding > 0
        {
            return false;
        }
        let seg = self.requests[slot].seg;
        let parts = self.data_parts(slot, &seg);
        while usize::from(self.requests[slot].seg.next_part) < parts.len() {
            let index = usize::from(self.requests[slot].seg.next_part);
            if let Some((file, op)) = parts.get(index).copied().flatten() {
                if !self.commands.emit(Owner::Request(slot_u16(slot)), file, op) {
                    return moved;
                }
                self.requests[slot].outstanding += 1;
            }
            self.requests[slot].seg.next_part += 1;
            moved = true;
        }
        if self.requests[slot].outstanding > 0 {
            return moved;
        }
        let r = self.requests[slot];
        if r.kind == Kind::Fill && (seg.end >= r.end || r.error.is_some()) {
            // A guest fill's last data is written: its reader's buffer is free again (a
            // failed image write is the fill's failure, not the reader's).
            self.release_reader(slot, None);
        }
        if let Some(error) = r.error {
            self.finish(slot, Err(error));
        } else {
            self.requests[slot].state = State::Apply;
        }
        true
    }

    fn step_apply(&mut self, slot: usize) -> bool {
        if self.commit.in_window() {
            return false;
        }
        let seg = self.requests[slot].seg;
        if seg.bits.is_some() || seg.alloc.is_some() {
            self.dirty_since_ms.get_or_insert(self.now_ms);
        }
        let generation = self.change_gen;
        self.change_gen += 1;
        let [bitmap_page, table_page] = self.requests[slot].pins;
        if let (Some((first, last)), Some(page)) = (seg.bits, bitmap_page) {
            self.set_bits(usize::from(page), first, last, generation);
        }
        if let (Some((chunk, p)), Some(page)) = (seg.alloc, table_page) {
            // `allocate_chunk` never hands out a chunk above MAX_PHYSICAL_CHUNK, so the
            // entry never carries the reserved bit 31.
            match u32::try_from(p) {
                Ok(entry) if u64::from(entry) <= crate::fvd::validate::MAX_PHYSICAL_CHUNK => {
                    self.set_entry(usize::from(page), chunk, entry, generation)
                }
                _ => {
                    self.finish(slot, Err(RequestError::Io(IoError::NoSpace)));
                    return true;
                }
            }
        }
        self.release(slot);
        let r = &mut self.requests[slot];
        r.cursor = seg.end;
        r.state = State::Plan;
        true
    }

    /// The host saw request `id` complete: its slot may be reused.
    pub(crate) fn completion_polled(&mut self, id: RequestId) {
        if let Some(r) = self.requests.get_mut(id.slot()) {
            if r.generation == id.generation && r.state == State::Done {
                r.state = State::Free;
            }
        }
    }

    pub(crate) fn request_command_done(&mut self, slot: usize, result: Result<(), IoError>) {
        let r = &mut self.requests[slot];
        r.outstanding = r.outstanding.saturating_sub(1);
        if let Err(error) = result {
            r.error.get_or_insert(RequestError::Io(error));
        }
    }

    /// Completes every flush request submitted before sequence number `before`.
    pub(crate) fn finish_flushes(&mut self, before: u64, result: Result<Reply, RequestError>) {
        let mut i = 0;
        while i < self.active_requests {
            let slot = usize::from(self.request_order[i]);
            let r = &self.requests[slot];
            if r.state == State::Flush && r.seq < before {
                self.finish(slot, result);
            } else {
                i += 1;
            }
        }
    }

    /// True when some flush request waits for a commit.
    pub(crate) fn flush_waiting(&self) -> bool {
        self.flushes_waiting > 0
    }
}
