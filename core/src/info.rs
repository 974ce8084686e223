//! One description of every header field of both formats: its name, value, unit, meaning,
//! and the bytes it occupies in the file. `fvd-img info`, the browser inspector (its
//! header table and the two-way link between a field and its bytes) and the firmware's
//! defmt log all print from this, so no host keeps its own list. Reads a header already
//! in memory; no I/O, no allocation.

use crate::fvd::header::{name_field, RawHeader, FVD_MAGIC};
use crate::qed::header::{features as qed_features, QedHeader, QED_MAGIC};
use core::fmt;
use core::mem::{offset_of, size_of_val};

/// What a field's number counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Unit {
    /// A plain number, a name or a set of bits.
    None,
    /// Bytes (offsets and lengths included).
    Bytes,
    /// Milliseconds.
    Milliseconds,
    /// Seconds.
    Seconds,
    /// Kilobytes per second.
    KilobytesPerSecond,
    /// Clusters of the image.
    Clusters,
}

impl Unit {
    /// The unit as a short word for listings ("" for [`Unit::None`]).
    pub const fn name(self) -> &'static str {
        match self {
            Unit::None => "",
            Unit::Bytes => "bytes",
            Unit::Milliseconds => "ms",
            Unit::Seconds => "s",
            Unit::KilobytesPerSecond => "KB/s",
            Unit::Clusters => "clusters",
        }
    }
}

/// A field's value as stored, typed so that a host can print it as a number, a flag or a
/// string without decoding anything itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value<'a> {
    /// An unsigned number.
    Unsigned(u64),
    /// A signed number.
    Signed(i64),
    /// A u32 boolean (0 or 1; any other number shows as itself, and validation refuses it).
    Flag(u32),
    /// A NUL-terminated name (the bytes before the NUL, not necessarily UTF-8); `None`
    /// when the field has no NUL.
    Name(Option<&'a [u8]>),
    /// A format magic, with the format it names when it is the right one.
    Magic {
        /// The value, read little-endian.
        value: u32,
        /// `FVD` or `QED` when the value is that format's magic.
        format: Option<&'static str>,
    },
    /// A u64 of QED feature bits (shown in hex with the names of the known bits).
    QedFeatures(u64),
    /// A u64 of other bits (shown in hex).
    Bits(u64),
    /// FVD's `incompatible_features` array: the numbers of the bits set.
    FeatureBitmap(&'a [u8]),
}

impl Value<'_> {
    /// The bit numbers set in a [`Value::FeatureBitmap`], in order (empty for any other).
    pub fn set_bits(&self) -> impl Iterator<Item = u32> + '_ {
        let bytes: &[u8] = match self {
            Value::FeatureBitmap(bytes) => bytes,
            _ => &[],
        };
        bytes.iter().zip(0u32..).flat_map(|(&byte, index)| {
            (0..8u32)
                .filter(move |bit| byte & (1 << bit) != 0)
                .map(move |bit| index.saturating_mul(8).saturating_add(bit))
        })
    }
}

/// The names of the QED feature bits this implementation knows.
const QED_FEATURE_NAMES: [(u64, &str); 3] = [
    (qed_features::BACKING_FILE, "backing_file"),
    (qed_features::NEED_CHECK, "need_check"),
    (
        qed_features::BACKING_FORMAT_NO_PROBE,
        "backing_format_no_probe",
    ),
];

/// Writes `bytes` as text, replacing what is not UTF-8 (names need not be).
fn write_lossy(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        f.write_str(chunk.valid())?;
        if !chunk.invalid().is_empty() {
            f.write_str("\u{FFFD}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Value<'_> {
    /// The text `fvd-img info` prints for the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Unsigned(n) => write!(f, "{n}"),
            Value::Signed(n) => write!(f, "{n}"),
            Value::Flag(0) => f.write_str("false"),
            Value::Flag(1) => f.write_str("true"),
            Value::Flag(n) => write!(f, "{n}"),
            Value::Name(Some(name)) => write_lossy(f, name),
            Value::Name(None) => f.write_str("(no terminating NUL)"),
            Value::Magic {
                value,
                format: Some(format),
            } => write!(f, "{value:#010x} ({format})"),
            Value::Magic {
                value,
                format: None,
            } => write!(f, "{value}"),
            Value::QedFeatures(bits) => {
                write!(f, "{bits:#x}")?;
                let mut known = QED_FEATURE_NAMES
                    .iter()
                    .filter(|(bit, _)| bits & bit != 0)
                    .peekable();
                if known.peek().is_some() {
                    f.write_str(" (")?;
                    for (i, (_, name)) in known.enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        f.write_str(name)?;
                    }
                    f.write_str(")")?;
                }
                Ok(())
            }
            Value::Bits(bits) => write!(f, "{bits:#x}"),
            Value::FeatureBitmap(_) => {
                let mut bits = self.set_bits().peekable();
                if bits.peek().is_none() {
                    return f.write_str("none");
                }
                f.write_str("[")?;
                for (i, bit) in bits.enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{bit}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// One header field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// The field's name, as the format's spec and `info --output json` spell it.
    pub name: &'static str,
    /// Its value.
    pub value: Value<'a>,
    /// What the value counts.
    pub unit: Unit,
    /// What it means, in one sentence for a person.
    pub meaning: &'static str,
    /// First byte in the file.
    pub offset: usize,
    /// Bytes it occupies.
    pub len: usize,
}

impl HeaderField<'_> {
    /// True when byte `offset` of the file belongs to this field.
    pub const fn covers(&self, offset: usize) -> bool {
        offset >= self.offset && offset - self.offset < self.len
    }
}

/// The field whose bytes include byte `offset` of the file, if any (the inspector names
/// the field under a byte the user selects).
pub fn field_at<'f, 'a>(
    fields: &'f [HeaderField<'a>],
    offset: usize,
) -> Option<&'f HeaderField<'a>> {
    fields.iter().find(|field| field.covers(offset))
}

