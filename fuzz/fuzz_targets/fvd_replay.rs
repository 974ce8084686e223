//! FVD images with a dirty journal opened read-only (overlay) and read-write (replay); the
//! two opens must agree (`fvd_host::testing::fuzz::replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_host::testing::fuzz::run("fvd_replay", data));
