//! `check -r`: repairs written with plain positioned writes, ordered so that a crash at any
//! point leaves an image the engine opens correctly.
//!
//! 1. Replay: the good journal records are written back to the bitmap and table regions
//!    and flushed, while the header still names the journal's epoch (a crash here replays
//!    the same records again, which is idempotent).
//! 2. The header is marked dirty with the epoch moved on (sector 4, flushed): the journal
//!    is now stale, and bad records in it are dropped.
//! 3. Fixes (`-r all`): corrupt table entries are unmapped, stray bitmap bits cleared; the
//!    changed pages are written and flushed.
//! 4. A compact image's data storage is truncated to the end of its last mapped chunk.
//! 5. The header is marked clean (sector 4, flushed).

use super::analysis::Analysis;
use super::load::{Loaded, Metadata};
use super::scan::{clear_stray_bits, scan_bitmap, scan_table, unmap, Problem};
use super::RepairMode;
use crate::cli::error::CliError;
use crate::lock::{FileLock, Usage};
use fvd_core::format::header::mutable_sectors;
use fvd_core::format::journal::{next_epoch, SectorHeader, JOURNAL_SECTOR_SIZE};
use fvd_core::format::RawHeader;
use fvd_core::units::PAGE_SIZE;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::offset_of;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a repair did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// One line per action, in order.
    pub lines: Vec<String>,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaked chunks released.
    pub leaks_fixed: u64,
    /// Why nothing was repaired, when that was refused.
    pub refused: Option<String>,
}

/// Whether `err` means the file cannot be written (as opposed to not found, ...).
fn is_read_only(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied || err.raw_os_error() == Some(libc::EROFS)
}

/// A file opened for repairs, locked for writing while it lives.
pub struct Writable {
    file: File,
    _lock: FileLock,
}

impl std::ops::Deref for Writable {
    type Target = File;

    fn deref(&self) -> &File {
        &self.file
    }
}

