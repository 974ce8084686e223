//! Copy-on-read at full speed (issue #18): the fills of one guest read become one base
//! read, the guest is answered from the fill's data, a fill that cannot run now runs
//! later, a pass over the disk leaves nothing in the base, and a fill's failed write never
//! makes the image claim the block.

use fvd_core::engine::*;
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::faults::{Errno, Fault, FaultPlan, Kinds, Rule};
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;

const K: u64 = 1024;
const BASE: u64 = 1 << 20;

fn base_bytes() -> Vec<u8> {
    (0..BASE).map(|i| (i / 512) as u8 ^ 0x5a).collect()
}

/// A 2 MiB image over a 1 MiB raw base; `block_size` None is the default geometry (512-byte
/// blocks for a base this small).
fn image(block_size: Option<u64>) -> MemStorage {
    image_with(block_size, false)
}

/// As [`image`], compact (256 KiB chunks, so one guest read spans several) when asked.
fn image_with(block_size: Option<u64>, compact: bool) -> MemStorage {
    let options = CreateOptions {
        virtual_size: 2 * BASE,
        block_size,
        compact_image: compact,
        chunk_size: compact.then_some(256 * K),
        base: Some(BaseSpec {
            name: b"base",
            format: b"raw",
            size: BASE,
        }),
        ..Default::default()
    };
    MemStorage {
        image: MemFile::new(initial_metadata(&plan(&options).unwrap())),
        data: None,
        base: Some(MemFile::new(base_bytes())),
        writes: 0,
    }
}

fn driver(storage: MemStorage, options: DriverOptions) -> Driver<MemStorage> {
    let mut d = Driver::open(
        storage,
        DriverOptions {
            copy_on_read: Some(true),
            ..options
        },
    )
    .unwrap();
    // A delay of zero on every base read: the plan's log then lists the base reads.
    d.set_faults(Some(FaultPlan::with(
        Rule::from(0, Fault::Delay { micros: 0 })
            .on(FileId::Base)
            .kinds(Kinds::READS),
    )));
    d
}

/// (offset, length) of every base read command so far.
fn base_reads(d: &Driver<MemStorage>) -> Vec<(u64, u64)> {
    d.faults()
        .unwrap()
        .injected()
        .iter()
        .map(|i| (i.cmd.offset, i.cmd.len))
        .collect()
}

/// Bytes of `[0, BASE)` that still map to the base.
fn bytes_in_base(d: &mut Driver<MemStorage>) -> u64 {
    let mut at = 0;
    let mut in_base = 0;
    while at < BASE {
        let run = d.map(at, BASE - at).unwrap();
        if run.mapping == Mapping::Base {
            in_base += run.len;
        }
        at += run.len;
    }
    in_base
}

