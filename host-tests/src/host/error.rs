//! The one error type of the std hosts: the synchronous driver, the concurrent executor
//! and the file openers report the engine's typed errors, the operating system's reason
//! when a storage command failed, and the host's own failures through [`HostError`].

use crate::host::files::ImageOpenError;
use fvd_core::engine::{OpenError, RequestError, SubmitError};
use std::io;
use std::path::PathBuf;

/// What can go wrong driving an image on a std host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The image's files could not be opened (named by a header, locked, refused by the
    /// open gate).
    #[error(transparent)]
    Files(#[from] Box<ImageOpenError>),
    /// The engine refused the image.
    #[error("{0}")]
    Open(OpenError),
    /// The engine refused the image at `path`.
    #[error("Could not open '{path}': {source}")]
    Engine {
        /// The image.
        path: PathBuf,
        /// Why.
        source: OpenError,
    },
    /// Opening failed because a command on the storage did.
    #[error("{error}: {}", crate::cli::error::io_reason(.source))]
    OpenIo {
        /// The engine's error.
        error: OpenError,
        /// The storage's failure.
        source: io::Error,
    },
    /// A request was refused.
    #[error("{0}")]
    Submit(#[from] SubmitError),
    /// A request failed.
    #[error("{0}")]
    Request(#[from] RequestError),
    /// A request failed because a command on the storage did: the operating system's
    /// reason (e.g. "File too large") rather than the engine's bare "I/O error".
    #[error("{}", crate::cli::error::io_reason(.source))]
    RequestIo {
        /// The engine's error.
        error: RequestError,
        /// The storage's failure.
        source: io::Error,
    },
    /// The host's storage failed outside a command.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The engine stopped making progress (a bug).
    #[error("engine stalled with {0} requests in flight and no command to run")]
    Stalled(usize),
    /// The images of a chain cannot be stacked (a loop, too many).
    #[error("{0}")]
    Chain(fvd_core::chain::ChainError),
    /// A read or write buffer whose length differs from the request's.
    #[error("a request of {len} bytes came with a buffer of {buffer} bytes")]
    BufferLength {
        /// Request length.
        len: u64,
        /// Buffer length.
        buffer: usize,
    },
    /// The worker threads are gone.
    #[error("the I/O worker threads stopped")]
    WorkersGone,
}
