//! The engine on arbitrary image files, opened read-only and read-write and driven with
//! requests from the input, writes included (`fvd_host::testing::fuzz::engine_image`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_host::testing::fuzz::run("engine_image", data));
