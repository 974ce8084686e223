//! An in-memory host for the engine and the chain, for tests that exercise `fvd-core` with
//! no file at all (rc-zip's shape: the machine is pumped from byte vectors). Each layer
//! has an image, an optional data file and, for the last layer, an optional raw base;
//! guest buffers live in a table keyed by request id.
#![allow(dead_code)]

use fvd_core::chain::{Chain, ChainCommand, FileKey};
use fvd_core::engine::{
    Buffer, Engine, Event, FileId, IoError, Op, OpenOptions, PrefetchMode, Reply, Request,
    RequestError, RequestId,
};
use fvd_core::fvd::create::{initial_bytes_at, metadata_len, plan, CreateOptions};
use fvd_core::fvd::RawHeader;
use fvd_core::qed::QedCreateOptions;
use std::collections::HashMap;

/// Engine memory every test engine gets.
pub const MEMORY: usize = 8192 + 4096 + 64 * 512 + (1 << 20);
/// Metadata cache bytes.
pub const CACHE: usize = 64 * 512;

/// The files of one layer.
#[derive(Clone, Debug, Default)]
pub struct Files {
    pub image: Vec<u8>,
    pub data: Option<Vec<u8>>,
    pub base: Option<Vec<u8>>,
}

impl Files {
    pub fn file(&mut self, id: FileId) -> &mut Vec<u8> {
        match id {
            FileId::Image => &mut self.image,
            FileId::Data => self.data.as_mut().expect("no data file"),
            FileId::Base => self.base.as_mut().expect("no base file"),
        }
    }
}

/// The bytes of a new FVD image planned from `options`.
pub fn fvd_image(options: &CreateOptions) -> Vec<u8> {
    let header: RawHeader = plan(options).unwrap();
    let mut bytes = vec![0u8; metadata_len(&header) as usize];
    initial_bytes_at(&header, 0, &mut bytes);
    bytes
}

/// The bytes of a new QED image planned from `options`.
pub fn qed_image(options: &QedCreateOptions) -> Vec<u8> {
    let plan = fvd_core::qed::plan(options).unwrap();
    let mut bytes = vec![0u8; plan.file_len as usize];
    plan.write_header_area(&mut bytes[..plan.header_len as usize])
        .unwrap();
    bytes
}

/// Open options for `files`.
pub fn options(files: &Files, writable: bool, base_available: bool) -> OpenOptions {
    OpenOptions {
        writable,
        image_len: files.image.len() as u64,
        data_len: files.data.as_ref().map(|d| d.len() as u64),
        base_available,
        cache_bytes: CACHE,
        storage_zero_init: true,
        release_stale_journal: true,
        copy_on_read: Some(false),
        prefetch: PrefetchMode::Off,
    }
}

fn io<T>(v: Option<T>) -> Result<T, IoError> {
    v.ok_or(IoError::Failed)
}

/// Performs `op` on `file` with the guest buffers `guests` and engine `memory`.
pub fn perform(
    file: Option<&mut Vec<u8>>,
    op: Op,
    memory: &mut [u8],
    guests: &mut HashMap<RequestId, Vec<u8>>,
) -> Result<(), IoError> {
    fn buffer<'a>(
        b: Buffer,
        len: usize,
        memory: &'a mut [u8],
        guests: &'a mut HashMap<RequestId, Vec<u8>>,
    ) -> Option<&'a mut [u8]> {
        match b {
            Buffer::Engine { offset } => memory.get_mut(offset..offset + len),
            Buffer::Guest { request, offset } => {
                guests.get_mut(&request)?.get_mut(offset..offset + len)
            }
        }
    }
    match op {
        Op::Read { offset, len, into } => {
            let file = io(file)?;
            let target = io(buffer(into, len, memory, guests))?;
            target.fill(0);
            let start = (offset as usize).min(file.len());
            let end = (offset as usize + len).min(file.len());
            target[..end - start].copy_from_slice(&file[start..end]);
        }
        Op::Write { offset, len, from } => {
            let source = io(buffer(from, len, memory, guests))?.to_vec();
            let file = io(file)?;
            let end = offset as usize + len;
            if file.len() < end {
                file.resize(end, 0);
            }
            file[offset as usize..end].copy_from_slice(&source);
        }
        Op::WriteZeroes { offset, len, .. } => {
            let file = io(file)?;
            let end = (offset + len) as usize;
            if file.len() < end {
                file.resize(end, 0);
            }
            file[offset as usize..end].fill(0);
        }
        Op::ZeroBuffer { into, len } => io(buffer(into, len, memory, guests))?.fill(0),
        Op::Copy { from, into, len } => {
            let source = io(buffer(from, len, memory, guests))?.to_vec();
            io(buffer(into, len, memory, guests))?.copy_from_slice(&source);
        }
        Op::Flush => {}
        Op::SetLength { len } => io(file)?.resize(len as usize, 0),
    }
    Ok(())
}

/// One engine over `files`, pumped until it opens; `base_available`: its base is a raw
/// file in `files` or, in a chain, the layer below.
pub fn open_engine(files: &mut Files, writable: bool, base_available: bool) -> Engine<Vec<u8>, 64> {
    let options = options(files, writable, base_available);
    open_engine_with(files, options)
}

