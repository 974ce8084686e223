//! `fvd-img info`: opens an image read-only (FVD or QED, probed by magic unless `-f` names
//! it), runs core's info scan over it and reports what core's `report::info` says: every
//! header field plus the facts derived from them (regions, host allocation, mapped chunks
//! or clusters, bitmap use), as qemu-img-style text or JSON (written by core, the same
//! document the browser inspector exports).

use super::base::resolve;
use super::error::CliError;
use super::image::{measure_data_file, name_path, name_text, open_fvd_as, read_at_most};
use super::image_format::ImageFormat;
use super::open_flags::{self, ExternalData, ForceShare};
use super::output::OutputFormat;
use super::qed::open_qed_as;
use super::size::human_size;
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
    /// Image format (fvd or qed; default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format
    #[arg(long, value_enum, value_name = "FMT", default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub share: ForceShare,
    /// The image to inspect
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `fvd-img info`.
pub fn run(args: &InfoArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let format = ImageFormat::given_or_probed(args.format.as_deref(), &args.file)?;
    let gate = open_flags::gate(args.share, ExternalData::default());
    let usage = gate.image_usage(false)?;
    let filename = args.file.to_string_lossy();
    let text = match format {
        ImageFormat::Fvd => {
            let image = open_fvd_as(&args.file, usage)?;
            let (h, layout) = (&image.header, image.layout);
            let counts = scan(&image.host.file, &image.path, InfoScan::fvd(&layout))?;
            let data = match layout.separate_data_file {
                true => {
                    let name = name_path(&h.data_file);
                    let full = resolve(&image.path, &name).to_string_lossy().into_owned();
                    Some((full, measure_data_file(&image, &name, &gate)?))
                }
                false => None,
            };
            let base_name = name_text(&h.base_img);
            let base_format = name_text(&h.base_img_fmt);
            let base_full = resolve(&image.path, &name_path(&h.base_img))
                .to_string_lossy()
                .into_owned();
            let facts = InfoFacts {
                filename: &filename,
                file_len: image.host.len,
                actual_size: image.host.allocated,
                backing: layout.base.map(|_| BackingFacts {
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
            render(&facts, args.output)?
        }
        ImageFormat::Qed => {
            let image = open_qed_as(&args.file, usage)?;
            let scanner = InfoScan::qed(&image.layout, image.host.len);
            let counts = scan(&image.host.file, &image.path, scanner)?;
            let name = image.backing_text();
            let full = image
                .backing_path()
                .map(|p| resolve(&image.path, &p).to_string_lossy().into_owned());
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
            render(&facts, args.output)?
        }
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)
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
