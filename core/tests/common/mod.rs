//! Shared by the check tests: files held in memory (sparse, with a filler for bytes never
//! written), and a host loop that pumps a scanner and keeps everything it yields.

#![allow(dead_code)]

use fvd_core::check::{Checker, FileId, Finding, Repair, Report, Step};
use std::collections::BTreeMap;

/// A file in memory: written extents over a filler.
pub struct SparseFile {
    pub len: u64,
    /// The byte at an offset never written.
    pub filler: Box<dyn Fn(u64) -> u8>,
    pub extents: BTreeMap<u64, Vec<u8>>,
}

impl SparseFile {
    pub fn zeros(len: u64) -> Self {
        SparseFile {
            len,
            filler: Box::new(|_| 0),
            extents: BTreeMap::new(),
        }
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let mut f = SparseFile::zeros(bytes.len() as u64);
        f.extents.insert(0, bytes);
        f
    }

    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        // Split the write at existing extents: simple and slow, fine for tests.
        for (i, &b) in bytes.iter().enumerate() {
            self.put(offset + i as u64, b);
        }
        self.len = self.len.max(offset + bytes.len() as u64);
    }

    fn put(&mut self, at: u64, value: u8) {
        if let Some((&start, ext)) = self.extents.range_mut(..=at).next_back() {
            if at < start + ext.len() as u64 {
                ext[(at - start) as usize] = value;
                return;
            }
            if at == start + ext.len() as u64 && ext.len() < 1 << 20 {
                ext.push(value);
                return;
            }
        }
        self.extents.insert(at, vec![value]);
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if at >= self.len { 0 } else { self.get(at) };
        }
    }

    fn get(&self, at: u64) -> u8 {
        match self.extents.range(..=at).next_back() {
            Some((&start, ext)) if at < start + ext.len() as u64 => ext[(at - start) as usize],
            _ => (self.filler)(at),
        }
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
    pub flushes: u64,
    pub lengths: Vec<(FileId, u64)>,
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
                checker.complete();
            }
            Step::Flush { .. } => {
                run.flushes += 1;
                checker.complete();
            }
            Step::SetLength { file, len } => {
                match file {
                    FileId::Image => image.len = len,
                    _ => data.as_deref_mut().unwrap().len = len,
                }
                run.lengths.push((file, len));
                checker.complete();
            }
            Step::Finding(f) => run.findings.push(f),
            Step::Leak { start, end } => run.leaks.push((start, end)),
            Step::Repaired(r) => run.repairs.push(r),
            Step::Done(report) => {
                run.report = Some(report);
                return run;
            }
        }
    }
    panic!("the scanner never finished");
}
