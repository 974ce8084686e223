//! A synchronous driver for the engine: it owns the engines of an image chain (the image
//! and each image below it, run by core's [`ChainOf`]), the guest buffers and one
//! [`Storage`] per layer, performs each command on the storage of the layer it names (in
//! order, or shuffled with injected errors for tests) and turns the event stream into
//! blocking calls. Base reads between layers never reach it: the chain serves them. The
//! CLI and the tests use it; it holds no format logic.

use crate::host::faults::{Cmd, FaultPlan, Injection};
use crate::host::storage::{earlier_flush_failed, engine_error, Storage};
use fvd_core::chain::{ChainCommand, ChainOf, FileKey};
use fvd_core::engine::*;
use std::collections::HashMap;
use std::io;

/// How to run the engine.
#[derive(Clone, Copy, Debug)]
pub struct DriverOptions {
    /// Open for writing.
    pub writable: bool,
    /// Metadata cache bytes.
    pub cache_bytes: usize,
    /// Engine memory beyond header, scratch and cache (bounce space).
    pub bounce_bytes: usize,
    /// Complete commands in a random order drawn from this seed (else in order).
    pub shuffle_seed: Option<u64>,
    /// Per-mille chance that a command fails (after possibly having taken effect).
    pub error_per_mille: u32,
    /// Commands allowed in flight before the driver performs one.
    pub max_pending: usize,
    /// Copy-on-read override (`None`: the header's default).
    pub copy_on_read: Option<bool>,
    /// Whole-image prefetch (runs only while the host passes time in).
    pub prefetch: PrefetchMode,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            writable: true,
            cache_bytes: 256 * PAGE_BYTES,
            bounce_bytes: 4 << 20,
            shuffle_seed: None,
            error_per_mille: 0,
            max_pending: 1,
            copy_on_read: None,
            prefetch: PrefetchMode::Off,
        }
    }
}

/// What can go wrong driving an image (the host's one error type).
pub use crate::host::error::HostError as DriverError;

/// Outcome of a request with its buffer.
pub type Finished = (Result<Reply, RequestError>, Vec<u8>);

/// The engines of a chain, owned by the driver.
type Engines = ChainOf<Vec<Engine<Vec<u8>>>, Vec<u8>>;

/// Why a chain could not be opened: the error, and the layer (0: the image) it concerns.
#[derive(Debug)]
pub struct LayerError {
    /// The layer whose engine or files failed.
    pub layer: usize,
    /// Why.
    pub error: DriverError,
}

/// Drives one image and the images below it.
pub struct Driver<S: Storage> {
    chain: Engines,
    /// The files of the image.
    pub storage: S,
    /// The files of each image below it, the image's base first: read by their own
    /// engines, layers 1, 2, ... of the chain.
    lower: Vec<S>,
    buffers: Vec<Option<Vec<u8>>>,
    results: HashMap<RequestId, Finished>,
    pending: Vec<ChainCommand>,
    rng: u64,
    options: DriverOptions,
    opened: Option<Result<(), OpenError>>,
    closed: Option<bool>,
    /// Commands performed.
    pub commands_run: u64,
    /// Stop (report a stall) once this many commands ran: tests use it to turn a runaway
    /// engine into a failure instead of a hang.
    command_limit: Option<u64>,
    /// The storage's reason for the last command that failed, until a failed request or
    /// open reports it.
    last_os_error: Option<io::Error>,
    /// Faults injected into storage commands (tests only).
    faults: Option<FaultPlan>,
    /// The guest requests whose own buffer a faulted command used, in order.
    faulted_requests: Vec<RequestId>,
    /// A flush of the image (0) or the data file (1) failed on a storage where that may
    /// have lost writes: every later flush of that file fails.
    flush_failed: [bool; 2],
}

/// The engine options of layer `layer` of a chain: lower layers are only read.
fn layer_options(options: &DriverOptions, layer: usize) -> DriverOptions {
    if layer == 0 {
        return *options;
    }
    DriverOptions {
        writable: false,
        shuffle_seed: None,
        error_per_mille: 0,
        ..*options
    }
}

