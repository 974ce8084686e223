//! What the cargo-fuzz targets in `fuzz/` run, one module per target, on stable too: the
//! targets are one-line wrappers, and the host tests run every committed seed (and every
//! input that once crashed) through the same functions. An input that makes any of them
//! panic is a bug: untrusted image bytes must give data or a typed error.
//!
//! Inputs are decoded by [`input::Input`] (any bytes decode to some case); [`fvd`] and
//! [`qed`] turn them into small images; [`sparse`] holds hostile images without
//! allocating what a crafted offset asks for; [`seeds`] makes the seed corpus.

pub mod check;
pub mod engine_image;
pub mod fvd;
pub mod headers;
pub mod input;
pub mod inspect;
pub mod model;
pub mod qed;
pub mod replay;
pub mod seeds;
pub mod sparse;

use crate::host::driver::{Driver, DriverError, DriverOptions};
use crate::host::storage::Storage;
use fvd_core::engine::{Mapping, RequestError, SubmitError, PAGE_BYTES};

/// The targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 7] = [
    "fvd_header",
    "qed_header",
    "engine_image",
    "fvd_replay",
    "check",
    "inspect",
    "model",
];

/// Runs one input through target `target` (panics on a bug, like the fuzz target).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "fvd_header" => headers::fvd_header(data),
        "qed_header" => headers::qed_header(data),
        "engine_image" => engine_image::run(data),
        "fvd_replay" => replay::run(data),
        "check" => check::run(data),
        "inspect" => inspect::run(data),
        "model" => model::run(data),
        _ => panic!("no fuzz target {target}"),
    }
}

/// Commands one open image may run in a target: far more than any case here needs, so
/// reaching it means the engine ran away.
pub const COMMAND_LIMIT: u64 = 200_000;

/// Driver options for a target: a small metadata cache (evictions are exercised) and
/// room for a few bounce blocks.
pub fn options(writable: bool) -> DriverOptions {
    DriverOptions {
        writable,
        cache_bytes: 8 * PAGE_BYTES,
        bounce_bytes: 256 << 10,
        ..Default::default()
    }
}

/// A driver result where only the engine running away or refusing a well-formed request
/// is a bug: those panic, anything else is returned (`NotOpen` included: an engine that
/// failed on corrupt metadata serves nothing more).
pub fn settle<T>(result: Result<T, DriverError>) -> Result<T, DriverError> {
    match result {
        Err(DriverError::Stalled(n)) => {
            panic!("the engine stalled or ran away ({n} requests in flight)")
        }
        Err(DriverError::Submit(e)) if e != SubmitError::NotOpen => {
            panic!("a well-formed request was refused: {e}")
        }
        other => other,
    }
}

/// Opens `storage` with `options`; a stall panics, a refusal is returned.
pub fn open<S: Storage>(storage: S, options: DriverOptions) -> Result<Driver<S>, DriverError> {
    let mut driver = settle(Driver::open(storage, options))?;
    driver.limit_commands(COMMAND_LIMIT);
    Ok(driver)
}

/// What a request failed with (the engine's error; storage failures as I/O errors).
pub fn request_error(error: &DriverError) -> Option<RequestError> {
    match error {
        DriverError::Request(e) => Some(*e),
        DriverError::RequestIo { error, .. } => Some(*error),
        _ => None,
    }
}

/// Bytes of the guest one read covers in [`View`].
pub const READ_PIECE: u64 = 32 << 10;
/// Most map requests one [`map_sectors`] call makes.
pub const MAX_MAP_RUNS: usize = 4096;

/// One run of a map walk: `len` guest bytes from `offset` and where they live (`None`:
/// the map request failed there with a typed error; the walk skipped to the next
/// [`READ_PIECE`] boundary).
pub type Run = (u64, u64, Option<Mapping>);

/// Walks the first `len` guest bytes with `Request::Map` (at most [`MAX_MAP_RUNS`]
/// requests). Each run must start where it was asked to, be non-empty, whole sectors and
/// end inside the disk, and a data run's end must fit a u64.
pub fn map_runs<S: Storage>(driver: &mut Driver<S>, len: u64) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut at = 0u64;
    while at < len && runs.len() < MAX_MAP_RUNS {
        match settle(driver.map(at, len - at)) {
            Ok(run) => {
                assert_eq!(run.offset, at, "a map run starts where it was asked");
                assert!(
                    run.len > 0 && run.len <= len - at,
                    "map run {run:?} at {at} of {len}"
                );
                assert_eq!(run.len % 512, 0, "map run {run:?} is not whole sectors");
                if let Mapping::Data { offset, .. } = run.mapping {
                    assert!(
                        offset.checked_add(run.len).is_some(),
                        "data run {run:?} wraps"
                    );
                }
                runs.push((at, run.len, Some(run.mapping)));
                at += run.len;
            }
            Err(_) => {
                let next = (at / READ_PIECE + 1).saturating_mul(READ_PIECE).min(len);
                runs.push((at, next - at, None));
                at = next;
            }
        }
    }
    runs
}

/// Where each 512-byte sector of the first `len` guest bytes lives (a small disk), from
/// [`map_runs`]; data mappings are per sector.
pub fn map_sectors<S: Storage>(driver: &mut Driver<S>, len: u64) -> Vec<Option<Mapping>> {
    let mut map = vec![None; usize::try_from(len / 512).unwrap_or(0)];
    for (offset, run_len, mapping) in map_runs(driver, len) {
        for s in 0..run_len / 512 {
            map[(offset / 512 + s) as usize] = mapping.map(|m| match m {
                Mapping::Data { file, offset } => Mapping::Data {
                    file,
                    offset: offset + s * 512,
                },
                other => other,
            });
        }
    }
    map
}

/// The first `len` guest bytes read in pieces of [`READ_PIECE`] (`None`: the piece failed
/// with a typed error).
pub fn read_pieces<S: Storage>(driver: &mut Driver<S>, len: u64) -> Vec<Option<Vec<u8>>> {
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < len {
        let n = READ_PIECE.min(len - at);
        pieces.push(settle(driver.read(at, n as usize)).ok());
        at += n;
    }
    pieces
}

/// Asserts that two views of one disk agree wherever both have an answer.
pub fn assert_agree<T: PartialEq + std::fmt::Debug>(what: &str, a: &[Option<T>], b: &[Option<T>]) {
    assert_eq!(a.len(), b.len(), "{what}: different lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if let (Some(x), Some(y)) = (x, y) {
            if x != y {
                let mut shown = format!("{x:?} vs {y:?}");
                shown.truncate(400);
                panic!("{what}: entry {i} differs: {shown}");
            }
        }
    }
}
