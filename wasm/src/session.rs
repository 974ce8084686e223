//! A read-only chain of engines (the image first, each base after the image it serves)
//! driven from JavaScript one file read at a time: [`Inspector::next_read`] performs every
//! command that needs no file and returns the next file read, which the page fulfils
//! asynchronously from `File.slice(a, b).arrayBuffer()` and hands back with
//! [`Inspector::complete_read`]. The image is never copied into wasm memory.
//!
//! Memory bound: per layer, core's `memory_needed` for [`CACHE_BYTES`] of metadata cache
//! and [`BOUNCE_BYTES`] of bounce space (the header and scratch areas, 256 KiB of cache,
//! 256 KiB of bounce, more only for an FVD image whose blocks exceed 128 KiB and whose
//! base is still read: two blocks), plus one guest buffer of at most [`MAX_READ`] bytes.
//! [`Inspector::memory_bytes`] reports the total.

use fvd_core::chain::{ChainCommand, ChainOf, FileKey};
use fvd_core::engine::{
    memory_needed, Buffer, Engine, Event, FileId, IoError, MapRun, Mapping, Op, OpenOptions,
    PrefetchMode, Reply, Request, RequestError, RequestId, PAGE_BYTES,
};
use wasm_bindgen::prelude::*;

/// Metadata cache per layer.
pub const CACHE_BYTES: usize = 64 * PAGE_BYTES;
/// Bounce space per layer (more when the image's blocks need it).
pub const BOUNCE_BYTES: usize = 256 << 10;
/// Largest virtual read at once.
pub const MAX_READ: u32 = 1 << 20;

type Engines = ChainOf<Vec<Engine<Vec<u8>>>, Vec<u8>>;

/// A JavaScript number as a byte count (whole, not negative, exact in a double).
pub(crate) fn length(value: f64) -> Option<u64> {
    let exact = value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 9.0e15;
    exact.then_some(value as u64)
}

fn length_or_error(value: f64, what: &str) -> Result<u64, JsError> {
    // The value is not printed: formatting a double would link float printing (about
    // 15 KB of wasm) for this one message.
    length(value).ok_or_else(|| {
        JsError::new(&format!(
            "{what} is not a byte count (a whole number from 0 to 2^53)"
        ))
    })
}

/// A file read the page must perform.
#[wasm_bindgen]
#[derive(Clone, Copy)]
pub struct FileRead {
    /// The layer whose file it is (0: the image, 1: its base, ...).
    pub layer: u32,
    file: FileId,
    /// First byte.
    pub offset: f64,
    /// Bytes (the page may return fewer at the end of the file: the rest reads as zeros).
    pub len: u32,
}

#[wasm_bindgen]
impl FileRead {
    /// `image`, `data` (the separate data file) or `base` (the last layer's raw base).
    #[wasm_bindgen(getter)]
    pub fn file(&self) -> String {
        match self.file {
            FileId::Image => "image",
            FileId::Data => "data",
            FileId::Base => "base",
        }
        .into()
    }
}

/// A run of virtual bytes with one state.
#[wasm_bindgen]
#[derive(Clone, Copy)]
pub struct Run {
    /// First virtual byte.
    pub offset: f64,
    /// Bytes.
    pub len: f64,
    mapping: Mapping,
}

#[wasm_bindgen]
impl Run {
    /// `data`, `base`, `zero` or `unallocated`.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> String {
        match self.mapping {
            Mapping::Base => "base",
            Mapping::Data { .. } => "data",
            Mapping::Zero => "zero",
            _ => "unallocated",
        }
        .into()
    }

    /// Where the data lies in its file (-1 when not `data`).
    #[wasm_bindgen(getter)]
    pub fn file_offset(&self) -> f64 {
        match self.mapping {
            Mapping::Data { offset, .. } => offset as f64,
            _ => -1.0,
        }
    }
}

struct Layer {
    first: Vec<u8>,
    image_len: u64,
    data_len: Option<u64>,
    key: u32,
}

/// An image chain opened read-only, driven by the page.
#[wasm_bindgen]
pub struct Inspector {
    layers: Vec<Layer>,
    chain: Option<Engines>,
    current: Option<ChainCommand>,
    guest: Vec<u8>,
    request: Option<RequestId>,
    result: Option<Result<Reply, RequestError>>,
    opened: Option<Result<(), String>>,
    memory: usize,
}

impl Default for Inspector {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl Inspector {
    /// An inspector with no layer yet.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Inspector {
        Inspector {
            layers: Vec::new(),
            chain: None,
            current: None,
            guest: Vec::new(),
            request: None,
            result: None,
            opened: None,
            memory: 0,
        }
    }

