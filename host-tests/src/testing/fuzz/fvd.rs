//! FVD images from fuzz input: a valid small image (plain or compact, with or without a
//! raw base, clean or dirty) whose journal, table and bitmap the input then rewrites:
//! journal sectors built with [`SectorBuilder`] from input-chosen records (so the fuzzer
//! gets past the CRC), raw sectors, torn copies, and patched table entries and bitmap
//! bytes that may contradict the journal.

use super::input::{Encoder, Input};
use crate::testing::newimage::initial_metadata;
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_core::fvd::journal::{SectorBuilder, JOURNAL_SECTOR_SIZE};
use fvd_core::fvd::RawHeader;

/// Guest bytes of every image built here.
pub const VIRTUAL_SIZE: u64 = 256 << 10;
/// Bytes per chunk of the compact images.
pub const CHUNK_SIZE: u64 = 16 << 10;
/// Most operations one case applies.
pub const MAX_OPS: u8 = 48;

/// A built image: its file, its raw base, and its header as built.
#[derive(Clone)]
pub struct FvdCase {
    /// The image file.
    pub image: Vec<u8>,
    /// The raw base file, when the image has a base.
    pub base: Option<Vec<u8>>,
}

/// The shape byte: which image to start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// A chunk table.
    pub compact: bool,
    /// A raw base under the image.
    pub base: bool,
    /// Journal sectors (8, 16 or 32).
    pub journal_sectors: u64,
    /// The header says the image was closed cleanly.
    pub clean: bool,
    /// Block size 512 rather than 4096.
    pub small_blocks: bool,
    /// The base covers three quarters of the disk rather than all of it.
    pub short_base: bool,
    /// The header's copy-on-read default is on.
    pub copy_on_read: bool,
}

impl Shape {
    /// Decodes a shape byte.
    pub fn from_byte(b: u8) -> Self {
        Shape {
            compact: b & 1 != 0,
            base: b & 2 != 0,
            journal_sectors: [8, 16, 32, 8][usize::from((b >> 2) & 3)],
            clean: b & 0x10 != 0,
            small_blocks: b & 0x20 != 0,
            short_base: b & 0x40 != 0,
            copy_on_read: b & 0x80 != 0,
        }
    }

    /// The byte that decodes to this shape.
    pub fn to_byte(self) -> u8 {
        let journal = match self.journal_sectors {
            16 => 1,
            32 => 2,
            _ => 0,
        };
        u8::from(self.compact)
            | u8::from(self.base) << 1
            | journal << 2
            | u8::from(self.clean) << 4
            | u8::from(self.small_blocks) << 5
            | u8::from(self.short_base) << 6
            | u8::from(self.copy_on_read) << 7
    }

    /// Guest bytes the base covers.
    pub fn base_size(self) -> u64 {
        if self.short_base {
            VIRTUAL_SIZE / 4 * 3
        } else {
            VIRTUAL_SIZE
        }
    }

    /// The header `create` writes for this shape.
    pub fn header(self) -> RawHeader {
        let mut header = plan(&CreateOptions {
            virtual_size: VIRTUAL_SIZE,
            compact_image: self.compact,
            chunk_size: Some(CHUNK_SIZE),
            block_size: Some(if self.small_blocks { 512 } else { 4096 }),
            storage_grow_unit: Some(CHUNK_SIZE),
            journal_size: Some(self.journal_sectors * JOURNAL_SECTOR_SIZE as u64),
            copy_on_read: self.copy_on_read && self.base,
            base: self.base.then_some(BaseSpec {
                name: b"base",
                format: b"raw",
                size: self.base_size(),
            }),
            ..Default::default()
        })
        .expect("the shapes here are valid create options");
        header.clean_shutdown.set(u32::from(self.clean));
        header
    }
}

