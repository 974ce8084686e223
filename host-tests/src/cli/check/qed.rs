//! `fvd-img check` of a QED image: runs the core scanner (`fvd_core::check::qed`) over
//! the file and prints what it reports, worded like `qemu-img check`. A repair checks
//! first (silently), asks the core for the plan, shows the findings when the repair will
//! say something, runs the core's repair and checks again.
//!
//! Unlike qemu-img, an overlap is one corruption per entry (not per overlapping
//! cluster), `-r leaks` repairs no corruption (it refuses, as for FVD), and a repair
//! releases leaked clusters: those before used ones by moving the data clusters and L2
//! tables after them down into them, then all of them by truncating the file.

use super::drive::{self, Event, Files, Lists, Show, Target, WORK_MEMORY};
use super::repair::open_writable;
use super::report::{self, Outcome};
use super::{RepairMode, EXIT_CORRUPT, EXIT_LEAKS};
use crate::cli::error::CliError;
use crate::cli::image_format::ImageFormat;
use crate::cli::output::OutputFormat;
use crate::cli::qed::{open_qed, open_qed_as, QedImage};
use crate::host::lock::Usage;
use fvd_core::check::qed::{memory_needed, plan, QedCheck, QedProblem, QedSummary};
use fvd_core::check::{Checker, Finding, Report};
use std::io::Write;
use std::path::Path;

fn memory(image: &QedImage) -> Vec<u8> {
    vec![0u8; WORK_MEMORY.max(memory_needed(&image.layout))]
}

fn target(image: &QedImage) -> Target<'_> {
    Target {
        file: &image.host.file,
        path: &image.path,
    }
}

fn invalid(path: &Path, err: fvd_core::check::CheckError) -> CliError {
    CliError::Invalid(format!("'{}': {err}", path.display()))
}

/// Checks `image`.
fn check(image: &QedImage, show: Show<'_>) -> Result<(QedSummary, Lists), CliError> {
    let scanner = QedCheck::new(image.header.bytes(), image.host.len, memory(image))
        .map_err(|e| invalid(&image.path, e))?;
    let cs = image.layout.cluster_size;
    let files = Files {
        image: target(image),
        data: None,
    };
    let print = |event, out: &mut dyn Write| print_event(event, cs, out);
    match drive::check(Checker::Qed(scanner), &files, show, &print)? {
        (Report::Qed(summary), lists) => Ok((summary, lists)),
        _ => Err(CliError::Invalid("the check ended without a report".into())),
    }
}

/// What one check of a QED image found: the first findings (at most
/// [`report::MAX_LISTED`]) and the numbers.
#[derive(Clone, Debug)]
pub struct QedAnalysis {
    /// Corruptions, in table order.
    pub problems: Vec<QedProblem>,
    /// The numbers.
    pub summary: QedSummary,
}

/// Checks the QED image `image` and keeps its first findings (for tools and tests).
pub fn analyze(image: &QedImage) -> Result<QedAnalysis, CliError> {
    let (summary, lists) = check(image, Show::Collect)?;
    let problems = lists
        .findings
        .items
        .iter()
        .filter_map(|f| match f {
            Finding::Qed(p) => Some(*p),
            _ => None,
        })
        .collect();
    Ok(QedAnalysis { problems, summary })
}

fn print_event(event: Event, cs: u64, out: &mut dyn Write) -> std::io::Result<()> {
    match event {
        Event::Finding(f) => writeln!(out, "ERROR {f}"),
        Event::Leak(start, end) => {
            let offset = start * cs;
            if end - start == 1 {
                writeln!(
                    out,
                    "Leaked cluster {start} (offset {offset}): nothing references it"
                )
            } else {
                writeln!(
                    out,
                    "Leaked clusters {start}-{} (offset {offset}): nothing references them",
                    end - 1
                )
            }
        }
        Event::Repaired(_) => Ok(()),
    }
}

fn notes(s: &QedSummary, out: &mut dyn Write) -> Result<(), CliError> {
    if s.counts.dirty {
        writeln!(
            out,
            "Image has the need-check flag set (it was not closed cleanly)"
        )
        .map_err(CliError::Output)?;
    }
    Ok(())
}

