//! Copy-on-read and prefetch fills whose base blocks are all zero write no data: on a plain
//! image they become a zero write (unmap welcome) over the blocks' range, on a compact
//! image whose chunk is unallocated only the bitmap changes. The bits are still set, so
//! the blocks read from the image afterwards (shown by replacing the base with other
//! bytes), and a zero write zeroes whatever stale bytes the range held.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod support;

use fvd_core::engine::{
    Engine, Event, FileId, Layout, Op, OpenOptions, PrefetchMode, PrefetchState, Request, RequestId,
};
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use std::collections::HashMap;
use support::*;

const M: u64 = 1 << 20;
const BLOCK: u64 = 4096;
/// Base blocks holding data; every other block of the base is all zero.
const DATA_BLOCKS: [u64; 3] = [3, 100, 101];

/// A 1 MiB raw base: the blocks of [`DATA_BLOCKS`] hold a pattern, the rest zeros.
fn base_bytes() -> Vec<u8> {
    let mut base = vec![0u8; M as usize];
    for block in DATA_BLOCKS {
        let at = (block * BLOCK) as usize;
        for (i, b) in base[at..at + BLOCK as usize].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
    }
    base
}

fn create_options(compact: bool) -> CreateOptions<'static> {
    CreateOptions {
        virtual_size: M,
        base: Some(BaseSpec {
            name: b"base.raw",
            format: b"raw",
            size: M,
        }),
        block_size: Some(BLOCK),
        compact_image: compact,
        chunk_size: compact.then_some(64 * 1024),
        storage_grow_unit: compact.then_some(64 * 1024),
        journal_size: Some(8192),
        ..Default::default()
    }
}

fn image_over_base(compact: bool) -> Files {
    Files {
        image: fvd_image(&create_options(compact)),
        base: Some(base_bytes()),
        ..Default::default()
    }
}

/// A host pumping one engine over in-memory files, logging every command on the image.
struct Host {
    files: Files,
    guests: HashMap<RequestId, Vec<u8>>,
    image_ops: Vec<Op>,
    now_ms: u64,
}

impl Host {
    fn new(files: Files) -> Self {
        Host {
            files,
            guests: HashMap::new(),
            image_ops: Vec::new(),
            now_ms: 0,
        }
    }

    fn open(&mut self, copy_on_read: bool, prefetch: PrefetchMode) -> Engine<Vec<u8>, 64> {
        let options = OpenOptions {
            copy_on_read: Some(copy_on_read),
            prefetch,
            ..options(&self.files, true, true)
        };
        let mut engine = Engine::open(vec![0u8; MEMORY], options);
        loop {
            while let Some(event) = engine.poll_event() {
                match event {
                    Event::Opened => return engine,
                    Event::OpenFailed(e) => panic!("open failed: {e}"),
                    _ => {}
                }
            }
            assert!(self.step(&mut engine), "the engine stalled while opening");
        }
    }

    /// Performs one command; false when the engine has none.
    fn step(&mut self, engine: &mut Engine<Vec<u8>, 64>) -> bool {
        let Some(command) = engine.poll_command() else {
            return false;
        };
        let file = match command.op {
            Op::ZeroBuffer { .. } | Op::Copy { .. } => None,
            _ => Some(self.files.file(command.file)),
        };
        if command.file == FileId::Image {
            self.image_ops.push(command.op);
        }
        let result = perform(file, command.op, engine.memory_mut(), &mut self.guests);
        engine.complete(command.id, result);
        true
    }

    /// Runs `request` to completion and then every command it left (its fills).
    fn run(&mut self, engine: &mut Engine<Vec<u8>, 64>, request: Request, len: usize) -> Vec<u8> {
        let id = engine.submit(request).expect("submit");
        self.guests.insert(id, vec![0xEE; len]);
        let mut data = None;
        loop {
            while let Some(event) = engine.poll_event() {
                if let Event::Completed { id: done, result } = event {
                    assert_eq!(done, id);
                    result.expect("request failed");
                    data = self.guests.remove(&id);
                }
            }
            if !self.step(engine) {
                return data.expect("the engine stalled");
            }
        }
    }

    fn read(&mut self, engine: &mut Engine<Vec<u8>, 64>, offset: u64, len: usize) -> Vec<u8> {
        let request = Request::Read {
            offset,
            len: len as u64,
        };
        self.run(engine, request, len)
    }

