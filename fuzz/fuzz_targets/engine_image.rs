//! The engine on arbitrary image files: a valid FVD or QED header (so the fuzzer reaches
//! the tables, journal and data) followed by fuzzer bytes, or fuzzer bytes alone; opened
//! read-only and read-write, then driven with requests taken from the input. Every
//! outcome must be data or a typed error: the engine must not panic, loop or overflow.
#![no_main]

use fvd_core::engine::Request;
use fvd_core::geometry::{plan, BaseSpec, CreateOptions};
use fvd_core::qed::{QedBacking, QedCreateOptions};
use fvd_host::driver::{Driver, DriverOptions};
use fvd_host::memstore::{MemFile, MemStorage};
use fvd_host::newimage::initial_metadata;
use libfuzzer_sys::fuzz_target;

const SIZE: u64 = 1 << 20;

/// The image file for `kind` with the fuzzer's bytes: alone (0), after a valid compact
/// FVD header with or without a base (1, 2; the bytes overwrite the metadata regions), or
/// after a valid QED header with or without a backing file (3, 4; the bytes are the L1
/// table and what follows). Returns the bytes and whether the image wants a base.
fn image(kind: u8, rest: &[u8]) -> (Vec<u8>, bool) {
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
            .unwrap();
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
            .unwrap();
            let mut bytes = vec![0u8; 4096];
            plan.write_header_area(&mut bytes).unwrap();
            bytes.extend_from_slice(rest);
            bytes.resize(bytes.len().max(8192), 0);
            (bytes, backing)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ops_len, rest) = data.split_at(1);
    let ops_len = (ops_len[0] as usize % 16) * 4;
    let (ops, rest) = rest.split_at(ops_len.min(rest.len()));
    let (kind, rest) = rest.split_first().unwrap_or((&0, &[]));
    let (bytes, base) = image(*kind, rest);
    let storage = MemStorage {
        image: MemFile::new(bytes),
        data: None,
        base: base.then(|| MemFile::new(vec![0x5a; SIZE as usize])),
        writes: 0,
    };
    for writable in [false, true] {
        let options = DriverOptions {
            writable,
            cache_bytes: 8 * 512,
            bounce_bytes: 64 << 10,
            ..Default::default()
        };
        let Ok(mut driver) = Driver::open(storage.clone(), options) else {
            continue;
        };
        driver.limit_commands(100_000);
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
            let buffer = vec![op[0]; len as usize];
            if let Ok(id) = driver.submit(request, buffer) {
                let _ = driver.wait(id);
            }
        }
        let _ = driver.close();
    }
});