/// Starts an engine over `storage` (layer `layer` of a chain whose deepest layer is
/// `last`): every layer but the last has a base (the layer below); the last has one when
/// its storage has a base file.
fn start_engine<S: Storage>(
    storage: &mut S,
    options: &DriverOptions,
    layer: usize,
    last: usize,
) -> io::Result<Engine<Vec<u8>>> {
    let options = layer_options(options, layer);
    let image_len = storage.len(FileId::Image)?.unwrap_or(0);
    let data_len = storage.len(FileId::Data)?;
    let base_available = layer < last || storage.len(FileId::Base)?.is_some();
    // Sized from the image's first bytes, so large blocks get room for a fill; when
    // they cannot be read, the engine's own first read reports why.
    let mut first = vec![0u8; SIZING_LEN];
    if storage.read_at(FileId::Image, 0, &mut first).is_err() {
        first.clear();
    }
    let memory = vec![0u8; memory_needed(&first, options.cache_bytes, options.bounce_bytes)];
    Ok(Engine::open(
        memory,
        OpenOptions {
            writable: options.writable,
            image_len,
            data_len,
            base_available,
            cache_bytes: options.cache_bytes,
            storage_zero_init: true,
            release_stale_journal: true,
            copy_on_read: options.copy_on_read,
            prefetch: options.prefetch,
        },
    ))
}

impl<S: Storage> Driver<S> {
    /// Opens the image in `storage`.
    pub fn open(storage: S, options: DriverOptions) -> Result<Self, DriverError> {
        Self::open_with_faults(storage, options, None)
    }

    /// Opens the image in `storage` with `faults` injected into the storage commands
    /// from the first one on (see [`crate::host::faults`]).
    pub fn open_with_faults(
        storage: S,
        options: DriverOptions,
        faults: Option<FaultPlan>,
    ) -> Result<Self, DriverError> {
        Self::open_chain(vec![storage], &[FileKey(0)], options, faults).map_err(|e| e.error)
    }

    /// Opens the chain whose images' files are `layers` (the image first, each base
    /// after the image it serves; only the last may have a base file, read raw), the
    /// files being `keys` (distinct: the chain refuses a loop). Faults and injected
    /// errors apply to the image's own commands (layer 0).
    pub fn open_chain(
        layers: Vec<S>,
        keys: &[FileKey],
        options: DriverOptions,
        faults: Option<FaultPlan>,
    ) -> Result<Self, LayerError> {
        let at = |layer: usize| move |error: DriverError| LayerError { layer, error };
        let mut layers = layers.into_iter();
        let Some(mut storage) = layers.next() else {
            return Err(at(0)(DriverError::Chain(
                fvd_core::chain::ChainError::Empty,
            )));
        };
        let mut lower: Vec<S> = layers.collect();
        let last = lower.len();
        let mut engines = Vec::with_capacity(last + 1);
        engines.push(start_engine(&mut storage, &options, 0, last).map_err(|e| at(0)(e.into()))?);
        for (i, s) in lower.iter_mut().enumerate() {
            let engine = start_engine(s, &options, i + 1, last).map_err(|e| at(i + 1)(e.into()))?;
            engines.push(engine);
        }
        let chain = Engines::new(engines, keys).map_err(|e| at(0)(DriverError::Chain(e)))?;
        let mut driver = Driver {
            chain,
            storage,
            lower,
            buffers: vec![None; MAX_REQUESTS],
            results: HashMap::new(),
            pending: Vec::new(),
            rng: options.shuffle_seed.unwrap_or(0) | 1,
            options,
            opened: None,
            closed: None,
            commands_run: 0,
            command_limit: None,
            last_os_error: None,
            faults,
            faulted_requests: Vec::new(),
            flush_failed: [false; 2],
        };
        // Every layer opens before the first request, as each base did before the image
        // over it when each had a driver of its own.
        while driver.opened.is_none()
            || (driver.opened == Some(Ok(())) && !driver.chain.layers().iter().all(Engine::is_open))
        {
            if !driver.step() {
                return Err(at(0)(DriverError::Stalled(0)));
            }
        }
        let layer = driver.chain.failed_layer().unwrap_or(0);
        match driver.opened {
            Some(Err(error @ OpenError::Io(_))) => match driver.last_os_error.take() {
                Some(source) => Err(at(layer)(DriverError::OpenIo { error, source })),
                None => Err(at(layer)(DriverError::Open(error))),
            },
            Some(Err(e)) => Err(at(layer)(DriverError::Open(e))),
            _ => Ok(driver),
        }
    }

