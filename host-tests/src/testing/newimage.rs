//! The bytes of a freshly created FVD image's metadata, gathered in one `Vec` for hosts
//! and tests that hold them whole; the bytes themselves come from
//! [`fvd_core::fvd::create::initial_bytes_at`], which every host (the firmware writes them
//! piece by piece) shares. The data region is left to grow (sparse).

use fvd_core::fvd::create::{initial_bytes_at, metadata_len};
use fvd_core::fvd::RawHeader;

/// The first `metadata_len(header)` bytes of a new image described by `header`.
pub fn initial_metadata(header: &RawHeader) -> Vec<u8> {
    let len =
        usize::try_from(metadata_len(header)).expect("metadata of a planned image fits memory");
    let mut bytes = vec![0u8; len];
    initial_bytes_at(header, 0, &mut bytes);
    bytes
}
