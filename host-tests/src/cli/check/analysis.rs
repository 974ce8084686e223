//! One pass of `check` over a loaded image: replays the journal in memory when the image
//! is dirty (as a read-write open would), then checks the table and the bitmap and
//! gathers the numbers qemu-img reports. The table's problems are not kept: they are
//! counted here and handed out one by one again by [`for_each_problem`], so memory does
//! not grow with their number.

use super::load::{Loaded, Metadata};
use super::scan::{replay, scan_bitmap, BitmapScan, Problem, Replay};
use super::table::{scan_table, table_leaks, table_problems, Table, TableScan};
use fvd_core::format::journal::{VerifiedSector, JOURNAL_SECTOR_SIZE};

/// Everything one check found.
pub struct Analysis {
    /// Problems of the image as a whole and of its journal (bounded by the journal's
    /// size), in the order they are reported, before the table's.
    pub head: Vec<Problem>,
    /// Corruptions, all of them (the head, the table's, the bitmap's).
    pub corruptions: u64,
    /// The image was not closed cleanly.
    pub dirty: bool,
    /// The journal of the current epoch.
    pub journal: Replay,
    /// The table findings (compact images).
    pub table: Option<TableScan>,
    /// The bitmap findings (images with a base).
    pub bitmap: Option<BitmapScan>,
    /// The metadata with every good journal record applied, when the journal has any
    /// valid sector (otherwise it is the metadata on disk: see [`Analysis::replayed`]).
    replayed: Option<Metadata>,
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

    /// The metadata with every good journal record applied: what a read-write open would
    /// see after replay, and what a repair starts from.
    pub fn replayed<'a>(&'a self, image: &'a Loaded) -> &'a Metadata {
        self.replayed.as_ref().unwrap_or(&image.disk)
    }

    /// The metadata that was checked: after replay for a dirty image, as on disk for a
    /// clean one (the engine never replays a clean image).
    pub fn state<'a>(&'a self, image: &'a Loaded) -> &'a Metadata {
        if self.dirty {
            self.replayed(image)
        } else {
            &image.disk
        }
    }
}

/// The table of `image` in `state`, if it has one.
pub fn table_of<'a>(image: &Loaded, state: &'a Metadata) -> Option<Table<'a>> {
    image.layout.table.map(|t| Table {
        bytes: &state.table,
        chunks: t.chunks,
        chunk_size: t.chunk_size,
        data_offset: image.layout.data_offset,
        storage_len: image.storage.len,
    })
}

/// True when `journal` holds a valid sector of `epoch` (one replay would apply).
fn has_valid_sector(journal: &[u8], epoch: u64) -> bool {
    journal
        .chunks_exact(JOURNAL_SECTOR_SIZE)
        .enumerate()
        .any(|(n, sector)| VerifiedSector::verify(sector, epoch, n as u64).is_ok())
}

/// Checks `image`.
pub fn analyze(image: &Loaded) -> Analysis {
    let layout = &image.layout;
    let dirty = !layout.clean_shutdown;
    // A copy of the metadata only when some journal sector would change it.
    let epoch = layout.stable_journal_epoch;
    let mut replayed = has_valid_sector(&image.journal, epoch).then(|| image.disk.clone());
    let mut untouched = Metadata::default();
    let journal = replay(
        &image.journal,
        epoch,
        layout,
        replayed.as_mut().unwrap_or(&mut untouched),
    );
    let mut head = Vec::new();
    let has_metadata = layout.base.is_some() || layout.table.is_some();
    if dirty && layout.journal.is_none() && has_metadata {
        head.push(Problem::DirtyWithoutJournal);
    }
    if !dirty && journal.sectors > 0 {
        head.push(Problem::UnreplayedJournal {
            sectors: journal.sectors,
            records: journal.records,
        });
    }
    head.extend(journal.problems.iter().cloned());
    let state = match (&replayed, dirty) {
        (Some(replayed), true) => replayed,
        _ => &image.disk,
    };

    let table = table_of(image, state).map(scan_table);
    let bitmap = layout.base.map(|b| scan_bitmap(&state.bitmap, b.blocks));
    let corruptions = head.len() as u64
        + table.as_ref().map_or(0, |t| t.corruptions)
        + u64::from(bitmap.as_ref().is_some_and(|b| b.problem.is_some()));

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
        head,
        corruptions,
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

/// Hands every problem `a` found in `image` to `sink`, in report order: the image's and
/// the journal's, the table's (in chunk order), the bitmap's.
pub fn for_each_problem<E>(
    image: &Loaded,
    a: &Analysis,
    sink: &mut dyn FnMut(&Problem) -> Result<(), E>,
) -> Result<(), E> {
    for problem in &a.head {
        sink(problem)?;
    }
    if let Some(table) = table_of(image, a.state(image)) {
        table_problems(table, &mut |problem| sink(&problem))?;
    }
    if let Some(problem) = a.bitmap.as_ref().and_then(|b| b.problem.as_ref()) {
        sink(problem)?;
    }
    Ok(())
}

/// Hands every run `[start, end)` of leaked chunks `a` found in `image` to `sink`.
pub fn for_each_leak<E>(
    image: &Loaded,
    a: &Analysis,
    sink: &mut dyn FnMut(u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    match table_of(image, a.state(image)) {
        Some(table) if a.leaks() > 0 => table_leaks(table, sink),
        _ => Ok(()),
    }
}
