//! `fvd-img check` for QED images, with plain std I/O and no engine: the L1 table and
//! every L2 table it names are read and each entry is checked against the file and
//! against every other reference, the way `qemu-img check` judges a QED image.
//!
//! Corruptions: an L1 or L2 entry that is not cluster aligned, points into the header
//! area or past the end of the file, an L1 entry holding the zero-cluster marker 1, and
//! L2 tables or data clusters that overlap each other, the header or the L1 table (the
//! reference met later in table order is the one reported). An L2 table that is itself
//! corrupt is not walked. Leaks: clusters from the end of the header area to the end of
//! the file (rounded up to a cluster) that nothing references.
//!
//! Counts follow qemu-img where it is right: allocated and fragmented clusters count
//! every L2 entry other than 0 and 1, invalid ones included, with fragmentation measured
//! within each L2 table. Unlike qemu-img, an overlap is one corruption per entry (not per
//! overlapping cluster), `-r leaks` repairs no corruption (it refuses, as for FVD), and a
//! repair also truncates leaked clusters at the end of the file away.
//!
//! Repairs are ordered for crash safety: the need-check bit is set (and flushed) before
//! any table entry changes, invalid entries are set to 0 (flushed), the file is truncated
//! past its last used cluster, and only then is the need-check bit cleared (flushed).

use super::repair::open_writable;
use super::report::{qemu_check_object, repairs_done, CheckCounts};
use super::{RepairMode, EXIT_CORRUPT, EXIT_LEAKS};
use crate::cli::error::CliError;
use crate::cli::image_format::ImageFormat;
use crate::cli::output::{write_json, OutputFormat};
use crate::cli::qed::{open_qed, open_qed_as, read_table, QedImage};
use crate::lock::Usage;
use fvd_core::qed::{features, table, L1Entry, L2Entry, QedLayout};
use serde_json::{json, Value};
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::Write;
use std::mem::offset_of;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What holds a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The header area.
    Header,
    /// The L1 table.
    L1Table,
    /// The L2 table named by this L1 entry.
    L2Table {
        /// The L1 index.
        l1: u64,
    },
    /// The data cluster of this guest offset.
    Data {
        /// Guest offset of the cluster.
        guest: u64,
    },
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Header => write!(f, "the header area"),
            Owner::L1Table => write!(f, "the L1 table"),
            Owner::L2Table { l1 } => write!(f, "the L2 table of L1 entry {l1}"),
            Owner::Data { guest } => write!(f, "the data cluster of guest offset {guest}"),
        }
    }
}

/// Which table entry a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// L1 entry `index`.
    L1 {
        /// The L1 index.
        index: u64,
    },
    /// Entry `index` of the L2 table named by L1 entry `l1`.
    L2 {
        /// The L1 index naming the table.
        l1: u64,
        /// The L2 index.
        index: u64,
        /// The guest offset the entry maps.
        guest: u64,
    },
}

/// What is wrong with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Not a multiple of the cluster size.
    Misaligned,
    /// The zero-cluster marker 1, which means nothing in the L1 table.
    ZeroMarkerInL1,
    /// Inside the header area.
    InHeader,
    /// Past the end of the file (for an L2 table: not wholly inside it).
    PastEnd,
    /// Its clusters are already used by something else.
    Overlap(Owner),
    /// The L2 table it names holds this many entries no writer produces (misaligned or
    /// inside the header): whatever lies there is not a table, perhaps guest data.
    NotATable(u64),
}

/// One corruption: a table entry that must not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QedProblem {
    /// The entry.
    pub place: Place,
    /// Its raw value.
    pub value: u64,
    /// Byte offset of the entry in the file (where a repair writes 0).
    pub entry_at: u64,
    /// What is wrong.
    pub fault: Fault,
    /// The file's length, for the message.
    pub file_len: u64,
    /// The cluster size, for the message.
    pub cluster_size: u64,
}