/// The closing summary: qemu-img counts the fragmented share of the allocated clusters.
fn summary(s: &QedSummary, out: &mut dyn Write) -> Result<(), CliError> {
    report::summary(&s.counts, false, s.counts.allocated_clusters, out)
}

/// The JSON report of the (last) check, with the repair's outcome when there was one.
fn json(
    filename: &str,
    s: &QedSummary,
    lists: &Lists,
    outcome: Option<&Outcome>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    report::json(
        filename,
        ImageFormat::Qed,
        s.counts,
        None,
        lists,
        outcome,
        out,
    )
}

fn status(s: &QedSummary) -> u8 {
    if s.counts.corruptions > 0 {
        EXIT_CORRUPT
    } else if s.counts.leaks > 0 {
        EXIT_LEAKS
    } else {
        0
    }
}

/// Runs `fvd-img check` on a QED image: the report goes to `out`; an exit status other
/// than 0 comes back as [`CliError::Exit`] after the report is written.
pub fn run(
    path: &Path,
    repair_mode: Option<RepairMode>,
    output: OutputFormat,
    usage: Usage,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // Refuse before reading anything, so a read-only image is never half-repaired; the
    // image stays locked for writing until the repair is over.
    let held = match repair_mode {
        Some(_) => Some(open_writable(path, "image")?),
        None => None,
    };
    let image = open_qed_as(path, usage)?;
    let filename = path.to_string_lossy();
    let human = output == OutputFormat::Human;
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let (Some(mode), Some(held)) = (repair_mode, held) else {
        let last = if human {
            let (s, _) = check(&image, Show::Print(&mut out))?;
            notes(&s, &mut out)?;
            summary(&s, &mut out)?;
            s
        } else {
            let (s, lists) = check(&image, Show::Collect)?;
            json(&filename, &s, &lists, None, &mut out)?;
            s
        };
        return super::finish(out, status(&last));
    };
    let (first, lists) = check(&image, if human { Show::Silent } else { Show::Collect })?;
    let plan = plan(&first, mode.into());
    if let Some(refusal) = plan.refused {
        if human {
            check(&image, Show::Print(&mut out))?;
            notes(&first, &mut out)?;
            writeln!(out, "{refusal}").map_err(CliError::Output)?;
            summary(&first, &mut out)?;
        } else {
            let outcome = Outcome::refused(refusal);
            json(&filename, &first, &lists, Some(&outcome), &mut out)?;
        }
        return super::finish(out, status(&first));
    }
    if human && plan.has_actions {
        check(&image, Show::Print(&mut out))?;
        notes(&first, &mut out)?;
    }
    let scanner = QedCheck::repair(image.header.bytes(), image.host.len, memory(&image), plan)
        .map_err(|e| invalid(path, e))?;
    let files = Files {
        image: Target { file: &held, path },
        data: None,
    };
    let mut outcome = Outcome::default();
    let report = drive::run(&mut Checker::Qed(scanner), &files, &mut |event| {
        if let Event::Repaired(r) = event {
            let line = report::repair_line(&r, path);
            if human {
                writeln!(out, "{line}").map_err(CliError::Output)?;
            }
            outcome.lines.push(line);
        }
        Ok(())
    })?;
    if let Report::Repaired(counts) = report {
        outcome.counts = counts;
    }
    drop(image);
    let image = open_qed(path)?;
    if !human {
        let (last, lists) = check(&image, Show::Collect)?;
        json(&filename, &last, &lists, Some(&outcome), &mut out)?;
        return super::finish(out, status(&last));
    }
    if outcome.lines.count() > 0 {
        report::repairs_summary(outcome.counts, &mut out)?;
    }
    let (last, _) = check(&image, Show::Print(&mut out))?;
    notes(&last, &mut out)?;
    if last.counts.leaks > 0 {
        writeln!(
            out,
            "The remaining leaked clusters lie before used ones that could not be moved into \
             them (an L2 table needs a run of free clusters), so they cannot be truncated away."
        )
        .map_err(CliError::Output)?;
    }
    summary(&last, &mut out)?;
    super::finish(out, status(&last))
}
