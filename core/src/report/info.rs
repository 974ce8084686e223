//! The facts `info` reports about an image and their JSON document (`fvd-img info
//! --output json`, the inspector's info export): every header field as core's
//! [`crate::info`] describes it, the facts derived from the layout and the scan's counts
//! ([`super::info_scan`]), and the regions of the file, under qemu-img's top-level keys.
//! The host supplies what only it can know (the file's name and allocated size, the base
//! and data file names resolved against the image's directory); which facts and regions
//! exist, their keys, order and values are decided here.

use super::info_scan::InfoCounts;
use super::json::JsonWriter;
use crate::fvd::{ImageLayout, RawHeader};
use crate::info::{fvd_fields, qed_fields, HeaderField, Value};
use crate::qed::{QedHeader, QedLayout};
use core::fmt::{self, Write};

/// A derived fact's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactValue<'a> {
    /// A number.
    Number(u64),
    /// Yes or no.
    Flag(bool),
    /// A text.
    Text(&'a str),
}

impl fmt::Display for FactValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FactValue::Number(n) => write!(f, "{n}"),
            FactValue::Flag(b) => write!(f, "{b}"),
            FactValue::Text(t) => f.write_str(t),
        }
    }
}

/// A fact derived from the header, the layout and the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fact<'a> {
    /// Its key (snake_case, beside the header fields).
    pub key: &'static str,
    /// Its value.
    pub value: FactValue<'a>,
}

/// Where one region of the image lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionFact {
    /// `header`, `bitmap`, `table`, `journal`, `data` (FVD); `header`, `l1_table` (QED).
    pub name: &'static str,
    /// `image` or `data_file`: the file holding it.
    pub file: &'static str,
    /// First byte.
    pub offset: u64,
    /// Length in bytes (for `data`: bytes stored from `offset` on).
    pub length: u64,
}

/// An FVD image's separate data file, as the host found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataFileFacts<'a> {
    /// Its name resolved against the image's directory.
    pub full_name: &'a str,
    /// Its length.
    pub len: u64,
    /// Bytes the host allocated for it (a host that cannot tell gives the length).
    pub allocated: u64,
}

/// The base image as the header names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackingFacts<'a> {
    /// The name stored in the header.
    pub name: &'a str,
    /// That name resolved against the image's directory.
    pub full_name: &'a str,
    /// The stored format, if any.
    pub format: Option<&'a str>,
}

/// The image itself: its header and validated layout.
#[derive(Clone, Copy)]
pub enum ImageFacts<'a> {
    /// An FVD image.
    Fvd {
        /// Its header.
        header: &'a RawHeader,
        /// Its layout.
        layout: ImageLayout,
        /// Its separate data file, when it has one.
        data_file: Option<DataFileFacts<'a>>,
    },
    /// A QED image.
    Qed {
        /// Its header.
        header: &'a QedHeader,
        /// Its layout.
        layout: QedLayout,
    },
    /// A raw disk: the file's bytes are the guest's.
    Raw,
}

/// Everything `info` reports.
#[derive(Clone, Copy)]
pub struct InfoFacts<'a> {
    /// The image's name as the host knows it.
    pub filename: &'a str,
    /// The image file's length.
    pub file_len: u64,
    /// Bytes the host allocated for the image file (a host that cannot tell gives the
    /// length).
    pub actual_size: u64,
    /// Its base image, when the header names one.
    pub backing: Option<BackingFacts<'a>>,
    /// Header and layout.
    pub image: ImageFacts<'a>,
    /// What [`super::info_scan::InfoScan`] counted.
    pub counts: InfoCounts,
}

const MAX_FACTS: usize = 12;
const MAX_REGIONS: usize = 5;