impl QedProblem {
    /// A stable name for JSON output.
    pub fn kind(&self) -> &'static str {
        match (self.place, self.fault) {
            (Place::L1 { .. }, Fault::Misaligned) => "l1-entry-misaligned",
            (_, Fault::ZeroMarkerInL1) => "l1-entry-zero-marker",
            (Place::L1 { .. }, Fault::InHeader) => "l1-entry-in-header",
            (Place::L1 { .. }, Fault::PastEnd) => "l1-entry-past-end",
            (Place::L1 { .. }, Fault::Overlap(_)) => "l2-table-overlap",
            (Place::L2 { .. }, Fault::Misaligned) => "l2-entry-misaligned",
            (Place::L2 { .. }, Fault::InHeader) => "l2-entry-in-header",
            (Place::L2 { .. }, Fault::PastEnd) => "l2-entry-past-end",
            (Place::L2 { .. }, Fault::Overlap(_)) => "data-cluster-overlap",
            (_, Fault::NotATable(_)) => "l1-entry-not-a-table",
        }
    }
}

impl fmt::Display for QedProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value;
        match self.place {
            Place::L1 { index } => write!(f, "L1 entry {index} ({value:#x}): ")?,
            Place::L2 { l1, index, guest } => write!(
                f,
                "L2 entry {index} of L1 entry {l1} (guest offset {guest}, {value:#x}): "
            )?,
        }
        let what = match self.place {
            Place::L1 { .. } => "the L2 table",
            Place::L2 { .. } => "the data cluster",
        };
        match self.fault {
            Fault::Misaligned => write!(
                f,
                "not a multiple of the cluster size {}",
                self.cluster_size
            ),
            Fault::ZeroMarkerInL1 => {
                write!(f, "the zero-cluster marker is not valid in the L1 table")
            }
            Fault::InHeader => write!(f, "{what} lies inside the header area"),
            Fault::PastEnd => write!(
                f,
                "{what} lies past the end of the {}-byte file",
                self.file_len
            ),
            Fault::Overlap(owner) => write!(f, "{what} overlaps {owner}"),
            Fault::NotATable(bad) => write!(
                f,
                "{what} holds {bad} entries no writer produces (misaligned or inside the header): it is not a table"
            ),
        }
    }
}

/// Everything one check of a QED image found.
#[derive(Clone, Debug)]
pub struct QedAnalysis {
    /// Corruptions, in table order.
    pub problems: Vec<QedProblem>,
    /// Leaked clusters as runs `[start, end)` of cluster indices.
    pub leaks: Vec<(u64, u64)>,
    /// The need-check bit is set (the image was not closed cleanly).
    pub need_check: bool,
    /// Clusters of the virtual disk.
    pub total_clusters: u64,
    /// L2 entries naming a data cluster (invalid ones included, like qemu-img).
    pub allocated_clusters: u64,
    /// Of those, the ones not stored right after the previous one of the same L2 table.
    pub fragmented_clusters: u64,
    /// End of the last used cluster (at most the file length).
    pub image_end_offset: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Bytes per cluster.
    pub cluster_size: u64,
}

impl QedAnalysis {
    /// Leaked clusters.
    pub fn leaked(&self) -> u64 {
        self.leaks.iter().map(|(start, end)| end - start).sum()
    }
}

/// The owner of each cluster of the file, filled as references are met.
struct ClusterMap {
    owners: Vec<Option<Owner>>,
}

impl ClusterMap {
    /// Claims `count` clusters from `first` for `owner`. Returns the first owner already
    /// there, if any; every free cluster is claimed either way (as qemu-img does).
    fn claim(&mut self, first: u64, count: u64, owner: Owner) -> Option<Owner> {
        let mut clash = None;
        for cluster in first..first + count {
            if let Some(slot) = self.owners.get_mut(cluster as usize) {
                match slot {
                    Some(existing) => {
                        clash.get_or_insert(*existing);
                    }
                    None => *slot = Some(owner),
                }
            }
        }
        clash
    }
}

