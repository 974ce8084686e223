//! `fvd-firmware`: the Cortex-M host for `fvd-core`. A block driver ([`OverlayDisk`]) that
//! keeps a read-only factory image (raw, or FVD: [`factory`]) and an FVD overlay on one
//! medium, or the base on another, and is itself an `embedded-sdmmc` block device, so a
//! FAT volume mounts through it; the media it runs on ([`medium`]), a RAM medium with a
//! volatile write cache for power-cut tests ([`ram`]) and, in QEMU, a host file through
//! semihosting (`hostfile`, feature `qemu`). The workloads the self-test ([`selftest`],
//! [`workload`]), the `fat-logger` ([`logger`]) and the footprint binaries ([`footprint`])
//! run live here too, so the host tests run them as well. No allocation, no unsafe code,
//! no format rule: the image's bytes and meaning are core's.
#![no_std]
#![forbid(unsafe_code)]

pub mod check;
pub mod driver;
pub mod factory;
pub mod footprint;
#[cfg(feature = "qemu")]
pub mod hostfile;
pub mod logger;
pub mod medium;
pub mod ram;
pub mod selftest;
pub mod workload;

pub use check::{check, CheckFailure, CheckOutcome};
pub use driver::{
    create, create_over, BaseFormat, BaseSpecOf, DriverError, Geometry, Layout, OverlayDisk,
};
pub use medium::{Extent, Medium, Partition};
