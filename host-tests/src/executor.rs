//! A concurrent executor: the engine stays on the calling thread (it is not `Sync` and
//! needs no locks) while a small pool of worker threads performs its commands on real
//! files with positioned I/O, many in flight at once.
//!
//! The calling thread runs one loop: submit the caller's requests, poll the engine's
//! commands and queue each for the pool, take the finished jobs and report them
//! to the engine, collect the engine's completion events, and give the engine the time
//! (for the header's `journal_clean_buf_period`). Commands that need no file (zeroing or
//! copying a buffer) and base reads through a chained image are served on the calling
//! thread at once; base reads of a raw base go to the pool like any other read.
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
//!
//! The raw mode ([`Executor::open_raw`]) runs the same pool and the same buffers over a
//! plain file without an engine, so benchmarks compare like with like. It does not order
//! overlapping writes in flight (the engine does).

use crate::chain::BaseRead;
use crate::driver::DriverOptions;
use crate::faults::{Cmd, Injection, OpKind, SharedPlan};
use crate::files::{self, read_full_at, write_zeroes_at, ImageOpenError};
use crate::lock::{FileLock, Usage};
use crate::storage::earlier_flush_failed;
use fvd_core::engine::{memory_needed, SIZING_LEN};
use fvd_core::engine::{
    Buffer, Command, CommandId, Engine, Event, FileId, IoError, Op, OpenError, OpenOptions, Reply,
    Request, RequestError, RequestId, Stats, SubmitError, MAX_REQUESTS, PAGE_BYTES,
};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
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
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            workers: 4,
            writable: true,
            cache_bytes: 256 * PAGE_BYTES,
            bounce_bytes: 4 << 20,
            guest_buffers: GuestBuffers::Shared,
        }
    }
}

/// What can go wrong running an executor (the host's one error type).
pub use crate::error::HostError as ExecutorError;

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

type SharedBuf = Arc<Mutex<Vec<u8>>>;

fn lock(buf: &SharedBuf) -> MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which file a job runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Image,
    Data,
    Base,
}

/// Where a read's bytes go on the worker.
enum Dest {
    /// Into this request buffer at this offset.
    Guest(SharedBuf, usize),
    /// Into this (pooled) vector, handed back with the completion.
    Owned(Vec<u8>),
}

/// Where a write's bytes come from on the worker.
enum Src {
    Guest(SharedBuf, usize),
    Owned(Vec<u8>),
}

enum Work {
    Read { offset: u64, len: usize, into: Dest },
    Write { offset: u64, len: usize, from: Src },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
    Flush,
    SetLength { len: u64 },
}

/// Who waits for a job.
#[derive(Clone, Copy, Debug)]
enum Token {
    Command(CommandId),
    Raw(u64),
}

/// Where returned bytes land on the calling thread.
#[derive(Clone, Copy, Debug)]
enum Landing {
    None,
    Engine(usize),
    Guest(RequestId, usize),
}

struct Job {
    token: Token,
    target: Target,
    work: Work,
    landing: Landing,
}

struct Done {
    token: Token,
    result: Result<(), IoError>,
    /// A vector the job owned (bytes read, or a spent write source for the pool).
    data: Option<Vec<u8>>,
    landing: Landing,
}

/// The files the workers use.
struct Files {
    image: File,
    data: Option<File>,
    base: Option<File>,
    /// The raw base's length at open: it may not end earlier (see `files::read_within`).
    base_len: u64,
    /// Faults injected into the file operations (tests only).
    faults: Option<SharedPlan>,
    /// A flush of the image (0) or data file (1) failed: the page cache may have dropped
    /// the writes before it, so every later flush of that file fails (see
    /// `Storage::failed_flush_loses_writes`).
    flush_failed: [AtomicBool; 2],
}

impl Files {
    fn get(&self, target: Target) -> Option<&File> {
        match target {
            Target::Image => Some(&self.image),
            Target::Data => self.data.as_ref(),
            Target::Base => self.base.as_ref(),
        }
    }
}

