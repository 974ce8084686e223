//! `fvd-firmware`: the Cortex-M host for `fvd-core`. Until the firmware issue lands it only
//! proves that the engine builds for `thumbv7em-none-eabihf`.
#![no_std]
#![forbid(unsafe_code)]

/// Length of the FVD header this build understands (a link-time proof that the core is in).
pub fn header_len() -> usize {
    fvd_core::fvd::RAW_HEADER_LEN
}
