//! Images stacked on images through `fvd_core::chain`: base reads of each engine are
//! served by the engine below (FVD over QED over FVD over a raw file), with no host code
//! between the layers, and a chain that loops or is too deep is refused.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod support;

use fvd_core::chain::{Chain, ChainError, ChainOf, FileKey, MAX_DEPTH};
use fvd_core::engine::{Engine, Event, FileId, Op, Request};
use fvd_core::fvd::create::{BaseSpec, CreateOptions};
use fvd_core::qed::QedBacking;
use std::collections::HashMap;
use support::*;

const K: u64 = 1024;
const M: u64 = 1 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Three images over a raw file: an FVD bottom (its base the raw file), a QED middle over
/// it, an FVD top over that; each holds its own 64 KiB of data. Returns the opened
/// engines (top first) and their files.
fn three_layers() -> (Vec<Engine<Vec<u8>, 64>>, Vec<Files>) {
    let raw = pattern(M as usize);
    let mut bottom = Files {
        image: fvd_image(&CreateOptions {
            virtual_size: M,
            base: Some(BaseSpec {
                name: b"raw.img",
                format: b"raw",
                size: M,
            }),
            block_size: Some(4096),
            ..Default::default()
        }),
        data: None,
        base: Some(raw),
    };
    let mut e = open_engine(&mut bottom, true, true);
    run_engine(
        &mut e,
        &mut bottom,
        Request::Write {
            offset: 64 * K,
            len: 64 * K,
        },
        vec![0xB0; 65536],
    )
    .unwrap();
    close(&mut e, &mut bottom);

    let mut middle = Files {
        image: qed_image(&small_qed(
            M,
            Some(QedBacking {
                name: b"bottom.fvd",
                format: b"fvd",
            }),
        )),
        data: None,
        base: None,
    };
    let mut e = open_engine(&mut middle, true, true);
    run_engine(
        &mut e,
        &mut middle,
        Request::Write {
            offset: 128 * K,
            len: 64 * K,
        },
        vec![0x90; 65536],
    )
    .unwrap();
    close(&mut e, &mut middle);

    let mut top = Files {
        image: fvd_image(&CreateOptions {
            virtual_size: 2 * M,
            compact_image: true,
            chunk_size: Some(64 * K),
            block_size: Some(4096),
            base: Some(BaseSpec {
                name: b"middle.qed",
                format: b"qed",
                size: M,
            }),
            ..Default::default()
        }),
        data: None,
        base: None,
    };
    let engines = vec![
        open_engine(&mut top, true, true),
        open_engine(&mut middle, false, true),
        open_engine(&mut bottom, false, true),
    ];
    (engines, vec![top, middle, bottom])
}

fn close(engine: &mut Engine<Vec<u8>, 64>, files: &mut Files) {
    assert!(close_engine(engine, files), "closed cleanly");
}

/// What a read of the whole disk must return.
fn expected() -> Vec<u8> {
    let mut disk = pattern(M as usize);
    disk[64 * K as usize..128 * K as usize].fill(0xB0);
    disk[128 * K as usize..192 * K as usize].fill(0x90);
    disk.resize(2 * M as usize, 0);
    disk
}

#[test]
fn base_reads_are_served_by_the_engines_below_at_any_depth() {
    let (mut engines, files) = three_layers();
    let mut stack = Stack::new(&mut engines, files);
    let want = expected();
    // Pieces of several sizes, some crossing from one layer's data into another's.
    for (offset, len) in [
        (0, 2 * M),
        (60 * K, 8 * K),
        (190 * K, 100 * K),
        (M - 4 * K, 8 * K),
    ] {
        let got = stack.read(offset, len as usize);
        assert!(
            got == want[offset as usize..(offset + len) as usize],
            "read {offset}+{len} differs"
        );
    }
    // Only the bottom layer's base is a file the host reads.
    assert!(stack.raw_base_reads > 0);
}

#[test]
fn copy_on_write_through_the_chain_takes_the_head_and_tail_from_below() {
    let (mut engines, files) = three_layers();
    let mut stack = Stack::new(&mut engines, files);
    let mut want = expected();
    // 512 bytes inside a 4 KiB block whose data lives two and three layers down.
    for offset in [130 * K + 512, 66 * K + 1024, 10 * K] {
        stack.write(offset, vec![0x42; 512]);
        want[offset as usize..offset as usize + 512].fill(0x42);
    }
    stack.write(192 * K, vec![0x70; 65536]);
    want[192 * K as usize..256 * K as usize].fill(0x70);
    let got = stack.read(0, 2 * M as usize);
    assert!(
        got == want,
        "the disk differs after writes through the chain"
    );
}