    /// Adds the next layer: the first bytes of its image file (4 KiB suffice), the file's
    /// length, its data file's length if it has one, and a key naming the file (the same
    /// file twice is a loop the chain refuses).
    pub fn add_layer(
        &mut self,
        first: &[u8],
        image_len: f64,
        data_len: Option<f64>,
        key: u32,
    ) -> Result<(), JsError> {
        let image_len = length_or_error(image_len, "image length")?;
        let data_len = data_len
            .map(|d| length_or_error(d, "data file length"))
            .transpose()?;
        let first = first.get(..first.len().min(fvd_core::engine::SIZING_LEN));
        self.layers.push(Layer {
            first: first.unwrap_or_default().to_vec(),
            image_len,
            data_len,
            key,
        });
        Ok(())
    }

    /// Starts opening the chain; `raw_base` says the last layer's base is a raw file the
    /// page can read. Drive it with [`Inspector::next_read`] until it returns nothing.
    pub fn start(&mut self, raw_base: bool) -> Result<(), JsError> {
        let last = self.layers.len().saturating_sub(1);
        let mut engines = Vec::with_capacity(self.layers.len());
        let mut keys = Vec::with_capacity(self.layers.len());
        let mut memory = MAX_READ as usize;
        for (i, layer) in self.layers.iter().enumerate() {
            let bytes = memory_needed(&layer.first, CACHE_BYTES, BOUNCE_BYTES);
            memory = memory.saturating_add(bytes);
            engines.push(Engine::open(
                vec![0u8; bytes],
                OpenOptions {
                    writable: false,
                    image_len: layer.image_len,
                    data_len: layer.data_len,
                    base_available: i < last || raw_base,
                    cache_bytes: CACHE_BYTES,
                    storage_zero_init: true,
                    release_stale_journal: true,
                    copy_on_read: Some(false),
                    prefetch: PrefetchMode::Off,
                },
            ));
            keys.push(FileKey(u128::from(layer.key)));
        }
        let chain = Engines::new(engines, &keys).map_err(|e| JsError::new(&e.to_string()))?;
        self.chain = Some(chain);
        self.memory = memory;
        Ok(())
    }

    /// Bytes of wasm memory the engines and the guest buffer hold.
    pub fn memory_bytes(&self) -> f64 {
        self.memory as f64
    }

    /// Performs every command that needs no file and returns the next file read, or
    /// nothing when the chain waits for no file (the open or request is settled).
    pub fn next_read(&mut self) -> Option<FileRead> {
        if let Some(c) = self.current {
            return read_of(&c);
        }
        loop {
            self.drain_events();
            let command = self.chain.as_mut()?.poll_command()?;
            let result = match command.op {
                Op::Read { .. } => {
                    self.current = Some(command);
                    return read_of(&command);
                }
                Op::ZeroBuffer { into, len } => {
                    self.target(into, len, command.memory_of).map(|b| b.fill(0))
                }
                Op::Copy { from, into, len } => self.copy(from, into, len, command.memory_of),
                // Opened read-only: nothing was written, so nothing needs flushing.
                Op::Flush => Ok(()),
                Op::Write { .. } | Op::WriteZeroes { .. } | Op::SetLength { .. } => {
                    Err(IoError::Unsupported)
                }
            };
            if let Some(chain) = self.chain.as_mut() {
                chain.complete(command.id, result);
            }
        }
    }

    /// Fulfils the read [`Inspector::next_read`] returned with the bytes the file held
    /// there (fewer at its end: the rest reads as zeros).
    pub fn complete_read(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        let command = self
            .current
            .take()
            .ok_or_else(|| JsError::new("no file read is outstanding"))?;
        let result = match command.op {
            Op::Read { len, into, .. } => self.target(into, len, command.memory_of).map(|dest| {
                let n = bytes.len().min(dest.len());
                dest[..n].copy_from_slice(&bytes[..n]);
                dest[n..].fill(0);
            }),
            _ => Err(IoError::Failed),
        };
        if let Some(chain) = self.chain.as_mut() {
            chain.complete(command.id, result);
        }
        self.drain_events();
        Ok(())
    }

    /// Reports that the outstanding file read failed.
    pub fn fail_read(&mut self) {
        if let (Some(command), Some(chain)) = (self.current.take(), self.chain.as_mut()) {
            chain.complete(command.id, Err(IoError::Failed));
        }
        self.drain_events();
    }

    /// Once nothing is left to read: `Ok` when every layer is open, else why not.
    pub fn open_result(&self) -> Result<(), JsError> {
        match &self.opened {
            Some(Ok(())) if self.all_open() => Ok(()),
            Some(Ok(())) | None => Err(JsError::new("the image did not finish opening")),
            Some(Err(message)) => Err(JsError::new(message)),
        }
    }

    /// `FVD` or `QED` once open.
    pub fn format(&self) -> Option<String> {
        Some(self.engine()?.format()?.name().into())
    }

