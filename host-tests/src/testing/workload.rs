//! Workloads for the executor's benchmarks and tests: images of each kind made in a
//! directory (fully allocated where it matters), offset patterns, and a queue-depth loop
//! that times a run.

use crate::host::executor::{Executor, ExecutorError, ExecutorOptions};
use crate::testing::newimage::initial_metadata;
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a benchmark runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A plain file through the executor's raw mode.
    Raw,
    /// A plain FVD image (data at guest offsets), fully written.
    Plain,
    /// A compact FVD image (chunk table), every chunk allocated and written.
    Compact,
    /// A plain FVD image over a raw base of the same size; the image starts empty.
    Cow,
    /// A QED image (qemu-img's default geometry) run by our engine, fully written.
    Qed,
}

impl Subject {
    /// Every subject.
    pub const ALL: [Subject; 5] = [
        Subject::Raw,
        Subject::Plain,
        Subject::Compact,
        Subject::Cow,
        Subject::Qed,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Subject::Raw => "raw",
            Subject::Plain => "fvd-plain",
            Subject::Compact => "fvd-compact",
            Subject::Cow => "fvd-cow",
            Subject::Qed => "fvd-qed",
        }
    }
}

/// Writes a new QED image of `size` bytes at `path` with qemu-img's default geometry.
pub fn create_qed(path: &Path, size: u64) -> io::Result<()> {
    let plan = fvd_core::qed::plan(&fvd_core::qed::QedCreateOptions {
        size,
        ..Default::default()
    })
    .map_err(|e| io::Error::other(e.to_string()))?;
    let mut bytes = vec![0u8; plan.file_len as usize];
    plan.write_header_area(&mut bytes)
        .ok_or_else(|| io::Error::other("QED header area too small"))?;
    std::fs::write(path, bytes)
}

/// Writes a new FVD image described by `options` at `path` (metadata only; data grows).
pub fn create_image(path: &Path, options: &CreateOptions) -> io::Result<()> {
    let header = plan(options).map_err(|e| io::Error::other(e.to_string()))?;
    let file = File::create(path)?;
    file.write_all_at(&initial_metadata(&header), 0)?;
    file.sync_all()
}

/// A byte pattern that differs per offset (so misplaced data shows).
pub fn pattern_byte(offset: u64, seed: u8) -> u8 {
    (offset / 512)
        .wrapping_mul(31)
        .wrapping_add(u64::from(seed)) as u8
}

