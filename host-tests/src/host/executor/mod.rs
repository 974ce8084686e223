//! A concurrent executor: the engine stays on the calling thread (it is not `Sync` and
//! needs no locks) while a small pool of worker threads performs its commands on real
//! files with positioned I/O, many in flight at once.
//!
//! The calling thread runs one loop: submit the caller's requests, poll the engine's
//! commands and queue each for the pool, take the finished jobs and report them
//! to the engine, collect the engine's completion events, and give the engine the time
//! (for the header's `journal_clean_buf_period`). Commands that need no file (zeroing or
//! copying a buffer) are served on the calling thread at once. An image over a base that
//! is itself an image runs as core's chain of engines, one per image: base reads between
//! images never reach the executor, and the commands of every layer go to the pool with
//! that layer's files; base reads of the last layer's raw base go to the pool like any
//! other read.
//!
//! Costs on the calling thread are kept per batch rather than per command: the jobs of
//! consecutive submissions (or of one batch of completions) go to the shared queue under
//! one lock with at most one wake-up (a woken worker that sees more jobs and sleeping
//! workers passes the wake-up on, so the futex calls land on the workers, not on the one
//! thread every request passes through); a worker hands back its result and takes its
//! next job in one critical section, and wakes the calling thread only if it sleeps,
//! which then takes every finished job at once. The engine is polled only when it has
//! commands waiting (`commands_in_flight` exceeds those polled), since every poll runs
//! its state machines.
//!
//! Buffers. Each guest request's buffer belongs to the executor until the request
//! completes and lives in an `Arc<Mutex<Vec<u8>>>` ([`GuestBuffers::Shared`]): a worker
//! locks it for the duration of its `pread`/`pwrite`, so the bytes move once, between the
//! page cache and the caller's buffer. Commands of one request address disjoint ranges,
//! so the lock is uncontended unless one request has several commands in flight (a read
//! that spans base, data and zeros), which then take turns; the lock makes this safe even
//! if ranges overlapped, and every range is bounds-checked. The alternative,
//! [`GuestBuffers::Copy`], copies each command's bytes through a pooled vector on the
//! calling thread (out before a write, in after a read); it is kept for comparison and
//! measured slower (BENCHMARKS.md: at 64 KiB about 1 µs more calling-thread CPU per
//! request and 13-28 % less read throughput; no difference at 4 KiB), because the copies
//! land on the one thread every request already passes through. Engine memory (metadata pages, copy-on-write bounce
//! blocks) is always copied: out into the job for writes, back in on completion for reads.
//! A write's copy is made when the calling thread is about to wait, after the jobs batched
//! so far have gone out (the engine keeps the bytes of a command unchanged until it
//! completes), so that a copy-on-read fill's write is copied while the guest's next read
//! is already on a worker instead of before it is sent.
//!
//! Background work ([`Executor::run_background`], in `background`): the engine's own
//! commands (whole-image prefetch, `ExecutorOptions::prefetch`) go to the pool many at
//! once while no request of the caller's is in flight, and the calling thread sleeps while
//! the engine only waits for a time (a throttle window).
//!
//! The raw mode ([`Executor::open_raw`]) runs the same pool and the same buffers over a
//! plain file without an engine, so benchmarks compare like with like. It does not order
//! overlapping writes in flight (the engine does).

mod background;
mod commands;
mod pool;
mod raw;

use crate::host::driver::DriverOptions;
use crate::host::faults::SharedPlan;
use crate::host::files::{self, read_full_at};
use crate::host::gate::OpenGate;
use crate::host::lock::FileLock;
use commands::{copy_engine_writes, drain_events, land, start_command, Engines, FvdState};
use files::{Base, FileStorage, Layers};
use fvd_core::engine::{memory_needed, SIZING_LEN};
use fvd_core::engine::{
    Engine, OpenOptions, PrefetchMode, Reply, Request, RequestError, Stats, SubmitError,
    MAX_REQUESTS, PAGE_BYTES,
};
use pool::{lock, Done, Files, Job, Landing, Pool, SharedBuf, Target, Token, Work};
use raw::raw_work;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How guest buffers reach the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestBuffers {
    /// Workers lock the request's buffer and read or write it in place (no copy).
    Shared,
    /// Bytes are copied between the request's buffer and a per-command vector on the
    /// calling thread.
    Copy,
}

