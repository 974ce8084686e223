//! FVD headers: any bytes, and valid headers with fuzzer-chosen bytes changed (so every
//! validation rule is reached), for any file length. Parse and validate give a layout or
//! a typed error, never a panic.
#![no_main]

use fvd_core::geometry::{plan, BaseSpec, CreateOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let file_len = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let rest = &data[9..];
    if data[0] % 2 == 0 {
        let _ = fvd_core::format::parse(rest, file_len);
        return;
    }
    let header = plan(&CreateOptions {
        virtual_size: 1 << 30,
        compact_image: data[0] & 2 != 0,
        base: (data[0] & 4 != 0).then_some(BaseSpec {
            name: b"base",
            format: b"raw",
            size: 1 << 29,
        }),
        ..Default::default()
    })
    .unwrap();
    let mut bytes = header.bytes().to_vec();
    // Pairs (little-endian u16 position, byte) overwrite the valid header.
    for edit in rest.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len();
        bytes[at] = edit[2];
    }
    let _ = fvd_core::format::parse(&bytes, file_len);
    let _ = fvd_core::format::parse(&bytes, 64 << 20);
});