/// Writes `size` bytes of [`pattern_byte`] data to a new raw file at `path`.
pub fn create_raw(path: &Path, size: u64, seed: u8) -> io::Result<()> {
    let file = File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        for (i, sector) in buf[..n].chunks_mut(512).enumerate() {
            sector.fill(pattern_byte(at + (i * 512) as u64, seed));
        }
        file.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// Writes the whole guest range sequentially in 1 MiB requests at queue depth 16, then
/// flushes: every byte is allocated afterwards.
pub fn fill(executor: &mut Executor, seed: u8) -> Result<(), ExecutorError> {
    let size = executor.size();
    let piece = 1u64 << 20;
    let mut at = 0;
    while at < size {
        while executor.in_flight() < 16 && at < size {
            let n = (size - at).min(piece);
            let mut buf = vec![0u8; n as usize];
            for (i, sector) in buf.chunks_mut(512).enumerate() {
                sector.fill(pattern_byte(at + (i * 512) as u64, seed));
            }
            executor.submit_write(at, buf)?;
            at += n;
        }
        for done in executor.wait_some()? {
            done.result?;
        }
    }
    for done in executor.wait_all()? {
        done.result?;
    }
    executor.flush()
}

/// Makes `subject` of `size` bytes in `dir` and returns the path to open (with
/// [`Executor::open_raw`] for [`Subject::Raw`], [`Executor::open`] otherwise).
pub fn prepare(dir: &Path, subject: Subject, size: u64) -> Result<PathBuf, ExecutorError> {
    let image = dir.join(format!("{}.img", subject.name()));
    let options = ExecutorOptions::default();
    match subject {
        Subject::Raw => create_raw(&image, size, 1)?,
        Subject::Plain | Subject::Compact => {
            create_image(
                &image,
                &CreateOptions {
                    virtual_size: size,
                    compact_image: subject == Subject::Compact,
                    ..Default::default()
                },
            )?;
            let mut executor = Executor::open(&image, options)?;
            fill(&mut executor, 1)?;
            executor.close()?;
        }
        Subject::Qed => {
            create_qed(&image, size)?;
            let mut executor = Executor::open(&image, options)?;
            fill(&mut executor, 1)?;
            executor.close()?;
        }
        Subject::Cow => {
            let base = dir.join("cow-base.raw");
            create_raw(&base, size, 1)?;
            create_image(
                &image,
                &CreateOptions {
                    virtual_size: size,
                    base: Some(BaseSpec {
                        name: b"cow-base.raw",
                        format: b"raw",
                        size,
                    }),
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(image)
}

/// Opens what [`prepare`] made.
pub fn open(
    path: &Path,
    subject: Subject,
    options: ExecutorOptions,
) -> Result<Executor, ExecutorError> {
    match subject {
        Subject::Raw => Executor::open_raw(path, options),
        _ => Executor::open(path, options),
    }
}

/// Which offsets a run visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// 0, block, 2 × block, ... wrapping at the end.
    Sequential,
    /// Uniformly random block-aligned offsets from a seeded generator.
    Random {
        /// Seed.
        seed: u64,
    },
    /// `qemu-img bench -S step`: each offset is the previous plus `step`, modulo the size.
    Stride {
        /// Bytes added per request.
        step: u64,
    },
}

/// A stride of about 0.618 × `size`, an odd number of blocks: with a power-of-two block
/// count it visits every block once per pass in a scattered order (a "random" pattern
/// `qemu-img bench` can reproduce with `-S`).
pub fn scatter_step(size: u64, block: u64) -> u64 {
    let blocks = size / block;
    let k = (blocks as f64 * 0.618_033_988_75) as u64 | 1;
    k * block
}

/// The offsets of a run.
pub struct Offsets {
    pattern: Pattern,
    size: u64,
    block: u64,
    next: u64,
    rng: u64,
}

impl Offsets {
    /// Offsets of `block`-byte requests over `size` bytes.
    pub fn new(pattern: Pattern, size: u64, block: u64) -> Self {
        let rng = match pattern {
            Pattern::Random { seed } => seed | 1,
            _ => 1,
        };
        Offsets {
            pattern,
            size,
            block,
            next: 0,
            rng,
        }
    }
}

impl Iterator for Offsets {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let blocks = (self.size / self.block).max(1);
        let at = match self.pattern {
            Pattern::Sequential => {
                let at = self.next;
                self.next = (self.next + self.block) % (blocks * self.block);
                at
            }
            Pattern::Random { .. } => {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                (self.rng % blocks) * self.block
            }
            Pattern::Stride { step } => {
                let at = self.next;
                self.next = (self.next + step) % self.size;
                at
            }
        };
        Some(at)
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Writes (else reads).
    pub write: bool,
    /// Bytes per request.
    pub block: usize,
    /// Requests.
    pub count: usize,
    /// Requests kept in flight.
    pub depth: usize,
    /// Offsets.
    pub pattern: Pattern,
    /// Flush after every this many requests (waiting for those in flight first).
    pub flush_every: Option<usize>,
    /// End a write run with a flush (inside the timed span).
    pub flush_at_end: bool,
}

/// What a run measured.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Wall time from the first submission to the last completion (final flush included).
    pub elapsed: Duration,
    /// Bytes transferred.
    pub bytes: u64,
    /// Requests.
    pub requests: u64,
    /// CPU time of the calling thread (submission, engine, completions).
    pub caller_cpu: Duration,
    /// CPU time of the whole process (caller and workers).
    pub process_cpu: Duration,
    /// Wall time of the final flush (included in `elapsed`).
    pub final_flush: Duration,
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the calling thread so far.
pub fn thread_cpu() -> Duration {
    cpu_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the process so far (every thread).
pub fn process_cpu() -> Duration {
    cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

impl Measured {
    /// Calling-thread CPU per request, nanoseconds.
    pub fn caller_ns_per_request(&self) -> f64 {
        self.caller_cpu.as_nanos() as f64 / self.requests.max(1) as f64
    }

    /// Process CPU per request, nanoseconds.
    pub fn process_ns_per_request(&self) -> f64 {
        self.process_cpu.as_nanos() as f64 / self.requests.max(1) as f64
    }

    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `workload` at its queue depth and times it.
pub fn run(executor: &mut Executor, workload: &Workload) -> Result<Measured, ExecutorError> {
    let size = executor.size();
    let mut offsets = Offsets::new(workload.pattern, size, workload.block as u64);
    let mut spare: Vec<Vec<u8>> = (0..workload.depth)
        .map(|_| vec![0x5a; workload.block])
        .collect();
    let start = Instant::now();
    let (thread0, process0) = (thread_cpu(), process_cpu());
    let mut issued = 0;
    let mut since_flush = 0;
    while issued < workload.count {
        while executor.in_flight() < workload.depth && issued < workload.count {
            let buf = spare.pop().unwrap_or_else(|| vec![0x5a; workload.block]);
            let at = offsets.next().unwrap_or(0);
            if workload.write {
                executor.submit_write(at, buf)?;
            } else {
                executor.submit_read_into(at, buf)?;
            }
            issued += 1;
            since_flush += 1;
            if workload.flush_every.is_some_and(|n| since_flush >= n) {
                for done in executor.wait_all()? {
                    done.result?;
                    spare.push(done.data);
                }
                executor.flush()?;
                since_flush = 0;
            }
        }
        for done in executor.wait_some()? {
            done.result?;
            spare.push(done.data);
        }
    }
    for done in executor.wait_all()? {
        done.result?;
    }
    let flush_start = Instant::now();
    if workload.write && workload.flush_at_end {
        executor.flush()?;
    }
    let final_flush = flush_start.elapsed();
    Ok(Measured {
        elapsed: start.elapsed(),
        bytes: (workload.count * workload.block) as u64,
        requests: workload.count as u64,
        caller_cpu: thread_cpu().saturating_sub(thread0),
        process_cpu: process_cpu().saturating_sub(process0),
        final_flush,
    })
}
