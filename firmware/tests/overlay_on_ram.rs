//! The overlay driver on the host, over the RAM medium with its volatile write cache:
//! reads fall through to the base, writes stay off it, flushed writes survive a power cut
//! at every medium command of a workload, factory reset brings the base back exactly, and
//! core's check of what a cut leaves is clean.

use embedded_sdmmc::{Block, BlockCount, BlockDevice, BlockIdx};
use fvd_firmware::medium::{Extent, Medium};
use fvd_firmware::ram::{RamError, RamMedium};
use fvd_firmware::{check, create, DriverError, Geometry, Layout, OverlayDisk};
use std::cell::Cell;
use std::collections::HashMap;

const BASE_BLOCKS: u32 = 2048; // 1 MiB factory image
const OVERLAY_BLOCKS: u32 = 2048 + 512;
const CACHE: usize = 64;
const ENGINE_MEMORY: usize = 96 << 10;
const CACHE_BYTES: usize = 16 << 10;
const CHECK_MEMORY: usize = 64 << 10;

fn layout() -> Layout {
    Layout {
        base: Extent {
            first: 0,
            blocks: BASE_BLOCKS,
        },
        overlay: Extent {
            first: BASE_BLOCKS,
            blocks: OVERLAY_BLOCKS,
        },
    }
}

/// A medium whose base partition holds a recognisable factory image.
fn factory_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; (BASE_BLOCKS + OVERLAY_BLOCKS) as usize * 512];
    for (i, b) in bytes[..BASE_BLOCKS as usize * 512].iter_mut().enumerate() {
        *b = (i / 512 % 251) as u8 ^ (i % 7) as u8 | 1;
    }
    bytes
}

fn base_block(bytes: &[u8], index: u32) -> [u8; 512] {
    bytes[index as usize * 512..][..512].try_into().unwrap()
}

fn pattern(index: u32, generation: u8) -> Block {
    let mut block = Block::new();
    for (i, b) in block.contents.iter_mut().enumerate() {
        *b = generation.wrapping_mul(31) ^ (index as u8) ^ (i as u8);
    }
    block.contents[0] = generation;
    block.contents[1..5].copy_from_slice(&index.to_le_bytes());
    block
}

fn read_block<D: BlockDevice>(disk: &D, index: u32) -> [u8; 512]
where
    D::Error: std::fmt::Debug,
{
    let mut blocks = [Block::new()];
    disk.read(&mut blocks, BlockIdx(index)).unwrap();
    blocks[0].contents
}

#[test]
fn a_new_overlay_reads_as_the_base_and_keeps_every_write_off_it() {
    let original = factory_bytes();
    let mut bytes = original.clone();
    let medium = RamMedium::<CACHE>::new(&mut bytes);
    let mut memory = vec![0u8; ENGINE_MEMORY];
    let disk = OverlayDisk::open_or_create(
        &medium,
        layout(),
        Geometry::default(),
        &mut memory,
        CACHE_BYTES,
    )
    .unwrap();
    assert_eq!(disk.num_blocks().unwrap(), BlockCount(BASE_BLOCKS));
    for index in [0, 1, 7, 8, 1000, BASE_BLOCKS - 1] {
        assert_eq!(read_block(&disk, index), base_block(&original, index));
    }
    let written = [3u32, 9, 10, 11, 2047];
    for &index in &written {
        disk.write(&[pattern(index, 1)], BlockIdx(index)).unwrap();
    }
    disk.flush().unwrap();
    for &index in &written {
        assert_eq!(read_block(&disk, index), pattern(index, 1).contents);
    }
    // Neighbours in the same copy-on-write block keep the base's bytes.
    assert_eq!(read_block(&disk, 2), base_block(&original, 2));
    assert_eq!(read_block(&disk, 12), base_block(&original, 12));
    assert!(disk.stats().guest_writes >= written.len() as u64);
    assert!(disk.close().unwrap());
    medium
        .with_durable(|now| {
            assert_eq!(
                now[..BASE_BLOCKS as usize * 512],
                original[..BASE_BLOCKS as usize * 512]
            )
        })
        .unwrap();
    let outcome = check(&medium, layout(), &mut vec![0u8; CHECK_MEMORY]).unwrap();
    assert!(outcome.is_clean(), "{outcome:?}");
    assert!(!outcome.summary.counts.dirty);
}

