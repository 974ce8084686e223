//! The guest read a copy-on-read fill answers, for both formats: which part of the fill's
//! range goes to which bytes of whose buffer. The fill hands that part over (a copy from
//! its bounce slots, or the base read straight into the buffer) and then lets the read go on.

use super::slot_table::{buffer_len, slot_u16};
use super::types::{Buffer, RequestId};

/// The read waiting for its part of a fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reader {
    /// The read's request slot.
    pub(crate) slot: u16,
    /// The read's generation (a reused slot is another read).
    pub(crate) generation: u16,
    /// Offset of the part in the reader's buffer.
    pub(crate) guest_offset: usize,
    /// Offset of the part in the fill's range.
    pub(crate) delta: usize,
    /// Bytes of the part.
    pub(crate) len: usize,
}

impl Reader {
    /// The part `[at, at + len)` of a fill whose range starts at `fill_start`, for the read
    /// in `slot` (of `generation`) whose buffer starts at guest byte `read_start`.
    pub(crate) fn new(
        slot: usize,
        generation: u16,
        read_start: u64,
        fill_start: u64,
        at: u64,
        len: u64,
    ) -> Reader {
        Reader {
            slot: slot_u16(slot),
            generation,
            guest_offset: buffer_len(at.saturating_sub(read_start)),
            delta: buffer_len(at.saturating_sub(fill_start)),
            len: buffer_len(len),
        }
    }

    /// The reader's buffer, `extra` bytes past the start of its part.
    pub(crate) fn buffer(&self, extra: usize) -> Buffer {
        Buffer::Guest {
            request: RequestId {
                slot: self.slot,
                generation: self.generation,
            },
            offset: self.guest_offset.saturating_add(extra),
        }
    }
}
