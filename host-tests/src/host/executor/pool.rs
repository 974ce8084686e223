//! The worker pool: jobs (a positioned read, write, zeroing, sync or length change on one
//! of the open files) queued in batches under one lock, performed by worker threads with
//! the fault plan's injections, and their results collected on the calling thread. Jobs
//! are taken in queue order, except that at most one worker fewer than the pool has may
//! work on the base at once: a slow (remote) base never holds every worker while the
//! image's writes wait.

use super::ExecutorError;
use crate::host::faults::{Cmd, Injection, OpKind, SharedPlan};
use crate::host::files::{self, read_full_at};
use crate::host::storage::earlier_flush_failed;
use fvd_core::chain::ChainCommandId;
use fvd_core::engine::{IoError, RequestId};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(super) type SharedBuf = Arc<Mutex<Vec<u8>>>;

pub(super) fn lock(buf: &SharedBuf) -> MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which file a job runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Image,
    Data,
    Base,
}

/// Where a read's bytes go on the worker.
pub(super) enum Dest {
    /// Into this request buffer at this offset.
    Guest(SharedBuf, usize),
    /// Into this (pooled) vector, handed back with the completion.
    Owned(Vec<u8>),
}

/// Where a write's bytes come from on the worker.
pub(super) enum Src {
    Guest(SharedBuf, usize),
    Owned(Vec<u8>),
}

pub(super) enum Work {
    Read { offset: u64, len: usize, into: Dest },
    Write { offset: u64, len: usize, from: Src },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
    Flush,
    SetLength { len: u64 },
}

/// Who waits for a job.
#[derive(Clone, Copy, Debug)]
pub(super) enum Token {
    Command(ChainCommandId),
    Raw(u64),
}

/// Where returned bytes land on the calling thread.
#[derive(Clone, Copy, Debug)]
pub(super) enum Landing {
    None,
    /// Engine memory of layer `layer` of the chain.
    Engine {
        layer: usize,
        at: usize,
    },
    Guest(RequestId, usize),
}

pub(super) struct Job {
    pub(super) token: Token,
    /// The layer of the chain whose files `target` names (0: the image).
    pub(super) layer: usize,
    pub(super) target: Target,
    pub(super) work: Work,
    pub(super) landing: Landing,
}

pub(super) struct Done {
    pub(super) token: Token,
    pub(super) result: Result<(), IoError>,
    /// A vector the job owned (bytes read, or a spent write source for the pool).
    pub(super) data: Option<Vec<u8>>,
    pub(super) landing: Landing,
    /// The operating system's reason when the job failed on a file.
    pub(super) os_error: Option<io::Error>,
}

/// The files of one image of the chain the workers use.
pub(super) struct Files {
    pub(super) image: File,
    pub(super) data: Option<File>,
    pub(super) base: Option<File>,
    /// The raw base's length at open: it may not end earlier (see `files::read_within`).
    pub(super) base_len: u64,
    /// Faults injected into the file operations (tests only).
    pub(super) faults: Option<SharedPlan>,
    /// A flush of the image (0) or data file (1) failed: the page cache may have dropped
    /// the writes before it, so every later flush of that file fails (see
    /// `Storage::failed_flush_loses_writes`).
    pub(super) flush_failed: [AtomicBool; 2],
    /// Held shared by every job that may extend a file of this image, and alone by a
    /// zeroing job that extends the file over the hole it punched past the end (a look at
    /// the length, then `set_len`): a write past the end landing between the two would be
    /// cut off.
    pub(super) growing: RwLock<()>,
}

