//! `fvd-img info`: opens an image read-only (FVD or QED, probed by magic unless `-f` names
//! it), reads its header and metadata regions, and reports every header field plus the
//! facts derived from them (regions, host allocation, mapped chunks or clusters, bitmap
//! use), as qemu-img-style text or JSON.

use super::base::resolve;
use super::error::CliError;
use super::image::{measure_data_file, name_path, name_text, open_fvd_as, read_exact, FvdImage};
use super::image_format::ImageFormat;
use super::open_flags::{self, ExternalData, ForceShare};
use super::output::{write_json, OutputFormat};
use super::qed::{open_qed_as, read_table, QedImage};
use super::size::human_size;
use crate::host::gate::OpenGate;
use clap::Args;
use fvd_core::fvd::bitmap::count_set;
use fvd_core::fvd::table::EntryCounts;
use fvd_core::fvd::RawHeader;
use fvd_core::info::{fvd_fields, qed_fields, HeaderField, Value as CoreValue};
use fvd_core::qed::table::L2Counts;
use fvd_core::qed::{L1Entry, QedHeader};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;

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

/// Bytes read per call when scanning the table or bitmap (a multiple of 4).
const SCAN_CHUNK: u64 = 1 << 20;

/// One format-specific fact: its key (snake_case), its JSON value and its text.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Key in `format-specific.data` and in the human listing.
    pub key: &'static str,
    /// The JSON value.
    pub value: Value,
    /// How the human listing shows it.
    pub text: String,
}

impl Field {
    fn new(key: &'static str, value: impl Into<Value>) -> Self {
        let value = value.into();
        let text = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Field { key, value, text }
    }
}

/// Where one region of the image lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// `header`, `bitmap`, `table`, `journal` or `data`.
    pub name: &'static str,
    /// `image` or `data_file`: the file holding it.
    pub file: &'static str,
    /// First byte.
    pub offset: u64,
    /// Length in bytes (for `data`: bytes currently stored from `offset` on).
    pub length: u64,
}

/// The base image as the header names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingInfo {
    /// The name stored in the header.
    pub name: String,
    /// The name resolved against the image's directory.
    pub full_name: String,
    /// The stored format, if any.
    pub format: Option<String>,
}

/// Everything `info` reports about an image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInfo {
    /// The image path as given.
    pub filename: String,
    /// Its format.
    pub format: ImageFormat,
    /// Bytes per cluster, for formats that have clusters (QED).
    pub cluster_size: Option<u64>,
    /// Guest-visible size.
    pub virtual_size: u64,
    /// Bytes the host has allocated for the image file.
    pub actual_size: u64,
    /// The image was not closed cleanly.
    pub dirty: bool,
    /// Its base image, if any.
    pub backing: Option<BackingInfo>,
    /// Every header field, then derived facts, in display order.
    pub fields: Vec<Field>,
    /// The regions, in file order of the image, then the data region.
    pub regions: Vec<RegionInfo>,
}

/// Runs `fvd-img info`.
pub fn run(args: &InfoArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let format = ImageFormat::given_or_probed(args.format.as_deref(), &args.file)?;
    let gate = open_flags::gate(args.share, ExternalData::default());
    let usage = gate.image_usage(false)?;
    let info = match format {
        ImageFormat::Fvd => gather(&open_fvd_as(&args.file, usage)?, &gate)?,
        ImageFormat::Qed => gather_qed(&open_qed_as(&args.file, usage)?)?,
    };
    match args.output {
        OutputFormat::Human => out
            .write_all(render_human(&info).as_bytes())
            .map_err(CliError::Output),
        OutputFormat::Json => write_json(out, &to_json(&info)),
    }
}

/// Counts mapped and invalid entries among the first `chunks` table entries, reading the
/// table in pieces (core decodes the entries).
fn scan_table(image: &FvdImage, offset: u64, chunks: u64) -> Result<EntryCounts, CliError> {
    let mut counts = EntryCounts::default();
    let total = chunks.saturating_mul(4);
    let mut buf = Vec::new();
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(SCAN_CHUNK);
        buf.resize(n as usize, 0);
        read_exact(
            &image.host.file,
            &image.path,
            offset.saturating_add(done),
            &mut buf,
        )?;
        counts = counts.plus(EntryCounts::of(&buf));
        done += n;
    }
    Ok(counts)
}

/// Counts set bits among the first `blocks` bits of the bitmap, reading it in pieces.
fn scan_bitmap(image: &FvdImage, offset: u64, blocks: u64) -> Result<u64, CliError> {
    let total = blocks.div_ceil(8);
    let mut set = 0u64;
    let mut buf = Vec::new();
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(SCAN_CHUNK);
        buf.resize(n as usize, 0);
        read_exact(
            &image.host.file,
            &image.path,
            offset.saturating_add(done),
            &mut buf,
        )?;
        set += count_set(&buf, (blocks - done * 8).min(n * 8));
        done += n;
    }
    Ok(set)
}

