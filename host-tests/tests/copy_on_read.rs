//! Copy-on-read: base data read by the guest is copied into the image (soft writes), and
//! such a copy never overwrites a guest write, whatever the interleaving. The targeted
//! tests drive the engine command by command to replay the interleavings of the 2011
//! review (seed 004).

use fvd_core::engine::*;
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::storage::Storage;
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;
use std::collections::HashMap;

const BLOCK: u64 = 65536;

fn base_bytes() -> Vec<u8> {
    (0..(1u64 << 20)).map(|i| (i / 512) as u8 ^ 0xa5).collect()
}

fn image(compact: bool) -> MemStorage {
    image_over(compact, base_bytes())
}

/// An image over a 1 MiB base holding `base`.
fn image_over(compact: bool, base: Vec<u8>) -> MemStorage {
    let options = CreateOptions {
        virtual_size: 2 << 20,
        compact_image: compact,
        block_size: Some(BLOCK),
        chunk_size: Some(BLOCK * 2),
        base: Some(BaseSpec {
            name: b"base",
            format: b"raw",
            size: 1 << 20,
        }),
        ..Default::default()
    };
    MemStorage {
        image: MemFile::new(initial_metadata(&plan(&options).unwrap())),
        data: None,
        base: Some(MemFile::new(base)),
        writes: 0,
    }
}