impl Files {
    /// Keeps a zeroing job from setting a file's length while the caller may extend it.
    fn may_extend(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.growing
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `len` bytes at `offset` of `file` (one of this image's) read as zeros, as
    /// `files::write_zeroes_at` does, with other workers writing meanwhile: a hole punched
    /// past the end is covered by extending the file with every other extension held off,
    /// so the file is never cut back over a write that landed past it.
    fn write_zeroes(&self, file: &File, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let end = offset.saturating_add(len);
        if unmap {
            // Punching (the length kept) changes no length: it needs no one held off.
            if files::fallocate_range(file, offset, len, true) {
                if file.metadata().is_ok_and(|meta| meta.len() >= end) {
                    return Ok(());
                }
                let _alone = self
                    .growing
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if files::grow_to(file, end) {
                    return Ok(());
                }
            }
        }
        let _extending = self.may_extend();
        if !unmap && files::fallocate_range(file, offset, len, false) {
            return Ok(());
        }
        files::write_zero_bytes_at(file, offset, len)
    }

    pub(super) fn get(&self, target: Target) -> Option<&File> {
        match target {
            Target::Image => Some(&self.image),
            Target::Data => self.data.as_ref(),
            Target::Base => self.base.as_ref(),
        }
    }
}

#[derive(Default)]
pub(super) struct PoolState {
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
    /// Jobs on the base being performed, and how many may be at once: one worker fewer
    /// than the pool has (at least one), so reads of a slow base never hold every worker
    /// while the image's writes wait behind them.
    base_running: usize,
    base_limit: usize,
    closed: bool,
}

impl PoolState {
    /// The next job a worker may take: the first in the queue, or while the base's share
    /// of workers is taken, the first that is not on the base.
    fn take(&mut self) -> Option<Job> {
        let index = if self.base_running < self.base_limit {
            0
        } else {
            self.jobs.iter().position(|j| j.target != Target::Base)?
        };
        let job = self.jobs.remove(index)?;
        if job.target == Target::Base {
            self.base_running += 1;
        }
        Some(job)
    }
}

/// What the calling thread and the workers share: the job queue and the finished jobs,
/// under one lock, so a worker hands back a result and takes its next job in one
/// critical section.
#[derive(Default)]
pub(super) struct Shared {
    state: Mutex<PoolState>,
    /// Idle workers wait here.
    work: Condvar,
    /// The calling thread waits here.
    finished: Condvar,
    syncs: AtomicU64,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `jobs` and wakes one idle worker, unless a wake-up is already on its way:
    /// busy workers take queued jobs without a wake-up, and a worker that takes a job
    /// while more wait and others sleep passes the wake-up on, so the calling thread
    /// makes at most one futex call per batch.
    pub(super) fn push_all(&self, jobs: &mut Vec<Job>) {
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

    pub(super) fn close(&self) {
        self.state().closed = true;
        self.work.notify_all();
    }
}

/// Reads `buf.len()` bytes at `offset` of `file` (a raw base: of `base_len` bytes, which
/// may not end early), through an injected fault if any.
pub(super) fn read_job(
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
pub(super) fn injection_for(files: &Files, target: Target, work: &Work) -> Injection {
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
pub(super) fn perform(files: &Files, target: Target, work: Work, syncs: &AtomicU64) -> Done {
    let mut data = None;
    let injection = injection_for(files, target, &work);
    let base_len = files.base_len;
    // The operating system's reason for a failure, handed back with the engine's error.
    let mut os_error = None;
    let mut keep = |result: io::Result<()>| {
        result.map_err(|e| {
            let error = crate::host::storage::engine_error(&e);
            os_error = Some(e);
            error
        })
    };
    let result = match files.get(target) {
        None => Err(IoError::Failed),
        Some(file) => match work {
            Work::Read { offset, len, into } => match into {
                Dest::Guest(buf, at) => {
                    let mut guard = lock(&buf);
                    match guard.get_mut(at..at.saturating_add(len)) {
                        Some(slice) => {
                            keep(read_job(file, target, base_len, offset, slice, injection))
                        }
                        None => Err(IoError::Failed),
                    }
                }
                Dest::Owned(mut v) => {
                    v.clear();
                    v.resize(len, 0);
                    let r = keep(read_job(file, target, base_len, offset, &mut v, injection));
                    data = Some(v);
                    r
                }
            },
            Work::Write { offset, len, from } => {
                // Without a fault plan, straight to the system call.
                let mut write = |slice: &[u8]| {
                    let _extending = files.may_extend();
                    match injection {
                        Injection::None => keep(file.write_all_at(slice, offset)),
                        injection => keep(injection.write(len as u64, |n| {
                            file.write_all_at(&slice[..n as usize], offset)
                        })),
                    }
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
                Injection::None => keep(files.write_zeroes(file, offset, len, unmap)),
                injection => {
                    keep(injection.write(len, |n| files.write_zeroes(file, offset, n, unmap)))
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
                keep(r)
            }
            Work::SetLength { len } => {
                let _extending = files.may_extend();
                match injection {
                    Injection::None => keep(file.set_len(len)),
                    injection => keep(injection.other(|| file.set_len(len))),
                }
            }
        },
    };
    Done {
        token: Token::Raw(0),
        result,
        data,
        landing: Landing::None,
        os_error,
    }
}

pub(super) fn worker(files: Arc<[Files]>, shared: Arc<Shared>) {
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
    // The job just performed was on the base (it counts against the base's share).
    let mut on_base = false;
    loop {
        let mut state = shared.state();
        // Hand back the last result and take the next job in one critical section; wake
        // the calling thread only if it sleeps (it takes every finished job at once).
        let mut wake_caller = false;
        if let Some(done) = finished.take() {
            state.done.push(done);
            wake_caller = std::mem::take(&mut state.caller_waits);
        }
        if std::mem::take(&mut on_base) {
            state.base_running = state.base_running.saturating_sub(1);
        }
        let job = loop {
            if let Some(job) = state.take() {
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
            layer,
            target,
            work,
            landing,
        }) = job
        else {
            return;
        };
        on_base = target == Target::Base;
        // `work` (and with it any clone of a request buffer) is consumed here, so the
        // calling thread owns the buffer alone again once it sees the completion.
        let mut done = match files.get(layer) {
            Some(files) => perform(files, target, work, &shared.syncs),
            None => Done {
                token,
                result: Err(IoError::Failed),
                data: None,
                landing,
                os_error: None,
            },
        };
        done.token = token;
        done.landing = landing;
        finished = Some(done);
    }
}

/// The worker threads with their queues.
pub(super) struct Pool {
    pub(super) shared: Arc<Shared>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) batch: Vec<Job>,
    /// Jobs handed out and not yet completed.
    pub(super) outstanding: usize,
    /// Spare vectors for engine-memory and copied guest bytes.
    pub(super) spare: Vec<Vec<u8>>,
}

impl Pool {
    /// Starts `workers` threads over the files of each layer of a chain, the image first.
    pub(super) fn start(files: Vec<Files>, workers: usize) -> Pool {
        let files: Arc<[Files]> = files.into();
        let shared = Arc::new(Shared::default());
        let n = workers.max(1);
        {
            let mut state = shared.state();
            state.alive = n;
            state.base_limit = n.saturating_sub(1).max(1);
        }
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

    pub(super) fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    pub(super) fn push(&mut self, job: Job) {
        self.outstanding += 1;
        self.batch.push(job);
    }

    pub(super) fn send_batch(&mut self) {
        self.shared.push_all(&mut self.batch);
    }

    pub(super) fn spare(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    pub(super) fn give_back(&mut self, mut v: Vec<u8>) {
        if self.spare.len() < 256 {
            v.clear();
            self.spare.push(v);
        }
    }

    /// Waits for a finished job (for at most `limit` if given) when some are outstanding
    /// and none is ready, then moves every finished job to `into`.
    pub(super) fn collect(
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

    pub(super) fn stop(&mut self) {
        self.shared.close();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}