/// Checks a data cluster or table offset `value` (already known to be aligned and
/// non-zero) with the rules the engine uses (`QedLayout::table_in_file`,
/// `cluster_in_file`, as QEMU's): after the header area and wholly inside the file.
fn placement(layout: &QedLayout, value: u64, table: bool, file_len: u64) -> Option<Fault> {
    if value < layout.header_len {
        return Some(Fault::InHeader);
    }
    let fits = if table {
        layout.table_in_file(value, file_len)
    } else {
        layout.cluster_in_file(value, file_len)
    };
    (!fits).then_some(Fault::PastEnd)
}

/// Entries of an L2 table that no writer produces: misaligned, or inside the header.
fn garbage_entries(layout: &QedLayout, table: &[u64]) -> u64 {
    table
        .iter()
        .filter(|&&raw| match layout.decode_l2(raw) {
            L2Entry::Invalid(_) => true,
            L2Entry::Cluster(data) => data < layout.header_len,
            L2Entry::Unallocated | L2Entry::Zero => false,
        })
        .count() as u64
}

/// Checks the QED image `image`.
pub fn analyze(image: &QedImage) -> Result<QedAnalysis, CliError> {
    let layout = &image.layout;
    let cs = layout.cluster_size;
    let file_len = image.host.len;
    let clusters = file_len.div_ceil(cs);
    let table_clusters = layout.table_size;
    let mut map = ClusterMap {
        owners: vec![None; clusters as usize],
    };
    map.claim(0, layout.header_len / cs, Owner::Header);
    map.claim(layout.l1_table.offset / cs, table_clusters, Owner::L1Table);

    let problem = |place, value, entry_at, fault| QedProblem {
        place,
        value,
        entry_at,
        fault,
        file_len,
        cluster_size: cs,
    };
    let mut problems = Vec::new();
    let (mut allocated, mut fragmented) = (0u64, 0u64);
    // Every L2 table first, so that a data cluster overlapping a table is blamed on the
    // data entry (one cluster lost on repair) rather than on the table (a whole range).
    let l1 = read_table(image, layout.l1_table.offset)?;
    let mut tables = Vec::new();
    for (l1_index, &raw) in l1.iter().enumerate() {
        let l1_index = l1_index as u64;
        let place = Place::L1 { index: l1_index };
        let entry_at = layout.l1_table.offset + l1_index * table::ENTRY_SIZE;
        let offset = match layout.decode_l1(raw) {
            L1Entry::Unallocated => continue,
            L1Entry::Invalid(1) => {
                problems.push(problem(place, raw, entry_at, Fault::ZeroMarkerInL1));
                continue;
            }
            L1Entry::Invalid(_) => {
                problems.push(problem(place, raw, entry_at, Fault::Misaligned));
                continue;
            }
            L1Entry::Table(offset) => offset,
        };
        if let Some(fault) = placement(layout, offset, true, file_len) {
            problems.push(problem(place, raw, entry_at, fault));
            continue;
        }
        let owner = Owner::L2Table { l1: l1_index };
        if let Some(other) = map.claim(offset / cs, table_clusters, owner) {
            problems.push(problem(place, raw, entry_at, Fault::Overlap(other)));
            continue;
        }
        let l2 = read_table(image, offset)?;
        let garbage = garbage_entries(layout, &l2);
        tables.push((l1_index, offset, l2, garbage, raw, entry_at));
    }
    // A "table" that holds entries no writer produces and that another table's data
    // cluster lies in is that data (an L1 entry pointed at guest data): the L1 entry is
    // the fault, and a repair drops it instead of zeroing the data as table entries.
    let mut bogus = std::collections::BTreeSet::new();
    for (l1_index, _, l2, _, _, _) in &tables {
        for &raw in l2 {
            let L2Entry::Cluster(data) = layout.decode_l2(raw) else {
                continue;
            };
            if let Some(Some(Owner::L2Table { l1 })) = map.owners.get((data / cs) as usize) {
                let suspect = tables.iter().find(|t| t.0 == *l1);
                if *l1 != *l1_index && suspect.is_some_and(|t| t.3 > 0) {
                    bogus.insert(*l1);
                }
            }
        }
    }
    tables.retain(|(l1_index, offset, _, garbage, raw, entry_at)| {
        if !bogus.contains(l1_index) {
            return true;
        }
        let place = Place::L1 { index: *l1_index };
        problems.push(problem(place, *raw, *entry_at, Fault::NotATable(*garbage)));
        let first = (offset / cs) as usize;
        for owner in map
            .owners
            .iter_mut()
            .skip(first)
            .take(table_clusters as usize)
        {
            *owner = None;
        }
        false
    });
    for (l1_index, offset, l2, _, _, _) in tables {
        let mut last = 0u64;
        for (l2_index, &raw) in l2.iter().enumerate() {
            let l2_index = l2_index as u64;
            if matches!(layout.decode_l2(raw), L2Entry::Unallocated | L2Entry::Zero) {
                continue;
            }
            allocated += 1;
            if last != 0 && last.wrapping_add(cs) != raw {
                fragmented += 1;
            }
            last = raw;
            let guest = (l1_index * layout.table_entries + l2_index) * cs;
            let place = Place::L2 {
                l1: l1_index,
                index: l2_index,
                guest,
            };
            let entry_at = offset + l2_index * table::ENTRY_SIZE;
            let fault = match layout.decode_l2(raw) {
                L2Entry::Cluster(data) => placement(layout, data, false, file_len).or_else(|| {
                    map.claim(data / cs, 1, Owner::Data { guest })
                        .map(Fault::Overlap)
                }),
                _ => Some(Fault::Misaligned),
            };
            if let Some(fault) = fault {
                problems.push(problem(place, raw, entry_at, fault));
            }
        }
    }

    let first_free = layout.header_len / cs;
    let mut leaks: Vec<(u64, u64)> = Vec::new();
    let mut last_used = 0u64;
    for (cluster, owner) in map.owners.iter().enumerate() {
        let cluster = cluster as u64;
        if owner.is_some() {
            last_used = cluster;
        } else if cluster >= first_free {
            match leaks.last_mut() {
                Some((_, end)) if *end == cluster => *end += 1,
                _ => leaks.push((cluster, cluster + 1)),
            }
        }
    }
    Ok(QedAnalysis {
        problems,
        leaks,
        need_check: layout.need_check,
        total_clusters: layout.image_size.div_ceil(cs),
        allocated_clusters: allocated,
        fragmented_clusters: fragmented,
        image_end_offset: ((last_used + 1) * cs).min(file_len),
        file_len,
        cluster_size: cs,
    })
}

