//! `fvd-img map`: where each run of the guest disk lives, from the engine's `Map`
//! requests, following the base chain like `qemu-img map` follows a backing chain. Runs
//! with the same properties and contiguous storage are merged. The JSON output has
//! qemu-img's keys (one object per line, as qemu-img prints them) plus `kind`:
//! `local` (in this image), `base` (still in a base image) or `zero` (reads as zeros,
//! nothing stored, past the end of a shorter base included). A QED image's allocated
//! clusters are `local` data and its zero clusters `zero`, as `qemu-img map` shows them.

use super::disk::{context, Disk, DiskFormat, Extent, ExtentKind};
use super::error::CliError;
use super::open_flags::{self, ExternalData, ForceShare};
use super::output::OutputFormat;
use super::size::parse_size;
use clap::Args;
use serde_json::Value;
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

/// Runs `fvd-img map`.
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
    let extents = disk
        .extents(start, end)
        .map_err(|e| context(e, format!("Could not map '{}'", args.file.display())))?;
    disk.close()?;
    let text = match args.output {
        OutputFormat::Human => render_human(&extents),
        OutputFormat::Json => render_json(&extents),
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// One extent's keys and values in qemu-img map's order, plus `kind`.
pub fn extent_fields(extent: &Extent) -> Vec<(&'static str, Value)> {
    let mut fields = vec![
        ("start", Value::from(extent.start)),
        ("length", extent.length.into()),
        ("depth", extent.depth.into()),
        ("present", (extent.kind != ExtentKind::Unallocated).into()),
        ("zero", extent.zero.into()),
        ("data", extent.data.into()),
        ("compressed", false.into()),
    ];
    if let Some(offset) = extent.offset {
        fields.push(("offset", offset.into()));
    }
    fields.push(("kind", extent.kind.name().into()));
    fields
}

/// The JSON list, laid out like `qemu-img map --output json`: one object per line,
/// `{ "start": 0, "length": 65536, ...}`.
pub fn render_json(extents: &[Extent]) -> String {
    if extents.is_empty() {
        return "[]\n".into();
    }
    let lines: Vec<String> = extents
        .iter()
        .map(|extent| {
            let fields: Vec<String> = extent_fields(extent)
                .into_iter()
                .map(|(key, value)| format!("\"{key}\": {value}"))
                .collect();
            format!("{{ {}}}", fields.join(", "))
        })
        .collect();
    format!("[{}]\n", lines.join(",\n"))
}

/// `0` or `0x...`, as qemu-img prints offsets with `%#x`.
fn hex(value: u64) -> String {
    if value == 0 {
        "0".into()
    } else {
        format!("{value:#x}")
    }
}

/// The table `qemu-img map` prints: the runs stored as data (holes of the host file
/// left out), with where they are stored.
pub fn render_human(extents: &[Extent]) -> String {
    let mut text = format!(
        "{:<16}{:<16}{:<16}{}\n",
        "Offset", "Length", "Mapped to", "File"
    );
    for extent in extents {
        let (true, false, Some(offset), Some(file)) =
            (extent.data, extent.zero, extent.offset, &extent.file)
        else {
            continue;
        };
        text += &format!(
            "{:<16}{:<16}{:<16}{}\n",
            hex(extent.start),
            hex(extent.length),
            hex(offset),
            file.display()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::disk::ExtentKind;

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
        let text = render_json(&sample());
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
        let text = render_human(&sample());
        assert_eq!(
            text,
            "Offset          Length          Mapped to       File\n\
             0               0x10000         0               base.raw\n\
             0x10000         0x10000         0x50000         top.fvd\n"
        );
    }
}
