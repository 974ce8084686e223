//! The QED (QEMU Enhanced Disk) on-disk format: the header ([`header`]), its validation
//! into a [`QedLayout`] ([`mod@validate`]), L1/L2 table entries and index math ([`table`]),
//! and the layout `qemu-img create -f qed` writes ([`create`]). Types and pure functions
//! only: no I/O, no allocation.
//!
//! A QED file is a sequence of clusters: the header area (`header_size` clusters, the
//! 64-byte header first), the L1 table, then L2 tables and data clusters appended as they
//! are allocated. docs/interop/qed_spec in the QEMU tree is the reference.

// Every number here may come from an untrusted file: arithmetic is checked, casts are
// fallible and slices are taken with `get`, so nothing can wrap, truncate or panic.

pub mod create;
pub mod error;
pub mod header;
pub mod table;
pub mod validate;

pub use create::{plan, rebased_header, QedBacking, QedCreateError, QedCreateOptions, QedPlan};
pub use error::QedHeaderError;
pub use header::{features, probe, QedHeader, QED_HEADER_LEN, QED_MAGIC};
pub use table::{L1Entry, L2Entry, TableIndex};
pub use validate::{parse, validate, BackingFile, QedLayout};
