//! Target `model`: a valid image (FVD plain, compact, over a raw base, compact over a
//! base, with a data file; QED alone or over a raw backing file) on [`MemStorage`],
//! driven by input-chosen writes, write-zeroes, discards, flushes and reads through
//! [`Driver`], with completions shuffled by an input-chosen seed. Every read is compared
//! with a flat byte model; a close and reopen (in the middle when the input says, and at
//! the end) compares the whole disk. Nothing may fail: the image is valid and the storage
//! never errs.

use super::fvd::{base_byte, data_byte};
use super::input::Input;
use super::COMMAND_LIMIT;
use crate::host::driver::{Driver, DriverOptions};
use crate::testing::memstore::{MemFile, MemStorage};
use crate::testing::newimage::initial_metadata;
use fvd_core::engine::PAGE_BYTES;
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_core::qed::{QedBacking, QedCreateOptions};

/// Guest bytes of every image here.
pub const SIZE: u64 = 256 << 10;
/// Bytes of the raw base: three quarters of the disk and a partial sector.
const BASE_LEN: u64 = SIZE / 4 * 3 + 1000;
/// Most operations one input runs.
pub const MAX_OPS: usize = 64;

/// The image kinds, by the kind byte `% 7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// FVD, data at fixed offsets.
    Plain,
    /// FVD with a chunk table.
    Compact,
    /// FVD over a raw base.
    Base,
    /// Compact FVD over a raw base.
    CompactBase,
    /// Compact FVD with a separate data file.
    DataFile,
    /// QED.
    Qed,
    /// QED over a raw backing file.
    QedBase,
}

impl Kind {
    /// Every kind, in kind-byte order.
    pub const ALL: [Kind; 7] = [
        Kind::Plain,
        Kind::Compact,
        Kind::Base,
        Kind::CompactBase,
        Kind::DataFile,
        Kind::Qed,
        Kind::QedBase,
    ];

    fn has_base(self) -> bool {
        matches!(self, Kind::Base | Kind::CompactBase | Kind::QedBase)
    }
}

/// The storage of a new image of `kind` (`small_blocks`: 512-byte blocks and 4 KiB
/// chunks or clusters rather than 4 KiB blocks and 16 KiB chunks) and the guest
/// contents it starts with.
pub fn new_image(kind: Kind, small_blocks: bool) -> (MemStorage, Vec<u8>) {
    let base: Vec<u8> = (0..BASE_LEN).map(base_byte).collect();
    let mut expected = vec![0u8; SIZE as usize];
    let mut storage = MemStorage::default();
    if kind.has_base() {
        expected[..BASE_LEN as usize].copy_from_slice(&base);
        storage.base = Some(MemFile::new(base));
    }
    if matches!(kind, Kind::Qed | Kind::QedBase) {
        let cluster = if small_blocks { 4096 } else { 16384 };
        let plan = fvd_core::qed::plan(&QedCreateOptions {
            size: SIZE,
            cluster_size: cluster,
            table_size: 1,
            backing: (kind == Kind::QedBase).then_some(QedBacking {
                name: b"base",
                format: b"raw",
            }),
        })
        .expect("valid QED options");
        let mut image = vec![0u8; plan.file_len as usize];
        plan.write_header_area(&mut image)
            .expect("room for the header area");
        storage.image = MemFile::new(image);
        return (storage, expected);
    }
    let (block, chunk) = if small_blocks {
        (512, 4096)
    } else {
        (4096, 16384)
    };
    let header = plan(&CreateOptions {
        virtual_size: SIZE,
        compact_image: matches!(kind, Kind::Compact | Kind::CompactBase | Kind::DataFile),
        block_size: Some(block),
        chunk_size: Some(chunk),
        storage_grow_unit: Some(2 * chunk),
        journal_size: Some(8192),
        data_file: (kind == Kind::DataFile).then_some(b"data".as_slice()),
        base: kind.has_base().then_some(BaseSpec {
            name: b"base",
            format: b"raw",
            size: BASE_LEN,
        }),
        ..Default::default()
    })
    .expect("valid FVD options");
    storage.image = MemFile::new(initial_metadata(&header));
    if kind == Kind::DataFile {
        storage.data = Some(MemFile::new(Vec::new()));
    }
    (storage, expected)
}

