//! Shared by the check tests: files held in memory (sparse, with a filler for bytes never
//! written), and a host loop that pumps a scanner and keeps everything it yields.

#![allow(dead_code)]

use fvd_core::check::{Checker, FileId, Finding, Repair, Report, Step};
use std::collections::BTreeMap;

/// Fills a buffer with the bytes from an offset of a file that were never written.
pub type Filler = Box<dyn Fn(u64, &mut [u8])>;

/// A file in memory: written extents over a filler.
pub struct SparseFile {
    pub len: u64,
    /// The bytes never written.
    pub filler: Filler,
    pub extents: BTreeMap<u64, Vec<u8>>,
}

impl SparseFile {
    pub fn zeros(len: u64) -> Self {
        SparseFile {
            len,
            filler: Box::new(|_, buf| buf.fill(0)),
            extents: BTreeMap::new(),
        }
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let mut f = SparseFile::zeros(bytes.len() as u64);
        f.extents.insert(0, bytes);
        f
    }

    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        // The bytes under the new extent, as they read now, then the new ones over them;
        // the extents it covers are merged into it.
        let end = offset + bytes.len() as u64;
        let mut start = offset;
        if let Some((&s, ext)) = self.extents.range(..offset).next_back() {
            if s + ext.len() as u64 > offset {
                start = s;
            }
        }
        let stop = self
            .extents
            .range(start..end)
            .map(|(&s, e)| s + e.len() as u64)
            .max()
            .unwrap_or(end)
            .max(end);
        let mut merged = vec![0u8; (stop - start) as usize];
        self.read_raw(start, &mut merged);
        merged[(offset - start) as usize..(end - start) as usize].copy_from_slice(bytes);
        let covered: Vec<u64> = self.extents.range(start..stop).map(|(&s, _)| s).collect();
        for s in covered {
            self.extents.remove(&s);
        }
        self.extents.insert(start, merged);
        self.len = self.len.max(end);
    }

    fn read_raw(&self, offset: u64, buf: &mut [u8]) {
        (self.filler)(offset, buf);
        let end = offset + buf.len() as u64;
        let first = self
            .extents
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&s, _)| s);
        for (&s, ext) in self.extents.range(first..end) {
            let e = s + ext.len() as u64;
            let lo = s.max(offset);
            let hi = e.min(end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&ext[(lo - s) as usize..(hi - s) as usize]);
            }
        }
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        self.read_raw(offset, buf);
        let valid = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[valid..].fill(0);
    }

    pub fn u32_at(&self, at: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn u64_at(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(at, &mut b);
        u64::from_le_bytes(b)
    }
}

/// Everything a scanner yielded.
#[derive(Debug, Default)]
pub struct Run {
    pub findings: Vec<Finding>,
    pub leaks: Vec<(u64, u64)>,
    pub repairs: Vec<Repair>,
    pub report: Option<Report>,
    pub reads: u64,
    pub bytes_read: u64,
    pub writes: Vec<(FileId, u64, usize)>,
    /// Writes, flushes and length changes, in order.
    pub ops: Vec<Op>,
}

/// A change to a file, as the scanner asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Write(FileId, u64, usize),
    Flush,
    SetLength(FileId, u64),
}

impl Run {
    pub fn kinds(&self) -> Vec<&'static str> {
        self.findings.iter().map(|f| f.kind()).collect()
    }

    pub fn messages(&self) -> Vec<String> {
        self.findings.iter().map(|f| f.to_string()).collect()
    }
}

/// Pumps `checker` to the end over `image` (and `data`), filling each read in pieces of
/// at most `piece` bytes.
pub fn pump<M: AsRef<[u8]> + AsMut<[u8]>>(
    checker: &mut Checker<M>,
    image: &mut SparseFile,
    mut data: Option<&mut SparseFile>,
    piece: usize,
) -> Run {
    let mut run = Run::default();
    for _ in 0..100_000_000u64 {
        match checker.poll() {
            Step::Read { file, offset, len } => {
                let f = match file {
                    FileId::Image => &*image,
                    _ => data.as_deref().expect("a read of the data file"),
                };
                let buf = checker.io_mut();
                assert_eq!(buf.len(), len);
                for (n, part) in buf.chunks_mut(piece).enumerate() {
                    f.read(offset + (n * piece) as u64, part);
                }
                run.reads += 1;
                run.bytes_read += len as u64;
                checker.complete();
            }
            Step::Write { file, offset, len } => {
                let bytes = checker.io().to_vec();
                assert_eq!(bytes.len(), len);
                match file {
                    FileId::Image => image.write(offset, &bytes),
                    _ => data.as_deref_mut().unwrap().write(offset, &bytes),
                }
                run.writes.push((file, offset, len));
                run.ops.push(Op::Write(file, offset, len));
                checker.complete();
            }
            Step::Flush { .. } => {
                run.ops.push(Op::Flush);
                checker.complete();
            }
            Step::SetLength { file, len } => {
                match file {
                    FileId::Image => image.len = len,
                    _ => data.as_deref_mut().unwrap().len = len,
                }
                run.ops.push(Op::SetLength(file, len));
                checker.complete();
            }
            Step::Finding(f) => run.findings.push(f),
            Step::Leak { start, end } => run.leaks.push((start, end)),
            Step::Repaired(r) => run.repairs.push(r),
            Step::Done(report) => {
                run.report = Some(report);
                return run;
            }
            other => panic!("a step this test does not know: {other:?}"),
        }
    }
    panic!("the scanner never finished");
}