/// How to run an executor.
#[derive(Clone, Copy, Debug)]
pub struct ExecutorOptions {
    /// Worker threads performing file I/O.
    pub workers: usize,
    /// Open for writing.
    pub writable: bool,
    /// Metadata cache bytes.
    pub cache_bytes: usize,
    /// Engine memory beyond header, scratch and cache (copy-on-write bounce space).
    pub bounce_bytes: usize,
    /// How guest buffers reach the workers.
    pub guest_buffers: GuestBuffers,
    /// Copy-on-read: `None` follows the image header.
    pub copy_on_read: Option<bool>,
    /// Whole-image prefetch of the image (its bases never prefetch); it moves while the
    /// caller waits for requests or runs [`Executor::run_background`].
    pub prefetch: PrefetchMode,
    /// The policy for the files the image's headers name, and how every file is shared
    /// with other processes.
    pub gate: OpenGate,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            workers: 4,
            writable: true,
            cache_bytes: 256 * PAGE_BYTES,
            bounce_bytes: 4 << 20,
            guest_buffers: GuestBuffers::Shared,
            copy_on_read: None,
            prefetch: PrefetchMode::Off,
            gate: OpenGate::default(),
        }
    }
}

/// What can go wrong running an executor (the host's one error type).
pub use crate::host::error::HostError as ExecutorError;

/// Names a submitted request until its [`Completion`] is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The request.
    pub ticket: Ticket,
    /// Its outcome.
    pub result: Result<Reply, RequestError>,
    /// Its buffer: the data read, or the data written (for reuse); empty otherwise.
    pub data: Vec<u8>,
}

pub(super) struct ReqSlot {
    pub(super) ticket: Ticket,
    pub(super) buf: SharedBuf,
}

pub(super) fn take_buffer(buf: SharedBuf) -> Vec<u8> {
    match Arc::try_unwrap(buf) {
        Ok(mutex) => mutex
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        // Unreachable: workers drop their clones before reporting; copy to be safe.
        Err(shared) => lock(&shared).clone(),
    }
}

enum Mode {
    Fvd(FvdState),
    Raw {
        len: u64,
        requests: HashMap<u64, ReqSlot>,
        /// The file's lock, held while it is open.
        _lock: FileLock,
    },
}

/// Runs an FVD image (or a raw file) with many requests in flight. See the module docs.
pub struct Executor {
    mode: Mode,
    pool: Pool,
    options: ExecutorOptions,
    finished: VecDeque<Completion>,
    next_ticket: u64,
    in_flight: usize,
    done_scratch: Vec<Done>,
    closed: bool,
    /// The engine's clock starts at zero here (for `journal_clean_buf_period`).
    clock: Instant,
    last_tick: u64,
    /// The operating system's reason for the last job that failed on a file.
    last_os_error: Option<std::io::Error>,
}

impl Executor {
    /// An executor in `mode` on `pool`, with nothing submitted yet.
    fn start(mode: Mode, pool: Pool, options: ExecutorOptions) -> Executor {
        Executor {
            mode,
            pool,
            options,
            finished: VecDeque::new(),
            next_ticket: 0,
            in_flight: 0,
            done_scratch: Vec::new(),
            closed: false,
            clock: Instant::now(),
            last_tick: 0,
            last_os_error: None,
        }
    }

    /// Opens the FVD image at `path` with its data file and base chain.
    pub fn open(path: &Path, options: ExecutorOptions) -> Result<Executor, ExecutorError> {
        Self::open_with_faults(path, options, None)
    }