/// What a repair did.
#[derive(Clone, Debug, Default)]
pub struct QedOutcome {
    /// One line per action, in order.
    pub lines: Vec<String>,
    /// Corruptions repaired (entries set to 0).
    pub corruptions_fixed: u64,
    /// Leaked clusters released (truncated away).
    pub leaks_fixed: u64,
    /// Why nothing was repaired, when that was refused.
    pub refused: Option<String>,
}

fn sync(file: &File, path: &Path) -> Result<(), CliError> {
    file.sync_data().map_err(|e| CliError::io("sync", path, e))
}

/// Rewrites the `features` and `autoclear_features` fields (both in the first sector)
/// with the need-check bit set or cleared and unknown auto-clear bits dropped, then
/// flushes.
fn write_need_check(image: &QedImage, file: &File, need_check: bool) -> Result<(), CliError> {
    let mut header = image.header.clone();
    header.clear_unknown_autoclear();
    let mut bits = header.features.get() & !features::NEED_CHECK;
    if need_check {
        bits |= features::NEED_CHECK;
    }
    header.features = bits.into();
    let start = offset_of!(fvd_core::qed::QedHeader, features);
    let end = offset_of!(fvd_core::qed::QedHeader, l1_table_offset);
    file.write_all_at(&header.bytes()[start..end], start as u64)
        .map_err(|e| CliError::io("write", &image.path, e))?;
    sync(file, &image.path)
}

