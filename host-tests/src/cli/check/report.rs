//! How `check` prints what the core scanner reports: text laid out like qemu-img
//! check's, each finding written as it comes, and JSON with qemu-img's keys (counts) plus
//! this tool's own (bounded lists of findings, leaks and repair lines), written by core's
//! `report::check` (the document the browser inspector exports too).

use super::drive::Lists;
use crate::cli::error::CliError;
use crate::cli::image_format::ImageFormat;
use fvd_core::check::{CheckCounts, FixAction, Repair, RepairCounts, RepairRefusal};
pub use fvd_core::report::check::MAX_LISTED;
use fvd_core::report::check::{write_check, CheckFacts, FvdFacts, RepairFacts};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

/// A list of at most [`MAX_LISTED`] items and the count of those left out.
#[derive(Clone, Debug)]
pub struct Listed<T> {
    /// The items kept.
    pub items: Vec<T>,
    /// Items left out.
    pub omitted: u64,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed {
            items: Vec::new(),
            omitted: 0,
        }
    }
}

impl<T> Listed<T> {
    /// Keeps `item` while there is room, counts it otherwise.
    pub fn push(&mut self, item: T) {
        if self.items.len() < MAX_LISTED {
            self.items.push(item);
        } else {
            self.omitted += 1;
        }
    }

    /// Items seen in all.
    pub fn count(&self) -> u64 {
        self.items.len() as u64 + self.omitted
    }
}

/// What a repair did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Its lines, in order (every line also went out as it was made).
    pub lines: Listed<String>,
    /// Corruptions repaired and leaks released.
    pub counts: RepairCounts,
    /// Why nothing was repaired, when that was refused.
    pub refused: Option<RepairRefusal>,
}

impl Outcome {
    /// An outcome that refused to repair, and why.
    pub fn refused(why: RepairRefusal) -> Self {
        Outcome {
            refused: Some(why),
            ..Outcome::default()
        }
    }
}

