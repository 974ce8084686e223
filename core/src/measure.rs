//! How large a new image would be (`fvd-img measure`, qemu-img's command): fed the
//! header a `create` would write and, in ascending order, the guest ranges that hold data,
//! it counts the allocation units those ranges touch and gives the file size the image
//! needs for them (`required`) and for every guest byte (`fully_allocated`). The units
//! are the format's: an FVD compact image's chunks (its data storage growing by
//! `storage_grow_unit`), a plain FVD image's blocks at their fixed places, QED's data
//! clusters and the L2 tables that map them. No I/O, no allocation.


use crate::fvd::create::{initial_bytes_at, metadata_len};
use crate::fvd::RawHeader;
use crate::qed::create::QedPlan;
use crate::qed::table::ENTRY_SIZE;
use crate::zeros::{is_zero, HOLE_BLOCK, HOLE_BLOCK_BYTES};

/// Bytes the metadata of a new FVD image takes on disk: its [`HOLE_BLOCK`]s that hold
/// something other than zeros (hosts leave the others as holes).
pub fn metadata_on_disk(header: &RawHeader) -> u64 {
    let len = metadata_len(header);
    let mut block = [0u8; HOLE_BLOCK_BYTES];
    let (mut at, mut used) = (0u64, 0u64);
    while at < len {
        let n = len.saturating_sub(at).min(HOLE_BLOCK);
        let Some(part) = block.get_mut(..usize::try_from(n).unwrap_or(0)) else {
            break;
        };
        initial_bytes_at(header, at, part);
        if !is_zero(part) {
            used = used.saturating_add(n);
        }
        at = at.saturating_add(n);
    }
    used
}

/// The two sizes qemu-img measure prints, in bytes (saturating on absurd inputs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// File bytes the image needs for the data ranges given.
    pub required: u64,
    /// File bytes the image needs when every guest byte is written.
    pub fully_allocated: u64,
}

/// Distinct units of `unit` bytes touched by ascending ranges.
#[derive(Clone, Copy, Debug)]
struct UnitCount {
    unit: u64,
    count: u64,
    /// The last unit counted.
    last: Option<u64>,
}

impl UnitCount {
    const fn new(unit: u64) -> Self {
        UnitCount {
            unit,
            count: 0,
            last: None,
        }
    }

    fn add(&mut self, offset: u64, len: u64) {
        let (Some(first), Some(last)) = (
            offset.checked_div(self.unit),
            len.checked_sub(1)
                .map(|tail| offset.saturating_add(tail))
                .and_then(|end| end.checked_div(self.unit)),
        ) else {
            // An empty range, or no unit.
            return;
        };
        // Ranges come in ascending order: skip a unit the previous range already counted.
        let first = match self.last {
            Some(seen) if seen >= first => seen.saturating_add(1),
            _ => first,
        };
        if let Some(span) = last.checked_sub(first) {
            self.count = self.count.saturating_add(span).saturating_add(1);
            self.last = Some(last);
        }
    }
}

fn round_up(value: u64, unit: u64) -> u64 {
    if unit == 0 {
        return value;
    }
    value.div_ceil(unit).saturating_mul(unit)
}

/// The measure of an FVD image with header `header` (from `fvd::create::plan`).
#[derive(Clone, Copy, Debug)]
pub struct FvdMeasure {
    metadata: u64,
    data_offset: u64,
    virtual_size: u64,
    /// `Some(storage_grow_unit)` for a compact image.
    grow_unit: Option<u64>,
    units: UnitCount,
}

impl FvdMeasure {
    /// Starts measuring an image with this header.
    pub fn new(header: &RawHeader) -> Self {
        let compact = header.table_size.get() != 0;
        let unit = if compact {
            header.chunk_size.get()
        } else {
            header.block_size.get()
        };
        FvdMeasure {
            // Compact images count the metadata as file length (the storage follows
            // it); plain ones as bytes on disk, where its all-zero blocks are holes.
            metadata: if compact {
                metadata_len(header)
            } else {
                metadata_on_disk(header)
            },
            data_offset: header.data_offset.get(),
            virtual_size: header.virtual_disk_size.get(),
            grow_unit: compact.then(|| header.storage_grow_unit.get()),
            units: UnitCount::new(unit),
        }
    }

    /// Counts guest bytes `[offset, offset + len)` as data (ranges in ascending order).
    pub fn add(&mut self, offset: u64, len: u64) {
        self.units.add(offset, len);
    }

