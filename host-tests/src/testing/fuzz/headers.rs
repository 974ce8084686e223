//! Targets `fvd_header` and `qed_header`: the header parsers on arbitrary bytes and on
//! valid headers with bytes changed, for any file length. Parse and validate give a
//! layout or a typed error; the QED table index math is total for any offset.

use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};

/// Target `fvd_header`: a mode byte, a u64 file length, then bytes. Even modes parse
/// the bytes as a header of a file of that length; odd modes apply 3-byte edits (a u16
/// position, a byte) to a valid header (compact when bit 1, with a base when bit 2) and
/// parse that.
pub fn fvd_header(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let file_len = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
    let rest = &data[9..];
    if data[0] % 2 == 0 {
        let _ = fvd_core::fvd::parse(rest, file_len);
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
    .expect("valid create options");
    let mut bytes = header.bytes().to_vec();
    for edit in rest.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len();
        bytes[at] = edit[2];
    }
    let _ = fvd_core::fvd::parse(&bytes, file_len);
    let _ = fvd_core::fvd::parse(&bytes, 64 << 20);
}

/// Target `qed_header`: a u64 file length, a u64 guest offset, then the start of a QED
/// file: parse and validate, and the table index math for the offset, must be total.
pub fn qed_header(data: &[u8]) {
    if data.len() < 16 {
        return;
    }
    let file_len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let offset = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    for len in [file_len, data.len() as u64] {
        if let Ok((_, layout)) = fvd_core::qed::parse(&data[16..], len) {
            let _ = layout.index(offset);
            let _ = layout.backing_name(&data[16..]);
            let _ = layout.decode_l1(offset);
            let _ = layout.decode_l2(offset);
        }
    }
}
