//! `fvd-img check` of an FVD image: opens the files (through the open gate, locked),
//! runs the core scanner (`fvd_core::check::fvd`) over them and prints what it reports.
//! A repair checks first (silently), asks the core for the plan, shows the findings
//! when the repair has something to do, runs the core's repair, and checks again.

use super::drive::{self, Event, Files, Lists, Show, Target, WORK_MEMORY};
use super::report::{self, Outcome};
use super::{finish, status, RepairMode};
use crate::cli::base::resolve;
use crate::cli::error::CliError;
use crate::cli::image::{chain_of, measure_data_file, name_path, open_fvd_as, FvdImage};
use crate::cli::image_format::ImageFormat;
use crate::cli::output::OutputFormat;
use crate::host::gate::{self, Access, OpenGate};
use fvd_core::check::fvd::{plan, FvdCheck, FvdFiles, FvdRepairPlan, FvdSummary};
use fvd_core::check::{Checker, Report};
use fvd_core::report::check::FvdFacts;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file guest data lives in.
struct Storage {
    /// Its path (the image itself when there is no separate data file).
    path: PathBuf,
    /// Its length in bytes.
    len: u64,
    /// A regular file (which can be truncated), not a block device.
    regular: bool,
    /// A separate data file rather than the image file.
    separate: bool,
}

/// An image opened for checking.
struct Opened {
    image: FvdImage,
    storage: Storage,
}

impl Opened {
    fn files(&self) -> FvdFiles {
        FvdFiles {
            image_len: self.image.host.len,
            data_len: self.storage.separate.then_some(self.storage.len),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            file: &self.image.host.file,
            path: &self.image.path,
        }
    }
}

fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Opens the image at `path`, validates its header and measures its data storage
/// (through `gate`).
fn open(path: &Path, gate: &OpenGate) -> Result<Opened, CliError> {
    let image = open_fvd_as(path, gate.image_usage(false)?)?;
    let storage = if image.layout.separate_data_file {
        let name = name_path(&image.header.data_file);
        let data_path = resolve(path, &name);
        let data = measure_data_file(&image, &name, gate)?;
        Storage {
            regular: is_regular(&data_path),
            path: data_path,
            len: data.len,
            separate: true,
        }
    } else {
        Storage {
            path: path.to_path_buf(),
            len: image.host.len,
            regular: is_regular(path),
            separate: false,
        }
    };
    Ok(Opened { image, storage })
}

fn invalid(path: &Path, err: fvd_core::check::CheckError) -> CliError {
    CliError::Invalid(format!("'{}': {err}", path.display()))
}

/// Checks `o`.
fn check(o: &Opened, show: Show<'_>) -> Result<(FvdSummary, Lists), CliError> {
    let scanner = FvdCheck::new(o.image.header.bytes(), o.files(), vec![0u8; WORK_MEMORY])
        .map_err(|e| invalid(&o.image.path, e))?;
    let files = Files {
        image: o.target(),
        data: None,
    };
    match drive::check(Checker::Fvd(scanner), &files, show, &print_event)? {
        (Report::Fvd(summary), lists) => Ok((summary, lists)),
        _ => Err(CliError::Invalid("the check ended without a report".into())),
    }
}

fn print_event(event: Event, out: &mut dyn Write) -> std::io::Result<()> {
    match event {
        Event::Finding(f) => writeln!(out, "ERROR {f}"),
        Event::Leak(start, end) if end - start == 1 => {
            writeln!(out, "Leaked chunk {start}: no table entry maps it")
        }
        Event::Leak(start, end) => writeln!(
            out,
            "Leaked chunks {start}-{}: no table entry maps them",
            end - 1
        ),
        Event::Repaired(_) => Ok(()),
    }
}