    /// The sizes.
    pub fn result(&self) -> Measured {
        match self.grow_unit {
            // The data storage grows in steps past the metadata.
            Some(grow) => {
                let chunks_bytes = |chunks: u64| {
                    let data = round_up(chunks.saturating_mul(self.units.unit), grow);
                    self.data_offset.saturating_add(data).max(self.metadata)
                };
                let all_chunks = self.virtual_size.div_ceil(self.units.unit.max(1));
                Measured {
                    required: chunks_bytes(self.units.count),
                    fully_allocated: chunks_bytes(all_chunks),
                }
            }
            // Blocks sit at fixed places: a sparse file holding the metadata and them.
            None => Measured {
                required: self
                    .metadata
                    .saturating_add(self.units.count.saturating_mul(self.units.unit)),
                fully_allocated: self.data_offset.saturating_add(self.virtual_size),
            },
        }
    }
}

/// The measure of a QED image created with `plan`.
#[derive(Clone, Copy, Debug)]
pub struct QedMeasure {
    base: u64,
    table_len: u64,
    image_size: u64,
    clusters: UnitCount,
    tables: UnitCount,
}

impl QedMeasure {
    /// Starts measuring an image created with this plan.
    pub fn new(plan: &QedPlan<'_>) -> Self {
        let cluster = u64::from(plan.header.cluster_size.get());
        let table_len = plan.l1_table.len;
        let per_table = (table_len / ENTRY_SIZE).saturating_mul(cluster);
        QedMeasure {
            base: plan.file_len,
            table_len,
            image_size: plan.header.image_size.get(),
            clusters: UnitCount::new(cluster),
            tables: UnitCount::new(per_table),
        }
    }

    /// Counts guest bytes `[offset, offset + len)` as data (ranges in ascending order).
    pub fn add(&mut self, offset: u64, len: u64) {
        self.clusters.add(offset, len);
        self.tables.add(offset, len);
    }

    fn size(&self, clusters: u64, tables: u64) -> u64 {
        self.base
            .saturating_add(tables.saturating_mul(self.table_len))
            .saturating_add(clusters.saturating_mul(self.clusters.unit))
    }

    /// The sizes.
    pub fn result(&self) -> Measured {
        let all_clusters = self.image_size.div_ceil(self.clusters.unit.max(1));
        let all_tables = self.image_size.div_ceil(self.tables.unit.max(1));
        Measured {
            required: self.size(self.clusters.count, self.tables.count),
            fully_allocated: self.size(all_clusters, all_tables),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fvd::create::{plan, CreateOptions};
    use crate::qed::{plan as qed_plan, QedCreateOptions};

    const M: u64 = 1 << 20;

    #[test]
    fn units_touched_by_ascending_ranges_are_counted_once() {
        let mut count = UnitCount::new(4096);
        count.add(0, 1);
        count.add(100, 4000); // same unit
        count.add(4095, 2); // units 0 and 1: only 1 is new
        count.add(3 * 4096, 4096);
        count.add(3 * 4096, 0);
        assert_eq!(count.count, 3);
    }

    #[test]
    fn a_compact_fvd_image_needs_its_chunks_in_grow_steps() {
        let h = plan(&CreateOptions {
            virtual_size: 64 * M,
            compact_image: true,
            chunk_size: Some(M),
            storage_grow_unit: Some(4 * M),
            ..Default::default()
        })
        .unwrap();
        let mut m = FvdMeasure::new(&h);
        let empty = m.result();
        assert_eq!(empty.required, metadata_len(&h).max(h.data_offset.get()));
        m.add(0, 10);
        m.add(5 * M, 2 * M);
        let r = m.result();
        // Three chunks, one 4 MiB growth step.
        assert_eq!(r.required, h.data_offset.get() + 4 * M);
        assert_eq!(r.fully_allocated, h.data_offset.get() + 64 * M);
    }

    #[test]
    fn a_plain_fvd_image_needs_its_metadata_on_disk_and_touched_blocks() {
        let h = plan(&CreateOptions {
            virtual_size: 64 * M,
            ..Default::default()
        })
        .unwrap();
        let mut m = FvdMeasure::new(&h);
        m.add(0, 4096);
        let block = h.block_size.get();
        // The header's first 4 KiB hold something; the rest of the metadata is zeros,
        // left as holes.
        assert_eq!(metadata_on_disk(&h), 4096);
        assert!(metadata_len(&h) > 4096);
        assert_eq!(m.result().required, 4096 + 4096_u64.div_ceil(block) * block);
        assert_eq!(m.result().fully_allocated, h.data_offset.get() + 64 * M);
    }

    #[test]
    fn qed_needs_its_header_l1_the_touched_l2_tables_and_clusters() {
        let p = qed_plan(&QedCreateOptions {
            size: 64 << 30,
            ..Default::default()
        })
        .unwrap();
        let cluster = u64::from(p.header.cluster_size.get());
        let table = p.l1_table.len;
        let mut m = QedMeasure::new(&p);
        assert_eq!(m.result().required, p.file_len);
        m.add(0, 1);
        m.add(cluster, cluster);
        // Far enough for a second L2 table (each maps table/8 clusters).
        m.add(table / 8 * cluster, 1);
        assert_eq!(m.result().required, p.file_len + 2 * table + 3 * cluster);
    }
}
