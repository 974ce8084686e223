//! Why a command failed: one variant per kind of failure, each rendered as the single
//! line `fvd-img` prints after its `fvd-img: ` prefix (qemu-img's wording where it has one).

use crate::host::gate::GateError;
use crate::host::lock::LockError;
use std::io;
use std::path::{Path, PathBuf};

/// Every way an `fvd-img` command can fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is malformed or self-contradictory.
    #[error("{0}")]
    Usage(String),
    /// `-f` names a format this tool does not handle.
    #[error("Unknown file format '{0}'")]
    UnknownFormat(String),
    /// A file could not be opened or measured.
    #[error("Could not open '{}': {}", .path.display(), io_reason(.source))]
    Open {
        /// The path as the user gave it (or as resolved for a base/data file).
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A path exists but is not something an image can live in.
    #[error("Could not open '{}': {reason}", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        reason: &'static str,
    },
    /// The file is not an FVD image, or its header fails validation.
    #[error("'{}' is not an FVD image: {reason}", .path.display())]
    NotFvd {
        /// The file.
        path: PathBuf,
        /// Why, usually a `HeaderError` message.
        reason: String,
    },
    /// The file is not a QED image, or its QED header fails validation.
    #[error("'{}' is not a valid QED image: {reason}", .path.display())]
    NotQed {
        /// The file.
        path: PathBuf,
        /// Why, usually a `QedHeaderError` message.
        reason: String,
    },
    /// `create` was asked to write over an existing file without `--force`.
    #[error("'{}' already exists; use --force to overwrite it", .path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The create options cannot make an image (a `GeometryError` or an option conflict).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file failed part-way.
    #[error("Could not {action} '{}': {}", .path.display(), io_reason(.source))]
    Io {
        /// What was being done ("write", "read", "create", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The base image named with `-b` cannot be used.
    #[error("Could not open backing file: {0}")]
    Backing(Box<CliError>),
    /// Printing the result to stdout failed (e.g. a closed pipe).
    #[error("Could not write output: {}", io_reason(.0))]
    Output(#[source] io::Error),
    /// An operation on an open image failed (the engine's or the host's reason).
    #[error("{0}")]
    Image(String),
    /// The command has already reported its outcome; exit with this status and print
    /// nothing more (`io` after a failed command, `compare` on a difference).
    #[error("exit status {0}")]
    Exit(u8),
    /// The open gate refused a file (one an image names, the same file twice in one
    /// chain, a file another process uses in a conflicting way).
    #[error("{0}")]
    Gate(GateError),
    /// A failure that exits with a status other than 1 (`compare` uses 2 for errors).
    #[error("{source}")]
    WithStatus {
        /// The exit status.
        status: u8,
        /// The failure itself.
        #[source]
        source: Box<CliError>,
    },
}

impl CliError {
    /// The exit status this failure ends the program with.
    pub fn status(&self) -> u8 {
        match self {
            CliError::Exit(status) | CliError::WithStatus { status, .. } => *status,
            _ => super::EXIT_FAILURE,
        }
    }

    /// This failure, exiting with `status` instead of 1.
    pub fn with_status(self, status: u8) -> Self {
        match self {
            CliError::Exit(_) => CliError::Exit(status),
            CliError::WithStatus { source, .. } => CliError::WithStatus { status, source },
            other => CliError::WithStatus {
                status,
                source: Box::new(other),
            },
        }
    }

    /// An [`CliError::Open`] for `path`.
    pub fn open(path: &Path, source: io::Error) -> Self {
        CliError::Open {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An [`CliError::Io`] for `path`.
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        CliError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<GateError> for CliError {
    fn from(err: GateError) -> Self {
        match err {
            // Worded like every other failed open.
            GateError::Io { path, source } => CliError::Open { path, source },
            other => CliError::Gate(other),
        }
    }
}

impl From<LockError> for CliError {
    fn from(err: LockError) -> Self {
        CliError::Gate(GateError::from(err))
    }
}

/// The operating system's message for `err` without Rust's ` (os error N)` suffix, so it
/// reads like qemu-img's `strerror` text ("No such file or directory").
pub fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_suffix_is_dropped() {
        let err = io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&err), "No such file or directory");
        let custom = io::Error::other("short read");
        assert_eq!(io_reason(&custom), "short read");
        let open = CliError::open(Path::new("x.img"), io::Error::from_raw_os_error(2));
        assert_eq!(
            open.to_string(),
            "Could not open 'x.img': No such file or directory"
        );
    }
}
