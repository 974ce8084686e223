//! `fvd-host`: the std host for `fvd-core`.

pub mod chain;
pub mod cli;
pub mod driver;
pub mod files;
pub mod memstore;
pub mod newimage;
pub mod storage;
