//! Sparse in-memory files for hostile images: a header may put guest data near 2^63, so
//! a file is a map of its written 4 KiB pages, and a storage refuses (with ENOSPC) writes
//! past a byte budget instead of allocating what a crafted offset asks for. Lengths
//! change only by writes and set-length, like a file's.

use crate::host::storage::Storage;
use fvd_core::engine::FileId;
use std::collections::BTreeMap;
use std::io;

const PAGE: u64 = 4096;

/// One sparse file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseFile {
    pages: BTreeMap<u64, Box<[u8; PAGE as usize]>>,
    len: u64,
}

impl SparseFile {
    /// A file holding `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        let mut file = SparseFile::default();
        file.write(0, bytes);
        file
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held in memory.
    pub fn allocated(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// Reads `buf.len()` bytes at `offset` (zeros past the end and in holes).
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let mut done = 0usize;
        while done < buf.len() {
            let Some(at) = offset.checked_add(done as u64) else {
                return;
            };
            let in_page = (at % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(buf.len() - done);
            if at < self.len {
                if let Some(page) = self.pages.get(&(at / PAGE)) {
                    let valid = (self.len - at).min(n as u64) as usize;
                    buf[done..done + valid].copy_from_slice(&page[in_page..in_page + valid]);
                }
            }
            done += n;
        }
    }

    /// The whole file (for small files).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; usize::try_from(self.len).unwrap_or(0)];
        self.read(0, &mut bytes);
        bytes
    }

    /// Writes `bytes` at `offset`, extending the file.
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let mut done = 0usize;
        while done < bytes.len() {
            let at = offset + done as u64;
            let in_page = (at % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(bytes.len() - done);
            let page = self
                .pages
                .entry(at / PAGE)
                .or_insert_with(|| Box::new([0u8; PAGE as usize]));
            page[in_page..in_page + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
        self.len = self.len.max(offset + bytes.len() as u64);
    }

    /// Zeros `len` bytes at `offset` (dropping whole pages), extending the file.
    fn zero(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let in_page = at % PAGE;
            let n = (PAGE - in_page).min(end - at);
            if n == PAGE {
                self.pages.remove(&(at / PAGE));
            } else if let Some(page) = self.pages.get_mut(&(at / PAGE)) {
                page[in_page as usize..(in_page + n) as usize].fill(0);
            }
            at += n;
        }
        self.len = self.len.max(end);
    }

    /// Sets the length; bytes past a shorter end are gone.
    fn set_len(&mut self, len: u64) {
        if len < self.len {
            let first_gone = len.div_ceil(PAGE);
            self.pages.retain(|&index, _| index < first_gone);
            if let Some(page) = self.pages.get_mut(&(len / PAGE)) {
                page[(len % PAGE) as usize..].fill(0);
            }
        }
        self.len = len;
    }
}

/// The files of one image, sparse, with a budget on the bytes held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseStorage {
    /// The image file.
    pub image: SparseFile,
    /// The separate data file, if any.
    pub data: Option<SparseFile>,
    /// The raw base, if any (read-only).
    pub base: Option<SparseFile>,
    /// Most bytes the files may hold in memory.
    pub budget: u64,
}

impl SparseStorage {
    /// Storage for `image` (and a raw `base`) with a budget of 64 MiB.
    pub fn new(image: &[u8], base: Option<&[u8]>) -> Self {
        SparseStorage {
            image: SparseFile::new(image),
            data: None,
            base: base.map(SparseFile::new),
            budget: 64 << 20,
        }
    }

    fn allocated(&self) -> u64 {
        self.image.allocated() + self.data.as_ref().map_or(0, SparseFile::allocated)
    }

    fn file(&mut self, file: FileId) -> io::Result<&mut SparseFile> {
        let found = match file {
            FileId::Image => Some(&mut self.image),
            FileId::Data => self.data.as_mut(),
            FileId::Base => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the base image is read-only",
                ))
            }
        };
        found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {file:?} file")))
    }

    /// Refuses a change reaching past the largest file offset or growing memory past the
    /// budget.
    fn admit(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= i64::MAX as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let pages = end.div_ceil(PAGE) - offset / PAGE;
        if self.allocated().saturating_add(pages.saturating_mul(PAGE)) > self.budget {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

impl Storage for SparseStorage {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match file {
            FileId::Base => match &self.base {
                Some(base) => base.read(offset, buf),
                None => return Err(io::Error::new(io::ErrorKind::NotFound, "no base file")),
            },
            _ => self.file(file)?.read(offset, buf),
        }
        Ok(())
    }

    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file(file)?;
        self.admit(offset, buf.len() as u64)?;
        self.file(file)?.write(offset, buf);
        Ok(())
    }

    fn write_zeroes(
        &mut self,
        file: FileId,
        offset: u64,
        len: u64,
        _unmap: bool,
    ) -> io::Result<()> {
        self.file(file)?;
        // Zeros free pages; only the two partial ends may allocate.
        self.admit(offset, len.min(2 * PAGE))?;
        offset
            .checked_add(len)
            .filter(|&end| end <= i64::MAX as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        self.file(file)?.zero(offset, len);
        Ok(())
    }

    fn flush(&mut self, file: FileId) -> io::Result<()> {
        self.file(file).map(|_| ())
    }

    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        if len > i64::MAX as u64 {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        self.file(file)?.set_len(len);
        Ok(())
    }

    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        Ok(match file {
            FileId::Image => Some(self.image.len()),
            FileId::Data => self.data.as_ref().map(SparseFile::len),
            FileId::Base => self.base.as_ref().map(SparseFile::len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_reads_back_what_was_written_and_zeros_elsewhere() {
        let mut s = SparseStorage::new(&[1, 2, 3], None);
        s.write_at(FileId::Image, 5000, &[9; 5000]).unwrap();
        let mut buf = vec![0xee; 10_100];
        s.read_at(FileId::Image, 0, &mut buf).unwrap();
        assert_eq!(&buf[..4], &[1, 2, 3, 0]);
        assert!(buf[4..5000].iter().all(|&b| b == 0));
        assert!(buf[5000..10_000].iter().all(|&b| b == 9));
        assert!(buf[10_000..].iter().all(|&b| b == 0));
        s.write_zeroes(FileId::Image, 4096, 8192, true).unwrap();
        s.read_at(FileId::Image, 0, &mut buf).unwrap();
        assert!(buf[3..].iter().all(|&b| b == 0));
        s.set_len(FileId::Image, 2).unwrap();
        s.set_len(FileId::Image, 4).unwrap();
        s.read_at(FileId::Image, 0, &mut buf[..4]).unwrap();
        assert_eq!(&buf[..4], &[1, 2, 0, 0]);
    }

    #[test]
    fn writes_past_the_budget_or_the_largest_offset_fail_with_errno() {
        let mut s = SparseStorage::new(&[], None);
        s.budget = 8192;
        let far = 1u64 << 62;
        s.write_at(FileId::Image, far, &[1; 4096]).unwrap();
        assert_eq!(s.len(FileId::Image).unwrap(), Some(far + 4096));
        let e = s.write_at(FileId::Image, 0, &[1; 8192]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let e = s
            .write_at(FileId::Image, u64::MAX - 10, &[1; 20])
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
        assert!(s.write_at(FileId::Base, 0, &[1]).is_err());
    }
}
