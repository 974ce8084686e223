//! Copy-on-read fills. When a guest read finds a block still in the base, a fill reads
//! the whole block from the base into a bounce slot, hands the guest its part, and then
//! writes the block into the image as a soft write (an internal write request whose
//! metadata need not be journaled, though it may be).
//!
//! A fill can never clobber guest data: it is only started when no write touching the
//! block is in flight; a guest write submitted later either cancels it (while it has not
//! started writing) or, through the order rule, waits for its write and then overwrites
//! it; and just before writing it checks that the block is still in the base.

use super::meta::Stall;
use super::requests::{Kind, RequestSlot, State};
use super::FvdEngine;
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
    /// No memory, slot or budget now: try again later.
    NoRoom,
}

/// The guest read waiting for part of a fill's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reader {
    slot: u16,
    generation: u16,
    /// Offset of the part in the reader's buffer.
    guest_offset: usize,
    /// Offset of the part in the block.
    delta: usize,
    len: usize,
}

/// A fill's own state (in its request slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FillInfo {
    /// Memory offset of the bounce slot holding the block.
    pub(crate) bounce: usize,
    reader: Option<Reader>,
    /// Started by whole-image prefetch (no reader).
    pub(crate) prefetch: bool,
    copy_issued: bool,
    /// A guest write reached the block before the fill started writing.
    pub(crate) cancelled: bool,
}

impl FillInfo {
    pub(crate) const NONE: FillInfo = FillInfo {
        bounce: 0,
        reader: None,
        prefetch: false,
        copy_issued: false,
        cancelled: false,
    };
}

impl<M: AsRef<[u8]> + AsMut<[u8]>, const PAGES: usize> FvdEngine<M, PAGES> {
    /// Tries to serve the base run `[offset, offset + len)` of read `reader` through a fill
    /// of the block holding `offset`. Returns the bytes of the run it took on.
    pub(crate) fn start_fill(&mut self, reader: Option<usize>, offset: u64, len: u64) -> FillStart {
        let (Some(layout), Some(base)) = (self.layout, self.live_base()) else {
            return FillStart::Busy;
        };
        let bs = layout.block_size;
        let block_start = offset / bs * bs;
        let block_end = (block_start + bs).min(base.size);
        let piece = (offset + len).min(block_end) - offset;
        let bytes = block_end - block_start;
        let over_cap = match reader {
            Some(_) => self.fill_bytes + bytes > self.cor_cap,
            None => !self.prefetch.has_room(bytes),
        };
        if over_cap
            || self.commands.free() < 2
            || self.active_requests + self.events.len() + 1 >= MAX_REQUESTS
        {
            return FillStart::NoRoom;
        }
        // Never while a write (or another fill) touches the block.
        let busy = self
            .request_order
            .prefix(self.active_requests)
            .iter()
            .any(|&o| {
                let r = &self.requests[usize::from(o)];
                r.kind.writes()
                    && !r.fill.cancelled
                    && r.start < block_end
                    && block_start < r.end.div_ceil(bs) * bs
            });
        if busy {
            return FillStart::Busy;
        }
        let Some(slot) = self.requests.iter().position(|r| r.state == State::Free) else {
            return FillStart::NoRoom;
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
        let seq = self.next_seq;
        self.next_seq += 1;
        let reader = reader.map(|reader| {
            let reader_slot = &self.requests[reader];
            Reader {
                slot: slot_u16(reader),
                generation: reader_slot.generation,
                guest_offset: buffer_len(offset - reader_slot.start),
                delta: buffer_len(offset - block_start),
                len: buffer_len(piece),
            }
        });
        self.requests[slot] = RequestSlot {
            generation: self.requests[slot].generation.wrapping_add(1),
            seq,
            kind: Kind::Fill,
            state: State::FillRead,
            start: block_start,
            end: block_end,
            cursor: block_start,
            outstanding: 1,
            fill: FillInfo {
                bounce,
                reader,
                prefetch: reader.is_none(),
                copy_issued: false,
                cancelled: false,
            },
            ..RequestSlot::FREE
        };
        self.request_order[self.active_requests] = slot_u16(slot);
        self.active_requests += 1;
        self.awake[slot] = true;
        match reader {
            Some(_) => {
                self.fill_bytes += bytes;
                self.stats.cor_fills += 1;
            }
            None => self.prefetch.started(bytes),
        }
        FillStart::Started(piece)
    }

    /// Base read, then the reader's copy; then the fill becomes a write (or ends).
    pub(crate) fn step_fill_read(&mut self, slot: usize) -> bool {
        let r = self.requests[slot];
        if r.outstanding > 0 {
            return false;
        }
        if let (Some(reader), false, None) = (r.fill.reader, r.fill.copy_issued, r.error) {
            let from = Buffer::Engine {
                offset: r.fill.bounce + reader.delta,
            };
            let into = Buffer::Guest {
                request: RequestId {
                    slot: reader.slot,
                    generation: reader.generation,
                },
                offset: reader.guest_offset,
            };
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
        // The reader's part is delivered (or failed): release the reader.
        if let Some(reader) = self.requests[slot].fill.reader.take() {
            self.awake[usize::from(reader.slot)] = true;
            let waiting = &mut self.requests[usize::from(reader.slot)];
            if waiting.generation == reader.generation {
                waiting.outstanding = waiting.outstanding.saturating_sub(1);
                if let Some(error) = r.error {
                    waiting.error.get_or_insert(error);
                }
            }
        }
        if r.error.is_some() || r.fill.cancelled {
            self.finish(slot, Err(RequestError::Failed));
        } else {
            self.requests[slot].state = State::Blocked;
        }
        true
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

    /// Whether every block of fill `slot` is still in the base (checked right before it
    /// writes).
    pub(crate) fn fill_still_wanted(&mut self, slot: usize) -> Result<bool, Stall> {
        let Some(layout) = self.layout else {
            return Ok(false);
        };
        let r = self.requests[slot];
        if r.fill.cancelled || self.live_base().is_none() {
            return Ok(false);
        }
        let block = r.start / layout.block_size;
        let key = Self::bitmap_key(block);
        let page = self.page(key)?;
        Ok(!self.bit(page, block))
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
        let r = self.requests[slot];
        self.bounce.give_back(r.fill.bounce);
        if r.fill.prefetch {
            // A cancelled fill, or one whose block became local, did not fail.
            let error = r.error.filter(|_| !wrote && !r.fill.cancelled);
            let block = self.layout.map_or(0, |l| r.start / l.block_size);
            self.prefetch.finished(block, r.end - r.start, wrote, error);
            if wrote {
                self.stats.prefetched_blocks += 1;
            }
        } else {
            self.fill_bytes = self.fill_bytes.saturating_sub(r.end - r.start);
            if wrote {
                self.stats.cor_fills_done += 1;
            }
        }
    }
}
