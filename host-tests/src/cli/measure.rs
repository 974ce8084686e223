//! `fvd-img measure`: how large an image would be, as `qemu-img measure` prints it —
//! for a new disk of `--size` bytes, or for converting FILE (its data ranges, read through
//! its base chain, are what the new image would hold). The counting is core's
//! (`fvd_core::measure`); this module finds the ranges and prints.

use super::convert::qed_geometry;
use super::create::{planned_fvd_header, FVD_CREATE_OPTIONS, QED_CREATE_OPTIONS};
use super::disk::{Disk, DiskFormat};
use super::error::CliError;
use super::open_flags::{self, ExternalData, ForceShare};
use super::options::{help_text, parse_options};
use super::output::OutputFormat;
use super::size::parse_size;
use clap::Args;
use fvd_core::measure::{FvdMeasure, Measured, QedMeasure};
use fvd_core::qed::plan as qed_plan;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `fvd-img measure`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Prints the file size an image of OUTPUT_FMT needs for FILE's data ('required size') and \
when every guest byte is written ('fully allocated size'). Give --size for an empty disk.")]
pub struct MeasureArgs {
    /// Output format: human or json
    #[arg(long, value_enum, value_name = "FMT", default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Format of the image to measure for: fvd, qed or raw
    #[arg(short = 'O', value_name = "OUTPUT_FMT", default_value = "raw")]
    pub output_format: String,
    /// Create options of that image (as for create), KEY=VAL[,KEY=VAL...]
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Measure an empty disk of this size instead of FILE
    #[arg(long = "size", value_name = "SIZE", conflicts_with = "file")]
    pub size: Option<String>,
    /// Format of FILE: fvd, qed or raw (default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// The disk whose conversion to measure
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// What counts the data ranges for the output format.
enum Counter {
    Fvd(FvdMeasure),
    Qed(QedMeasure),
    Raw(u64),
}

impl Counter {
    fn add(&mut self, offset: u64, len: u64) {
        match self {
            Counter::Fvd(m) => m.add(offset, len),
            Counter::Qed(m) => m.add(offset, len),
            Counter::Raw(_) => {}
        }
    }

    fn result(&self) -> Measured {
        match self {
            Counter::Fvd(m) => m.result(),
            Counter::Qed(m) => m.result(),
            Counter::Raw(size) => Measured {
                required: *size,
                fully_allocated: *size,
            },
        }
    }
}

/// Runs `fvd-img measure`.
pub fn run(args: &MeasureArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let target = DiskFormat::parse(&args.output_format)?;
    if args.options.iter().any(|o| o == "help") {
        let specs: &[_] = match target {
            DiskFormat::Fvd => &FVD_CREATE_OPTIONS,
            DiskFormat::Qed => &QED_CREATE_OPTIONS,
            DiskFormat::Raw => &[],
        };
        return out
            .write_all(help_text(target.name(), specs).as_bytes())
            .map_err(CliError::Output);
    }
    let mut source = match (&args.size, &args.file) {
        (Some(size), _) => {
            let size = parse_size(size)
                .map_err(|e| CliError::Usage(format!("Invalid image size specified: {e}")))?;
            (size, None)
        }
        (None, Some(file)) => {
            let format = DiskFormat::given_or_probed(args.format.as_deref(), file)?;
            let gate = open_flags::gate(args.share, args.external);
            let disk = Disk::open_gated(file, format, false, None, gate)?;
            (disk.size(), Some(disk))
        }
        (None, None) => {
            return Err(CliError::Usage(
                "Either --size N or one filename must be specified".into(),
            ))
        }
    };
    let size = source.0;
    let mut counter = match target {
        DiskFormat::Fvd => Counter::Fvd(FvdMeasure::new(&planned_fvd_header(&args.options, size)?)),
        DiskFormat::Qed => {
            let opts = parse_options(&args.options, &QED_CREATE_OPTIONS)?;
            let plan = qed_plan(&qed_geometry(opts, size))
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            Counter::Qed(QedMeasure::new(&plan))
        }
        DiskFormat::Raw => {
            if !args.options.is_empty() {
                return Err(CliError::Usage("raw images take no -o options here".into()));
            }
            Counter::Raw(size)
        }
    };
    if let Some(disk) = source.1.as_mut() {
        let mut at = 0;
        while at < size {
            let extent = disk.extent(at, size - at)?;
            if extent.length == 0 {
                return Err(CliError::Image(format!("empty run at offset {at}")));
            }
            if extent.data && !extent.zero {
                counter.add(at, extent.length);
            }
            at += extent.length;
        }
    }
    if let Some(disk) = source.1 {
        disk.close()?;
    }
    let measured = counter.result();
    let text = match args.output {
        // qemu-img's key order.
        OutputFormat::Json => format!(
            "{{\n    \"required\": {},\n    \"fully-allocated\": {}\n}}\n",
            measured.required, measured.fully_allocated
        ),
        OutputFormat::Human => format!(
            "required size: {}\nfully allocated size: {}\n",
            measured.required, measured.fully_allocated
        ),
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}
