//! The JSON document of a consistency check (`fvd-img check --output json`, the
//! inspector's check export): qemu-img check's keys with their counts (a zero count
//! left out, as qemu-img leaves it out), then this
//! project's own — the first [`MAX_LISTED`] findings and leaked runs, FVD's journal and
//! bitmap numbers, and a repair's lines. Hosts collect what the scanner reports and hand
//! it here; the keys, their order and their values are decided only here.

use super::json::JsonWriter;
use crate::check::{CheckCounts, Finding, RepairCounts};
use core::fmt::{self, Write};

/// Findings, leaked runs and repair lines a report lists at most (its counts are always
/// complete; the number left out is given as `KEY-omitted`).
pub const MAX_LISTED: usize = 1000;

/// FVD's numbers beyond qemu-img's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FvdFacts {
    /// Records in the journal's valid sectors.
    pub journal_records: u64,
    /// Valid journal sectors of the current epoch.
    pub journal_sectors: u64,
    /// Blocks whose data is in the image, and still in the base (images with a base).
    pub bitmap: Option<(u64, u64)>,
}

/// What a repair did, for the report of the check after it.
#[derive(Clone, Copy)]
pub struct RepairFacts<'a> {
    /// Corruptions repaired and leaks released.
    pub counts: RepairCounts,
    /// Its first lines.
    pub lines: &'a [&'a str],
    /// Lines left out of `lines`.
    pub lines_omitted: u64,
    /// Why nothing was repaired, when the repair was refused.
    pub refused: Option<&'a dyn fmt::Display>,
}

/// Everything a check report says.
#[derive(Clone, Copy)]
pub struct CheckFacts<'a> {
    /// The image's name as the host knows it.
    pub filename: &'a str,
    /// `fvd` or `qed`.
    pub format: &'a str,
    /// The scanner's counts.
    pub counts: CheckCounts,
    /// FVD's own numbers (`None` for QED).
    pub fvd: Option<FvdFacts>,
    /// The first findings.
    pub findings: &'a [Finding],
    /// Findings left out of `findings`.
    pub findings_omitted: u64,
    /// The first leaked runs, `[start, end)` in chunks or clusters.
    pub leaks: &'a [(u64, u64)],
    /// Runs left out of `leaks`.
    pub leaks_omitted: u64,
    /// The repair before this check, if there was one.
    pub repair: Option<RepairFacts<'a>>,
}