/// Repairs the image at `path`, which `first` describes; returns what was done.
fn repair(path: &Path, first: &QedAnalysis, mode: RepairMode) -> Result<QedOutcome, CliError> {
    let mut outcome = QedOutcome::default();
    if mode == RepairMode::Leaks && !first.problems.is_empty() {
        outcome.refused = Some(
            "Leaks were not repaired because the image has errors; -r all repairs both".into(),
        );
        return Ok(outcome);
    }
    let file = open_writable(path, "image")?;
    let image = open_qed(path)?;
    // 1. Mark the image as needing a check while its tables change.
    if !first.problems.is_empty() {
        write_need_check(&image, &file, true)?;
    }
    // 2. Invalid entries become 0 (unallocated).
    for problem in &first.problems {
        file.write_all_at(&0u64.to_le_bytes(), problem.entry_at)
            .map_err(|e| CliError::io("write", path, e))?;
        outcome.corruptions_fixed += 1;
        outcome.lines.push(format!(
            "Repairing {problem}: entry set to 0{}",
            match problem.place {
                Place::L1 { .. } => " (the guest range it mapped is unallocated now)",
                Place::L2 { .. } => " (the cluster is unallocated now)",
            }
        ));
    }
    if !first.problems.is_empty() {
        sync(&file, path)?;
    }
    // 3. Release leaked clusters at the end of the file.
    let image = open_qed(path)?;
    let mid = analyze(&image)?;
    if mid.problems.is_empty() && mid.image_end_offset < mid.file_len {
        let end = mid.image_end_offset;
        let released = mid
            .leaks
            .iter()
            .map(|&(start, stop)| {
                let start = start * mid.cluster_size;
                let stop = stop * mid.cluster_size;
                if stop > end {
                    (stop - start.max(end)).div_ceil(mid.cluster_size)
                } else {
                    0
                }
            })
            .sum::<u64>();
        file.set_len(end)
            .and_then(|()| file.sync_all())
            .map_err(|e| CliError::io("truncate", path, e))?;
        outcome.leaks_fixed += released;
        outcome.lines.push(format!(
            "Released {released} leaked cluster(s) at the end of the file ('{}' is now {end} bytes)",
            path.display()
        ));
    }
    // 4. Clean: clear the need-check bit once no corruption remains.
    let image = open_qed(path)?;
    if mid.problems.is_empty() && (image.layout.need_check || !first.problems.is_empty()) {
        write_need_check(&image, &file, false)?;
        if first.need_check {
            outcome.lines.push("Cleared the need-check flag".into());
        }
    }
    Ok(outcome)
}

/// The lines naming each problem and leak, then the notes about the image's state.
fn findings(a: &QedAnalysis, text: &mut String) {
    for problem in &a.problems {
        let _ = writeln!(text, "ERROR {problem}");
    }
    for &(start, end) in &a.leaks {
        let offset = start * a.cluster_size;
        if end - start == 1 {
            let _ = writeln!(
                text,
                "Leaked cluster {start} (offset {offset}): nothing references it"
            );
        } else {
            let _ = writeln!(
                text,
                "Leaked clusters {start}-{} (offset {offset}): nothing references them",
                end - 1
            );
        }
    }
    if a.need_check {
        let _ = writeln!(
            text,
            "Image has the need-check flag set (it was not closed cleanly)"
        );
    }
}

