//! `fvd-img map`: where each run of the guest disk lives, from the engine's `Map`
//! requests, following the base chain like `qemu-img map` follows a backing chain. Runs
//! with the same properties and contiguous storage are merged. The JSON output has
//! qemu-img's keys (one object per line, as qemu-img prints them; written by core's
//! `report::map`, as the browser inspector exports it) plus `kind`:
//! `local` (in this image), `base` (still in a base image) or `zero` (reads as zeros,
//! nothing stored, past the end of a shorter base included). Runs are printed as they are
//! found, so memory does not grow with their number. A QED image's allocated
//! clusters are `local` data and its zero clusters `zero`, as `qemu-img map` shows them.

use super::disk::{context, Disk, DiskFormat, Extent};
use super::error::CliError;
use super::open_flags::{self, ExternalData, ForceShare};
use super::output::OutputFormat;
use super::size::parse_size;
use clap::Args;
use fvd_core::report::map::{write_end, write_entry};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `fvd-img map`.
#[derive(Args, Debug, Clone)]
pub struct MapArgs {
    /// Format of FILE: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format
    #[arg(long, value_enum, value_name = "FMT", default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// First guest byte to map (default 0)
    #[arg(short = 's', long = "start-offset", value_name = "OFFSET")]
    pub start_offset: Option<String>,
    /// Bytes to map (default: to the end of the disk)
    #[arg(short = 'l', long = "max-length", value_name = "LEN")]
    pub max_length: Option<String>,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// The image to map
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `fvd-img map`. Each merged run is printed as soon as the next one cannot join it,
/// so memory stays the same however many runs the disk has.
pub fn run(args: &MapArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let format = DiskFormat::given_or_probed(args.format.as_deref(), &args.file)?;
    let size_arg = |text: &Option<String>, what: &str| {
        text.as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| CliError::Usage(format!("Invalid {what}: {e}")))
    };
    let start = size_arg(&args.start_offset, "start offset")?.unwrap_or(0);
    let max_length = size_arg(&args.max_length, "max length")?;
    let gate = open_flags::gate(args.share, args.external);
    let mut disk = Disk::open_gated(&args.file, format, false, None, gate)?;
    let size = disk.size();
    let start = start.min(size);
    let end = max_length.map_or(size, |len| start.saturating_add(len).min(size));
    // Many short lines: gather them into large writes.
    let mut buffered = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut printer = MapPrinter::new(args.output, &mut buffered);
    let mut at = start;
    while at < end {
        let extent = disk
            .extent(at, end - at)
            .map_err(|e| context(e, format!("Could not map '{}'", args.file.display())))?;
        at = extent.end();
        printer.push(extent)?;
    }
    disk.close()?;
    printer.finish()?;
    buffered.flush().map_err(CliError::Output)
}

/// Prints runs as they come, merging each into the one before when it
/// [`Extent::joins`] it: a run is written once it is final. Nothing is written before the
/// first run is final, so a failure on the first run leaves the output empty.
pub struct MapPrinter<'a> {
    format: OutputFormat,
    out: &'a mut dyn Write,
    pending: Option<Extent>,
    written: u64,
}

impl<'a> MapPrinter<'a> {
    /// A printer of `format` output to `out`.
    pub fn new(format: OutputFormat, out: &'a mut dyn Write) -> Self {
        MapPrinter {
            format,
            out,
            pending: None,
            written: 0,
        }
    }

    /// Adds the next run.
    pub fn push(&mut self, extent: Extent) -> Result<(), CliError> {
        match &mut self.pending {
            Some(last) if last.joins(&extent) => {
                last.length += extent.length;
                Ok(())
            }
            _ => match self.pending.replace(extent) {
                Some(done) => self.write(&done),
                None => Ok(()),
            },
        }
    }

    /// Writes the last run and closes the output.
    pub fn finish(mut self) -> Result<(), CliError> {
        if let Some(done) = self.pending.take() {
            self.write(&done)?;
        }
        let mut tail = String::new();
        match (self.format, self.written) {
            (OutputFormat::Json, written) => {
                let _ = write_end(&mut tail, written);
            }
            (OutputFormat::Human, 0) => tail.push_str(HUMAN_HEADER),
            (OutputFormat::Human, _) => {}
        }
        self.out
            .write_all(tail.as_bytes())
            .map_err(CliError::Output)
    }

    fn write(&mut self, extent: &Extent) -> Result<(), CliError> {
        let mut text = String::new();
        match self.format {
            OutputFormat::Json => {
                write_entry(&mut text, self.written == 0, &extent.entry())
                    .map_err(|_| CliError::Invalid("the map could not be written".into()))?;
            }
            OutputFormat::Human => {
                if self.written == 0 {
                    text.push_str(HUMAN_HEADER);
                }
                if let (true, false, Some(offset), Some(file)) =
                    (extent.data, extent.zero, extent.offset, &extent.file)
                {
                    text += &format!(
                        "{:<16}{:<16}{:<16}{}\n",
                        hex(extent.start),
                        hex(extent.length),
                        hex(offset),
                        file.display()
                    );
                }
            }
        }
        self.written += 1;
        self.out
            .write_all(text.as_bytes())
            .map_err(CliError::Output)
    }
}

/// The title line of the table `qemu-img map` prints.
const HUMAN_HEADER: &str = "Offset          Length          Mapped to       File\n";

/// `0` or `0x...`, as qemu-img prints offsets with `%#x`.
fn hex(value: u64) -> String {
    if value == 0 {
        "0".into()
    } else {
        format!("{value:#x}")
    }
}

/// `extents` printed as `format` (merged where they join), as one text.
pub fn render(extents: &[Extent], format: OutputFormat) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    let mut printer = MapPrinter::new(format, &mut bytes);
    for extent in extents {
        printer.push(extent.clone())?;
    }
    printer.finish()?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::disk::ExtentKind;
    use serde_json::Value;

    fn sample() -> Vec<Extent> {
        vec![
            Extent {
                start: 0,
                length: 65536,
                kind: ExtentKind::Base,
                depth: 1,
                zero: false,
                data: true,
                offset: Some(0),
                file: Some("base.raw".into()),
            },
            Extent {
                start: 65536,
                length: 65536,
                kind: ExtentKind::Local,
                depth: 0,
                zero: false,
                data: true,
                offset: Some(0x50000),
                file: Some("top.fvd".into()),
            },
            Extent {
                start: 131072,
                length: 4096,
                kind: ExtentKind::Zero,
                depth: 0,
                zero: true,
                data: false,
                offset: None,
                file: None,
            },
        ]
    }

    #[test]
    fn json_is_one_object_per_line_and_parses() {
        let text = render(&sample(), OutputFormat::Json).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.starts_with(
            "[{ \"start\": 0, \"length\": 65536, \"depth\": 1, \"present\": true, \"zero\": false, \
             \"data\": true, \"compressed\": false, \"offset\": 0, \"kind\": \"base\"},\n"
        ));
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[1]["offset"], 0x50000);
        assert_eq!(parsed[2]["kind"], "zero");
        assert!(parsed[2].get("offset").is_none());
    }

    #[test]
    fn human_lists_stored_runs_only() {
        let text = render(&sample(), OutputFormat::Human).unwrap();
        assert_eq!(
            text,
            "Offset          Length          Mapped to       File\n\
             0               0x10000         0               base.raw\n\
             0x10000         0x10000         0x50000         top.fvd\n"
        );
    }
}
