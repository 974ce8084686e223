//! Moving one used unit of storage (an FVD physical chunk, a QED data cluster or L2 table)
//! down into a leaked hole, in the crash-safe order every relocating repair uses: the
//! unit's bytes are copied into the hole a piece at a time through a copy buffer and
//! flushed, and only then is the one aligned 512-byte sector holding the entry that names
//! the unit rewritten (the caller has already changed the entry in its table buffer).
//!
//! A crash before the sector write leaves the old entry and the old bytes (the hole holds
//! an unreferenced copy: still a leak); after it, the new entry names a copy that is
//! already durable and the old unit is the leak. The caller never writes into a unit that
//! anything names, and releases the old units (truncation) only after a flush that makes
//! every entry written durable.

use super::memory::Area;
use super::{Core, FileId, Step};

/// Bytes of the sector an entry write covers.
const SECTOR_LEN: usize = 512;
/// [`SECTOR_LEN`] as a file offset.
const SECTOR: u64 = SECTOR_LEN as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Read,
    Write(usize),
    Entry,
    Finished,
}

/// One unit being moved.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mover {
    /// The file holding the unit and the hole.
    storage: FileId,
    from: u64,
    to: u64,
    len: u64,
    done: u64,
    /// The image-file offset of the entry's sector, and the sector in work memory.
    entry_at: u64,
    entry: Area,
    stage: Stage,
}

impl Mover {
    /// A move of `len` bytes of `storage` from `from` to `to`, then a write of the sector
    /// `entry` (in work memory) to the image file at `entry_at`.
    pub(crate) fn new(
        storage: FileId,
        (from, to, len): (u64, u64, u64),
        entry_at: u64,
        entry: Area,
    ) -> Self {
        Mover {
            storage,
            from,
            to,
            len,
            done: 0,
            entry_at,
            entry,
            stage: Stage::Read,
        }
    }

    /// The next I/O of the move through the copy buffer `buf`; `None` once it is over.
    pub(crate) fn step<M: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        core: &mut Core<M>,
        buf: Area,
    ) -> Option<Step> {
        match self.stage {
            Stage::Read if self.done < self.len && buf.len > 0 => {
                let left = self.len - self.done;
                let n = usize::try_from(left).map_or(buf.len, |l| l.min(buf.len));
                self.stage = Stage::Write(n);
                let step = Step::Read {
                    file: self.storage,
                    offset: self.from.saturating_add(self.done),
                    len: n,
                };
                Some(core.start(step, Area { at: buf.at, len: n }))
            }
            // Without a copy buffer nothing was copied: the entry must not change.
            Stage::Read if buf.len == 0 => {
                self.stage = Stage::Finished;
                None
            }
            Stage::Read => {
                self.stage = Stage::Entry;
                let step = Step::Flush { file: self.storage };
                Some(core.start(step, Area::default()))
            }
            Stage::Write(n) => {
                let offset = self.to.saturating_add(self.done);
                self.done = self.done.saturating_add(n as u64);
                self.stage = Stage::Read;
                let step = Step::Write {
                    file: self.storage,
                    offset,
                    len: n,
                };
                Some(core.start(step, Area { at: buf.at, len: n }))
            }
            Stage::Entry => {
                self.stage = Stage::Finished;
                let step = Step::Write {
                    file: FileId::Image,
                    offset: self.entry_at,
                    len: self.entry.len,
                };
                Some(core.start(step, self.entry))
            }
            Stage::Finished => None,
        }
    }
}

/// The sector holding the entry at file offset `entry_at`, inside a unit of a table walk
/// that holds file bytes from `unit_at` on in `unit` (work memory): its file offset and
/// its bytes in work memory, or `None` when the unit does not hold the whole sector.
pub(crate) fn entry_sector(entry_at: u64, unit_at: u64, unit: Area) -> Option<(u64, Area)> {
    let sector = entry_at / SECTOR * SECTOR;
    let into = usize::try_from(sector.checked_sub(unit_at)?).ok()?;
    let end = into.checked_add(SECTOR_LEN)?;
    (end <= unit.len).then_some((
        sector,
        Area {
            at: unit.at + into,
            len: SECTOR_LEN,
        },
    ))
}
