//! A storage that shows every operation to a hook before passing it on: tests and
//! benchmarks count reads, add latency or fail chosen operations with it instead of each
//! writing its own pass-through wrapper.

use crate::host::storage::Storage;
use fvd_core::engine::FileId;
use std::io;

/// One storage operation, as a hook sees it before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `len` bytes read at `offset`.
    Read {
        file: FileId,
        offset: u64,
        len: usize,
    },
    /// `len` bytes written at `offset`.
    Write {
        file: FileId,
        offset: u64,
        len: usize,
    },
    /// `len` bytes made zero at `offset`.
    WriteZeroes { file: FileId, offset: u64, len: u64 },
    /// A flush.
    Flush { file: FileId },
    /// A new length.
    SetLen { file: FileId, len: u64 },
}

impl Op {
    /// The file the operation targets.
    pub fn file(&self) -> FileId {
        match *self {
            Op::Read { file, .. }
            | Op::Write { file, .. }
            | Op::WriteZeroes { file, .. }
            | Op::Flush { file }
            | Op::SetLen { file, .. } => file,
        }
    }
}

/// What a hook does with an operation: watch it (`Ok`) or fail it instead of running it.
pub trait Hook {
    /// Called before `op` runs; an error is returned in its place.
    fn before(&mut self, op: Op) -> io::Result<()>;
}

impl<F: FnMut(Op) -> io::Result<()>> Hook for F {
    fn before(&mut self, op: Op) -> io::Result<()> {
        self(op)
    }
}

/// `inner` with `hook` shown every operation first (lengths are not hooked).
pub struct Hooked<S, H> {
    /// The storage operations run on.
    pub inner: S,
    /// What sees them first.
    pub hook: H,
}

impl<S, H> Hooked<S, H> {
    /// `inner` watched by `hook`.
    pub fn new(inner: S, hook: H) -> Self {
        Hooked { inner, hook }
    }
}

impl<S: Storage, H: Hook> Storage for Hooked<S, H> {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.hook.before(Op::Read {
            file,
            offset,
            len: buf.len(),
        })?;
        self.inner.read_at(file, offset, buf)
    }
    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.hook.before(Op::Write {
            file,
            offset,
            len: buf.len(),
        })?;
        self.inner.write_at(file, offset, buf)
    }
    fn write_zeroes(&mut self, file: FileId, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.hook.before(Op::WriteZeroes { file, offset, len })?;
        self.inner.write_zeroes(file, offset, len, unmap)
    }
    fn flush(&mut self, file: FileId) -> io::Result<()> {
        self.hook.before(Op::Flush { file })?;
        self.inner.flush(file)
    }
    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.hook.before(Op::SetLen { file, len })?;
        self.inner.set_len(file, len)
    }
    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        self.inner.len(file)
    }
    fn failed_flush_loses_writes(&self) -> bool {
        self.inner.failed_flush_loses_writes()
    }
}

/// A hook that counts the reads (and the bytes read) of each file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounter {
    /// Reads of the image, data and base file, in that order.
    pub reads: [u64; 3],
    /// Bytes read from each, in the same order.
    pub bytes: [u64; 3],
}

impl ReadCounter {
    /// Bytes read from `file`.
    pub fn bytes_of(&self, file: FileId) -> u64 {
        self.bytes[index(file)]
    }

    /// Reads of `file`.
    pub fn reads_of(&self, file: FileId) -> u64 {
        self.reads[index(file)]
    }
}

fn index(file: FileId) -> usize {
    match file {
        FileId::Image => 0,
        FileId::Data => 1,
        FileId::Base => 2,
    }
}

impl Hook for ReadCounter {
    fn before(&mut self, op: Op) -> io::Result<()> {
        if let Op::Read { file, len, .. } = op {
            self.reads[index(file)] += 1;
            self.bytes[index(file)] += len as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memstore::{MemFile, MemStorage};

    #[test]
    fn a_hook_sees_every_operation_first_and_its_error_replaces_it() {
        let storage = MemStorage {
            image: MemFile::new(vec![7; 4096]),
            data: None,
            base: None,
            writes: 0,
        };
        let mut seen = Vec::new();
        let mut hooked = Hooked::new(storage, |op: Op| {
            seen.push(op);
            match op {
                Op::Flush { .. } => Err(io::Error::other("no flush today")),
                _ => Ok(()),
            }
        });
        let mut buf = [0u8; 16];
        hooked.read_at(FileId::Image, 8, &mut buf).unwrap();
        assert_eq!(buf, [7; 16]);
        hooked.write_at(FileId::Image, 0, &[1, 2]).unwrap();
        assert!(hooked.flush(FileId::Image).is_err());
        drop(hooked);
        assert_eq!(
            seen,
            [
                Op::Read {
                    file: FileId::Image,
                    offset: 8,
                    len: 16
                },
                Op::Write {
                    file: FileId::Image,
                    offset: 0,
                    len: 2
                },
                Op::Flush {
                    file: FileId::Image
                },
            ]
        );
    }

    #[test]
    fn the_read_counter_counts_reads_and_bytes_per_file() {
        let mut counter = ReadCounter::default();
        for len in [512, 4096] {
            counter
                .before(Op::Read {
                    file: FileId::Base,
                    offset: 0,
                    len,
                })
                .unwrap();
        }
        counter.before(Op::Flush { file: FileId::Base }).unwrap();
        assert_eq!(counter.reads_of(FileId::Base), 2);
        assert_eq!(counter.bytes_of(FileId::Base), 4608);
        assert_eq!(counter.reads_of(FileId::Image), 0);
    }
}