/// One engine over `files` with `options`, pumped until it opens.
pub fn open_engine_with(files: &mut Files, options: OpenOptions) -> Engine<Vec<u8>, 64> {
    let mut engine = Engine::open(vec![0u8; MEMORY], options);
    let mut guests = HashMap::new();
    loop {
        while let Some(event) = engine.poll_event() {
            match event {
                Event::Opened => return engine,
                Event::OpenFailed(e) => panic!("open failed: {e}"),
                _ => {}
            }
        }
        let command = engine
            .poll_command()
            .expect("the engine stalled while opening");
        let file = if command.op_has_file() {
            Some(files.file(command.file))
        } else {
            None
        };
        let result = perform(file, command.op, engine.memory_mut(), &mut guests);
        engine.complete(command.id, result);
    }
}

trait HasFile {
    fn op_has_file(&self) -> bool;
}

impl HasFile for fvd_core::engine::Command {
    fn op_has_file(&self) -> bool {
        !matches!(self.op, Op::ZeroBuffer { .. } | Op::Copy { .. })
    }
}

/// Closes a single engine, pumping until it has; returns whether it closed cleanly.
pub fn close_engine(engine: &mut Engine<Vec<u8>, 64>, files: &mut Files) -> bool {
    engine.close();
    let mut guests = HashMap::new();
    for _ in 0..1_000_000 {
        while let Some(event) = engine.poll_event() {
            if let Event::Closed { clean } = event {
                return clean;
            }
        }
        let Some(command) = engine.poll_command() else {
            panic!("the engine stalled while closing");
        };
        let file = if command.op_has_file() {
            Some(files.file(command.file))
        } else {
            None
        };
        let result = perform(file, command.op, engine.memory_mut(), &mut guests);
        engine.complete(command.id, result);
    }
    panic!("never closed");
}

/// Runs `request` on a single engine to completion, with `data` as its buffer.
pub fn run_engine(
    engine: &mut Engine<Vec<u8>, 64>,
    files: &mut Files,
    request: Request,
    data: Vec<u8>,
) -> Result<Vec<u8>, RequestError> {
    let id = engine.submit(request).expect("submit");
    let mut guests = HashMap::new();
    guests.insert(id, data);
    for _ in 0..1_000_000 {
        while let Some(event) = engine.poll_event() {
            if let Event::Completed { id: done, result } = event {
                if done == id {
                    return result.map(|_| guests.remove(&id).unwrap());
                }
            }
        }
        let Some(command) = engine.poll_command() else {
            panic!("the engine stalled");
        };
        let file = if command.op_has_file() {
            Some(files.file(command.file))
        } else {
            None
        };
        let result = perform(file, command.op, engine.memory_mut(), &mut guests);
        engine.complete(command.id, result);
    }
    panic!("request never completed");
}

/// A chain over per-layer files, pumped synchronously.
pub struct Stack<'e> {
    pub chain: Chain<'e, Vec<u8>, 64>,
    pub files: Vec<Files>,
    pub guests: HashMap<RequestId, Vec<u8>>,
    /// Base reads the host performed on the last layer's raw base.
    pub raw_base_reads: u64,
}

impl<'e> Stack<'e> {
    /// Chains `engines` (opened over `files`, layer by layer) with distinct keys.
    pub fn new(engines: &'e mut [Engine<Vec<u8>, 64>], files: Vec<Files>) -> Self {
        let keys: Vec<FileKey> = (0..engines.len() as u128).map(FileKey).collect();
        Stack {
            chain: Chain::new(engines, &keys).unwrap(),
            files,
            guests: HashMap::new(),
            raw_base_reads: 0,
        }
    }

    fn perform(&mut self, command: ChainCommand) -> Result<(), IoError> {
        if command.file == FileId::Base {
            self.raw_base_reads += 1;
        }
        let file = if matches!(command.op, Op::ZeroBuffer { .. } | Op::Copy { .. }) {
            None
        } else {
            Some(self.files[command.layer].file(command.file))
        };
        let memory = self.chain.memory_mut(command.memory_of);
        perform(file, command.op, memory, &mut self.guests)
    }

    /// Runs `request` through the chain to completion.
    pub fn run(
        &mut self,
        request: Request,
        data: Vec<u8>,
    ) -> Result<(Reply, Vec<u8>), RequestError> {
        let id = self.chain.submit(request).expect("submit");
        self.guests.insert(id, data);
        for _ in 0..1_000_000 {
            while let Some(event) = self.chain.poll_event() {
                match event {
                    Event::Completed { id: done, result } if done == id => {
                        return result.map(|reply| (reply, self.guests.remove(&id).unwrap()));
                    }
                    Event::OpenFailed(e) => panic!("a layer failed to open: {e}"),
                    _ => {}
                }
            }
            let Some(command) = self.chain.poll_command() else {
                panic!("the chain stalled");
            };
            let result = self.perform(command);
            self.chain.complete(command.id, result);
        }
        panic!("request never completed");
    }

    /// Reads `len` bytes at `offset` through the chain.
    pub fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        self.run(
            Request::Read {
                offset,
                len: len as u64,
            },
            vec![0xEE; len],
        )
        .unwrap()
        .1
    }

    /// Writes `data` at `offset` through the chain (into the image, layer 0).
    pub fn write(&mut self, offset: u64, data: Vec<u8>) {
        let len = data.len() as u64;
        self.run(Request::Write { offset, len }, data).unwrap();
    }
}

/// QED options for a small image.
pub fn small_qed(
    size: u64,
    backing: Option<fvd_core::qed::QedBacking<'static>>,
) -> QedCreateOptions<'static> {
    QedCreateOptions {
        size,
        cluster_size: 4096,
        table_size: 1,
        backing,
    }
}
