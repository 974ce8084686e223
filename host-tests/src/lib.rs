//! `fvd-host`: the std host for `fvd-core`.
//!
//! - [`host`]: running the core engine on files — storage, opening files by name through
//!   the gate and the locks, the blocking driver, the threaded executor, fault plans;
//! - [`cli`]: `fvd-img`, qemu-img's habits on top of the host (argument parsing,
//!   presentation, exit codes);
//! - [`testing`]: what the test suites, benchmarks and fuzz targets share (in-memory
//!   storage, workloads, hostile-image generators, fuzz harnesses).
//!
//! Format rules live in `fvd-core`; nothing here decodes a table, a bitmap or a journal.

pub mod bench;
pub mod cli;
pub mod host;
pub mod testing;
