//! `check` judges a dirty image with the engine's own record rule: a journal record that
//! spans two 512-byte units of the table with a conflict in one of them is applied in the
//! other by the engine's read-only overlay and by the check alike (one finding, the same
//! mapped chunks).

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::{pump, SparseFile};
use embedded_io::{ErrorKind, ErrorType, Read, Seek, SeekFrom, Write};
use fvd_core::blocking::{BlockingDisk, NoFile};
use fvd_core::check::fvd::{FvdCheck, FvdFiles, Problem};
use fvd_core::check::{Checker, Finding, Report};
use fvd_core::engine::Mapping;
use fvd_core::fvd::create::{metadata_len, plan, CreateOptions};
use fvd_core::fvd::journal::SectorBuilder;
use fvd_core::fvd::{parse, RAW_HEADER_LEN};

const CHUNK: u64 = 4096;

/// A file in a `Vec`, for the blocking driver.
struct Cursor {
    bytes: Vec<u8>,
    pos: u64,
}

impl ErrorType for Cursor {
    type Error = ErrorKind;
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        let at = (self.pos as usize).min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - at);
        buf[..n].copy_from_slice(&self.bytes[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Cursor {
    /// A read-only open never writes.
    fn write(&mut self, _: &[u8]) -> Result<usize, ErrorKind> {
        Err(ErrorKind::PermissionDenied)
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> Result<u64, ErrorKind> {
        self.pos = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::End(d) => (self.bytes.len() as i64 + d) as u64,
            SeekFrom::Current(d) => (self.pos as i64 + d) as u64,
        };
        Ok(self.pos)
    }
}

#[test]
fn a_record_with_a_conflict_in_one_unit_is_applied_in_the_other_by_engine_and_check() {
    let h = plan(&CreateOptions {
        virtual_size: 8 << 20,
        compact_image: true,
        chunk_size: Some(CHUNK),
        ..CreateOptions::default()
    })
    .unwrap();
    let data_offset = h.data_offset.get();
    let len = data_offset.max(metadata_len(&h)) + 200 * CHUNK;
    let mut bytes = vec![0u8; len as usize];
    bytes[..RAW_HEADER_LEN].copy_from_slice(h.bytes());
    let (_, l) = parse(&bytes[..RAW_HEADER_LEN], len).unwrap();
    let table = l.table.unwrap().region;
    bytes[table.offset as usize..table.end() as usize].fill(0xFF);
    let mut put = |chunk: u64, value: u32| {
        let at = (table.offset + chunk * 4) as usize;
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    };
    put(0, 0);
    put(130, 9);
    bytes[2160..2164].copy_from_slice(&0u32.to_le_bytes());
    // One record for chunks 100..140 (entries 100..127 in one 512-byte unit of the
    // table, 128..139 in the next); chunk 130 contradicts the table.
    let values: Vec<u8> = (100u32..140).flat_map(|v| v.to_le_bytes()).collect();
    let mut sector = [0u8; 512];
    let mut b = SectorBuilder::new(&mut sector).unwrap();
    assert_eq!(b.push_table(100, &values), 40);
    b.finish(l.stable_journal_epoch, 0);
    let journal = l.journal.unwrap().offset as usize;
    bytes[journal..journal + 512].copy_from_slice(&sector);

    // The check: one finding, the first unit applied.
    let mut file = SparseFile::from_bytes(bytes.clone());
    let files = FvdFiles {
        image_len: len,
        data_len: None,
    };
    let check = FvdCheck::new(&bytes, files, vec![0u8; 64 << 10]).unwrap();
    let run = pump(&mut Checker::Fvd(check), &mut file, None, 4096);
    assert_eq!(
        run.findings,
        [Finding::Fvd(Problem::RecordConflict {
            sector: 0,
            record: 0,
            chunk: 130,
            value: 130,
            current: 9
        })]
    );
    let Some(Report::Fvd(s)) = run.report else {
        panic!("{:?}", run.report)
    };
    assert_eq!(s.counts.allocated_clusters, 1 + 28 + 1);

    // The engine, read-only over the same bytes, sees the same table.
    let image = Cursor { bytes, pos: 0 };
    let mut disk: BlockingDisk<_, _, _, _> =
        BlockingDisk::open(vec![0u8; 1 << 20], image, NoFile, NoFile, false, 64 << 10).unwrap();
    // Where each chunk lies in the data storage, as the engine maps it.
    let mut physical = |chunk: u64| match disk.map(chunk * CHUNK, CHUNK).unwrap().mapping {
        Mapping::Data { offset, .. } => Some((offset - data_offset) / CHUNK),
        Mapping::Unallocated => None,
        other => panic!("chunk {chunk}: {other:?}"),
    };
    for (chunk, expected) in [
        (100, Some(100)),
        (127, Some(127)),
        (128, None),
        (130, Some(9)),
        (139, None),
    ] {
        assert_eq!(physical(chunk), expected, "chunk {chunk}");
    }
}