/// A header field described by core, as `info` shows it: the JSON value by type, the
/// text as core prints it.
fn described(field: &HeaderField<'_>) -> Field {
    let value = match field.value {
        CoreValue::Unsigned(n) | CoreValue::Bits(n) | CoreValue::QedFeatures(n) => Value::from(n),
        CoreValue::Signed(n) => Value::from(n),
        CoreValue::Flag(n) => Value::from(n != 0),
        CoreValue::Magic { value, .. } => Value::from(value),
        CoreValue::Name(name) => {
            Value::from(String::from_utf8_lossy(name.unwrap_or_default()).into_owned())
        }
        CoreValue::FeatureBitmap(_) => Value::from(field.value.set_bits().collect::<Vec<_>>()),
        _ => Value::from(field.value.to_string()),
    };
    Field {
        key: field.name,
        value,
        text: field.value.to_string(),
    }
}

/// Every header field, in on-disk order.
fn header_fields(h: &RawHeader) -> Vec<Field> {
    fvd_fields(h).iter().map(described).collect()
}

/// Reads what `info` reports from an open, validated image (and its data file).
pub fn gather(image: &FvdImage, gate: &OpenGate) -> Result<ImageInfo, CliError> {
    let h = &image.header;
    let layout = &image.layout;
    let mut fields = header_fields(h);

    fields.push(Field::new("file_length", image.host.len));
    fields.push(Field::new("dirty", !layout.clean_shutdown));
    fields.push(Field::new("compact_image", layout.table.is_some()));

    let mut regions = vec![RegionInfo {
        name: "header",
        file: "image",
        offset: 0,
        length: layout.header_size,
    }];
    if let Some(base) = &layout.base {
        let in_image = scan_bitmap(image, base.bitmap.offset, base.blocks)?;
        fields.push(Field::new("base_blocks", base.blocks));
        fields.push(Field::new("base_blocks_in_image", in_image));
        regions.push(RegionInfo {
            name: "bitmap",
            file: "image",
            offset: base.bitmap.offset,
            length: base.bitmap.len,
        });
    }
    if let Some(table) = &layout.table {
        let counts = scan_table(image, table.region.offset, table.chunks)?;
        fields.push(Field::new("chunks", table.chunks));
        fields.push(Field::new("mapped_chunks", counts.mapped));
        fields.push(Field::new("invalid_table_entries", counts.invalid));
        regions.push(RegionInfo {
            name: "table",
            file: "image",
            offset: table.region.offset,
            length: table.region.len,
        });
    }
    if let Some(journal) = &layout.journal {
        regions.push(RegionInfo {
            name: "journal",
            file: "image",
            offset: journal.offset,
            length: journal.len,
        });
    }
    regions.sort_by_key(|region| region.offset);

    let storage_len = if layout.separate_data_file {
        let name = name_path(&h.data_file);
        let path = resolve(&image.path, &name);
        let data = measure_data_file(image, &name, gate)?;
        fields.push(Field::new(
            "data_file_full_name",
            path.to_string_lossy().into_owned(),
        ));
        fields.push(Field::new("data_file_length", data.len));
        fields.push(Field::new("data_file_actual_size", data.allocated));
        data.len
    } else {
        image.host.len
    };
    regions.push(RegionInfo {
        name: "data",
        file: if layout.separate_data_file {
            "data_file"
        } else {
            "image"
        },
        offset: layout.data_offset,
        length: storage_len.saturating_sub(layout.data_offset),
    });

    let backing = layout.base.map(|_| {
        let name = name_text(&h.base_img);
        let format = name_text(&h.base_img_fmt);
        BackingInfo {
            full_name: resolve(&image.path, &name_path(&h.base_img))
                .to_string_lossy()
                .into_owned(),
            name,
            format: (!format.is_empty()).then_some(format),
        }
    });

    Ok(ImageInfo {
        filename: image.path.to_string_lossy().into_owned(),
        format: ImageFormat::Fvd,
        cluster_size: None,
        virtual_size: layout.virtual_size,
        actual_size: image.host.allocated,
        dirty: !layout.clean_shutdown,
        backing,
        fields,
        regions,
    })
}

/// Every QED header field, in on-disk order.
fn qed_header_fields(h: &QedHeader) -> Vec<Field> {
    qed_fields(h).iter().map(described).collect()
}

/// Counts of the L1 and L2 entries of a QED image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct QedCounts {
    l2_tables: u64,
    data_clusters: u64,
    zero_clusters: u64,
    invalid_entries: u64,
}

