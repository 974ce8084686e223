//! `fvd-img check` and `check -r all` on arbitrary FVD and QED images; a repair never
//! leaves a corruption (`fvd_host::testing::fuzz::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_host::testing::fuzz::run("check", data));
