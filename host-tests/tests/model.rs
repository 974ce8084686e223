//! Model-based property test: random mixes of writes, write-zeroes, discards, flushes and
//! reads, submitted concurrently, completed in random order with injected I/O errors, on
//! every kind of image, compared with a flat byte-array model after every batch and again
//! after close and reopen.

use fvd_core::chain::FileKey;
use fvd_core::engine::{Reply, Request, RequestError};
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_core::qed::{QedBacking, QedCreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::storage::Storage;
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;
use proptest::prelude::*;

const SECTOR: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Compact,
    Base,
    CompactBase,
    DataFile,
    Chain,
    /// QED without a backing file.
    Qed,
    /// QED over a raw backing file.
    QedBase,
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        sector: u64,
        sectors: u64,
        pattern: u8,
    },
    Zeroes {
        sector: u64,
        sectors: u64,
    },
    Discard {
        sector: u64,
        sectors: u64,
    },
    Flush,
    Read {
        sector: u64,
        sectors: u64,
    },
}

/// Per-sector acceptable contents: several after a failed write (old or new).
struct Model {
    sectors: Vec<Vec<[u8; SECTOR]>>,
}

impl Model {
    fn new(initial: &[u8]) -> Self {
        Model {
            sectors: initial
                .chunks(SECTOR)
                .map(|c| vec![c.try_into().unwrap()])
                .collect(),
        }
    }

    fn apply(&mut self, sector: u64, data: &[u8], succeeded: bool) {
        for (i, chunk) in data.chunks(SECTOR).enumerate() {
            let new: [u8; SECTOR] = chunk.try_into().unwrap();
            let slot = &mut self.sectors[sector as usize + i];
            if succeeded {
                *slot = vec![new];
            } else if !slot.contains(&new) {
                slot.push(new);
            }
        }
    }

    fn check(&self, sector: u64, data: &[u8]) -> Result<(), String> {
        for (i, chunk) in data.chunks(SECTOR).enumerate() {
            let s = sector as usize + i;
            if !self.sectors[s].iter().any(|ok| ok[..] == *chunk) {
                return Err(format!(
                    "sector {s}: read {:?}.., expected one of {} alternatives starting {:?}",
                    &chunk[..8],
                    self.sectors[s].len(),
                    &self.sectors[s][0][..8]
                ));
            }
        }
        Ok(())
    }
}

fn pattern_bytes(pattern: u8, sector: u64, sectors: u64) -> Vec<u8> {
    let mut data = vec![0u8; (sectors as usize) * SECTOR];
    for (i, b) in data.iter_mut().enumerate() {
        *b = pattern
            ^ ((i / SECTOR) as u8)
                .wrapping_add(sector as u8)
                .wrapping_mul(31)
            ^ (i as u8 & 0x0f);
    }
    data
}

fn base_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(7) ^ seed ^ (i as u8))
        .collect()
}

/// A new QED image in memory: cluster size from `block` (4 KiB at least), one- or
/// two-cluster tables so that small disks still span several L2 tables.
fn build_qed(with_base: bool, virtual_size: u64, block: u64) -> (Box<dyn Storage>, Vec<u8>) {
    let cluster_size = block.next_power_of_two().max(4096);
    let table_size = if block % 1024 == 0 { 2 } else { 1 };
    let base_len = (virtual_size * 3 / 4) as usize + 1000;
    let plan = fvd_core::qed::plan(&QedCreateOptions {
        size: virtual_size,
        cluster_size,
        table_size,
        backing: with_base.then_some(QedBacking {
            name: b"base",
            format: b"raw",
        }),
    })
    .unwrap();
    let mut image = vec![0u8; plan.file_len as usize];
    plan.write_header_area(&mut image).unwrap();
    let mut expected = vec![0u8; virtual_size as usize];
    let mut base = None;
    if with_base {
        let bytes = base_bytes(base_len, 0x5a);
        let copy = base_len.min(virtual_size as usize);
        expected[..copy].copy_from_slice(&bytes[..copy]);
        base = Some(MemFile::new(bytes));
    }
    let storage = MemStorage {
        image: MemFile::new(image),
        data: None,
        base,
        writes: 0,
    };
    (Box::new(storage), expected)
}

