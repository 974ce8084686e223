//! `fvd-img prefetch`: copy every block still in the base into the image now; afterwards
//! the image no longer needs its base. Without a rate limit this is one bulk pass
//! ([`super::flatten`]: the base's map first, large requests, all-zero blocks recorded
//! as zeros instead of written). With `-r` it is the engine's adaptive prefetch, whose
//! reads stay under the rate (all-zero blocks recorded as zeros there too, by the
//! engine's fills); time for the engine comes from a monotonic clock. `-p`
//! shows qemu-img's progress line in both cases.

use super::disk::open_error;
use super::error::{io_reason, CliError};
use super::flatten::flatten;
use super::image::open_host_file_as;
use super::open_flags::{self, ExternalData, ForceShare};
use super::progress::Progress;
use super::size::{human_size, parse_size};
use crate::host::driver::{Driver, DriverOptions};
use crate::host::files::{open_image_with, FileStorage};
use crate::host::lock::Usage;
use clap::Args;
use fvd_core::engine::{Layout, PrefetchFailure, PrefetchMode, PrefetchState};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
fn gave_up(driver: &mut Driver<FileStorage>, failure: Option<PrefetchFailure>) -> CliError {
    let reason = match (driver.take_os_error(), failure) {
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
    let options = DriverOptions {
        prefetch: PrefetchMode::Now { max_read_kib_s },
        ..DriverOptions::default()
    };
    // A FIFO, directory or socket gets the same message as `info` ("not a regular file
    // or block device") rather than the OS error of a seek on it.
    open_host_file_as(&args.file, Usage::PROBE)?;
    let gate = open_flags::gate(ForceShare::default(), args.external);
    let mut driver = open_image_with(&args.file, options, &gate).map_err(open_error)?;
    let progress = driver.engine().prefetch_progress();
    if progress.state == PrefetchState::Off {
        let prefetched = matches!(
            driver.engine().info().map(|i| i.layout),
            Some(Layout::Fvd(layout)) if layout.base_fully_prefetched
        );
        driver.close().map_err(|e| CliError::Image(e.to_string()))?;
        if prefetched {
            if !args.quiet {
                writeln!(out, "Image is already fully prefetched.").map_err(CliError::Output)?;
            }
            return Ok(());
        }
        return Err(CliError::Image(format!(
            "'{}' has no base image to prefetch",
            args.file.display()
        )));
    }
    let show = args.progress && !args.quiet;
    if max_read_kib_s.is_none() {
        driver.close().map_err(|e| CliError::Image(e.to_string()))?;
        let start = Instant::now();
        let done = flatten(&args.file, gate, show, out)?;
        return summary(args, out, done.copied, start);
    }
    let mut bar = Progress::new(show, progress.blocks);
    bar.show(out, 0)?;
    let start = Instant::now();
    loop {
        let now = start.elapsed().as_millis() as u64;
        driver
            .handle_timeout(now)
            .map_err(|e| CliError::Image(format!("prefetch failed: {e}")))?;
        let progress = driver.engine().prefetch_progress();
        bar.show(out, progress.cursor.min(progress.blocks))?;
        match progress.state {
            PrefetchState::Done => break,
            PrefetchState::Failed | PrefetchState::Off => {
                bar.finish(out)?;
                let error = gave_up(&mut driver, progress.failure);
                // Keep what was copied; the failure is what the user needs to hear about.
                let _ = driver.close();
                return Err(error);
            }
            _ => {}
        }
        // Sleep until the engine wants time again (a rate window or a back-off pause).
        if let Some(deadline) = driver.engine().poll_timeout() {
            let wait = deadline.saturating_sub(start.elapsed().as_millis() as u64);
            std::thread::sleep(Duration::from_millis(wait.clamp(1, 200)));
        }
    }
    bar.finish(out)?;
    let copied = driver.engine().stats().prefetched_blocks;
    let block = match driver.engine().info().map(|i| i.layout) {
        Some(Layout::Fvd(layout)) => layout.block_size,
        _ => 0,
    };
    driver.close().map_err(|e| CliError::Image(e.to_string()))?;
    summary(args, out, copied * block, start)
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
