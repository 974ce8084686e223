//! A RAM medium with a volatile write cache, for tests on the host and in QEMU: a write
//! lands in the cache and reaches the durable bytes only at a flush (or when the cache is
//! full and writes its oldest block back, as a real card may at any time). A simulated
//! power cut keeps or drops each unflushed 512-byte write independently, so a cut leaves
//! the medium torn at block granularity.

use crate::medium::{Medium, BLOCK};
use core::cell::RefCell;
use embedded_sdmmc::{Block, BlockCount, BlockDevice, BlockIdx};
use heapless::Vec;

/// Why the RAM medium refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamError {
    /// A block past the end of the medium.
    OutOfRange,
    /// A request while another one still holds the medium (re-entrant use).
    Busy,
    /// A write to the read-only prefix (the factory image in flash).
    ReadOnly,
    /// The medium lost power ([`CutAfter`]) and answers nothing.
    Dead,
}

struct State<'a, const CACHE: usize> {
    /// Blocks `[0, rom.len() / 512)`: read-only.
    rom: &'a [u8],
    /// The blocks after the read-only prefix.
    durable: &'a mut [u8],
    /// Unflushed writes, oldest first.
    pending: Vec<(u32, Block), CACHE>,
}

/// A medium of `bytes.len() / 512` blocks over `bytes`, with a write cache of `CACHE`
/// blocks.
pub struct RamMedium<'a, const CACHE: usize> {
    state: RefCell<State<'a, CACHE>>,
}

impl<'a, const CACHE: usize> RamMedium<'a, CACHE> {
    /// A medium over `bytes` (a trailing partial block is not used).
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self::with_rom(&[], bytes)
    }

    /// A medium whose first blocks are `rom` (read-only, say a factory image in flash;
    /// a trailing partial block is not used) followed by the blocks of `bytes`.
    pub fn with_rom(rom: &'a [u8], bytes: &'a mut [u8]) -> Self {
        let whole = rom.len() / Block::LEN * Block::LEN;
        RamMedium {
            state: RefCell::new(State {
                rom: rom.get(..whole).unwrap_or(&[]),
                durable: bytes,
                pending: Vec::new(),
            }),
        }
    }

    /// Blocks written but not yet durable.
    pub fn unflushed(&self) -> usize {
        self.state.try_borrow().map_or(0, |s| s.pending.len())
    }

    /// A power cut: each unflushed block write survives when the next bit of `seed`'s
    /// xorshift sequence says so, and is lost otherwise. Returns how many survived.
    pub fn power_cut(&self, seed: u64) -> Result<usize, RamError> {
        let mut state = self.state.try_borrow_mut().map_err(|_| RamError::Busy)?;
        let state = &mut *state;
        let mut bits = seed | 1;
        let mut kept = 0;
        for (index, block) in core::mem::take(&mut state.pending) {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            if bits & 1 == 1 {
                store(state, index, &block)?;
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// The durable bytes after the read-only prefix (what survives any power cut).
    pub fn with_durable<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RamError> {
        let state = self.state.try_borrow().map_err(|_| RamError::Busy)?;
        Ok(f(state.durable))
    }
}

fn span(index: u32) -> core::ops::Range<usize> {
    let start = (index as usize).saturating_mul(Block::LEN);
    start..start.saturating_add(Block::LEN)
}

impl<const CACHE: usize> State<'_, CACHE> {
    /// Index of a writable block among the durable ones.
    fn ram_index(&self, index: u32) -> Result<u32, RamError> {
        let rom_blocks = u32::try_from(self.rom.len() / Block::LEN).unwrap_or(u32::MAX);
        let at = index.checked_sub(rom_blocks).ok_or(RamError::ReadOnly)?;
        self.durable
            .get(span(at))
            .map(|_| at)
            .ok_or(RamError::OutOfRange)
    }

    fn durable_block(&self, index: u32) -> Result<&[u8], RamError> {
        match self.rom.get(span(index)) {
            Some(bytes) => Ok(bytes),
            None => {
                let at = self.ram_index(index)?;
                self.durable.get(span(at)).ok_or(RamError::OutOfRange)
            }
        }
    }
}

fn store<const CACHE: usize>(
    state: &mut State<'_, CACHE>,
    index: u32,
    block: &Block,
) -> Result<(), RamError> {
    let at = state.ram_index(index)?;
    state
        .durable
        .get_mut(span(at))
        .ok_or(RamError::OutOfRange)?
        .copy_from_slice(&block.contents);
    Ok(())
}

impl<const CACHE: usize> BlockDevice for RamMedium<'_, CACHE> {
    type Error = RamError;

    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), RamError> {
        let state = self.state.try_borrow().map_err(|_| RamError::Busy)?;
        for (index, block) in (start.0..).zip(blocks.iter_mut()) {
            let cached = state.pending.iter().rev().find(|(at, _)| *at == index);
            match cached {
                Some((_, newest)) => block.contents = newest.contents,
                None => block.contents.copy_from_slice(state.durable_block(index)?),
            }
        }
        Ok(())
    }

    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), RamError> {
        let mut state = self.state.try_borrow_mut().map_err(|_| RamError::Busy)?;
        let state = &mut *state;
        for (index, block) in (start.0..).zip(blocks.iter()) {
            state.ram_index(index)?;
            if state.pending.is_full() && !state.pending.is_empty() {
                // The cache writes its oldest block back to make room.
                let (at, oldest) = state.pending.remove(0);
                store(state, at, &oldest)?;
            }
            if state.pending.push((index, block.clone())).is_err() {
                // A cache of no blocks: the write is durable at once.
                store(state, index, block)?;
            }
        }
        Ok(())
    }

    fn num_blocks(&self) -> Result<BlockCount, RamError> {
        let state = self.state.try_borrow().map_err(|_| RamError::Busy)?;
        let blocks = (state.rom.len() + state.durable.len()) as u64 / BLOCK;
        Ok(BlockCount(u32::try_from(blocks).unwrap_or(u32::MAX)))
    }
}