/// The closing summary, worded like qemu-img check's.
fn summary(a: &QedAnalysis, text: &mut String) {
    let corruptions = a.problems.len();
    let leaks = a.leaked();
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
    if leaks > 0 {
        let _ = writeln!(
            text,
            "\n{leaks} leaked clusters were found on the image.\n\
             This means waste of disk space, but no harm to data."
        );
    }
    if a.total_clusters != 0 && a.allocated_clusters != 0 {
        // qemu-img: the allocated share of all clusters, the fragmented share of the
        // allocated ones.
        let percent = |n: u64, of: u64| n as f64 * 100.0 / of as f64;
        let _ = writeln!(
            text,
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, 0.00% compressed clusters",
            a.allocated_clusters,
            a.total_clusters,
            percent(a.allocated_clusters, a.total_clusters),
            percent(a.fragmented_clusters, a.allocated_clusters)
        );
    }
    if a.image_end_offset != 0 {
        let _ = writeln!(text, "Image end offset: {}", a.image_end_offset);
    }
}

/// The text report of a plain check.
pub fn human(a: &QedAnalysis) -> String {
    let mut text = String::new();
    findings(a, &mut text);
    summary(a, &mut text);
    text
}

/// The text report of a repair: what the first pass found, what was done, and the check
/// of the repaired image.
pub fn human_repair(first: &QedAnalysis, outcome: &QedOutcome, last: &QedAnalysis) -> String {
    let mut text = String::new();
    if let Some(refused) = &outcome.refused {
        findings(first, &mut text);
        let _ = writeln!(text, "{refused}");
        summary(first, &mut text);
        return text;
    }
    if !outcome.lines.is_empty() {
        findings(first, &mut text);
        repairs_done(
            &outcome.lines,
            outcome.corruptions_fixed,
            outcome.leaks_fixed,
            &mut text,
        );
    }
    findings(last, &mut text);
    if !last.leaks.is_empty() && outcome.refused.is_none() {
        text.push_str(
            "The remaining leaked clusters lie before used ones, so they cannot be truncated away.\n",
        );
    }
    summary(last, &mut text);
    text
}