#[test]
fn a_block_past_the_virtual_disk_is_refused_with_a_typed_error() {
    let mut bytes = factory_bytes();
    let medium = RamMedium::<CACHE>::new(&mut bytes);
    let mut memory = vec![0u8; ENGINE_MEMORY];
    let disk = OverlayDisk::open_or_create(
        &medium,
        layout(),
        Geometry::default(),
        &mut memory,
        CACHE_BYTES,
    )
    .unwrap();
    let mut blocks = [Block::new(), Block::new()];
    assert_eq!(
        disk.read(&mut blocks, BlockIdx(BASE_BLOCKS - 1)),
        Err(DriverError::OutOfRange)
    );
    assert_eq!(
        disk.write(&blocks, BlockIdx(u32::MAX)),
        Err(DriverError::OutOfRange)
    );
}

#[test]
fn overlapping_or_too_small_partitions_are_refused_before_anything_is_written() {
    let original = factory_bytes();
    let mut bytes = original.clone();
    let medium = RamMedium::<CACHE>::new(&mut bytes);
    let overlapping = Layout {
        overlay: Extent {
            first: BASE_BLOCKS - 1,
            blocks: OVERLAY_BLOCKS,
        },
        ..layout()
    };
    assert_eq!(
        create(&medium, overlapping, Geometry::default()),
        Err(DriverError::BadLayout)
    );
    let small = Layout {
        overlay: Extent {
            first: BASE_BLOCKS,
            blocks: BASE_BLOCKS,
        },
        ..layout()
    };
    assert!(matches!(
        create(&medium, small, Geometry::default()),
        Err(DriverError::OverlayTooSmall { .. })
    ));
    let past_end = Layout {
        overlay: Extent {
            first: BASE_BLOCKS,
            blocks: OVERLAY_BLOCKS + 1,
        },
        ..layout()
    };
    assert_eq!(
        create(&medium, past_end, Geometry::default()),
        Err(DriverError::BadLayout)
    );
    assert_eq!(medium.unflushed(), 0);
    medium.with_durable(|now| assert!(now == original)).unwrap();
}

#[test]
fn an_overlay_partition_holding_something_else_is_refused_not_replaced() {
    let mut bytes = factory_bytes();
    let start = BASE_BLOCKS as usize * 512;
    bytes[start..start + 512].fill(0xA5);
    let before = bytes.clone();
    let medium = RamMedium::<CACHE>::new(&mut bytes);
    let mut memory = vec![0u8; ENGINE_MEMORY];
    let refused = OverlayDisk::open_or_create(
        &medium,
        layout(),
        Geometry::default(),
        &mut memory,
        CACHE_BYTES,
    );
    assert!(matches!(refused, Err(DriverError::Engine(_))));
    medium.flush().unwrap();
    medium.with_durable(|now| assert!(now == before)).unwrap();
}

#[test]
fn factory_reset_restores_the_base_exactly() {
    let original = factory_bytes();
    let mut bytes = original.clone();
    let medium = RamMedium::<CACHE>::new(&mut bytes);
    let mut memory = vec![0u8; ENGINE_MEMORY];
    let disk = OverlayDisk::open_or_create(
        &medium,
        layout(),
        Geometry::default(),
        &mut memory,
        CACHE_BYTES,
    )
    .unwrap();
    for index in (0..BASE_BLOCKS).step_by(97) {
        disk.write(&[pattern(index, 2)], BlockIdx(index)).unwrap();
    }
    disk.flush().unwrap();
    disk.factory_reset(Geometry::default()).unwrap();
    let disk = OverlayDisk::open(&medium, layout(), &mut memory, CACHE_BYTES).unwrap();
    for index in 0..BASE_BLOCKS {
        assert_eq!(
            read_block(&disk, index),
            base_block(&original, index),
            "block {index}"
        );
    }
}

