//! A medium over a file of the host, through semihosting file calls (QEMU's
//! `-semihosting`): the image the firmware writes is a real file the host's tools read.
//! Each block read or write is a seek and a read or write of the host file; a write is in
//! the host's hands when the call returns, so a flush has nothing left to do (a killed
//! QEMU loses nothing it wrote). Reads past the file's end see zeros (a sparse tail).

use crate::medium::{Medium, BLOCK};
use core::cell::RefCell;
use core::ffi::CStr;
use embedded_sdmmc::{Block, BlockCount, BlockDevice, BlockIdx};
use semihosting::fs::{File, OpenOptions};
use semihosting::io::{Read, Seek, SeekFrom, Write};

/// Why the host file refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFileError {
    /// The host could not open the file.
    Open,
    /// A block past the end of the medium.
    OutOfRange,
    /// A write to a file opened read-only.
    ReadOnly,
    /// A host read, write or seek failed.
    Io,
    /// A request while another one still holds the file (re-entrant use).
    Busy,
}

/// A host file seen as a medium of `blocks` blocks.
pub struct HostFile {
    file: RefCell<File>,
    blocks: u32,
    writable: bool,
}

impl HostFile {
    /// The existing file at `path`, read-only; its length rounded down to whole blocks.
    pub fn open_read_only(path: &CStr) -> Result<Self, HostFileError> {
        let file = File::open(path).map_err(|_| HostFileError::Open)?;
        let len = file.metadata().map_err(|_| HostFileError::Io)?.len();
        let blocks = u32::try_from(len / BLOCK).map_err(|_| HostFileError::OutOfRange)?;
        Ok(HostFile {
            file: RefCell::new(file),
            blocks,
            writable: false,
        })
    }

    /// The file at `path` for reading and writing, created empty when it does not exist
    /// (or emptied when `fresh`), as a medium of `blocks` blocks (or the file's length,
    /// when larger).
    pub fn open_writable(path: &CStr, blocks: u32, fresh: bool) -> Result<Self, HostFileError> {
        let existing = match fresh {
            true => None,
            false => OpenOptions::new().read(true).write(true).open(path).ok(),
        };
        let file = match existing {
            Some(file) => file,
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|_| HostFileError::Open)?,
        };
        let len = file.metadata().map_err(|_| HostFileError::Io)?.len();
        let have = u32::try_from(len / BLOCK).map_err(|_| HostFileError::OutOfRange)?;
        Ok(HostFile {
            file: RefCell::new(file),
            blocks: blocks.max(have),
            writable: true,
        })
    }

    fn offset(&self, index: u32) -> Result<u64, HostFileError> {
        if index >= self.blocks {
            return Err(HostFileError::OutOfRange);
        }
        Ok(u64::from(index) * BLOCK)
    }
}

impl BlockDevice for HostFile {
    type Error = HostFileError;

    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), HostFileError> {
        let mut file = self
            .file
            .try_borrow_mut()
            .map_err(|_| HostFileError::Busy)?;
        for (index, block) in (start.0..).zip(blocks.iter_mut()) {
            let offset = self.offset(index)?;
            file.seek(SeekFrom::Start(offset))
                .map_err(|_| HostFileError::Io)?;
            let mut done = 0;
            while let Some(rest) = block.contents.get_mut(done..).filter(|r| !r.is_empty()) {
                match file.read(rest).map_err(|_| HostFileError::Io)? {
                    0 => break,
                    n => done += n,
                }
            }
            if let Some(tail) = block.contents.get_mut(done..) {
                tail.fill(0);
            }
        }
        Ok(())
    }

    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), HostFileError> {
        if !self.writable {
            return Err(HostFileError::ReadOnly);
        }
        let mut file = self
            .file
            .try_borrow_mut()
            .map_err(|_| HostFileError::Busy)?;
        for (index, block) in (start.0..).zip(blocks.iter()) {
            let offset = self.offset(index)?;
            file.seek(SeekFrom::Start(offset))
                .map_err(|_| HostFileError::Io)?;
            file.write_all(&block.contents)
                .map_err(|_| HostFileError::Io)?;
        }
        Ok(())
    }

    fn num_blocks(&self) -> Result<BlockCount, HostFileError> {
        Ok(BlockCount(self.blocks))
    }
}

impl Medium for HostFile {
    fn flush(&self) -> Result<(), HostFileError> {
        Ok(())
    }
}
