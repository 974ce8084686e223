//! What the driver stands on: a [`Medium`] (any `embedded-sdmmc` block device that can
//! also make its writes durable) and a [`Partition`], a window of whole blocks of one
//! medium seen as the byte-addressed, seekable file core's blocking driver performs its
//! commands on. Several partitions of one medium coexist: block devices take `&self`.

use embedded_io::{ErrorKind, ErrorType, Read, Seek, SeekFrom, Write};
use embedded_sdmmc::{Block, BlockDevice, BlockIdx};

/// Bytes per block of every medium and of the virtual disk.
pub const BLOCK: u64 = Block::LEN as u64;

/// A block device whose writes become durable only when flushed (an SD card's or a
/// controller's write cache). A medium without a cache returns `Ok(())`.
pub trait Medium: BlockDevice {
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), Self::Error>;
}

/// A range of blocks of a medium: `[first, first + blocks)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First block.
    pub first: u32,
    /// Number of blocks.
    pub blocks: u32,
}

impl Extent {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.blocks) * BLOCK
    }

    /// Whether the extent holds no block.
    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// One past the last block, or `None` when it would not fit a block index.
    pub fn end(&self) -> Option<u32> {
        self.first.checked_add(self.blocks)
    }

    /// Whether the two extents share a block.
    pub fn overlaps(&self, other: &Extent) -> bool {
        let (a_end, b_end) = (u64::from(self.first) + u64::from(self.blocks), {
            u64::from(other.first) + u64::from(other.blocks)
        });
        u64::from(self.first) < b_end && u64::from(other.first) < a_end
    }
}

/// A window of a medium seen as a fixed-length file: reads and writes of any length at any
/// offset (partial blocks are read, patched and written back); the length is the window's,
/// and nothing past it can be written.
pub struct Partition<'d, D> {
    medium: &'d D,
    extent: Extent,
    position: u64,
}

impl<'d, D: Medium> Partition<'d, D> {
    /// The partition `extent` of `medium`.
    pub fn new(medium: &'d D, extent: Extent) -> Self {
        Partition {
            medium,
            extent,
            position: 0,
        }
    }

    /// The blocks it covers.
    pub fn extent(&self) -> Extent {
        self.extent
    }

    /// The medium's block holding byte `offset` of the partition, and where in it.
    fn locate(&self, offset: u64) -> Result<(BlockIdx, usize), ErrorKind> {
        let index = u32::try_from(offset / BLOCK).map_err(|_| ErrorKind::InvalidInput)?;
        if index >= self.extent.blocks {
            return Err(ErrorKind::InvalidInput);
        }
        let block = self
            .extent
            .first
            .checked_add(index)
            .ok_or(ErrorKind::InvalidInput)?;
        let within = usize::try_from(offset % BLOCK).map_err(|_| ErrorKind::InvalidInput)?;
        Ok((BlockIdx(block), within))
    }

    fn load(&self, at: BlockIdx) -> Result<Block, ErrorKind> {
        let mut blocks = [Block::new()];
        self.medium
            .read(&mut blocks, at)
            .map_err(|_| ErrorKind::Other)?;
        let [block] = blocks;
        Ok(block)
    }
}

impl<D> ErrorType for Partition<'_, D> {
    type Error = ErrorKind;
}

impl<D: Medium> Read for Partition<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        if buf.is_empty() || self.position >= self.extent.len() {
            return Ok(0);
        }
        let (at, within) = self.locate(self.position)?;
        let block = self.load(at)?;
        let source = block.contents.get(within..).unwrap_or(&[]);
        let n = source.len().min(buf.len());
        buf.get_mut(..n)
            .zip(source.get(..n))
            .map(|(to, from)| to.copy_from_slice(from))
            .ok_or(ErrorKind::InvalidInput)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl<D: Medium> Write for Partition<'_, D> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.position >= self.extent.len() {
            return Err(ErrorKind::OutOfMemory);
        }
        let (at, within) = self.locate(self.position)?;
        let n = (Block::LEN - within).min(buf.len());
        let mut block = if n == Block::LEN {
            Block::new()
        } else {
            self.load(at)?
        };
        block
            .contents
            .get_mut(within..within + n)
            .zip(buf.get(..n))
            .map(|(to, from)| to.copy_from_slice(from))
            .ok_or(ErrorKind::InvalidInput)?;
        self.medium
            .write(core::slice::from_ref(&block), at)
            .map_err(|_| ErrorKind::Other)?;
        self.position += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        self.medium.flush().map_err(|_| ErrorKind::Other)
    }
}

impl<D> Seek for Partition<'_, D> {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, ErrorKind> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.extent.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = target.ok_or(ErrorKind::InvalidInput)?;
        Ok(self.position)
    }
}
