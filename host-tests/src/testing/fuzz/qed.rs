//! QED images from fuzz input: a valid small image (with or without a raw backing file,
//! one or two header clusters, need-check set or not) with input-chosen clusters
//! allocated the way QEMU lays them out (L2 tables and data clusters appended), then L1
//! and L2 entries, file bytes and the file length rewritten by the input.

use super::fvd::{base_byte, data_byte};
use super::input::{Encoder, Input};
use fvd_core::qed::{features, QedBacking, QedCreateOptions};

/// Bytes per cluster of every image built here.
pub const CLUSTER: u64 = 4096;

/// A built image and its raw backing file.
#[derive(Clone)]
pub struct QedCase {
    /// The image file.
    pub image: Vec<u8>,
    /// The raw backing file, when the image names one.
    pub base: Option<Vec<u8>>,
}

/// The shape byte: which image to start from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QedShape {
    /// A raw backing file.
    pub backing: bool,
    /// Two clusters per table rather than one.
    pub two_cluster_tables: bool,
    /// The need-check feature bit is set.
    pub need_check: bool,
    /// 4 MiB guest (two L2 tables with one-cluster tables) rather than 256 KiB.
    pub large: bool,
    /// The copy-on-read compatible feature bit (with a backing file).
    pub copy_on_read: bool,
    /// A header area of two clusters (so an entry can point into it past cluster 0).
    pub long_header: bool,
}

impl QedShape {
    /// Decodes a shape byte.
    pub fn from_byte(b: u8) -> Self {
        QedShape {
            backing: b & 1 != 0,
            two_cluster_tables: b & 2 != 0,
            need_check: b & 4 != 0,
            large: b & 8 != 0,
            copy_on_read: b & 0x10 != 0,
            long_header: b & 0x20 != 0,
        }
    }

    /// The byte that decodes to this shape.
    pub fn to_byte(self) -> u8 {
        u8::from(self.backing)
            | u8::from(self.two_cluster_tables) << 1
            | u8::from(self.need_check) << 2
            | u8::from(self.large) << 3
            | u8::from(self.copy_on_read) << 4
            | u8::from(self.long_header) << 5
    }

    /// Guest bytes.
    pub fn size(self) -> u64 {
        if self.large {
            4 << 20
        } else {
            256 << 10
        }
    }

    /// Bytes of one table.
    pub fn table_len(self) -> u64 {
        CLUSTER * if self.two_cluster_tables { 2 } else { 1 }
    }

    /// The header area and empty L1 table `create` writes for this shape (the L1 table
    /// moved after a second header cluster when the header is long).
    pub fn new_image(self) -> Vec<u8> {
        let plan = fvd_core::qed::plan(&QedCreateOptions {
            size: self.size(),
            cluster_size: CLUSTER,
            table_size: self.table_len() / CLUSTER,
            backing: self.backing.then_some(QedBacking {
                name: b"base",
                format: b"raw",
            }),
        })
        .expect("the shapes here are valid create options");
        let header_len = if self.long_header {
            2 * CLUSTER
        } else {
            CLUSTER
        };
        let mut image = vec![0u8; (header_len + self.table_len()) as usize];
        plan.write_header_area(&mut image)
            .expect("room for the header area");
        let mut features = plan.header.features.get();
        if self.need_check {
            features |= features::NEED_CHECK;
        }
        image[16..24].copy_from_slice(&features.to_le_bytes());
        if self.copy_on_read && self.backing {
            image[24..32].copy_from_slice(&features::COMPAT_COPY_ON_READ.to_le_bytes());
        }
        image[12..16].copy_from_slice(&((header_len / CLUSTER) as u32).to_le_bytes());
        image[40..48].copy_from_slice(&header_len.to_le_bytes());
        image
    }
}

/// An entry value from the input: 0, the zero marker, any u64, a misaligned offset, or
/// a cluster offset (some past the end of the file).
fn value_of(input: &mut Input) -> u64 {
    match input.u8() {
        0 => 0,
        1 => 1,
        2 => input.u64(),
        b @ 3..=15 => u64::from(b) * CLUSTER + 512,
        b => u64::from(b % 24) * CLUSTER,
    }
}

fn set_u64(image: &mut [u8], at: u64, value: u64) {
    let at = at as usize;
    if let Some(slot) = image.get_mut(at..at + 8) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

fn get_u64(image: &[u8], at: u64) -> u64 {
    let at = at as usize;
    image
        .get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// Decodes one case from `input`: the shape byte, up to 11 allocations (a u16 guest
/// cluster each, a zero-cluster marker when its high bit is set), then up to 23 patches
/// (an op byte: by `op & 3` an L1 entry (index `op >> 2`), an L2 entry (a table byte and
/// a u16 index), file bytes (a u16 offset and `1 + (op >> 2) % 16` bytes) or the file
/// length (`op >> 2` clusters, plus 512 bytes when `op & 0x80`).
pub fn build(input: &mut Input) -> QedCase {
    let shape = QedShape::from_byte(input.u8());
    let mut image = shape.new_image();
    let l1 = get_u64(&image, 40);
    let entries = shape.table_len() / 8;
    let clusters = shape.size() / CLUSTER;
    let mut l2_tables = Vec::new();
    for _ in 0..input.u8() % 12 {
        let pick = input.u16();
        let guest = u64::from(pick & 0x7FFF) % clusters;
        let (l1_index, l2_index) = (guest / entries, guest % entries);
        let mut table = get_u64(&image, l1 + 8 * l1_index);
        if table == 0 {
            table = image.len() as u64;
            image.resize(image.len() + shape.table_len() as usize, 0);
            set_u64(&mut image, l1 + 8 * l1_index, table);
            l2_tables.push(table);
        }
        let value = if pick & 0x8000 != 0 {
            1
        } else {
            let data = image.len() as u64;
            image.extend((0..CLUSTER).map(|i| data_byte(data + i)));
            data
        };
        set_u64(&mut image, table + 8 * l2_index, value);
    }
    for _ in 0..input.u8() % 24 {
        let op = input.u8();
        match op & 3 {
            0 => {
                let at = l1 + 8 * (u64::from(op >> 2) % entries);
                let value = value_of(input);
                set_u64(&mut image, at, value);
            }
            1 => {
                let which = usize::from(input.u8());
                let index = u64::from(input.u16()) % entries;
                let value = value_of(input);
                if let Some(&table) = l2_tables.get(which % l2_tables.len().max(1)) {
                    set_u64(&mut image, table + 8 * index, value);
                }
            }
            2 => {
                let at = usize::from(input.u16());
                let bytes = input.bytes(usize::from(1 + (op >> 2) % 16));
                if let Some(slot) = image.get_mut(at..at + bytes.len()) {
                    slot.copy_from_slice(bytes);
                }
            }
            _ => {
                let len = u64::from((op >> 2) & 0x1F) * CLUSTER + u64::from(op >> 7) * 512;
                image.resize(len as usize, 0);
            }
        }
    }
    let base = shape
        .backing
        .then(|| (0..shape.size() / 4 * 3).map(base_byte).collect());
    QedCase { image, base }
}

/// The input that builds `shape` with `allocations` (guest clusters; `zero` marks them
/// as zero clusters) and no patches.
pub fn encode(
    shape: QedShape,
    allocations: &[(u16, bool)],
    patches: &[u8],
    patch_count: u8,
) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(shape.to_byte()).u8(allocations.len() as u8);
    for &(cluster, zero) in allocations {
        e.u16(cluster | if zero { 0x8000 } else { 0 });
    }
    e.u8(patch_count).raw(patches);
    e.finish()
}
