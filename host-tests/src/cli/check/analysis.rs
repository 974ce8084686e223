//! One pass of `check` over a loaded image: replays the journal in memory when the image
//! is dirty (as a read-write open would), then checks the table and the bitmap and
//! gathers the numbers qemu-img reports.

use super::load::{Loaded, Metadata};
use super::scan::{replay, scan_bitmap, scan_table, BitmapScan, Problem, Replay, TableScan};

/// Everything one check found.
pub struct Analysis {
    /// Corruptions.
    pub problems: Vec<Problem>,
    /// The image was not closed cleanly.
    pub dirty: bool,
    /// The journal of the current epoch.
    pub journal: Replay,
    /// The table findings (compact images).
    pub table: Option<TableScan>,
    /// The bitmap findings (images with a base).
    pub bitmap: Option<BitmapScan>,
    /// The metadata with every good journal record applied: what a read-write open would
    /// see after replay, and what a repair starts from.
    pub replayed: Metadata,
    /// Chunks of a compact image, or blocks of the virtual disk otherwise.
    pub total_clusters: u64,
    /// Of those, the ones whose data this image holds.
    pub allocated_clusters: u64,
    /// Mapped chunks not stored right after the previous one.
    pub fragmented_clusters: u64,
    /// End of the used part of the data storage (of the image file when the data is in a
    /// separate file).
    pub image_end_offset: u64,
}

impl Analysis {
    /// Leaked chunks.
    pub fn leaks(&self) -> u64 {
        self.table.as_ref().map_or(0, |t| t.leaked)
    }
}

/// Checks `image`.
pub fn analyze(image: &Loaded) -> Analysis {
    let layout = &image.layout;
    let dirty = !layout.clean_shutdown;
    let mut replayed = image.disk.clone();
    let journal = replay(
        &image.journal,
        layout.stable_journal_epoch,
        layout,
        &mut replayed,
    );
    let mut problems = journal.problems.clone();
    if !dirty && journal.sectors > 0 {
        problems.insert(
            0,
            Problem::UnreplayedJournal {
                sectors: journal.sectors,
                records: journal.records,
            },
        );
    }
    let has_metadata = layout.base.is_some() || layout.table.is_some();
    if dirty && layout.journal.is_none() && has_metadata {
        problems.insert(0, Problem::DirtyWithoutJournal);
    }
    // A dirty image is checked as the engine will see it after replay; a clean one as it
    // is (the engine never replays a clean image).
    let state = if dirty { &replayed } else { &image.disk };

    let table = layout.table.map(|t| {
        scan_table(
            &state.table,
            t.chunks,
            t.chunk_size,
            layout.data_offset,
            image.storage.len,
        )
    });
    let bitmap = layout.base.map(|b| scan_bitmap(&state.bitmap, b.blocks));
    if let Some(scan) = &table {
        problems.extend(scan.problems.iter().cloned());
    }
    if let Some(problem) = bitmap.as_ref().and_then(|b| b.problem.clone()) {
        problems.push(problem);
    }

    let (total_clusters, allocated_clusters, fragmented_clusters) = match (&table, layout.table) {
        (Some(scan), Some(t)) => (t.chunks, scan.mapped, scan.fragmented),
        _ => {
            let blocks = layout.virtual_size.div_ceil(layout.block_size);
            let from_base = match (&bitmap, layout.base) {
                (Some(scan), Some(_)) if !layout.base_fully_prefetched => scan.in_base,
                _ => 0,
            };
            (blocks, blocks - from_base.min(blocks), 0)
        }
    };
    let image_end_offset = match (&table, layout.table) {
        (Some(scan), Some(t)) if !image.storage.separate => {
            layout.data_offset + scan.frontier * t.chunk_size
        }
        _ => image.image_len,
    };

    Analysis {
        problems,
        dirty,
        journal,
        table,
        bitmap,
        replayed,
        total_clusters,
        allocated_clusters,
        fragmented_clusters,
        image_end_offset,
    }
}