/// Walks the L1 table and every L2 table it names that lies inside the file.
fn count_qed(image: &QedImage) -> Result<QedCounts, CliError> {
    let layout = &image.layout;
    let mut counts = QedCounts::default();
    for raw in read_table(image, layout.l1_table.offset)? {
        match layout.decode_l1(raw) {
            L1Entry::Unallocated => continue,
            L1Entry::Table(offset) if layout.table_in_file(offset, image.host.len) => {
                counts.l2_tables += 1;
                let bytes: Vec<u8> = read_table(image, offset)?
                    .iter()
                    .flat_map(|raw| raw.to_le_bytes())
                    .collect();
                let l2 = L2Counts::of(&bytes, layout.cluster_size);
                counts.zero_clusters += l2.zero;
                counts.data_clusters += l2.data;
                counts.invalid_entries += l2.invalid;
            }
            _ => counts.invalid_entries += 1,
        }
    }
    Ok(counts)
}

/// Reads what `info` reports from an open, validated QED image.
pub fn gather_qed(image: &QedImage) -> Result<ImageInfo, CliError> {
    let layout = &image.layout;
    let mut fields = qed_header_fields(&image.header);
    let counts = count_qed(image)?;
    fields.push(Field::new("file_length", image.host.len));
    fields.push(Field::new("need_check", layout.need_check));
    fields.push(Field::new("table_entries", layout.table_entries));
    fields.push(Field::new("l2_tables", counts.l2_tables));
    fields.push(Field::new("data_clusters", counts.data_clusters));
    fields.push(Field::new("zero_clusters", counts.zero_clusters));
    fields.push(Field::new("invalid_table_entries", counts.invalid_entries));
    let regions = vec![
        RegionInfo {
            name: "header",
            file: "image",
            offset: 0,
            length: layout.header_len,
        },
        RegionInfo {
            name: "l1_table",
            file: "image",
            offset: layout.l1_table.offset,
            length: layout.l1_table.len,
        },
    ];
    let backing = image.backing_text().map(|name| BackingInfo {
        full_name: resolve(&image.path, &image.backing_path().unwrap_or_default())
            .to_string_lossy()
            .into_owned(),
        name,
        format: image.backing_format().map(str::to_string),
    });
    Ok(ImageInfo {
        filename: image.path.to_string_lossy().into_owned(),
        format: ImageFormat::Qed,
        cluster_size: Some(layout.cluster_size),
        virtual_size: layout.image_size,
        actual_size: image.host.allocated,
        dirty: layout.need_check,
        backing,
        fields,
        regions,
    })
}

/// The JSON document, with qemu-img's top-level keys.
pub fn to_json(info: &ImageInfo) -> Value {
    let mut data = Map::new();
    for field in &info.fields {
        data.insert(field.key.to_string(), field.value.clone());
    }
    let regions: Vec<Value> = info
        .regions
        .iter()
        .map(|r| json!({"name": r.name, "file": r.file, "offset": r.offset, "length": r.length}))
        .collect();
    data.insert("regions".into(), Value::Array(regions));

    let mut top = Map::new();
    top.insert("filename".into(), info.filename.clone().into());
    top.insert("format".into(), info.format.name().into());
    top.insert("virtual-size".into(), info.virtual_size.into());
    top.insert("actual-size".into(), info.actual_size.into());
    if let Some(cluster_size) = info.cluster_size {
        top.insert("cluster-size".into(), cluster_size.into());
    }
    if let Some(backing) = &info.backing {
        top.insert("backing-filename".into(), backing.name.clone().into());
        top.insert(
            "full-backing-filename".into(),
            backing.full_name.clone().into(),
        );
        if let Some(format) = &backing.format {
            top.insert("backing-filename-format".into(), format.clone().into());
        }
    }
    top.insert("dirty-flag".into(), info.dirty.into());
    top.insert(
        "format-specific".into(),
        json!({"type": info.format.name(), "data": Value::Object(data)}),
    );
    Value::Object(top)
}

/// The text listing, laid out like `qemu-img info`.
pub fn render_human(info: &ImageInfo) -> String {
    let mut lines = vec![
        format!("image: {}", info.filename),
        format!("file format: {}", info.format.name()),
        format!(
            "virtual size: {} ({} bytes)",
            human_size(info.virtual_size),
            info.virtual_size
        ),
        format!("disk size: {}", human_size(info.actual_size)),
    ];
    if let Some(cluster_size) = info.cluster_size {
        lines.push(format!("cluster_size: {cluster_size}"));
    }
    if let Some(backing) = &info.backing {
        if backing.full_name == backing.name {
            lines.push(format!("backing file: {}", backing.name));
        } else {
            lines.push(format!(
                "backing file: {} (actual path: {})",
                backing.name, backing.full_name
            ));
        }
        if let Some(format) = &backing.format {
            lines.push(format!("backing file format: {format}"));
        }
    }
    lines.push("Format specific information:".into());
    for field in &info.fields {
        if field.text.is_empty() {
            lines.push(format!("    {}:", field.key));
        } else {
            lines.push(format!("    {}: {}", field.key, field.text));
        }
    }
    lines.push("    regions:".into());
    for region in &info.regions {
        let place = if region.file == "image" {
            String::new()
        } else {
            " (in the data file)".into()
        };
        lines.push(format!(
            "        {}: offset {}, length {}{place}",
            region.name, region.offset, region.length
        ));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}
