//! `fvd-img info`: opens an image read-only (FVD or QED, probed by magic unless `-f` names
//! it), runs core's info scan over it and reports what core's `report::info` says: every
//! header field plus the facts derived from them (regions, host allocation, mapped chunks
//! or clusters, bitmap use), as qemu-img-style text or JSON (written by core, the same
//! document the browser inspector exports).

use super::base::resolve;
use super::disk::DiskFormat;
use super::error::CliError;
use super::image::{
    measure_data_file, name_path, name_text, open_fvd_as, open_host_file_as, read_at_most,
};
use super::open_flags::{self, ExternalData, ForceShare};
use super::output::OutputFormat;
use super::qed::open_qed_as;
use super::size::human_size;
use crate::host::files::MAX_CHAIN_DEPTH;
use clap::Args;
use fvd_core::report::info::{
    write_info, BackingFacts, DataFileFacts, ImageFacts, InfoFacts, RegionFact,
};
use fvd_core::report::info_scan::{InfoCounts, InfoScan};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments of `fvd-img info`.
#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// Image format (fvd, qed or raw; default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format
    #[arg(long, value_enum, value_name = "FMT", default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Show every image of the chain: the image, its base, the base's base...
    #[arg(long = "backing-chain")]
    pub backing_chain: bool,
    #[command(flatten)]
    pub share: ForceShare,
    /// The image to inspect
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// The base an image reads from, to show next with `--backing-chain`.
struct NextBase {
    path: PathBuf,
    format: Option<String>,
}

