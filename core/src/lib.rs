//! `fvd-core`: the FVD (Fast Virtual Disk) image format without I/O.
//!
//! This crate owns the on-disk types ([`format`]), the pure layout computation used by
//! `create` ([`geometry`]), the QED on-disk format ([`qed`]), format probing ([`probe`]), and the sans-IO engine that
//! turns guest requests into I/O commands. It never allocates, never blocks, never panics
//! on untrusted bytes and never touches a file: hosts (the std executor, the browser
//! inspector, the firmware driver) perform the I/O it asks for.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod blocking;
pub mod chain;
pub mod check;
pub mod engine;
pub mod format;
pub mod geometry;
pub mod info;
pub mod probe;
pub mod qed;
pub mod units;