/// A medium that stops at a chosen command: after `budget` writes and flushes every
/// request fails, as if power went at that boundary.
struct Dying<'m, M> {
    medium: &'m M,
    budget: Cell<u64>,
}

impl<M: Medium<Error = RamError>> Dying<'_, M> {
    fn spend(&self) -> Result<(), RamError> {
        match self.budget.get() {
            0 => Err(RamError::OutOfRange),
            n => {
                self.budget.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<M: Medium<Error = RamError>> BlockDevice for Dying<'_, M> {
    type Error = RamError;
    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), RamError> {
        if self.budget.get() == 0 {
            return Err(RamError::OutOfRange);
        }
        self.medium.read(blocks, start)
    }
    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), RamError> {
        self.spend()?;
        self.medium.write(blocks, start)
    }
    fn num_blocks(&self) -> Result<BlockCount, RamError> {
        self.medium.num_blocks()
    }
}

impl<M: Medium<Error = RamError>> Medium for Dying<'_, M> {
    fn flush(&self) -> Result<(), RamError> {
        self.spend()?;
        self.medium.flush()
    }
}

enum Action {
    Write(u32, u8),
    Flush,
}

/// A small workload: writes inside one copy-on-write block and across several, an
/// overwrite of a flushed block, and writes left unflushed at the end.
const WORKLOAD: &[Action] = &[
    Action::Write(5, 1),
    Action::Write(6, 1),
    Action::Flush,
    Action::Write(100, 2),
    Action::Write(5, 3),
    Action::Write(2047, 4),
    Action::Flush,
    Action::Write(6, 5),
    Action::Write(900, 6),
    Action::Flush,
    Action::Write(101, 7),
    Action::Write(5, 8),
];

/// Per block: the value durable at the last completed flush, and every value written
/// since (any of them may be what a cut leaves).
type Model = HashMap<u32, (Option<[u8; 512]>, Vec<[u8; 512]>)>;

/// Runs the workload on a medium that dies after `budget` commands; returns the model and
/// whether the workload ran to its end.
fn run_until_cut(medium: &RamMedium<'_, CACHE>, budget: u64, memory: &mut [u8]) -> (Model, bool) {
    let dying = Dying {
        medium,
        budget: Cell::new(budget),
    };
    let mut model = Model::new();
    let Ok(disk) = OverlayDisk::open(&dying, layout(), memory, CACHE_BYTES) else {
        return (model, false);
    };
    for action in WORKLOAD {
        match *action {
            Action::Write(index, generation) => {
                let block = pattern(index, generation);
                model.entry(index).or_default().1.push(block.contents);
                if disk.write(&[block], BlockIdx(index)).is_err() {
                    return (model, false);
                }
            }
            Action::Flush => {
                if disk.flush().is_err() {
                    return (model, false);
                }
                for (floor, since) in model.values_mut() {
                    if let Some(last) = since.pop() {
                        *floor = Some(last);
                    }
                    since.clear();
                }
            }
        }
    }
    (model, true)
}