    /// Guest-visible size in bytes once open.
    pub fn virtual_size(&self) -> Option<f64> {
        Some(self.engine()?.virtual_size()? as f64)
    }

    /// Starts reading `len` virtual bytes at `offset` (multiples of 512, at most
    /// [`MAX_READ`]) through the chain; drive with [`Inspector::next_read`], then take the
    /// bytes with [`Inspector::finish_read`].
    pub fn begin_read(&mut self, offset: f64, len: u32) -> Result<(), JsError> {
        if len > MAX_READ {
            return Err(JsError::new(&format!("a read is at most {MAX_READ} bytes")));
        }
        self.guest = vec![0u8; len as usize];
        let offset = length_or_error(offset, "offset")?;
        self.submit(Request::Read {
            offset,
            len: u64::from(len),
        })
    }

    /// The bytes of the finished read.
    pub fn finish_read(&mut self) -> Result<Vec<u8>, JsError> {
        self.finish()?;
        Ok(core::mem::take(&mut self.guest))
    }

    /// Starts asking where the virtual bytes from `offset` (at most `len` of them) live.
    pub fn begin_map(&mut self, offset: f64, len: f64) -> Result<(), JsError> {
        let offset = length_or_error(offset, "offset")?;
        let len = length_or_error(len, "length")?;
        self.submit(Request::Map { offset, len })
    }

    /// The first run of the finished map request.
    pub fn finish_map(&mut self) -> Result<Run, JsError> {
        match self.finish()? {
            Reply::Mapping(MapRun {
                offset,
                len,
                mapping,
            }) => Ok(Run {
                offset: offset as f64,
                len: len as f64,
                mapping,
            }),
            _ => Err(JsError::new("the map request returned no run")),
        }
    }
}

fn read_of(command: &ChainCommand) -> Option<FileRead> {
    match command.op {
        Op::Read { offset, len, .. } => Some(FileRead {
            layer: u32::try_from(command.layer).unwrap_or(u32::MAX),
            file: command.file,
            offset: offset as f64,
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }),
        _ => None,
    }
}

impl Inspector {
    fn engine(&self) -> Option<&Engine<Vec<u8>>> {
        self.chain.as_ref()?.layers().first()
    }

    fn all_open(&self) -> bool {
        self.chain
            .as_ref()
            .is_some_and(|c| c.layers().iter().all(Engine::is_open))
    }

    fn drain_events(&mut self) {
        let Some(chain) = self.chain.as_mut() else {
            return;
        };
        while let Some(event) = chain.poll_event() {
            match event {
                Event::Opened => self.opened = Some(Ok(())),
                Event::OpenFailed(e) => {
                    let layer = chain.failed_layer().unwrap_or(0);
                    let message = match layer {
                        0 => e.to_string(),
                        n => format!("base image {n} of the chain: {e}"),
                    };
                    self.opened = Some(Err(message));
                }
                Event::Completed { id, result } if Some(id) == self.request => {
                    self.result = Some(result);
                }
                // Nothing else concerns a read-only page.
                _ => {}
            }
        }
    }

    fn submit(&mut self, request: Request) -> Result<(), JsError> {
        self.open_result()?;
        if self.request.is_some() && self.result.is_none() {
            return Err(JsError::new("a request is still running"));
        }
        let chain = self
            .chain
            .as_mut()
            .ok_or_else(|| JsError::new("no image is open"))?;
        let id = chain
            .submit(request)
            .map_err(|e| JsError::new(&e.to_string()))?;
        self.request = Some(id);
        self.result = None;
        Ok(())
    }

    fn finish(&mut self) -> Result<Reply, JsError> {
        self.drain_events();
        match self.result.take() {
            Some(result) => {
                self.request = None;
                result.map_err(|e| JsError::new(&e.to_string()))
            }
            None => Err(JsError::new("the request has not finished")),
        }
    }

    fn target(
        &mut self,
        buffer: Buffer,
        len: usize,
        memory_of: usize,
    ) -> Result<&mut [u8], IoError> {
        let bytes = match buffer {
            Buffer::Guest { request, offset } if Some(request) == self.request => {
                self.guest.get_mut(offset..).and_then(|b| b.get_mut(..len))
            }
            Buffer::Guest { .. } => None,
            Buffer::Engine { offset } => self
                .chain
                .as_mut()
                .and_then(|c| c.memory_mut(memory_of).get_mut(offset..))
                .and_then(|b| b.get_mut(..len)),
        };
        bytes.ok_or(IoError::Failed)
    }

    fn copy(
        &mut self,
        from: Buffer,
        into: Buffer,
        len: usize,
        memory_of: usize,
    ) -> Result<(), IoError> {
        let data = self.target(from, len, memory_of)?.to_vec();
        self.target(into, len, memory_of)?.copy_from_slice(&data);
        Ok(())
    }
}