/// Epochs the epoch byte selects: small ones mostly, and the edges of the valid range.
const EDGE_EPOCHS: [u64; 8] = [
    (1 << 62) - 1,
    1 << 62,
    (1 << 62) + 1,
    (1 << 63) - 1,
    1 << 63,
    (1 << 63) + 1,
    u64::MAX - 1,
    u64::MAX,
];

fn epoch_of(b: u8) -> u64 {
    if b >= 0xC0 {
        EDGE_EPOCHS[usize::from(b & 7)]
    } else {
        u64::from(b & 0x3F)
    }
}

/// A table entry value from a byte: EMPTY, an arbitrary u32 from the input, or a small
/// physical chunk (most of them inside the storage).
fn entry_of(b: u8, input: &mut Input) -> u32 {
    match b {
        0xFF => u32::MAX,
        0xFE => input.u32(),
        0xFD => 0x7FFF_FFFF,
        _ => u32::from(b % 40),
    }
}

/// The byte of guest data at `offset` of physical chunk storage (distinct per chunk).
pub fn data_byte(offset: u64) -> u8 {
    ((offset / 512) as u8).wrapping_mul(13) ^ (offset as u8) ^ 0xA5
}

/// The byte of the raw base at guest `offset`.
pub fn base_byte(offset: u64) -> u8 {
    ((offset / 512) as u8).wrapping_mul(7) ^ (offset as u8) ^ 0x3C
}

/// Decodes one case from `input`. Operations (an op byte, a journal position byte, then
/// by `op & 7`): 0 and 5 a built sector (`op >> 5` of 6 or 7 seals it for a neighbouring
/// epoch or position), 1 and 6 a raw sector, 2 and 7 a flipped byte, 3 a table entry
/// (index `op >> 3`), 4 a bitmap byte.
pub fn build(input: &mut Input) -> FvdCase {
    let shape = Shape::from_byte(input.u8());
    let mut header = shape.header();
    let epoch = epoch_of(input.u8());
    header.stable_journal_epoch.set(epoch);
    let mut image = initial_metadata(&header);
    let data_offset = header.data_offset.get() as usize;
    // Data storage: `stored` chunk sizes of distinct bytes after data_offset.
    let stored = u64::from(input.u8() % 24) * CHUNK_SIZE;
    image.resize(data_offset + stored as usize, 0);
    for (i, b) in image[data_offset..].iter_mut().enumerate() {
        *b = data_byte(i as u64);
    }
    let journal = header.journal_offset.get() as usize;
    let sectors = shape.journal_sectors;
    let table = header.table_offset.get() as usize;
    let chunks = VIRTUAL_SIZE.div_ceil(CHUNK_SIZE) as usize;
    let bitmap = header.bitmap_offset.get() as usize;
    let bitmap_len = header.bitmap_size.get() as usize;
    let ops = input.u8() % MAX_OPS;
    for _ in 0..ops {
        let op = input.u8();
        let position = u64::from(input.u8()) % sectors;
        let at = journal + position as usize * JOURNAL_SECTOR_SIZE;
        match op & 7 {
            0 | 5 => {
                let sector = built_sector(input, epoch, position, op);
                image[at..at + JOURNAL_SECTOR_SIZE].copy_from_slice(&sector);
            }
            1 | 6 => {
                let bytes = input.bytes(JOURNAL_SECTOR_SIZE);
                image[at..at + bytes.len()].copy_from_slice(bytes);
            }
            2 | 7 => {
                let byte = usize::from(input.u16()) % JOURNAL_SECTOR_SIZE;
                image[at + byte] ^= input.u8() | 1;
            }
            3 if shape.compact => {
                let index = usize::from(op >> 3) % chunks;
                let b = input.u8();
                let value = entry_of(b, input);
                image[table + 4 * index..table + 4 * index + 4]
                    .copy_from_slice(&value.to_le_bytes());
            }
            4 if shape.base => {
                let byte = usize::from(input.u16()) % bitmap_len;
                image[bitmap + byte] = input.u8();
            }
            _ => {}
        }
    }
    let base = shape
        .base
        .then(|| (0..shape.base_size()).map(base_byte).collect());
    FvdCase { image, base }
}

