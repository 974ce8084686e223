//! A synchronous driver for the engine: it owns the engine, the guest buffers and a
//! [`Storage`], performs commands (in order, or shuffled with injected errors for tests)
//! and turns the event stream into blocking calls. The CLI and the tests use it; it holds
//! no format logic.

use crate::host::faults::{Cmd, FaultPlan, Injection};
use crate::host::storage::{earlier_flush_failed, engine_error, Storage};
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

/// Drives one image.
pub struct Driver<S: Storage> {
    engine: Engine<Vec<u8>>,
    /// The files.
    pub storage: S,
    buffers: Vec<Option<Vec<u8>>>,
    results: HashMap<RequestId, Finished>,
    pending: Vec<Command>,
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

impl<S: Storage> Driver<S> {
    /// Opens the image in `storage`.
    pub fn open(storage: S, options: DriverOptions) -> Result<Self, DriverError> {
        Self::open_with_faults(storage, options, None)
    }

    /// Opens the image in `storage` with `faults` injected into the storage commands
    /// from the first one on (see [`crate::host::faults`]).
    pub fn open_with_faults(
        mut storage: S,
        options: DriverOptions,
        faults: Option<FaultPlan>,
    ) -> Result<Self, DriverError> {
        let image_len = storage.len(FileId::Image)?.unwrap_or(0);
        let data_len = storage.len(FileId::Data)?;
        let base_available = storage.len(FileId::Base)?.is_some();
        // Sized from the image's first bytes, so large blocks get room for a fill; when
        // they cannot be read, the engine's own first read reports why.
        let mut first = vec![0u8; SIZING_LEN];
        if storage.read_at(FileId::Image, 0, &mut first).is_err() {
            first.clear();
        }
        let memory = vec![0u8; memory_needed(&first, options.cache_bytes, options.bounce_bytes)];
        let engine = Engine::open(
            memory,
            OpenOptions {
                writable: options.writable,
                image_len,
                data_len,
                base_available,
                cache_bytes: options.cache_bytes,
                storage_zero_init: true,
                copy_on_read: options.copy_on_read,
                prefetch: options.prefetch,
            },
        );
        let mut driver = Driver {
            engine,
            storage,
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
        while driver.opened.is_none() {
            if !driver.step() {
                return Err(DriverError::Stalled(0));
            }
        }
        match driver.opened {
            Some(Err(error @ OpenError::Io(_))) => match driver.last_os_error.take() {
                Some(source) => Err(DriverError::OpenIo { error, source }),
                None => Err(DriverError::Open(error)),
            },
            Some(Err(e)) => Err(DriverError::Open(e)),
            _ => Ok(driver),
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
        self.engine.handle_timeout(now_ms);
        self.run_until_idle()
    }

    /// Passes the host's clock (ms) to the engine without performing anything (a host that
    /// is busy elsewhere).
    pub fn tick(&mut self, now_ms: u64) {
        self.engine.handle_timeout(now_ms);
    }

    /// The engine (for layout and header queries).
    pub fn engine(&self) -> &Engine<Vec<u8>> {
        &self.engine
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
            match self.engine.submit(request) {
                Ok(id) => {
                    self.buffers[id.slot()] = Some(buffer);
                    return Ok(id);
                }
                Err(SubmitError::Busy) => {
                    if !self.step() {
                        return Err(DriverError::Stalled(self.engine.requests_in_flight()));
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
        while let Some(command) = self.engine.poll_command() {
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
            && self.next_random() % 1000 < u64::from(self.options.error_per_mille)
        {
            result = Err(IoError::Failed);
        }
        self.commands_run += 1;
        self.engine.complete(command.id, result);
        self.drain_events();
        true
    }

    fn drain_events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.engine.poll_event() {
            any = true;
            match event {
                Event::Opened => self.opened = Some(Ok(())),
                Event::OpenFailed(e) => self.opened = Some(Err(e)),
                Event::Closed { clean } => self.closed = Some(clean),
                Event::Completed { id, result } => {
                    let buffer = self.buffers[id.slot()].take().unwrap_or_default();
                    self.results.insert(id, (result, buffer));
                }
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
        self.buffers
            .get_mut(request.slot())
            .and_then(|b| b.as_mut())
            .and_then(|b| b.get_mut(offset..offset + len))
            .ok_or(IoError::Failed)
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

    fn perform(&mut self, command: &Command) -> Result<(), IoError> {
        let file = command.file;
        let injection = match (self.faults.as_mut(), Cmd::of(file, &command.op)) {
            (Some(plan), Some(cmd)) => {
                let storage = &mut self.storage;
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
            Op::Read { offset, len, into } => {
                let mut tmp = vec![0u8; len];
                let result = match injection {
                    Injection::None => self.storage.read_at(file, offset, &mut tmp),
                    injection => {
                        // A base must not end early: the host knows its length.
                        let known_len = match file {
                            FileId::Base => self.storage.len(file).ok().flatten(),
                            _ => None,
                        };
                        let storage = &mut self.storage;
                        let read = |buf: &mut [u8], at: u64| {
                            storage.read_at(file, at, buf).map(|()| buf.len())
                        };
                        injection.read(read, offset, &mut tmp, known_len)
                    }
                };
                self.storage_result(result)?;
                self.target(into, len)?.copy_from_slice(&tmp);
                Ok(())
            }
            Op::Write { offset, len, from } => {
                let data = self.target(from, len)?.to_vec();
                let storage = &mut self.storage;
                let result = match injection {
                    Injection::None => storage.write_at(file, offset, &data),
                    injection => injection.write(len as u64, |n| {
                        storage.write_at(file, offset, &data[..n as usize])
                    }),
                };
                self.storage_result(result)
            }
            Op::WriteZeroes { offset, len, unmap } => {
                let storage = &mut self.storage;
                let result = match injection {
                    Injection::None => storage.write_zeroes(file, offset, len, unmap),
                    injection => {
                        injection.write(len, |n| storage.write_zeroes(file, offset, n, unmap))
                    }
                };
                self.storage_result(result)
            }
            Op::ZeroBuffer { into, len } => {
                self.target(into, len)?.fill(0);
                Ok(())
            }
            Op::Copy { from, into, len } => {
                let data = self.target(from, len)?.to_vec();
                self.target(into, len)?.copy_from_slice(&data);
                Ok(())
            }
            Op::Flush => {
                // After a failed flush that may have lost writes, a flush that succeeds
                // would claim them durable: none does until the file is opened again.
                let sticky = usize::from(file == FileId::Data);
                if self.flush_failed[sticky] {
                    return self.storage_result(Err(earlier_flush_failed()));
                }
                let storage = &mut self.storage;
                let result = injection.other(|| storage.flush(file));
                if result.is_err() && self.storage.failed_flush_loses_writes() {
                    self.flush_failed[sticky] = true;
                }
                self.storage_result(result)
            }
            Op::SetLength { len } => {
                let storage = &mut self.storage;
                let result = injection.other(|| storage.set_len(file, len));
                self.storage_result(result)
            }
        }
    }

    fn target(&mut self, buffer: Buffer, len: usize) -> Result<&mut [u8], IoError> {
        match buffer {
            Buffer::Guest { request, offset } => self.guest(request, offset, len),
            Buffer::Engine { offset } => self
                .engine
                .memory_mut()
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
                return Err(DriverError::Stalled(self.engine.requests_in_flight()));
            }
        }
    }

    /// Takes the outcome of `id` if it already finished.
    pub fn take_result(&mut self, id: RequestId) -> Option<Finished> {
        self.results.remove(&id)
    }

    /// Performs commands until nothing is in flight.
    pub fn run_until_idle(&mut self) -> Result<(), DriverError> {
        while self.engine.requests_in_flight() > 0
            || !self.pending.is_empty()
            || self.engine.commands_in_flight() > 0
        {
            if !self.step() {
                return Err(DriverError::Stalled(self.engine.requests_in_flight()));
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
        }
    }

    /// Drops the engine without closing, as a power cut or a crash would, and returns
    /// the storage as it is.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Closes the image; returns the storage and whether it was marked clean.
    pub fn close(mut self) -> Result<(S, bool), DriverError> {
        self.run_until_idle()?;
        self.engine.close();
        while self.closed.is_none() {
            if !self.step() {
                return Err(DriverError::Stalled(self.engine.requests_in_flight()));
            }
        }
        Ok((self.storage, self.closed.unwrap_or(false)))
    }
}