#[derive(Default)]
struct PoolState {
    /// Jobs not yet taken by a worker.
    jobs: VecDeque<Job>,
    /// Jobs finished and not yet taken by the calling thread.
    done: Vec<Done>,
    /// Workers waiting for jobs.
    idle: usize,
    /// An idle worker was notified and has not run yet.
    wake_pending: bool,
    /// Whether the calling thread sleeps waiting for finished jobs.
    caller_waits: bool,
    /// Workers still running.
    alive: usize,
    closed: bool,
}

/// What the calling thread and the workers share: the job queue and the finished jobs,
/// under one lock, so a worker hands back a result and takes its next job in one
/// critical section.
#[derive(Default)]
struct Shared {
    state: Mutex<PoolState>,
    /// Idle workers wait here.
    work: Condvar,
    /// The calling thread waits here.
    finished: Condvar,
    syncs: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `jobs` and wakes one idle worker, unless a wake-up is already on its way:
    /// busy workers take queued jobs without a wake-up, and a worker that takes a job
    /// while more wait and others sleep passes the wake-up on, so the calling thread
    /// makes at most one futex call per batch.
    fn push_all(&self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut state = self.state();
        state.jobs.extend(jobs.drain(..));
        let wake = state.idle > 0 && !state.wake_pending;
        state.wake_pending |= wake;
        drop(state);
        if wake {
            self.work.notify_one();
        }
    }

    fn close(&self) {
        self.state().closed = true;
        self.work.notify_all();
    }
}

fn io_result(result: io::Result<()>) -> Result<(), IoError> {
    result.map_err(|e| crate::storage::engine_error(&e))
}

/// Reads `buf.len()` bytes at `offset` of `file` (a raw base: of `base_len` bytes, which
/// may not end early), through an injected fault if any.
fn read_job(
    file: &File,
    target: Target,
    base_len: u64,
    offset: u64,
    buf: &mut [u8],
    injection: Injection,
) -> io::Result<()> {
    let known_len = (target == Target::Base).then_some(base_len);
    match injection {
        Injection::None => match known_len {
            Some(len) => files::read_within(file, offset, buf, len),
            None => read_full_at(file, offset, buf),
        },
        injection => injection.read(|b, at| file.read_at(b, at), offset, buf, known_len),
    }
}

/// What the fault plan, if any, does to `work` on `target`.
#[inline]
fn injection_for(files: &Files, target: Target, work: &Work) -> Injection {
    let Some(plan) = &files.faults else {
        return Injection::None;
    };
    let file = match target {
        Target::Image => fvd_core::engine::FileId::Image,
        Target::Data => fvd_core::engine::FileId::Data,
        Target::Base => fvd_core::engine::FileId::Base,
    };
    let (kind, offset, len) = match *work {
        Work::Read { offset, len, .. } => (OpKind::Read, offset, len as u64),
        Work::Write { offset, len, .. } => (OpKind::Write, offset, len as u64),
        Work::WriteZeroes { offset, len, .. } => (OpKind::WriteZeroes, offset, len),
        Work::Flush => (OpKind::Flush, 0, 0),
        Work::SetLength { len } => (OpKind::SetLength, len, 0),
    };
    let cmd = Cmd {
        file,
        kind,
        offset,
        len,
    };
    let file_len = || Some(files.get(target)?.metadata().ok()?.len());
    plan.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .decide(cmd, file_len)
}

