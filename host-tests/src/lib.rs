//! `fvd-host`: the std host for `fvd-core`.

pub mod chain;
pub mod cli;
pub mod driver;
pub mod error;
pub mod executor;
pub mod faults;
pub mod files;
pub mod fuzz;
pub mod gate;
pub mod lock;
pub mod malformed;
pub mod memstore;
pub mod newimage;
pub mod storage;
pub mod workload;
