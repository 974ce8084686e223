//! Copy-on-read fills. When a guest read finds blocks still in the base, a fill copies
//! them into the image as a soft write (an internal write request whose metadata need
//! not be journaled, though it may be), so later reads stay local. The guest's own read
//! is answered from the fill's data: the base is read once.
//!
//! Two kinds of fill serve a guest read:
//! - A *guest fill* takes the whole blocks a read covers (any number of them, one base
//!   read): the base read lands in the guest's buffer. When enough adjacent bounce slots
//!   are free (two always stay free for guest writes), the fill copies the blocks into
//!   them with [`Op::Copy`], the read completes at once, and the write to the image
//!   overlaps the guest's next reads. Otherwise the fill writes from the guest's buffer
//!   and the read completes once that write is acknowledged (its buffer must stay valid
//!   until then). Memory never turns a guest fill away, and neither does
//!   `max_outstanding_copy_on_read_data` (the bounce slots bound its memory).
//! - A *bounce fill* takes the blocks a read covers only in part (an unaligned head or
//!   tail, a read shorter than a block): it reads whole blocks into a bounce slot, hands
//!   the guest its part with [`Op::Copy`], and writes the blocks from the slot. Its bytes
//!   in flight count against `max_outstanding_copy_on_read_data`. Prefetch uses bounce
//!   fills too (without a reader).
//!
//! A fill that cannot start now (no request slot, bounce slot or budget) is not dropped:
//! the guest reads the base directly and the blocks go to the deferred queue
//! ([`super::deferred`]), whose fills run as soon as room frees up.
//!
//! A fill whose blocks sit in engine memory (every bounce fill, and a guest fill once
//! copied into bounce slots) and are all zero writes no data: it becomes a zero write
//! (`Op::WriteZeroes` with unmap, a hole on hosts that can punch one; on a compact image
//! whose chunk is unallocated, no command at all), so prefetch and copy-on-read keep the
//! image as sparse as the base. Its bits are set after that zero write, as for any write.
//!
//! A fill can never clobber guest data: it is only started when no write touching its
//! blocks is in flight; a guest write submitted later either cancels it (while it has not
//! started writing) or, through the order rule, waits for its write and then overwrites
//! it; and just before writing it checks that its blocks are still in the base. Its bits
//! are set only after its data write is acknowledged, as for any write.

use super::meta::{Stall, BITS_PER_PAGE};
use super::requests::{Kind, RequestSlot, State};
use super::FvdEngine;
use crate::engine::fill_reader::Reader;
use crate::engine::slot_table::{buffer_len, slot_u16};
use crate::engine::slots::Owner;
use crate::engine::types::*;
use crate::engine::MAX_REQUESTS;

/// What became of an attempt to start a fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FillStart {
    /// Started; carries the bytes of the requested run it covers.
    Started(u64),
    /// A write touches the block (or the base is gone): it will not come from the base.
    Busy,
    /// Another fill is copying the block: it will be local shortly.
    Filling,
    /// No memory, slot or budget now: try again later.
    NoRoom,
}

/// Who a fill works for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FillFor {
    /// A guest read, handed its part of the blocks.
    Reader(usize),
    /// Whole-image prefetch.
    Prefetch,
    /// The deferred queue (blocks a guest read could not fill at the time).
    Deferred,
}

/// A fill's own state (in its request slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FillInfo {
    /// Memory offset of the bounce slot(s) holding the blocks.
    pub(crate) bounce: usize,
    /// Adjacent bounce slots held from `bounce` on (0: none).
    bounce_slots: u8,
    /// Its bytes count against `max_outstanding_copy_on_read_data` (bounce fills for a
    /// reader or the deferred queue).
    budgeted: bool,
    reader: Option<Reader>,
    /// The data lives in the reader's buffer (a guest fill).
    guest: bool,
    /// Started by whole-image prefetch (no reader).
    pub(crate) prefetch: bool,
    copy_issued: bool,
    /// A guest write reached the blocks before the fill started writing.
    pub(crate) cancelled: bool,
    /// Its blocks, read into engine memory, are all zero: it writes zeros, not data.
    pub(crate) zero: bool,
}