#[test]
fn a_chain_refuses_a_file_that_appears_twice_or_too_many_layers() {
    let mut engines: Vec<Engine<Vec<u8>, 64>> = Vec::new();
    for _ in 0..3 {
        let mut files = Files {
            image: fvd_image(&CreateOptions {
                virtual_size: M,
                ..Default::default()
            }),
            data: None,
            base: None,
        };
        engines.push(open_engine(&mut files, false, false));
    }
    let looped = [FileKey(1), FileKey(2), FileKey(1)];
    assert_eq!(
        Chain::new(&mut engines, &looped).err(),
        Some(ChainError::Cycle {
            layer: 2,
            same_as: 0
        })
    );
    assert_eq!(
        Chain::new(&mut engines[..0], &[]).err(),
        Some(ChainError::Empty)
    );
    let mut many: Vec<Engine<Vec<u8>, 64>> = (0..MAX_DEPTH + 1)
        .map(|_| {
            let mut files = Files {
                image: fvd_image(&CreateOptions {
                    virtual_size: M,
                    ..Default::default()
                }),
                data: None,
                base: None,
            };
            open_engine(&mut files, false, false)
        })
        .collect();
    let keys: Vec<FileKey> = (0..many.len() as u128).map(FileKey).collect();
    assert_eq!(
        Chain::new(&mut many, &keys).err(),
        Some(ChainError::TooDeep {
            depth: MAX_DEPTH + 1
        })
    );
}

#[test]
fn a_chain_owning_its_engines_counts_exactly_the_commands_the_host_has_yet_to_complete() {
    let (engines, mut files) = three_layers();
    let keys: Vec<FileKey> = (0..3).map(FileKey).collect();
    // A host with an allocator hands its vector over; the chain owns the engines.
    let mut chain: ChainOf<Vec<Engine<Vec<u8>, 64>>, Vec<u8>, 64> =
        ChainOf::new(engines, &keys).unwrap();
    let want = expected();
    let mut guests = HashMap::new();
    let mut reads = HashMap::new();
    // Reads whose data lives in every layer, the raw file and past the base's end.
    for (offset, len) in [(0, 256 * K), (60 * K, 8 * K), (M - 4 * K, 12 * K)] {
        let id = chain.submit(Request::Read { offset, len }).expect("submit");
        guests.insert(id, vec![0xEE; len as usize]);
        reads.insert(id, (offset, len));
    }
    let mut most_held = 0;
    for _ in 0..100_000 {
        let mut held = Vec::new();
        while let Some(command) = chain.poll_command() {
            held.push(command);
        }
        // Nothing left to poll: the count is what the host holds.
        assert_eq!(chain.commands_in_flight(), held.len());
        most_held = most_held.max(held.len());
        // Complete newest first, so base reads finish out of order.
        while let Some(command) = held.pop() {
            let file = if matches!(command.op, Op::ZeroBuffer { .. } | Op::Copy { .. }) {
                None
            } else {
                Some(files[command.layer].file(command.file))
            };
            assert!(
                command.file != FileId::Base || command.layer == 2,
                "only the last layer's base reaches the host"
            );
            let memory = chain.memory_mut(command.memory_of);
            let result = perform(file, command.op, memory, &mut guests);
            chain.complete(command.id, result);
            assert!(chain.commands_in_flight() >= held.len());
        }
        while let Some(event) = chain.poll_event() {
            if let Event::Completed { id, result } = event {
                result.expect("read");
                let (offset, len) = reads.remove(&id).expect("a read of ours");
                let got = guests.remove(&id).unwrap();
                assert!(
                    got == want[offset as usize..(offset + len) as usize],
                    "read {offset}+{len} differs"
                );
            }
        }
        if reads.is_empty() {
            assert_eq!(chain.commands_in_flight(), 0);
            assert!(most_held > 1, "the reads ran concurrently");
            let engines = chain.into_layers();
            assert_eq!(engines.len(), 3);
            return;
        }
    }
    panic!("the reads never completed");
}