impl<'a> InfoFacts<'a> {
    /// `fvd` or `qed`.
    pub fn format(&self) -> &'static str {
        match self.image {
            ImageFacts::Fvd { .. } => "fvd",
            ImageFacts::Qed { .. } => "qed",
            ImageFacts::Raw => "raw",
        }
    }

    /// Guest-visible size.
    pub fn virtual_size(&self) -> u64 {
        match &self.image {
            ImageFacts::Fvd { layout, .. } => layout.virtual_size,
            ImageFacts::Qed { layout, .. } => layout.image_size,
            ImageFacts::Raw => self.file_len,
        }
    }

    /// Bytes per cluster (QED only).
    pub fn cluster_size(&self) -> Option<u64> {
        match &self.image {
            ImageFacts::Fvd { .. } | ImageFacts::Raw => None,
            ImageFacts::Qed { layout, .. } => Some(layout.cluster_size),
        }
    }

    /// The image was not closed cleanly (FVD) or has need-check set (QED).
    pub fn dirty(&self) -> bool {
        match &self.image {
            ImageFacts::Fvd { layout, .. } => !layout.clean_shutdown,
            ImageFacts::Qed { layout, .. } => layout.need_check,
            ImageFacts::Raw => false,
        }
    }

    /// True when the format has a header with fields of its own (not raw).
    pub fn has_format_specific(&self) -> bool {
        !matches!(self.image, ImageFacts::Raw)
    }

    /// Calls `each` with every header field, in on-disk order.
    pub fn for_each_field(
        &self,
        mut each: impl FnMut(&HeaderField<'_>) -> fmt::Result,
    ) -> fmt::Result {
        match self.image {
            ImageFacts::Fvd { header, .. } => fvd_fields(header).iter().try_for_each(&mut each),
            ImageFacts::Qed { header, .. } => qed_fields(header).iter().try_for_each(&mut each),
            ImageFacts::Raw => Ok(()),
        }
    }

    /// The derived facts, in display order.
    pub fn derived(&self) -> impl Iterator<Item = Fact<'a>> {
        let mut facts = [None; MAX_FACTS];
        let mut n = 0;
        let mut add = |key, value| {
            if let Some(slot) = facts.get_mut(n) {
                *slot = Some(Fact { key, value });
                n += 1;
            }
        };
        let c = &self.counts;
        if self.has_format_specific() {
            add("file_length", FactValue::Number(self.file_len));
        }
        match &self.image {
            ImageFacts::Fvd {
                layout, data_file, ..
            } => {
                add("dirty", FactValue::Flag(!layout.clean_shutdown));
                add("compact_image", FactValue::Flag(layout.table.is_some()));
                if let Some(base) = &layout.base {
                    add("base_blocks", FactValue::Number(base.blocks));
                    add("base_blocks_in_image", FactValue::Number(c.blocks_in_image));
                }
                if let Some(table) = &layout.table {
                    add("chunks", FactValue::Number(table.chunks));
                    add("mapped_chunks", FactValue::Number(c.table.mapped));
                    add("invalid_table_entries", FactValue::Number(c.table.invalid));
                }
                if let (true, Some(data)) = (layout.separate_data_file, data_file) {
                    add("data_file_full_name", FactValue::Text(data.full_name));
                    add("data_file_length", FactValue::Number(data.len));
                    add("data_file_actual_size", FactValue::Number(data.allocated));
                }
            }
            ImageFacts::Qed { layout, .. } => {
                add("need_check", FactValue::Flag(layout.need_check));
                add("table_entries", FactValue::Number(layout.table_entries));
                add("l2_tables", FactValue::Number(c.l2_tables));
                add("data_clusters", FactValue::Number(c.data_clusters));
                add("zero_clusters", FactValue::Number(c.zero_clusters));
                add("invalid_table_entries", FactValue::Number(c.qed_invalid));
            }
            ImageFacts::Raw => {}
        }
        facts.into_iter().flatten()
    }

    /// The regions: the image's in file order, then (FVD) the data region.
    pub fn regions(&self) -> impl Iterator<Item = RegionFact> {
        let mut regions = [None; MAX_REGIONS];
        let region = |name, offset, length| {
            Some(RegionFact {
                name,
                file: "image",
                offset,
                length,
            })
        };
        match &self.image {
            ImageFacts::Fvd {
                layout, data_file, ..
            } => {
                let mut metadata = [
                    region("header", 0, layout.header_size),
                    layout
                        .base
                        .and_then(|b| region("bitmap", b.bitmap.offset, b.bitmap.len)),
                    layout
                        .table
                        .and_then(|t| region("table", t.region.offset, t.region.len)),
                    layout
                        .journal
                        .and_then(|j| region("journal", j.offset, j.len)),
                ];
                metadata.sort_unstable_by_key(|r| r.map_or(u64::MAX, |r| r.offset));
                let (storage_len, file) = match (layout.separate_data_file, data_file) {
                    (true, Some(data)) => (data.len, "data_file"),
                    (true, None) => (0, "data_file"),
                    (false, _) => (self.file_len, "image"),
                };
                let data = RegionFact {
                    name: "data",
                    file,
                    offset: layout.data_offset,
                    length: storage_len.saturating_sub(layout.data_offset),
                };
                let [a, b, c, d] = metadata;
                regions = [a, b, c, d, Some(data)];
            }
            ImageFacts::Qed { layout, .. } => {
                regions[0] = region("header", 0, layout.header_len);
                regions[1] = region("l1_table", layout.l1_table.offset, layout.l1_table.len);
            }
            ImageFacts::Raw => {}
        }
        regions.into_iter().flatten()
    }
}

