//! `fvd-img prefetch`: copy every block still in the base into the image now; afterwards
//! the image no longer needs its base. Without a rate limit this is one bulk pass
//! ([`super::flatten`]: the base's map first, large requests, all-zero blocks recorded
//! as zeros instead of written). With `-r` it is the engine's adaptive prefetch, whose
//! reads stay under the rate (all-zero blocks recorded as zeros there too, by the
//! engine's fills), run by the concurrent executor: its units are copied many at once
//! (`num_prefetch_slots` units in flight), so a base with latency per request costs one
//! round trip per batch rather than per block; time for the engine comes from a monotonic
//! clock. `-p` shows qemu-img's progress line in both cases.

use super::disk::open_error;
use super::error::{io_reason, CliError};
use super::flatten::{flatten, release_prefetched_bitmap};
use super::image::open_host_file_as;
use super::open_flags::{self, ExternalData, ForceShare};
use super::progress::Progress;
use super::size::{human_size, parse_size};
use crate::host::driver::DriverOptions;
use crate::host::error::HostError;
use crate::host::executor::{Executor, ExecutorOptions};
use crate::host::files::open_image_with;
use crate::host::gate::OpenGate;
use crate::host::lock::Usage;
use clap::Args;
use fvd_core::engine::{Engine, Layout, PrefetchFailure, PrefetchMode, PrefetchState};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Worker threads of a rate-limited prefetch: the fills a default header keeps in flight
/// at 64 KiB blocks (2 units of 1 MiB), so each waits on a slow base side by side. Over a
/// base with 1 ms per read, 256 MiB took 0.70 s with 8 workers, 0.43 s with 16 and 0.35 s
/// with 32 (fvd-prefetch-bench); on a local base the count makes no difference, and idle
/// workers only sleep.
const WORKERS: usize = 32;

/// Longest the loop waits before it looks at the progress again.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Arguments of `fvd-img prefetch`.
#[derive(Args, Debug, Clone)]
pub struct PrefetchArgs {
    /// Format of FILE (only fvd)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Most bytes per second read from the base (size suffixes: 10M = 10 MiB/s)
    #[arg(short = 'r', long = "rate", value_name = "RATE")]
    pub rate: Option<String>,
    /// Show progress
    #[arg(short = 'p')]
    pub progress: bool,
    /// No progress or summary
    #[arg(short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub external: ExternalData,
    /// The image
    pub file: PathBuf,
}

/// The error of a prefetch that gave up: what kept failing and the storage's reason.
fn gave_up(os_error: Option<io::Error>, failure: Option<PrefetchFailure>) -> CliError {
    let reason = match (os_error, failure) {
        (Some(os), _) => io_reason(&os),
        (None, Some(failure)) => failure.error().to_string(),
        (None, None) => "I/O error".to_string(),
    };
    match failure {
        Some(failure) => CliError::Image(format!("prefetch failed: {failure}: {reason}")),
        None => CliError::Image(format!("prefetch failed: {reason}")),
    }
}

/// Runs `fvd-img prefetch`.
pub fn run(args: &PrefetchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(format) = args.format.as_deref().filter(|f| *f != "fvd") {
        return Err(CliError::Usage(format!(
            "prefetch works on fvd images, not '{format}'"
        )));
    }
    let max_read_kib_s = match &args.rate {
        Some(rate) => {
            let bytes = parse_size(rate)
                .map_err(|e| CliError::Usage(format!("invalid rate '{rate}': {e}")))?;
            if bytes < 1024 {
                return Err(CliError::Usage(format!("rate '{rate}' is below 1 KiB/s")));
            }
            Some(bytes / 1024)
        }
        None => None,
    };
    // A FIFO, directory or socket gets the same message as `info` ("not a regular file
    // or block device") rather than the OS error of a seek on it.
    open_host_file_as(&args.file, Usage::PROBE)?;
    let gate = open_flags::gate(ForceShare::default(), args.external);
    if let Some(max_read_kib_s) = max_read_kib_s {
        return throttled(args, out, max_read_kib_s, gate);
    }
    let options = DriverOptions {
        prefetch: PrefetchMode::Now { max_read_kib_s },
        ..DriverOptions::default()
    };
    let driver = open_image_with(&args.file, options, &gate).map_err(open_error)?;
    let progress = driver.engine().prefetch_progress();
    if progress.state == PrefetchState::Off {
        let prefetched = fully_prefetched(driver.engine());
        driver.close().map_err(|e| CliError::Image(e.to_string()))?;
        return nothing_to_prefetch(args, out, prefetched);
    }
    let show = args.progress && !args.quiet;
    driver.close().map_err(|e| CliError::Image(e.to_string()))?;
    let start = Instant::now();
    let done = flatten(&args.file, gate, show, out)?;
    summary(args, out, done.copied, start)
}