/// The JSON report of the (last) check, with qemu-img's keys and this tool's own, and the
/// repair's counts when there was one.
pub fn json(filename: &str, a: &QedAnalysis, outcome: Option<&QedOutcome>) -> Value {
    let counts = CheckCounts {
        image_end_offset: a.image_end_offset,
        total_clusters: a.total_clusters,
        allocated_clusters: a.allocated_clusters,
        fragmented_clusters: a.fragmented_clusters,
        corruptions: a.problems.len() as u64,
        leaks: a.leaked(),
        fixed: outcome.map(|o| (o.corruptions_fixed, o.leaks_fixed)),
        dirty: a.need_check,
    };
    let mut top = qemu_check_object(filename, ImageFormat::Qed, &counts);
    let findings: Vec<Value> = a
        .problems
        .iter()
        .map(|p| json!({"kind": p.kind(), "message": p.to_string()}))
        .collect();
    top.insert("findings".into(), Value::Array(findings));
    let leaks: Vec<Value> = a
        .leaks
        .iter()
        .map(|&(start, end)| json!({"start": start, "count": end - start}))
        .collect();
    top.insert("leaked-clusters".into(), Value::Array(leaks));
    if let Some(outcome) = outcome {
        let lines: Vec<Value> = outcome.lines.iter().map(|l| l.as_str().into()).collect();
        top.insert("repairs".into(), Value::Array(lines));
        if let Some(refused) = &outcome.refused {
            top.insert("repair-refused".into(), refused.as_str().into());
        }
    }
    Value::Object(top)
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
    let _held = match repair_mode {
        Some(_) => Some(open_writable(path, "image")?),
        None => None,
    };
    let first = analyze(&open_qed_as(path, usage)?)?;
    let repaired = match repair_mode {
        Some(mode) => {
            let outcome = repair(path, &first, mode)?;
            let last = analyze(&open_qed(path)?)?;
            Some((outcome, last))
        }
        None => None,
    };
    let last = repaired.as_ref().map_or(&first, |(_, last)| last);
    let outcome = repaired.as_ref().map(|(outcome, _)| outcome);
    let filename = path.to_string_lossy();
    match output {
        OutputFormat::Json => write_json(out, &json(&filename, last, outcome))?,
        OutputFormat::Human => {
            let text = match outcome {
                Some(outcome) => human_repair(&first, outcome, last),
                None => human(&first),
            };
            out.write_all(text.as_bytes()).map_err(CliError::Output)?;
        }
    }
    let status = if !last.problems.is_empty() {
        EXIT_CORRUPT
    } else if last.leaked() > 0 {
        EXIT_LEAKS
    } else {
        0
    };
    if status != 0 {
        out.flush().map_err(CliError::Output)?;
        return Err(CliError::Exit(status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fvd_core::qed::{plan, QedCreateOptions};

    const CS: u64 = 64 << 10;

    /// A 4 MiB default-geometry image in a temporary file: header, L1 table at 64 KiB,
    /// an L2 table at 0x50000 (four clusters) named by L1 entry 0, and one data cluster
    /// at 0x90000 mapped by L2 entry 0. `l2_extra` are more (index, value) L2 entries.
    fn image(l2_extra: &[(u64, u64)]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.qed");
        let options = QedCreateOptions {
            size: 4 << 20,
            ..QedCreateOptions::default()
        };
        let plan = plan(&options).unwrap();
        let mut bytes = vec![0u8; 0xa0000];
        plan.write_header_area(&mut bytes[..CS as usize]).unwrap();
        let mut put = |at: u64, value: u64| {
            bytes[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(CS, 0x50000);
        put(0x50000, 0x90000);
        for &(index, value) in l2_extra {
            put(0x50000 + index * 8, value);
        }
        fs_write(&path, &bytes);
        (dir, path)
    }

    fn fs_write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_clean_image_has_no_findings() {
        let (_dir, path) = image(&[(3, 1)]);
        let a = analyze(&open_qed(&path).unwrap()).unwrap();
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert!(a.leaks.is_empty());
        assert_eq!(a.allocated_clusters, 1, "the zero marker is not allocated");
        assert_eq!(a.total_clusters, 64);
        assert_eq!(a.image_end_offset, 0xa0000);
    }

    #[test]
    fn a_data_cluster_inside_an_l2_table_is_blamed_on_the_data_entry() {
        // L2 entry 1 points into the L2 table itself; the table (listed first) is kept.
        let (_dir, path) = image(&[(1, 0x60000)]);
        let a = analyze(&open_qed(&path).unwrap()).unwrap();
        assert_eq!(a.problems.len(), 1, "{:?}", a.problems);
        let problem = a.problems[0];
        assert_eq!(problem.fault, Fault::Overlap(Owner::L2Table { l1: 0 }));
        assert_eq!(problem.entry_at, 0x50008);
        assert_eq!(problem.kind(), "data-cluster-overlap");
        assert_eq!(
            problem.to_string(),
            "L2 entry 1 of L1 entry 0 (guest offset 65536, 0x60000): the data cluster \
             overlaps the L2 table of L1 entry 0"
        );
        // Fragmentation counts every allocated entry, like qemu-img.
        assert_eq!((a.allocated_clusters, a.fragmented_clusters), (2, 1));
    }

    #[test]
    fn unreferenced_clusters_are_leaks_in_runs() {
        // Drop the data cluster: 0x90000 leaks, at the end of the file.
        let (_dir, path) = image(&[(0, 0)]);
        let a = analyze(&open_qed(&path).unwrap()).unwrap();
        assert!(a.problems.is_empty());
        assert_eq!(a.leaks, [(9, 10)]);
        assert_eq!(a.leaked(), 1);
        assert_eq!(a.image_end_offset, 0x90000);
    }
}