fn driver(storage: MemStorage, options: DriverOptions) -> Driver<MemStorage> {
    let mut driver = Driver::open(storage, options).unwrap_or_else(|e| panic!("open: {e}"));
    driver.limit_commands(COMMAND_LIMIT);
    driver
}

fn compare(driver: &mut Driver<MemStorage>, model: &[u8], at: u64, len: u64, when: &str) {
    let got = driver
        .read(at, len as usize)
        .unwrap_or_else(|e| panic!("read {at}+{len} {when}: {e}"));
    let want = &model[at as usize..(at + len) as usize];
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!(
            "read {at}+{len} {when}: byte {} is {:#x}, the model says {:#x}",
            at + i as u64,
            got[i],
            want[i]
        );
    }
}

fn reopen(driver: Driver<MemStorage>, options: DriverOptions, model: &[u8]) -> Driver<MemStorage> {
    let (storage, clean) = driver.close().unwrap_or_else(|e| panic!("close: {e}"));
    assert!(clean, "a close with nothing failing marks the image clean");
    let mut driver = self::driver(storage, options);
    compare(&mut driver, model, 0, SIZE, "after reopening");
    driver
}

/// Runs one input: the kind byte (`% 7`, bit 7: small blocks), the options byte (bits
/// 0-3: cache pages above 4; bit 4: copy-on-read; bits 5-7: commands in flight before
/// one is performed, shuffled when non-zero), the shuffle seed byte, then operations of
/// four bytes (op, a u16 sector, a length byte): by `op % 8` write (0, 1; the op byte is
/// the pattern), write-zeroes, discard, flush, read (5, 6), close and reopen.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let kind_byte = input.u8();
    let kind = Kind::ALL[usize::from(kind_byte % 7)];
    let (storage, mut model) = new_image(kind, kind_byte & 0x80 != 0);
    let flags = input.u8();
    let seed = input.u8();
    let pending = usize::from(flags >> 5);
    let options = DriverOptions {
        cache_bytes: (4 + usize::from(flags & 15)) * PAGE_BYTES,
        bounce_bytes: 256 << 10,
        copy_on_read: Some(flags & 0x10 != 0),
        shuffle_seed: (pending > 0).then_some(u64::from(seed) + 1),
        max_pending: pending.max(1),
        ..Default::default()
    };
    let mut driver = driver(storage, options);
    let sectors = SIZE / 512;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let sector = u64::from(input.u16()) % sectors;
        let count = (u64::from(input.u8()) % 64 + 1).min(sectors - sector);
        let (at, len) = (sector * 512, count * 512);
        let range = at as usize..(at + len) as usize;
        match op % 8 {
            0 | 1 => {
                let bytes: Vec<u8> = (at..at + len).map(|o| data_byte(o) ^ op).collect();
                driver
                    .write(at, &bytes)
                    .unwrap_or_else(|e| panic!("write {at}+{len}: {e}"));
                model[range].copy_from_slice(&bytes);
            }
            2 => {
                driver
                    .write_zeroes(at, len)
                    .unwrap_or_else(|e| panic!("write-zeroes {at}+{len}: {e}"));
                model[range].fill(0);
            }
            3 => {
                driver
                    .discard(at, len)
                    .unwrap_or_else(|e| panic!("discard {at}+{len}: {e}"));
                model[range].fill(0);
            }
            4 => driver.flush().unwrap_or_else(|e| panic!("flush: {e}")),
            5 | 6 => compare(&mut driver, &model, at, len, "after the operations so far"),
            _ => driver = reopen(driver, options, &model),
        }
    }
    reopen(driver, options, &model);
}