/// A header field's value as JSON: numbers as numbers, flags as booleans, names as
/// strings, FVD's feature bitmap as the list of set bits.
pub fn write_field_value<W: Write>(
    j: &mut JsonWriter<'_, W>,
    field: &HeaderField<'_>,
) -> fmt::Result {
    match field.value {
        Value::Unsigned(n) | Value::Bits(n) | Value::QedFeatures(n) => j.u64(n),
        Value::Signed(n) => j.i64(n),
        Value::Flag(n) => j.bool(n != 0),
        Value::Magic { value, .. } => j.u64(u64::from(value)),
        Value::Name(name) => j.lossy(name.unwrap_or_default()),
        Value::FeatureBitmap(_) => {
            j.begin_array()?;
            for bit in field.value.set_bits() {
                j.u64(u64::from(bit))?;
            }
            j.end_array()
        }
        #[allow(unreachable_patterns)]
        _ => j.display(&field.value),
    }
}

/// Writes the pretty-printed JSON document of `facts` to `out`.
pub fn write_info(out: &mut impl Write, facts: &InfoFacts<'_>) -> fmt::Result {
    let mut j = JsonWriter::new(out);
    j.begin_object()?;
    // qemu-img 8 and later describe the protocol node under the image as its "file"
    // child: the image file itself, its length as its size.
    j.key("children")?;
    j.begin_array()?;
    j.begin_object()?;
    j.member_str("name", "file")?;
    j.key("info")?;
    j.begin_object()?;
    j.key("children")?;
    j.begin_array()?;
    j.end_array()?;
    j.member_u64("virtual-size", facts.file_len)?;
    j.member_str("filename", facts.filename)?;
    j.member_str("format", "file")?;
    j.member_u64("actual-size", facts.actual_size)?;
    j.member_bool("dirty-flag", false)?;
    j.end_object()?;
    j.end_object()?;
    j.end_array()?;
    j.member_str("filename", facts.filename)?;
    j.member_str("format", facts.format())?;
    j.member_u64("virtual-size", facts.virtual_size())?;
    j.member_u64("actual-size", facts.actual_size)?;
    if let Some(cluster_size) = facts.cluster_size() {
        j.member_u64("cluster-size", cluster_size)?;
    }
    if let Some(backing) = &facts.backing {
        j.member_str("backing-filename", backing.name)?;
        j.member_str("full-backing-filename", backing.full_name)?;
        if let Some(format) = backing.format {
            j.member_str("backing-filename-format", format)?;
        }
    }
    j.member_bool("dirty-flag", facts.dirty())?;
    if !facts.has_format_specific() {
        return j.end_object();
    }
    j.key("format-specific")?;
    j.begin_object()?;
    j.member_str("type", facts.format())?;
    j.key("data")?;
    j.begin_object()?;
    facts.for_each_field(|field| {
        j.key(field.name)?;
        write_field_value(&mut j, field)
    })?;
    for fact in facts.derived() {
        j.key(fact.key)?;
        match fact.value {
            FactValue::Number(n) => j.u64(n)?,
            FactValue::Flag(b) => j.bool(b)?,
            FactValue::Text(t) => j.str(t)?,
        }
    }
    j.key("regions")?;
    j.begin_array()?;
    for r in facts.regions() {
        j.begin_object()?;
        j.member_str("name", r.name)?;
        j.member_str("file", r.file)?;
        j.member_u64("offset", r.offset)?;
        j.member_u64("length", r.length)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.end_object()?;
    j.end_object()?;
    j.end_object()
}