/// Opens `path` for writing, refusing read-only files (by permission bits too, which root
/// would otherwise override) with a clear message, and files another process uses.
pub fn open_writable(path: &Path, what: &str) -> Result<Writable, CliError> {
    let read_only = |reason: String| {
        CliError::Invalid(format!(
            "Cannot repair '{}': the {what} is read-only ({reason})",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| CliError::open(path, e))?;
    if meta.permissions().readonly() {
        return Err(read_only("no write permission".into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            if is_read_only(&e) {
                read_only(crate::cli::error::io_reason(&e))
            } else {
                CliError::open(path, e)
            }
        })?;
    let lock = FileLock::acquire(&file, path, Usage::WRITE)?;
    Ok(Writable { file, _lock: lock })
}

fn sync(file: &File, path: &Path) -> Result<(), CliError> {
    file.sync_data().map_err(|e| CliError::io("sync", path, e))
}

/// Writes the pages of a region that differ between `old` and `new`; true if any did.
fn write_changed_pages(
    file: &File,
    path: &Path,
    offset: u64,
    old: &[u8],
    new: &[u8],
) -> Result<bool, CliError> {
    let page = PAGE_SIZE as usize;
    let mut wrote = false;
    for (index, (a, b)) in old.chunks(page).zip(new.chunks(page)).enumerate() {
        if a != b {
            file.write_all_at(b, offset + (index * page) as u64)
                .map_err(|e| CliError::io("write", path, e))?;
            wrote = true;
        }
    }
    Ok(wrote)
}

/// Writes the table and bitmap pages that differ between `old` and `new`, then flushes.
fn write_metadata(
    file: &File,
    image: &Loaded,
    old: &Metadata,
    new: &Metadata,
) -> Result<(), CliError> {
    let path = image.path.as_path();
    let mut wrote = false;
    if let Some(table) = image.layout.table {
        wrote |= write_changed_pages(file, path, table.region.offset, &old.table, &new.table)?;
    }
    if let Some(base) = image.layout.base {
        wrote |= write_changed_pages(file, path, base.bitmap.offset, &old.bitmap, &new.bitmap)?;
    }
    if wrote {
        sync(file, path)?;
    }
    Ok(())
}

/// Sets `clean_shutdown` and `stable_journal_epoch` in the header bytes `header`, writes
/// header sector 4 (which holds both) and flushes.
fn write_state(
    file: &File,
    path: &Path,
    header: &mut [u8],
    clean: bool,
    epoch: u64,
) -> Result<(), CliError> {
    let flag = offset_of!(RawHeader, clean_shutdown);
    header[flag..flag + 4].copy_from_slice(&u32::from(clean).to_le_bytes());
    let at = offset_of!(RawHeader, stable_journal_epoch);
    header[at..at + 8].copy_from_slice(&epoch.to_le_bytes());
    let sector = mutable_sectors::SHUTDOWN_AND_EPOCH * 512;
    file.write_all_at(&header[sector..sector + 512], sector as u64)
        .map_err(|e| CliError::io("write", path, e))?;
    sync(file, path)
}

/// Computes the `-r all` fixes of `state` into `fixed`, describing each in `outcome`.
fn fix_structure(image: &Loaded, state: &Metadata, fixed: &mut Metadata, outcome: &mut Outcome) {
    let layout = &image.layout;
    if let Some(t) = layout.table {
        let scan = scan_table(
            &state.table,
            t.chunks,
            t.chunk_size,
            layout.data_offset,
            image.storage.len,
        );
        for problem in &scan.problems {
            let chunk = match problem {
                Problem::DirtyEntry { chunk, .. }
                | Problem::BeyondStorage { chunk, .. }
                | Problem::SharedChunk { chunk, .. } => *chunk,
                _ => continue,
            };
            unmap(&mut fixed.table, chunk);
            outcome.corruptions_fixed += 1;
            outcome.lines.push(format!(
                "Repairing chunk {chunk}: unmapped, its data is lost ({problem})"
            ));
        }
    }
    if let Some(base) = layout.base {
        if let Some(problem) = scan_bitmap(&state.bitmap, base.blocks).problem {
            clear_stray_bits(&mut fixed.bitmap, base.blocks);
            outcome.corruptions_fixed += 1;
            outcome.lines.push(format!(
                "Repairing the bitmap: cleared the stray bits ({problem})"
            ));
        }
    }
}

/// Repairs `image` as `first` found it.
pub fn repair(image: &Loaded, first: &Analysis, mode: RepairMode) -> Result<Outcome, CliError> {
    let mut outcome = Outcome::default();
    if mode == RepairMode::Leaks && !first.problems.is_empty() {
        outcome.refused = Some(
            "Leaks were not repaired because the image has errors; -r all repairs both".into(),
        );
        return Ok(outcome);
    }
    let layout = &image.layout;
    let path = image.path.as_path();

    // What the repair starts from: the metadata with every good journal record applied.
    let replayed = first.replayed.clone();
    if first.dirty && first.journal.applied > 0 {
        outcome.lines.push(format!(
            "Replaying {} journal record(s) from {} sector(s)",
            first.journal.applied, first.journal.sectors
        ));
    }
    for problem in first.problems.iter() {
        let action = match problem {
            Problem::UnreplayedJournal { .. } => "replayed them",
            Problem::DirtyWithoutJournal => {
                "the checked metadata is kept and the image marked clean"
            }
            p if p.in_journal() => "dropped the record",
            _ => continue,
        };
        outcome.corruptions_fixed += 1;
        outcome.lines.push(format!("Repairing {problem}: {action}"));
    }

    let mut fixed = replayed.clone();
    if mode == RepairMode::All {
        fix_structure(image, &replayed, &mut fixed, &mut outcome);
    }

    let truncate_to = layout.table.and_then(|t| {
        let frontier = scan_table(
            &fixed.table,
            t.chunks,
            t.chunk_size,
            layout.data_offset,
            image.storage.len,
        )
        .frontier;
        let end = layout.data_offset + frontier * t.chunk_size;
        (image.storage.regular && image.storage.len > end).then_some(end)
    });

    let needs_write = first.dirty
        || first.journal.sectors > 0
        || outcome.corruptions_fixed > 0
        || replayed != image.disk
        || fixed != replayed
        || truncate_to.is_some();
    if !needs_write {
        return Ok(outcome);
    }

    let file = open_writable(path, "image")?;
    let mut header = image.header.bytes().to_vec();
    // The new epoch lies above every intact sector in the journal, so moving on never
    // makes a sector current that the old epoch ignored.
    let highest_seen = image
        .journal
        .chunks_exact(JOURNAL_SECTOR_SIZE)
        .filter_map(SectorHeader::intact_epoch)
        .max()
        .unwrap_or(0);
    let epoch = next_epoch(layout.stable_journal_epoch, highest_seen);
    // 1. Replay.
    write_metadata(&file, image, &image.disk, &replayed)?;
    // 2. Dirty, with a new epoch: the journal is now stale.
    write_state(&file, path, &mut header, false, epoch)?;
    // 3. Fixes.
    write_metadata(&file, image, &replayed, &fixed)?;
    // 4. Release the storage past the last mapped chunk.
    if let Some(end) = truncate_to {
        let storage = &image.storage;
        let data;
        let target = if storage.separate {
            data = open_writable(&storage.path, "data file")?;
            &data
        } else {
            &file
        };
        target
            .set_len(end)
            .and_then(|()| target.sync_all())
            .map_err(|e| CliError::io("truncate", &storage.path, e))?;
        outcome.lines.push(format!(
            "Released {} bytes of data storage past the last mapped chunk ('{}' is now {end} bytes)",
            storage.len - end,
            storage.path.display()
        ));
    }
    // 5. Clean.
    write_state(&file, path, &mut header, true, epoch)?;
    if first.dirty {
        outcome.lines.push("Marked the image clean".into());
    }
    Ok(outcome)
}
