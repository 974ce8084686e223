//! How `check` prints what it found: text laid out like qemu-img check's, each finding
//! written as it is found again, and JSON with qemu-img's keys (counts) plus this tool's
//! own (a bounded list of findings).

use super::analysis::{for_each_leak, for_each_problem, Analysis};
use super::load::Loaded;
use super::repair::Outcome;
use crate::cli::error::CliError;
use crate::cli::image_format::ImageFormat;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::io::Write;

/// Writes the lines naming each problem and leak of `a` (found in `image`) as they are
/// found again, then the notes about the image's state.
pub fn findings(image: &Loaded, a: &Analysis, out: &mut dyn Write) -> Result<(), CliError> {
    let output = CliError::Output;
    for_each_problem(image, a, &mut |problem| {
        writeln!(out, "ERROR {problem}").map_err(output)
    })?;
    for_each_leak(image, a, &mut |start, end| {
        if end - start == 1 {
            writeln!(out, "Leaked chunk {start}: no table entry maps it")
        } else {
            writeln!(
                out,
                "Leaked chunks {start}-{}: no table entry maps them",
                end - 1
            )
        }
        .map_err(output)
    })?;
    let mut text = String::new();
    if a.dirty && a.journal.sectors > 0 {
        let _ = writeln!(
            text,
            "Image is dirty; journal has {} records to replay (checked with them applied)",
            a.journal.records
        );
    } else if a.dirty {
        let _ = writeln!(
            text,
            "Image is dirty (not closed cleanly); journal has no records to replay"
        );
    }
    if let Some(bitmap) = &a.bitmap {
        let _ = writeln!(
            text,
            "Bitmap: {} block(s) in the image, {} still in the base",
            bitmap.in_image, bitmap.in_base
        );
    }
    out.write_all(text.as_bytes()).map_err(output)
}

/// Writes the closing summary. After a repair, remaining leaks are those the engine
/// reuses.
pub fn summary(a: &Analysis, repaired: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let mut text = String::new();
    let corruptions = a.corruptions;
    let leaks = a.leaks();
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
    if leaks > 0 && repaired {
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
    if a.total_clusters != 0 && a.allocated_clusters != 0 {
        let percent = |n: u64| n as f64 * 100.0 / a.total_clusters as f64;
        let _ = writeln!(
            text,
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, 0.00% compressed clusters",
            a.allocated_clusters,
            a.total_clusters,
            percent(a.allocated_clusters),
            percent(a.fragmented_clusters)
        );
    }
    if a.image_end_offset != 0 {
        let _ = writeln!(text, "Image end offset: {}", a.image_end_offset);
    }
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// What a repair did, in qemu-img's words, followed by the announcement of the second check.
pub fn repairs_done(lines: &[String], corruptions_fixed: u64, leaks_fixed: u64, text: &mut String) {
    for line in lines {
        let _ = writeln!(text, "{line}");
    }
    repairs_summary(corruptions_fixed, leaks_fixed, text);
}

/// The counts of a repair in qemu-img's words and the announcement of the second check
/// (after the repair's own lines).
pub fn repairs_summary(corruptions_fixed: u64, leaks_fixed: u64, text: &mut String) {
    if corruptions_fixed > 0 || leaks_fixed > 0 {
        let _ = write!(
            text,
            "The following inconsistencies were found and repaired:\n\n    \
             {leaks_fixed} leaked clusters\n    {corruptions_fixed} corruptions\n\n"
        );
    }
    text.push_str("Double checking the fixed image now...\n");
}

/// The counts every check report carries under qemu-img's names.
pub struct CheckCounts {
    /// End of the last used cluster or chunk.
    pub image_end_offset: u64,
    /// Clusters (or chunks) of the virtual disk.
    pub total_clusters: u64,
    /// Of those, the allocated ones.
    pub allocated_clusters: u64,
    /// Of those, the ones not stored right after their predecessor.
    pub fragmented_clusters: u64,
    /// Corruptions found.
    pub corruptions: u64,
    /// Leaked clusters (or chunks) found.
    pub leaks: u64,
    /// Corruptions and leaks the repair fixed.
    pub fixed: Option<(u64, u64)>,
    /// The image was not closed cleanly.
    pub dirty: bool,
}

/// The JSON object `qemu-img check --output json` starts with, for `format`.
pub fn qemu_check_object(
    filename: &str,
    format: ImageFormat,
    c: &CheckCounts,
) -> Map<String, Value> {
    let (corruptions_fixed, leaks_fixed) = c.fixed.unwrap_or((0, 0));
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
    top.insert("corruptions-fixed".into(), corruptions_fixed.into());
    top.insert("leaks-fixed".into(), leaks_fixed.into());
    top.insert("dirty".into(), c.dirty.into());
    top
}

/// Findings and leaked runs listed in JSON at most (the counts are always complete).
pub const MAX_LISTED: usize = 1000;

/// The JSON report of the (last) check `a` of `image`, with the repair's counts when there
/// was one. Findings and leaked runs are listed up to [`MAX_LISTED`] each; past that,
/// `findings-omitted` and `leaked-chunks-omitted` say how many were left out.
pub fn json(filename: &str, image: &Loaded, a: &Analysis, outcome: Option<&Outcome>) -> Value {
    let counts = CheckCounts {
        image_end_offset: a.image_end_offset,
        total_clusters: a.total_clusters,
        allocated_clusters: a.allocated_clusters,
        fragmented_clusters: a.fragmented_clusters,
        corruptions: a.corruptions,
        leaks: a.leaks(),
        fixed: outcome.map(|o| (o.corruptions_fixed, o.leaks_fixed)),
        dirty: a.dirty,
    };
    let mut top = qemu_check_object(filename, ImageFormat::Fvd, &counts);
    top.insert("journal-records".into(), a.journal.records.into());
    top.insert("journal-sectors".into(), a.journal.sectors.into());
    let mut findings = Vec::new();
    let mut omitted = 0u64;
    let _ = for_each_problem::<()>(image, a, &mut |p| {
        if findings.len() < MAX_LISTED {
            findings.push(json!({"kind": p.kind(), "message": p.to_string()}));
        } else {
            omitted += 1;
        }
        Ok(())
    });
    top.insert("findings".into(), Value::Array(findings));
    if omitted > 0 {
        top.insert("findings-omitted".into(), omitted.into());
    }
    let mut leaks = Vec::new();
    let mut omitted = 0u64;
    let _ = for_each_leak::<()>(image, a, &mut |start, end| {
        if leaks.len() < MAX_LISTED {
            leaks.push(json!({"start": start, "count": end - start}));
        } else {
            omitted += 1;
        }
        Ok(())
    });
    top.insert("leaked-chunks".into(), Value::Array(leaks));
    if omitted > 0 {
        top.insert("leaked-chunks-omitted".into(), omitted.into());
    }
    if let Some(bitmap) = &a.bitmap {
        top.insert("blocks-in-image".into(), bitmap.in_image.into());
        top.insert("blocks-in-base".into(), bitmap.in_base.into());
    }
    if let Some(outcome) = outcome {
        let lines: Vec<Value> = outcome.lines.iter().map(|l| l.as_str().into()).collect();
        top.insert("repairs".into(), Value::Array(lines));
        if outcome.lines_omitted > 0 {
            top.insert("repairs-omitted".into(), outcome.lines_omitted.into());
        }
        if let Some(refused) = &outcome.refused {
            top.insert("repair-refused".into(), refused.as_str().into());
        }
    }
    Value::Object(top)
}
