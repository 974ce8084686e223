//! What the browser inspector does: a read-only open over a base, a map of the whole disk
//! and sampled reads that must match it (`fvd_host::testing::fuzz::inspect`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_host::testing::fuzz::run("inspect", data));