/// The notes about the image's state that follow the findings.
fn notes(s: &FvdSummary, out: &mut dyn Write) -> Result<(), CliError> {
    let mut text = String::new();
    if s.counts.dirty && s.journal_sectors > 0 {
        text.push_str(&format!(
            "Image is dirty; journal has {} records to replay (checked with them applied)\n",
            s.journal_records
        ));
    } else if s.counts.dirty {
        text.push_str("Image is dirty (not closed cleanly); journal has no records to replay\n");
    }
    if let Some((in_image, in_base)) = s.bitmap {
        text.push_str(&format!(
            "Bitmap: {in_image} block(s) in the image, {in_base} still in the base\n"
        ));
    }
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

fn summary(s: &FvdSummary, repaired: bool, out: &mut dyn Write) -> Result<(), CliError> {
    report::summary(&s.counts, repaired, s.counts.total_clusters, out)
}

/// The JSON report of the (last) check, with the repair's outcome when there was one.
fn json(
    filename: &str,
    s: &FvdSummary,
    lists: &Lists,
    outcome: Option<&Outcome>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let fvd = FvdFacts {
        journal_records: s.journal_records,
        journal_sectors: s.journal_sectors,
        bitmap: s.bitmap,
    };
    report::json(
        filename,
        ImageFormat::Fvd,
        s.counts,
        Some(fvd),
        lists,
        outcome,
        out,
    )
}

/// Checks (and with `mode`, repairs) the FVD image at `path`.
pub fn run(
    path: &Path,
    mode: Option<RepairMode>,
    output: OutputFormat,
    gate: &OpenGate,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // Refuse before reading anything, so a read-only image is never half-repaired; the
    // image stays locked for writing until the repair is over.
    let held = match mode {
        Some(_) => Some(super::repair::open_writable(path, "image")?),
        None => None,
    };
    let opened = open(path, gate)?;
    let filename = path.to_string_lossy();
    let human = output == OutputFormat::Human;
    // Many short lines: gather them into large writes.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);

    let (Some(mode), Some(held)) = (mode, held) else {
        if human {
            let (s, _) = check(&opened, Show::Print(&mut out))?;
            notes(&s, &mut out)?;
            summary(&s, false, &mut out)?;
            return finish(out, status(&s.counts, false));
        }
        let (s, lists) = check(&opened, Show::Collect)?;
        json(&filename, &s, &lists, None, &mut out)?;
        return finish(out, status(&s.counts, false));
    };
    let (first, lists) = check(&opened, if human { Show::Silent } else { Show::Collect })?;
    let plan = plan(&first, mode.into(), opened.storage.regular);
    if let Some(refusal) = plan.refused {
        if human {
            check(&opened, Show::Print(&mut out))?;
            notes(&first, &mut out)?;
            writeln!(out, "{refusal}").map_err(CliError::Output)?;
            summary(&first, false, &mut out)?;
        } else {
            let outcome = Outcome::refused(refusal);
            json(&filename, &first, &lists, Some(&outcome), &mut out)?;
        }
        return finish(out, status(&first.counts, false));
    }
    let data_held = match opened.storage.separate {
        true => {
            // Through the gate: a data file outside the image's directory is written only
            // with --allow-external-data-file.
            let name = name_path(&opened.image.header.data_file);
            let mut chain = chain_of(&held, path)?;
            let data = gate::open_named(gate, &mut chain, path, &name, true, Access::Write)?;
            let writable = super::repair::open_writable(&opened.storage.path, "data file")?;
            Some((data, writable))
        }
        false => None,
    };
    if human && plan.has_actions {
        check(&opened, Show::Print(&mut out))?;
        notes(&first, &mut out)?;
    }
    let outcome = repair(
        &opened,
        &held,
        data_held.as_ref().map(|d| &d.1),
        plan,
        &mut |line| {
            if human {
                writeln!(out, "{line}").map_err(CliError::Output)?;
            }
            Ok(())
        },
    )?;
    drop(opened);
    // Double-check: the repaired image, read afresh.
    let last_opened = open(path, gate)?;
    if human {
        if outcome.lines.count() > 0 {
            report::repairs_summary(outcome.counts, &mut out)?;
        }
        let (last, _) = check(&last_opened, Show::Print(&mut out))?;
        notes(&last, &mut out)?;
        summary(&last, true, &mut out)?;
        return finish(out, status(&last.counts, true));
    }
    let (last, lists) = check(&last_opened, Show::Collect)?;
    json(&filename, &last, &lists, Some(&outcome), &mut out)?;
    finish(out, status(&last.counts, true))
}

/// Runs the core's repair of `o` as `plan` says, writing through `image` (and `data`),
/// handing each line to `sink` as it is made.
fn repair(
    o: &Opened,
    image: &std::fs::File,
    data: Option<&super::repair::Writable>,
    plan: FvdRepairPlan,
    sink: &mut dyn FnMut(&str) -> Result<(), CliError>,
) -> Result<Outcome, CliError> {
    let scanner = FvdCheck::repair(
        o.image.header.bytes(),
        o.files(),
        vec![0u8; WORK_MEMORY],
        plan,
    )
    .map_err(|e| invalid(&o.image.path, e))?;
    let files = Files {
        image: Target {
            file: image,
            path: &o.image.path,
        },
        data: data.map(|d| Target {
            file: d,
            path: &o.storage.path,
        }),
    };
    let mut outcome = Outcome::default();
    let report = drive::run(&mut Checker::Fvd(scanner), &files, &mut |event| {
        if let Event::Repaired(r) = event {
            let line = report::repair_line(&r, &o.storage.path);
            sink(&line)?;
            outcome.lines.push(line);
        }
        Ok(())
    })?;
    if let Report::Repaired(counts) = report {
        outcome.counts = counts;
    }
    Ok(outcome)
}
