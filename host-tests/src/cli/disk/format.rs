//! The formats the data commands handle (`-f`, `-F`, `-O`), given or probed.

use crate::cli::error::CliError;
use crate::cli::image::open_host_file_as;
use crate::cli::image::read_at_most;
use crate::host::lock::Usage;
use fvd_core::probe::{probe, Probe, PROBE_LEN};
use std::path::Path;

/// The formats the data commands handle (`-f`, `-F`, `-O`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// An FVD image.
    Fvd,
    /// A QED image, driven through the same engine as FVD.
    Qed,
    /// A raw disk image: the file's bytes are the guest's.
    Raw,
}

impl DiskFormat {
    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            DiskFormat::Fvd => "fvd",
            DiskFormat::Qed => "qed",
            DiskFormat::Raw => "raw",
        }
    }

    /// Parses a format argument (case-sensitive, like qemu-img).
    pub fn parse(text: &str) -> Result<Self, CliError> {
        match text {
            "fvd" => Ok(DiskFormat::Fvd),
            "qed" => Ok(DiskFormat::Qed),
            "raw" => Ok(DiskFormat::Raw),
            _ => Err(CliError::UnknownFormat(text.to_string())),
        }
    }

    /// FVD or QED when the file starts with that format's magic, raw when it looks like
    /// neither. A file that looks like an FVD or QED image it cannot be opened as (a
    /// damaged magic, the 2011 FVD format) is refused with what it seems to be, so that
    /// it is never read or written as raw data unless `-f raw` says so.
    pub fn probe(path: &Path) -> Result<Self, CliError> {
        // Only the first sector is read; the open that follows takes the locks.
        let host = open_host_file_as(path, Usage::PROBE)?;
        let first = read_at_most(&host.file, path, 0, PROBE_LEN)?;
        match probe(&first) {
            Probe::Fvd => Ok(DiskFormat::Fvd),
            Probe::Qed => Ok(DiskFormat::Qed),
            Probe::Raw => Ok(DiskFormat::Raw),
            seems => Err(CliError::Invalid(format!(
                "'{}' seems to be {seems}; it is not opened as raw data (-f raw forces that)",
                path.display()
            ))),
        }
    }

    /// True for the formats whose guest data goes through the engine (sector-granular
    /// requests), false for raw files.
    pub const fn is_image(self) -> bool {
        !matches!(self, DiskFormat::Raw)
    }

    /// The format `given` on the command line, or probed from `path`.
    pub fn given_or_probed(given: Option<&str>, path: &Path) -> Result<Self, CliError> {
        match given {
            Some(text) => Self::parse(text),
            None => Self::probe(path),
        }
    }
}
