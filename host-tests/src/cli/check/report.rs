//! How `check` prints what the core scanner reports: text laid out like qemu-img
//! check's, each finding written as it comes, and JSON with qemu-img's keys (counts) plus
//! this tool's own (bounded lists of findings, leaks and repair lines).

use crate::cli::error::CliError;
use crate::cli::image_format::ImageFormat;
use fvd_core::check::{CheckCounts, FixAction, Repair, RepairCounts, RepairRefusal};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

/// Findings, leaked runs and repair lines listed in JSON at most (counts are always
/// complete).
pub const MAX_LISTED: usize = 1000;

/// A JSON list of at most [`MAX_LISTED`] items and the count of those left out.
#[derive(Clone, Debug, Default)]
pub struct Listed {
    /// The items kept.
    pub items: Vec<Value>,
    /// Items left out.
    pub omitted: u64,
}

impl Listed {
    /// Keeps `item` while there is room, counts it otherwise.
    pub fn push(&mut self, item: Value) {
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

    /// Puts the list under `key` in `top`, and the count left out under `key-omitted`
    /// when there is one.
    pub fn insert_into(self, top: &mut Map<String, Value>, key: &str) {
        top.insert(key.into(), Value::Array(self.items));
        if self.omitted > 0 {
            top.insert(format!("{key}-omitted"), self.omitted.into());
        }
    }
}

/// What a repair did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Its lines, in order (every line also went out as it was made).
    pub lines: Listed,
    /// Corruptions repaired and leaks released.
    pub counts: RepairCounts,
    /// Why nothing was repaired, when that was refused.
    pub refused: Option<String>,
}

impl Outcome {
    /// An outcome that refused to repair, and why.
    pub fn refused(why: RepairRefusal) -> Self {
        Outcome {
            refused: Some(why.to_string()),
            ..Outcome::default()
        }
    }

    /// Puts the repair's counts-independent keys into a JSON report.
    pub fn insert_into(self, top: &mut Map<String, Value>) {
        self.lines.insert_into(top, "repairs");
        if let Some(refused) = self.refused {
            top.insert("repair-refused".into(), refused.into());
        }
    }
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
        Repair::MarkedClean => "Marked the image clean".into(),
        Repair::ClearedNeedCheck => "Cleared the need-check flag".into(),
        other => format!("{other:?}"),
    }
}

/// The closing summary. `reused`: leaks remain after a repair and the next writes reuse
/// them (FVD). `fragmented_of`: what the fragmented share is a share of (FVD: all
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
             They lie below mapped chunks, so they cannot be released from the data storage."
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

/// The JSON object `qemu-img check --output json` starts with, for `format`.
pub fn qemu_check_object(
    filename: &str,
    format: ImageFormat,
    c: &CheckCounts,
    fixed: Option<RepairCounts>,
) -> Map<String, Value> {
    let fixed = fixed.unwrap_or_default();
    let mut top = Map::new();
    top.insert("filename".into(), filename.into());
    top.insert("format".into(), format.name().into());
    top.insert("check-errors".into(), 0.into());
    top.insert("image-end-offset".into(), c.image_end_offset.into());
    top.insert("total-clusters".into(), c.total_clusters.into());
    top.insert("allocated-clusters".into(), c.allocated_clusters.into());
    top.insert("fragmented-clusters".into(), c.fragmented_clusters.into());
    top.insert("corruptions".into(), c.corruptions.into());
    top.insert("leaks".into(), c.leaks.into());
    top.insert("corruptions-fixed".into(), fixed.corruptions_fixed.into());
    top.insert("leaks-fixed".into(), fixed.leaks_fixed.into());
    top.insert("dirty".into(), c.dirty.into());
    top
}

/// A finding as a JSON list item.
pub fn finding_item(finding: &fvd_core::check::Finding) -> Value {
    serde_json::json!({"kind": finding.kind(), "message": finding.to_string()})
}

/// A leaked run as a JSON list item.
pub fn leak_item(start: u64, end: u64) -> Value {
    serde_json::json!({"start": start, "count": end - start})
}