    /// Images in the chain (1: the image has no base, or only a raw one).
    pub fn layers(&self) -> usize {
        self.chain.layers().len()
    }

    /// The engine of layer `layer` (0: the image; 1: the image its base is; ...).
    pub fn layer_engine(&self, layer: usize) -> Option<&Engine<Vec<u8>>> {
        self.chain.layers().get(layer)
    }

    /// The files of layer `layer`.
    pub fn layer_storage(&mut self, layer: usize) -> Option<&mut S> {
        match layer {
            0 => Some(&mut self.storage),
            n => self.lower.get_mut(n - 1),
        }
    }

    /// Reports a stall instead of running more than `max` commands in total.
    pub fn limit_commands(&mut self, max: u64) {
        self.command_limit = Some(max);
    }

    /// Injects `faults` into the storage commands from now on (`None`: no more faults).
    pub fn set_faults(&mut self, faults: Option<FaultPlan>) {
        self.faults = faults;
    }

    /// The fault plan, if one is installed.
    pub fn faults(&self) -> Option<&FaultPlan> {
        self.faults.as_ref()
    }

    /// The guest requests whose own buffer (data read or written) a faulted command
    /// used, oldest first: the requests a fault hit directly.
    pub fn faulted_requests(&self) -> &[RequestId] {
        &self.faulted_requests
    }

    /// The fault plan, to change or clear it.
    pub fn faults_mut(&mut self) -> Option<&mut FaultPlan> {
        self.faults.as_mut()
    }

    /// Changes the per-mille chance of injected command failures.
    pub fn set_error_per_mille(&mut self, per_mille: u32) {
        self.options.error_per_mille = per_mille;
    }

