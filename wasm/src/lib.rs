//! `fvd-wasm`: the browser host for `fvd-core`. Until the browser issue lands it only
//! proves that the engine builds for `wasm32-unknown-unknown`.
#![forbid(unsafe_code)]

/// Length of the FVD header this build understands (a link-time proof that the core is in).
pub fn header_len() -> usize {
    fvd_core::fvd::RAW_HEADER_LEN
}
