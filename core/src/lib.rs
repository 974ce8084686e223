//! `fvd-core`: the FVD (Fast Virtual Disk) and QED image formats without I/O.
//!
//! Layers, each using only the ones before it (docs/ARCHITECTURE.md draws them):
//! - on-disk types and their rules: [`fvd`] (header, bitmap, table, journal, validation,
//!   record replay, the bytes of a new image) and [`qed`] (the same shape), [`units`];
//! - rules every host shows: [`check`] (the consistency check and its repair plan, a
//!   sans-IO scanner), [`info`] (every header field described), [`probe`] (what a file is),
//!   [`report`] (the JSON documents of info, map and check both hosts print), [`resize`]
//!   and [`measure`] (which sizes an image may take, and what a new one needs),
//!   [`partition`] (the MBR or GPT inside a virtual disk), [`zeros`] (which blocks a bulk
//!   copy records as zeros instead of writing);
//! - the sans-IO [`engine`] that turns guest requests into I/O commands, [`chain`] (images
//!   stacked on images) and [`blocking`] (a blocking loop for simple hosts).
//!
//! It never allocates, never blocks, never panics on untrusted bytes and never touches a
//! file: hosts (the std executor and `fvd-img`, the browser inspector, the firmware
//! driver) perform the I/O it asks for.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

/// Declares modules that take numbers straight from untrusted bytes, under stricter lints
/// than the crate's (Cargo.toml): besides never truncating, indexing, unwrapping or
/// panicking, no arithmetic that could wrap (release builds do not check overflow).
/// Tests may do all of these (a failure there is the test failing).
macro_rules! strictly_checked {
    ($($(#[$meta:meta])* pub mod $name:ident;)*) => {
        $(
            $(#[$meta])*
            #[cfg_attr(
                not(test),
                deny(
                    clippy::arithmetic_side_effects,
                    clippy::cast_possible_truncation,
                    clippy::indexing_slicing,
                    clippy::unwrap_used,
                    clippy::expect_used,
                    clippy::panic
                )
            )]
            pub mod $name;
        )*
    };
}

pub mod blocking;
pub mod chain;
pub mod check;
pub mod engine;
pub mod info;
pub mod probe;
pub mod report;

strictly_checked! {
    pub mod fvd;
    pub mod measure;
    pub mod partition;
    pub mod qed;
    pub mod resize;
    pub mod units;
    pub mod zeros;
}
