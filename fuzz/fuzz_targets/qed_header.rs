//! QED headers: any bytes as the start of a QED file of any length, and the table index
//! math for any offset (`fvd_host::testing::fuzz::headers`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_host::testing::fuzz::run("qed_header", data));