macro_rules! field {
    ($h:expr, $name:ident, $value:expr, $unit:expr, $meaning:expr) => {
        HeaderField {
            name: stringify!($name),
            value: $value,
            unit: $unit,
            meaning: $meaning,
            offset: offset_of!(RawHeader, $name),
            len: size_of_val(&$h.$name),
        }
    };
}

macro_rules! qed_field {
    ($h:expr, $name:ident, $value:expr, $unit:expr, $meaning:expr) => {
        HeaderField {
            name: stringify!($name),
            value: $value,
            unit: $unit,
            meaning: $meaning,
            offset: offset_of!(QedHeader, $name),
            len: size_of_val(&$h.$name),
        }
    };
}

/// Fields of an FVD header.
pub const FVD_FIELDS: usize = 41;

/// Every field of an FVD header, in on-disk order (docs/FORMAT.md §4).
pub fn fvd_fields(h: &RawHeader) -> [HeaderField<'_>; FVD_FIELDS] {
    use Unit::*;
    let u = |v: u64| Value::Unsigned(v);
    let u32v = |v: u32| Value::Unsigned(u64::from(v));
    let magic = h.magic.get();
    [
        field!(
            h,
            magic,
            Value::Magic {
                value: magic,
                format: (magic == FVD_MAGIC).then_some("FVD")
            },
            None,
            "identifies the file as an FVD image: the bytes F V D NUL"
        ),
        field!(
            h,
            header_size,
            u32v(h.header_size.get()),
            Bytes,
            "size of the header area; the first region starts after it"
        ),
        field!(
            h,
            create_version,
            u32v(h.create_version.get()),
            None,
            "version of the software that created the image"
        ),
        field!(
            h,
            last_open_version,
            u32v(h.last_open_version.get()),
            None,
            "version of the software that last opened the image for writing"
        ),
        field!(
            h,
            virtual_disk_size,
            u(h.virtual_disk_size.get()),
            Bytes,
            "size of the disk the guest sees"
        ),
        field!(
            h,
            data_offset,
            u(h.data_offset.get()),
            Bytes,
            "where guest data begins in the data storage (this file or the data file)"
        ),
        field!(
            h,
            data_file,
            Value::Name(name_field(&h.data_file)),
            None,
            "separate file holding the guest data; empty: data lives in this file"
        ),
        field!(
            h,
            data_file_fmt,
            Value::Name(name_field(&h.data_file_fmt)),
            None,
            "format of the data file (raw)"
        ),
        field!(
            h,
            base_img,
            Value::Name(name_field(&h.base_img)),
            None,
            "base image whose data shows through until written; empty: no base"
        ),
        field!(
            h,
            base_img_fmt,
            Value::Name(name_field(&h.base_img_fmt)),
            None,
            "format of the base image (raw, fvd, qed; empty: probed)"
        ),
        field!(
            h,
            base_img_size,
            u(h.base_img_size.get()),
            Bytes,
            "guest bytes the base covers; the bitmap tracks them"
        ),
        field!(
            h,
            bitmap_offset,
            u(h.bitmap_offset.get()),
            Bytes,
            "start of the bitmap region (one bit per block: 1 = the block lives in this image)"
        ),
        field!(
            h,
            bitmap_size,
            u(h.bitmap_size.get()),
            Bytes,
            "length of the bitmap region"
        ),
        field!(
            h,
            block_size,
            u(h.block_size.get()),
            Bytes,
            "guest bytes per bitmap bit: the copy-on-write and copy-on-read unit"
        ),
        field!(
            h,
            journal_offset,
            u(h.journal_offset.get()),
            Bytes,
            "start of the metadata journal"
        ),
        field!(
            h,
            journal_size,
            u(h.journal_size.get()),
            Bytes,
            "length of the metadata journal; 0: no journal"
        ),
        field!(
            h,
            clean_shutdown,
            Value::Flag(h.clean_shutdown.get()),
            None,
            "the image was closed cleanly; false while open for writing or after a crash"
        ),
        field!(
            h,
            stable_journal_epoch,
            u(h.stable_journal_epoch.get()),
            None,
            "only journal sectors of this epoch are replayed"
        ),
        field!(
            h,
            journal_buf_size,
            u(h.journal_buf_size.get()),
            Bytes,
            "hint: journal bytes a writer may buffer in memory (0: its default)"
        ),
        field!(
            h,
            journal_clean_buf_period,
            u(h.journal_clean_buf_period.get()),
            Milliseconds,
            "hint: longest time metadata stays uncommitted (0: until the next flush)"
        ),
        field!(
            h,
            table_offset,
            u(h.table_offset.get()),
            Bytes,
            "start of the chunk table (compact images)"
        ),
        field!(
            h,
            table_size,
            u(h.table_size.get()),
            Bytes,
            "length of the chunk table; 0: not a compact image"
        ),
        field!(
            h,
            chunk_size,
            u(h.chunk_size.get()),
            Bytes,
            "guest bytes one table entry maps"
        ),
        field!(
            h,
            storage_grow_unit,
            u(h.storage_grow_unit.get()),
            Bytes,
            "step by which a compact image's data storage grows"
        ),
        field!(
            h,
            add_storage_cmd,
            Value::Name(name_field(&h.add_storage_cmd)),
            None,
            "command a host may run to grow a block device; never run by the engine"
        ),
        field!(
            h,
            chunks_relocated,
            Value::Flag(h.chunks_relocated.get()),
            None,
            "a leaked chunk has been reused, so unmapped storage may hold old data"
        ),
        field!(
            h,
            copy_on_read,
            Value::Flag(h.copy_on_read.get()),
            None,
            "default for copying base data into the image when it is read"
        ),
        field!(
            h,
            max_outstanding_copy_on_read_data,
            u(h.max_outstanding_copy_on_read_data.get()),
            Bytes,
            "most copy-on-read bytes in flight at once"
        ),
        field!(
            h,
            prefetch_start_delay,
            Value::Signed(h.prefetch_start_delay.get()),
            Seconds,
            "delay after open before whole-image prefetch starts; 0 or less: no prefetch"
        ),
        field!(
            h,
            base_img_fully_prefetched,
            Value::Flag(h.base_img_fully_prefetched.get()),
            None,
            "every base block has been copied in; the base is no longer read"
        ),
        field!(
            h,
            num_prefetch_slots,
            u32v(h.num_prefetch_slots.get()),
            None,
            "prefetch copies in flight at once"
        ),
        field!(
            h,
            bytes_per_prefetch,
            u(h.bytes_per_prefetch.get()),
            Bytes,
            "bytes one prefetch copy moves"
        ),
        field!(
            h,
            prefetch_read_throughput_measure_time,
            u(h.prefetch_read_throughput_measure_time.get()),
            Milliseconds,
            "window over which prefetch read throughput is measured"
        ),
        field!(
            h,
            prefetch_write_throughput_measure_time,
            u(h.prefetch_write_throughput_measure_time.get()),
            Milliseconds,
            "window over which prefetch write throughput is measured"
        ),
        field!(
            h,
            prefetch_min_read_throughput,
            u(h.prefetch_min_read_throughput.get()),
            KilobytesPerSecond,
            "read throughput below which prefetch backs off"
        ),
        field!(
            h,
            prefetch_min_write_throughput,
            u(h.prefetch_min_write_throughput.get()),
            KilobytesPerSecond,
            "write throughput below which prefetch backs off"
        ),
        field!(
            h,
            prefetch_max_read_throughput,
            u(h.prefetch_max_read_throughput.get()),
            KilobytesPerSecond,
            "read throughput prefetch never exceeds (0: no cap)"
        ),
        field!(
            h,
            prefetch_max_write_throughput,
            u(h.prefetch_max_write_throughput.get()),
            KilobytesPerSecond,
            "write throughput prefetch never exceeds (0: no cap)"
        ),
        field!(
            h,
            prefetch_throttle_time,
            u(h.prefetch_throttle_time.get()),
            Milliseconds,
            "longest pause of the randomised prefetch back-off"
        ),
        field!(
            h,
            need_zero_init,
            Value::Flag(h.need_zero_init.get()),
            None,
            "never-written data storage must read as zeros"
        ),
        field!(
            h,
            incompatible_features,
            Value::FeatureBitmap(&h.incompatible_features),
            None,
            "feature bits a reader must know to open the image; any unknown bit refuses it"
        ),
    ]
}

