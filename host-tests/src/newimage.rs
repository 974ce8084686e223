//! The bytes of a freshly created image's metadata: header padded to `header_size`,
//! bitmap zeroed, table filled with EMPTY entries, journal zeroed. The data region is left
//! to grow (sparse).

use fvd_core::format::RawHeader;
use fvd_core::geometry::metadata_len;

/// The first `metadata_len(header)` bytes of a new image described by `header`.
pub fn initial_metadata(header: &RawHeader) -> Vec<u8> {
    let mut bytes = vec![0u8; metadata_len(header) as usize];
    bytes[..header.bytes().len()].copy_from_slice(header.bytes());
    let table = header.table_offset.get() as usize;
    let table_len = header.table_size.get() as usize;
    bytes[table..table + table_len].fill(0xFF);
    bytes
}