/// Whether the image says its base is fully prefetched.
fn fully_prefetched(engine: &Engine<Vec<u8>>) -> bool {
    matches!(
        engine.info().map(|i| i.layout),
        Some(Layout::Fvd(layout)) if layout.base_fully_prefetched
    )
}

/// The outcome of an image whose prefetch does not start: done already, or no base.
fn nothing_to_prefetch(
    args: &PrefetchArgs,
    out: &mut dyn Write,
    prefetched: bool,
) -> Result<(), CliError> {
    if prefetched {
        if !args.quiet {
            writeln!(out, "Image is already fully prefetched.").map_err(CliError::Output)?;
        }
        return Ok(());
    }
    Err(CliError::Image(format!(
        "'{}' has no base image to prefetch",
        args.file.display()
    )))
}

/// An executor's failure to open the image, as the driver's open reports it.
fn executor_open_error(args: &PrefetchArgs, err: HostError) -> CliError {
    match err {
        HostError::Files(err) => open_error(*err),
        HostError::Io(source) => CliError::Open {
            path: args.file.clone(),
            source,
        },
        HostError::Engine { path, source } => {
            CliError::Image(format!("Could not open '{}': {source}", path.display()))
        }
        other => CliError::Image(format!("Could not open '{}': {other}", args.file.display())),
    }
}

/// The engine's adaptive prefetch under a read cap of `max_read_kib_s`, on the concurrent
/// executor.
fn throttled(
    args: &PrefetchArgs,
    out: &mut dyn Write,
    max_read_kib_s: u64,
    gate: OpenGate,
) -> Result<(), CliError> {
    let options = ExecutorOptions {
        workers: WORKERS,
        prefetch: PrefetchMode::Now {
            max_read_kib_s: Some(max_read_kib_s),
        },
        gate,
        ..ExecutorOptions::default()
    };
    let mut executor =
        Executor::open(&args.file, options).map_err(|e| executor_open_error(args, e))?;
    // An executor over an image always has its engine.
    let engine = |e: &Executor| {
        e.engine()
            .map(Engine::prefetch_progress)
            .unwrap_or_default()
    };
    let progress = engine(&executor);
    if progress.state == PrefetchState::Off {
        let prefetched = executor.engine().is_some_and(fully_prefetched);
        executor
            .close()
            .map_err(|e| CliError::Image(e.to_string()))?;
        return nothing_to_prefetch(args, out, prefetched);
    }
    let show = args.progress && !args.quiet;
    let mut bar = Progress::new(show, progress.blocks);
    bar.show(out, 0)?;
    let start = Instant::now();
    loop {
        // Copies, sleeps while the engine waits for a rate window or a back-off pause,
        // and comes back at least this often to show the progress.
        executor
            .run_background(PROGRESS_EVERY)
            .map_err(|e| CliError::Image(format!("prefetch failed: {e}")))?;
        let progress = engine(&executor);
        bar.show(out, progress.cursor.min(progress.blocks))?;
        match progress.state {
            PrefetchState::Done => break,
            PrefetchState::Failed | PrefetchState::Off => {
                bar.finish(out)?;
                let error = gave_up(executor.take_os_error(), progress.failure);
                // Keep what was copied; the failure is what the user needs to hear about.
                let _ = executor.close();
                return Err(error);
            }
            _ => {}
        }
    }
    bar.finish(out)?;
    let copied = executor.stats().map_or(0, |s| s.prefetched_blocks);
    let block = match executor.engine().and_then(|e| e.info()).map(|i| i.layout) {
        Some(Layout::Fvd(layout)) => layout.block_size,
        _ => 0,
    };
    executor
        .close()
        .map_err(|e| CliError::Image(e.to_string()))?;
    // The flag is durable and the image closed: the bits are never read again.
    release_prefetched_bitmap(&args.file)?;
    summary(args, out, copied.saturating_mul(block), start)
}

/// Says what was copied (unless `-q`).
fn summary(
    args: &PrefetchArgs,
    out: &mut dyn Write,
    copied: u64,
    start: Instant,
) -> Result<(), CliError> {
    if !args.quiet {
        writeln!(
            out,
            "Prefetched {} in {:.1} s; the image no longer needs its base.",
            human_size(copied),
            start.elapsed().as_secs_f64()
        )
        .map_err(CliError::Output)?;
    }
    Ok(())
}
