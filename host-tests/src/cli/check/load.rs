//! Reading everything `check` looks at into memory, with plain std I/O and no engine: the
//! header (validated), the bitmap, table and journal regions whole, and the length of the
//! data storage (the image file, or the separate data file the header names).

use crate::cli::base::resolve;
use crate::cli::error::CliError;
use crate::cli::image::{measure_data_file, name_path, open_fvd_as, read_exact};
use crate::gate::OpenGate;
use fvd_core::format::{ImageLayout, RawHeader, Region};
use std::path::{Path, PathBuf};

/// The file guest data lives in.
#[derive(Clone, Debug)]
pub struct DataStorage {
    /// Its path (the image itself when there is no separate data file).
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// A regular file (which can be truncated), not a block device.
    pub regular: bool,
    /// A separate data file rather than the image file.
    pub separate: bool,
}

/// The bitmap and table bytes of an image, whole regions (empty when absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The table region.
    pub table: Vec<u8>,
    /// The bitmap region.
    pub bitmap: Vec<u8>,
}

/// An image read into memory.
pub struct Loaded {
    /// The image path as given.
    pub path: PathBuf,
    /// The header as on disk.
    pub header: RawHeader,
    /// Its validated layout.
    pub layout: ImageLayout,
    /// Length of the image file.
    pub image_len: u64,
    /// The data storage.
    pub storage: DataStorage,
    /// The bitmap and table as on disk.
    pub disk: Metadata,
    /// The journal region.
    pub journal: Vec<u8>,
}

fn read_region(
    file: &std::fs::File,
    path: &Path,
    region: Option<Region>,
) -> Result<Vec<u8>, CliError> {
    let Some(region) = region else {
        return Ok(Vec::new());
    };
    let len = usize::try_from(region.len).map_err(|_| {
        CliError::Invalid(format!(
            "'{}': a metadata region of {} bytes does not fit in memory",
            path.display(),
            region.len
        ))
    })?;
    let mut bytes = vec![0u8; len];
    read_exact(file, path, region.offset, &mut bytes)?;
    Ok(bytes)
}

/// Opens the image at `path`, validates its header and reads its metadata and the length
/// of its data storage (measured through `gate`).
pub fn load(path: &Path, gate: &OpenGate) -> Result<Loaded, CliError> {
    let image = open_fvd_as(path, gate.image_usage(false)?)?;
    let layout = image.layout;
    let file = &image.host.file;
    let table = read_region(file, path, layout.table.map(|t| t.region))?;
    let bitmap = read_region(file, path, layout.base.map(|b| b.bitmap))?;
    let journal = read_region(file, path, layout.journal)?;
    let storage = if layout.separate_data_file {
        let name = name_path(&image.header.data_file);
        let data_path = resolve(path, &name);
        let data = measure_data_file(&image, &name, gate)?;
        let regular = std::fs::metadata(&data_path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        DataStorage {
            path: data_path,
            len: data.len,
            regular,
            separate: true,
        }
    } else {
        let regular = std::fs::metadata(path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        DataStorage {
            path: path.to_path_buf(),
            len: image.host.len,
            regular,
            separate: false,
        }
    };
    Ok(Loaded {
        path: path.to_path_buf(),
        header: image.header.clone(),
        layout,
        image_len: image.host.len,
        storage,
        disk: Metadata { table, bitmap },
        journal,
    })
}