    /// Opens the FVD image at `path` with `faults` injected into the workers' file
    /// operations from the first one on (see [`crate::host::faults`]; the caller keeps a handle
    /// to clear them). They apply to the image's own files: the files of the images below
    /// it in its chain are not affected.
    pub fn open_with_faults(
        path: &Path,
        options: ExecutorOptions,
        faults: Option<SharedPlan>,
    ) -> Result<Executor, ExecutorError> {
        let driver_options = DriverOptions {
            writable: options.writable,
            cache_bytes: options.cache_bytes,
            bounce_bytes: options.bounce_bytes,
            ..DriverOptions::default()
        };
        let storage =
            files::open_storage_with(path, driver_options, &options.gate).map_err(Box::new)?;
        let Layers {
            files: layers,
            keys,
            paths,
        } = storage.into_layers(path)?;
        let last = layers.len().saturating_sub(1);
        let mut engines = Vec::with_capacity(layers.len());
        let mut pool_files = Vec::with_capacity(layers.len());
        let mut held = Vec::with_capacity(layers.len());
        let mut raw_base = None;
        for (layer, storage) in layers.into_iter().enumerate() {
            let FileStorage {
                image,
                data,
                base,
                held: h,
                // The executor's pool reads and writes through the page cache, and
                // always syncs.
                ..
            } = storage;
            held.push(h);
            let image_len = image.metadata()?.len();
            let data_len = match &data {
                Some(f) => Some(f.metadata()?.len()),
                None => None,
            };
            // Every layer but the last has the layer below as its base.
            let base_available = layer < last || base.is_some();
            let (base_file, base_len) = match base {
                Some(Base::Raw(raw)) => {
                    let clone = raw.file().try_clone()?;
                    let len = raw.len();
                    raw_base = Some(raw);
                    (Some(clone), len)
                }
                _ => (None, 0),
            };
            let mut first = vec![0u8; SIZING_LEN];
            if read_full_at(&image, 0, &mut first).is_err() {
                first.clear();
            }
            let memory =
                vec![0u8; memory_needed(&first, options.cache_bytes, options.bounce_bytes)];
            engines.push(Engine::open(
                memory,
                OpenOptions {
                    writable: options.writable && layer == 0,
                    image_len,
                    data_len,
                    base_available,
                    cache_bytes: options.cache_bytes,
                    storage_zero_init: true,
                    release_stale_journal: true,
                    copy_on_read: options.copy_on_read.filter(|_| layer == 0),
                    prefetch: if layer == 0 {
                        options.prefetch
                    } else {
                        PrefetchMode::Off
                    },
                },
            ));
            pool_files.push(Files {
                image,
                data,
                base: base_file,
                base_len,
                // Faults are planned for the image's own files.
                faults: if layer == 0 { faults.clone() } else { None },
                flush_failed: Default::default(),
                growing: Default::default(),
            });
        }
        let chain = Engines::new(engines, &keys).map_err(ExecutorError::Chain)?;
        let mut executor = Executor::start(
            Mode::Fvd(FvdState {
                chain: Box::new(chain),
                _raw_base: raw_base,
                _held: held,
                opening: true,
                requests: (0..MAX_REQUESTS).map(|_| None).collect(),
                opened: None,
                closed: None,
                polled: 0,
                engine_writes: Vec::new(),
            }),
            Pool::start(pool_files, options.workers),
            options,
        );
        // Every layer opens before the first request (a base's failure is reported
        // with its own path).
        loop {
            let Some(f) = executor.fvd() else {
                return Err(ExecutorError::Stalled(0));
            };
            match f.opened {
                Some(Ok(())) if f.chain.layers().iter().all(Engine::is_open) => {
                    if let Mode::Fvd(f) = &mut executor.mode {
                        f.opening = false;
                    }
                    return Ok(executor);
                }
                Some(Err(source)) => {
                    let layer = f.chain.failed_layer().unwrap_or(0);
                    return Err(ExecutorError::Engine {
                        path: paths
                            .get(layer)
                            .cloned()
                            .unwrap_or_else(|| path.to_path_buf()),
                        source,
                    });
                }
                _ => executor.turn()?,
            }
        }
    }

    fn fvd(&self) -> Option<&FvdState> {
        match &self.mode {
            Mode::Fvd(f) => Some(f),
            Mode::Raw { .. } => None,
        }
    }

    /// The engine (None in raw mode).
    pub fn engine(&self) -> Option<&Engine<Vec<u8>>> {
        self.fvd().and_then(|f| f.chain.layers().first())
    }

