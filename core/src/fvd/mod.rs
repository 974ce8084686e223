//! The FVD on-disk format: the header ([`header`]), its validation into an
//! [`ImageLayout`] ([`mod@validate`]), the bitmap ([`bitmap`]), the chunk table ([`table`]),
//! the journal ([`journal`]) and how its records are laid over the metadata ([`replay`]),
//! and the header and metadata bytes of a new image ([`create`]). Types and pure
//! functions only: no I/O, no allocation.

// Every number here may come from an untrusted file: arithmetic is checked, casts are
// fallible and slices are taken with `get`, so nothing can wrap, truncate or panic.

pub mod bitmap;
pub mod create;
pub mod error;
pub mod header;
pub mod journal;
pub mod replay;
pub mod table;
pub mod validate;

pub use error::{HeaderError, RegionKind};
pub use header::{RawHeader, FVD_MAGIC, FVD_VERSION, RAW_HEADER_LEN};
pub use validate::{parse, validate, BaseLayout, ImageLayout, Region, TableLayout};
