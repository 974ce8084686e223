//! A walk over a byte range of a file in units of a work-memory buffer: each unit is
//! read, handed to the pass that walks it (from a cursor, so a pass can stop at each
//! finding and resume), and written back when a repair changed it.

use super::memory::Area;
use super::{Core, FileId, Step};

/// Where the current unit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Not read yet.
    Load,
    /// Its read was requested.
    Reading,
    /// Journal batch `batch` is laid over it next (FVD; `reading`: its read was requested).
    Overlay { batch: u64, reading: bool },
    /// Ready to be walked.
    Ready,
    /// Its write-back was requested.
    Writing,
}

/// A walk over bytes `[0, end)` of a file range starting at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Walk {
    /// File offset of byte 0.
    pub(crate) offset: u64,
    pub(crate) end: u64,
    /// The buffer units are read into.
    pub(crate) buf: Area,
    /// First byte of the current unit.
    pub(crate) pos: u64,
    /// Bytes of the current unit.
    pub(crate) len: usize,
    /// Bytes of the current unit already handled.
    pub(crate) cursor: usize,
    pub(crate) stage: Stage,
    /// A repair changed the unit: it is written back before the walk moves on.
    pub(crate) modified: bool,
}

/// What a walk's unit needs.
// A return value moved once per unit, never stored: its size costs a copy, and without an
// allocator there is nothing to box the step into.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Unit {
    /// It is in the buffer, ready.
    Ready,
    /// Return this from the step (`None`: step again).
    Act(Option<Step>),
}

impl Default for Walk {
    fn default() -> Self {
        Walk::new(0, 0, Area::default())
    }
}

impl Walk {
    pub(crate) fn new(offset: u64, end: u64, buf: Area) -> Self {
        Walk {
            offset,
            end,
            buf,
            pos: 0,
            len: 0,
            cursor: 0,
            stage: Stage::Load,
            modified: false,
        }
    }

    /// Every unit has been walked (and written back).
    pub(crate) fn done(&self) -> bool {
        self.pos >= self.end && self.stage == Stage::Load
    }

    /// The current unit in the buffer.
    pub(crate) fn area(&self) -> Area {
        Area {
            at: self.buf.at,
            len: self.len,
        }
    }

    fn advance(&mut self) {
        self.pos = self.pos.saturating_add(self.len as u64);
        self.len = 0;
        self.cursor = 0;
        self.modified = false;
        self.stage = Stage::Load;
    }

    /// Brings the current unit in (a completed read makes it ready).
    pub(crate) fn load<M: AsRef<[u8]> + AsMut<[u8]>>(&mut self, core: &mut Core<M>) -> Unit {
        match self.stage {
            Stage::Load => {
                let left = self.end.saturating_sub(self.pos);
                self.len = usize::try_from(left).map_or(self.buf.len, |l| l.min(self.buf.len));
                self.cursor = 0;
                self.modified = false;
                self.stage = Stage::Reading;
                let step = Step::Read {
                    file: FileId::Image,
                    offset: self.offset.saturating_add(self.pos),
                    len: self.len,
                };
                Unit::Act(Some(core.start(step, self.area())))
            }
            Stage::Reading => {
                self.stage = Stage::Ready;
                Unit::Act(None)
            }
            Stage::Writing => {
                self.advance();
                Unit::Act(None)
            }
            Stage::Ready | Stage::Overlay { .. } => Unit::Ready,
        }
    }

    /// Moves past the current unit, writing it back first when it was changed.
    pub(crate) fn next_unit<M: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        core: &mut Core<M>,
    ) -> Option<Step> {
        if !self.modified {
            self.advance();
            return None;
        }
        self.stage = Stage::Writing;
        let step = Step::Write {
            file: FileId::Image,
            offset: self.offset.saturating_add(self.pos),
            len: self.len,
        };
        Some(core.start(step, self.area()))
    }
}