#[test]
fn reads_copy_base_blocks_into_the_image() {
    for compact in [false, true] {
        let options = DriverOptions {
            copy_on_read: Some(true),
            ..Default::default()
        };
        let mut d = Driver::open(image(compact), options).unwrap();
        assert!(d.engine().copy_on_read());
        let base = base_bytes();
        // An unaligned read spanning three blocks.
        assert_eq!(
            d.read(BLOCK - 4096, 2 * BLOCK as usize).unwrap(),
            base[(BLOCK - 4096) as usize..][..2 * BLOCK as usize]
        );
        d.run_until_idle().unwrap();
        assert_eq!(d.engine().stats().cor_fills_done, 3);
        for block in 0..3 {
            assert!(
                matches!(
                    d.map(block * BLOCK, BLOCK).unwrap().mapping,
                    Mapping::Data { .. }
                ),
                "block {block} is local now"
            );
        }
        assert_eq!(d.map(3 * BLOCK, BLOCK).unwrap().mapping, Mapping::Base);
        // The copies are real: with the base gone the blocks still read right.
        d.flush().unwrap();
        let (mut storage, _) = d.close().unwrap();
        storage.base = Some(MemFile::new(vec![0xEE; 1 << 20]));
        let mut d = Driver::open(
            storage,
            DriverOptions {
                writable: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            d.read(0, 3 * BLOCK as usize).unwrap(),
            base[..3 * BLOCK as usize]
        );
    }
}

#[test]
fn copy_on_read_can_be_turned_off_and_is_off_read_only() {
    let mut d = Driver::open(
        image(false),
        DriverOptions {
            copy_on_read: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    d.read(0, BLOCK as usize).unwrap();
    assert_eq!(d.engine().stats().cor_fills, 0);
    let d = Driver::open(
        image(false),
        DriverOptions {
            writable: false,
            copy_on_read: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!d.engine().copy_on_read());
}

/// A host that performs commands only when the test says so.
struct Manual {
    engine: Engine<Vec<u8>>,
    storage: MemStorage,
    buffers: HashMap<usize, Vec<u8>>,
    pending: Vec<Command>,
    done: HashMap<RequestId, Result<Reply, RequestError>>,
}

impl Manual {
    fn open(storage: MemStorage) -> Self {
        let mut storage = storage;
        let options = OpenOptions {
            writable: true,
            image_len: storage.len(FileId::Image).unwrap().unwrap(),
            data_len: None,
            base_available: true,
            cache_bytes: 64 * 512,
            storage_zero_init: true,
            release_stale_journal: true,
            copy_on_read: Some(true),
            prefetch: PrefetchMode::Off,
        };
        let engine = Engine::open(
            vec![0u8; HEADER_AREA + SCRATCH_AREA + 64 * 512 + (1 << 20)],
            options,
        );
        let mut m = Manual {
            engine,
            storage,
            buffers: HashMap::new(),
            pending: Vec::new(),
            done: HashMap::new(),
        };
        while !m.engine.is_open() {
            m.poll();
            let c = m.pending.remove(0);
            m.perform(c);
        }
        m
    }

    fn poll(&mut self) {
        while let Some(c) = self.engine.poll_command() {
            self.pending.push(c);
        }
        while let Some(e) = self.engine.poll_event() {
            if let Event::Completed { id, result } = e {
                self.done.insert(id, result);
            }
        }
    }

    fn buffer(&mut self, b: Buffer, len: usize) -> &mut [u8] {
        match b {
            Buffer::Guest { request, offset } => {
                &mut self.buffers.get_mut(&request.slot()).unwrap()[offset..offset + len]
            }
            Buffer::Engine { offset } => &mut self.engine.memory_mut()[offset..offset + len],
        }
    }

    fn perform(&mut self, c: Command) {
        match c.op {
            Op::Read { offset, len, into } => {
                let mut tmp = vec![0; len];
                self.storage.read_at(c.file, offset, &mut tmp).unwrap();
                self.buffer(into, len).copy_from_slice(&tmp);
            }
            Op::Write { offset, len, from } => {
                let data = self.buffer(from, len).to_vec();
                self.storage.write_at(c.file, offset, &data).unwrap();
            }
            Op::WriteZeroes { offset, len, unmap } => self
                .storage
                .write_zeroes(c.file, offset, len, unmap)
                .unwrap(),
            Op::ZeroBuffer { into, len } => self.buffer(into, len).fill(0),
            Op::Copy { from, into, len } => {
                let data = self.buffer(from, len).to_vec();
                self.buffer(into, len).copy_from_slice(&data);
            }
            Op::Flush => self.storage.flush(c.file).unwrap(),
            Op::SetLength { len } => self.storage.set_len(c.file, len).unwrap(),
        }
        self.engine.complete(c.id, Ok(()));
        self.poll();
    }

    fn submit(&mut self, request: Request, buffer: Vec<u8>) -> RequestId {
        let id = self.engine.submit(request).unwrap();
        self.buffers.insert(id.slot(), buffer);
        self.poll();
        id
    }

    /// Performs the first pending command matching `pick`.
    fn perform_where(&mut self, pick: impl Fn(&Command) -> bool) -> Command {
        let i = self
            .pending
            .iter()
            .position(pick)
            .expect("no such command pending");
        let c = self.pending.remove(i);
        self.perform(c);
        c
    }

    /// Performs other commands until a base read of a whole block is pending.
    fn until_fill_reads(&mut self) {
        while !self.pending.iter().any(is_fill_read) {
            let i = self
                .pending
                .iter()
                .position(|c| !is_base_read(c))
                .expect("stuck");
            let c = self.pending.remove(i);
            self.perform(c);
        }
    }

    fn run_all(&mut self) {
        self.poll();
        while !self.pending.is_empty() {
            let c = self.pending.remove(0);
            self.perform(c);
        }
    }

    fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let id = self.submit(
            Request::Read {
                offset,
                len: len as u64,
            },
            vec![0; len],
        );
        self.run_all();
        assert_eq!(self.done.remove(&id), Some(Ok(Reply::Done)));
        self.buffers.remove(&id.slot()).unwrap()
    }
}

fn is_base_read(c: &Command) -> bool {
    c.file == FileId::Base && matches!(c.op, Op::Read { .. })
}

fn is_fill_read(c: &Command) -> bool {
    is_base_read(c)
        && matches!(c.op, Op::Read { len, into: Buffer::Engine { .. }, .. } if len as u64 == BLOCK)
}

/// The bases the never-clobber tests run over: data, and all zeros (whose fills write
/// zeros instead of data, or on an unallocated compact chunk only set bits).
fn bases() -> [Vec<u8>; 2] {
    [base_bytes(), vec![0; 1 << 20]]
}

#[test]
fn cor_never_overwrites_a_newer_guest_write_issued_during_the_base_read() {
    for (compact, base) in [false, true]
        .into_iter()
        .flat_map(|c| bases().map(|b| (c, b)))
    {
        let mut m = Manual::open(image_over(compact, base.clone()));
        // 1. The guest reads sector 0; the fill's base read of block 0 is in flight.
        let read = m.submit(
            Request::Read {
                offset: 0,
                len: 512,
            },
            vec![0; 512],
        );
        m.until_fill_reads();
        // 2. The guest writes another sector of the same block, and that write completes
        //    (its copy-on-write reads the base too).
        let write = m.submit(
            Request::Write {
                offset: 8192,
                len: 512,
            },
            vec![0x77; 512],
        );
        while !m.done.contains_key(&write) {
            let i = m
                .pending
                .iter()
                .position(|c| !is_fill_read(c))
                .expect("the write waits for nothing else");
            let c = m.pending.remove(i);
            m.perform(c);
        }
        assert_eq!(m.done.remove(&write), Some(Ok(Reply::Done)));
        // 3. Only now the fill's base read completes, and everything else runs.
        m.run_all();
        assert_eq!(m.done.remove(&read), Some(Ok(Reply::Done)));
        assert_eq!(m.buffers.remove(&read.slot()).unwrap(), base[..512]);
        let mut expected = base[..BLOCK as usize].to_vec();
        expected[8192..8704].fill(0x77);
        assert_eq!(
            m.read(0, BLOCK as usize),
            expected,
            "compact {compact}: the guest's write survived"
        );
        assert_eq!(m.engine.stats().cor_fills_cancelled, 1);
    }
}

#[test]
fn a_guest_write_after_the_fill_started_writing_waits_and_wins() {
    for base in bases() {
        guest_write_after_the_fill_started_writing_waits_and_wins(base);
    }
}

fn guest_write_after_the_fill_started_writing_waits_and_wins(base: Vec<u8>) {
    let zeros = base.iter().all(|&b| b == 0);
    let mut m = Manual::open(image_over(false, base.clone()));
    let read = m.submit(
        Request::Read {
            offset: 0,
            len: 512,
        },
        vec![0; 512],
    );
    m.until_fill_reads();
    // The fill's base read and the reader's copy complete; the fill's data write (its zero
    // write, for a zero block) is issued.
    m.perform_where(is_fill_read);
    m.perform_where(|c| matches!(c.op, Op::Copy { .. }));
    assert_eq!(m.done.remove(&read), Some(Ok(Reply::Done)));
    let fill_write = m.pending.iter().position(|c| match c.op {
        Op::Write { len, .. } => !zeros && len as u64 == BLOCK,
        Op::WriteZeroes { len, unmap, .. } => zeros && unmap && len == BLOCK,
        _ => false,
    });
    assert!(
        fill_write.is_some(),
        "the fill is writing its block: {:?}",
        m.pending
    );
    // A guest write to the block now must not be issued before the fill's write is done.
    let write = m.submit(
        Request::Write {
            offset: 0,
            len: 512,
        },
        vec![0x55; 512],
    );
    assert!(
        !m.pending.iter().any(|c| matches!(
            c.op,
            Op::Write {
                from: Buffer::Guest { .. },
                ..
            }
        )),
        "guest write waits for the fill"
    );
    m.run_all();
    assert_eq!(m.done.remove(&write), Some(Ok(Reply::Done)));
    let mut expected = base[..BLOCK as usize].to_vec();
    expected[..512].fill(0x55);
    assert_eq!(m.read(0, BLOCK as usize), expected);
    assert_eq!(m.engine.stats().cor_fills_done, 1);
    assert_eq!(m.engine.stats().fills_recorded_as_zeros, u64::from(zeros));
}