/// The JSON report (core's `report::check` document) of a check whose scanner counted
/// `counts`, found `lists` and (FVD) `fvd`, after the repair `outcome` if there was one.
pub fn json(
    filename: &str,
    format: ImageFormat,
    counts: CheckCounts,
    fvd: Option<FvdFacts>,
    lists: &Lists,
    outcome: Option<&Outcome>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let lines: Vec<&str> = outcome
        .map(|o| o.lines.items.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let facts = CheckFacts {
        filename,
        format: format.name(),
        counts,
        fvd,
        findings: &lists.findings.items,
        findings_omitted: lists.findings.omitted,
        leaks: &lists.leaks.items,
        leaks_omitted: lists.leaks.omitted,
        repair: outcome.map(|o| RepairFacts {
            counts: o.counts,
            lines: &lines,
            lines_omitted: o.lines.omitted,
            refused: o.refused.as_ref().map(|r| r as &dyn std::fmt::Display),
        }),
    };
    let mut text = String::new();
    write_check(&mut text, &facts)
        .map_err(|_| CliError::Invalid("the report could not be written".into()))?;
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// The line a repair step is reported by; `storage` names the file released storage
/// belongs to.
pub fn repair_line(repair: &Repair, storage: &Path) -> String {
    match *repair {
        Repair::Replaying { records, sectors } => {
            format!("Replaying {records} journal record(s) from {sectors} sector(s)")
        }
        Repair::Fixed { finding, action } => match action {
            FixAction::Replayed => format!("Repairing {finding}: replayed them"),
            FixAction::KeptMetadata => format!(
                "Repairing {finding}: the checked metadata is kept and the image marked clean"
            ),
            FixAction::DroppedRecord => format!("Repairing {finding}: dropped the record"),
            FixAction::Unmapped => match finding {
                fvd_core::check::Finding::Fvd(p) => format!(
                    "Repairing chunk {}: unmapped, its data is lost ({p})",
                    p.chunk().unwrap_or(0)
                ),
                other => format!("Repairing {other}: unmapped"),
            },
            FixAction::ClearedBits => {
                format!("Repairing the bitmap: cleared the stray bits ({finding})")
            }
            FixAction::ZeroedL1 => format!(
                "Repairing {finding}: entry set to 0 (the guest range it mapped is unallocated now)"
            ),
            FixAction::ZeroedL2 => {
                format!("Repairing {finding}: entry set to 0 (the cluster is unallocated now)")
            }
            other => format!("Repairing {finding}: {other:?}"),
        },
        Repair::ReleasedStorage { bytes, len, .. } => format!(
            "Released {bytes} bytes of data storage past the last mapped chunk ('{}' is now {len} bytes)",
            storage.display()
        ),
        Repair::ReleasedClusters { clusters, len } => format!(
            "Released {clusters} leaked cluster(s) at the end of the file ('{}' is now {len} bytes)",
            storage.display()
        ),
        Repair::RelocatedChunks { chunks } => format!(
            "Relocated {chunks} chunk(s) into leaked chunks below them (their table entries rewritten)"
        ),
        Repair::RelocatedClusters { clusters, tables } => format!(
            "Relocated {clusters} data cluster(s) and {tables} L2 table(s) into leaked clusters before them"
        ),
        Repair::MarkedClean => "Marked the image clean".into(),
        Repair::ClearedNeedCheck => "Cleared the need-check flag".into(),
        other => format!("{other:?}"),
    }
}

/// The closing summary. `reused`: leaks remain after a repair (which relocates what it
/// can) and the next writes reuse them (FVD). `fragmented_of`: what the fragmented share is a share of (FVD: all
/// clusters; QED, as qemu-img: the allocated ones).
pub fn summary(
    c: &CheckCounts,
    reused: bool,
    fragmented_of: u64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut text = String::new();
    let (corruptions, leaks) = (c.corruptions, c.leaks);
    if corruptions == 0 && leaks == 0 {
        text.push_str("No errors were found on the image.\n");
    }
    if corruptions > 0 {
        let _ = writeln!(
            text,
            "\n{corruptions} errors were found on the image.\n\
             Data may be corrupted, or further writes to the image may corrupt it."
        );
    }
    if leaks > 0 && reused {
        let _ = writeln!(
            text,
            "\n{leaks} leaked clusters will be reused by the next writes.\n\
             They lie below mapped chunks and the data storage cannot be shortened (it is not \
             a regular file), so they were not relocated."
        );
    } else if leaks > 0 {
        let _ = writeln!(
            text,
            "\n{leaks} leaked clusters were found on the image.\n\
             This means waste of disk space, but no harm to data."
        );
    }
    if c.total_clusters != 0 && c.allocated_clusters != 0 {
        let percent = |n: u64, of: u64| n as f64 * 100.0 / of as f64;
        let _ = writeln!(
            text,
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, 0.00% compressed clusters",
            c.allocated_clusters,
            c.total_clusters,
            percent(c.allocated_clusters, c.total_clusters),
            percent(c.fragmented_clusters, fragmented_of)
        );
    }
    if c.image_end_offset != 0 {
        let _ = writeln!(text, "Image end offset: {}", c.image_end_offset);
    }
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// The counts of a repair in qemu-img's words and the announcement of the second check
/// (after the repair's own lines).
pub fn repairs_summary(counts: RepairCounts, out: &mut dyn Write) -> Result<(), CliError> {
    let mut text = String::new();
    let (corruptions, leaks) = (counts.corruptions_fixed, counts.leaks_fixed);
    if corruptions > 0 || leaks > 0 {
        let _ = write!(
            text,
            "The following inconsistencies were found and repaired:\n\n    \
             {leaks} leaked clusters\n    {corruptions} corruptions\n\n"
        );
    }
    text.push_str("Double checking the fixed image now...\n");
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}