#[test]
fn flushed_writes_survive_a_power_cut_at_every_medium_command_of_a_workload() {
    let original = factory_bytes();
    let mut budget = 0;
    loop {
        for seed in [0x1234_5678_9abc_def1_u64, 0xffff_0000_ffff_0001, 7] {
            let mut bytes = original.clone();
            let medium = RamMedium::<CACHE>::new(&mut bytes);
            let mut memory = vec![0u8; ENGINE_MEMORY];
            create(&medium, layout(), Geometry::default()).unwrap();
            medium.flush().unwrap();
            let (model, finished) = run_until_cut(&medium, budget, &mut memory);
            medium.power_cut(seed).unwrap();

            let left = check(&medium, layout(), &mut vec![0u8; CHECK_MEMORY]).unwrap();
            assert_eq!(
                left.summary.counts.corruptions, 0,
                "cut at {budget}: {left:?}"
            );

            let disk = OverlayDisk::open(&medium, layout(), &mut memory, CACHE_BYTES)
                .unwrap_or_else(|e| panic!("reopen after a cut at command {budget}: {e:?}"));
            for index in 0..BASE_BLOCKS {
                let now = read_block(&disk, index);
                match model.get(&index) {
                    None => assert_eq!(
                        now,
                        base_block(&original, index),
                        "cut at {budget}, block {index}"
                    ),
                    Some((floor, since)) => {
                        let floor = floor.unwrap_or_else(|| base_block(&original, index));
                        assert!(
                            now == floor || since.contains(&now),
                            "cut at {budget}, seed {seed:x}: block {index} holds generation {} (flushed {})",
                            now[0],
                            floor[0]
                        );
                    }
                }
            }
            assert!(disk.close().unwrap());
            let after = check(&medium, layout(), &mut vec![0u8; CHECK_MEMORY]).unwrap();
            assert!(
                after.is_clean() && !after.summary.counts.dirty,
                "cut at {budget}: {after:?}"
            );
            if finished {
                assert!(budget > 10, "the workload ran with only {budget} commands");
                return;
            }
        }
        budget += 1;
    }
}

#[test]
fn the_engine_memory_the_tests_and_the_firmware_give_is_what_core_asks_for_the_overlay() {
    let mut bytes = factory_bytes();
    let medium = RamMedium::<CACHE>::new(&mut bytes);
    create(&medium, layout(), Geometry::default()).unwrap();
    let header = medium.with_durable(|ram| ram[..4096].to_vec()).unwrap();
    let need = fvd_core::engine::memory_needed(&header, CACHE_BYTES, 0);
    println!(
        "engine memory, 4 KiB blocks: {need} bytes with a 16 KiB cache, {} with the least",
        fvd_core::engine::memory_needed(&header, 0, 0)
    );
    assert!(
        need <= ENGINE_MEMORY,
        "core asks {need}, the driver gets {ENGINE_MEMORY}"
    );
    let mut memory = vec![0u8; need];
    let disk = OverlayDisk::open(&medium, layout(), &mut memory, CACHE_BYTES).unwrap();
    disk.write(&[pattern(1, 1)], BlockIdx(1)).unwrap();
    disk.flush().unwrap();
    assert_eq!(read_block(&disk, 1), pattern(1, 1).contents);
}

#[test]
fn multi_block_requests_split_in_runs_read_back_what_any_run_size_wrote() {
    let original = factory_bytes();
    let mut bytes = original.clone();
    let medium = RamMedium::<CACHE>::new(&mut bytes);
    let mut memory = vec![0u8; ENGINE_MEMORY];
    let disk = OverlayDisk::open_or_create(
        &medium,
        layout(),
        Geometry::default(),
        &mut memory,
        CACHE_BYTES,
    )
    .unwrap();
    // The model: what each block of the virtual disk holds.
    let mut model: Vec<[u8; 512]> = (0..BASE_BLOCKS).map(|i| base_block(&original, i)).collect();
    let mut start = 5u32;
    for (generation, len) in (1u8..).zip([1usize, 2, 7, 8, 9, 16, 17, 20, 3]) {
        let blocks: Vec<Block> = (0..len as u32)
            .map(|i| pattern(start + i, generation))
            .collect();
        disk.write(&blocks, BlockIdx(start)).unwrap();
        for (i, block) in blocks.iter().enumerate() {
            model[start as usize + i] = block.contents;
        }
        start += len as u32 * 3 + 1; // unaligned starts, gaps of base blocks between runs
    }
    for run in [1usize, 5, 8, 13, 24] {
        let mut at = 0u32;
        while at < start {
            let mut blocks = vec![Block::new(); run];
            disk.read(&mut blocks, BlockIdx(at)).unwrap();
            for (i, block) in blocks.iter().enumerate() {
                assert_eq!(
                    block.contents,
                    model[at as usize + i],
                    "block {} (runs of {run})",
                    at as usize + i
                );
            }
            at += run as u32;
        }
    }
}
