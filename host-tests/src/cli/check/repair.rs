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

use super::analysis::{table_of, Analysis};
use super::load::{Loaded, Metadata};
use super::report::MAX_LISTED;
use super::scan::{clear_stray_bits, scan_bitmap, Problem};
use super::table::{scan_table, table_problems, unmap};
use super::RepairMode;
use crate::cli::error::CliError;
use crate::lock::{FileLock, Usage};
use fvd_core::format::header::mutable_sectors;
use fvd_core::format::journal::{fold_seen, next_epoch, SectorHeader, JOURNAL_SECTOR_SIZE};
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
    /// One line per action, in order (the first [`MAX_LISTED`]; every line also went to
    /// the caller's sink as it was made).
    pub lines: Vec<String>,
    /// Lines made past [`MAX_LISTED`].
    pub lines_omitted: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaked chunks released.
    pub leaks_fixed: u64,
    /// Why nothing was repaired, when that was refused.
    pub refused: Option<String>,
}

impl Outcome {
    /// Lines made in all.
    pub fn line_count(&self) -> u64 {
        self.lines.len() as u64 + self.lines_omitted
    }
}

/// Where a repair's lines go as they are made: the caller's sink, and a bounded list in
/// the outcome.
struct Lines<'a> {
    outcome: Outcome,
    sink: &'a mut dyn FnMut(&str) -> Result<(), CliError>,
}

impl Lines<'_> {
    fn push(&mut self, line: String) -> Result<(), CliError> {
        (self.sink)(&line)?;
        if self.outcome.lines.len() < MAX_LISTED {
            self.outcome.lines.push(line);
        } else {
            self.outcome.lines_omitted += 1;
        }
        Ok(())
    }
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

/// The `-r all` fixes of `state` applied to `fixed` (corrupt table entries unmapped, stray
/// bitmap bits cleared); returns how many corruptions they repair.
fn fix_structure(image: &Loaded, state: &Metadata, fixed: &mut Metadata) -> u64 {
    let mut count = 0;
    if let Some(table) = table_of(image, state) {
        let _ = table_problems::<()>(table, &mut |problem| {
            if let Some(chunk) = problem_chunk(&problem) {
                unmap(&mut fixed.table, chunk);
                count += 1;
            }
            Ok(())
        });
    }
    if let Some(base) = image.layout.base {
        if scan_bitmap(&state.bitmap, base.blocks).problem.is_some() {
            clear_stray_bits(&mut fixed.bitmap, base.blocks);
            count += 1;
        }
    }
    count
}

/// The chunk a table problem is about.
fn problem_chunk(problem: &Problem) -> Option<u64> {
    match problem {
        Problem::DirtyEntry { chunk, .. }
        | Problem::BeyondStorage { chunk, .. }
        | Problem::SharedChunk { chunk, .. } => Some(*chunk),
        _ => None,
    }
}

/// Describes the `-r all` fixes of `state` (what [`fix_structure`] did) line by line.
fn describe_fixes(image: &Loaded, state: &Metadata, lines: &mut Lines<'_>) -> Result<(), CliError> {
    if let Some(table) = table_of(image, state) {
        table_problems(table, &mut |problem| match problem_chunk(&problem) {
            Some(chunk) => lines.push(format!(
                "Repairing chunk {chunk}: unmapped, its data is lost ({problem})"
            )),
            None => Ok(()),
        })?;
    }
    if let Some(base) = image.layout.base {
        if let Some(problem) = scan_bitmap(&state.bitmap, base.blocks).problem {
            lines.push(format!(
                "Repairing the bitmap: cleared the stray bits ({problem})"
            ))?;
        }
    }
    Ok(())
}

/// Why `-r leaks` does nothing to an image with corruptions, if it does not.
pub fn refusal(first: &Analysis, mode: RepairMode) -> Option<String> {
    (mode == RepairMode::Leaks && first.corruptions > 0)
        .then(|| "Leaks were not repaired because the image has errors; -r all repairs both".into())
}

/// A repair worked out in memory, before anything is written.
pub struct Plan {
    mode: RepairMode,
    fixed: Metadata,
    structure_fixes: u64,
    truncate_to: Option<u64>,
    needs_write: bool,
}

impl Plan {
    /// True when the repair has anything to say or do (then the first check's findings
    /// are shown before its lines).
    pub fn has_actions(&self, first: &Analysis) -> bool {
        (first.dirty && first.journal.applied > 0)
            || !first.head.is_empty()
            || self.structure_fixes > 0
            || self.truncate_to.is_some()
            || (first.dirty && self.needs_write)
    }
}

