//! `fvd-img check`: a structural check of an FVD or QED image with qemu-img check's exit
//! statuses (0 clean, 1 the check could not be completed, 2 corruption found, 3 only leaked
//! chunks found) and, with `-r`, repairs. QED images are handled by [`qed`].
//!
//! The metadata is read straight from the files with std I/O ([`load`]), never through
//! the engine, so images the engine refuses can still be checked. A dirty image is checked
//! with its journal replayed in memory, as a read-write open would see it ([`analysis`]);
//! the rules are those of docs/FORMAT.md §7, §8 and §10 ([`scan`]). Repairs are ordered
//! for crash safety ([`repair`]).

pub mod analysis;
pub mod load;
pub mod qed;
pub mod repair;
pub mod report;
pub mod scan;
pub mod table;

use super::error::CliError;
use super::image::{chain_of, name_path};
use super::image_format::ImageFormat;
use super::open_flags::{self, ExternalData, ForceShare};
use super::output::{write_json, OutputFormat};
use crate::gate::{self, Access};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

/// Exit status: the image has corruptions.
pub const EXIT_CORRUPT: u8 = 2;
/// Exit status: the image has leaked chunks and no corruptions.
pub const EXIT_LEAKS: u8 = 3;

/// What `-r` repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RepairMode {
    /// Replay the journal of a dirty image and release unused data storage.
    Leaks,
    /// Also repair corruptions: unmap bad or duplicate table entries (their data is lost),
    /// clear stray bitmap bits, drop bad journal records.
    All,
}

/// Arguments of `fvd-img check`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Exit status: 0 no problems, 1 the check could not be completed, 2 corruptions found, \
3 leaked chunks found (and no corruptions).\n\
Leaked chunks are physical chunks below the highest mapped one that no table entry maps; \
the engine reuses them for new writes. After -r, leaks that cannot be released are reported \
but do not set status 3.\n\
QED images: leaked clusters are clusters of the file nothing references; -r truncates those \
at the end of the file away, and those before used clusters still set status 3.")]
pub struct CheckArgs {
    /// Image format (fvd or qed; default: probed)
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Repair: 'leaks' (replay and release unused storage) or 'all' (also corruptions)
    #[arg(short = 'r', value_enum, value_name = "leaks|all")]
    pub repair: Option<RepairMode>,
    /// Output format
    #[arg(long, value_enum, value_name = "FMT", default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub share: ForceShare,
    #[command(flatten)]
    pub external: ExternalData,
    /// The image to check
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `fvd-img check`. The report goes to `out`, each finding as it is found; an exit
/// status other than 0 comes back as [`CliError::Exit`] after the report is written.
pub fn run(args: &CheckArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.file.as_path();
    args.share.check_read_only(args.repair.is_some())?;
    let gate = open_flags::gate(args.share, args.external);
    match ImageFormat::given_or_probed(args.format.as_deref(), path)? {
        ImageFormat::Fvd => {}
        ImageFormat::Qed => {
            let usage = gate.image_usage(args.repair.is_some())?;
            return qed::run(path, args.repair, args.output, usage, out);
        }
    }
    // Refuse before reading anything, so a read-only image is never half-repaired; the
    // image stays locked for writing until the repair is over.
    let held = match args.repair {
        Some(_) => Some(repair::open_writable(path, "image")?),
        None => None,
    };
    let loaded = load::load(path, &gate)?;
    let first = analysis::analyze(&loaded);
    let filename = path.to_string_lossy();
    let human = args.output == OutputFormat::Human;
    // Many short lines: gather them into large writes.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);

    let Some(mode) = args.repair else {
        if human {
            report::findings(&loaded, &first, &mut out)?;
            report::summary(&first, false, &mut out)?;
        } else {
            write_json(&mut out, &report::json(&filename, &loaded, &first, None))?;
        }
        return finish(out, status(&first, false));
    };
    if let Some(refused) = repair::refusal(&first, mode) {
        if human {
            report::findings(&loaded, &first, &mut out)?;
            writeln!(out, "{refused}").map_err(CliError::Output)?;
            report::summary(&first, false, &mut out)?;
        } else {
            let outcome = repair::Outcome {
                refused: Some(refused),
                ..repair::Outcome::default()
            };
            write_json(
                &mut out,
                &report::json(&filename, &loaded, &first, Some(&outcome)),
            )?;
        }
        return finish(out, status(&first, false));
    }
    let _data_held = match &held {
        Some(image) if loaded.storage.separate => {
            // Through the gate: a data file outside the image's directory is written only
            // with --allow-external-data-file.
            let name = name_path(&loaded.header.data_file);
            let mut chain = chain_of(image, path)?;
            let data = gate::open_named(&gate, &mut chain, path, &name, true, Access::Write)?;
            repair::open_writable(&loaded.storage.path, "data file")?;
            Some(data)
        }
        _ => None,
    };
    let plan = repair::plan(&loaded, &first, mode);
    if human && plan.has_actions(&first) {
        report::findings(&loaded, &first, &mut out)?;
    }
    let outcome = repair::repair(&loaded, &first, plan, &mut |line| {
        if human {
            writeln!(out, "{line}").map_err(CliError::Output)?;
        }
        Ok(())
    })?;
    drop(first);
    drop(loaded);
    // Double-check: the repaired image, read afresh.
    let last_loaded = load::load(path, &gate)?;
    let last = analysis::analyze(&last_loaded);
    if human {
        if outcome.line_count() > 0 {
            let mut text = String::new();
            report::repairs_summary(outcome.corruptions_fixed, outcome.leaks_fixed, &mut text);
            out.write_all(text.as_bytes()).map_err(CliError::Output)?;
        }
        report::findings(&last_loaded, &last, &mut out)?;
        report::summary(&last, true, &mut out)?;
    } else {
        write_json(
            &mut out,
            &report::json(&filename, &last_loaded, &last, Some(&outcome)),
        )?;
    }
    finish(out, status(&last, true))
}

/// The exit status of a check whose last analysis is `a`.
fn status(a: &analysis::Analysis, repaired: bool) -> u8 {
    if a.corruptions > 0 {
        EXIT_CORRUPT
    } else if a.leaks() > 0 && !repaired {
        EXIT_LEAKS
    } else {
        0
    }
}

/// Flushes the report and ends with `status`.
fn finish(mut out: impl Write, status: u8) -> Result<(), CliError> {
    out.flush().map_err(CliError::Output)?;
    if status != 0 {
        return Err(CliError::Exit(status));
    }
    Ok(())
}
