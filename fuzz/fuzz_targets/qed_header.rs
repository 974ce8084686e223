//! Any bytes as the start of a QED image of any length: parse and validate give a layout
//! or a typed error, never a panic; the table index math is total for any offset.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let file_len = u64::from_le_bytes(data[..8].try_into().unwrap());
    let offset = u64::from_le_bytes(data[8..16].try_into().unwrap());
    for len in [file_len, data.len() as u64] {
        if let Ok((_, layout)) = fvd_core::qed::parse(&data[16..], len) {
            let _ = layout.index(offset);
            let _ = layout.backing_name(&data[16..]);
            let _ = layout.decode_l1(offset);
            let _ = layout.decode_l2(offset);
        }
    }
});