/// Fields of a QED header.
pub const QED_FIELDS: usize = 11;

/// Every field of a QED header, in on-disk order (QEMU's docs/interop/qed_spec.txt).
pub fn qed_fields(h: &QedHeader) -> [HeaderField<'_>; QED_FIELDS] {
    use Unit::*;
    let u = |v: u64| Value::Unsigned(v);
    let u32v = |v: u32| Value::Unsigned(u64::from(v));
    let magic = h.magic.get();
    [
        qed_field!(
            h,
            magic,
            Value::Magic {
                value: magic,
                format: (magic == QED_MAGIC).then_some("QED")
            },
            None,
            "identifies the file as a QED image: the bytes Q E D NUL"
        ),
        qed_field!(
            h,
            cluster_size,
            u32v(h.cluster_size.get()),
            Bytes,
            "bytes per cluster: the unit of allocation and of every table"
        ),
        qed_field!(
            h,
            table_size,
            u32v(h.table_size.get()),
            Clusters,
            "clusters per L1 or L2 table"
        ),
        qed_field!(
            h,
            header_size,
            u32v(h.header_size.get()),
            Clusters,
            "clusters of the header area"
        ),
        qed_field!(
            h,
            features,
            Value::QedFeatures(h.features.get()),
            None,
            "incompatible feature bits: backing file, need-check, raw backing file"
        ),
        qed_field!(
            h,
            compat_features,
            Value::Bits(h.compat_features.get()),
            None,
            "compatible feature bits (bit 0: copy on read by default)"
        ),
        qed_field!(
            h,
            autoclear_features,
            Value::Bits(h.autoclear_features.get()),
            None,
            "feature bits a writer that does not know them clears"
        ),
        qed_field!(
            h,
            l1_table_offset,
            u(h.l1_table_offset.get()),
            Bytes,
            "where the L1 table starts"
        ),
        qed_field!(
            h,
            image_size,
            u(h.image_size.get()),
            Bytes,
            "size of the disk the guest sees"
        ),
        qed_field!(
            h,
            backing_filename_offset,
            u32v(h.backing_filename_offset.get()),
            Bytes,
            "where the backing file's name starts in the header area"
        ),
        qed_field!(
            h,
            backing_filename_size,
            u32v(h.backing_filename_size.get()),
            Bytes,
            "length of the backing file's name"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fvd::RAW_HEADER_LEN;
    use crate::qed::QED_HEADER_LEN;

    /// The fields follow each other without a gap and end where the header ends: every
    /// byte of the header belongs to exactly one described field.
    fn assert_tiles(fields: &[HeaderField<'_>], len: usize) {
        let mut at = 0;
        for field in fields {
            assert_eq!(
                field.offset, at,
                "{} does not start where the last ended",
                field.name
            );
            assert!(field.len > 0 && !field.meaning.is_empty(), "{}", field.name);
            at += field.len;
        }
        assert_eq!(at, len);
    }

    #[test]
    fn every_header_byte_belongs_to_one_described_field() {
        let fvd = RawHeader::zeroed();
        assert_tiles(&fvd_fields(&fvd), RAW_HEADER_LEN);
        let qed = QedHeader::zeroed();
        assert_tiles(&qed_fields(&qed), QED_HEADER_LEN);
    }

    #[test]
    fn a_selected_byte_names_its_field() {
        let h = RawHeader::zeroed();
        let fields = fvd_fields(&h);
        assert_eq!(field_at(&fields, 0).map(|f| f.name), Some("magic"));
        assert_eq!(field_at(&fields, 24).map(|f| f.name), Some("data_offset"));
        assert_eq!(
            field_at(&fields, 7439).map(|f| f.name),
            Some("incompatible_features")
        );
        assert_eq!(field_at(&fields, 7440), None);
    }

    #[test]
    fn values_print_as_info_prints_them() {
        use std::string::ToString;
        let mut h = RawHeader::zeroed();
        h.magic.set(FVD_MAGIC);
        h.incompatible_features[1] = 0b101;
        h.clean_shutdown.set(1);
        let fields = fvd_fields(&h);
        let text = |name: &str| {
            fields
                .iter()
                .find(|f| f.name == name)
                .unwrap()
                .value
                .to_string()
        };
        assert_eq!(text("magic"), "0x00445646 (FVD)");
        assert_eq!(text("incompatible_features"), "[8,10]");
        assert_eq!(text("clean_shutdown"), "true");
        assert_eq!(text("base_img"), "");
        let mut q = QedHeader::zeroed();
        q.features
            .set(qed_features::BACKING_FILE | qed_features::NEED_CHECK);
        let fields = qed_fields(&q);
        assert_eq!(
            fields[4].value.to_string(),
            "0x3 (backing_file, need_check)"
        );
    }
}
