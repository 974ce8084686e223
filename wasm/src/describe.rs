//! What a file is and what its header says, from its first bytes: core's probe, info
//! fields and base name, turned into values JavaScript can show.

use fvd_core::fvd::header::{name_field, RawHeader};
use fvd_core::info::{field_at as core_field_at, fvd_fields, qed_fields, HeaderField, Value};
use fvd_core::probe::{probe, Probe};
use fvd_core::qed::{self, QedHeader};
use wasm_bindgen::prelude::*;

/// One header field as the page shows it.
#[wasm_bindgen(getter_with_clone)]
pub struct Field {
    /// The name, as `fvd-img info --output json` spells it.
    pub name: String,
    /// The raw number (decimal) or string stored.
    pub value: String,
    /// The value as a person reads it.
    pub text: String,
    /// What the value counts.
    pub unit: String,
    /// What it means.
    pub meaning: String,
    /// First byte in the file.
    pub offset: u32,
    /// Bytes it occupies.
    pub len: u32,
}

/// `fvd`, `qed`, `raw` or `unsupported` (a look-alike core refuses) for a file starting
/// with `first`.
#[wasm_bindgen]
pub fn probe_kind(first: &[u8]) -> String {
    match probe(first) {
        Probe::Fvd => "fvd",
        Probe::Qed => "qed",
        Probe::Raw => "raw",
        _ => "unsupported",
    }
    .into()
}

/// What a file starting with `first` is, in words.
#[wasm_bindgen]
pub fn probe_text(first: &[u8]) -> String {
    probe(first).to_string()
}

fn raw_value(field: &HeaderField<'_>) -> String {
    match field.value {
        Value::Unsigned(n) | Value::Bits(n) | Value::QedFeatures(n) => n.to_string(),
        Value::Signed(n) => n.to_string(),
        Value::Flag(n) => n.to_string(),
        Value::Magic { value, .. } => value.to_string(),
        Value::Name(name) => String::from_utf8_lossy(name.unwrap_or_default()).into_owned(),
        _ => field.value.to_string(),
    }
}

fn shown(field: &HeaderField<'_>) -> Field {
    Field {
        name: field.name.into(),
        value: raw_value(field),
        text: field.value.to_string(),
        unit: field.unit.name().into(),
        meaning: field.meaning.into(),
        offset: u32::try_from(field.offset).unwrap_or(u32::MAX),
        len: u32::try_from(field.len).unwrap_or(u32::MAX),
    }
}

/// Every header field of the FVD or QED image whose first bytes are `first`.
#[wasm_bindgen]
pub fn header_fields(first: &[u8]) -> Result<Vec<Field>, JsError> {
    let fields: Vec<Field> = match probe(first) {
        Probe::Fvd => RawHeader::view(first)
            .map(|h| fvd_fields(h).iter().map(shown).collect())
            .ok_or_else(|| JsError::new("the file is shorter than an FVD header"))?,
        Probe::Qed => QedHeader::view(first)
            .map(|h| qed_fields(h).iter().map(shown).collect())
            .ok_or_else(|| JsError::new("the file is shorter than a QED header"))?,
        other => return Err(JsError::new(&format!("not an FVD or QED image: {other}"))),
    };
    Ok(fields)
}

/// The base image's file name the header of the image starting with `first` (a file of
/// `file_len` bytes) records, if any.
#[wasm_bindgen]
pub fn base_name(first: &[u8], file_len: f64) -> Option<String> {
    let name = match probe(first) {
        Probe::Fvd => name_field(&RawHeader::view(first)?.base_img)?,
        Probe::Qed => {
            let layout =
                qed::validate(QedHeader::view(first)?, crate::session::length(file_len)?).ok()?;
            layout.backing_name(first)?
        }
        _ => return None,
    };
    (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
}

/// The name of the header field whose bytes include byte `offset` of the image starting
/// with `first` (the page names the field under a byte the user selects).
#[wasm_bindgen]
pub fn field_at(first: &[u8], offset: u32) -> Option<String> {
    let offset = usize::try_from(offset).ok()?;
    let name = match probe(first) {
        Probe::Fvd => core_field_at(&fvd_fields(RawHeader::view(first)?), offset)?.name,
        Probe::Qed => core_field_at(&qed_fields(QedHeader::view(first)?), offset)?.name,
        _ => return None,
    };
    Some(name.into())
}