    /// Passes the host's clock (ms) to the engine and performs what it starts.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), DriverError> {
        self.chain.handle_timeout(now_ms);
        self.run_until_idle()
    }

    /// Passes the host's clock (ms) to the engine without performing anything (a host that
    /// is busy elsewhere).
    pub fn tick(&mut self, now_ms: u64) {
        self.chain.handle_timeout(now_ms);
    }

    /// The image's engine (for layout and header queries).
    pub fn engine(&self) -> &Engine<Vec<u8>> {
        // A chain has at least one layer (`ChainOf::new` refuses none).
        &self.chain.layers()[0]
    }

    /// Requests in flight in every layer (the chain's own reads of lower layers too).
    fn requests_in_flight(&self) -> usize {
        self.chain
            .layers()
            .iter()
            .map(Engine::requests_in_flight)
            .sum()
    }

    /// Commands in flight in every layer.
    fn commands_in_flight(&self) -> usize {
        self.chain
            .layers()
            .iter()
            .map(Engine::commands_in_flight)
            .sum()
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Submits `request` with `buffer` (its data for writes, its room for reads),
    /// performing commands while the engine is busy.
    pub fn submit(&mut self, request: Request, buffer: Vec<u8>) -> Result<RequestId, DriverError> {
        loop {
            match self.chain.submit(request) {
                Ok(id) => {
                    self.buffers[id.slot()] = Some(buffer);
                    return Ok(id);
                }
                Err(SubmitError::Busy) => {
                    if !self.step() {
                        return Err(DriverError::Stalled(self.requests_in_flight()));
                    }
                }
                Err(e) => return Err(DriverError::Submit(e)),
            }
        }
    }

    /// Performs one command (or collects events); false when there was nothing to do.
    pub fn step(&mut self) -> bool {
        if self
            .command_limit
            .is_some_and(|max| self.commands_run >= max)
        {
            return false;
        }
        let mut did = self.drain_events();
        while let Some(command) = self.chain.poll_command() {
            self.pending.push(command);
            did = true;
        }
        if self.pending.is_empty() {
            return did || self.drain_events();
        }
        if self.options.shuffle_seed.is_some()
            && self.pending.len() < self.options.max_pending
            && did
        {
            return true;
        }
        let index = if self.options.shuffle_seed.is_some() {
            (self.next_random() % self.pending.len() as u64) as usize
        } else {
            0
        };
        let command = self.pending.swap_remove(index);
        let mut result = self.perform(&command);
        if result.is_err() && std::env::var_os("FVD_DEBUG").is_some() {
            eprintln!("command failed: {command:?}");
        }
        if self.options.error_per_mille > 0
            && command.layer == 0
            && self.next_random() % 1000 < u64::from(self.options.error_per_mille)
        {
            result = Err(IoError::Failed);
        }
        self.commands_run += 1;
        self.chain.complete(command.id, result);
        self.drain_events();
        true
    }

    fn drain_events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.chain.poll_event() {
            any = true;
            match event {
                Event::Opened => self.opened = Some(Ok(())),
                Event::OpenFailed(e) => self.opened = Some(Err(e)),
                Event::Closed { clean } => self.closed = Some(clean),
                Event::Completed { id, result } => {
                    let buffer = self.buffers[id.slot()].take().unwrap_or_default();
                    self.results.insert(id, (result, buffer));
                }
                // An event this host does not know needs nothing from it.
                _ => {}
            }
        }
        any
    }

    fn guest(
        &mut self,
        request: RequestId,
        offset: usize,
        len: usize,
    ) -> Result<&mut [u8], IoError> {
        guest_slice(&mut self.buffers, request, offset, len)
    }

    /// `result` as the engine sees it, remembering the storage's reason for a failure.
    fn storage_result(&mut self, result: io::Result<()>) -> Result<(), IoError> {
        result.map_err(|e| {
            let error = engine_error(&e);
            self.last_os_error = Some(e);
            error
        })
    }

    /// Takes the storage's reason for the last failed command, if one is kept.
    pub fn take_os_error(&mut self) -> Option<io::Error> {
        self.last_os_error.take()
    }

    /// `error` of a request, with the storage's reason when a command failed under it.
    pub fn request_error(&mut self, error: RequestError) -> DriverError {
        match (error, self.last_os_error.take()) {
            (RequestError::Io(_), Some(source)) => DriverError::RequestIo { error, source },
            _ => DriverError::Request(error),
        }
    }

    fn perform(&mut self, command: &ChainCommand) -> Result<(), IoError> {
        let (file, layer, memory_of) = (command.file, command.layer, command.memory_of);
        // Faults are planned for the image's own files.
        let plan = self.faults.as_mut().filter(|_| layer == 0);
        let injection = match (plan, Cmd::of(file, &command.op)) {
            (Some(plan), Some(cmd)) => {
                let storage = layer_of(&mut self.storage, &mut self.lower, layer)?;
                plan.decide(cmd, || storage.len(file).ok().flatten())
            }
            _ => Injection::None,
        };
        if !matches!(injection, Injection::None) {
            if let Op::Read {
                into: Buffer::Guest { request, .. },
                ..
            }
            | Op::Write {
                from: Buffer::Guest { request, .. },
                ..
            } = command.op
            {
                self.faulted_requests.push(request);
            }
        }
        match command.op {
            // A guest buffer is read into and written from in place (no copy): it is a
            // field of its own, borrowed beside the storage.
            Op::Read {
                offset,
                len,
                into:
                    Buffer::Guest {
                        request,
                        offset: at,
                    },
            } if matches!(injection, Injection::None) => {
                let buf = guest_slice(&mut self.buffers, request, at, len)?;
                let result =
                    layer_of(&mut self.storage, &mut self.lower, layer)?.read_at(file, offset, buf);
                self.storage_result(result)
            }
            Op::Write {
                offset,
                len,
                from:
                    Buffer::Guest {
                        request,
                        offset: at,
                    },
            } if matches!(injection, Injection::None) => {
                let data = guest_slice(&mut self.buffers, request, at, len)?;
                let result = layer_of(&mut self.storage, &mut self.lower, layer)?
                    .write_at(file, offset, data);
                self.storage_result(result)
            }
            Op::Read { offset, len, into } => {
                let mut tmp = vec![0u8; len];
                let result = match injection {
                    Injection::None => layer_of(&mut self.storage, &mut self.lower, layer)?
                        .read_at(file, offset, &mut tmp),
                    injection => {
                        // A base must not end early: the host knows its length.
                        let known_len = match file {
                            FileId::Base => layer_of(&mut self.storage, &mut self.lower, layer)?
                                .len(file)
                                .ok()
                                .flatten(),
                            _ => None,
                        };
                        let storage = layer_of(&mut self.storage, &mut self.lower, layer)?;
                        let read = |buf: &mut [u8], at: u64| {
                            storage.read_at(file, at, buf).map(|()| buf.len())
                        };
                        injection.read(read, offset, &mut tmp, known_len)
                    }
                };
                self.storage_result(result)?;
                self.target(into, len, memory_of)?.copy_from_slice(&tmp);
                Ok(())
            }
            Op::Write { offset, len, from } => {
                let data = self.target(from, len, memory_of)?.to_vec();
                let storage = layer_of(&mut self.storage, &mut self.lower, layer)?;
                let result = match injection {
                    Injection::None => storage.write_at(file, offset, &data),
                    injection => injection.write(len as u64, |n| {
                        storage.write_at(file, offset, &data[..n as usize])
                    }),
                };
                self.storage_result(result)
            }
            Op::WriteZeroes { offset, len, unmap } => {
                let storage = layer_of(&mut self.storage, &mut self.lower, layer)?;
                let result = match injection {
                    Injection::None => storage.write_zeroes(file, offset, len, unmap),
                    injection => {
                        injection.write(len, |n| storage.write_zeroes(file, offset, n, unmap))
                    }
                };
                self.storage_result(result)
            }
            Op::ZeroBuffer { into, len } => {
                self.target(into, len, memory_of)?.fill(0);
                Ok(())
            }
            Op::Copy { from, into, len } => {
                let data = self.target(from, len, memory_of)?.to_vec();
                self.target(into, len, memory_of)?.copy_from_slice(&data);
                Ok(())
            }
            Op::Flush => {
                // After a failed flush that may have lost writes, a flush that succeeds
                // would claim them durable: none does until the file is opened again.
                let sticky = usize::from(file == FileId::Data);
                if layer == 0 && self.flush_failed[sticky] {
                    return self.storage_result(Err(earlier_flush_failed()));
                }
                let storage = layer_of(&mut self.storage, &mut self.lower, layer)?;
                let result = injection.other(|| storage.flush(file));
                if result.is_err() && layer == 0 && self.storage.failed_flush_loses_writes() {
                    self.flush_failed[sticky] = true;
                }
                self.storage_result(result)
            }
            Op::SetLength { len } => {
                let storage = layer_of(&mut self.storage, &mut self.lower, layer)?;
                let result = injection.other(|| storage.set_len(file, len));
                self.storage_result(result)
            }
        }
    }

    /// The bytes `buffer` names: a guest request's buffer, or the engine memory of layer
    /// `memory_of`.
    fn target(
        &mut self,
        buffer: Buffer,
        len: usize,
        memory_of: usize,
    ) -> Result<&mut [u8], IoError> {
        match buffer {
            Buffer::Guest { request, offset } => self.guest(request, offset, len),
            Buffer::Engine { offset } => self
                .chain
                .memory_mut(memory_of)
                .get_mut(offset..offset + len)
                .ok_or(IoError::Failed),
        }
    }

    /// Performs commands until request `id` finished; returns its outcome and buffer.
    pub fn wait(&mut self, id: RequestId) -> Result<Finished, DriverError> {
        loop {
            if let Some(done) = self.results.remove(&id) {
                return Ok(done);
            }
            if !self.step() {
                return Err(DriverError::Stalled(self.requests_in_flight()));
            }
        }
    }

    /// Takes the outcome of `id` if it already finished.
    pub fn take_result(&mut self, id: RequestId) -> Option<Finished> {
        self.results.remove(&id)
    }

    /// Performs commands until nothing is in flight.
    pub fn run_until_idle(&mut self) -> Result<(), DriverError> {
        while self.requests_in_flight() > 0
            || !self.pending.is_empty()
            || self.commands_in_flight() > 0
        {
            if !self.step() {
                return Err(DriverError::Stalled(self.requests_in_flight()));
            }
        }
        Ok(())
    }

    fn run(&mut self, request: Request, buffer: Vec<u8>) -> Result<(Reply, Vec<u8>), DriverError> {
        let id = self.submit(request, buffer)?;
        let (result, buffer) = self.wait(id)?;
        match result {
            Ok(reply) => Ok((reply, buffer)),
            Err(error) => Err(self.request_error(error)),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, DriverError> {
        Ok(self
            .run(
                Request::Read {
                    offset,
                    len: len as u64,
                },
                vec![0; len],
            )?
            .1)
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DriverError> {
        self.run(
            Request::Write {
                offset,
                len: data.len() as u64,
            },
            data.to_vec(),
        )
        .map(|_| ())
    }

    /// Reads `buffer.len()` bytes at `offset` into `buffer` (no copy, no allocation).
    pub fn read_into(&mut self, offset: u64, buffer: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        let len = buffer.len() as u64;
        Ok(self.run(Request::Read { offset, len }, buffer)?.1)
    }

    /// Writes `buffer` at `offset` and hands it back (no copy, no allocation).
    pub fn write_from(&mut self, offset: u64, buffer: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        let len = buffer.len() as u64;
        Ok(self.run(Request::Write { offset, len }, buffer)?.1)
    }

    /// Makes `len` bytes at `offset` read as zeros.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DriverError> {
        self.run(Request::WriteZeroes { offset, len }, Vec::new())
            .map(|_| ())
    }

    /// Discards `len` bytes at `offset` (they read as zeros afterwards).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), DriverError> {
        self.run(Request::Discard { offset, len }, Vec::new())
            .map(|_| ())
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) -> Result<(), DriverError> {
        self.run(Request::Flush, Vec::new()).map(|_| ())
    }

    /// The mapping of the first run at `offset` (at most `len` bytes).
    pub fn map(&mut self, offset: u64, len: u64) -> Result<MapRun, DriverError> {
        match self.run(Request::Map { offset, len }, Vec::new())?.0 {
            Reply::Mapping(run) => Ok(run),
            Reply::Done => Ok(MapRun {
                offset,
                len: 0,
                mapping: Mapping::Unallocated,
            }),
            other => Err(DriverError::Io(io::Error::other(format!(
                "the engine answered a map request with {other:?}"
            )))),
        }
    }

    /// The files of every image of the chain, the image's own first.
    pub fn layers_mut(&mut self) -> impl Iterator<Item = &mut S> {
        std::iter::once(&mut self.storage).chain(self.lower.iter_mut())
    }

    /// Drops the engine without closing, as a power cut or a crash would, and returns
    /// the storage as it is.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Closes the image; returns the storage and whether it was marked clean.
    pub fn close(self) -> Result<(S, bool), DriverError> {
        let (mut layers, clean) = self.close_chain()?;
        // A chain has at least one layer: the image's own files come first.
        Ok((layers.swap_remove(0), clean))
    }

    /// Closes the image and the images below it; returns the files of each, the image's
    /// first, and whether the image was marked clean.
    pub fn close_chain(mut self) -> Result<(Vec<S>, bool), DriverError> {
        self.run_until_idle()?;
        self.chain.close();
        while self.closed.is_none() {
            if !self.step() {
                return Err(DriverError::Stalled(self.requests_in_flight()));
            }
        }
        let mut layers = vec![self.storage];
        layers.append(&mut self.lower);
        Ok((layers, self.closed.unwrap_or(false)))
    }
}

/// The files of layer `layer`: `top` for the image, `lower` below it.
/// Bytes `[offset, offset + len)` of the buffer of guest request `request`.
fn guest_slice(
    buffers: &mut [Option<Vec<u8>>],
    request: RequestId,
    offset: usize,
    len: usize,
) -> Result<&mut [u8], IoError> {
    buffers
        .get_mut(request.slot())
        .and_then(|b| b.as_mut())
        .and_then(|b| b.get_mut(offset..offset.checked_add(len)?))
        .ok_or(IoError::Failed)
}

fn layer_of<'a, S>(top: &'a mut S, lower: &'a mut [S], layer: usize) -> Result<&'a mut S, IoError> {
    match layer.checked_sub(1) {
        None => Ok(top),
        Some(below) => lower.get_mut(below).ok_or(IoError::Failed),
    }
}