    /// What the engine did so far (None in raw mode).
    pub fn stats(&self) -> Option<Stats> {
        self.engine().map(|e| e.stats())
    }

    /// `fdatasync` calls the workers made.
    pub fn syncs(&self) -> u64 {
        self.pool.syncs()
    }

    /// The guest-visible size (the file's length at open in raw mode).
    pub fn size(&self) -> u64 {
        match &self.mode {
            Mode::Fvd(f) => f
                .chain
                .layers()
                .first()
                .and_then(Engine::virtual_size)
                .unwrap_or(0),
            Mode::Raw { len, .. } => *len,
        }
    }

    /// Requests submitted whose completion has not been collected yet by the executor.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The options it runs with.
    pub fn options(&self) -> &ExecutorOptions {
        &self.options
    }

    /// Reads `len` bytes at `offset`.
    pub fn submit_read(&mut self, offset: u64, len: usize) -> Result<Ticket, ExecutorError> {
        self.submit_read_into(offset, vec![0; len])
    }

    /// Reads `buf.len()` bytes at `offset` into `buf` (returned in the completion).
    pub fn submit_read_into(&mut self, offset: u64, buf: Vec<u8>) -> Result<Ticket, ExecutorError> {
        let len = buf.len() as u64;
        self.submit(Request::Read { offset, len }, buf)
    }

    /// Writes `data` at `offset` (returned in the completion for reuse).
    pub fn submit_write(&mut self, offset: u64, data: Vec<u8>) -> Result<Ticket, ExecutorError> {
        let len = data.len() as u64;
        self.submit(Request::Write { offset, len }, data)
    }

    /// Makes `len` bytes at `offset` read as zeros.
    pub fn submit_write_zeroes(&mut self, offset: u64, len: u64) -> Result<Ticket, ExecutorError> {
        self.submit(Request::WriteZeroes { offset, len }, Vec::new())
    }

    /// Discards `len` bytes at `offset` (they read as zeros afterwards).
    pub fn submit_discard(&mut self, offset: u64, len: u64) -> Result<Ticket, ExecutorError> {
        self.submit(Request::Discard { offset, len }, Vec::new())
    }

    /// Makes every write completed before it durable.
    pub fn submit_flush(&mut self) -> Result<Ticket, ExecutorError> {
        self.submit(Request::Flush, Vec::new())
    }

    /// Submits `request` with its buffer. Blocks (performing commands) only while every
    /// engine request slot is taken.
    pub fn submit(&mut self, request: Request, buffer: Vec<u8>) -> Result<Ticket, ExecutorError> {
        if self.closed {
            return Err(ExecutorError::Submit(SubmitError::NotOpen));
        }
        let ticket = Ticket(self.next_ticket);
        if let Request::Read { len, .. } | Request::Write { len, .. } = request {
            if buffer.len() as u64 != len {
                return Err(ExecutorError::BufferLength {
                    len,
                    buffer: buffer.len(),
                });
            }
        }
        match &mut self.mode {
            Mode::Fvd(_) => loop {
                let Mode::Fvd(f) = &mut self.mode else {
                    unreachable!()
                };
                match f.chain.submit(request) {
                    Ok(id) => {
                        f.requests[id.slot()] = Some(ReqSlot {
                            ticket,
                            buf: Arc::new(Mutex::new(buffer)),
                        });
                        break;
                    }
                    Err(SubmitError::Busy) => self.turn()?,
                    Err(e) => return Err(e.into()),
                }
            },
            Mode::Raw { requests, .. } => {
                let (target, work, buf) = raw_work(request, buffer, self.options.writable)?;
                requests.insert(ticket.0, ReqSlot { ticket, buf });
                self.pool.push(Job {
                    token: Token::Raw(ticket.0),
                    layer: 0,
                    target,
                    work,
                    landing: Landing::None,
                });
            }
        }
        self.next_ticket += 1;
        self.in_flight += 1;
        self.dispatch();
        // Jobs of consecutive submissions go out together (one lock, only the wake-ups
        // needed) when the caller waits, or as soon as there is one per worker.
        if self.pool.batch.len() >= self.pool.workers.len() {
            self.pool.send_batch();
        }
        Ok(ticket)
    }

