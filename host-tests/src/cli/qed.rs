//! QED images on the host side: opening a file and validating its header with
//! `fvd_core::qed::parse`, reading the backing file name out of the header area, reading
//! whole L1/L2 tables, and staging a new image from a `fvd_core::qed::QedPlan`.

use super::error::CliError;
use super::image::{open_host_file_as, read_at_most, read_exact, HostFile};
use super::writer::{stage_empty, Staged};
use crate::host::lock::Usage;
use fvd_core::qed::{parse, QedHeader, QedHeaderError, QedLayout, QedPlan, QED_HEADER_LEN};
use fvd_core::qed::{table, QED_MAGIC};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A QED image whose header passed validation.
pub struct QedImage {
    /// The path it was opened by.
    pub path: PathBuf,
    /// The open file (read-only).
    pub host: HostFile,
    /// Its header as on disk.
    pub header: QedHeader,
    /// The validated layout.
    pub layout: QedLayout,
    /// The backing file name stored in the header area (raw bytes), if any.
    pub backing_name: Option<Vec<u8>>,
}

impl QedImage {
    /// The backing file name as text, for display (lossy for non-UTF-8 bytes: never use
    /// it to find the file).
    pub fn backing_text(&self) -> Option<String> {
        self.backing_name
            .as_deref()
            .map(|name| String::from_utf8_lossy(name).into_owned())
    }

    /// The backing file name as the path it names, byte for byte.
    pub fn backing_path(&self) -> Option<PathBuf> {
        self.backing_name
            .as_deref()
            .map(|name| PathBuf::from(std::ffi::OsStr::from_bytes(name)))
    }

    /// The backing file's format as the header states it: `raw` with the no-probe bit,
    /// otherwise `None` (probe the file).
    pub fn backing_format(&self) -> Option<&'static str> {
        self.layout
            .backing
            .and_then(|backing| backing.raw.then_some("raw"))
    }
}

/// A QED header error worded to follow "'FILE' is not a valid QED image: ".
pub fn qed_header_reason(err: &QedHeaderError) -> String {
    match *err {
        QedHeaderError::BadMagic { found } => {
            format!("magic is {found:#010x}, expected {QED_MAGIC:#010x} (\"QED\\0\")")
        }
        ref other => other.to_string(),
    }
}

/// Opens `path` (locked as an image being read) and validates its QED header; reads the
/// backing file name.
pub fn open_qed(path: &Path) -> Result<QedImage, CliError> {
    open_qed_as(path, Usage::READ)
}

/// [`open_qed`] with the locks of `usage`.
pub fn open_qed_as(path: &Path, usage: Usage) -> Result<QedImage, CliError> {
    let host = open_host_file_as(path, usage)?;
    let bytes = read_at_most(&host.file, path, 0, QED_HEADER_LEN)?;
    let (header, layout) = parse(&bytes, host.len).map_err(|err| CliError::NotQed {
        path: path.to_path_buf(),
        reason: match super::image::what_it_is(&bytes, fvd_core::probe::Probe::Qed) {
            Some(what) => format!("{what}; {}", qed_header_reason(&err)),
            None => qed_header_reason(&err),
        },
    })?;
    let header = header.clone();
    // The name lies inside the header area, which validation has placed inside the file.
    let backing_name = match layout.backing {
        Some(backing) => {
            let mut name = vec![0u8; backing.name.len as usize];
            read_exact(&host.file, path, backing.name.offset, &mut name)?;
            Some(name)
        }
        None => None,
    };
    Ok(QedImage {
        path: path.to_path_buf(),
        host,
        header,
        layout,
        backing_name,
    })
}

/// Reads the table at `offset` (`layout.table_len` bytes) as raw entries. Bytes past the
/// end of the file read as zeros (callers check the offsets first).
pub fn read_table(image: &QedImage, offset: u64) -> Result<Vec<u64>, CliError> {
    let len = usize::try_from(image.layout.table_len).map_err(|_| {
        CliError::Invalid(format!(
            "'{}': a QED table of {} bytes does not fit in memory",
            image.path.display(),
            image.layout.table_len
        ))
    })?;
    let bytes = read_at_most(&image.host.file, &image.path, offset, len)?;
    let entries = image.layout.table_entries;
    Ok((0..entries)
        .map(|index| table::read_entry(&bytes, index).unwrap_or(0))
        .collect())
}

/// `entries` as the little-endian bytes of a table.
pub fn table_bytes(entries: &[u64]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|entry| entry.to_le_bytes())
        .collect()
}

/// Writes the image `plan` describes into a temporary file beside `target`: the header
/// area (header, backing name, zeros) and an all-zero L1 table (a hole), synced, then
/// read back and validated. Nothing is renamed into place: see [`Staged::commit`].
pub fn stage_qed(target: &Path, plan: &QedPlan<'_>) -> Result<Staged, CliError> {
    let staged = stage_empty(target)?;
    let file = staged.file();
    let header_len = usize::try_from(plan.header_len).map_err(|_| {
        CliError::Invalid(format!(
            "a QED header area of {} bytes does not fit in memory",
            plan.header_len
        ))
    })?;
    let mut head = vec![0u8; header_len];
    if plan.write_header_area(&mut head).is_none() {
        return Err(CliError::Invalid(
            "internal error: the QED header does not fit its header area".into(),
        ));
    }
    file.write_all_at(&head, 0)
        .and_then(|()| file.set_len(plan.file_len))
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::io("write", target, e))?;

    // Self-check: what is on disk must be an image the validator accepts.
    let reread = std::fs::File::open(staged.path()).map_err(|e| CliError::io("read", target, e))?;
    let len = reread
        .metadata()
        .map_err(|e| CliError::io("read", target, e))?
        .len();
    let bytes = read_at_most(&reread, target, 0, QED_HEADER_LEN)?;
    if let Err(err) = parse(&bytes, len) {
        return Err(CliError::Invalid(format!(
            "internal error: the new QED image fails validation: {}",
            qed_header_reason(&err)
        )));
    }
    Ok(staged)
}
