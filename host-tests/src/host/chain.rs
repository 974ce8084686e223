//! Base images that are themselves images: a [`Storage`] whose base reads go through
//! another driver (any depth), so chains need nothing from the engine but `FileId::Base`.

use crate::host::driver::Driver;
use crate::host::storage::Storage;
use fvd_core::engine::FileId;
use std::io;

/// Something base reads can be served from.
pub trait BaseRead {
    /// Reads `buf.len()` guest bytes at `offset`; bytes past the end read as zeros.
    fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Guest size in bytes.
    fn base_len(&self) -> u64;
    /// The file behind a raw base, so a host may read it from other threads (positioned
    /// reads past its end fill zeros); `None` for bases that are themselves images.
    fn raw_file(&self) -> Option<&std::fs::File> {
        None
    }
}

impl<S: Storage> BaseRead for Driver<S> {
    fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let size = self.engine().virtual_size().unwrap_or(0);
        if offset >= size {
            return Ok(());
        }
        let end = (offset + buf.len() as u64).min(size);
        // Base reads from the engine are sector aligned; round outward anyway.
        let lo = offset / 512 * 512;
        let hi = end.div_ceil(512) * 512;
        let mut at = lo;
        while at < hi {
            let n = (hi - at).min(64 << 20);
            let data = self.read(at, n as usize).map_err(io::Error::other)?;
            let from = at.max(offset);
            let to = (at + n).min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            at += n;
        }
        Ok(())
    }

    fn base_len(&self) -> u64 {
        self.engine().virtual_size().unwrap_or(0)
    }
}

/// `top`'s image and data files over a base served by `base`.
pub struct Chained<S> {
    /// The image's own files.
    pub top: S,
    /// The base.
    pub base: Box<dyn BaseRead>,
}

impl<S: Storage> Storage for Chained<S> {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match file {
            FileId::Base => self.base.read_base(offset, buf),
            _ => self.top.read_at(file, offset, buf),
        }
    }

    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.top.write_at(file, offset, buf)
    }

    fn write_zeroes(&mut self, file: FileId, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.top.write_zeroes(file, offset, len, unmap)
    }

    fn flush(&mut self, file: FileId) -> io::Result<()> {
        self.top.flush(file)
    }

    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.top.set_len(file, len)
    }

    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        match file {
            FileId::Base => Ok(Some(self.base.base_len())),
            _ => self.top.len(file),
        }
    }

    fn failed_flush_loses_writes(&self) -> bool {
        self.top.failed_flush_loses_writes()
    }
}