/// Writes the pretty-printed JSON report of `facts` to `out`.
pub fn write_check(out: &mut impl Write, facts: &CheckFacts<'_>) -> fmt::Result {
    let c = &facts.counts;
    let fixed = facts.repair.map(|r| r.counts).unwrap_or_default();
    let mut j = JsonWriter::new(out);
    j.begin_object()?;
    j.member_str("filename", facts.filename)?;
    j.member_str("format", facts.format)?;
    j.member_u64("check-errors", 0)?;
    // qemu-img's counters, under its rule: a counter that is zero is left out, so a
    // script that asks whether "corruptions" is there reads our report as it reads its.
    for (key, value) in [
        ("image-end-offset", c.image_end_offset),
        ("total-clusters", c.total_clusters),
        ("allocated-clusters", c.allocated_clusters),
        ("fragmented-clusters", c.fragmented_clusters),
        ("corruptions", c.corruptions),
        ("leaks", c.leaks),
        ("corruptions-fixed", fixed.corruptions_fixed),
        ("leaks-fixed", fixed.leaks_fixed),
    ] {
        if value != 0 {
            j.member_u64(key, value)?;
        }
    }
    j.member_bool("dirty", c.dirty)?;
    if let Some(fvd) = &facts.fvd {
        j.member_u64("journal-records", fvd.journal_records)?;
        j.member_u64("journal-sectors", fvd.journal_sectors)?;
    }
    j.key("findings")?;
    j.begin_array()?;
    for finding in facts.findings.iter().take(MAX_LISTED) {
        j.begin_object()?;
        j.member_str("kind", finding.kind())?;
        j.key("message")?;
        j.display(finding)?;
        j.end_object()?;
    }
    j.end_array()?;
    omitted(
        &mut j,
        "findings-omitted",
        facts.findings,
        facts.findings_omitted,
    )?;
    // One name for both formats, in qemu-img's word (its reports count leaked clusters;
    // for FVD a cluster is a chunk of the data storage).
    j.key("leaked-clusters")?;
    j.begin_array()?;
    for &(start, end) in facts.leaks.iter().take(MAX_LISTED) {
        j.begin_object()?;
        j.member_u64("start", start)?;
        j.member_u64("count", end.saturating_sub(start))?;
        j.end_object()?;
    }
    j.end_array()?;
    omitted(
        &mut j,
        "leaked-clusters-omitted",
        facts.leaks,
        facts.leaks_omitted,
    )?;
    if let Some((in_image, in_base)) = facts.fvd.and_then(|f| f.bitmap) {
        j.member_u64("blocks-in-image", in_image)?;
        j.member_u64("blocks-in-base", in_base)?;
    }
    if let Some(repair) = &facts.repair {
        j.key("repairs")?;
        j.begin_array()?;
        for line in repair.lines.iter().take(MAX_LISTED) {
            j.str(line)?;
        }
        j.end_array()?;
        omitted(
            &mut j,
            "repairs-omitted",
            repair.lines,
            repair.lines_omitted,
        )?;
        if let Some(why) = repair.refused {
            j.key("repair-refused")?;
            j.display(why)?;
        }
    }
    j.end_object()
}

/// `key` with the number of items left out of a list, when there are any (those past
/// [`MAX_LISTED`] in `items` count too).
fn omitted<W: Write, T>(
    j: &mut JsonWriter<'_, W>,
    key: &str,
    items: &[T],
    left_out: u64,
) -> fmt::Result {
    let extra = items.len().saturating_sub(MAX_LISTED) as u64;
    let total = left_out.saturating_add(extra);
    if total > 0 {
        j.member_u64(key, total)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn report(counts: CheckCounts, repaired: Option<RepairCounts>) -> String {
        let lines: [&str; 0] = [];
        let facts = CheckFacts {
            filename: "a.qed",
            format: "qed",
            counts,
            fvd: None,
            findings: &[],
            findings_omitted: 0,
            leaks: &[],
            leaks_omitted: 0,
            repair: repaired.map(|counts| RepairFacts {
                counts,
                lines: &lines,
                lines_omitted: 0,
                refused: None,
            }),
        };
        let mut text = String::new();
        write_check(&mut text, &facts).unwrap();
        text
    }

    #[test]
    fn zero_counters_are_left_out_as_qemu_img_leaves_them_out() {
        let clean = report(
            CheckCounts {
                total_clusters: 64,
                ..CheckCounts::default()
            },
            None,
        );
        assert!(clean.contains("\"check-errors\": 0"), "{clean}");
        assert!(clean.contains("\"total-clusters\": 64"), "{clean}");
        for key in [
            "image-end-offset",
            "allocated-clusters",
            "fragmented-clusters",
            "\"corruptions\"",
            "\"leaks\"",
            "corruptions-fixed",
            "leaks-fixed",
        ] {
            assert!(!clean.contains(key), "{key} in {clean}");
        }
        let damaged = report(
            CheckCounts {
                total_clusters: 64,
                corruptions: 2,
                leaks: 3,
                ..CheckCounts::default()
            },
            Some(RepairCounts {
                corruptions_fixed: 0,
                leaks_fixed: 3,
            }),
        );
        assert!(damaged.contains("\"corruptions\": 2"), "{damaged}");
        assert!(damaged.contains("\"leaks\": 3"), "{damaged}");
        assert!(damaged.contains("\"leaks-fixed\": 3"), "{damaged}");
        assert!(!damaged.contains("corruptions-fixed"), "{damaged}");
    }
}
