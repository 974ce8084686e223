//! Valid images driven by input-chosen requests, every read compared with a flat model,
//! across close and reopen (`fvd_host::testing::fuzz::model`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_host::testing::fuzz::run("model", data));