    /// Pumps, giving the engine time when it has nothing to do, until prefetch is done.
    fn prefetch_to_the_end(&mut self, engine: &mut Engine<Vec<u8>, 64>) {
        for _ in 0..1_000_000 {
            let state = engine.prefetch_progress().state;
            if state == PrefetchState::Done {
                return;
            }
            assert!(
                !matches!(state, PrefetchState::Failed | PrefetchState::Off),
                "prefetch ended as {state:?}"
            );
            if !self.step(engine) {
                self.now_ms += 10;
                engine.handle_timeout(self.now_ms);
            }
        }
        panic!("prefetch never finished");
    }

    /// Image commands that write guest data (a `Write` or `WriteZeroes` from the data
    /// area on), as (offset, len, zeros).
    fn data_writes(&self, data_offset: u64) -> Vec<(u64, u64, bool)> {
        self.image_ops
            .iter()
            .filter_map(|op| match *op {
                Op::Write { offset, len, .. } if offset >= data_offset => {
                    Some((offset, len as u64, false))
                }
                Op::WriteZeroes { offset, len, unmap } if offset >= data_offset => {
                    assert!(unmap, "a fill's zero write welcomes a hole");
                    Some((offset, len, true))
                }
                _ => None,
            })
            .collect()
    }

    /// Replaces the base by bytes it never held: what still comes from the base reads
    /// 0x5A, what the image holds reads as the image says.
    fn poison_base(&mut self) {
        self.files.base = Some(vec![0x5A; M as usize]);
    }
}

fn data_offset(engine: &Engine<Vec<u8>, 64>) -> u64 {
    match engine.info().unwrap().layout {
        Layout::Fvd(layout) => layout.data_offset,
        _ => unreachable!("an FVD image"),
    }
}

fn base_block(block: u64) -> Vec<u8> {
    let at = (block * BLOCK) as usize;
    base_bytes()[at..at + BLOCK as usize].to_vec()
}

#[test]
fn a_bounce_fill_of_all_zero_base_blocks_zeroes_the_range_instead_of_writing_data() {
    let mut files = image_over_base(false);
    // Stale bytes of an interrupted earlier write where block 7 lives in the image: the
    // fill's zero write must clear them before the bit says the block is local.
    let data = plan(&create_options(false)).unwrap().data_offset.get() as usize;
    let stale_at = data + 7 * BLOCK as usize;
    files.image.resize(data + M as usize, 0);
    files.image[stale_at..stale_at + BLOCK as usize].fill(0xAB);
    let mut host = Host::new(files);
    let mut engine = host.open(true, PrefetchMode::Off);
    let data = data_offset(&engine);
    // Reads shorter than a block: bounce fills, one of a zero block, one of a data block.
    let zero_part = host.read(&mut engine, 7 * BLOCK + 512, 1024);
    assert!(zero_part.iter().all(|&b| b == 0));
    let data_part = host.read(&mut engine, 3 * BLOCK + 512, 1024);
    assert_eq!(data_part, base_block(3)[512..1536]);

    let writes = host.data_writes(data);
    assert_eq!(
        writes,
        vec![
            (data + 7 * BLOCK, BLOCK, true),
            (data + 3 * BLOCK, BLOCK, false)
        ],
        "the zero block is a zero write, the data block a data write"
    );
    let stats = engine.stats();
    assert_eq!(stats.cor_fills_done, 2);
    assert_eq!(stats.fills_recorded_as_zeros, 1);

    // Both blocks are local now: the base is no longer read for them.
    host.poison_base();
    let zero_block = host.read(&mut engine, 7 * BLOCK, BLOCK as usize);
    assert!(zero_block.iter().all(|&b| b == 0), "stale bytes never show");
    assert_eq!(
        host.read(&mut engine, 3 * BLOCK, BLOCK as usize),
        base_block(3)
    );
    assert!(host
        .read(&mut engine, 8 * BLOCK, 512)
        .iter()
        .all(|&b| b == 0x5A));
}