    /// Queues every command the engine has for the pool (serving the synchronous ones at
    /// once) and collects the engine's events. The queued jobs go out with
    /// `Pool::send_batch`, before the calling thread blocks or returns to its caller.
    fn dispatch(&mut self) {
        if let Mode::Fvd(f) = &mut self.mode {
            // Commands served at once complete into the engine, which may emit more: the
            // loop condition sees those too.
            while f.chain.commands_in_flight() > f.polled {
                let Some(command) = f.chain.poll_command() else {
                    break;
                };
                f.polled += 1;
                if start_command(f, &mut self.pool, self.options.guest_buffers, command) {
                    f.polled -= 1;
                }
            }
            drain_events(f, &mut self.finished);
        }
    }

    /// One round: wait for at least one completion, report all that arrived, dispatch.
    fn turn(&mut self) -> Result<(), ExecutorError> {
        self.turn_until(None)
    }

    /// [`Self::turn`], waiting for a completion no later than `until` either.
    fn turn_until(&mut self, until: Option<Instant>) -> Result<(), ExecutorError> {
        self.release_engine_writes();
        if self.pool.outstanding == 0 {
            self.dispatch_and_send();
            if self.pool.outstanding == 0 {
                let stuck = match &self.mode {
                    Mode::Fvd(f) => {
                        f.opened.is_none()
                            || f.chain.requests_in_flight() > 0
                            || (f.opening && !f.chain.layers().iter().all(Engine::is_open))
                    }
                    Mode::Raw { .. } => false,
                };
                if stuck || self.in_flight > self.finished.len() {
                    return Err(ExecutorError::Stalled(self.in_flight));
                }
                return Ok(());
            }
        }
        self.pool.send_batch();
        let limit = self
            .fvd()
            .and_then(|f| f.chain.poll_timeout())
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(self.now_ms()).max(1)));
        let limit = match until.map(|until| until.saturating_duration_since(Instant::now())) {
            Some(left) => Some(limit.map_or(left, |limit| limit.min(left))),
            None => limit,
        };
        let mut done = std::mem::take(&mut self.done_scratch);
        self.pool.collect(limit, &mut done)?;
        for d in done.drain(..) {
            self.finish_job(d);
        }
        self.done_scratch = done;
        self.tick();
        self.dispatch();
        Ok(())
    }

    /// Queues every command the engine has, then sends them all: the jobs batched first,
    /// the engine's writes (copied out of its memory meanwhile) after them.
    fn dispatch_and_send(&mut self) {
        self.dispatch();
        self.release_engine_writes();
        self.pool.send_batch();
    }

    /// Sends the jobs batched so far, then copies the engine's writes out of its memory
    /// and queues them: the copying overlaps the jobs just sent.
    fn release_engine_writes(&mut self) {
        if let Mode::Fvd(f) = &mut self.mode {
            if !f.engine_writes.is_empty() {
                self.pool.send_batch();
                copy_engine_writes(f, &mut self.pool);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Gives the engine the time (at most once per millisecond): it commits metadata
    /// changes older than the image's `journal_clean_buf_period` without a guest flush.
    fn tick(&mut self) {
        let now = self.now_ms();
        if now != self.last_tick {
            self.last_tick = now;
            if let Mode::Fvd(f) = &mut self.mode {
                f.chain.handle_timeout(now);
            }
        }
    }

    fn finish_job(&mut self, done: Done) {
        let Done {
            token,
            mut result,
            data,
            landing,
            os_error,
        } = done;
        if os_error.is_some() {
            self.last_os_error = os_error;
        }
        match (&mut self.mode, token) {
            (Mode::Fvd(f), Token::Command(id)) => {
                if let Some(bytes) = data {
                    if result.is_ok() {
                        result = land(f, landing, &bytes);
                    }
                    self.pool.give_back(bytes);
                }
                f.polled -= 1;
                f.chain.complete(id, result);
            }
            (Mode::Raw { requests, .. }, Token::Raw(key)) => {
                if let Some(slot) = requests.remove(&key) {
                    self.finished.push_back(Completion {
                        ticket: slot.ticket,
                        result: result.map(|()| Reply::Done).map_err(RequestError::Io),
                        data: take_buffer(slot.buf),
                    });
                }
            }
            _ => {}
        }
    }

    /// Every completion collected so far, after waiting for at least one when some
    /// request is in flight and none has been collected.
    pub fn wait_some(&mut self) -> Result<Vec<Completion>, ExecutorError> {
        while self.finished.is_empty() && self.in_flight > 0 {
            self.turn()?;
        }
        self.pool.send_batch();
        self.in_flight -= self.finished.len();
        Ok(self.finished.drain(..).collect())
    }

    /// Waits for every request in flight; returns their completions in completion order.
    pub fn wait_all(&mut self) -> Result<Vec<Completion>, ExecutorError> {
        while self.in_flight > self.finished.len() {
            self.turn()?;
        }
        self.pool.send_batch();
        self.in_flight = 0;
        Ok(self.finished.drain(..).collect())
    }

    /// Waits for request `ticket` and returns its completion (others stay collected).
    pub fn wait(&mut self, ticket: Ticket) -> Result<Completion, ExecutorError> {
        loop {
            if let Some(i) = self.finished.iter().position(|c| c.ticket == ticket) {
                self.pool.send_batch();
                self.in_flight -= 1;
                return Ok(self.finished.remove(i).expect("index found above"));
            }
            if self.in_flight <= self.finished.len() {
                return Err(ExecutorError::Stalled(self.in_flight));
            }
            self.turn()?;
        }
    }

    fn run(&mut self, request: Request, buffer: Vec<u8>) -> Result<Vec<u8>, ExecutorError> {
        let ticket = self.submit(request, buffer)?;
        let done = self.wait(ticket)?;
        done.result?;
        Ok(done.data)
    }

    /// Reads `len` bytes at `offset` and waits for them.
    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, ExecutorError> {
        self.run(
            Request::Read {
                offset,
                len: len as u64,
            },
            vec![0; len],
        )
    }

    /// Writes `data` at `offset` and waits for it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ExecutorError> {
        let len = data.len() as u64;
        self.run(Request::Write { offset, len }, data.to_vec())
            .map(drop)
    }

    /// Makes every completed write durable and waits for it.
    pub fn flush(&mut self) -> Result<(), ExecutorError> {
        self.run(Request::Flush, Vec::new()).map(drop)
    }

    /// Waits for every request, closes the image (metadata written back, marked clean)
    /// and stops the workers. Returns whether the image was marked clean (always true in
    /// raw mode, after a final `fdatasync` when writable).
    pub fn close(mut self) -> Result<bool, ExecutorError> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<bool, ExecutorError> {
        if self.closed {
            return Ok(true);
        }
        self.wait_all()?;
        self.closed = true;
        let clean = match &mut self.mode {
            Mode::Fvd(f) => {
                f.chain.close();
                loop {
                    if let Mode::Fvd(f) = &self.mode {
                        if let Some(clean) = f.closed {
                            break clean;
                        }
                    }
                    self.turn()?;
                    if self.pool.outstanding == 0 {
                        self.dispatch_and_send();
                        let Mode::Fvd(f) = &self.mode else {
                            unreachable!()
                        };
                        if f.closed.is_none() && self.pool.outstanding == 0 {
                            return Err(ExecutorError::Stalled(0));
                        }
                    }
                }
            }
            Mode::Raw { .. } => {
                if self.options.writable {
                    self.pool.push(Job {
                        token: Token::Raw(u64::MAX),
                        layer: 0,
                        target: Target::Image,
                        work: Work::Flush,
                        landing: Landing::None,
                    });
                    self.pool.send_batch();
                    while self.pool.outstanding > 0 {
                        self.turn()?;
                    }
                }
                true
            }
        };
        self.pool.stop();
        Ok(clean)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Best effort: an executor dropped without `close` still closes its image.
        let _ = self.close_inner();
        self.pool.stop();
    }
}
