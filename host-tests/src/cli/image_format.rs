//! The image formats `fvd-img` can create, inspect and check (`-f`), by their qemu-img
//! names, and probing a file's format by its magic.
//! Adding a format means adding a variant here and an arm in each subcommand's dispatch.

use super::error::CliError;
use super::image::{open_host_file_as, read_at_most};
use crate::host::lock::Usage;
use fvd_core::probe::{probe, Probe, PROBE_LEN};
use std::path::Path;

/// A format `-f` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Fast Virtual Disk.
    Fvd,
    /// QEMU Enhanced Disk.
    Qed,
}

impl ImageFormat {
    /// Every supported format.
    pub const ALL: [ImageFormat; 2] = [ImageFormat::Fvd, ImageFormat::Qed];

    /// The name qemu-img and the header use.
    pub const fn name(self) -> &'static str {
        match self {
            ImageFormat::Fvd => "fvd",
            ImageFormat::Qed => "qed",
        }
    }

    /// Parses a `-f` argument (case-sensitive, like qemu-img).
    pub fn parse(text: &str) -> Result<Self, CliError> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == text)
            .ok_or_else(|| CliError::UnknownFormat(text.to_string()))
    }

    /// The format `path` is, or looks like (a damaged QED header is QED, so that its
    /// header check explains what is wrong), if any.
    pub fn probe(path: &Path) -> Result<Option<Self>, CliError> {
        // Only the first sector is read; the open that follows takes the locks.
        let host = open_host_file_as(path, Usage::PROBE)?;
        let first = read_at_most(&host.file, path, 0, PROBE_LEN)?;
        Ok(match probe(&first) {
            Probe::Fvd | Probe::Fvd2011 | Probe::DamagedFvd { .. } => Some(ImageFormat::Fvd),
            Probe::Qed | Probe::DamagedQed { .. } => Some(ImageFormat::Qed),
            // Another format's container is named, not checked as a broken FVD header.
            foreign @ Probe::Foreign(_) => {
                return Err(CliError::Invalid(format!(
                    "'{}' is {foreign}",
                    path.display()
                )))
            }
            _ => None,
        })
    }

    /// The format `given` with `-f`, or probed from `path`'s magic. A file with neither
    /// magic is taken as FVD, so that the header check explains what is wrong with it.
    pub fn given_or_probed(given: Option<&str>, path: &Path) -> Result<Self, CliError> {
        match given {
            Some(text) => Self::parse(text),
            None => Ok(Self::probe(path)?.unwrap_or(ImageFormat::Fvd)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(ImageFormat::parse("fvd").unwrap(), ImageFormat::Fvd);
        assert_eq!(
            ImageFormat::parse("qcow2").unwrap_err().to_string(),
            "Unknown file format 'qcow2'"
        );
        assert_eq!(ImageFormat::parse("qed").unwrap(), ImageFormat::Qed);
        assert!(ImageFormat::parse("FVD").is_err());
    }
}