/// Performs one job; returns its outcome and the vector it owned, if any.
fn perform(files: &Files, target: Target, work: Work, syncs: &AtomicU64) -> Done {
    let mut data = None;
    let injection = injection_for(files, target, &work);
    let base_len = files.base_len;
    let result = match files.get(target) {
        None => Err(IoError::Failed),
        Some(file) => match work {
            Work::Read { offset, len, into } => match into {
                Dest::Guest(buf, at) => {
                    let mut guard = lock(&buf);
                    match guard.get_mut(at..at.saturating_add(len)) {
                        Some(slice) => {
                            io_result(read_job(file, target, base_len, offset, slice, injection))
                        }
                        None => Err(IoError::Failed),
                    }
                }
                Dest::Owned(mut v) => {
                    v.clear();
                    v.resize(len, 0);
                    let r = io_result(read_job(file, target, base_len, offset, &mut v, injection));
                    data = Some(v);
                    r
                }
            },
            Work::Write { offset, len, from } => {
                // Without a fault plan, straight to the system call.
                let write = |slice: &[u8]| match injection {
                    Injection::None => io_result(file.write_all_at(slice, offset)),
                    injection => io_result(injection.write(len as u64, |n| {
                        file.write_all_at(&slice[..n as usize], offset)
                    })),
                };
                match from {
                    Src::Guest(buf, at) => {
                        let guard = lock(&buf);
                        match guard.get(at..at.saturating_add(len)) {
                            Some(slice) => write(slice),
                            None => Err(IoError::Failed),
                        }
                    }
                    Src::Owned(v) => {
                        let r = match v.get(..len) {
                            Some(slice) => write(slice),
                            None => Err(IoError::Failed),
                        };
                        data = Some(v);
                        r
                    }
                }
            }
            Work::WriteZeroes { offset, len, unmap } => match injection {
                Injection::None => io_result(write_zeroes_at(file, offset, len, unmap)),
                injection => {
                    io_result(injection.write(len, |n| write_zeroes_at(file, offset, n, unmap)))
                }
            },
            Work::Flush => {
                let failed = &files.flush_failed[usize::from(target == Target::Data)];
                let r = if failed.load(Ordering::Relaxed) {
                    Err(earlier_flush_failed())
                } else {
                    let r = injection.other(|| file.sync_data());
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                };
                syncs.fetch_add(1, Ordering::Relaxed);
                io_result(r)
            }
            Work::SetLength { len } => match injection {
                Injection::None => io_result(file.set_len(len)),
                injection => io_result(injection.other(|| file.set_len(len))),
            },
        },
    };
    Done {
        token: Token::Raw(0),
        result,
        data,
        landing: Landing::None,
    }
}

fn worker(files: Arc<Files>, shared: Arc<Shared>) {
    /// Counts the worker out however it ends, so the calling thread never waits for a
    /// worker that is gone.
    struct Exit<'a>(&'a Shared);
    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            self.0.state().alive -= 1;
            self.0.finished.notify_all();
        }
    }
    let _exit = Exit(&shared);
    let mut finished: Option<Done> = None;
    loop {
        let mut state = shared.state();
        // Hand back the last result and take the next job in one critical section; wake
        // the calling thread only if it sleeps (it takes every finished job at once).
        let mut wake_caller = false;
        if let Some(done) = finished.take() {
            state.done.push(done);
            wake_caller = std::mem::take(&mut state.caller_waits);
        }
        let job = loop {
            if let Some(job) = state.jobs.pop_front() {
                break Some(job);
            }
            if state.closed {
                break None;
            }
            if std::mem::take(&mut wake_caller) {
                shared.finished.notify_one();
            }
            state.idle += 1;
            state = shared
                .work
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.idle -= 1;
            state.wake_pending = false;
        };
        // Pass the wake-up on while jobs wait and workers sleep.
        let pass_on = !state.jobs.is_empty() && state.idle > 0 && !state.wake_pending;
        state.wake_pending |= pass_on;
        drop(state);
        if wake_caller {
            shared.finished.notify_one();
        }
        if pass_on {
            shared.work.notify_one();
        }
        let Some(Job {
            token,
            target,
            work,
            landing,
        }) = job
        else {
            return;
        };
        // `work` (and with it any clone of a request buffer) is consumed here, so the
        // calling thread owns the buffer alone again once it sees the completion.
        let mut done = perform(&files, target, work, &shared.syncs);
        done.token = token;
        done.landing = landing;
        finished = Some(done);
    }
}

/// The worker threads with their queues.
struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    batch: Vec<Job>,
    /// Jobs handed out and not yet completed.
    outstanding: usize,
    /// Spare vectors for engine-memory and copied guest bytes.
    spare: Vec<Vec<u8>>,
}