/// A sector built from input-chosen records, sealed for `position` in `epoch` (or, by
/// the op byte's high bits, another epoch or position).
fn built_sector(input: &mut Input, epoch: u64, position: u64, op: u8) -> Vec<u8> {
    let mut sector = vec![0u8; JOURNAL_SECTOR_SIZE];
    let mut builder = SectorBuilder::new(&mut sector).expect("a sector-sized buffer");
    let records = input.u8() % 6;
    for _ in 0..records {
        let kind = input.u8();
        let count = usize::from(1 + (kind >> 2) % 8);
        if kind & 1 == 0 {
            let first = if kind & 2 != 0 {
                input.u32()
            } else {
                u32::from(input.u8() % 20)
            };
            let mut entries = Vec::with_capacity(4 * count);
            for _ in 0..count {
                let b = input.u8();
                entries.extend_from_slice(&entry_of(b, input).to_le_bytes());
            }
            builder.push_table(first, &entries);
        } else {
            let offset = if kind & 2 != 0 {
                input.u64()
            } else {
                u64::from(input.u8())
            };
            builder.push_bitmap(offset, input.bytes(count * 2));
        }
    }
    let (epoch, sequence) = match op >> 5 {
        6 => (epoch.wrapping_add(1), position),
        7 => (epoch.wrapping_sub(1), position.wrapping_add(1)),
        _ => (epoch, position),
    };
    builder.finish(epoch, sequence);
    sector
}

/// The input that builds `shape` with `epoch_byte`, `stored_chunks` of data and `ops`
/// (already encoded operations, counted in `op_count`).
pub fn encode(
    shape: Shape,
    epoch_byte: u8,
    stored_chunks: u8,
    op_count: u8,
    ops: &[u8],
) -> Vec<u8> {
    Encoder::new()
        .u8(shape.to_byte())
        .u8(epoch_byte)
        .u8(stored_chunks)
        .u8(op_count)
        .raw(ops)
        .finish()
}

/// Encodes a built journal sector at `position` holding one table record mapping
/// `first` onto the physical chunks `physical` (each below 40).
pub fn table_sector_op(position: u8, first: u8, physical: &[u8]) -> Vec<u8> {
    let count = physical.len().clamp(1, 8) as u8;
    let mut e = Encoder::new();
    e.u8(0).u8(position).u8(1).u8((count - 1) << 2).u8(first);
    for &p in &physical[..usize::from(count)] {
        e.u8(p);
    }
    e.finish()
}

/// Encodes a built journal sector at `position` holding one bitmap record of `bytes`
/// (1 to 16, an even count) at bitmap byte `offset`.
pub fn bitmap_sector_op(position: u8, offset: u8, bytes: &[u8]) -> Vec<u8> {
    let count = (bytes.len() / 2).clamp(1, 8) as u8;
    let mut e = Encoder::new();
    e.u8(0)
        .u8(position)
        .u8(1)
        .u8(1 | (count - 1) << 2)
        .u8(offset);
    e.raw(&bytes[..usize::from(count) * 2]);
    e.finish()
}

/// Encodes setting on-disk table entry `index` (below 16) to physical chunk `physical`.
pub fn table_patch_op(index: u8, physical: u8) -> Vec<u8> {
    Encoder::new()
        .u8(3 | ((index % 16) << 3))
        .u8(0)
        .u8(physical)
        .finish()
}

/// Encodes flipping byte `byte` of journal sector `position` (a torn sector).
pub fn tear_op(position: u8, byte: u16) -> Vec<u8> {
    Encoder::new()
        .u8(2)
        .u8(position)
        .u16(byte)
        .u8(0x10)
        .finish()
}