impl<const CACHE: usize> Medium for RamMedium<'_, CACHE> {
    fn flush(&self) -> Result<(), RamError> {
        let mut state = self.state.try_borrow_mut().map_err(|_| RamError::Busy)?;
        let state = &mut *state;
        for (index, block) in core::mem::take(&mut state.pending) {
            store(state, index, &block)?;
        }
        Ok(())
    }
}

/// A medium that loses power at a chosen command: after `budget` writes and flushes every
/// request fails with [`RamError::Dead`], so a workload run once per budget stops at each
/// command boundary in turn. Pair it with [`RamMedium::power_cut`].
pub struct CutAfter<'m, M> {
    medium: &'m M,
    budget: core::cell::Cell<u64>,
}

impl<'m, M> CutAfter<'m, M> {
    /// `medium`, dying after `budget` writes and flushes.
    pub fn new(medium: &'m M, budget: u64) -> Self {
        CutAfter {
            medium,
            budget: core::cell::Cell::new(budget),
        }
    }

    /// Writes and flushes left before the cut.
    pub fn left(&self) -> u64 {
        self.budget.get()
    }

    /// Whether the budget ran out.
    pub fn is_dead(&self) -> bool {
        self.budget.get() == 0
    }

    fn spend(&self) -> Result<(), RamError> {
        let left = self.budget.get().checked_sub(1).ok_or(RamError::Dead)?;
        self.budget.set(left);
        Ok(())
    }
}

impl<M: Medium<Error = RamError>> BlockDevice for CutAfter<'_, M> {
    type Error = RamError;

    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), RamError> {
        if self.is_dead() {
            return Err(RamError::Dead);
        }
        self.medium.read(blocks, start)
    }

    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), RamError> {
        self.spend()?;
        self.medium.write(blocks, start)
    }

    fn num_blocks(&self) -> Result<BlockCount, RamError> {
        self.medium.num_blocks()
    }
}

impl<M: Medium<Error = RamError>> Medium for CutAfter<'_, M> {
    fn flush(&self) -> Result<(), RamError> {
        self.spend()?;
        self.medium.flush()
    }
}
