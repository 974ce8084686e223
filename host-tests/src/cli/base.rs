//! The base (backing) image of a new image: resolving its name against the new image's
//! directory (qemu-img semantics), finding its format (`-F`, or probed from its first
//! bytes) and measuring the guest size it provides.

use super::error::CliError;
use super::image::{header_reason, open_host_file_as, read_at_most};
use super::qed::qed_header_reason;
use crate::host::lock::Usage;
use fvd_core::fvd::{parse, RAW_HEADER_LEN};
use fvd_core::probe::{probe, Probe};
use std::path::{Path, PathBuf};

/// A format a base image may have (the names `base_img_fmt` allows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseFormat {
    /// A raw disk image: its length is its size.
    Raw,
    /// An FVD image: its header gives its size.
    Fvd,
    /// A QED image: its header gives its size.
    Qed,
}

impl BaseFormat {
    /// Every base format.
    pub const ALL: [BaseFormat; 3] = [BaseFormat::Raw, BaseFormat::Fvd, BaseFormat::Qed];

    /// The name stored in `base_img_fmt`.
    pub const fn name(self) -> &'static str {
        match self {
            BaseFormat::Raw => "raw",
            BaseFormat::Fvd => "fvd",
            BaseFormat::Qed => "qed",
        }
    }

    /// Parses a `-F` / `backing_fmt` value.
    pub fn parse(text: &str) -> Result<Self, CliError> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == text)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "Unknown backing file format '{text}' (use raw, fvd or qed)"
                ))
            })
    }
}

/// A base image that has been opened and measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The name as given, which the new header stores.
    pub name: PathBuf,
    /// Where that name leads from the new image's directory.
    pub path: PathBuf,
    /// Its format (given or probed).
    pub format: BaseFormat,
    /// Its virtual size in bytes.
    pub size: u64,
}

/// Where base (or data file) `name` of the image at `image` lives: `name` itself when
/// absolute, otherwise `name` relative to the directory holding `image`.
pub fn resolve(image: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() {
        return name.to_path_buf();
    }
    match image.parent() {
        Some(dir) => dir.join(name),
        None => name.to_path_buf(),
    }
}

/// Opens base `name` of a new image at `image` and measures it. `format` forces the
/// format; `None` probes the magic (FVD, QED, otherwise raw).
pub fn inspect(image: &Path, name: &Path, format: Option<BaseFormat>) -> Result<Base, CliError> {
    let backing = |err| CliError::Backing(Box::new(err));
    let path = resolve(image, name);
    // Only the size is read: like qemu-img create, sharing everything (-U).
    let host = open_host_file_as(&path, Usage::FORCE_SHARE).map_err(backing)?;
    let prefix = read_at_most(&host.file, &path, 0, RAW_HEADER_LEN).map_err(backing)?;
    let format = match format {
        Some(given) => given,
        None => match probe(&prefix) {
            Probe::Fvd => BaseFormat::Fvd,
            Probe::Qed => BaseFormat::Qed,
            Probe::Raw => BaseFormat::Raw,
            // Another format's container (or a damaged image) is not recorded as a raw
            // base: its readers would take the container for the guest's data.
            seems => {
                return Err(backing(CliError::Invalid(format!(
                    "'{}' seems to be {seems}; it is not used as a raw base unless -F raw \
                     says so",
                    path.display()
                ))))
            }
        },
    };
    let size = match format {
        BaseFormat::Raw => host.len,
        BaseFormat::Fvd => {
            parse(&prefix, host.len)
                .map_err(|err| {
                    backing(CliError::NotFvd {
                        path: path.clone(),
                        reason: header_reason(&err),
                    })
                })?
                .1
                .virtual_size
        }
        BaseFormat::Qed => {
            fvd_core::qed::parse(&prefix, host.len)
                .map_err(|err| {
                    backing(CliError::NotQed {
                        path: path.clone(),
                        reason: qed_header_reason(&err),
                    })
                })?
                .1
                .image_size
        }
    };
    Ok(Base {
        name: name.to_path_buf(),
        path,
        format,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_resolve_against_the_image_directory() {
        let image = Path::new("/images/vm/disk.fvd");
        assert_eq!(
            resolve(image, Path::new("base.raw")),
            Path::new("/images/vm/base.raw")
        );
        assert_eq!(
            resolve(image, Path::new("../b.raw")),
            Path::new("/images/vm/../b.raw")
        );
        assert_eq!(
            resolve(image, Path::new("/abs/b.raw")),
            Path::new("/abs/b.raw")
        );
        assert_eq!(
            resolve(Path::new("disk.fvd"), Path::new("b.raw")),
            Path::new("b.raw")
        );
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!(BaseFormat::parse("raw").unwrap(), BaseFormat::Raw);
        assert_eq!(BaseFormat::parse("fvd").unwrap(), BaseFormat::Fvd);
        assert_eq!(BaseFormat::parse("qed").unwrap(), BaseFormat::Qed);
        assert!(BaseFormat::parse("vmdk").is_err());
    }
}