#[test]
fn a_bounce_fill_of_all_zero_base_blocks_on_an_unallocated_compact_chunk_only_sets_bits() {
    let mut host = Host::new(image_over_base(true));
    let mut engine = host.open(true, PrefetchMode::Off);
    let data = data_offset(&engine);
    let zero_part = host.read(&mut engine, 20 * BLOCK + 1024, 512);
    assert!(zero_part.iter().all(|&b| b == 0));

    assert_eq!(host.data_writes(data), vec![], "no data command at all");
    let stats = engine.stats();
    assert_eq!(stats.chunks_allocated, 0, "no chunk for zeros");
    assert_eq!(stats.cor_fills_done, 1);
    assert_eq!(stats.fills_recorded_as_zeros, 1);

    host.poison_base();
    let zero_block = host.read(&mut engine, 20 * BLOCK, BLOCK as usize);
    assert!(zero_block.iter().all(|&b| b == 0), "the bit is set: zeros");
    assert!(host
        .read(&mut engine, 21 * BLOCK, 512)
        .iter()
        .all(|&b| b == 0x5A));
}

#[test]
fn a_guest_fill_whose_blocks_were_copied_into_engine_memory_writes_zeros_for_zero_blocks() {
    let mut host = Host::new(image_over_base(false));
    let mut engine = host.open(true, PrefetchMode::Off);
    let data = data_offset(&engine);
    // Whole blocks from an aligned start: a guest fill, copied into a bounce slot (there
    // is room), so the engine sees its bytes. Blocks 8 and 9 are zero, block 3 is not.
    let zeros = host.read(&mut engine, 8 * BLOCK, 2 * BLOCK as usize);
    assert!(zeros.iter().all(|&b| b == 0));
    assert_eq!(
        host.read(&mut engine, 3 * BLOCK, BLOCK as usize),
        base_block(3)
    );
    assert_eq!(
        host.data_writes(data),
        vec![
            (data + 8 * BLOCK, 2 * BLOCK, true),
            (data + 3 * BLOCK, BLOCK, false)
        ]
    );
    assert_eq!(engine.stats().fills_recorded_as_zeros, 1);
    host.poison_base();
    let local = host.read(&mut engine, 8 * BLOCK, 2 * BLOCK as usize);
    assert!(local.iter().all(|&b| b == 0), "the bits are set");
}

/// Prefetches the whole base of `files` and checks that only the data blocks were
/// written as data; returns the host and engine for more checks.
fn prefetch_all(compact: bool) -> (Host, Engine<Vec<u8>, 64>) {
    let mut host = Host::new(image_over_base(compact));
    let mut engine = host.open(
        false,
        PrefetchMode::Now {
            max_read_kib_s: None,
        },
    );
    host.prefetch_to_the_end(&mut engine);
    let data = data_offset(&engine);
    let written: Vec<(u64, u64, bool)> = host.data_writes(data);
    let data_written: u64 = written.iter().filter(|w| !w.2).map(|w| w.1).sum();
    assert_eq!(
        data_written,
        DATA_BLOCKS.len() as u64 * BLOCK,
        "only the data blocks are written as data: {written:?}"
    );
    let blocks = M / BLOCK;
    let stats = engine.stats();
    assert_eq!(stats.prefetched_blocks, blocks);
    assert_eq!(
        stats.fills_recorded_as_zeros,
        blocks - DATA_BLOCKS.len() as u64
    );
    (host, engine)
}

fn prefetched_image_reads_as_the_base(host: &mut Host, engine: &mut Engine<Vec<u8>, 64>) {
    host.poison_base();
    let expected = base_bytes();
    let got = host.read(engine, 0, M as usize);
    assert!(
        got == expected,
        "the prefetched image reads as its base did"
    );
}

#[test]
fn prefetch_records_all_zero_base_blocks_of_a_plain_image_as_zero_writes() {
    let (mut host, mut engine) = prefetch_all(false);
    let data = data_offset(&engine);
    let zero_writes = host.data_writes(data).iter().filter(|w| w.2).count() as u64;
    assert_eq!(zero_writes, M / BLOCK - DATA_BLOCKS.len() as u64);
    prefetched_image_reads_as_the_base(&mut host, &mut engine);
}

#[test]
fn prefetch_records_all_zero_base_blocks_of_a_compact_image_without_allocating() {
    let (mut host, mut engine) = prefetch_all(true);
    // Blocks 3, 100 and 101 lie in chunks 0 and 6 (16 blocks each): only those are
    // allocated; zero blocks of an allocated chunk are zero writes, the rest only bits.
    assert_eq!(engine.stats().chunks_allocated, 2);
    prefetched_image_reads_as_the_base(&mut host, &mut engine);
}