#[test]
fn one_guest_reads_fills_become_one_base_read() {
    for (block, compact) in [(None, false), (Some(64 * K), false), (None, true)] {
        let case = format!("block {block:?}, compact {compact}");
        let mut d = driver(image_with(block, compact), DriverOptions::default());
        assert_eq!(d.read(0, BASE as usize).unwrap(), base_bytes(), "{case}");
        d.run_until_idle().unwrap();
        assert_eq!(base_reads(&d), [(0, BASE)], "one base read ({case})");
        assert_eq!(d.engine().stats().cor_fills_done, 1, "{case}");
        assert_eq!(bytes_in_base(&mut d), 0, "every block is local ({case})");
        // The copies are the base's bytes, chunk by chunk.
        let (mut storage, _) = d.close().unwrap();
        storage.base = Some(MemFile::new(vec![0xEE; BASE as usize]));
        let mut d = Driver::open(
            storage,
            DriverOptions {
                writable: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(d.read(0, BASE as usize).unwrap() == base_bytes(), "{case}");
    }
}

#[test]
fn the_second_pass_reads_zero_bytes_from_the_base() {
    for block in [None, Some(64 * K)] {
        for piece in [128 * K, BASE] {
            // Sixteen reads in flight, their commands completed in a shuffled order.
            let options = DriverOptions {
                max_pending: 32,
                shuffle_seed: Some(piece ^ block.unwrap_or(7)),
                ..Default::default()
            };
            let mut d = driver(image(block), options);
            let pass = |d: &mut Driver<MemStorage>| {
                let ids: Vec<_> = (0..BASE / piece)
                    .map(|i| {
                        let request = Request::Read {
                            offset: i * piece,
                            len: piece,
                        };
                        (i, d.submit(request, vec![0; piece as usize]).unwrap())
                    })
                    .collect();
                let base = base_bytes();
                for (i, id) in ids {
                    let (result, data) = d.wait(id).unwrap();
                    result.unwrap();
                    let at = (i * piece) as usize;
                    assert!(
                        data == base[at..at + piece as usize],
                        "read {i} ({block:?})"
                    );
                }
                d.run_until_idle().unwrap();
            };
            pass(&mut d);
            let first = d.engine().stats().base_read_bytes;
            assert_eq!(
                first, BASE,
                "the first pass reads the base once ({block:?}, {piece})"
            );
            pass(&mut d);
            assert_eq!(
                d.engine().stats().base_read_bytes,
                first,
                "the second pass reads nothing from the base ({block:?}, {piece})"
            );
        }
    }
}

#[test]
fn a_fill_that_cannot_get_memory_now_runs_later_and_the_block_ends_up_local() {
    // Bounce room for two blocks only, and eight small unaligned reads in eight blocks at
    // once: each wants a bounce fill, six find no room.
    let options = DriverOptions {
        bounce_bytes: 2 * 64 * K as usize,
        max_pending: 64,
        ..Default::default()
    };
    let mut d = driver(image(Some(64 * K)), options);
    let base = base_bytes();
    let ids: Vec<_> = (0..8u64)
        .map(|b| {
            let at = b * 64 * K + 4 * K;
            let request = Request::Read {
                offset: at,
                len: 4 * K,
            };
            (at, d.submit(request, vec![0; 4 * K as usize]).unwrap())
        })
        .collect();
    for (at, id) in ids {
        let (result, data) = d.wait(id).unwrap();
        result.unwrap();
        assert!(data == base[at as usize..][..4 * K as usize]);
    }
    d.run_until_idle().unwrap();
    let stats = d.engine().stats();
    assert!(stats.cor_fills_deferred >= 1, "{stats:?}");
    assert_eq!(stats.cor_fills_dropped, 0);
    for b in 0..8 {
        assert!(
            matches!(
                d.map(b * 64 * K, 64 * K).unwrap().mapping,
                Mapping::Data { .. }
            ),
            "block {b} ended up local"
        );
    }
    // The copies are the base's bytes.
    let (mut storage, _) = d.close().unwrap();
    storage.base = Some(MemFile::new(vec![0xEE; BASE as usize]));
    let mut d = Driver::open(
        storage,
        DriverOptions {
            writable: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(d.read(0, 8 * 64 * K as usize).unwrap() == base[..8 * 64 * K as usize]);
}

#[test]
fn a_fill_whose_write_fails_leaves_its_blocks_in_the_base_and_the_read_right() {
    for block in [None, Some(64 * K)] {
        let mut d = driver(image(block), DriverOptions::default());
        d.set_faults(Some(FaultPlan::with(
            Rule::from(0, Fault::Fail(Errno::Eio))
                .on(FileId::Image)
                .kinds(Kinds::WRITES),
        )));
        // The guest's data came from the base read, not from the failed write.
        assert_eq!(
            d.read(0, 256 * K as usize).unwrap(),
            base_bytes()[..256 * K as usize]
        );
        d.run_until_idle().unwrap();
        assert_eq!(d.engine().stats().cor_fills_done, 0);
        assert_eq!(
            d.map(0, 256 * K).unwrap(),
            MapRun {
                offset: 0,
                len: 256 * K,
                mapping: Mapping::Base
            },
            "no bit was set for data that never landed ({block:?})"
        );
        // With the storage healthy again, the next read copies the blocks.
        d.set_faults(None);
        d.read(0, 256 * K as usize).unwrap();
        d.run_until_idle().unwrap();
        assert_eq!(d.engine().stats().cor_fills_done, 1);
        assert!(matches!(
            d.map(0, 256 * K).unwrap().mapping,
            Mapping::Data { .. }
        ));
    }
}
