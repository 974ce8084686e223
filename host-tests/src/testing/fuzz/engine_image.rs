//! Target `engine_image`: the engine on arbitrary image files, writes included: input
//! bytes alone, or laid over the metadata of a valid compact FVD image (with or without a
//! base) or after a valid QED header (with or without a backing file). The image is
//! opened read-only and read-write and driven with input-chosen requests; every outcome
//! must be data or a typed error, and no write may reach the base.

use super::sparse::SparseStorage;
use super::{open, options, settle};
use crate::testing::newimage::initial_metadata;
use fvd_core::engine::Request;
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_core::qed::{QedBacking, QedCreateOptions};

const SIZE: u64 = 1 << 20;

/// The image file for `kind` with the input's bytes: alone (0), over the metadata regions
/// of a valid compact FVD image without or with a base (1, 2), or after a valid QED
/// header without or with a backing file (3, 4). Returns the bytes and whether the image
/// wants a base.
pub fn image(kind: u8, rest: &[u8]) -> (Vec<u8>, bool) {
    match kind % 5 {
        0 => (rest.to_vec(), false),
        1 | 2 => {
            let base = kind % 5 == 2;
            let header = plan(&CreateOptions {
                virtual_size: SIZE,
                compact_image: true,
                chunk_size: Some(16384),
                block_size: Some(4096),
                journal_size: Some(8192),
                base: base.then_some(BaseSpec {
                    name: b"base",
                    format: b"raw",
                    size: SIZE,
                }),
                ..Default::default()
            })
            .expect("valid create options");
            let mut bytes = initial_metadata(&header);
            let start = header.header_size.get() as usize;
            for (slot, b) in bytes.iter_mut().skip(start).zip(rest) {
                *slot = *b;
            }
            (bytes, base)
        }
        _ => {
            let backing = kind % 5 == 4;
            let plan = fvd_core::qed::plan(&QedCreateOptions {
                size: SIZE,
                cluster_size: 4096,
                table_size: 1,
                backing: backing.then_some(QedBacking {
                    name: b"base",
                    format: b"raw",
                }),
            })
            .expect("valid QED options");
            let mut bytes = vec![0u8; 4096];
            plan.write_header_area(&mut bytes)
                .expect("room for the header");
            bytes.extend_from_slice(rest);
            bytes.resize(bytes.len().max(8192), 0);
            (bytes, backing)
        }
    }
}

/// Runs one input: a byte giving the number of 4-byte requests (`% 16`), the requests
/// (op, a u16 sector, a length byte; by `op % 6` read, write, write-zeroes, discard, map,
/// flush), the kind byte, then the image bytes.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (ops_len, rest) = data.split_at(1);
    let ops_len = (ops_len[0] as usize % 16) * 4;
    let (ops, rest) = rest.split_at(ops_len.min(rest.len()));
    let (kind, rest) = rest.split_first().unwrap_or((&0, &[]));
    let (bytes, base) = image(*kind, rest);
    let base_bytes = vec![0x5a; SIZE as usize];
    let storage = SparseStorage::new(&bytes, base.then_some(base_bytes.as_slice()));
    for writable in [false, true] {
        let Ok(mut driver) = open(storage.clone(), options(writable)) else {
            continue;
        };
        let size = driver.engine().virtual_size().unwrap_or(0);
        for op in ops.chunks(4) {
            if size < 512 || op.len() < 4 {
                break;
            }
            let sectors = size / 512;
            let at = u64::from(u16::from_le_bytes([op[1], op[2]])) % sectors * 512;
            let len = (u64::from(op[3]) % 64 + 1).min(sectors - at / 512) * 512;
            let request = match op[0] % 6 {
                0 => Request::Read { offset: at, len },
                1 => Request::Write { offset: at, len },
                2 => Request::WriteZeroes { offset: at, len },
                3 => Request::Discard { offset: at, len },
                4 => Request::Map { offset: at, len },
                _ => Request::Flush,
            };
            let buffer = match request {
                Request::Read { .. } | Request::Write { .. } => vec![op[0]; len as usize],
                _ => Vec::new(),
            };
            match request {
                Request::Write { .. } | Request::WriteZeroes { .. } | Request::Discard { .. }
                    if !writable =>
                {
                    continue
                }
                _ => {}
            }
            if let Ok(id) = settle(driver.submit(request, buffer)) {
                let _ = settle(driver.wait(id));
            }
        }
        if let Ok((after, _)) = settle(driver.close()) {
            assert_eq!(after.base, storage.base, "the base was written");
        }
    }
}