impl FillInfo {
    pub(crate) const NONE: FillInfo = FillInfo {
        bounce: 0,
        bounce_slots: 0,
        budgeted: false,
        reader: None,
        guest: false,
        prefetch: false,
        copy_issued: false,
        cancelled: false,
        zero: false,
    };
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Serves the base run `[offset, offset + len)` of read `slot` through a fill, or
    /// reads it directly and defers its fill. Returns the bytes of the run it took on (0:
    /// read it directly), or `None` when the read should wait for a fill already copying
    /// the blocks (then it reads them from the image, and the base is read once).
    pub(crate) fn read_through_fill(&mut self, slot: usize, offset: u64, len: u64) -> Option<u64> {
        let (Some(layout), Some(base)) = (self.layout, self.live_base()) else {
            return Some(0);
        };
        let bs = layout.block_size;
        let end = offset + len;
        // Whole blocks from an aligned start: a guest fill.
        let whole_end = if end >= base.size { end } else { end / bs * bs };
        let started = if offset % bs == 0 && whole_end > offset {
            self.start_guest_fill(slot, offset, whole_end - offset)
        } else {
            self.start_fill(FillFor::Reader(slot), offset, len)
        };
        match started {
            FillStart::Started(taken) => {
                self.requests[slot].outstanding += 1;
                Some(taken)
            }
            FillStart::Busy => Some(0),
            FillStart::Filling => None,
            FillStart::NoRoom => {
                // Read directly now; fill later. The part deferred is the one the fill
                // would have taken: up to the end of the run's last block it touches.
                let hi = end.div_ceil(bs).saturating_mul(bs).min(base.size);
                if !self.deferred.push(offset / bs * bs, hi) {
                    self.stats.cor_fills_dropped += 1;
                }
                self.stats.cor_fills_deferred += 1;
                Some(0)
            }
        }
    }

    /// Starts a guest fill of the whole blocks `[offset, offset + len)` for read `reader`.
    fn start_guest_fill(&mut self, reader: usize, offset: u64, len: u64) -> FillStart {
        let end = offset + len;
        let Some(slot) = self.fill_slot(offset, end) else {
            return self.fill_refusal(offset, end);
        };
        let reader_slot = self.requests[reader];
        let part = Reader::new(
            reader,
            reader_slot.generation,
            reader_slot.start,
            offset,
            offset,
            len,
        );
        let into = part.buffer(0);
        let op = Op::Read {
            offset,
            len: buffer_len(len),
            into,
        };
        if !self
            .commands
            .emit(Owner::Request(slot_u16(slot)), FileId::Base, op)
        {
            return FillStart::NoRoom;
        }
        let info = FillInfo {
            reader: Some(part),
            guest: true,
            ..FillInfo::NONE
        };
        self.occupy_fill_slot(slot, offset, end, info);
        self.stats.cor_fills += 1;
        FillStart::Started(len)
    }

    /// A free request slot for a fill of `[lo, hi)`, if one may start now (room in the
    /// request table and for two commands, no write touching the blocks).
    fn fill_slot(&self, lo: u64, hi: u64) -> Option<usize> {
        if self.commands.free() < 2
            || self.active_requests + self.events.len() + 1 >= MAX_REQUESTS
            || self.fill_busy(lo, hi)
        {
            return None;
        }
        self.requests.iter().position(|r| r.state == State::Free)
    }

    /// Why [`Self::fill_slot`] found none.
    fn fill_refusal(&self, lo: u64, hi: u64) -> FillStart {
        self.fill_overlap(lo, hi).unwrap_or(FillStart::NoRoom)
    }