impl Pool {
    fn start(files: Files, workers: usize) -> Pool {
        let files = Arc::new(files);
        let shared = Arc::new(Shared::default());
        let n = workers.max(1);
        shared.state().alive = n;
        let workers = (0..n)
            .map(|i| {
                let (files, shared) = (files.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("fvd-io-{i}"))
                    .spawn(move || worker(files, shared))
                    .expect("spawn an I/O worker thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            batch: Vec::new(),
            outstanding: 0,
            spare: Vec::new(),
        }
    }

    fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    fn push(&mut self, job: Job) {
        self.outstanding += 1;
        self.batch.push(job);
    }

    fn send_batch(&mut self) {
        self.shared.push_all(&mut self.batch);
    }

    fn spare(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn give_back(&mut self, mut v: Vec<u8>) {
        if self.spare.len() < 256 {
            v.clear();
            self.spare.push(v);
        }
    }

    /// Waits for a finished job (for at most `limit` if given) when some are outstanding
    /// and none is ready, then moves every finished job to `into`.
    fn collect(
        &mut self,
        limit: Option<Duration>,
        into: &mut Vec<Done>,
    ) -> Result<(), ExecutorError> {
        let mut state = self.shared.state();
        if self.outstanding > 0 && state.done.is_empty() {
            let deadline = limit.map(|limit| Instant::now() + limit);
            while state.done.is_empty() {
                if state.alive == 0 {
                    return Err(ExecutorError::WorkersGone);
                }
                state.caller_waits = true;
                state = match deadline {
                    None => self
                        .shared
                        .finished
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        self.shared
                            .finished
                            .wait_timeout(state, deadline - now)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0
                    }
                };
            }
            state.caller_waits = false;
        }
        into.append(&mut state.done);
        drop(state);
        self.outstanding -= into.len().min(self.outstanding);
        Ok(())
    }

    fn stop(&mut self) {
        self.shared.close();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

struct ReqSlot {
    ticket: Ticket,
    buf: SharedBuf,
}

fn take_buffer(buf: SharedBuf) -> Vec<u8> {
    match Arc::try_unwrap(buf) {
        Ok(mutex) => mutex
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        // Unreachable: workers drop their clones before reporting; copy to be safe.
        Err(shared) => lock(&shared).clone(),
    }
}

struct FvdState {
    engine: Box<Engine<Vec<u8>>>,
    /// A base that is itself an image: served on the calling thread.
    chain: Option<Box<dyn BaseRead>>,
    /// A raw base, kept open for its lock (the workers read a clone of its file).
    _raw_base_owner: Option<Box<dyn BaseRead>>,
    /// The locks on the image and data file.
    _held: files::Held,
    requests: Vec<Option<ReqSlot>>,
    opened: Option<Result<(), OpenError>>,
    closed: Option<bool>,
    /// Commands polled and not yet completed: the engine has more to poll exactly when
    /// its `commands_in_flight` exceeds this (each poll runs the engine's state
    /// machines, so the executor never polls just to hear "none").
    polled: usize,
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
}

impl Executor {
    /// Opens the FVD image at `path` with its data file and base chain.
    pub fn open(path: &Path, options: ExecutorOptions) -> Result<Executor, ExecutorError> {
        Self::open_with_faults(path, options, None)
    }

    /// Opens the FVD image at `path` with `faults` injected into the workers' file
    /// operations from the first one on (see [`crate::faults`]; the caller keeps a handle
    /// to clear them). Base reads through a chained image are not affected.
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
        let storage = files::open_storage(path, driver_options).map_err(Box::new)?;
        let image_len = storage.image.metadata()?.len();
        let data_len = match &storage.data {
            Some(f) => Some(f.metadata()?.len()),
            None => None,
        };
        let base_available = storage.base.is_some();
        let base_len = storage.base.as_ref().map_or(0, |b| b.base_len());
        let raw_base = match storage.base.as_ref().and_then(|b| b.raw_file()) {
            Some(file) => Some(file.try_clone()?),
            None => None,
        };
        // A raw base's owner stays open (it holds the base's lock); its reads go to the
        // pool through the clone.
        let (chain, raw_base_owner) = if raw_base.is_some() {
            (None, storage.base)
        } else {
            (storage.base, None)
        };
        let held = storage.held;
        let files = Files {
            image: storage.image,
            data: storage.data,
            base: raw_base,
            base_len,
            faults,
            flush_failed: Default::default(),
        };
        let mut first = vec![0u8; SIZING_LEN];
        if read_full_at(&files.image, 0, &mut first).is_err() {
            first.clear();
        }
        let memory = vec![0u8; memory_needed(&first, options.cache_bytes, options.bounce_bytes)];
        let engine = Box::new(Engine::open(
            memory,
            OpenOptions {
                writable: options.writable,
                image_len,
                data_len,
                base_available,
                cache_bytes: options.cache_bytes,
                storage_zero_init: true,
                copy_on_read: None,
                prefetch: fvd_core::engine::PrefetchMode::Off,
            },
        ));
        let mut executor = Executor {
            mode: Mode::Fvd(FvdState {
                engine,
                chain,
                _raw_base_owner: raw_base_owner,
                _held: held,
                requests: (0..MAX_REQUESTS).map(|_| None).collect(),
                opened: None,
                closed: None,
                polled: 0,
            }),
            pool: Pool::start(files, options.workers),
            options,
            finished: VecDeque::new(),
            next_ticket: 0,
            in_flight: 0,
            done_scratch: Vec::new(),
            closed: false,
            clock: Instant::now(),
            last_tick: 0,
        };
        loop {
            match executor.fvd().and_then(|f| f.opened) {
                Some(Ok(())) => return Ok(executor),
                Some(Err(source)) => {
                    return Err(ExecutorError::Engine {
                        path: path.to_path_buf(),
                        source,
                    })
                }
                None => executor.turn()?,
            }
        }
    }

    /// Opens the plain file at `path` with no engine: requests become `pread`/`pwrite`
    /// on the same worker pool (reads past the end fill zeros; writes extend the file).
    pub fn open_raw(path: &Path, options: ExecutorOptions) -> Result<Executor, ExecutorError> {
        let image = FsOpenOptions::new()
            .read(true)
            .write(options.writable)
            .open(path)?;
        let usage = if options.writable {
            Usage::RAW_WRITE
        } else {
            Usage::RAW_READ
        };
        let lock = FileLock::acquire(&image, path, usage)
            .map_err(|e| Box::new(ImageOpenError::Gate(e.into())))?;
        let len = image.metadata()?.len();
        let files = Files {
            image,
            data: None,
            base: None,
            base_len: 0,
            faults: None,
            flush_failed: Default::default(),
        };
        Ok(Executor {
            mode: Mode::Raw {
                len,
                requests: HashMap::new(),
                _lock: lock,
            },
            pool: Pool::start(files, options.workers),
            options,
            finished: VecDeque::new(),
            next_ticket: 0,
            in_flight: 0,
            done_scratch: Vec::new(),
            closed: false,
            clock: Instant::now(),
            last_tick: 0,
        })
    }

    fn fvd(&self) -> Option<&FvdState> {
        match &self.mode {
            Mode::Fvd(f) => Some(f),
            Mode::Raw { .. } => None,
        }
    }

    /// The engine (None in raw mode).
    pub fn engine(&self) -> Option<&Engine<Vec<u8>>> {
        self.fvd().map(|f| &*f.engine)
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
            Mode::Fvd(f) => f.engine.virtual_size().unwrap_or(0),
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
                match f.engine.submit(request) {
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
            while f.engine.commands_in_flight() > f.polled {
                let Some(command) = f.engine.poll_command() else {
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
        if self.pool.outstanding == 0 {
            self.dispatch();
            self.pool.send_batch();
            if self.pool.outstanding == 0 {
                let stuck = match &self.mode {
                    Mode::Fvd(f) => f.opened.is_none() || f.engine.requests_in_flight() > 0,
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
            .engine()
            .and_then(|e| e.poll_timeout())
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(self.now_ms()).max(1)));
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
                f.engine.handle_timeout(now);
            }
        }
    }

    fn finish_job(&mut self, done: Done) {
        let Done {
            token,
            mut result,
            data,
            landing,
        } = done;
        match (&mut self.mode, token) {
            (Mode::Fvd(f), Token::Command(id)) => {
                if let Some(bytes) = data {
                    if result.is_ok() {
                        result = land(f, landing, &bytes);
                    }
                    self.pool.give_back(bytes);
                }
                f.polled -= 1;
                f.engine.complete(id, result);
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
                f.engine.close();
                loop {
                    if let Mode::Fvd(f) = &self.mode {
                        if let Some(clean) = f.closed {
                            break clean;
                        }
                    }
                    self.turn()?;
                    if self.pool.outstanding == 0 {
                        self.dispatch();
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

/// The job for a raw-mode request.
fn raw_work(
    request: Request,
    buffer: Vec<u8>,
    writable: bool,
) -> Result<(Target, Work, SharedBuf), ExecutorError> {
    let writes = !matches!(request, Request::Read { .. } | Request::Flush);
    if writes && !writable {
        return Err(SubmitError::ReadOnly.into());
    }
    let work = |buf: &SharedBuf| match request {
        Request::Read { offset, len } => Ok(Work::Read {
            offset,
            len: len as usize,
            into: Dest::Guest(buf.clone(), 0),
        }),
        Request::Write { offset, len } => Ok(Work::Write {
            offset,
            len: len as usize,
            from: Src::Guest(buf.clone(), 0),
        }),
        Request::WriteZeroes { offset, len } => Ok(Work::WriteZeroes {
            offset,
            len,
            unmap: false,
        }),
        Request::Discard { offset, len } => Ok(Work::WriteZeroes {
            offset,
            len,
            unmap: true,
        }),
        Request::Flush => Ok(Work::Flush),
        Request::Map { .. } => Err(ExecutorError::Submit(SubmitError::NotOpen)),
    };
    let buf = Arc::new(Mutex::new(buffer));
    let work = work(&buf)?;
    Ok((Target::Image, work, buf))
}

/// Copies bytes a worker returned to where they belong.
fn land(f: &mut FvdState, landing: Landing, bytes: &[u8]) -> Result<(), IoError> {
    match landing {
        Landing::None => Ok(()),
        Landing::Engine(at) => copy_into(f.engine.memory_mut(), at, bytes),
        Landing::Guest(request, at) => match guest_buf(f, request) {
            Some(buf) => copy_into(&mut lock(&buf), at, bytes),
            None => Err(IoError::Failed),
        },
    }
}

fn copy_into(memory: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), IoError> {
    memory
        .get_mut(at..at.saturating_add(bytes.len()))
        .ok_or(IoError::Failed)?
        .copy_from_slice(bytes);
    Ok(())
}

fn guest_buf(f: &FvdState, request: RequestId) -> Option<SharedBuf> {
    f.requests
        .get(request.slot())
        .and_then(|s| s.as_ref())
        .map(|s| s.buf.clone())
}

/// Starts one engine command: on the pool, or at once when it needs no file (then
/// returns true).
fn start_command(f: &mut FvdState, pool: &mut Pool, mode: GuestBuffers, command: Command) -> bool {
    let Command { id, file, op } = command;
    let target = match file {
        FileId::Image => Target::Image,
        FileId::Data => Target::Data,
        FileId::Base => Target::Base,
    };
    let mut landing = Landing::None;
    let work = match op {
        Op::ZeroBuffer { into, len } => {
            let result = match into {
                Buffer::Engine { offset } => zero(f.engine.memory_mut(), offset, len),
                Buffer::Guest { request, offset } => match guest_buf(f, request) {
                    Some(buf) => zero(&mut lock(&buf), offset, len),
                    None => Err(IoError::Failed),
                },
            };
            f.engine.complete(id, result);
            return true;
        }
        Op::Copy { from, into, len } => {
            let read = |f: &mut FvdState, b: Buffer| -> Option<Vec<u8>> {
                match b {
                    Buffer::Engine { offset } => f
                        .engine
                        .memory()
                        .get(offset..offset + len)
                        .map(<[u8]>::to_vec),
                    Buffer::Guest { request, offset } => guest_buf(f, request)
                        .and_then(|buf| lock(&buf).get(offset..offset + len).map(<[u8]>::to_vec)),
                }
            };
            let result = match read(f, from) {
                Some(data) => {
                    let landing = match into {
                        Buffer::Engine { offset } => Landing::Engine(offset),
                        Buffer::Guest { request, offset } => Landing::Guest(request, offset),
                    };
                    land(f, landing, &data)
                }
                None => Err(IoError::Failed),
            };
            f.engine.complete(id, result);
            return true;
        }
        Op::Read { offset, len, into } if target == Target::Base && f.chain.is_some() => {
            let result = chain_read(f, offset, len, into);
            f.engine.complete(id, result);
            return true;
        }
        Op::Read { offset, len, into } => {
            let into = match into {
                Buffer::Guest {
                    request,
                    offset: at,
                } => match (mode, guest_buf(f, request)) {
                    (GuestBuffers::Shared, Some(buf)) => Dest::Guest(buf, at),
                    (GuestBuffers::Copy, Some(_)) => {
                        landing = Landing::Guest(request, at);
                        Dest::Owned(pool.spare())
                    }
                    (_, None) => {
                        f.engine.complete(id, Err(IoError::Failed));
                        return true;
                    }
                },
                Buffer::Engine { offset: at } => {
                    landing = Landing::Engine(at);
                    Dest::Owned(pool.spare())
                }
            };
            Work::Read { offset, len, into }
        }
        Op::Write { offset, len, from } => {
            let from = match from {
                Buffer::Guest {
                    request,
                    offset: at,
                } => match (mode, guest_buf(f, request)) {
                    (GuestBuffers::Shared, Some(buf)) => Src::Guest(buf, at),
                    (GuestBuffers::Copy, Some(buf)) => {
                        let mut v = pool.spare();
                        match lock(&buf).get(at..at.saturating_add(len)) {
                            Some(bytes) => v.extend_from_slice(bytes),
                            None => {
                                f.engine.complete(id, Err(IoError::Failed));
                                return true;
                            }
                        }
                        Src::Owned(v)
                    }
                    (_, None) => {
                        f.engine.complete(id, Err(IoError::Failed));
                        return true;
                    }
                },
                Buffer::Engine { offset: at } => {
                    let mut v = pool.spare();
                    match f.engine.memory().get(at..at.saturating_add(len)) {
                        Some(bytes) => v.extend_from_slice(bytes),
                        None => {
                            f.engine.complete(id, Err(IoError::Failed));
                            return true;
                        }
                    }
                    Src::Owned(v)
                }
            };
            Work::Write { offset, len, from }
        }
        Op::WriteZeroes { offset, len, unmap } => Work::WriteZeroes { offset, len, unmap },
        Op::Flush => Work::Flush,
        Op::SetLength { len } => Work::SetLength { len },
    };
    pool.push(Job {
        token: Token::Command(id),
        target,
        work,
        landing,
    });
    false
}

fn zero(memory: &mut [u8], at: usize, len: usize) -> Result<(), IoError> {
    memory
        .get_mut(at..at.saturating_add(len))
        .ok_or(IoError::Failed)?
        .fill(0);
    Ok(())
}

/// A base read through a chained image, on the calling thread.
fn chain_read(f: &mut FvdState, offset: u64, len: usize, into: Buffer) -> Result<(), IoError> {
    let guest = match into {
        Buffer::Guest {
            request,
            offset: at,
        } => Some((guest_buf(f, request).ok_or(IoError::Failed)?, at)),
        Buffer::Engine { .. } => None,
    };
    let chain = f.chain.as_mut().ok_or(IoError::Failed)?;
    match (into, guest) {
        (_, Some((buf, at))) => {
            let mut guard = lock(&buf);
            let slice = guard
                .get_mut(at..at.saturating_add(len))
                .ok_or(IoError::Failed)?;
            io_result(chain.read_base(offset, slice))
        }
        (Buffer::Engine { offset: at }, None) => {
            let slice = f
                .engine
                .memory_mut()
                .get_mut(at..at.saturating_add(len))
                .ok_or(IoError::Failed)?;
            io_result(chain.read_base(offset, slice))
        }
        (Buffer::Guest { .. }, None) => Err(IoError::Failed),
    }
}

/// Turns the engine's events into completions.
fn drain_events(f: &mut FvdState, finished: &mut VecDeque<Completion>) {
    while let Some(event) = f.engine.poll_event() {
        match event {
            Event::Opened => f.opened = Some(Ok(())),
            Event::OpenFailed(e) => f.opened = Some(Err(e)),
            Event::Closed { clean } => f.closed = Some(clean),
            Event::Completed { id, result } => {
                if let Some(slot) = f.requests.get_mut(id.slot()).and_then(Option::take) {
                    finished.push_back(Completion {
                        ticket: slot.ticket,
                        result,
                        data: take_buffer(slot.buf),
                    });
                }
            }
        }
    }
}