/// The files of each image of the chain of `kind` (the image first), and what it reads as.
fn build(kind: Kind, virtual_size: u64, block: u64) -> (Vec<Box<dyn Storage>>, Vec<u8>) {
    if matches!(kind, Kind::Qed | Kind::QedBase) {
        let (storage, expected) = build_qed(kind == Kind::QedBase, virtual_size, block);
        return (vec![storage], expected);
    }
    let chunk = (block * 4).div_ceil(4096) * 4096;
    let chunk = if chunk % block == 0 { chunk } else { block * 8 };
    let chunk = (chunk.max(4096) / block).max(1) * block;
    let chunk = if chunk % 4096 == 0 {
        chunk
    } else {
        block * 4096 / gcd(block, 4096)
    };
    let base_len = (virtual_size * 3 / 4) as usize + 1000;
    let base = base_bytes(base_len, 0x5a);
    let mut expected = vec![0u8; virtual_size as usize];
    let with_base = |compact: bool| CreateOptions {
        virtual_size,
        compact_image: compact,
        block_size: Some(block),
        chunk_size: Some(chunk),
        storage_grow_unit: Some(chunk * 3),
        base: Some(BaseSpec {
            name: b"base",
            format: b"raw",
            size: base_len as u64,
        }),
        ..Default::default()
    };
    let options = match kind {
        Kind::Plain => CreateOptions {
            virtual_size,
            ..Default::default()
        },
        Kind::Compact => CreateOptions {
            virtual_size,
            compact_image: true,
            chunk_size: Some(chunk),
            storage_grow_unit: Some(chunk * 2),
            ..Default::default()
        },
        Kind::Base | Kind::Chain => with_base(false),
        Kind::CompactBase => with_base(true),
        Kind::Qed | Kind::QedBase => unreachable!("built by build_qed"),
        Kind::DataFile => CreateOptions {
            virtual_size,
            data_file: Some(b"data"),
            compact_image: true,
            chunk_size: Some(chunk),
            storage_grow_unit: Some(chunk),
            ..Default::default()
        },
    };
    let header = plan(&options).unwrap();
    let mut storage = MemStorage {
        image: MemFile::new(initial_metadata(&header)),
        data: options.data_file.map(|_| MemFile::new(Vec::new())),
        base: None,
        writes: 0,
    };
    if options.base.is_some() {
        let copy = base_len.min(virtual_size as usize);
        expected[..copy].copy_from_slice(&base[..copy]);
    }
    match kind {
        Kind::Chain => {
            // Middle image: a compact FVD over the raw base, with some writes of its own.
            let middle_opts = CreateOptions {
                virtual_size,
                ..with_base(true)
            };
            let middle_header = plan(&middle_opts).unwrap();
            let middle = MemStorage {
                image: MemFile::new(initial_metadata(&middle_header)),
                data: None,
                base: Some(MemFile::new(base.clone())),
                writes: 0,
            };
            let mut middle = Driver::open(middle, DriverOptions::default()).unwrap();
            let data = pattern_bytes(0xc3, 3, 9);
            middle.write(3 * 512, &data).unwrap();
            expected[3 * 512..12 * 512].copy_from_slice(&data);
            let tail = virtual_size - 8192;
            middle.write(tail, &[0x11; 8192]).unwrap();
            expected[tail as usize..].fill(0x11);
            let (middle_storage, _) = middle.close().unwrap();
            let header = plan(&CreateOptions {
                base: Some(BaseSpec {
                    name: b"middle",
                    format: b"fvd",
                    size: virtual_size,
                }),
                ..with_base(false)
            })
            .unwrap();
            storage.image = MemFile::new(initial_metadata(&header));
            // The middle image is the second layer of the chain, read by its own engine.
            (vec![Box::new(storage), Box::new(middle_storage)], expected)
        }
        _ => {
            if options.base.is_some() {
                storage.base = Some(MemFile::new(base));
            }
            (vec![Box::new(storage)], expected)
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn op_strategy(sectors: u64) -> impl Strategy<Value = Op> {
    let range = (0..sectors).prop_flat_map(move |s| (Just(s), 1..=(sectors - s).min(300)));
    prop_oneof![
        5 => (range.clone(), any::<u8>()).prop_map(|((sector, n), pattern)| Op::Write { sector, sectors: n, pattern }),
        1 => range.clone().prop_map(|(sector, n)| Op::Zeroes { sector, sectors: n }),
        1 => range.clone().prop_map(|(sector, n)| Op::Discard { sector, sectors: n }),
        1 => Just(Op::Flush),
        2 => range.prop_map(|(sector, n)| Op::Read { sector, sectors: n }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    kind: Kind,
    block: u64,
    cache_pages: usize,
    seed: u64,
    max_pending: usize,
    errors: u32,
    batches: Vec<Vec<Op>>,
    virtual_size: u64,
    copy_on_read: bool,
}

fn run_case(case: Case) -> Result<(), TestCaseError> {
    let Case {
        kind,
        block,
        cache_pages,
        seed,
        max_pending,
        errors,
        batches,
        virtual_size,
        copy_on_read,
    } = case;

    let (layers, initial) = build(kind, virtual_size, block);
    // In-memory images are distinct: their place in the chain identifies them.
    let keys: Vec<FileKey> = (0..layers.len() as u128).map(FileKey).collect();
    let options = DriverOptions {
        cache_bytes: cache_pages * 512,
        shuffle_seed: Some(seed),
        max_pending,
        error_per_mille: errors,
        copy_on_read: Some(copy_on_read),
        ..Default::default()
    };
    let mut model = Model::new(&initial);
    let mut driver = Driver::open_chain(
        layers,
        &keys,
        DriverOptions {
            error_per_mille: 0,
            ..options
        },
        None,
    )
    .map_err(|e| TestCaseError::fail(format!("open: {}", e.error)))?;
    driver.set_error_per_mille(errors);
    // A workload this small never needs more: more means the engine runs away.
    driver.limit_commands(200_000);
    for batch in batches {
        let mut ids = Vec::new();
        for op in &batch {
            let (request, buffer) = match *op {
                Op::Write {
                    sector,
                    sectors,
                    pattern,
                } => (
                    Request::Write {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    pattern_bytes(pattern, sector, sectors),
                ),
                Op::Zeroes { sector, sectors } => (
                    Request::WriteZeroes {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    Vec::new(),
                ),
                Op::Discard { sector, sectors } => (
                    Request::Discard {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    Vec::new(),
                ),
                Op::Flush => (Request::Flush, Vec::new()),
                Op::Read { sector, sectors } => (
                    Request::Read {
                        offset: sector * 512,
                        len: sectors * 512,
                    },
                    vec![0; sectors as usize * 512],
                ),
            };
            ids.push(
                driver
                    .submit(request, buffer.clone())
                    .map_err(|e| TestCaseError::fail(format!("submit: {e}")))?,
            );
        }
        // Writes apply in submission order (later submitted wins); reads in the batch may see
        // old or new data for sectors written in the same batch, so they are checked against
        // the model before and after the batch's writes.
        let mut outcomes = Vec::new();
        for id in ids {
            outcomes.push(
                driver
                    .wait(id)
                    .map_err(|e| TestCaseError::fail(format!("wait: {e}")))?,
            );
        }
        let before = Model {
            sectors: model.sectors.clone(),
        };
        for (op, (result, _)) in batch.iter().zip(&outcomes) {
            let ok = result.is_ok();
            if let Err(e) = result {
                prop_assert!(
                    matches!(e, RequestError::Io(_)),
                    "unexpected error {e:?} for {op:?}"
                );
                prop_assert!(
                    errors > 0,
                    "request failed without injected errors: {op:?} {e:?}"
                );
            }
            match *op {
                Op::Write {
                    sector,
                    sectors,
                    pattern,
                } => model.apply(sector, &pattern_bytes(pattern, sector, sectors), ok),
                Op::Zeroes { sector, sectors } | Op::Discard { sector, sectors } => {
                    model.apply(sector, &vec![0; sectors as usize * 512], ok)
                }
                _ => {}
            }
        }
        for (op, (result, buffer)) in batch.iter().zip(&outcomes) {
            if let (Op::Read { sector, .. }, Ok(Reply::Done)) = (op, result) {
                // Each sector must match the state before or after the batch.
                for (i, chunk) in buffer.chunks(512).enumerate() {
                    let s = sector + i as u64;
                    let fine = before.check(s, chunk).is_ok()
                        || model.check(s, chunk).is_ok()
                        || batch_wrote(&batch, s, chunk);
                    prop_assert!(
                        fine,
                        "concurrent read of sector {s} returned data never written"
                    );
                }
            }
        }
        // Verify without injected errors: a read of a fragmented disk issues hundreds of
        // commands, and retrying until all of them succeed at once could take forever.
        driver.set_error_per_mille(0);
        verify(&mut driver, &model, virtual_size)?;
        driver.set_error_per_mille(errors);
    }
    driver.set_error_per_mille(0);
    driver
        .flush()
        .map_err(|e| TestCaseError::fail(format!("flush: {e}")))?;
    let (layers, clean) = driver
        .close_chain()
        .map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
    prop_assert!(clean, "close did not mark the image clean");
    let mut reopened = Driver::open_chain(
        layers,
        &keys,
        DriverOptions {
            shuffle_seed: None,
            error_per_mille: 0,
            ..options
        },
        None,
    )
    .map_err(|e| TestCaseError::fail(format!("reopen: {}", e.error)))?;
    reopened.limit_commands(200_000);
    verify(&mut reopened, &model, virtual_size)?;
    Ok(())
}

fn batch_wrote(batch: &[Op], sector: u64, chunk: &[u8]) -> bool {
    batch.iter().any(|op| match *op {
        Op::Write {
            sector: s,
            sectors,
            pattern,
        } if (s..s + sectors).contains(&sector) => {
            pattern_bytes(pattern, s, sectors)[((sector - s) as usize) * 512..][..512] == *chunk
        }
        Op::Zeroes { sector: s, sectors } | Op::Discard { sector: s, sectors }
            if (s..s + sectors).contains(&sector) =>
        {
            chunk.iter().all(|&b| b == 0)
        }
        _ => false,
    })
}

fn verify<S: Storage>(
    driver: &mut Driver<S>,
    model: &Model,
    virtual_size: u64,
) -> Result<(), TestCaseError> {
    let mut at = 0;
    while at < virtual_size {
        let n = (virtual_size - at).min(1 << 20);
        // A write-back or commit the engine started to free cache pages, and that failed
        // under an injected error before injection was turned off, is reported once to
        // the next request that needs a free page (so a storage that keeps failing ends
        // requests instead of spinning): that request may fail, its retry may not.
        let data = match driver.read(at, n as usize) {
            Ok(data) => data,
            Err(_) => driver
                .read(at, n as usize)
                .map_err(|e| TestCaseError::fail(format!("read: {e}")))?,
        };
        model.check(at / 512, &data).map_err(TestCaseError::fail)?;
        at += n;
    }
    Ok(())
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Plain),
        Just(Kind::Compact),
        Just(Kind::Base),
        Just(Kind::CompactBase),
        Just(Kind::DataFile),
        Just(Kind::Chain),
        Just(Kind::Qed),
        Just(Kind::QedBase)
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    cases_of(kind_strategy())
}

fn cases_of(kinds: impl Strategy<Value = Kind>) -> impl Strategy<Value = Case> {
    let virtual_size = prop_oneof![
        Just(1u64 << 20),
        Just(3u64 << 20),
        Just((2u64 << 20) + 3 * 512)
    ];
    let block = prop_oneof![
        Just(512u64),
        Just(1536),
        Just(4096),
        Just(7680),
        Just(65536)
    ];
    let cache = prop_oneof![Just(4usize), Just(6), Just(64)];
    let errors = prop_oneof![3 => Just(0u32), 1 => Just(30u32)];
    (
        kinds,
        block,
        cache,
        any::<u64>(),
        1usize..24,
        errors,
        (virtual_size, any::<bool>()),
    )
        .prop_flat_map(
            |(
                kind,
                block,
                cache_pages,
                seed,
                max_pending,
                errors,
                (virtual_size, copy_on_read),
            )| {
                let ops = prop::collection::vec(
                    prop::collection::vec(op_strategy(virtual_size / 512), 1..8),
                    1..10,
                );
                ops.prop_map(move |batches| Case {
                    kind,
                    block,
                    cache_pages,
                    seed,
                    max_pending,
                    errors,
                    batches,
                    virtual_size,
                    copy_on_read,
                })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_image_kind_behaves_like_a_flat_disk(case in case_strategy()) {
        run_case(case)?;
    }

    #[test]
    fn qed_images_behave_like_a_flat_disk(
        case in cases_of(prop_oneof![Just(Kind::Qed), Just(Kind::QedBase)])
    ) {
        run_case(case)?;
    }
}
