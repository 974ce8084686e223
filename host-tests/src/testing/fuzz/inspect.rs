//! Target `inspect`: what the browser inspector does with a file it is given. The engine
//! opens the image read-only over its base (raw, or itself an FVD or QED image served
//! through a second engine), walks the whole virtual disk with `Request::Map` in runs and
//! reads sampled ranges through the chain. Everything must be data or a typed error, and
//! every sector read must hold what its map run says: zeros for zero and unallocated
//! runs, the storage's bytes at the run's offset for data runs, the base's for base runs.

use super::fvd;
use super::input::Input;
use super::qed;
use super::sparse::{SparseFile, SparseStorage};
use super::{map_runs, open, options, settle, Run};
use crate::host::driver::Driver;
use crate::host::storage::Storage;
use fvd_core::chain::FileKey;
use fvd_core::engine::{FileId, Mapping};
use fvd_core::fvd::header::NAME_FIELD_LEN;
use fvd_core::fvd::FVD_MAGIC;

/// The base of a case.
enum CaseBase {
    /// Raw bytes.
    Raw(Vec<u8>),
    /// An FVD or QED image (with a raw base of its own): the second layer of the chain.
    Image(SparseStorage),
}

/// The image file of a case and its base.
fn case(input: &mut Input) -> (Vec<u8>, CaseBase) {
    let (image, base) = match input.u8() % 3 {
        0 => {
            let c = fvd::build(input);
            (c.image, c.base)
        }
        1 => {
            let c = qed::build(input);
            (c.image, c.base)
        }
        _ => {
            let len = usize::from(input.u16());
            (input.bytes(len).to_vec(), None)
        }
    };
    let raw = base.unwrap_or_else(|| vec![0x5A; 64 << 10]);
    let base = match input.u8() % 3 {
        0 => CaseBase::Raw(raw),
        kind => {
            // A base that is itself an image (with a raw base of its own).
            let (bytes, below) = if kind == 1 {
                let c = fvd::build(input);
                (c.image, c.base)
            } else {
                let c = qed::build(input);
                (c.image, c.base)
            };
            let storage = SparseStorage::new(&bytes, Some(below.as_deref().unwrap_or(&raw)));
            match open(storage.clone(), options(false)) {
                Ok(_) => CaseBase::Image(storage),
                // The inspector would show the base's error; the image still opens over
                // its raw stand-in.
                Err(_) => CaseBase::Raw(raw),
            }
        }
    };
    (image, base)
}

/// True when `image` is an FVD image naming a separate data file.
fn names_data_file(image: &[u8]) -> bool {
    image.get(..4) == Some(&FVD_MAGIC.to_le_bytes()[..])
        && image
            .get(32..32 + NAME_FIELD_LEN)
            .is_some_and(|f| f[0] != 0)
}

/// What sector `sector` should read as by its map run: base sectors as the base reads
/// them on its own (`reference`: the base image opened by itself; none for a raw base).
fn expected_sector(
    driver: &mut Driver<SparseStorage>,
    reference: Option<&mut Driver<SparseStorage>>,
    run: &Run,
    sector: u64,
) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; 512];
    let into_run = sector * 512 - run.0;
    match run.2? {
        Mapping::Zero | Mapping::Unallocated => {}
        Mapping::Data { file, offset } => {
            driver
                .storage
                .read_at(file, offset + into_run, &mut bytes)
                .ok()?;
        }
        Mapping::Base => match reference {
            None => driver
                .storage
                .read_at(FileId::Base, sector * 512, &mut bytes)
                .ok()?,
            Some(base) => {
                // Past the end of the base image, the base reads as zeros.
                let size = base.engine().virtual_size()?;
                if sector * 512 < size {
                    let len = (size - sector * 512).min(512) as usize;
                    let read = base.read(sector * 512, len).ok()?;
                    bytes[..len].copy_from_slice(&read);
                }
            }
        },
        _ => return None,
    }
    Some(bytes)
}

/// Runs one input: the case kind byte (`% 3`: FVD, QED, raw bytes after a u16 length),
/// the case, the base kind byte (`% 3`: raw, FVD image, QED image) and its case, then up
/// to 15 sampled reads (a u32 sector and a length byte each).
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let (image, base) = case(&mut input);
    let raw = match &base {
        CaseBase::Raw(raw) => Some(raw.as_slice()),
        CaseBase::Image(_) => None,
    };
    let mut top = SparseStorage::new(&image, raw);
    if names_data_file(&image) {
        top.data = Some(SparseFile::new(&vec![0xD7; 64 << 10]));
    }
    let (layers, mut reference) = match base {
        CaseBase::Raw(_) => (vec![top], None),
        CaseBase::Image(below) => {
            let reference = open(below.clone(), options(false)).ok();
            (vec![top, below], reference)
        }
    };
    let keys: Vec<FileKey> = (0..layers.len() as u128).map(FileKey).collect();
    let opened = Driver::open_chain(layers, &keys, options(false), None).map_err(|e| e.error);
    let Ok(mut driver) = settle(opened) else {
        return;
    };
    driver.limit_commands(super::COMMAND_LIMIT);
    let size = driver
        .engine()
        .virtual_size()
        .expect("an open image has a size");
    let runs = map_runs(&mut driver, size);
    let mapped_to = runs.last().map_or(0, |r| r.0 + r.1);
    let sectors = size / 512;
    for _ in 0..input.u8() % 16 {
        let (first, count) = (input.u32(), input.u8());
        if sectors == 0 {
            break;
        }
        let first = u64::from(first) % sectors;
        let count = (u64::from(count) % 64 + 1).min(sectors - first);
        let Ok(bytes) = settle(driver.read(first * 512, (count * 512) as usize)) else {
            continue;
        };
        for (i, got) in bytes.chunks(512).enumerate() {
            let sector = first + i as u64;
            if sector * 512 >= mapped_to {
                break;
            }
            let at = runs.partition_point(|r| r.0 + r.1 <= sector * 512);
            let run = runs[at];
            if let Some(want) = expected_sector(&mut driver, reference.as_mut(), &run, sector) {
                assert!(
                    got == want.as_slice(),
                    "sector {sector} does not read as its map run {run:?} says"
                );
            }
        }
    }
}
