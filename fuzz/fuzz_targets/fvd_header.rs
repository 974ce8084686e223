//! FVD headers: any bytes, and valid headers with bytes changed, for any file length
//! (`fvd_host::testing::fuzz::headers`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_host::testing::fuzz::run("fvd_header", data));