/// Works out the repair of `image` as `first` found it, without writing (the caller has
/// checked [`refusal`]).
pub fn plan(image: &Loaded, first: &Analysis, mode: RepairMode) -> Plan {
    let layout = &image.layout;
    let replayed = first.replayed(image);
    let mut fixed = replayed.clone();
    let structure_fixes = if mode == RepairMode::All {
        fix_structure(image, replayed, &mut fixed)
    } else {
        0
    };
    let truncate_to = table_of(image, &fixed).and_then(|table| {
        let frontier = scan_table(table).frontier;
        let end = layout.data_offset + frontier * table.chunk_size;
        (image.storage.regular && image.storage.len > end).then_some(end)
    });
    let needs_write = first.dirty
        || first.journal.sectors > 0
        || !first.head.is_empty()
        || structure_fixes > 0
        || *replayed != image.disk
        || fixed != *replayed
        || truncate_to.is_some();
    Plan {
        mode,
        fixed,
        structure_fixes,
        truncate_to,
        needs_write,
    }
}

/// Carries out `plan` on `image` as `first` found it, handing each line to `sink` as it
/// is made.
pub fn repair(
    image: &Loaded,
    first: &Analysis,
    plan: Plan,
    sink: &mut dyn FnMut(&str) -> Result<(), CliError>,
) -> Result<Outcome, CliError> {
    let mut lines = Lines {
        outcome: Outcome::default(),
        sink,
    };
    let layout = &image.layout;
    let path = image.path.as_path();
    // The new epoch lies above every intact sector in the journal, so moving on never
    // makes a sector current that the old epoch ignored.
    let highest_seen = image
        .journal
        .chunks_exact(JOURNAL_SECTOR_SIZE)
        .filter_map(SectorHeader::intact_epoch)
        .fold(0, fold_seen);
    let epoch = next_epoch(layout.stable_journal_epoch, highest_seen);
    if plan.needs_write && epoch.is_none() {
        // Writing would leave a header whose epoch validation refuses: write nothing.
        let refused = format!(
            "Nothing was repaired: stable_journal_epoch {} leaves no room to move the \
             journal epoch on",
            layout.stable_journal_epoch
        );
        lines.push(refused.clone())?;
        lines.outcome.refused = Some(refused);
        return Ok(lines.outcome);
    }

    // What the repair starts from: the metadata with every good journal record applied.
    let replayed = first.replayed(image);
    if first.dirty && first.journal.applied > 0 {
        lines.push(format!(
            "Replaying {} journal record(s) from {} sector(s)",
            first.journal.applied, first.journal.sectors
        ))?;
    }
    for problem in &first.head {
        let action = match problem {
            Problem::UnreplayedJournal { .. } => "replayed them",
            Problem::DirtyWithoutJournal => {
                "the checked metadata is kept and the image marked clean"
            }
            _ => "dropped the record",
        };
        lines.outcome.corruptions_fixed += 1;
        lines.push(format!("Repairing {problem}: {action}"))?;
    }
    if plan.mode == RepairMode::All {
        describe_fixes(image, replayed, &mut lines)?;
        lines.outcome.corruptions_fixed += plan.structure_fixes;
    }
    let (true, Some(epoch)) = (plan.needs_write, epoch) else {
        return Ok(lines.outcome);
    };
    let fixed = &plan.fixed;

    let file = open_writable(path, "image")?;
    let mut header = image.header.bytes().to_vec();
    // 1. Replay.
    write_metadata(&file, image, &image.disk, replayed)?;
    // 2. Dirty, with a new epoch: the journal is now stale.
    write_state(&file, path, &mut header, false, epoch)?;
    // 3. Fixes.
    write_metadata(&file, image, replayed, fixed)?;
    // 4. Release the storage past the last mapped chunk.
    if let Some(end) = plan.truncate_to {
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
        lines.push(format!(
            "Released {} bytes of data storage past the last mapped chunk ('{}' is now {end} bytes)",
            storage.len - end,
            storage.path.display()
        ))?;
    }
    // 5. Clean.
    write_state(&file, path, &mut header, true, epoch)?;
    if first.dirty {
        lines.push("Marked the image clean".into())?;
    }
    Ok(lines.outcome)
}