    /// A write (or another fill) touches the blocks `[lo, hi)` (block-aligned).
    fn fill_busy(&self, lo: u64, hi: u64) -> bool {
        self.fill_overlap(lo, hi).is_some()
    }

    /// [`FillStart::Busy`] when a write touches the blocks `[lo, hi)`, else
    /// [`FillStart::Filling`] when a fill does.
    fn fill_overlap(&self, lo: u64, hi: u64) -> Option<FillStart> {
        let bs = self.layout.map_or(1, |l| l.block_size);
        let mut found = None;
        for &o in self.request_order.prefix(self.active_requests) {
            let r = &self.requests[usize::from(o)];
            if r.kind.writes() && !r.fill.cancelled && r.start < hi && lo < r.end.div_ceil(bs) * bs
            {
                if r.kind != Kind::Fill {
                    return Some(FillStart::Busy);
                }
                found = Some(FillStart::Filling);
            }
        }
        found
    }

    fn occupy_fill_slot(&mut self, slot: usize, start: u64, end: u64, fill: FillInfo) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.requests[slot] = RequestSlot {
            generation: self.requests[slot].generation.wrapping_add(1),
            seq,
            kind: Kind::Fill,
            state: State::FillRead,
            start,
            end,
            cursor: start,
            outstanding: 1,
            fill,
            ..RequestSlot::FREE
        };
        self.request_order[self.active_requests] = slot_u16(slot);
        self.active_requests += 1;
        self.awake[slot] = true;
    }

    /// Tries to start a bounce fill of the blocks holding `[offset, offset + len)`, as
    /// many as one bounce slot holds (prefetch asks for one block at a time). Returns the
    /// bytes of the requested run it took on.
    pub(crate) fn start_fill(&mut self, who: FillFor, offset: u64, len: u64) -> FillStart {
        let (Some(layout), Some(base)) = (self.layout, self.live_base()) else {
            return FillStart::Busy;
        };
        let bs = layout.block_size;
        let block_start = offset / bs * bs;
        let page_end = (block_start / bs / BITS_PER_PAGE + 1)
            .saturating_mul(BITS_PER_PAGE)
            .saturating_mul(bs);
        let block_end = (offset + len)
            .div_ceil(bs)
            .saturating_mul(bs)
            .min(block_start.saturating_add(self.bounce.slot_len() / bs * bs))
            .min(page_end)
            .min(base.size)
            .max((block_start + bs).min(base.size));
        let piece = (offset + len).min(block_end) - offset;
        let bytes = block_end - block_start;
        let over_cap = match who {
            FillFor::Prefetch => !self.prefetch.has_room(bytes),
            _ => self.fill_bytes + bytes > self.cor_cap,
        };
        if over_cap {
            return FillStart::NoRoom;
        }
        let Some(slot) = self.fill_slot(block_start, block_end) else {
            return self.fill_refusal(block_start, block_end);
        };
        let Some(bounce) = self.bounce.take() else {
            return FillStart::NoRoom;
        };
        let op = Op::Read {
            offset: block_start,
            len: buffer_len(bytes),
            into: Buffer::Engine { offset: bounce },
        };
        if !self
            .commands
            .emit(Owner::Request(slot_u16(slot)), FileId::Base, op)
        {
            self.bounce.give_back(bounce);
            return FillStart::NoRoom;
        }
        let reader = match who {
            FillFor::Reader(reader) => {
                let reader_slot = &self.requests[reader];
                Some(Reader::new(
                    reader,
                    reader_slot.generation,
                    reader_slot.start,
                    block_start,
                    offset,
                    piece,
                ))
            }
            _ => None,
        };
        let info = FillInfo {
            bounce,
            bounce_slots: 1,
            budgeted: who != FillFor::Prefetch,
            reader,
            prefetch: who == FillFor::Prefetch,
            ..FillInfo::NONE
        };
        self.occupy_fill_slot(slot, block_start, block_end, info);
        match who {
            FillFor::Prefetch => self.prefetch.started(bytes),
            _ => {
                self.fill_bytes += bytes;
                self.stats.cor_fills += 1;
            }
        }
        FillStart::Started(piece)
    }

    /// Base read, then the reader's copy; then the fill becomes a write (or ends). A guest
    /// fill copies its blocks out of the reader's buffer into bounce slots when room and
    /// budget allow, so the read completes without waiting for the write.
    pub(crate) fn step_fill_read(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        if r.outstanding > 0 {
            return false;
        }
        let copy_wanted = r.error.is_none() && !r.fill.cancelled && !r.fill.copy_issued;
        if let (Some(reader), true, true) = (r.fill.reader, copy_wanted, r.fill.guest) {
            let bytes = r.end - r.start;
            let slots = usize::try_from(bytes.div_ceil(self.bounce.slot_len().max(1)))
                .unwrap_or(usize::MAX);
            // Two slots stay free for guest writes' copy-on-write heads and tails.
            if self.bounce.available() < slots + 2 {
                return self.keep_guest_data(slot);
            }
            let Some(bounce) = self.bounce.take_run(slots) else {
                return self.keep_guest_data(slot);
            };
            let op = Op::Copy {
                from: reader.buffer(0),
                into: Buffer::Engine { offset: bounce },
                len: reader.len,
            };
            if !self
                .commands
                .emit(Owner::Request(slot_u16(slot)), FileId::Image, op)
            {
                self.bounce.give_back_run(bounce, slots);
                return false;
            }
            let r = &mut self.requests[slot];
            r.outstanding = 1;
            r.fill.copy_issued = true;
            r.fill.bounce = bounce;
            r.fill.bounce_slots = u8::try_from(slots).unwrap_or(u8::MAX);
            return true;
        }
        // A bounce fill hands the reader its part even when cancelled: the base read was
        // issued before the write that cancelled it.
        let hand_over = r.error.is_none() && !r.fill.copy_issued && !r.fill.guest;
        if let (Some(reader), true) = (r.fill.reader, hand_over) {
            let from = Buffer::Engine {
                offset: r.fill.bounce + reader.delta,
            };
            let into = reader.buffer(0);
            let op = Op::Copy {
                from,
                into,
                len: reader.len,
            };
            if !self
                .commands
                .emit(Owner::Request(slot_u16(slot)), FileId::Image, op)
            {
                return false;
            }
            let r = &mut self.requests[slot];
            r.outstanding = 1;
            r.fill.copy_issued = true;
            return true;
        }
        if r.fill.guest && r.fill.copy_issued {
            // The blocks are in bounce slots now: the fill writes from there.
            self.requests[slot].fill.guest = false;
        }
        // A bounce fill's reader has its part (or the read failed); a guest fill's reader
        // keeps waiting for the write unless the fill ends here. Only a failed base read
        // fails the reader.
        let ends = r.error.is_some() || r.fill.cancelled;
        if !self.requests[slot].fill.guest || ends {
            let read_failed = !(r.fill.guest && r.fill.copy_issued);
            self.release_reader(slot, r.error.filter(|_| read_failed));
        }
        if ends {
            self.finish(slot, Err(RequestError::Failed));
        } else {
            if !self.requests[slot].fill.guest {
                self.requests[slot].fill.zero = self.fill_data_is_zero(slot);
            }
            self.requests[slot].state = State::Blocked;
        }
        true
    }

    /// Whether the blocks of fill `slot`, held in its bounce slot(s), are all zero.
    fn fill_data_is_zero(&self, slot: usize) -> bool {
        let r = &self.requests[slot];
        crate::zeros::is_zero_at(self.memory.as_ref(), r.fill.bounce, r.end - r.start)
    }

    /// A guest fill without room to copy its blocks out: it writes them from the reader's
    /// buffer, and the reader waits for that write.
    fn keep_guest_data(&mut self, slot: usize) -> bool {
        self.requests[slot].state = State::Blocked;
        true
    }

    /// Lets the read waiting for fill `slot` go on, failing it with `error` (a failed base
    /// read) if any.
    pub(crate) fn release_reader(&mut self, slot: usize, error: Option<RequestError>) {
        let Some(reader) = self.requests[slot].fill.reader.take() else {
            return;
        };
        self.awake[usize::from(reader.slot)] = true;
        let waiting = &mut self.requests[usize::from(reader.slot)];
        if waiting.generation == reader.generation {
            waiting.outstanding = waiting.outstanding.saturating_sub(1);
            if let Some(error) = error {
                waiting.error.get_or_insert(error);
            }
        }
    }

    /// Where fill `slot` writes guest byte `at` from: the reader's buffer or its bounce
    /// slot.
    pub(crate) fn fill_source(&self, slot: usize, at: u64) -> Buffer {
        let r = &self.requests[slot];
        match (r.fill.guest, r.fill.reader) {
            (true, Some(reader)) => reader.buffer(buffer_len(at - r.start)),
            _ => Buffer::Engine {
                offset: r.fill.bounce + buffer_len(at - r.start),
            },
        }
    }

    /// Marks fills overlapping guest write `[start, end)` that have not started writing as
    /// cancelled.
    pub(crate) fn cancel_fills(&mut self, start: u64, end: u64) {
        for i in 0..self.active_requests {
            let slot = usize::from(self.request_order[i]);
            let r = &mut self.requests[slot];
            if r.kind == Kind::Fill
                && !r.fill.cancelled
                && matches!(r.state, State::FillRead | State::Blocked | State::Plan)
                && r.start < end
                && start < r.end
            {
                r.fill.cancelled = true;
                self.stats.cor_fills_cancelled += 1;
            }
        }
    }

    /// Whether every block of fill `slot` from its cursor on is still in the base (checked
    /// right before it writes). A fill lies within one bitmap page.
    pub(crate) fn fill_still_wanted(&mut self, slot: usize) -> Result<bool, Stall> {
        let Some(layout) = self.layout else {
            return Ok(false);
        };
        let r = self.requests[slot];
        if r.fill.cancelled || self.live_base().is_none() {
            return Ok(false);
        }
        let bs = layout.block_size;
        let first = r.cursor / bs;
        let page = self.page(Self::bitmap_key(first))?;
        Ok((first..r.end.div_ceil(bs)).all(|block| !self.bit(page, block)))
    }

    /// A fill whose metadata could not be read just ends (copy-on-read is best effort).
    pub(crate) fn fail_fill(&mut self, slot: usize) -> bool {
        self.requests[slot]
            .error
            .get_or_insert(RequestError::Failed);
        self.finish(slot, Err(RequestError::Failed));
        true
    }

    /// Bookkeeping when fill `slot` ends (called by `finish`, which also takes it out of
    /// the request order).
    pub(crate) fn fill_finished(&mut self, slot: usize, wrote: bool) {
        self.release_reader(slot, None);
        let r = self.requests[slot];
        if wrote && r.fill.zero {
            self.stats.fills_recorded_as_zeros += 1;
        }
        if r.fill.bounce_slots > 0 {
            self.bounce
                .give_back_run(r.fill.bounce, usize::from(r.fill.bounce_slots));
        }
        if r.fill.prefetch {
            // A cancelled fill, or one whose block became local, did not fail.
            let error = r.error.filter(|_| !wrote && !r.fill.cancelled);
            let block = self.layout.map_or(0, |l| r.start / l.block_size);
            self.prefetch.finished(block, r.end - r.start, wrote, error);
            if wrote {
                self.stats.prefetched_blocks += 1;
            }
        } else {
            if r.fill.budgeted {
                self.fill_bytes = self.fill_bytes.saturating_sub(r.end - r.start);
            }
            if wrote {
                self.stats.cor_fills_done += 1;
            }
        }
    }
}
