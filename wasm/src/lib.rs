//! `fvd-wasm`: the browser host for `fvd-core`. The page hands it the first bytes of the
//! files a user chose and fulfils every read it asks for from `File.slice`; it shows what
//! core says. Three parts: [`describe`] (what a file is, its header fields and base name,
//! from its first bytes), [`session`] (a read-only chain of engines driven one file read
//! at a time), [`check`] (core's consistency check, driven the same way), [`export`] (the
//! info/map/check JSON documents, the CLI's own), [`partitions`]
//! (the virtual disk's MBR or GPT), [`journal`] (an FVD journal's sectors and records) and
//! [`layout`] (the file's regions to scale). No format rule lives here.
#![forbid(unsafe_code)]

pub mod check;
pub mod describe;
pub mod export;
pub mod journal;
pub mod layout;
pub mod partitions;
pub mod session;

pub use check::{Check, CheckRead};
pub use describe::{base_name, field_at, header_fields, probe_kind, probe_text, Field};
pub use journal::{Journal, JournalRow};
pub use layout::{qed_l2_tables, qed_need_check, regions, RegionRow};
pub use partitions::{PartitionRow, Partitions};
pub use session::{FileRead, Inspector, Run};