/// Runs `fvd-img info`.
pub fn run(args: &InfoArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let gate = open_flags::gate(args.share, ExternalData::default());
    let mut documents = Vec::new();
    let mut path = args.file.clone();
    let mut format = args.format.clone();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    loop {
        let key = std::fs::metadata(&path)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
            .map_err(|e| CliError::open(&path, e))?;
        if seen.contains(&key) {
            return Err(CliError::Invalid(format!(
                "'{}' appears twice in the backing chain",
                path.display()
            )));
        }
        seen.push(key);
        let (text, next) = info_of(&path, format.as_deref(), &gate, args.output)?;
        documents.push(text);
        match next {
            Some(next) if args.backing_chain && documents.len() < MAX_CHAIN_DEPTH => {
                path = next.path;
                format = next.format;
            }
            _ => break,
        }
    }
    let text = match args.output {
        OutputFormat::Human => documents.join("\n"),
        OutputFormat::Json if args.backing_chain => {
            let items: Vec<String> = documents
                .iter()
                .map(|doc| {
                    doc.trim_end()
                        .lines()
                        .map(|line| format!("    {line}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            format!("[\n{}\n]\n", items.join(",\n"))
        }
        OutputFormat::Json => documents.concat(),
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// The info document of one image, and the base it reads from (none for an FVD image
/// whose base is fully prefetched: it never reads its base again).
fn info_of(
    path: &Path,
    format: Option<&str>,
    gate: &crate::host::gate::OpenGate,
    output: OutputFormat,
) -> Result<(String, Option<NextBase>), CliError> {
    let format = DiskFormat::given_or_probed(format, path)?;
    let usage = gate.image_usage(false)?;
    let filename = path.to_string_lossy();
    match format {
        DiskFormat::Raw => {
            let host = open_host_file_as(path, gate.raw_usage(false)?)?;
            let facts = InfoFacts {
                filename: &filename,
                file_len: host.len,
                actual_size: host.allocated,
                backing: None,
                image: ImageFacts::Raw,
                counts: InfoCounts::default(),
            };
            Ok((render(&facts, output)?, None))
        }
        DiskFormat::Fvd => {
            let image = open_fvd_as(path, usage)?;
            let (h, layout) = (&image.header, image.layout);
            let counts = scan(&image.host.file, &image.path, InfoScan::fvd(&layout))?;
            let data = match layout.separate_data_file {
                true => {
                    let name = name_path(&h.data_file);
                    let full = resolve(&image.path, &name).to_string_lossy().into_owned();
                    Some((full, measure_data_file(&image, &name, gate)?))
                }
                false => None,
            };
            let base_name = name_text(&h.base_img);
            let base_format = name_text(&h.base_img_fmt);
            let base_path = resolve(&image.path, &name_path(&h.base_img));
            let base_full = base_path.to_string_lossy().into_owned();
            // A fully prefetched image no longer has a base: its name stays in the header
            // fields, but no backing file is reported (as after qemu-img rebase -b '').
            let reads_base = layout.base.is_some() && !layout.base_fully_prefetched;
            let facts = InfoFacts {
                filename: &filename,
                file_len: image.host.len,
                actual_size: image.host.allocated,
                backing: reads_base.then_some(BackingFacts {
                    name: &base_name,
                    full_name: &base_full,
                    format: (!base_format.is_empty()).then_some(base_format.as_str()),
                }),
                image: ImageFacts::Fvd {
                    header: h,
                    layout,
                    data_file: data.as_ref().map(|(full, file)| DataFileFacts {
                        full_name: full,
                        len: file.len,
                        allocated: file.allocated,
                    }),
                },
                counts,
            };
            let next = reads_base.then(|| NextBase {
                path: base_path.clone(),
                format: (!base_format.is_empty()).then(|| base_format.clone()),
            });
            Ok((render(&facts, output)?, next))
        }
        DiskFormat::Qed => {
            let image = open_qed_as(path, usage)?;
            let scanner = InfoScan::qed(&image.layout, image.host.len);
            let counts = scan(&image.host.file, &image.path, scanner)?;
            let name = image.backing_text();
            let base_path = image.backing_path().map(|p| resolve(&image.path, &p));
            let full = base_path.as_ref().map(|p| p.to_string_lossy().into_owned());
            let facts = InfoFacts {
                filename: &filename,
                file_len: image.host.len,
                actual_size: image.host.allocated,
                backing: name.as_deref().map(|name| BackingFacts {
                    name,
                    full_name: full.as_deref().unwrap_or_default(),
                    format: image.backing_format(),
                }),
                image: ImageFacts::Qed {
                    header: &image.header,
                    layout: image.layout,
                },
                counts,
            };
            let next = base_path.map(|path| NextBase {
                path,
                format: image.backing_format().map(str::to_string),
            });
            Ok((render(&facts, output)?, next))
        }
    }
}

/// Runs core's info scan over `file`, reading what it asks for (zeros past the end).
pub fn scan(file: &File, path: &Path, mut scanner: InfoScan) -> Result<InfoCounts, CliError> {
    while let Some((offset, len)) = scanner.next_read() {
        let bytes = read_at_most(file, path, offset, len)?;
        scanner.complete(&bytes);
    }
    Ok(scanner.counts())
}

/// `facts` as `output` shows them.
pub fn render(facts: &InfoFacts<'_>, output: OutputFormat) -> Result<String, CliError> {
    let mut text = String::new();
    let written = match output {
        OutputFormat::Human => render_human(facts, &mut text),
        OutputFormat::Json => write_info(&mut text, facts),
    };
    written.map_err(|_| CliError::Invalid("the report could not be written".into()))?;
    Ok(text)
}

/// The text listing, laid out like `qemu-img info`.
fn render_human(facts: &InfoFacts<'_>, text: &mut String) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(text, "image: {}", facts.filename)?;
    writeln!(text, "file format: {}", facts.format())?;
    let size = facts.virtual_size();
    writeln!(text, "virtual size: {} ({size} bytes)", human_size(size))?;
    writeln!(text, "disk size: {}", human_size(facts.actual_size))?;
    if let Some(cluster_size) = facts.cluster_size() {
        writeln!(text, "cluster_size: {cluster_size}")?;
    }
    if let Some(backing) = &facts.backing {
        if backing.full_name == backing.name {
            writeln!(text, "backing file: {}", backing.name)?;
        } else {
            writeln!(
                text,
                "backing file: {} (actual path: {})",
                backing.name, backing.full_name
            )?;
        }
        if let Some(format) = backing.format {
            writeln!(text, "backing file format: {format}")?;
        }
    }
    if !facts.has_format_specific() {
        return Ok(());
    }
    writeln!(text, "Format specific information:")?;
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        let shown = value.to_string();
        if shown.is_empty() {
            writeln!(text, "    {key}:")
        } else {
            writeln!(text, "    {key}: {shown}")
        }
    };
    facts.for_each_field(|field| line(field.name, &field.value))?;
    for fact in facts.derived() {
        line(fact.key, &fact.value)?;
    }
    writeln!(text, "    regions:")?;
    for RegionFact {
        name,
        file,
        offset,
        length,
    } in facts.regions()
    {
        let place = if file == "image" {
            ""
        } else {
            " (in the data file)"
        };
        writeln!(
            text,
            "        {name}: offset {offset}, length {length}{place}"
        )?;
    }
    Ok(())
}
